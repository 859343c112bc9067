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

/** Yields up to `turns` microtask turns, calling `ready` after each; true as soon as it returns true. */
export async function readyWithinTurns(ready: () => boolean, turns = TURNS_BEFORE_SPIN): Promise<boolean> {
  for (let i = 0; i < turns; i++) {
    await undefined;
    if (COUNTING) perf.microtasks++;
    if (ready()) return true;
  }
  return false;
}
