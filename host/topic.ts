/**
 * The two ends of a broadcast ring (assembly/broadcast.ts) as the host sees them: typed wrappers over the wasm
 * functions, plus formatting a topic segment. No ring logic lives here.
 */
import {
  TOPIC_HEADER_OFFSET, TOPIC_HEADER_SIZE, TOPIC_SLOT_SIZE, SLOT_CLAIM_OFFSET, SLOT_START_OFFSET,
  SLOT_DROPPED_OFFSET, SLOT_CURSOR_SEQ_OFFSET, CLAIM_FREE, TOPIC_TAIL_SEQ_OFFSET, TOPIC_PUBLISHER_CLAIM_OFFSET,
  TOPIC_PUBLISHER_START_OFFSET, TOPIC_POLICY_OFFSET, TOPIC_HISTORY_OFFSET, BC_BATCH_ENTRY_SIZE, BATCH_MAX,
  POLICY_LOSSY, RING_E_TOO_LARGE, RING_E_AGAIN, topicMaxPayload, POLICY_LOSSLESS,
} from '../assembly/layout.js';
import type { Engine } from './engine.js';
import { ringError, trapAsCorrupt } from './ring.js';
import { writeHeader, publishVersion, TOPIC_SEGMENT } from './segment.js';
import { claimOf, claimPid, claimStartLow } from './claim.js';
import { BadArgumentError, ErrorCode, MessageTooLargeError, ShmbusError } from './errors.js';

export type Policy = 'lossless' | 'lossy';

/** Formats a topic segment mapped at `at` (header, topic header, empty slot table), version last. */
export function formatTopic(engine: Engine, at: number, opts: { capacity: number; maxSubscribers: number; policy: Policy; history: number }, pid: number, start: bigint): void {
  writeHeader(engine, at, TOPIC_SEGMENT, opts.maxSubscribers, opts.capacity, pid, start);
  const rc = engine.exports.topic_format(at + TOPIC_HEADER_OFFSET, opts.capacity, opts.maxSubscribers, opts.policy === 'lossy' ? POLICY_LOSSY : POLICY_LOSSLESS, opts.history);
  if (rc === RING_E_TOO_LARGE) throw new BadArgumentError('history larger than the topic can hold', { history: opts.history, capacity: opts.capacity });
  if (rc < 0) throw ringError(rc, opts);
  publishVersion(engine, at);
}

/** What a topic segment's header says about itself (read by tools and the bus registry). */
export interface TopicState {
  policy: Policy;
  history: number;
  published: number;
  publisherPid: number;
  publisherStart: bigint;
  /** The publisher's claim word (see host/claim.ts), 0n when none. */
  publisherClaim: bigint;
  subscribers: { slot: number; pid: number; startTime: bigint; claim: bigint; seq: number; dropped: number }[];
}

export function readTopicState(engine: Engine, at: number, maxSubscribers: number): TopicState {
  const view = new DataView(engine.memory.buffer);
  const t = at + TOPIC_HEADER_OFFSET;
  const subscribers: TopicState['subscribers'] = [];
  for (let i = 0; i < maxSubscribers; i++) {
    const slot = t + TOPIC_HEADER_SIZE + i * TOPIC_SLOT_SIZE;
    const claim = view.getBigUint64(slot + SLOT_CLAIM_OFFSET, true);
    if (claim === BigInt(CLAIM_FREE)) continue;
    subscribers.push({
      slot: i,
      pid: claimPid(claim),
      startTime: view.getBigUint64(slot + SLOT_START_OFFSET, true),
      claim,
      seq: Number(view.getBigUint64(slot + SLOT_CURSOR_SEQ_OFFSET, true)),
      dropped: Number(view.getBigUint64(slot + SLOT_DROPPED_OFFSET, true)),
    });
  }
  return {
    policy: view.getUint32(t + TOPIC_POLICY_OFFSET, true) === POLICY_LOSSY ? 'lossy' : 'lossless',
    history: view.getUint32(t + TOPIC_HISTORY_OFFSET, true),
    published: Number(view.getBigUint64(t + TOPIC_TAIL_SEQ_OFFSET, true)),
    publisherPid: claimPid(view.getBigUint64(t + TOPIC_PUBLISHER_CLAIM_OFFSET, true)),
    publisherStart: view.getBigUint64(t + TOPIC_PUBLISHER_START_OFFSET, true),
    publisherClaim: view.getBigUint64(t + TOPIC_PUBLISHER_CLAIM_OFFSET, true),
    subscribers,
  };
}

