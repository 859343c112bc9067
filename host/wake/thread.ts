/**
 * Wait threads: the dedicated threads that make the blocking wake mechanisms' system calls, so that neither the
 * event loop nor a libuv threadpool thread ever blocks for a parked channel.
 *
 * One thread serves every channel of its mechanism in the process, whatever their number:
 *   futex     futex_waitv on the ring words of every channel parked on a futex, plus a private control word the
 *             main thread bumps to make it re-read the set (127 words per thread; a second thread only past that)
 *   sem       sem_wait on the process's one POSIX semaphore, which every peer posts
 *   sysvsem   semop(-1) on the process's one System V semaphore, which every peer increments
 * (`doorbell`, `mq` and `signal` need no thread: a socket, an mqd and a signalfd are descriptors the event loop
 * watches.) A single thread cannot serve several mechanisms: each blocks in a different system call, and none of
 * them can wait for the others' events. So a process has at most one thread per blocking mechanism in use:
 * bounded by the number of mechanisms, never by the number of channels.
 *
 * The thread → main thread wake is worker.postMessage (coalesced: one message until the main thread has looked).
 * Measured on the 2-core VM, thread wake → main-thread callback p50: postMessage 5.7 µs, Atomics.notify +
 * Atomics.waitAsync 7.8 µs, an eventfd watched by the event loop 7.9 µs; and in bench/latency's parked ping-pong
 * (futex, sem) postMessage was as fast as waitAsync or faster (futex 72.5 vs 91.2 µs, 73.7 vs 73.6 µs).
 *
 * Lifetime. A thread keeps the process alive (worker.ref) only while some channel is parked on it and awaited;
 * otherwise it is unref'd. A thread blocked in a system call cannot be terminated (V8 can only interrupt
 * JavaScript), and Node joins every worker at exit, so a thread is always stopped by setting STOP and kicking it
 * out of its call (`kick`, synchronous: a futex wake, a sem_post, ...): when its mechanism has no channel left,
 * and at process exit for every thread still running.
 */
import { Worker } from 'node:worker_threads';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ErrorCode, ShmbusError } from '../errors.js';
import { onProcessExit } from '../exit.js';

// --- the control block shared with the thread (an Int32Array over a SharedArrayBuffer) --------------------------

/** 1: the thread must exit at its next wakeup (written by the main thread). */
export const CTL_STOP = 0;
/** 1 while a notification is on its way to the main thread and not yet handled (thread sets, main clears). */
export const CTL_NOTIFY = 1;
/** futex: the control futex word; the main thread adds 1 whenever the set of words changes. */
export const CTL_GEN = 2;
/** futex: 1 while the thread is (about to be) asleep in futex_waitv, so the main thread knows to wake it. */
export const CTL_SLEEPING = 3;
/** futex: slots [0, this) have been handed out at least once; the thread looks at no others. */
export const CTL_SLOTS_USED = 4;
/**
 * futex: the first slot. Slot i is ints [SLOT_BASE + SLOT_INTS·i …):
 *   +0 state (main thread, and the thread's compare-exchange ARMED → FIRED)
 *   +1 linear-memory offset of the word, -1 when the slot has no word (main thread)
 *   +2 the value the waiter parked with (main thread)
 *   +3, +4 the offset and value the thread is sleeping with for this slot now, offset -1 for none (thread)
 */
export const SLOT_BASE = 16;
export const SLOT_INTS = 6;
/** Slot states (low 2 bits; the rest is a sequence number against a re-armed slot being fired by mistake). */
export const SLOT_FREE = 0;
export const SLOT_ARMED = 1;
export const SLOT_FIRED = 2;
/** Words per futex thread: futex_waitv takes 128 entries, one is the control word. */
export const FUTEX_SLOTS = 127;

export type WaitFamily = 'futex' | 'sem' | 'sysvsem';

/** What the thread posts: a notification (0), or its failure. */
/** From the thread: 'ready' once its modules are loaded, 0 for a notification, or the error that stopped it. */
export type ThreadMessage = 'ready' | 0 | { error: string; errno?: number };

// --- process exit --------------------------------------------------------------------------------------------------

// --- the worker script ---------------------------------------------------------------------------------------------

/**
 * The compiled worker script. Next to this file when running compiled (dist/host/wake/); from the sources (tap
 * runs .ts files) the compiled copy in dist/ is used: the worker runs plain JavaScript without any loader, which
 * also keeps its start fast.
 */
