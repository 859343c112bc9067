/**
 * Owned units: the core of Mutex (one unit) and Semaphore (n units). Each unit is a claim word (host/claim.ts:
 * the holder's pid and the low 32 bits of its start time, 0 when free), so a unit always names its holder and a
 * unit whose holder died can be taken over by one compare-and-swap, by exactly one taker, who learns that it
 * recovered it (like EOWNERDEAD). There is no separate counter that a crash between two stores could leave wrong.
 *
 * Fast path: taking a free unit is one compare-and-swap and giving it back one compare-and-swap, a counter bump
 * and a load, all JS Atomics on the mapped words: no system call. Slow path: a waiter counts itself in `waiters`,
 * then sleeps (state/wait.ts: the wait thread, a shared futex on `releases`) until a release bumps `releases`,
 * or for at most the liveness interval; after a sleep that timed out it checks whether a holder is dead and takes
 * its unit over. A releaser makes the FUTEX_WAKE system call only when `waiters` is non-zero.
 *
 * No lost wakeup: a waiter reads `releases`, then tries the units, then sleeps only while `releases` still holds
 * what it read (the kernel compares atomically with going to sleep). A release that lands after its try changes
 * `releases` first, and reads `waiters` after; the waiter counted itself before its try, so the releaser sees it.
 */
import { LOCK_RELEASES_OFFSET, LOCK_UNITS_OFFSET } from '../assembly/layout.js';
import { BadArgumentError, BadStateError, ClosedError, TimeoutError } from '../host/errors.js';
import { claimAlive, claimPid, ownClaim } from '../host/claim.js';
import { waitWord, wakeWord, LIVENESS_MS } from './wait.js';
import { readyWithinTurns } from '../host/turns.js';
import { COUNTING, perf } from '../host/ring.js';
import type { SyncSegment } from './segment.js';

/** What lock() and acquire() report. */
export interface LockResult {
  /**
   * true when the unit was taken over from a process that died holding it: whatever it guarded may be half
   * changed, and the caller should repair it (the EOWNERDEAD of robust pthread mutexes).
   */
  readonly recovered: boolean;
}

/** Options of a waiting lock() / acquire(). */
export interface WaitOptions {
  /** Milliseconds to wait at most; then ERR_SHMBUS_TIMEOUT. Default: no limit. */
  timeout?: number;
  /** Aborting it ends the wait with ERR_SHMBUS_CLOSED. */
  signal?: AbortSignal;
}

const TAKEN: LockResult = Object.freeze({ recovered: false });
const RECOVERED: LockResult = Object.freeze({ recovered: true });
const TAKEN_NOW = Promise.resolve(TAKEN);
const NO_LIMIT = Object.freeze({ timeout: Infinity });
/** How long a waiter polls for a release before it sleeps (see take). */
const SPIN_NS = BigInt(process.env.SHMBUS_LOCK_SPIN_NS ?? 20_000);
const FREE = 0n;

export function checkWaitOptions(options: WaitOptions | undefined): { timeout: number; signal?: AbortSignal } {
  if (options === undefined) return NO_LIMIT;
  if (typeof options !== 'object' || options === null) throw new BadArgumentError('options must be an object', { options: String(options) });
  const { timeout, signal } = options;
  if (timeout !== undefined && (typeof timeout !== 'number' || !(timeout >= 0))) throw new BadArgumentError('timeout must be a non-negative number of milliseconds', { timeout: String(timeout) });
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new BadArgumentError('signal must be an AbortSignal');
  return { timeout: timeout ?? Infinity, signal };
}

