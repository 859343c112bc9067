/**
 * spawn(module, options): starts a worker — a child process or a thread — with a shmbus channel to it already
 * connected. No endpoint name, no listener, no handshake: the parent makes the pair's segment (a sealed memfd) and
 * a socketpair (pair.ts) and hands both over as descriptors, so nothing is ever named, left behind or squattable.
 * In the worker, `parentChannel()` (parent.ts) gives the other end.
 */
import cp, { type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Channel } from '../transports/shm/channel.js';
import { BadArgumentError, ErrorCode, ShmbusError } from '../host/errors.js';
import { socketPair } from '../host/sys/socket.js';
import { closeFd } from '../host/sys/shm.js';
import { abandonParentPair, createParentPair, openParentChannel, pairGeometry, releaseWorkerEnds, type PairClaims, type PairWakeMode, type ParentPair } from './pair.js';
import { workerScript } from './script.js';
import { terminationGate } from '../host/thread.js';
import { CONTEXT_ENV, THREAD_FDS_HELD, THREAD_FDS_TAKEN, THREAD_TOOK_FDS, type Isolation, type WorkerContext } from './context.js';

export type { Isolation } from './context.js';

const CHILD_ENTRY = workerScript('child.js');
const THREAD_ENTRY = workerScript('thread.js');
/** Where the child finds its two descriptors (after stdin, stdout, stderr). */
const CHILD_SEGMENT_FD = 3;
const CHILD_SOCKET_FD = 4;

export interface SpawnOptions {
  /** 'process' (default): a child process running Node; 'thread': a worker_threads Worker in this process. */
  isolation?: Isolation;
  /** Arguments for the module: `process.argv.slice(2)` in the worker. */
  args?: readonly string[];
  /** The worker's environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** Node options for the worker (default: none; a thread accepts only what `Worker`'s execArgv accepts). */
  execArgv?: readonly string[];
  /** Ring data bytes per direction: a power of two, bytes or a size such as '1MiB' (default 4 MiB). Bounds the
   * largest message: a little under half of it. */
  ringSize?: number | string;
  /** How a side waits once spinning did not pay: 'adaptive' (default), 'spin', 'doorbell' or 'futex'. */
  wake?: PairWakeMode;
  /** A process's stdin, stdout and stderr (default 'inherit'); 'pipe' exposes them as `stdout`/`stderr`. */
  stdio?: 'inherit' | 'ignore' | 'pipe';
  /** @internal A Pool's worker: the segment's task claim table is mapped on both sides (pair.ts, `handle.claims`). */
  taskClaims?: boolean;
  /** @internal A Pool's worker that blocks on a futex while idle (pair.ts, syncIdleAvailable; pool-worker.ts). */
  syncIdle?: boolean;
}

/** @internal Test seams: called where a failure is otherwise hard to provoke (test/workers/spawn.test.ts). */
export const spawnTestHooks: { beforeParentChannel?: (worker: { pid?: number; threadId?: number }) => void } = {};

/** How a worker ended: a process's exit code or the signal that killed it; a thread's exit code (signal null). */
export interface WorkerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface WorkerHandleEvents {
  exit: [WorkerExit];
  error: [Error];
}

/**
 * A started worker. `channel` is connected from the start (messages sent before the worker asks for its end wait
 * in the ring). Emits 'exit' ({ code, signal }) once, and 'error' (only when listened to) for a thread's uncaught
 * exception or a process that could not be started.
 */
export class WorkerHandle extends EventEmitter<WorkerHandleEvents> {
  /** The channel to the worker: send, for await, request, handle, close. */
  readonly channel: Channel;
  readonly isolation: Isolation;
  /** The worker process's id ('process'). */
  readonly pid: number | undefined;
  /** The worker thread's id ('thread'). */
  readonly threadId: number | undefined;
  /** Settles once the worker has ended. */
  readonly exited: Promise<WorkerExit>;
  /** The process's stdout/stderr with `stdio: 'pipe'`, else null. */
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  /** @internal The task claim table (spawn's `taskClaims`); its owner releases it once done with the worker. */
  readonly claims: PairClaims | undefined;
  #exit: WorkerExit | undefined;
  readonly #kill: (signal: NodeJS.Signals) => void;

  /** @internal use spawn() */
  constructor(init: {
    channel: Channel; isolation: Isolation; pid?: number; threadId?: number; exited: Promise<WorkerExit>;
    kill: (signal: NodeJS.Signals) => void; stdout?: Readable | null; stderr?: Readable | null; claims?: PairClaims;
  }) {
    super();
    this.channel = init.channel;
    this.claims = init.claims;
    this.isolation = init.isolation;
    this.pid = init.pid;
    this.threadId = init.threadId;
    this.stdout = init.stdout ?? null;
    this.stderr = init.stderr ?? null;
    this.#kill = init.kill;
    this.exited = init.exited.then((exit) => {
      this.#exit = exit;
      this.emit('exit', exit);
      return exit;
    });
  }

