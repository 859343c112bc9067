/**
 * The one runtime for dedicated threads: a worker_threads thread that blocks in system calls (epoll_wait, msgrcv,
 * futex_waitv, sem_wait, semop) so that neither the event loop nor a libuv threadpool thread ever does, and tells
 * the main thread what it saw. Two kinds of user build on it:
 *
 *   host/blocking.ts   the epoll thread (every POSIX queue and peer pidfd) and the msgrcv thread (the process's
 *                      System V port): events go through a ring of entries in a SharedArrayBuffer
 *   host/wake/         one wait thread per blocking wake mechanism (futex, sem, sysvsem): a coalesced "look
 *                      again" message
 *
 * Every thread runs the same worker script (host/thread-worker.ts), which loads the loop of its kind
 * (`ThreadKind`), says 'ready' and blocks in that loop until told to stop. What this file owns, once for all:
 *
 *   Start and ready.  The worker is the compiled JavaScript (dist/), run without the parent's loader hooks or
 *     flags: plain and quick to load. Until it says 'ready' it keeps the process alive whatever its users want:
 *     a process that exits while a worker still loads koffi's native addon aborts (a napi_throw in a terminating
 *     worker). `ready` resolves then (or when the worker exits first).
 *   Keeping the process alive.  After 'ready' the thread holds the process (worker.ref) only while a user holds
 *     it (`hold`/`release`: an open connection, a parked channel); otherwise it idles unref'd.
 *   Stop.  A thread blocked in a system call cannot be terminated (V8 only interrupts JavaScript) and Node joins
 *     every worker at exit, so a thread is stopped by its user's `stop` callback, synchronous: set the thread's
 *     stop flag, then make its system call return (an eventfd write, a futex wake, a sem_post, a message). It is
 *     called by `stop()` and by the one process-exit hook (host/exit.ts) each thread registers.
 *   Failure.  An exception in the thread, an error it reports, or an exit nobody asked for: `onFailure` hears it
 *     once, so every user waiting on the thread gets a typed error instead of waiting forever.
 *
 * Costs, measured 2026-12-02 on the 2-core VM with both cores busy with other test suites (load average 10-12),
 * `node dist/bench/thread-wake.js`, medians of 4 rotated rounds of 20,000 round trips, two runs: a thread →
 * main-thread wake round trip is p50 11-12 µs / p99 24-31 µs through worker.postMessage and p50 12-13 µs / p99
 * 25-31 µs through Atomics.notify + Atomics.waitAsync: the same within the noise. So each user keeps the way
 * that suits its data (host/blocking.ts: a ring of entries, many events per wake; host/wake/: one coalesced
 * "look again" message), and a wakeup costs one thread hop either way. A thread takes 90-150 ms from start to
 * 'ready' on that loaded machine and adds 8.5 MiB of RSS (its V8 isolate), once per kind and process.
 */
import { Worker, isMainThread } from 'node:worker_threads';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ErrorCode, ShmbusError } from './errors.js';
import { onProcessExit } from './exit.js';

/**
 * How long a blocking call of a dedicated thread lasts at most when the thread was started by a worker thread,
 * not by the main thread (0: without bound). Node ends such a thread with its creator: terminating the creator
 * terminates and joins it, and a thread inside a system call never comes back to JavaScript to be terminated, so
 * `worker.terminate()` of a thread that used a futex, semaphore, POSIX queue or System V port would never finish
 * (there is no exit hook on terminate to stop it the usual way). Bounded, each call returns at least this often
 * and the thread goes on (10 wakeups a second while idle); the System V port's msgrcv, which has no timeout,
 * polls instead (at most 5 ms apart while idle: blocking-loops.ts). From the main thread calls block without
 * bound: the process-exit hook stops them.
 */
export const NESTED_WAIT_MS = isMainThread ? 0 : 100;

/** The loops a dedicated thread can run (host/thread-worker.ts picks one). */
export type ThreadKind = 'epoll' | 'msgrcv' | 'futex' | 'sem' | 'sysvsem';

/** From the thread: 'ready' once its loop's modules are loaded, 0 for a notification, `{ left }` once it stopped
 * serving the object of that epoch (host/wake/thread.ts), or the error that stopped it. */
export type ThreadMessage = 'ready' | 0 | { left: number } | { error: string; errno?: number };

/**
 * The compiled worker script. Next to this file when running compiled (dist/host/); from the sources (tap runs
 * .ts files) the compiled copy in dist/ is used, so the thread never needs a TypeScript loader.
 */
function workerScript(): string {
  for (const rel of ['./thread-worker.js', '../dist/host/thread-worker.js']) {
    const path = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(path)) return path;
  }
  throw new ShmbusError(ErrorCode.NOT_FOUND, 'the thread script is not built; run npm run build', { details: { file: 'dist/host/thread-worker.js' } });
}