function workerScript(): string {
  for (const rel of ['./wait-worker.js', '../../dist/host/wake/wait-worker.js']) {
    const path = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(path)) return path;
  }
  throw new ShmbusError(ErrorCode.NOT_FOUND, 'the wake thread script is not built; run npm run build', { details: { file: 'dist/host/wake/wait-worker.js' } });
}

export interface WaitThreadOptions {
  family: WaitFamily;
  /** What the worker needs besides the control block (the wasm memory, a semaphore address, a semid). */
  data: Record<string, unknown>;
  /** Extra Int32 slots after the header (futex: its slot table). */
  ints?: number;
  onMessage(message: ThreadMessage): void;
  /** Kicks the thread out of its blocking call (it then sees CTL_STOP). Synchronous and safe at exit. */
  kick(thread: WaitThread): void;
  /** The thread died unexpectedly (an exception, a system call it cannot recover from). */
  onFailure(error: ShmbusError): void;
}

export class WaitThread {
  readonly family: WaitFamily;
  readonly ctl: Int32Array;
  private readonly worker: Worker;
  private readonly options: WaitThreadOptions;
  private holds = 0;
  /** Until the thread's 'ready': it keeps the process alive whatever the holds (see the constructor). */
  private starting = true;
  private stopping = false;
  private exited = false;
  private readonly exitPromise: Promise<void>;
  private readonly unhookExit: () => void;

  constructor(options: WaitThreadOptions) {
    this.family = options.family;
    this.options = options;
    this.ctl = new Int32Array(new SharedArrayBuffer((SLOT_BASE + (options.ints ?? 0)) * 4));
    this.worker = new Worker(workerScript(), {
      workerData: { family: options.family, ctl: this.ctl, ...options.data },
      // Plain JavaScript, no loader hooks of the parent (tap's TypeScript loader), no stdin.
      execArgv: [],
      stdin: false,
      // The thread only runs a loop of system calls.
      resourceLimits: { maxOldGenerationSizeMb: 16, maxYoungGenerationSizeMb: 4 },
    });
    // The worker stays ref'd until it says 'ready': loading its modules (koffi's native addon among them) must not
    // be cut short by the process exiting on its own, which makes Node abort the whole process (a napi_throw in a
    // terminating worker). From then on it keeps the process alive only while a channel waits on it (hold).
    this.worker.on('message', (message: ThreadMessage) => {
      if (message === 'ready') {
        this.starting = false;
        if (this.holds === 0 || this.stopping) this.worker.unref();
        return;
      }
      if (message === 0) Atomics.store(this.ctl, CTL_NOTIFY, 0);
      else if (typeof message === 'object' && 'error' in message) {
        this.fail(new ShmbusError(ErrorCode.SYSCALL, `the ${this.family} wait thread failed: ${message.error}`, { details: { errno: message.errno } }));
        return;
      }
      options.onMessage(message);
    });
    this.worker.on('error', (error) => this.fail(new ShmbusError(ErrorCode.SYSCALL, `the ${this.family} wait thread failed`, { cause: error })));
    this.exitPromise = new Promise((resolve) => {
      this.worker.once('exit', (code) => {
        this.exited = true;
        this.unhookExit();
        if (!this.stopping) this.fail(new ShmbusError(ErrorCode.SYSCALL, `the ${this.family} wait thread exited`, { details: { code } }));
        resolve();
      });
    });
    this.unhookExit = onProcessExit(() => this.requestStop());
  }

  /** A channel parked on this thread and is awaited: keep the process alive. */
  hold(): void {
    if (this.holds++ === 0 && !this.stopping) this.worker.ref();
  }

  release(): void {
    if (this.holds > 0 && --this.holds === 0 && !this.starting) this.worker.unref();
  }

  /** Tells the thread to exit and kicks it. Resolves once it has (then whatever it used may be freed). */
  stop(): Promise<void> {
    this.requestStop();
    return this.exitPromise;
  }

  get running(): boolean {
    return !this.exited;
  }

  private requestStop(): void {
    if (this.stopping || this.exited) return;
    this.stopping = true;
    if (!this.starting) this.worker.unref();
    Atomics.store(this.ctl, CTL_STOP, 1);
    this.options.kick(this);
  }

  private fail(error: ShmbusError): void {
    if (this.stopping) return;
    this.requestStop();
    this.options.onFailure(error);
  }
}