/** The publishing end. */
export class TopicWriter {
  readonly engine: Engine;
  readonly handle: number;
  readonly maxPayload: number;
  private disposed = false;

  private readonly at: number;
  private readonly maxSubscribers: number;

  constructor(engine: Engine, at: number, capacity: number, maxSubscribers: number) {
    this.engine = engine;
    this.at = at;
    this.maxSubscribers = maxSubscribers;
    this.handle = engine.allocHandle();
    let rc: number;
    try {
      rc = engine.exports.topic_open_publisher(this.handle, at + TOPIC_HEADER_OFFSET, capacity, maxSubscribers);
    } catch (error) {
      engine.freeHandle(this.handle);
      throw trapAsCorrupt(error, { capacity, maxSubscribers });
    }
    if (rc < 0) {
      engine.freeHandle(this.handle);
      throw ringError(rc, { capacity, maxSubscribers });
    }
    this.maxPayload = topicMaxPayload(capacity);
  }

  /** Payload offset, or 0 when the topic cannot take it now (lossless: a subscriber is behind). */
  claim(length: number, type: number): number {
    let rc: number;
    try {
      rc = this.engine.exports.topic_claim(this.handle, length, type);
    } catch (error) {
      throw trapAsCorrupt(error, { length });
    }
    if (rc >= 0) return rc;
    if (rc === RING_E_TOO_LARGE) {
      if (length > this.maxPayload) throw new MessageTooLargeError(length, this.maxPayload);
      throw new BadArgumentError('the record does not fit beside the retained history: raise capacity or lower history', { length });
    }
    throw ringError(rc, { length });
  }

  /** Publishes the claim; true when subscribers sleep and must be woken. */
  commit(length: number): boolean {
    let rc: number;
    try {
      rc = this.engine.exports.topic_commit(this.handle, length);
    } catch (error) {
      throw trapAsCorrupt(error, { length });
    }
    if (rc < 0) throw ringError(rc, { length });
    return rc === 1;
  }

  /** The slot of the subscriber holding the publisher back, or -1. */
  slowest(): number {
    return this.engine.exports.topic_slowest(this.handle);
  }

  /**
   * Frees slot `index` if it still holds `claim` (whose process the caller found dead; default: whatever claim
   * it holds now). A slot taken by a newer subscriber meanwhile is left alone.
   */
  evict(index: number, claim?: bigint): boolean {
    if (claim === undefined) {
      if (!Number.isInteger(index) || index < 0 || index >= this.maxSubscribers) return false;
      const slot = this.at + TOPIC_HEADER_OFFSET + TOPIC_HEADER_SIZE + index * TOPIC_SLOT_SIZE + SLOT_CLAIM_OFFSET;
      claim = Atomics.load(new BigUint64Array(this.engine.memory.buffer), slot / 8);
    }
    return this.engine.exports.topic_evict(this.handle, index, claimPid(claim), claimStartLow(claim)) === 1;
  }

  /** Announces a wait for `need` bytes; true: sleep on waitWord(). */
  park(need: number): boolean {
    return this.engine.exports.topic_publisher_park(this.handle, need) === 1;
  }

  unpark(): void {
    this.engine.exports.topic_publisher_unpark(this.handle);
  }

  waitWord(): { offset: number; value: number } {
    return { offset: this.engine.exports.topic_wait_address(this.handle), value: this.engine.exports.topic_wait_value(this.handle) >>> 0 };
  }

  /** Marks the topic's publisher gone for good; true when sleepers must be woken. */
  close(): void {
    this.engine.exports.topic_close_publisher(this.handle);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.engine.freeHandle(this.handle);
  }
}

/** A subscribing end, in one slot of the topic. */
export class TopicReader {
  readonly engine: Engine;
  readonly handle: number;
  private disposed = false;

