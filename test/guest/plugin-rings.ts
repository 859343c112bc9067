// A host's end of a plugin's rings written in plain JS from assembly/layout.ts alone, for tests that instantiate a
// plugin directly (no loadPlugin): formats the channel segment inside the plugin's memory, writes records into
// ring IN and reads records from ring OUT. It doubles as a check that layout.ts says enough to drive a ring.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Packr } from 'msgpackr';
import {
  SEGMENT_MAGIC, LAYOUT_VERSION, SEG_MAGIC_OFFSET, SEG_VERSION_OFFSET, SEG_FEATURES_OFFSET, SEG_HEADER_SIZE_OFFSET,
  SEG_SIZE_OFFSET, SEG_RING_COUNT_OFFSET, SEG_RING_CAPACITY_OFFSET, SEG_CREATOR_PID_OFFSET, SEGMENT_HEADER_SIZE,
  CHANNEL_RING_COUNT, RING_CAPACITY_OFFSET, RING_TAIL_OFFSET, RING_HEAD_OFFSET, RING_HEADER_SIZE, RECORD_HEADER_SIZE,
  RECORD_ALIGNMENT, RECORD_PADDING, GUEST_RING_IN, GUEST_RING_OUT, ringOffset, segmentBytes, maxPayload,
} from '../../assembly/layout.js';

/** The entry points every plugin exports (assembly/guest/exports.ts). */
export interface PluginExports {
  memory: WebAssembly.Memory;
  shmbus_reserve(bytes: number): number;
  shmbus_attach(address: number, bytes: number): number;
  shmbus_poll(max: number): number;
  shmbus_outbox(): number;
  shmbus_wakes(): number;
}

export const packr = new Packr({ useRecords: false, moreTypes: false });

/** Instantiates build/plugins/<name>.wasm over a fresh shared memory; `aborts` collects abort() calls (which throw). */
export async function instantiatePlugin(name: string, maximumPages = 1024): Promise<{ x: PluginExports; memory: WebAssembly.Memory; aborts: string[] }> {
  const file = fileURLToPath(new URL(`../../build/plugins/${name}.wasm`, import.meta.url));
  const memory = new WebAssembly.Memory({ initial: 16, maximum: maximumPages, shared: true });
  const aborts: string[] = [];
  const text = (ptr: number): string => {
    if (ptr === 0) return '';
    const len = new Uint32Array(memory.buffer, ptr - 4, 1)[0]!;
    return Buffer.from(new Uint8Array(memory.buffer, ptr, len).slice()).toString('utf16le');
  };
  const { instance } = await WebAssembly.instantiate(readFileSync(file), {
    env: {
      memory,
      abort(msg: number, file: number, line: number, column: number) {
        const what = `abort: ${text(msg)} at ${text(file)}:${line}:${column}`;
        aborts.push(what);
        throw new Error(what);
      },
    },
  });
  return { x: instance.exports as unknown as PluginExports, memory, aborts };
}

export interface Rec { type: number; payload: Uint8Array }

/** The host's ends: producer of ring IN, consumer of ring OUT, over the segment at `base` in `memory`. */
export class HostRings {
  readonly bytes: number;
  private tailIn = 0n;
  private headOut = 0n;

  constructor(private readonly memory: WebAssembly.Memory, readonly base: number, readonly capacity: number) {
    this.bytes = segmentBytes(CHANNEL_RING_COUNT, capacity);
  }

  private get view(): DataView { return new DataView(this.memory.buffer); }
  private word64(at: number): BigInt64Array { return new BigInt64Array(this.memory.buffer, at, 1); }
  ring(index: number): number { return this.base + ringOffset(index, this.capacity); }