export class Units {
  readonly seg: SyncSegment;
  readonly count: number;
  private readonly claims: BigUint64Array;
  /** The same words as 32-bit halves (low half first: little-endian). */
  private readonly pids: Int32Array;
  /** [releases, waiters] */
  private readonly words: Int32Array;
  private readonly releasesAddress: bigint;
  private readonly mine = ownClaim();
  /** Units this process holds now, most recent last. */
  private readonly held: number[] = [];
  /** Waits of this handle in progress (each counted once in the shared `waiters`). */
  private waiting = 0;
  /** Aborted by shutdown(): ends this handle's sleeps. */
  private readonly closer = new AbortController();
  /** Where this process starts looking for a free unit (spreads processes over a semaphore's units). */
  private readonly hint: number;

  constructor(seg: SyncSegment, count: number) {
    this.seg = seg;
    this.count = count;
    const buffer = seg.engine.memory.buffer;
    this.claims = new BigUint64Array(buffer, seg.at + LOCK_UNITS_OFFSET, count);
    this.pids = new Int32Array(buffer, seg.at + LOCK_UNITS_OFFSET, 2 * count);
    this.words = new Int32Array(buffer, seg.at + LOCK_RELEASES_OFFSET, 2);
    this.releasesAddress = seg.address(LOCK_RELEASES_OFFSET);
    this.hint = process.pid % count;
  }

  /** Units this process holds. */
  get holding(): number {
    return this.held.length;
  }

  /** A free unit, by compare-and-swap from 0; -1 if none is free. No system call. */
  private takeFree(): number {
    const n = this.count;
    for (let k = 0, i = this.hint; k < n; k++, i = i + 1 === n ? 0 : i + 1) {
      // SYNC: pairs with the compare-and-swap to 0 in release() and with every other taker's.
      // The low half (the pid) is 0 only in a free word: a plain 32-bit look first spares a BigInt per busy unit.
      if (this.pids[2 * i] === 0 && Atomics.compareExchange(this.claims, i, FREE, this.mine) === FREE) {
        this.held.push(i);
        return i;
      }
    }
    return -1;
  }

  /** A unit whose holder is dead, taken over by compare-and-swap from that holder's claim; -1 if none. */
  private takeDead(): number {
    // One look in /proc per holder, however many units it holds.
    const verdicts = new Map<bigint, boolean>();
    const alive = (claim: bigint) => {
      let v = verdicts.get(claim);
      if (v === undefined) verdicts.set(claim, v = claimAlive(claim));
      return v;
    };
    for (let i = 0; i < this.count; i++) {
      // SYNC: pairs with the compare-and-swaps in takeFree and release.
      const claim = Atomics.load(this.claims, i);
      if (claim === FREE || claim === this.mine || alive(claim)) continue;
      if (Atomics.compareExchange(this.claims, i, claim, this.mine) === claim) {
        this.held.push(i);
        return i;
      }
    }
    return -1;
  }

  /** One attempt: a free unit, else one a dead process held. Never waits. */
  tryTake(): LockResult | false {
    this.checkOpen();
    if (this.takeFree() >= 0) return TAKEN;
    return this.takeDead() >= 0 ? RECOVERED : false;
  }

