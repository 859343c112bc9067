/**
 * A listener's few spare segments, made ahead of need so that opening a connection does not wait for one (the
 * reservation of its pages is most of what making a segment costs: transports/shm/listener.ts).
 *
 * Bounded: at most `max` spares, made one after the other, their pages reserved on libuv's thread pool
 * (host/region.ts reserveOffThread), after a connection opened: a listener that never opened one, or whose
 * handshakes fail, holds none.
 * A spare is a sealed, unnamed memfd that nothing has mapped: closing it (at `close`, or the process's exit
 * closing its descriptors) frees it, so nothing can be left behind. A failed refill (a full /dev/shm) stops
 * refilling until the next connection opens; one that finds no spare makes its segment the ordinary way and
 * reports the error.
 */
import type { Region } from '../../host/region.js';

export class SegmentPool {
  #spares: Region[] = [];
  /** The spare being made: its memfd exists from the start, and `close` closes it at once too. */
  #making: Region | undefined;
  #closed = false;

  /** `make` returns a segment that exists now and a promise that it is reserved (host/region.ts reserveOffThread). */
  constructor(private readonly make: () => { region: Region; reserved: Promise<void> }, private readonly max: number) {}

  /** A spare segment if there is one (the caller owns it). */
  take(): Region | undefined {
    return this.#spares.pop();
  }

  /** Spares held now: those ready and the one being made (its memfd exists from the moment it is started). */
  get size(): number {
    return this.#spares.length + (this.#making ? 1 : 0);
  }

  /** Closes every spare, the one being made too (its reservation stops): nothing is left once this returns. */
  close(): void {
    this.#closed = true;
    for (const region of this.#spares.splice(0)) closeQuietly(region);
    if (this.#making) closeQuietly(this.#making);
  }

  /** Makes spares, one after the other, up to the bound (a listener calls it after a connection opened). */
  refill(): void {
    if (this.#making || this.#closed || this.#spares.length >= this.max) return;
    let made: { region: Region; reserved: Promise<void> };
    try {
      made = this.make();
    } catch {
      return; // not retried until the next connection opens (one without a spare makes its own, and reports why it cannot)
    }
    const region = made.region;
    this.#making = region;
    made.reserved.then(() => {
      this.#making = undefined;
      if (this.#closed) { closeQuietly(region); return; }
      this.#spares.push(region);
      this.refill();
    }, () => {
      // As above: a full /dev/shm is reported by the next connection that finds no spare.
      this.#making = undefined;
      closeQuietly(region);
    });
  }
}

function closeQuietly(region: Region): void {
  try { region.close(); } catch { /* a spare's close has nothing to report to anyone */ }
}
