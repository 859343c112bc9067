/**
 * A shm:// listener's few spare segments, made ahead of need so that opening a connection does not wait for one:
 * creating a sealed memfd and reserving its pages is the largest single step of the listener's side of the
 * handshake (transports/shm/listener.ts).
 *
 * Bounded and lazy: at most `max` spares, made one per turn of the event loop (setImmediate, after the I/O the
 * loop had waiting), starting after a connection opened: a listener that never opened one holds none. A spare is
 * made exactly as a connection's own segment (host/region.ts createMemfd: its pages reserved with fallocate, so
 * a full /dev/shm fails the making, never a later access), sealed, and unnamed, and nothing maps it: closing it
 * frees it, and so does the process's exit, so nothing can be left behind. `take` hands each spare out once: the
 * caller owns it from then on. A making that fails (a full /dev/shm) stops refilling until the next connection
 * opens; a connection that finds no spare makes its segment itself, and fails with that error if it must.
 */
import type { Region } from '../../host/region.js';

export class SegmentPool {
  readonly #spares: Region[] = [];
  readonly #make: () => Region;
  readonly #max: number;
  #scheduled: NodeJS.Immediate | undefined;
  #closed = false;

  /** `make` returns a fresh segment, reserved and sealed, or throws (and then leaves nothing open). */
  constructor(make: () => Region, max: number) {
    this.#make = make;
    this.#max = max;
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

  /** Makes spares up to the bound, one per turn of the event loop, from the next turn on. */
  refill(): void {
    if (this.#closed || this.#scheduled !== undefined || this.#spares.length >= this.#max) return;
    this.#scheduled = setImmediate(() => {
      this.#scheduled = undefined;
      if (this.#closed || this.#spares.length >= this.#max) return;
      let region: Region;
      try {
        region = this.#make();
      } catch {
        // Not retried until the next connection opens (see above).
        return;
      }
      this.#spares.push(region);
      this.refill();
    });
    // A pending refill never keeps the process alive.
    this.#scheduled.unref();
  }

  /** Closes every spare and stops refilling: nothing of the pool is left once this returns. */
  close(): void {
    this.#closed = true;
    if (this.#scheduled !== undefined) { clearImmediate(this.#scheduled); this.#scheduled = undefined; }
    for (const region of this.#spares.splice(0)) {
      try { region.close(); } catch { /* a spare's close has nobody to report to */ }
    }
  }
}