  /** Waits for a unit (see the file comment). A free unit costs no new promise: an already-settled one is reused. */
  take(options?: WaitOptions): Promise<LockResult> {
    try {
      this.checkOpen();
      const checked = checkWaitOptions(options);
      if (this.takeFree() >= 0) return TAKEN_NOW;
      return this.wait(checked.timeout, checked.signal);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  private async wait(timeout: number, signal: AbortSignal | undefined): Promise<LockResult> {
    const deadline = Date.now() + timeout;
    // SYNC: pairs with the load of waiters in release(): counted before the first try below.
    Atomics.add(this.words, 1, 1);
    this.waiting++;
    try {
      // Liveness costs a look in /proc per held unit: only after a sleep that ran out, never per contended lock.
      let lookForDead = false;
      for (let round = 0; ; round++) {
        // SYNC: pairs with the Atomics.add of releases in release(); read before trying, slept on after.
        const seen = Atomics.load(this.words, 0);
        if (this.takeFree() >= 0) return TAKEN;
        // Once, a few microtask turns (host/turns.ts: a holder in this thread releases only when it runs, which
        // a spin would prevent), then a short bounded spin: a holder on another core often releases within
        // microseconds, and catching that spares both sides the futex round trip through the wait thread.
        if (round === 0) {
          const released = await readyWithinTurns(() => this.seg.closed || Atomics.load(this.words, 0) !== seen);
          this.checkOpen();
          if (released ? this.takeFree() >= 0 : this.spin(seen)) return TAKEN;
        }
        if (lookForDead && this.takeDead() >= 0) return RECOVERED;
        if (signal?.aborted) throw new ClosedError('wait aborted', { reason: String(signal.reason) });
        const remaining = deadline - Date.now();
        if (remaining <= 0) throw new TimeoutError('timed out waiting for a unit', { url: this.seg.url, timeout, holder: claimPid(Atomics.load(this.claims, 0)) });
        if (COUNTING) perf.parks++;
        const woken = await waitWord(this.seg.engine, this.seg.at + LOCK_RELEASES_OFFSET, seen, Math.min(LIVENESS_MS, remaining), signal, this.closer.signal);
        // Closed while asleep: the window may already hold another segment; touch nothing.
        this.checkOpen();
        // A sleep that ran out without a release: time to ask whether a holder died.
        lookForDead = !woken;
      }
    } finally {
      this.waiting--;
      // After close(), which already took our count back out of `waiters`, the window is not ours any more.
      if (!this.seg.closed) Atomics.sub(this.words, 1, 1);
    }
  }

  /** Polls for a release for at most SPIN_NS; true if it then took a unit. */
  private spin(seen: number): boolean {
    const until = process.hrtime.bigint() + SPIN_NS;
    for (let i = 0; ; i++) {
      if (Atomics.load(this.words, 0) !== seen) return this.takeFree() >= 0;
      if ((i & 31) === 31 && process.hrtime.bigint() > until) return false;
    }
  }

  /** Gives back the unit this process took last. ERR_SHMBUS_BAD_STATE if it holds none. */
  release(): void {
    this.checkOpen();
    const i = this.held.pop();
    if (i === undefined) throw new BadStateError('this process holds no unit of it', { url: this.seg.url });
    // SYNC: pairs with the compare-and-swaps in takeFree / takeDead.
    if (Atomics.compareExchange(this.claims, i, this.mine, FREE) !== this.mine) {
      throw new BadStateError('the unit was taken over: another process judged this one dead', { url: this.seg.url, unit: i });
    }
    // SYNC: pairs with the load of releases in take(): bumped before waiters is read.
    Atomics.add(this.words, 0, 1);
    if (Atomics.load(this.words, 1) !== 0) wakeWord(this.releasesAddress);
  }

  /** Units not held by a living process (free, or held by a dead one and so takeable). */
  available(): number {
    this.checkOpen();
    const verdicts = new Map<bigint, boolean>();
    let n = 0;
    for (let i = 0; i < this.count; i++) {
      const claim = Atomics.load(this.claims, i);
      if (claim === FREE) { n++; continue; }
      if (claim === this.mine) continue;
      let alive = verdicts.get(claim);
      if (alive === undefined) verdicts.set(claim, alive = claimAlive(claim));
      if (!alive) n++;
    }
    return n;
  }

  /**
   * Before the segment is unmapped: gives back every unit this process holds, takes this handle's pending waits
   * out of `waiters`, and ends them (they reject with ERR_SHMBUS_CLOSED).
   */
  shutdown(): void {
    while (this.held.length) {
      try { this.release(); } catch { /* taken over already */ }
    }
    if (this.waiting > 0) Atomics.sub(this.words, 1, this.waiting);
    this.closer.abort();
  }

  private checkOpen(): void {
    if (this.seg.closed) throw new ClosedError(`this handle of ${this.seg.url} is closed`);
  }
}
