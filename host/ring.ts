/**
 * One endpoint of an SPSC ring, as the host sees it: a thin typed wrapper over the wasm ring functions that
 * turns their negative result codes into typed errors. It holds no ring logic of its own.
 */
import {
  ROLE_PRODUCER, ROLE_CONSUMER, RING_E_POSITIONS, RING_E_RECORD, RING_E_TOO_LARGE, RING_E_STATE, RING_E_HEADER,
  RING_E_AGAIN, BATCH_MAX, BATCH_ENTRY_SIZE, H_NEED_OFFSET, maxPayload,
  RING_GROW, RING_RESIZE_SENT, H_CLAIM_COUNT_OFFSET, RING_RESIZE_SEEN, RING_HEADER_SIZE, H_TARGET_OFFSET, H_PENDING_OFFSET, H_CAPACITY_OFFSET, H_POSITION_OFFSET,
} from '../assembly/layout.js';
import { Engine } from './engine.js';
import { BadStateError, CorruptError, ErrorCode, MessageTooLargeError, ShmbusError } from './errors.js';

/**
 * The last line of defence at the wasm boundary: the ring code checks every peer-written value so that it never
 * traps, but should a trap (`WebAssembly.RuntimeError`: out-of-bounds access, unreachable) ever escape it, the
 * caller gets a typed CORRUPT error on that one channel or topic instead of an untyped exception.
 */
export function trapAsCorrupt(error: unknown, detailFields: Record<string, unknown> = {}): unknown {
  if (error instanceof WebAssembly.RuntimeError) {
    return new CorruptError('ring code trapped on shared memory (corrupt or hostile peer)', { ...detailFields, trap: error.message });
  }
  return error;
}

/** Turns a negative ring result into the error it means. */
export function ringError(code: number, detailFields: Record<string, unknown> = {}): ShmbusError {
  switch (code) {
    case RING_E_POSITIONS: return new CorruptError('ring positions are impossible (corrupt or hostile peer)', detailFields);
    case RING_E_RECORD: return new CorruptError('ring record is malformed (corrupt or hostile peer)', detailFields);
    case RING_E_HEADER: return new CorruptError('ring header does not match the segment header', detailFields);
    case RING_E_STATE: return new BadStateError('ring operation out of order (claim already open, or none open)', detailFields);
    case RING_E_TOO_LARGE: return new CorruptError('record too large', detailFields);
    case RING_E_AGAIN: return new ShmbusError(ErrorCode.TIMEOUT, 'gave up after bounded retries against a fast publisher', { details: detailFields });
    default: return new CorruptError('unknown ring result', { code, ...detailFields });
  }
}

/**
 * Per-message cost counters for bench/everyday.ts, on only when SHMBUS_COUNTERS=1 is in the environment at
 * load (a constant, so the checks fold away otherwise). Counted where the work happens: `wasmCalls` in RingEnd
 * (every call into the ring code), the rest in transports/shm/channel.ts: `copies`/`bytesCopied` (payload copies: into
 * the ring, into the send queue, out of the ring for bytes), `allocs` (per-message JS objects we make: msgpackr's
 * result view, queue entries, received byte arrays; not counting what msgpackr allocates while decoding, nor
 * iterator results), `promises` (iterator next() calls), `decodes`, `doorbells` (rings of the peer's
 * bell), `parks`, `microtasks` (commit wake checks), `batches` (ring reads that returned records).
 */
export const COUNTING = typeof process !== 'undefined' && process.env.SHMBUS_COUNTERS === '1';
/** The counters (see COUNTING); zero unless enabled. */
export const perf = {
  sends: 0, received: 0, wasmCalls: 0, copies: 0, bytesCopied: 0, allocs: 0, promises: 0, decodes: 0, doorbells: 0,
  parks: 0, microtasks: 0, batches: 0, queued: 0,
  /** Blocks of a thread in futex_waitv by Channel.waitSync (sync-idle workers), also counted in parks. */
  syncWaits: 0,
};

export type Role = 'producer' | 'consumer';

