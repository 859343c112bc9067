/**
 * The wasm engine: one instance of the ring module over one shared `WebAssembly.Memory`. A process has one
 * engine (getEngine) and makes more on demand (engineFor) when a memory's windows or handles run out: each
 * connection lives in one engine, so thousands of connections are not capped by one memory.
 *
 * Windows of that memory (4 KiB aligned, above WINDOW_BASE) are mapped onto shared-memory segments, so the ring
 * code in wasm and the JS views read and write the very bytes the peer process sees. The engine owns the memory
 * map: the private handles the ring functions keep their state in, and the window allocator.
 */
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import koffi from 'koffi';
import {
  WASM_PAGE_SIZE, PAGE_SIZE, PRIVATE_BASE, HANDLE_SIZE, MAX_HANDLES, BATCH_BASE, BATCH_AREA_SIZE, WINDOW_BASE,
  MEMORY_MAX_PAGES,
} from '../assembly/layout.js';
import { BadArgumentError, ShmbusError, ErrorCode } from './errors.js';

/** The functions the wasm module exports (see assembly/ring.ts for their contracts). */
export interface RingExports {
  ring_format(ring: number, capacity: number): number;
  ring_open(h: number, ring: number, capacity: number, role: number): number;
  ring_claim(h: number, length: number, type: number): number;
  ring_claim_many(h: number, length: number, type: number, max: number): number;
  ring_commit(h: number, length: number): number;
  ring_commit_many(h: number, n: number): number;
  ring_commit_quiet(h: number, length: number): number;
  ring_abort(h: number): number;
  ring_free(h: number): number;
  ring_read(h: number, out: number, max: number): number;
  ring_release(h: number): void;
  ring_pending(h: number): number;
  ring_park(h: number, need: number): number;
  ring_unpark(h: number): void;
  ring_needs_wake(h: number): number;
  ring_close(h: number): void;
  ring_peer_closed(h: number): number;
  ring_wait_address(h: number): number;
  ring_wait_value(h: number): number;
  ring_wake_address(h: number): number;
  ring_start_small(h: number, initial: number): number;
  ring_populated(h: number, bytes: number): number;
  ring_grow_limit(h: number, capacity: number): void;
  ring_capacity(h: number): number;
  ring_resize_done(h: number): number;
  ring_shrink(h: number, capacity: number): number;
  ring_unpopulated(h: number, bytes: number): number;
  topic_format(topic: number, capacity: number, maxSubs: number, policy: number, history: number): number;
  topic_open_publisher(h: number, topic: number, capacity: number, maxSubs: number): number;
  topic_claim(h: number, length: number, type: number): number;
  topic_commit(h: number, length: number): number;
  topic_abort(h: number): number;
  topic_slowest(h: number): number;
  topic_evict(h: number, index: number, pid: number, startLow: number): number;
  topic_close_publisher(h: number): void;
  topic_publisher_park(h: number, need: number): number;
  topic_publisher_unpark(h: number): void;
  topic_join(h: number, topic: number, capacity: number, maxSubs: number, index: number, fromEarliest: number, pid: number, startLow: number, start: number): number;
  topic_leave(h: number): void;
  topic_member(h: number): number;
  topic_read(h: number, out: number, max: number): number;
  topic_oldest_seq(h: number): number;
  topic_add_dropped(h: number, n: number): void;
  topic_dropped(h: number): number;
  topic_release(h: number): number;
  topic_pending(h: number): number;
  topic_publisher_closed(h: number): number;
  topic_park(h: number): number;
  topic_unpark(h: number): void;
  topic_wait_address(h: number): number;
  topic_wait_value(h: number): number;
  topic_slot(h: number): number;
}