  /** Writes the segment header and both ring headers, the version word last. */
  format(): void {
    new Uint8Array(this.memory.buffer, this.base, this.bytes).fill(0);
    const v = this.view;
    v.setUint32(this.base + SEG_MAGIC_OFFSET, SEGMENT_MAGIC, true);
    v.setUint32(this.base + SEG_FEATURES_OFFSET, 0, true);
    v.setUint32(this.base + SEG_HEADER_SIZE_OFFSET, SEGMENT_HEADER_SIZE, true);
    v.setBigUint64(this.base + SEG_SIZE_OFFSET, BigInt(this.bytes), true);
    v.setUint32(this.base + SEG_RING_COUNT_OFFSET, CHANNEL_RING_COUNT, true);
    v.setUint32(this.base + SEG_RING_CAPACITY_OFFSET, this.capacity, true);
    v.setUint32(this.base + SEG_CREATOR_PID_OFFSET, process.pid, true);
    for (let i = 0; i < CHANNEL_RING_COUNT; i++) v.setUint32(this.ring(i) + RING_CAPACITY_OFFSET, this.capacity, true);
    Atomics.store(new Uint32Array(this.memory.buffer, this.base + SEG_VERSION_OFFSET, 1), 0, LAYOUT_VERSION);
  }

  /** Appends one record to ring IN; false when it has no room (the plugin has not released enough). */
  write(type: number, payload: Uint8Array): boolean {
    if (payload.length > maxPayload(this.capacity)) throw new Error('payload too large for the ring');
    const ring = this.ring(GUEST_RING_IN);
    const data = ring + RING_HEADER_SIZE;
    const cap = BigInt(this.capacity);
    const head = Atomics.load(this.word64(ring + RING_HEAD_OFFSET), 0);
    const size = BigInt(align(payload.length + RECORD_HEADER_SIZE));
    const index = this.tailIn % cap;
    const padding = size > cap - index ? cap - index : 0n;
    if (this.tailIn + padding + size - head > cap) return false;
    const v = this.view;
    if (padding > 0n) {
      v.setInt32(data + Number(index), Number(padding) - RECORD_HEADER_SIZE, true);
      v.setUint32(data + Number(index) + 4, RECORD_PADDING, true);
      this.tailIn += padding;
    }
    const at = data + Number(this.tailIn % cap);
    v.setInt32(at, payload.length, true);
    v.setUint32(at + 4, type, true);
    new Uint8Array(this.memory.buffer, at + RECORD_HEADER_SIZE, payload.length).set(payload);
    this.tailIn += size;
    Atomics.store(this.word64(ring + RING_TAIL_OFFSET), 0, this.tailIn);
    return true;
  }

  /** Reads and releases every record committed on ring OUT. */
  read(): Rec[] {
    const ring = this.ring(GUEST_RING_OUT);
    const data = ring + RING_HEADER_SIZE;
    const cap = BigInt(this.capacity);
    const tail = Atomics.load(this.word64(ring + RING_TAIL_OFFSET), 0);
    if (tail < this.headOut || tail - this.headOut > cap) throw new Error(`ring OUT positions are impossible: head ${this.headOut}, tail ${tail}`);
    const v = this.view;
    const out: Rec[] = [];
    while (this.headOut < tail) {
      const at = data + Number(this.headOut % cap);
      const length = v.getInt32(at, true);
      const type = v.getUint32(at + 4, true);
      if (length < 0 || length > maxPayload(this.capacity)) throw new Error(`bad record length ${length}`);
      if (type === RECORD_PADDING) {
        this.headOut += BigInt(length + RECORD_HEADER_SIZE);
        continue;
      }
      out.push({ type, payload: new Uint8Array(this.memory.buffer, at + RECORD_HEADER_SIZE, length).slice() });
      this.headOut += BigInt(align(length + RECORD_HEADER_SIZE));
    }
    Atomics.store(this.word64(ring + RING_HEAD_OFFSET), 0, this.headOut);
    return out;
  }
}

function align(n: number): number {
  return (n + RECORD_ALIGNMENT - 1) & ~(RECORD_ALIGNMENT - 1);
}

/** Reserves the region in the plugin, formats the segment there and attaches: the host's rings. */
export function attachPlugin(x: PluginExports, memory: WebAssembly.Memory, capacity: number): HostRings {
  const bytes = segmentBytes(CHANNEL_RING_COUNT, capacity);
  const base = x.shmbus_reserve(bytes);
  if (base === 0) throw new Error('shmbus_reserve failed');
  const rings = new HostRings(memory, base, capacity);
  rings.format();
  const result = x.shmbus_attach(base, bytes);
  if (result !== 0) throw new Error(`shmbus_attach failed: ${result}`);
  return rings;
}
