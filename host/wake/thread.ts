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
 * awaited. When its mechanism has no channel left it idles for the next (`idle` below: sem and sysvsem threads
 * move to the next object, see WaitThread.detach/attach; futex keeps its first thread and stops the others), and
 * it is stopped at process exit.
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

/** The thread serves the object of this epoch (sem, sysvsem); the main thread bumps it to move the thread off its
 * object (detach) or onto a new one (attach: the object comes in a message tagged with the new epoch). */
export const CTL_EPOCH = 5;

/** What one user of a wait thread (an incarnation of its mechanism's object) hears from it. */
export interface WaitHandlers {
  onMessage(message: 0): void;
  /** Kicks the thread out of its blocking call on this user's object (it then sees CTL_STOP or a new epoch).
   * Synchronous and safe at exit. */
  kick(): void;
  /** The thread died unexpectedly (an exception, a system call it cannot recover from). */
  onFailure(error: ShmbusError): void;
}

export interface WaitThreadOptions extends WaitHandlers {
  family: WaitFamily;
  /** What the worker needs besides the control block (the wasm memory, a semaphore address, a semid). */
  data: Record<string, unknown>;
  /** Extra Int32 slots after the header (futex: its slot table). */
  ints?: number;
}

/** A dedicated thread running the wait loop of one mechanism, with its control block. */
export class WaitThread {
  readonly family: WaitFamily;
  readonly ctl: Int32Array;
  private readonly thread: DedicatedThread;
  /** Who the thread serves now; undefined while it idles between objects. */
  private user: WaitHandlers | undefined;
  private epoch = 0;
  /** detach() calls waiting for the thread to leave the object of an epoch. */
  private readonly leaving = new Map<number, () => void>();

  constructor(options: WaitThreadOptions) {
    this.family = options.family;
    this.user = options;
    this.ctl = new Int32Array(new SharedArrayBuffer((SLOT_BASE + (options.ints ?? 0)) * 4));
    this.thread = new DedicatedThread({
      kind: options.family,
      data: { ctl: this.ctl, ...options.data },
      stop: () => {
        Atomics.store(this.ctl, CTL_STOP, 1);
        // Idle, it sleeps on the epoch; serving, in its object's system call.
        Atomics.notify(this.ctl, CTL_EPOCH);
        this.user?.kick();
      },
      onMessage: (message) => {
        if (message === 0) {
          Atomics.store(this.ctl, CTL_NOTIFY, 0);
          // A look the previous user asked for may arrive after a new one attached: a spurious look, harmless.
          this.user?.onMessage(0);
        } else {
          this.left(message.left);
        }
      },
      onFailure: (error) => {
        if (idle.get(this.family) === this) idle.delete(this.family);
        this.user?.onFailure(error);
      },
    });
    // Counted from 'ready' (its modules are loaded, and every thread it needs is started) until it exits.
    const stats = statsFor(options.family);
    stats.started++;
    void this.thread.ready.then(() => {
      if (!this.thread.running) return;
      stats.threads++;
      void this.thread.whenExited.then(() => { stats.threads--; });
    });
    void this.thread.whenExited.then(() => { for (const epoch of [...this.leaving.keys()]) this.left(epoch); });
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
    if (idle.get(this.family) === this) idle.delete(this.family);
    return this.thread.stop();
  }

  get running(): boolean {
    return this.thread.running;
  }

  /**
   * Moves the thread off its object (kicked out of its system call on it), to idle until attach() or stop().
   * Resolves once it has left the object (then the object may be freed), or has exited.
   */
  detach(): Promise<void> {
    const user = this.user;
    this.user = undefined;
    const epoch = this.epoch;
    const left = new Promise<void>((resolve) => this.leaving.set(epoch, resolve));
    if (!this.thread.running) this.left(epoch);
    Atomics.store(this.ctl, CTL_EPOCH, ++this.epoch);
    user?.kick();
    return left;
  }

  /** Hands an idle thread a new object (`data`, structured-cloned) and its user. */
  attach(data: Record<string, unknown>, user: WaitHandlers): void {
    this.user = user;
    this.epoch++;
    // The message first: a thread that sees the new epoch finds its object waiting (wait-loops.ts nextObject).
    this.thread.post({ epoch: this.epoch, ...data });
    Atomics.store(this.ctl, CTL_EPOCH, this.epoch);
    Atomics.notify(this.ctl, CTL_EPOCH);
  }

  private left(epoch: number): void {
    const resolve = this.leaving.get(epoch);
    this.leaving.delete(epoch);
    resolve?.();
  }
}

/**
 * The wait thread of each family (sem, sysvsem) that has no object to serve: kept, asleep and not holding the
 * process, for the family's next object. Starting a thread costs ~0.1 s and 8.5 MiB, and each thread that
 * loads koffi leaves koffi's per-thread memory behind when it ends (three mappings, ~40 KiB: koffi 3.3.4 never
 * frees its instance data), so a process that opened and closed channels on a mechanism over and over would
 * run out of mappings (vm.max_map_count) after some 20,000 channels.
 */
const idle = new Map<WaitFamily, WaitThread>();

/** A wait thread serving `options.data`: the family's idle one if there is one, else a new one. */
export function acquireWaitThread(options: WaitThreadOptions): WaitThread {
  const thread = idle.get(options.family);
  idle.delete(options.family);
  if (thread?.running) {
    thread.attach(options.data, options);
    return thread;
  }
  return new WaitThread(options);
}

/**
 * Takes the thread off its object and keeps it idle for the family's next one (a second idle thread of the family
 * is stopped). Resolves once the thread has left the object: then the object may be freed.
 */
export function retireWaitThread(thread: WaitThread): Promise<void> {
  if (!thread.running || idle.has(thread.family)) return thread.stop();
  idle.set(thread.family, thread);
  return thread.detach();
}