export const REQUIRED_EXPORTS: readonly (keyof RingExports)[] = [
  'ring_format', 'ring_open', 'ring_claim', 'ring_claim_many', 'ring_commit', 'ring_commit_many', 'ring_commit_quiet', 'ring_abort', 'ring_free', 'ring_read', 'ring_release',
  'ring_pending', 'ring_park', 'ring_unpark', 'ring_needs_wake', 'ring_close', 'ring_peer_closed', 'ring_wait_address',
  'ring_wait_value', 'ring_wake_address', 'ring_start_small', 'ring_populated', 'ring_grow_limit', 'ring_capacity',
  'ring_resize_done', 'ring_shrink', 'ring_unpopulated', 'topic_format', 'topic_open_publisher', 'topic_claim', 'topic_commit',
  'topic_abort', 'topic_slowest', 'topic_evict', 'topic_close_publisher', 'topic_publisher_park', 'topic_publisher_unpark',
  'topic_join', 'topic_leave', 'topic_member', 'topic_read', 'topic_oldest_seq', 'topic_add_dropped', 'topic_dropped',
  'topic_release', 'topic_pending', 'topic_publisher_closed', 'topic_park', 'topic_unpark', 'topic_wait_address',
  'topic_wait_value', 'topic_slot',
];

/** Finds build/shmbus.wasm from both the sources (host/) and the compiled output (dist/host/). */
export function wasmPath(debug = false): string {
  const file = debug ? 'shmbus.debug.wasm' : 'shmbus.wasm';
  for (const rel of [`../build/${file}`, `../../build/${file}`]) {
    const path = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(path)) return path;
  }
  throw new ShmbusError(ErrorCode.NOT_FOUND, 'wasm module not built; run npm run build', { details: { file } });
}

interface FreeRange { start: number; end: number }

/** The least an engine's memory grows by when a window needs more of it (see Engine.ensureCovered). */
const MIN_GROW_BYTES = 16 * 1024 * 1024;

/** Batch areas an engine keeps for reuse after their reading ends closed (see Engine.freeBatch). */
const SPARE_BATCHES = 16;

export class Engine {
  readonly memory: WebAssembly.Memory;
  readonly exports: RingExports;
  /** Address of linear memory byte 0 in this process. Stable: V8 reserves the maximum and grows in place. */
  readonly base: bigint;
  /** Views over the whole current memory; rebuilt when the memory grows. */
  u8: Uint8Array;
  u32: Uint32Array;
  /** The same memory as a Buffer (its native UTF-8 writer) and a DataView (big-endian numbers): what the record
   * encoder (host/pack.ts) needs to write a message straight into a ring. */
  bytes: Buffer;
  view: DataView;
  /** The memory's current buffer. A view made over it costs ~14 ns; over `u8.buffer` ~22 (reading a typed array's
   * `buffer` is not free), which a per-record `claim.bytes` paid every time. */
  buffer: ArrayBufferLike;
  private freeHandles: number[] = [];
  private freeWindows: FreeRange[] = [{ start: WINDOW_BASE, end: MEMORY_MAX_PAGES * WASM_PAGE_SIZE }];

  constructor(module: WebAssembly.Module) {
    this.memory = new WebAssembly.Memory({ initial: WINDOW_BASE / WASM_PAGE_SIZE, maximum: MEMORY_MAX_PAGES, shared: true });
    const instance = new WebAssembly.Instance(module, { env: { memory: this.memory } });
    for (const name of REQUIRED_EXPORTS) {
      if (typeof instance.exports[name] !== 'function') {
        throw new ShmbusError(ErrorCode.VERSION_MISMATCH, 'wasm module lacks an export', { details: { name } });
      }
    }
    this.exports = instance.exports as unknown as RingExports;
    // koffi refuses a bare SharedArrayBuffer; an empty view of it gives the backing store's address.
    this.base = BigInt(koffi.address(new Uint8Array(this.memory.buffer, 0, 0)) as bigint);
    this.u8 = new Uint8Array(this.memory.buffer);
    this.u32 = new Uint32Array(this.memory.buffer);
    this.bytes = Buffer.from(this.memory.buffer);
    this.view = new DataView(this.memory.buffer);
    this.buffer = this.memory.buffer;
    for (let i = MAX_HANDLES - 1; i >= 0; i--) this.freeHandles.push(PRIVATE_BASE + i * HANDLE_SIZE);
  }