/** A ring that starts small and grows in band (RECORD_RESIZE, assembly/layout.ts) up to the capacity it opens with. */
export interface Growth {
  /** Data bytes at the start; both ends of the ring must say the same. */
  initial: number;
  /** Makes the pages of linear memory [offset, offset + bytes) exist now (MADV_POPULATE_WRITE), or throws a typed
   * error (NO_SPACE for a full /dev/shm). */
  populate(offset: number, bytes: number): void;
  /** Frees the backing pages wholly inside linear memory [offset, offset + bytes) (MADV_REMOVE). */
  unpopulate(offset: number, bytes: number): void;
}

/**
 * Producer ends that grew past their initial size: one timer for all of them (not one per connection) looks every
 * SHRINK_AFTER_MS and shrinks a ring back that stayed empty and unused for a whole interval, so that an idle
 * connection gives back what a burst of large messages took.
 */
const grown = new Set<RingEnd>();
let shrinkAfterMs = 2000;
let sweepTimer: NodeJS.Timeout | undefined;

/** How long a grown ring must stay empty and unused before it shrinks back (tests shorten it). */
export function setShrinkAfter(ms: number): void {
  shrinkAfterMs = ms;
  if (sweepTimer) { clearInterval(sweepTimer); sweepTimer = undefined; startSweep(); }
}

function startSweep(): void {
  if (sweepTimer || grown.size === 0) return;
  sweepTimer = setInterval(() => {
    for (const end of grown) end._sweep();
    if (grown.size === 0) { clearInterval(sweepTimer); sweepTimer = undefined; }
  }, shrinkAfterMs);
  sweepTimer.unref();
}

export class RingEnd {
  readonly engine: Engine;
  readonly handle: number;
  readonly capacity: number;
  readonly maxPayload: number;
  readonly role: Role;
  /** Consumer: address of this end's own batch area (allocated on the first read); 0 before. */
  batch = 0;
  private closed = false;
  /** A batch is out: read and not yet released. */
  private inBatch = false;

  /** A growing ring: how its pages are made to exist (undefined: the ring never changes size). */
  private readonly growth: Growth | undefined;
  private readonly dataOffset: number;
  /** Linear-memory offset of the shared ring header. */
  readonly ring: number;
  /** Called after this end took a step of a resize the peer must hear of at once: a producer committed a
   * RECORD_RESIZE (ring the consumer), a consumer passed one (ring a producer waiting for the ring to empty). */
  onResize: (() => void) | undefined;
  /** Producer: whether its owner may shrink the ring now. A writer waiting for room (a queued message, the rest of
   * a fragmented one) waits for an amount the ring in effect can hold: shrinking under it would strand it. */
  canShrink: (() => boolean) | undefined;
  /** Producer: the low word of the tail at the last sweep, and whether a shrink is outstanding (see _sweep). */
  private sweptTail = -1;
  private shrinkSent = false;

  /**
   * Opens the ring whose header is at linear-memory offset `ring`. `capacity` is the largest the ring ever gets
   * (what the window maps); with `growth` it starts at `growth.initial` data bytes and grows when a record needs it.
   */
  constructor(engine: Engine, ring: number, capacity: number, role: Role, growth?: Growth) {
    this.engine = engine;
    this.handle = engine.allocHandle();
    this.dataOffset = ring + RING_HEADER_SIZE;
    this.ring = ring;
    this.growth = growth !== undefined && growth.initial < capacity ? growth : undefined;
    let rc: number;
    try {
      rc = engine.exports.ring_open(this.handle, ring, capacity, role === 'producer' ? ROLE_PRODUCER : ROLE_CONSUMER);
      if (rc >= 0 && this.growth) rc = engine.exports.ring_start_small(this.handle, this.growth.initial);
    } catch (error) {
      engine.freeHandle(this.handle);
      throw trapAsCorrupt(error, { ring, capacity, role });
    }
    if (rc < 0) {
      engine.freeHandle(this.handle);
      throw ringError(rc, { ring, capacity, role });
    }
    this.capacity = capacity;
    this.maxPayload = maxPayload(capacity);
    this.role = role;
  }

  /** Formats a fresh ring header (the segment creator does this before publishing the segment). */
  static format(engine: Engine, ring: number, capacity: number): void {
    const rc = engine.exports.ring_format(ring, capacity);
    if (rc < 0) throw ringError(rc, { ring, capacity });
  }

