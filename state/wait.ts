/**
 * Sleeping until a shared word changes, without holding the event loop or a libuv threadpool thread: the one
 * place state/ uses the project's wait-thread runtime (host/wake/thread.ts, family 'futex'). A dedicated thread
 * sleeps in futex_waitv on the words of every pending wait of the process (up to 127 at once; past that a wait
 * falls back to short timed looks), and posts to the main thread when one of them changed.
 *
 * Why the kernel futex: V8's Atomics.wait/notify are emulated per process and do not wake another process; a
 * FUTEX_WAKE on the mapped word (shared futex, keyed by the page) does. The waker side is `wake()` below: one
 * system call, made only when a waiter announced itself in the segment (a waiters counter), so an uncontended
 * unlock or update makes none.
 *
 * Every wait has a timeout (the callers pass the liveness interval), so a lost wakeup or a dead waker costs at
 * most that long, never a hang.
 */
import { futexWake, addressOf } from '../host/sys/futex.js';
import {
  WaitThread, CTL_GEN, CTL_SLEEPING, CTL_SLOTS_USED, SLOT_BASE, SLOT_INTS, SLOT_FREE, SLOT_ARMED, SLOT_FIRED, FUTEX_SLOTS,
} from '../host/wake/thread.js';
import type { Engine } from '../host/engine.js';
import { LIVENESS_MS } from '../host/liveness.js';

/**
 * How long a sleep lasts at most before the sleeper checks a holder's liveness (the project's one liveness
 * interval; re-exported here so that state/ depends on the thread runtime's files from this file only).
 */
export { LIVENESS_MS };
import type { ShmbusError } from '../host/errors.js';

/** How long a wait that found no free slot (or whose thread failed) sleeps before its caller looks again. */
const FALLBACK_MS = 2;

interface Pending {
  resolve(woken: boolean): void;
}

/** One wait thread and its slot table, shared by every SharedState, Mutex and Semaphore of the process. */
class Waits {
  private thread: WaitThread | undefined;
  private ctl: Int32Array | undefined;
  private readonly pending: (Pending | undefined)[] = new Array(FUTEX_SLOTS).fill(undefined);
  private armed = 0;
  private broken = false;
  /** Open objects that may wait: the thread is stopped when the last one closes. */
  private users = 0;

  use(): void {
    this.users++;
  }

  unuse(): void {
    if (--this.users > 0 || !this.thread) return;
    const thread = this.thread;
    this.thread = undefined;
    this.ctl = undefined;
    void thread.stop();
  }

  private start(engine: Engine): void {
    const thread = new WaitThread({
      family: 'futex',
      data: { memory: engine.memory },
      ints: FUTEX_SLOTS * SLOT_INTS,
      onMessage: () => this.collect(),
      kick: (t) => this.kick(t.ctl),
      onFailure: (error) => this.failed(error),
    });
    const ctl = thread.ctl;
    for (let slot = 0; slot < FUTEX_SLOTS; slot++) {
      Atomics.store(ctl, SLOT_BASE + slot * SLOT_INTS + 1, -1);
      Atomics.store(ctl, SLOT_BASE + slot * SLOT_INTS + 3, -1);
    }
    this.thread = thread;
    this.ctl = ctl;
  }