  /**
   * Address (in linear memory) of the batch descriptors the latest `RingEnd.read` wrote: each reading end has its
   * own area, so a caller that captures this right after its read keeps valid descriptors even if a handler it
   * calls reads another channel. Prefer `RingEnd.batch` / `TopicReader.batch`.
   */
  batch = BATCH_BASE;

  /**
   * A batch area of BATCH_AREA_SIZE bytes for one reading end, in window space (pages are committed only as
   * descriptors are written). Freed with freeBatch when the end is disposed.
   */
  allocBatch(): number {
    return this.spareBatches.pop() ?? this.allocWindow(BATCH_AREA_SIZE);
  }

  /** Keeps a few areas for the next reading ends (connections come and go); the rest go back to the window
   * allocator, so that thousands of closed connections do not hold their batch areas' window space. */
  freeBatch(at: number): void {
    if (at < WINDOW_BASE) return;
    if (this.spareBatches.length < SPARE_BATCHES) this.spareBatches.push(at);
    else this.freeWindow(at, BATCH_AREA_SIZE);
  }

  /** Batch areas kept for reuse now (their window space is not free). */
  get spareBatchCount(): number {
    return this.spareBatches.length;
  }

  private spareBatches: number[] = [];

  /** Free private handles now. */
  get freeHandleCount(): number {
    return this.freeHandles.length;
  }

  /** Free window space now, as [start, end) ranges (for tests: what a failed setup must give back). */
  freeWindowRanges(): { start: number; end: number }[] {
    return this.freeWindows.map((r) => ({ ...r }));
  }

  /** Whether a window of `bytes` and `handles` more handles fit now (engineFor picks engines with this). */
  hasRoom(bytes: number, handles: number): boolean {
    if (this.freeHandles.length < handles) return false;
    const size = Math.ceil(bytes / PAGE_SIZE) * PAGE_SIZE;
    return this.freeWindows.some((r) => r.end - r.start >= size);
  }

  /** A private handle block for one ring endpoint. */
  allocHandle(): number {
    const h = this.freeHandles.pop();
    if (h === undefined) throw new ShmbusError(ErrorCode.LIMIT, 'too many open ring endpoints', { details: { max: MAX_HANDLES } });
    return h;
  }

  freeHandle(h: number): void {
    this.u8.fill(0, h, h + HANDLE_SIZE);
    this.freeHandles.push(h);
  }

  /**
   * Reserves `bytes` (rounded up to whole pages) of window space and makes sure the memory covers it.
   * Returns the window's offset in linear memory.
   */
  allocWindow(bytes: number): number {
    if (!Number.isInteger(bytes) || bytes <= 0) throw new BadArgumentError('window size must be a positive integer', { bytes });
    const size = Math.ceil(bytes / PAGE_SIZE) * PAGE_SIZE;
    const i = this.freeWindows.findIndex((r) => r.end - r.start >= size);
    if (i < 0) throw new ShmbusError(ErrorCode.LIMIT, 'wasm memory has no room for another window', { details: { bytes: size } });
    const range = this.freeWindows[i]!;
    const start = range.start;
    range.start += size;
    if (range.start === range.end) this.freeWindows.splice(i, 1);
    this.ensureCovered(start + size);
    return start;
  }

  /** Returns a window's range to the allocator (the caller has already put plain pages back over it). */
  freeWindow(start: number, bytes: number): void {
    const end = start + Math.ceil(bytes / PAGE_SIZE) * PAGE_SIZE;
    const list = this.freeWindows;
    let i = 0;
    while (i < list.length && list[i]!.start < start) i++;
    list.splice(i, 0, { start, end });
    // Coalesce with the neighbours so large windows can be reused.
    for (let j = Math.max(0, i - 1); j < list.length - 1;) {
      if (list[j]!.end === list[j + 1]!.start) { list[j]!.end = list[j + 1]!.end; list.splice(j + 1, 1); } else j++;
    }
  }