  /** How the worker ended, or undefined while it runs. */
  get exitStatus(): WorkerExit | undefined {
    return this.#exit;
  }

  /** Sends `signal` (default SIGTERM) to a process; terminates a thread (whatever the signal), once it has loaded
   * shmbus's modules if it is still starting (Node aborts the process when a thread is terminated inside koffi's
   * loading). A no-op once ended. */
  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.#exit) return;
    this.#kill(signal);
  }

  /** Closes the channel (what was sent is delivered first) and waits for the worker to end: a worker whose loop
   * reads the channel sees its end and returns. */
  async close(): Promise<WorkerExit> {
    await this.channel.close();
    return this.exited;
  }
}

/** The module as a URL string: a URL, a file: URL string, or a path (relative to the working directory). */
function moduleHref(module: string | URL): string {
  if (module instanceof URL) return module.href;
  if (typeof module !== 'string' || module.length === 0) throw new BadArgumentError('module must be a path or a URL', { module: String(module) });
  if (/^(file|data):/i.test(module)) return module;
  return pathToFileURL(path.resolve(module)).href;
}

function stringList(value: readonly string[] | undefined, name: string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.some((a) => typeof a !== 'string')) throw new BadArgumentError(`${name} must be an array of strings`, { [name]: String(value) });
  return [...value];
}

function errorHandler(handle: () => WorkerHandle | undefined, early: (e: Error) => void) {
  return (error: Error) => {
    const h = handle();
    if (!h) return early(error);
    if (h.listenerCount('error') > 0) h.emit('error', error);
  };
}

/** The options of spawn, checked (ERR_SHMBUS_BAD_ARGUMENT for anything off); a Pool checks its own with it too. */
export function checkSpawnOptions(options: SpawnOptions) {
  if (typeof options !== 'object' || options === null) throw new BadArgumentError('options must be an object', { options: String(options) });
  const isolation = options.isolation ?? 'process';
  if (isolation !== 'process' && isolation !== 'thread') throw new BadArgumentError("isolation must be 'process' or 'thread'", { isolation });
  const args = stringList(options.args, 'args');
  const execArgv = stringList(options.execArgv, 'execArgv');
  const geometry = pairGeometry(options.ringSize, options.wake);
  const stdio = options.stdio ?? 'inherit';
  if (!['inherit', 'ignore', 'pipe'].includes(stdio)) throw new BadArgumentError("stdio must be 'inherit', 'ignore' or 'pipe'", { stdio });
  if (options.env !== undefined && (typeof options.env !== 'object' || options.env === null)) throw new BadArgumentError('env must be an object', { env: String(options.env) });
  return { isolation, args, execArgv, geometry, stdio };
}

/**
 * Starts `module` as a worker with a channel to it. The module gets its end with `await parentChannel()`.
 * A child process dies with this one (PR_SET_PDEATHSIG, SIGKILL), even when this one is SIGKILLed.
 * Rejects with ERR_SHMBUS_BAD_ARGUMENT for bad options and ERR_SHMBUS_SYSCALL when the worker cannot start.
 */
export async function spawn(module: string | URL, options: SpawnOptions = {}): Promise<WorkerHandle> {
  const { isolation, args, execArgv, geometry, stdio } = checkSpawnOptions(options);
  const href = moduleHref(module);
  const fds = socketPair();
  let pair: ParentPair;
  try {
    pair = createParentPair(geometry, fds, options.taskClaims === true, options.syncIdle === true);
  } catch (error) {
    closeFd(fds[0]);
    closeFd(fds[1]);
    throw error;
  }
  const context = (segmentFd: number, socketFd: number): WorkerContext => ({
    isolation, segmentFd, socketFd, ringSize: geometry.capacity, wake: geometry.wake, parentPid: process.pid,
    ...(pair.claims ? { claims: true } : {}),
    ...(pair.syncIdle ? { syncIdle: true } : {}),
  });
  try {
    return isolation === 'process'
      ? await spawnProcess(pair, href, args, execArgv, options.env ?? process.env, stdio, context(CHILD_SEGMENT_FD, CHILD_SOCKET_FD))
      : spawnThread(pair, href, args, execArgv, options.env, context(pair.region.fd, pair.workerFd));
  } catch (error) {
    abandonParentPair(pair, closeFd);
    throw error;
  }
}

