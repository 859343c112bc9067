/**
 * Sleeping until a shared word changes, without holding the event loop or a libuv threadpool thread: state/ waits
 * through the futex wake mechanism (host/wake/futex.ts), the same slot table and wait thread that channels with
 * `wake=futex` and bus topics sleep through. A wait is a sleeper of that mechanism armed on one word: the thread
 * sleeps in futex_waitv on it (with every other armed word of the process) and the main thread hears when it moved.
 *
 * Why the kernel futex: V8's Atomics.wait/notify are emulated per process and do not wake another process; a
 * FUTEX_WAKE on the mapped word (shared futex, keyed by the page) does. The waker side is `wakeWord()` below: one
 * system call, made only when a waiter announced itself in the segment (a waiters counter), so an uncontended
 * unlock or update makes none.
 *
 * Every wait has a timeout (the callers pass the liveness interval), so a lost wakeup or a dead waker costs at
 * most that long, never a hang. Where futex_waitv is missing (Linux before 5.16, or refused by seccomp) a wait
 * is a short timed look instead.
 */
import { futexWake } from '../host/sys/futex.js';
import { futex } from '../host/wake/futex.js';
import { WAKE_DATA, type Sleeper } from '../host/wake/mechanism.js';
import type { RingEnd } from '../host/ring.js';
import type { Engine } from '../host/engine.js';
import { LIVENESS_MS } from '../host/liveness.js';

/**
 * How long a sleep lasts at most before the sleeper checks a holder's liveness (the project's one liveness
 * interval; re-exported here so that state/ depends on the wake mechanism's files from this file only).
 */
export { LIVENESS_MS };

/** How long a wait sleeps without futex_waitv before its caller looks again. */
const FALLBACK_MS = 2;

/**
 * Resolves true once the 32-bit word at linear-memory `offset` of `engine` no longer holds `value` (or may not:
 * a wakeup is a hint, the caller looks again), false after `ms` or when any of `signals` aborts (the caller's,
 * the handle's close).
 */
export function waitWord(engine: Engine, offset: number, value: number, ms: number, ...signals: (AbortSignal | undefined)[]): Promise<boolean> {
  if (signals.some((s) => s?.aborted)) return Promise.resolve(false);
  return new Promise<boolean>((resolve) => {
    let sleeper: Sleeper | undefined;
    let timer: NodeJS.Timeout | undefined;
    let over = false;
    const done = (woken: boolean) => {
      if (over) return;
      over = true;
      clearTimeout(timer);
      for (const s of signals) s?.removeEventListener('abort', onAbort);
      sleeper?.close();
      resolve(woken);
    };
    const onAbort = () => done(false);
    for (const s of signals) s?.addEventListener('abort', onAbort, { once: true });
    // The word as the sleeper asks for it (a ring end's waitWord: what to sleep on, and the value seen).
    const word = { waitWord: () => ({ offset, value }) } as unknown as RingEnd;
    try {
      sleeper = futex.sleeper({ engine, rx: word, tx: word, socket: undefined as never, onWake: () => done(true) });
    } catch {
      // No futex_waitv: a short look instead.
      timer = setTimeout(() => done(true), Math.min(ms, FALLBACK_MS));
      return;
    }
    timer = setTimeout(() => done(false), ms);
    // Moved already? Then the sleeper wakes (done(true)) inside wait().
    sleeper.wait(WAKE_DATA);
  });
}

/** FUTEX_WAKE (shared) of every process sleeping on the word at `address`. */
export function wakeWord(address: bigint): void {
  futexWake(address, true);
}
