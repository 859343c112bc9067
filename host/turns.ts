/**
 * Microtask turns before a spin, for every waiter that busy-polls shared memory (a channel, a topic subscription,
 * a lock() waiting for a release).
 *
 * A spin is synchronous: while it polls, nothing else in this thread runs, including the microtasks the caller
 * already queued. Those are typically the code awaiting the message just handed out, about to send the next one
 * (the one the peer will answer): started at once, the spin held that code back for its whole budget, found
 * nothing, and parked, so every round trip took a wakeup (a ping-pong through a 'message' listener and a promise:
 * ~170 µs a trip instead of ~5 µs). So a reader first yields for a few turns, looking at the ring after each.
 */
import { COUNTING, perf } from './ring.js';

/** Turns a reader yields before it spins: enough for a few nested async functions to settle and send. */
export const TURNS_BEFORE_SPIN = 16;

const RESOLVED = Promise.resolve();

/**
 * Calls `ready` after each of up to `turns` microtask turns, then `done(found)` from the turn that decided: true as
 * soon as `ready` returns true, false after the last turn (whose look came right before, in the same turn); `failed`
 * if `ready` throws. A caller that settles its own promise in `done` resumes whoever awaits it one turn later; an
 * async function in between would add a turn per level (~0.1 µs each, on the way to the message).
 */
export function lookWithinTurns(
  ready: () => boolean,
  done: (found: boolean) => void,
  failed: (error: unknown) => void,
  turns = TURNS_BEFORE_SPIN,
): void {
  let turn = 0;
  const step = (): void => {
    if (COUNTING) perf.microtasks++;
    let found: boolean;
    try {
      found = ready();
    } catch (error) {
      failed(error);
      return;
    }
    if (found) done(true);
    else if (++turn < turns) void RESOLVED.then(step);
    else done(false);
  };
  void RESOLVED.then(step);
}

/** lookWithinTurns as a promise: whether `ready` returned true within `turns` turns. */
export function readyWithinTurns(ready: () => boolean, turns = TURNS_BEFORE_SPIN): Promise<boolean> {
  return new Promise((resolve, reject) => lookWithinTurns(ready, resolve, reject, turns));
}
