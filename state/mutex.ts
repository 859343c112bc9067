/**
 * Mutex: a lock shared by processes, named by a URL (`shm://name` or `sysv://key`), that survives a crashed
 * holder. See docs/state.md.
 */
import { MUTEX_MAGIC } from '../assembly/layout.js';
import { BadArgumentError } from '../host/errors.js';
import { Units, type LockResult, type WaitOptions } from './units.js';
import { openLockSegment } from './lock-segment.js';
import type { OpenOptions } from './segment.js';

export type { LockResult, WaitOptions };

/** Options of Mutex.open. */
export type MutexOptions = OpenOptions;

/**
 * A process-shared mutex in a small shared segment.
 *
 * - The lock word holds the holder's identity (pid and start time, host/claim.ts). Locking an unheld mutex and
 *   unlocking it are each one compare-and-swap on that word from JavaScript: no system call.
 * - `lock()` waits without blocking the event loop or a libuv threadpool thread: a dedicated wait thread sleeps on
 *   a kernel futex in the segment, which the unlocking process wakes (only when someone waits).
 * - A holder that dies holding the lock: after at most the liveness interval (host/liveness.ts LIVENESS_MS) a
 *   waiter finds it dead (pid and start time, so a reused pid is not mistaken for it), takes the lock over and
 *   gets `{ recovered: true }`: repair what the lock guards before going on.
 * - Ownership is per process: worker threads of one process share it (they have one pid).
 */
export class Mutex {
  readonly #units: Units;
  #closed = false;

  private constructor(units: Units) {
    this.#units = units;
  }

  /**
   * Opens (by default creating) the mutex `url` names: `shm://name` (POSIX shared memory) or `sysv://0x1234`
   * (a System V segment with that key). `perm` (or `?perm=0660` in the URL) sets the mode of a created segment.
   * An existing segment is attached only if it is owned by this uid and has no group/other write bit beyond perm.
   */
  static async open(url: string, options: MutexOptions = {}): Promise<Mutex> {
    if (typeof options !== 'object' || options === null) throw new BadArgumentError('options must be an object');
    const seg = await openLockSegment(url, 'mutex', MUTEX_MAGIC, 1, options);
    return new Mutex(new Units(seg, 1));
  }

  /** The URL it was opened with. */
  get url(): string {
    return this.#units.seg.url;
  }

  /** Whether this process holds it. */
  get locked(): boolean {
    return this.#units.holding > 0;
  }

  /**
   * Takes the lock, waiting as long as needed (or `timeout` ms: ERR_SHMBUS_TIMEOUT; `signal`: ERR_SHMBUS_CLOSED).
   * Resolves `{ recovered: true }` when its previous holder died holding it.
   */
  lock(options?: WaitOptions): Promise<LockResult> {
    return this.#units.take(options);
  }

  /** Takes the lock if that needs no waiting (free, or its holder is dead); false otherwise. */
  tryLock(): LockResult | false {
    return this.#units.tryTake();
  }

  /** Releases the lock. ERR_SHMBUS_BAD_STATE if this process does not hold it. */
  unlock(): void {
    this.#units.release();
  }

  /** Runs `fn` holding the lock (it is told whether the lock was recovered), and releases it however fn ends. */
  async withLock<T>(fn: (result: LockResult) => T | Promise<T>, options?: WaitOptions): Promise<T> {
    const result = await this.lock(options);
    try {
      return await fn(result);
    } finally {
      this.unlock();
    }
  }

  /** Releases the lock if held, unmaps, and removes the name if this process created it. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#units.shutdown();
    this.#units.seg.close();
  }
}