async function spawnProcess(pair: ParentPair, href: string, args: string[], execArgv: string[], env: NodeJS.ProcessEnv, stdio: 'inherit' | 'ignore' | 'pipe', context: WorkerContext): Promise<WorkerHandle> {
  let child: ChildProcess;
  try {
    child = cp.spawn(process.execPath, [...execArgv, fileURLToPath(CHILD_ENTRY), href, ...args], {
      stdio: [stdio === 'pipe' ? 'ignore' : stdio, stdio, stdio, pair.region.fd, pair.workerFd],
      env: { ...env, [CONTEXT_ENV]: JSON.stringify(context) },
    });
  } catch (cause) {
    throw new ShmbusError(ErrorCode.SYSCALL, 'cannot start the worker process', { cause, details: { module: href } });
  }
  // The child has its copies (uv_spawn returns after the exec): ours go now, so its death shows as end-of-file.
  await new Promise<void>((resolve, reject) => {
    const onError = (cause: Error) => {
      child.off('spawn', onSpawn);
      reject(new ShmbusError(ErrorCode.SYSCALL, 'cannot start the worker process', { cause, details: { module: href } }));
    };
    const onSpawn = () => { child.off('error', onError); resolve(); };
    child.once('error', onError);
    child.once('spawn', onSpawn);
  });
  const pid = child.pid!;
  let channel: Channel;
  try {
    spawnTestHooks.beforeParentChannel?.({ pid });
    channel = openParentChannel(pair, pid, `worker.${pid}`);
  } catch (error) {
    // The child runs already: it must not outlive the spawn that failed (spawn() undoes the pair).
    child.kill('SIGKILL');
    throw error;
  }
  releaseWorkerEnds(pair, closeFd);
  let handle: WorkerHandle | undefined;
  child.on('error', errorHandler(() => handle, () => {}));
  const exited = new Promise<WorkerExit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  handle = new WorkerHandle({
    channel, isolation: 'process', pid, exited, kill: (signal) => { child.kill(signal); },
    stdout: child.stdout, stderr: child.stderr, claims: pair.claims,
  });
  return handle;
}

function spawnThread(pair: ParentPair, href: string, args: string[], execArgv: string[], env: NodeJS.ProcessEnv | undefined, context: WorkerContext): WorkerHandle {
  // Who owns the thread's copies of the descriptors (context.ts THREAD_FDS_HELD / THREAD_FDS_TAKEN).
  const owner = new Int32Array(new SharedArrayBuffer(4));
  let worker: Worker;
  try {
    worker = new Worker(THREAD_ENTRY, {
      workerData: { context, module: href, owner }, argv: args, execArgv, ...(env ? { env } : {}),
    });
  } catch (cause) {
    throw new ShmbusError(ErrorCode.SYSCALL, 'cannot start the worker thread', { cause, details: { module: href } });
  }
  const release = () => { try { releaseWorkerEnds(pair, closeFd); } catch { /* already closed */ } };
  // The thread is terminated only once it has loaded its imports (THREAD_TOOK_FDS comes after them: host/thread.ts
  // terminationGate).
  const gate = terminationGate(worker);
  const terminate = (): void => { void gate.terminate(); };
  let copies: [number, number] | undefined;
  worker.on('message', (m) => {
    // Only the entry's own message counts: it comes before the user's module runs (which could post anything).
    if (copies !== undefined || !Array.isArray(m) || m[0] !== THREAD_TOOK_FDS || !Number.isInteger(m[1]) || !Number.isInteger(m[2])) return;
    copies = [m[1] as number, m[2] as number];
    release();
    gate.loaded();
  });
  const exited = new Promise<WorkerExit>((resolve) => worker.once('exit', (code) => {
    release();
    // Terminated before its module took its copies of the descriptors, the thread could not close them.
    if (copies !== undefined && Atomics.compareExchange(owner, 0, THREAD_FDS_HELD, THREAD_FDS_TAKEN) === THREAD_FDS_HELD) {
      for (const fd of copies) { try { closeFd(fd); } catch { /* closed */ } }
    }
    resolve({ code, signal: null });
  }));
  let channel: Channel;
  try {
    spawnTestHooks.beforeParentChannel?.({ threadId: worker.threadId });
    channel = openParentChannel(pair, process.pid, `worker.thread.${worker.threadId}`);
  } catch (error) {
    // The thread runs already (it may hold copies of the descriptors: they are closed when it ends, above).
    terminate();
    throw error;
  }
  let handle: WorkerHandle | undefined;
  worker.on('error', errorHandler(() => handle, () => {}));
  handle = new WorkerHandle({
    channel, isolation: 'thread', threadId: worker.threadId, exited, kill: terminate, claims: pair.claims,
  });
  return handle;
}
