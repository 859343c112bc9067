/**
 * Semaphore: n units shared by processes, named by a URL, whose units come back when a holder dies. See
 * docs/state.md.
 */
import { SEMAPHORE_MAGIC, SYNC_MAX_UNITS } from '../assembly/layout.js';
import { BadArgumentError } from '../host/errors.js';
import { Units, type LockResult, type WaitOptions } from './units.js';
import { openLockSegment } from './lock-segment.js';
import type { OpenOptions } from './segment.js';

/** Options of Semaphore.open. */
export interface SemaphoreOptions extends OpenOptions {
  /**
   * Units (1 … 4096). Required to create; when attaching, a different count than the segment's is
   * ERR_SHMBUS_VERSION_MISMATCH, and omitting it accepts the segment's. Default when creating: 1.
   */
  initial?: number;
}

/**
 * A counting semaphore whose units are owned: each held unit records its holder (pid and start time), so units
 * held by a process that dies come back (what System V's SEM_UNDO does), taken over by the next acquirer after at
 * most the liveness interval, which is told `{ recovered: true }`. Acquiring a free unit and releasing it are
 * compare-and-swaps on the mapped words without a system call; waiting sleeps on a kernel futex through the wait
 * thread, never on the event loop or a libuv threadpool thread.
 *
 * A process releases only units it holds (ERR_SHMBUS_BAD_STATE otherwise): a unit is a thing held, not a
 * free-floating count, which is what lets a dead holder's units be found.
 */
export class Semaphore {
  readonly #units: Units;
  #closed = false;

  private constructor(units: Units) {
    this.#units = units;
  }

  /** Opens (by default creating) the semaphore `url` names: `shm://name` or `sysv://key` (see Mutex.open). */
  static async open(url: string, options: SemaphoreOptions = {}): Promise<Semaphore> {
    if (typeof options !== 'object' || options === null) throw new BadArgumentError('options must be an object');
    const { initial } = options;
    if (initial !== undefined && (!Number.isInteger(initial) || initial < 1 || initial > SYNC_MAX_UNITS)) {
      throw new BadArgumentError(`initial must be an integer 1 … ${SYNC_MAX_UNITS}`, { initial: String(initial) });
    }
    if (initial === undefined && options.create !== false) {
      // Creating needs a count; attaching to an existing one accepts its count.
      const seg = await openLockSegment(url, 'semaphore', SEMAPHORE_MAGIC, undefined, { ...options, create: false }).catch((error) => {
        if (error?.code === 'ERR_SHMBUS_NOT_FOUND') return undefined;
        throw error;
      });
      if (seg) return new Semaphore(new Units(seg, seg.shape));
    }
    const seg = await openLockSegment(url, 'semaphore', SEMAPHORE_MAGIC, initial, options);
    return new Semaphore(new Units(seg, seg.shape));
  }

  /** The URL it was opened with. */
  get url(): string {
    return this.#units.seg.url;
  }

  /** How many units it has in all. */
  get size(): number {
    return this.#units.count;
  }

  /** Units that can be acquired now: free ones, and those whose holder is dead (checks each holder: not free). */
  get value(): number {
    return this.#units.available();
  }

  /** Units this process holds. */
  get holding(): number {
    return this.#units.holding;
  }

  /** Takes a unit, waiting as needed (`timeout`: ERR_SHMBUS_TIMEOUT; `signal`: ERR_SHMBUS_CLOSED). */
  acquire(options?: WaitOptions): Promise<LockResult> {
    return this.#units.take(options);
  }

  /** Takes a unit if one is free or held by a dead process; false otherwise. Never waits. */
  tryAcquire(): LockResult | false {
    return this.#units.tryTake();
  }

  /** Gives back a unit this process holds (the last it took). */
  release(): void {
    this.#units.release();
  }

  /** Gives back every unit this process holds, unmaps, removes the name if this process created it. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#units.shutdown();
    this.#units.seg.close();
  }
}
