/**
 * A shm:// listener's few spare segments, made ahead of need so that opening a connection does not wait for one:
 * creating a sealed memfd and reserving its pages is the largest single step of the listener's side of the
 * handshake (transports/shm/listener.ts).
 *
 * Bounded and lazy: at most `max` spares, starting after a connection opened (a listener that never opened one
 * holds none), made one at a time when the listener looks idle: REFILL_DELAY_MS after a connection opened or the
 * last spare was made, and only while `idle()` says no handshake is in progress (else it looks again after the
 * same delay). Made right after a connection opened, a spare competed with the new connection's first
 * messages for the core (measured: the listener's first message to a connector of another process came no
 * sooner). Back-to-back connections never leave it that quiet, so a handshake with a connector of another process
 * also makes one when none is spare (`fillWhileWaiting`), between the listener's reply and the connector's last
 * line, while the listener waits anyway (measured: back-to-back connects ~100 µs sooner). A spare is made exactly
 * as a connection's own segment (host/region.ts createMemfd: its pages reserved
 * with fallocate, so a full /dev/shm fails the making, never a later access), sealed, and unnamed, and nothing
 * maps it: closing it frees it, and so does the process's exit, so nothing can be left behind. `take` hands each
 * spare out once: the caller owns it from then on. A making that fails (a full /dev/shm) stops refilling until
 * the next connection opens; a connection that finds no spare makes its segment itself, and fails with that error
 * if it must.
 */
import type { Region } from '../../host/region.js';

/** How long the listener must have been quiet before a spare is made (ms). */
export const REFILL_DELAY_MS = 1;

export class SegmentPool {
  readonly #spares: Region[] = [];
  readonly #make: () => Region;
  readonly #max: number;
  readonly #idle: () => boolean;
  #scheduled: NodeJS.Timeout | undefined;
  #closed = false;

  /** `make` returns a fresh segment, reserved and sealed, or throws (and then leaves nothing open); `idle` says
   * whether now is a good time to make one (default: always). */
  constructor(make: () => Region, max: number, idle: () => boolean = () => true) {
    this.#make = make;
    this.#max = max;
    this.#idle = idle;
  }

  /** Spares held now (each a memfd and one descriptor of this process). */
  get size(): number {
    return this.#spares.length;
  }

  /** Whether a making is scheduled (the pool is below its bound and its last making did not fail). */
  get refilling(): boolean {
    return this.#scheduled !== undefined;
  }

  /** A spare segment, if one is ready: the caller owns it (it is no longer the pool's). */
  take(): Region | undefined {
    return this.#spares.pop();
  }

  /**
   * Makes one spare now if there is none (and the pool is open): for a caller that is about to wait anyway, such as
   * a handshake between its reply and the connector's answer. A failure is ignored (the next connection makes its
   * own segment, and reports it).
   */
  fillWhileWaiting(): void {
    if (this.#closed || this.#spares.length > 0) return;
    try {
      this.#spares.push(this.#make());
    } catch {
      /* see above */
    }
  }

  /** Makes spares up to the bound, one at a time, REFILL_DELAY_MS apart, each when `idle()` allows. */
  refill(): void {
    if (this.#closed || this.#scheduled !== undefined || this.#spares.length >= this.#max) return;
    this.#scheduled = setTimeout(() => {
      this.#scheduled = undefined;
      if (this.#closed || this.#spares.length >= this.#max) return;
      if (!this.#idle()) { this.refill(); return; }
      let region: Region;
      try {
        region = this.#make();
      } catch {
        // Not retried until the next connection opens (see above).
        return;
      }
      this.#spares.push(region);
      this.refill();
    }, REFILL_DELAY_MS);
    // A pending refill never keeps the process alive.
    this.#scheduled.unref();
  }

  /** Closes every spare and stops refilling: nothing of the pool is left once this returns. */
  close(): void {
    this.#closed = true;
    if (this.#scheduled !== undefined) { clearTimeout(this.#scheduled); this.#scheduled = undefined; }
    for (const region of this.#spares.splice(0)) {
      try { region.close(); } catch { /* a spare's close has nobody to report to */ }
    }
  }
}