  /**
   * Resolves true once the 32-bit word at linear-memory `offset` no longer holds `value` (or may not: a wakeup is
   * a hint, the caller looks again), false after `ms` or when `signal` aborts.
   */
  wait(engine: Engine, offset: number, value: number, ms: number, signals: (AbortSignal | undefined)[]): Promise<boolean> {
    if (signals.some((s) => s?.aborted)) return Promise.resolve(false);
    if (this.broken) return sleep(Math.min(ms, FALLBACK_MS), signals);
    if (!this.thread) this.start(engine);
    const slot = this.pending.indexOf(undefined);
    if (slot < 0) return sleep(Math.min(ms, FALLBACK_MS), signals);
    return new Promise<boolean>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (woken: boolean) => {
        if (this.pending[slot] !== entry) return;
        clearTimeout(timer);
        for (const s of signals) s?.removeEventListener('abort', onAbort);
        this.disarm(slot);
        resolve(woken);
      };
      const onAbort = () => done(false);
      const entry: Pending = { resolve: done };
      this.pending[slot] = entry;
      timer = setTimeout(() => done(false), ms);
      for (const s of signals) s?.addEventListener('abort', onAbort, { once: true });
      this.arm(slot, offset, value);
    });
  }

  private arm(slot: number, offset: number, value: number): void {
    const ctl = this.ctl!;
    const at = SLOT_BASE + slot * SLOT_INTS;
    if (slot >= Atomics.load(ctl, CTL_SLOTS_USED)) Atomics.store(ctl, CTL_SLOTS_USED, slot + 1);
    Atomics.store(ctl, at + 1, offset);
    Atomics.store(ctl, at + 2, value | 0);
    // A new sequence number with ARMED: the thread fires a slot only by a compare-exchange on the state it read.
    Atomics.store(ctl, at, ((Atomics.load(ctl, at) >>> 2) + 1) << 2 | SLOT_ARMED);
    if (this.armed++ === 0) this.thread!.hold();
    Atomics.add(ctl, CTL_GEN, 1);
    // SYNC: Dekker with the thread's loop (host/wake/wait-worker.ts): GEN is bumped before SLEEPING is read.
    if (Atomics.load(ctl, CTL_SLEEPING) !== 0) this.kick(ctl);
  }

  private disarm(slot: number): void {
    this.pending[slot] = undefined;
    const ctl = this.ctl;
    if (!ctl) return;
    const at = SLOT_BASE + slot * SLOT_INTS;
    // Only the main thread frees a slot; the thread's compare-exchange to FIRED fails once the state changed.
    Atomics.store(ctl, at, (Atomics.load(ctl, at) & ~3) | SLOT_FREE);
    // No word: the thread forgets it the next time it wakes (no wakeup needed for that).
    Atomics.store(ctl, at + 1, -1);
    if (--this.armed === 0) this.thread?.release();
  }

  private collect(): void {
    const ctl = this.ctl;
    if (!ctl) return;
    const used = Atomics.load(ctl, CTL_SLOTS_USED);
    for (let slot = 0; slot < used; slot++) {
      if ((Atomics.load(ctl, SLOT_BASE + slot * SLOT_INTS) & 3) === SLOT_FIRED) this.pending[slot]?.resolve(true);
    }
  }

  private kick(ctl: Int32Array): void {
    Atomics.add(ctl, CTL_GEN, 1);
    futexWake(addressOf(ctl) + BigInt(CTL_GEN * 4), false);
  }

  /** The thread died: every wait becomes a short timed look from now on. */
  private failed(error: ShmbusError): void {
    process.emitWarning(`shmbus: ${error.message}; state/lock waits now poll every ${FALLBACK_MS} ms`, { code: 'SHMBUS_WAKE_THREAD' });
    this.broken = true;
    this.thread = undefined;
    this.ctl = undefined;
    for (const p of this.pending) p?.resolve(true);
  }
}

function sleep(ms: number, signals: (AbortSignal | undefined)[]): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => { for (const s of signals) s?.removeEventListener('abort', onAbort); resolve(true); }, ms);
    const onAbort = () => { clearTimeout(timer); for (const s of signals) s?.removeEventListener('abort', onAbort); resolve(false); };
    for (const s of signals) s?.addEventListener('abort', onAbort, { once: true });
  });
}

const waits = new Waits();

/** An object that may wait opened / closed (the wait thread lives while any is open). */
export const useWaits = (): void => waits.use();
export const unuseWaits = (): void => waits.unuse();

/** See Waits.wait; the wait ends early (false) when any of `signals` aborts (the caller's, the handle's close). */
export function waitWord(engine: Engine, offset: number, value: number, ms: number, ...signals: (AbortSignal | undefined)[]): Promise<boolean> {
  return waits.wait(engine, offset, value, ms, signals);
}

/** FUTEX_WAKE (shared) of every process sleeping on the word at `address`. */
export function wakeWord(address: bigint): void {
  futexWake(address, true);
}
