/**
 * Wait threads: the dedicated threads (host/thread.ts) that make the blocking wake mechanisms' system calls, so
 * that neither the event loop nor a libuv threadpool thread ever blocks for a parked channel.
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
 * The thread's wake of the main thread is one coalesced message ("look again", CTL_NOTIFY: none more until the
 * main thread has looked); the loops are in wait-loops.ts. Start, ready, holds, stop at exit and failures are the
 * runtime's (host/thread.ts). A thread keeps the process alive only while some channel is parked on it and
 * awaited, and is stopped when its mechanism has no channel left, or at process exit.
 */
import { DedicatedThread } from '../thread.js';
import type { ShmbusError } from '../errors.js';
import { statsFor } from './common.js';

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

export interface WaitThreadOptions {
  family: WaitFamily;
  /** What the worker needs besides the control block (the wasm memory, a semaphore address, a semid). */
  data: Record<string, unknown>;
  /** Extra Int32 slots after the header (futex: its slot table). */
  ints?: number;
  onMessage(message: 0): void;
  /** Kicks the thread out of its blocking call (it then sees CTL_STOP). Synchronous and safe at exit. */
  kick(thread: WaitThread): void;
  /** The thread died unexpectedly (an exception, a system call it cannot recover from). */
  onFailure(error: ShmbusError): void;
}

/** A dedicated thread running the wait loop of one mechanism, with its control block. */
export class WaitThread {
  readonly family: WaitFamily;
  readonly ctl: Int32Array;
  private readonly thread: DedicatedThread;

  constructor(options: WaitThreadOptions) {
    this.family = options.family;
    this.ctl = new Int32Array(new SharedArrayBuffer((SLOT_BASE + (options.ints ?? 0)) * 4));
    this.thread = new DedicatedThread({
      kind: options.family,
      data: { ctl: this.ctl, ...options.data },
      stop: () => {
        Atomics.store(this.ctl, CTL_STOP, 1);
        options.kick(this);
      },
      onMessage: (message) => {
        Atomics.store(this.ctl, CTL_NOTIFY, 0);
        options.onMessage(message);
      },
      onFailure: (error) => options.onFailure(error),
    });
    // Counted from 'ready' (its modules are loaded, and every thread it needs is started) until it exits.
    const stats = statsFor(options.family);
    void this.thread.ready.then(() => {
      if (!this.thread.running) return;
      stats.threads++;
      void this.thread.whenExited.then(() => { stats.threads--; });
    });
  }

  /** A channel parked on this thread and is awaited: keep the process alive. */
  hold(): void {
    this.thread.hold();
  }

  release(): void {
    this.thread.release();
  }

  /** Tells the thread to exit and kicks it. Resolves once it has (then whatever it used may be freed). */
  stop(): Promise<void> {
    return this.thread.stop();
  }

  get running(): boolean {
    return this.thread.running;
  }
}
