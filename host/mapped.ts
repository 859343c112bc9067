/** A segment mapped into a window of the process's engine (bus registries and topics, shared state), and its header checks. */
import { SEGMENT_HEADER_SIZE, SEG_MAGIC_OFFSET, SEG_VERSION_OFFSET } from '../assembly/layout.js';
import type { Engine } from './engine.js';
import type { Region } from './region.js';
import { readSegment, type TOPIC_SEGMENT } from './segment.js';
import { CorruptError } from './errors.js';

/** A segment mapped into a window of the engine. */
export class Mapped {
  constructor(readonly engine: Engine, readonly region: Region, readonly at: number) {}

  /**
   * Maps `region`, then checks with fstat that the segment still covers the whole mapping: a member that shrank
   * it would otherwise make our first touch past the new end a SIGBUS. (It can still shrink it later: see
   * docs/security.md, "Buses and topics".)
   */
  static map(engine: Engine, region: Region): Mapped {
    let at: number;
    try {
      at = engine.allocWindow(region.size);
    } catch (error) {
      // No window (ERR_SHMBUS_LIMIT): the region is ours to close, as on every other failure here.
      region.close();
      throw error;
    }
    try {
      region.mapAt(engine.address(at));
    } catch (error) {
      engine.freeWindow(at, region.size);
      region.close();
      throw error;
    }
    const m = new Mapped(engine, region, at);
    let now: number;
    try {
      now = region.currentSize();
    } catch (error) {
      m.unmap();
      throw error;
    }
    if (now < region.mapLength) {
      m.unmap();
      throw new CorruptError('segment shrank under its mapping', { name: region.name, size: now, mapped: region.mapLength });
    }
    return m;
  }

  unmap(): void {
    try {
      this.region.unmapAt(this.engine.address(this.at));
      this.engine.freeWindow(this.at, this.region.size);
    } finally {
      this.region.close();
    }
  }
}

/** Whether the creator of the segment at `m` has not finished formatting it yet (version, or even magic, unset). */
export function unformatted(m: Mapped): boolean {
  const words = new Int32Array(m.engine.memory.buffer, m.at, SEGMENT_HEADER_SIZE / 4);
  // SYNC: pairs with the Atomics.store of the version in publishVersion.
  return Atomics.load(words, SEG_VERSION_OFFSET / 4) === 0 || Atomics.load(words, SEG_MAGIC_OFFSET / 4) === 0;
}

/** Waits until a creator has published the segment's version (it formats right after creating). */
export async function readyHeader(m: Mapped, kind: typeof TOPIC_SEGMENT): Promise<ReturnType<typeof readSegment>> {
  for (let i = 0; unformatted(m) && i < 200; i++) await new Promise((r) => setTimeout(r, 5));
  return readSegment(m.engine, m.at, m.region.size, kind);
}

