/**
 * What a parent tells the worker it starts: where the pair's segment and socket are, the ring geometry, the wake
 * mode and who the parent is. A child process reads it from the SHMBUS_WORKER environment variable (and removes
 * it, so that its own children do not take it for theirs); a thread from its workerData. Either way it is
 * checked, then kept on globalThis under a registered symbol until `parentChannel()` takes it, so that two copies
 * of this package in one worker still find it.
 */
import { BadArgumentError } from '../host/errors.js';
import { pairGeometry, type PairGeometry } from './pair.js';

export const CONTEXT_ENV = 'SHMBUS_WORKER';
const CONTEXT_KEY = Symbol.for('shmbus.worker.context');
const CHANNEL_KEY = Symbol.for('shmbus.worker.channel');

export type Isolation = 'process' | 'thread';

/** What the parent passes (JSON in the environment, or structured-cloned workerData). */
export interface WorkerContext {
  isolation: Isolation;
  segmentFd: number;
  socketFd: number;
  ringSize: number;
  wake: string;
  parentPid: number;
  /** The segment carries a task claim table (a Pool's worker): the worker maps it too (pair.ts). */
  claims?: boolean;
  /** The pair is sync-idle (pair.ts): the worker's end sleeps on a futex. */
  syncIdle?: boolean;
}

/** The context a worker received, checked: the geometry is recomputed here, never taken from the parent's text. */
export interface CheckedContext {
  isolation: Isolation; segmentFd: number; socketFd: number; geometry: PairGeometry; parentPid: number; claims: boolean; syncIdle: boolean;
  /** A thread's: who owns its copies of the descriptors (THREAD_FDS_HELD, or THREAD_FDS_TAKEN once the thread took
   * them for its channel or to close them), shared with the parent, which closes them if the thread never did. */
  owner?: Int32Array;
}

const fdOk = (fd: unknown): fd is number => typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 && fd < 1 << 20;

export function checkContext(raw: unknown): CheckedContext {
  const c = (typeof raw === 'object' && raw !== null ? raw : {}) as Partial<WorkerContext>;
  if ((c.isolation !== 'process' && c.isolation !== 'thread') || !fdOk(c.segmentFd) || !fdOk(c.socketFd)
    || typeof c.parentPid !== 'number' || !Number.isInteger(c.parentPid) || c.parentPid <= 0) {
    throw new BadArgumentError('malformed worker context from the parent', { context: JSON.stringify(raw)?.slice(0, 200) });
  }
  return { isolation: c.isolation, segmentFd: c.segmentFd, socketFd: c.socketFd, geometry: pairGeometry(c.ringSize, c.wake), parentPid: c.parentPid, claims: c.claims === true, syncIdle: c.syncIdle === true };
}

type Slots = { [CONTEXT_KEY]?: CheckedContext; [CHANNEL_KEY]?: Promise<unknown> };
const slots = globalThis as unknown as Slots;

/** Called by the bootstraps (child.ts, thread.ts) before the user's module runs. */
export function setWorkerContext(context: CheckedContext): void {
  slots[CONTEXT_KEY] = context;
}

/** The context not yet taken, taken now (undefined if none: not started by spawn, or taken already). */
export function takeWorkerContext(): CheckedContext | undefined {
  const c = slots[CONTEXT_KEY];
  delete slots[CONTEXT_KEY];
  if (c?.owner !== undefined) Atomics.store(c.owner, 0, THREAD_FDS_TAKEN);
  return c;
}

/** The one channel to the parent, once made (every call of parentChannel() gets the same). */
export function channelSlot(): { get(): Promise<unknown> | undefined; set(p: Promise<unknown>): void } {
  return { get: () => slots[CHANNEL_KEY], set: (p) => { slots[CHANNEL_KEY] = p; } };
}

/** What a worker thread posts once it holds its own copies of the parent's descriptors: [THREAD_TOOK_FDS, segment
 * fd, socket fd] (the copies' numbers). */
export const THREAD_TOOK_FDS = 'shmbus.worker.took-fds';
/** CheckedContext.owner[0]: the thread holds its copies and has not taken them. */
export const THREAD_FDS_HELD = 0;
/** CheckedContext.owner[0]: the thread took its copies (parentChannel, or its exit hook closed them). A thread
 * terminated before that cannot close them (no JavaScript runs in it any more): its parent does. */
export const THREAD_FDS_TAKEN = 1;