export interface DedicatedThreadOptions {
  kind: ThreadKind;
  /** What the loop needs (a SharedArrayBuffer control block, fds, the wasm memory, a semaphore): structured-cloned. */
  data: Record<string, unknown>;
  /** Sets the thread's stop flag and makes its blocking call return. Synchronous and safe during process exit. */
  stop(): void;
  /** A notification (0), or another message of its user's (`{ left }`), from the thread. */
  onMessage?(message: 0 | { left: number }): void;
  /** The thread failed (see the file comment). Called at most once; never after stop(). */
  onFailure(error: ShmbusError): void;
}

/** One dedicated thread (see the file comment). */
export class DedicatedThread {
  readonly kind: ThreadKind;
  /** Resolves once the thread runs its loop (or has exited). */
  readonly ready: Promise<void>;
  private readonly worker: Worker;
  private readonly options: DedicatedThreadOptions;
  private holds = 0;
  private starting = true;
  private stopping = false;
  private exited = false;
  private failed = false;
  private readonly exitPromise: Promise<void>;
  private readonly unhookExit: () => void;

  constructor(options: DedicatedThreadOptions) {
    this.kind = options.kind;
    this.options = options;
    this.worker = new Worker(workerScript(), {
      workerData: { kind: options.kind, boundMs: NESTED_WAIT_MS, ...options.data },
      execArgv: [],
      stdin: false,
      // The loops allocate almost nothing; a runaway thread fails alone instead of growing without bound.
      resourceLimits: { maxOldGenerationSizeMb: 16, maxYoungGenerationSizeMb: 4 },
    });
    let onReady!: () => void;
    this.ready = new Promise((resolve) => { onReady = resolve; });
    this.worker.on('message', (message: ThreadMessage) => {
      if (message === 'ready') {
        this.starting = false;
        if (this.holds === 0 || this.stopping) this.worker.unref();
        onReady();
      } else if (message === 0 || (typeof message === 'object' && message !== null && 'left' in message)) {
        options.onMessage?.(message);
      } else if (typeof message === 'object' && message !== null && 'error' in message) {
        this.fail(new ShmbusError(ErrorCode.SYSCALL, `the ${this.kind} thread failed: ${message.error}`, { details: { errno: message.errno } }));
      }
    });
    this.worker.on('error', (error) => this.fail(new ShmbusError(ErrorCode.SYSCALL, `the ${this.kind} thread failed`, { cause: error, details: { cause: String(error) } })));
    this.exitPromise = new Promise((resolve) => {
      this.worker.once('exit', (code) => {
        this.exited = true;
        this.unhookExit();
        onReady();
        if (!this.stopping) this.fail(new ShmbusError(ErrorCode.SYSCALL, `the ${this.kind} thread exited`, { details: { code } }));
        resolve();
      });
    });
    this.unhookExit = onProcessExit(() => this.requestStop());
  }

  /** Something that must keep the process alive (an open connection, a parked channel) uses the thread. */
  hold(): void {
    if (this.holds++ === 0 && !this.stopping) this.worker.ref();
  }

  release(): void {
    if (this.holds > 0 && --this.holds === 0 && !this.starting) this.worker.unref();
  }

  /** Tells the thread to exit. Resolves once it has (then whatever it used may be freed). */
  stop(): Promise<void> {
    this.requestStop();
    return this.exitPromise;
  }

  /** Sends the thread's loop a message (it reads them itself: host/wake/wait-loops.ts nextObject). */
  post(message: unknown): void {
    this.worker.postMessage(message);
  }

  /** Settles once the thread has exited (stopped or not). */
  get whenExited(): Promise<void> {
    return this.exitPromise;
  }

  /** False once the thread has exited. */
  get running(): boolean {
    return !this.exited;
  }

  private requestStop(): void {
    if (this.stopping || this.exited) return;
    this.stopping = true;
    if (!this.starting) this.worker.unref();
    this.options.stop();
  }

  private fail(error: ShmbusError): void {
    if (this.stopping || this.failed) return;
    this.failed = true;
    this.requestStop();
    this.options.onFailure(error);
  }
}

/**
 * The rule for terminating any worker thread of ours that imports koffi (a plugin's runner, a `spawn`ed thread):
 * Node aborts the whole process ("FATAL ERROR: napi_throw") when a thread is terminated while koffi loads or
 * declares its functions, so a thread is terminated only after it said its imports are loaded (`loaded()`, called
 * by the owner on that message) or it is gone. DedicatedThread keeps the same rule through its 'ready'.
 */
export function terminationGate(worker: Worker): { loaded(): void; terminate(): Promise<number> } {
  let loaded!: () => void;
  const imported = new Promise<void>((resolve) => { loaded = resolve; });
  worker.once('exit', () => loaded());
  return { loaded, terminate: async () => { await imported; return worker.terminate(); } };
}