  /**
   * Claims room for `length` payload bytes. Returns the payload's offset in linear memory, or 0 when the ring
   * has no room now. Throws MessageTooLargeError past maxPayload.
   */
  claim(length: number, type: number): number {
    let rc: number;
    try {
      if (COUNTING) perf.wasmCalls++; rc = this.engine.exports.ring_claim(this.handle, length, type);
    } catch (error) {
      throw trapAsCorrupt(error, { length, type });
    }
    if (rc >= 0) return rc;
    if (rc === RING_GROW || rc === RING_RESIZE_SENT) return this.grow(length, type, rc);
    if (rc === RING_E_TOO_LARGE) throw new MessageTooLargeError(length, this.maxPayload);
    throw ringError(rc, { length, type });
  }

  /**
   * Claims up to `max` records of `length` payload bytes back to back (see ring_claim_many): returns the first
   * payload's offset (then `claimedCount()` records, the next one every align(length + 8) bytes), or 0 for no room.
   */
  claimMany(length: number, type: number, max: number): number {
    let rc: number;
    try {
      if (COUNTING) perf.wasmCalls++; rc = this.engine.exports.ring_claim_many(this.handle, length, type, max);
    } catch (error) {
      throw trapAsCorrupt(error, { length, type });
    }
    if (rc >= 0) return rc;
    // A growing ring: the single-record path grows it, and may claim one record after growing.
    if (rc === RING_GROW || rc === RING_RESIZE_SENT) {
      const at = this.grow(length, type, rc);
      if (at > 0) this.engine.u32[(this.handle + H_CLAIM_COUNT_OFFSET) >>> 2] = 1;
      return at;
    }
    if (rc === RING_E_TOO_LARGE) throw new MessageTooLargeError(length, this.maxPayload);
    throw ringError(rc, { length, type });
  }

  /** Records the open claimMany claim holds. */
  claimedCount(): number {
    return this.engine.u32[(this.handle + H_CLAIM_COUNT_OFFSET) >>> 2]!;
  }

  /** Publishes the first `n` records of the open claimMany claim with one store of the tail. */
  commitMany(n: number): void {
    let rc: number;
    try {
      if (COUNTING) perf.wasmCalls++; rc = this.engine.exports.ring_commit_many(this.handle, n);
    } catch (error) {
      throw trapAsCorrupt(error, { n });
    }
    if (rc < 0) throw ringError(rc, { n });
  }

  /** The data capacity in effect now (below `capacity` while a growing ring has not grown all the way). */
  get currentCapacity(): number {
    return this.engine.u32[(this.handle + H_CAPACITY_OFFSET) >>> 2]!;
  }

  /** A resize announced and not in effect yet (producer: until the consumer passed it). */
  get resizing(): boolean {
    return this.engine.u32[(this.handle + H_PENDING_OFFSET) >>> 2] !== 0;
  }

  /**
   * A claim that needs a larger ring: populate the larger data area first (a full /dev/shm fails here, on this
   * send, with NO_SPACE; a growth the record does not need is given up instead), then claim again, which commits
   * the RECORD_RESIZE. Returns 0: the claim succeeds once the consumer has passed that record (needed() says when).
   */
  private grow(length: number, type: number, rc: number): number {
    if (rc === RING_GROW) {
      const target = this.engine.u32[(this.handle + H_TARGET_OFFSET) >>> 2]!;
      try {
        const have = this.currentCapacity;
        this.growth!.populate(this.dataOffset + have, target - have);
        this.engine.exports.ring_populated(this.handle, target);
        grown.add(this);
        startSweep();
      } catch (error) {
        if (length > maxPayload(this.currentCapacity)) throw error;
        this.engine.exports.ring_grow_limit(this.handle, this.currentCapacity);
      }
      rc = this.engine.exports.ring_claim(this.handle, length, type);
      if (rc >= 0) return rc;
      if (rc !== RING_RESIZE_SENT) throw rc === RING_E_TOO_LARGE ? new MessageTooLargeError(length, this.maxPayload) : ringError(rc, { length, type });
    }
    this.onResize?.();
    return 0;
  }