  /**
   * Joins in the first free slot; throws ERR_SHMBUS_BAD_ARGUMENT when every slot is taken. Each batch of records is
   * described in this reader's own batch area (see BATCH_AREA_SIZE), so a handler may read other topics.
   */
  constructor(engine: Engine, at: number, capacity: number, maxSubscribers: number, fromEarliest: boolean, pid: number, start: bigint) {
    this.engine = engine;
    this.handle = engine.allocHandle();
    const claim = claimOf(pid, start);
    try {
      for (let slot = 0; slot < maxSubscribers; slot++) {
        let rc: number;
        try {
          rc = engine.exports.topic_join(this.handle, at + TOPIC_HEADER_OFFSET, capacity, maxSubscribers, slot, fromEarliest ? 1 : 0, pid, claimStartLow(claim), Number(start));
        } catch (error) {
          throw trapAsCorrupt(error, { slot });
        }
        if (rc === 0) {
          this.batch = engine.allocBatch();
          return;
        }
        if (rc === RING_E_AGAIN) {
          throw new ShmbusError(ErrorCode.TIMEOUT, 'the publisher lapped every attempt to join the topic', { details: { slot } });
        }
        if (rc < 0) throw ringError(rc, { slot });
      }
      throw new BadArgumentError('every subscriber slot of the topic is taken', { maxSubscribers });
    } catch (error) {
      engine.freeHandle(this.handle);
      throw error;
    }
  }

  /** Address of this reader's batch area: entries of BC_BATCH_ENTRY_SIZE bytes (address, length, type, seq). */
  readonly batch: number = 0;
  private inBatch = false;

  /**
   * Reads a batch into `batch` (also left in `engine.batch`). Read again only after release(): while a batch is
   * out, a nested read of this same reader (a poll handler polling its own subscription) returns 0, since those
   * records are being handed out already.
   */
  read(max = BATCH_MAX): number {
    if (this.inBatch || this.disposed) return 0;
    this.engine.batch = this.batch;
    let n: number;
    try {
      n = this.engine.exports.topic_read(this.handle, this.batch, max > BATCH_MAX ? BATCH_MAX : max);
    } catch (error) {
      throw trapAsCorrupt(error);
    }
    if (n < 0) throw ringError(n);
    this.inBatch = n > 0;
    return n;
  }

  /** Low 32 bits of the oldest sequence still in the ring (lossy: older records read may be torn). */
  oldestSeq(): number {
    return this.engine.exports.topic_oldest_seq(this.handle) >>> 0;
  }

  addDropped(n: number): void {
    this.engine.exports.topic_add_dropped(this.handle, n);
  }

  get dropped(): number {
    return this.engine.exports.topic_dropped(this.handle);
  }

  /** Releases what was read; true when the publisher sleeps waiting for room. */
  release(): boolean {
    this.inBatch = false;
    // A poll handler may have closed the subscription (and freed this handle) while its batch was out.
    if (this.disposed) return false;
    return this.engine.exports.topic_release(this.handle) === 1;
  }

  pending(): number {
    return this.engine.exports.topic_pending(this.handle);
  }

  publisherClosed(): boolean {
    return this.engine.exports.topic_publisher_closed(this.handle) === 1;
  }

  /** Still in our slot (not evicted). */
  member(): boolean {
    return this.engine.exports.topic_member(this.handle) === 1;
  }

  park(): boolean {
    return this.engine.exports.topic_park(this.handle) === 1;
  }

  unpark(): void {
    this.engine.exports.topic_unpark(this.handle);
  }

  waitWord(): { offset: number; value: number } {
    return { offset: this.engine.exports.topic_wait_address(this.handle), value: this.engine.exports.topic_wait_value(this.handle) >>> 0 };
  }

  get slot(): number {
    return this.engine.exports.topic_slot(this.handle);
  }

  leave(): void {
    this.engine.exports.topic_leave(this.handle);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.leave();
    this.engine.freeHandle(this.handle);
    this.engine.freeBatch(this.batch);
  }
}

export { BC_BATCH_ENTRY_SIZE };