  /** The process address of a linear-memory offset (what mmap/shmat take). */
  address(offset: number): bigint {
    return this.base + BigInt(offset);
  }

  private ensureCovered(end: number): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    // Grow at least by half of what there is (and 16 MiB): a grow of a shared memory costs far more than the
    // pages it adds (they stay untouched, so they cost no memory), and connections add windows one by one.
    const want = Math.min(MEMORY_MAX_PAGES * WASM_PAGE_SIZE, Math.max(end, have + Math.max(have >>> 1, MIN_GROW_BYTES)));
    this.memory.grow(Math.ceil((want - have) / WASM_PAGE_SIZE));
    this.refreshViews();
  }

  /** Rebuilds the views after the memory grew (a shared memory's buffer object changes length on grow). */
  refreshViews(): void {
    if (this.u8.byteLength === this.memory.buffer.byteLength) return;
    this.u8 = new Uint8Array(this.memory.buffer);
    this.u32 = new Uint32Array(this.memory.buffer);
    this.bytes = Buffer.from(this.memory.buffer);
    this.view = new DataView(this.memory.buffer);
    this.buffer = this.memory.buffer;
  }
}

let module: WebAssembly.Module | undefined;
/** Every engine of this process, the first one (getEngine's) included; created on demand by engineFor. */
const engines: Engine[] = [];

function newEngine(): Engine {
  module ??= new WebAssembly.Module(readFileSync(wasmPath()));
  const e = new Engine(module);
  engines.push(e);
  return e;
}

/** The process's first engine, instantiated on first use (bus, state, workers: their segments live here). */
export function getEngine(): Engine {
  return engines[0] ?? newEngine();
}

/**
 * How many engines engineFor may make. Each is one wasm instance over its own memory (MEMORY_MAX_PAGES, and
 * V8 reserves its address space up front), with MAX_HANDLES handles. 64 of them hold 128 GiB of windows and
 * 262,144 ring ends; past that a connection fails with ERR_SHMBUS_LIMIT naming this limit.
 */
export const DEFAULT_MAX_ENGINES = 64;
let maxEngines = DEFAULT_MAX_ENGINES;

/** Changes the cap on engines (tests use a small one to reach it); returns the previous cap. */
export function setMaxEngines(n: number): number {
  if (!Number.isSafeInteger(n) || n < 1) throw new BadArgumentError('maxEngines must be a positive integer', { maxEngines: n });
  const previous = maxEngines;
  maxEngines = n;
  return previous;
}

/** The engines made so far (for measurements and tests). */
export function engineCount(): number {
  return engines.length;
}

/** The engines made so far, first to last (for tests: what a failed setup must give back). */
export function allEngines(): readonly Engine[] {
  return engines;
}

/**
 * An engine with room now for a window of `windowBytes` and `handles` more ring ends: the first engine that has
 * it, or a new one. A connection is pinned to the engine it got: its window and handles live there until it
 * closes. Throws ERR_SHMBUS_LIMIT once DEFAULT_MAX_ENGINES (see setMaxEngines) engines are full.
 */
export function engineFor(windowBytes: number, handles: number): Engine {
  for (const e of engines) if (e.hasRoom(windowBytes, handles)) return e;
  if (engines.length < maxEngines) {
    const e = newEngine();
    if (e.hasRoom(windowBytes, handles)) return e;
    throw new ShmbusError(ErrorCode.LIMIT, 'a window this large does not fit in a wasm memory', { details: { bytes: windowBytes, max: MEMORY_MAX_PAGES * WASM_PAGE_SIZE - WINDOW_BASE } });
  }
  throw new ShmbusError(ErrorCode.LIMIT, 'every wasm engine is full (each has MEMORY_MAX_PAGES of windows and MAX_HANDLES ring ends)', {
    details: { engines: engines.length, maxEngines, windowBytes, handles, maxHandles: MAX_HANDLES, memoryBytes: MEMORY_MAX_PAGES * WASM_PAGE_SIZE },
  });
}