  /**
   * After claim() returned 0: the free bytes (see free()) at which that same claim succeeds, from this end's
   * private handle (exact, where roomFor-style estimates must assume padding). Valid until the next claim.
   */
  needed(): number {
    return this.engine.u32[(this.handle + H_NEED_OFFSET) >>> 2]!;
  }

  /**
   * Commits the open claim's first `length` bytes. The record is published (the shared tail moves) at once, or,
   * for a `quiet` commit, once a KiB of quiet commits has gathered, or sooner by the first of: a commit that is not
   * quiet, a claim that finds the ring full, a park, a wake check (needsWake) or the close (ring_commit_quiet in
   * assembly/ring.ts). A quiet commit is for a writer that runs a wake check soon after (the channel's afterCommit
   * microtask).
   */
  commit(length: number, quiet = false): void {
    let rc: number;
    try {
      if (COUNTING) perf.wasmCalls++;
      rc = quiet ? this.engine.exports.ring_commit_quiet(this.handle, length) : this.engine.exports.ring_commit(this.handle, length);
    } catch (error) {
      throw trapAsCorrupt(error, { length });
    }
    if (rc < 0) throw ringError(rc, { length });
  }

  abort(): void {
    if (COUNTING) perf.wasmCalls++; const rc = this.engine.exports.ring_abort(this.handle);
    if (rc < 0) throw ringError(rc);
  }

  /**
   * Free bytes as the producer sees them now. Throws ERR_SHMBUS_CORRUPT when the consumer's head is impossible:
   * a writer waiting for room must fail, not wait for space a scribbled head will never free.
   */
  free(): number {
    if (this.closed) return 0;
    if (COUNTING) perf.wasmCalls++; const n = this.engine.exports.ring_free(this.handle);
    if (n < 0) throw ringError(n, { role: this.role });
    return n;
  }

  /**
   * Reads up to `max` committed records; their (offset, length, type) triples are at `this.batch` (also left in
   * `engine.batch`), readable through `engine.u32` at index `batch / 4 + 3 * i`. Valid until release().
   * Each end has its own batch area, so a handler may read other channels in between. Read again only after
   * release(): while a batch is out, a nested read of this same end (a poll handler polling its own channel)
   * returns 0, since those records are being handed out already.
   */
  read(max = BATCH_MAX): number {
    if (this.inBatch || this.closed) return 0;
    if (this.batch === 0) this.batch = this.engine.allocBatch();
    this.engine.batch = this.batch;
    let n: number;
    try {
      if (COUNTING) perf.wasmCalls++; n = this.engine.exports.ring_read(this.handle, this.batch, max > BATCH_MAX ? BATCH_MAX : max);
    } catch (error) {
      throw trapAsCorrupt(error);
    }
    // A producer in another process may announce the next resize as soon as we passed one (a shrink, then a
    // growth): take a few in a row; past that, 0 (the record stays pending and the next read starts with it).
    for (let i = 0; n === RING_RESIZE_SEEN && i < 8; i++) n = this.resized(max);
    if (n === RING_RESIZE_SEEN) n = 0;
    if (n < 0) throw ringError(n);
    this.inBatch = n > 0;
    return n;
  }

  /** read() met a RECORD_RESIZE: make the new area's pages exist in our mapping (whatever the producer did), pass
   * the record, tell a waiting producer, and read on in the new geometry. */
  private resized(max: number): number {
    if (!this.growth) return RING_E_RECORD;
    const next = this.engine.u32[(this.handle + H_PENDING_OFFSET) >>> 2]!;
    const have = this.currentCapacity;
    if (next > have) this.growth.populate(this.dataOffset + have, next - have);
    const rc = this.engine.exports.ring_resize_done(this.handle);
    if (rc < 0) return rc;
    this.onResize?.();
    try {
      return this.engine.exports.ring_read(this.handle, this.batch, max > BATCH_MAX ? BATCH_MAX : max);
    } catch (error) {
      throw trapAsCorrupt(error);
    }
  }

  release(): void {
    this.inBatch = false;
    // A handler may have closed the channel (and freed this handle) while its batch was out.
    if (this.closed) return;
    if (COUNTING) perf.wasmCalls++; this.engine.exports.ring_release(this.handle);
  }

