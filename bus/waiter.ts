/** Sleeping on a topic word (futex, or polling where futex_waitv is missing) and waking its sleepers. */
import type { Engine } from '../host/engine.js';
import { futexWake } from '../host/sys/futex.js';
import { futex } from '../host/wake/futex.js';
import { WAKE_DATA, type Sleeper } from '../host/wake/mechanism.js';

/**
 * Sleeps until the 32-bit word at `offset` differs from `value`, or `timeoutMs` passed, by polling with a
 * growing interval (0.25 → 8 ms). The fallback of WordWaiter when futex waits are not available.
 */
async function sleepOnWord(engine: Engine, offset: number, value: number, timeoutMs: number, stop: () => boolean): Promise<void> {
  const words = new Uint32Array(engine.memory.buffer);
  const deadline = performance.now() + timeoutMs;
  for (let delay = 0.25; ; delay = Math.min(delay * 2, 8)) {
    // SYNC: pairs with the atomic.add of the word in topic_commit / topic_release.
    if (Atomics.load(words, offset >>> 2) !== value || stop()) return;
    const left = deadline - performance.now();
    if (left <= 0) return;
    await new Promise((r) => setTimeout(r, Math.min(delay, left)));
  }
}

/**
 * Sleeps on a topic word (a subscriber on wakeSeq, a publisher on spaceWake) through the futex wait thread
 * (host/wake/futex.ts): no event-loop or threadpool thread blocks, and the other side's FUTEX_WAKE ends the
 * sleep in microseconds. Falls back to polling the word where futex_waitv is missing.
 */
export class WordWaiter {
  private readonly sleeper: Sleeper | undefined;
  private wake: (() => void) | undefined;

  constructor(private readonly engine: Engine, private readonly word: { waitWord(): { offset: number; value: number } }) {
    let sleeper: Sleeper | undefined;
    try {
      sleeper = futex.sleeper({
        engine, rx: word as never, tx: word as never, socket: undefined as never,
        onWake: () => { const w = this.wake; this.wake = undefined; w?.(); },
      });
    } catch {
      sleeper = undefined;
    }
    this.sleeper = sleeper;
  }

  /** Sleeps until the word moves, `timeoutMs` passes, or `stop()` (checked by the polling fallback). */
  async sleep(timeoutMs: number, stop: () => boolean): Promise<void> {
    const sleeper = this.sleeper;
    if (!sleeper) {
      const { offset, value } = this.word.waitWord();
      return sleepOnWord(this.engine, offset, value, timeoutMs, stop);
    }
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.wake = resolve;
      timer = setTimeout(resolve, timeoutMs);
      sleeper.wait(WAKE_DATA);
    });
    clearTimeout(timer);
    this.wake = undefined;
    sleeper.cancel(WAKE_DATA);
  }

  close(): void {
    this.sleeper?.close();
    // A sleep under way ends now, not at its timeout (its caller then sees the subscription closed).
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

/** Wakes every process sleeping on a topic word (one system call, whatever their number). */
export function wakeWord(engine: Engine, offset: number): void {
  try {
    futexWake(engine.address(offset), true);
  } catch { /* no futex: sleepers poll */ }
}
