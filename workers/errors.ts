/**
 * The errors a Pool rejects tasks with, beyond the common ones (ERR_SHMBUS_TIMEOUT, ERR_SHMBUS_CLOSED,
 * ERR_SHMBUS_QUEUE_FULL, an abort signal's reason).
 */
import { ErrorCode, ShmbusError } from '../host/errors.js';

/** The worker running the task died: its exit code, or the signal that killed it. ERR_SHMBUS_PEER_DEAD. */
export class WorkerExitError extends ShmbusError {
  /** The process's or thread's exit code (null when a signal killed it). */
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;

  constructor(exitCode: number | null, signal: NodeJS.Signals | null, detailFields: Record<string, unknown> = {}) {
    super(ErrorCode.PEER_DEAD, 'the worker running the task died', { details: { exitCode, signal, ...detailFields } });
    this.exitCode = exitCode;
    this.signal = signal;
  }
}

/**
 * The pool's workers keep ending before they run a single task (the task module exits or crashes as it loads, or
 * soon after): after MAX_FAILED_STARTS (pool.ts) in a row the pool stops starting them and is broken — every
 * pending and later task rejects with this. ERR_SHMBUS_PEER_DEAD, with the last worker's exit code or signal.
 */
export class WorkerStartError extends ShmbusError {
  readonly attempts: number;
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;

  constructor(attempts: number, exitCode: number | null, signal: NodeJS.Signals | null) {
    super(ErrorCode.PEER_DEAD, `the pool's workers ended before running a task, ${attempts} in a row: the pool is broken`, {
      details: { attempts, exitCode, signal },
    });
    this.attempts = attempts;
    this.exitCode = exitCode;
    this.signal = signal;
  }
}

/** What a worker reports about an error its task threw (plain data, bounded by the decoder's limits). */
export interface ThrownDescription { name?: unknown; message?: unknown; stack?: unknown; code?: unknown }

/**
 * The task threw (or its promise rejected) in the worker. ERR_SHMBUS_REMOTE; the worker's error's name, message,
 * code and stack are kept (as text: nothing of a peer's becomes code or an object we act on).
 */
export class TaskError extends ShmbusError {
  readonly remoteName: string;
  readonly remoteMessage: string;
  readonly remoteCode: string | undefined;
  readonly remoteStack: string | undefined;

  constructor(thrown: ThrownDescription) {
    const text = (v: unknown, max: number) => (typeof v === 'string' ? v.slice(0, max) : undefined);
    const name = text(thrown.name, 200) ?? 'Error';
    const message = text(thrown.message, 4096) ?? String(thrown.message);
    super(ErrorCode.REMOTE, `task failed in the worker: ${name}: ${message}`);
    this.remoteName = name;
    this.remoteMessage = message;
    this.remoteCode = text(thrown.code, 200);
    this.remoteStack = text(thrown.stack, 16384);
  }
}

/** Describes an error thrown by a task, for the parent (the inverse of TaskError). */
export function describeThrown(error: unknown): ThrownDescription {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return { name: error.name, message: error.message, stack: error.stack, code: typeof code === 'string' ? code : undefined };
  }
  return { name: 'Error', message: String(error) };
}