  /** Committed bytes not yet read. */
  pending(): number {
    if (this.closed) return 0;
    if (COUNTING) perf.wasmCalls++; const n = this.engine.exports.ring_pending(this.handle);
    if (n < 0) throw ringError(n);
    return n;
  }

  /** Announces a sleep; true when the caller should wait for the doorbell (see ring_park). */
  park(need = 0): boolean {
    if (this.closed) return false;
    if (COUNTING) perf.wasmCalls++; return this.engine.exports.ring_park(this.handle, need) === 1;
  }

  unpark(): void {
    // A waiter may wake after the channel closed and freed this handle: never touch a freed handle.
    if (this.closed) return;
    if (COUNTING) perf.wasmCalls++; this.engine.exports.ring_unpark(this.handle);
  }

  /** True once per peer park: the caller must ring the doorbell. */
  needsWake(): boolean {
    if (this.closed) return false;
    if (COUNTING) perf.wasmCalls++; return this.engine.exports.ring_needs_wake(this.handle) === 1;
  }

  /** Linear-memory offset of the word this end sleeps on while parked, and its value at park (for futex). */
  waitWord(): { offset: number; value: number } {
    if (COUNTING) perf.wasmCalls += 2;
    return { offset: this.engine.exports.ring_wait_address(this.handle), value: this.engine.exports.ring_wait_value(this.handle) >>> 0 };
  }

  /** Linear-memory offset of the word the parked peer sleeps on (bumped by needsWake): the futex to wake. */
  wakeWordOffset(): number {
    if (COUNTING) perf.wasmCalls++; return this.engine.exports.ring_wake_address(this.handle);
  }

  /** Marks this end closed in the shared header. */
  markClosed(): void {
    if (COUNTING) perf.wasmCalls++; this.engine.exports.ring_close(this.handle);
  }

  peerClosed(): boolean {
    if (this.closed) return true;
    if (COUNTING) perf.wasmCalls++; return this.engine.exports.ring_peer_closed(this.handle) === 1;
  }

  /**
   * @internal The shrink timer's look at a grown producer end: once it stayed empty and unused for a whole interval,
   * a RECORD_RESIZE back to the initial size goes in band; at a later look, once the consumer has passed it, the
   * pages past the initial size are freed (MADV_REMOVE) and a later growth populates them again.
   */
  _sweep(): void {
    const growth = this.growth;
    if (this.closed || !growth) { grown.delete(this); return; }
    const e = this.engine.exports;
    const u32 = this.engine.u32;
    try {
      if (this.shrinkSent) {
        if (e.ring_free(this.handle) < 0 || u32[(this.handle + H_PENDING_OFFSET) >>> 2] !== 0) return;
        this.shrinkSent = false;
        const now = this.currentCapacity;
        if (now !== growth.initial) return;
        growth.unpopulate(this.dataOffset + now, this.capacity - now);
        e.ring_unpopulated(this.handle, now);
        grown.delete(this);
        return;
      }
      // A growth outstanding: look again once it took effect.
      if (u32[(this.handle + H_PENDING_OFFSET) >>> 2] !== 0) return;
      const tail = u32[(this.handle + H_POSITION_OFFSET) >>> 2]!;
      if (tail !== this.sweptTail) { this.sweptTail = tail; return; }
      if (this.currentCapacity <= growth.initial) { grown.delete(this); return; }
      if (this.canShrink && !this.canShrink()) return;
      if (e.ring_shrink(this.handle, growth.initial) === RING_RESIZE_SENT) {
        this.shrinkSent = true;
        this.onResize?.();
      }
    } catch {
      // A failed look (a trap on a ring a peer scribbled) changes nothing: the channel meets the error itself.
    }
  }

  /** Frees the private handle. The shared ring is untouched. */
  dispose(): void {
    if (this.closed) return;
    this.closed = true;
    grown.delete(this);
    this.engine.freeHandle(this.handle);
    if (this.batch !== 0) this.engine.freeBatch(this.batch);
  }
}

export { BATCH_MAX, BATCH_ENTRY_SIZE };
