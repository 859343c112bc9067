/** One subscriber of a topic. */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { Unpackr } from 'msgpackr';
import {
  RECORD_MSGPACK, TOPIC_HEADER_OFFSET, TOPIC_SPACE_WAKE_OFFSET, BC_BATCH_ENTRY_SIZE, BC_BATCH_ADDRESS_OFFSET,
  BC_BATCH_LENGTH_OFFSET, BC_BATCH_TYPE_OFFSET, BC_BATCH_SEQ_OFFSET, BC_RECORD_HEADER_SIZE, BC_RECORD_SEQ_OFFSET,
} from '../assembly/layout.js';
import { decodeMsgpackAt, DEFAULT_DECODE_LIMITS } from '../host/codec.js';
import { NOT_DECODED, plainRecordDecoder } from '../host/unpack.js';
import type { Region } from '../host/region.js';
import { readSegment, TOPIC_SEGMENT } from '../host/segment.js';
import { TopicReader } from '../host/topic.js';
import { processStartTime } from '../host/sys/proc.js';
import { CorruptError, ErrorCode, ShmbusError, TimeoutError } from '../host/errors.js';
import type { Bus } from './bus.js';
import { Mapped, unformatted } from '../host/mapped.js';
import { WordWaiter, wakeWord } from './waiter.js';
import { readyWithinTurns } from '../host/turns.js';
import { COUNTING, perf } from '../host/ring.js';

/** A subscriber that has kept the event loop busy this long (ms) yields a turn to it. */
const YIELD_MS = 2;
/** Stands in the inbox for a record lost while it was read (lossy): skipped, counted in `dropped`. */
const TORN = Symbol('torn');
// Batch entry fields as Uint32Array indexes.
const ENTRY_U32 = BC_BATCH_ENTRY_SIZE >>> 2;
const A = BC_BATCH_ADDRESS_OFFSET >>> 2, LEN = BC_BATCH_LENGTH_OFFSET >>> 2, TYPE = BC_BATCH_TYPE_OFFSET >>> 2, SEQ = BC_BATCH_SEQ_OFFSET >>> 2;
/** From a record's payload address back to its 64-bit sequence number in the record header (docs/bus.md). */
const SEQ_BEFORE_PAYLOAD = BC_RECORD_HEADER_SIZE - BC_RECORD_SEQ_OFFSET;

/**
 * A `poll` handler: `memory[offset, offset + length)` is the record's payload in place (valid during the call),
 * `type` its record type (RECORD_MSGPACK or RECORD_BYTES), `seq` its sequence number in the topic (0 for the first
 * record ever published, one more for each next; a gap means records lost to lapping or published before joining).
 */
export type PollHandler = (memory: Uint8Array, offset: number, length: number, type: number, seq: number) => void;

export interface SubscribeOptions {
  /** 'latest' (default): only messages published from now on; 'earliest': the retained history first. */
  from?: 'latest' | 'earliest';
  /** false: fail with ERR_SHMBUS_NOT_FOUND when the topic does not exist yet, instead of waiting for it. */
  create?: boolean;
  /** Give up waiting for the topic to appear after this many ms (ERR_SHMBUS_TIMEOUT). Default: wait forever. */
  timeout?: number;
  signal?: AbortSignal;
}


/** How long a subscription keeps trying to join a topic whose publisher laps every attempt (host/topic.ts
 * TopicReader: each try makes many attempts in one call); then the join fails with TIMEOUT. */
const LAPPED_PATIENCE_MS = 1000;

/** One subscriber of a topic: an async iterable of messages. `dropped` counts messages lost to lapping (lossy). */
export class Subscription implements AsyncIterable<unknown> {
  readonly topic: string;
  private readonly bus: Bus;
  private readonly fromEarliest: boolean;
  private readonly options: SubscribeOptions;
  // copyBuffers: binary fields of a decoded value must not stay views into the ring, which the publisher reuses.
  private readonly unpackr = new Unpackr({ useRecords: false, copyBuffers: true });
  private reader: TopicReader | undefined;
  private mapped: Mapped | undefined;
  private readonly inbox: unknown[] = [];
  private inboxHead = 0;
  private closed = false;
  private ending = false;
  private lastYield = performance.now();
  private joining: Promise<void> | undefined;
  private spinNs = 20_000;
  private waiter: WordWaiter | undefined;

  /** @internal use Bus.subscribe */
  constructor(bus: Bus, topic: string, fromEarliest: boolean, options: SubscribeOptions) {
    this.bus = bus;
    this.topic = topic;
    this.fromEarliest = fromEarliest;
    this.options = options;
    // Join at once when the topic exists, so 'latest' means "from the subscribe call".
    try { this.tryJoin(); } catch { /* not there yet: next() waits for it */ }
  }

  /** Messages lost to lapping on a lossy topic. */
  get dropped(): number {
    return this.reader?.dropped ?? 0;
  }

  private tryJoin(): boolean {
    if (this.reader) return true;
    // Closed: never join again (a readable() or poll() after close() would take a slot and a mapping for good).
    if (this.closed) return false;
    let region: Region;
    try {
      region = this.bus._topicRegion(this.topic);
    } catch (error) {
      if (error instanceof ShmbusError && error.code === ErrorCode.NOT_FOUND) return false;
      throw error;
    }
    // Its creator made the file but has not sized it yet (shm_open, then ftruncate): join on a later try.
    if (region.size === 0) { region.close(); return false; }
    const engine = this.bus._engine;
    const mapped = Mapped.map(engine, region);
    try {
      // Its creator has not formatted it yet: join on a later try.
      if (unformatted(mapped)) { mapped.unmap(); return false; }
      const info = readSegment(engine, mapped.at, region.size, TOPIC_SEGMENT);
      this.reader = new TopicReader(engine, mapped.at, info.capacity, info.ringCount, this.fromEarliest, process.pid, processStartTime(process.pid) ?? 0n);
      this.mapped = mapped;
      return true;
    } catch (error) {
      mapped.unmap();
      // Every attempt of this join was lapped or met a publish in progress: on a busy machine a publisher preempted
      // in the middle of a publish holds joins off for its whole time off the CPU. Try again on a later turn (join()
      // waits between tries without blocking), for up to LAPPED_PATIENCE_MS from the first such try.
      if (error instanceof ShmbusError && error.code === ErrorCode.TIMEOUT) {
        this.lappedSince ??= performance.now();
        if (performance.now() - this.lappedSince < LAPPED_PATIENCE_MS) return false;
      }
      throw error;
    }
  }

  /** When a join of this subscription was first lapped throughout (see tryJoin). */
  private lappedSince: number | undefined;

  private async join(): Promise<void> {
    const deadline = this.options.timeout !== undefined ? performance.now() + this.options.timeout : Infinity;
    for (let delay = 1; !this.tryJoin(); delay = Math.min(delay * 2, 50)) {
      if (this.closed) return;
      if (this.options.signal?.aborted) throw new ShmbusError(ErrorCode.CLOSED, 'subscription aborted', { cause: this.options.signal.reason });
      if (performance.now() > deadline) throw new TimeoutError('topic did not appear', { topic: this.topic, timeout: this.options.timeout });
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  private fill(): number {
    const reader = this.reader!;
    const engine = this.bus._engine;
    let n: number;
    try {
      n = reader.read();
    } catch (error) {
      // Evicted (judged dead): the publisher no longer spared our records, so what we read may be gone. Say so.
      if (!reader.member()) throw this.evicted();
      throw error;
    }
    if (n === 0) return 0;
    const u32 = engine.u32;
    const u8 = engine.u8;
    const bytes = engine.bytes;
    const plainIn = plainRecordDecoder(DEFAULT_DECODE_LIMITS);
    const start = this.inbox.length;
    // The batch entries (in this reader's private batch area) stay as they are until the next read.
    const first = reader.batch >>> 2;
    // Lossy: records the publisher reclaimed since the read are not worth decoding (counted as torn below).
    const reclaimed = reader.oldestSeq();
    for (let i = 0, e = first; i < n; i++, e += ENTRY_U32) {
      const addr = u32[e + A]!, length = u32[e + LEN]!, type = u32[e + TYPE]!, seq = u32[e + SEQ]!;
      if (((seq - reclaimed) | 0) < 0) { this.inbox.push(TORN); continue; }
      try {
        // Every member may write the topic, so its bytes may change while we read them: msgpack is read in place
        // by the checked reader (host/unpack.ts: bounded, strings copied before V8 decodes them), and what it
        // leaves is checked and decoded from a private copy; raw bytes are copied out.
        if (type === RECORD_MSGPACK) {
          const value = plainIn.decode(bytes, addr, addr + length);
          this.inbox.push(value !== NOT_DECODED ? value : decodeMsgpackAt(this.unpackr, u8, addr, addr + length));
        } else {
          this.inbox.push(u8.slice(addr, addr + length));
        }
      } catch {
        this.inbox.push(TORN); // a lossy record overwritten mid-read decodes as garbage: checked below
      }
    }
    // Lossy: records older than the oldest one still there may have been overwritten while we read them.
    const oldest = reader.oldestSeq();
    let torn = 0;
    let undecodable = -1;
    for (let i = 0, e = first; i < n; i++, e += ENTRY_U32) {
      const seq = u32[e + SEQ]!;
      if (((seq - oldest) | 0) < 0) { this.inbox[start + i] = TORN; torn++; }
      else if (this.inbox[start + i] === TORN && undecodable < 0) undecodable = seq;
    }
    if (torn) reader.addDropped(torn);
    if (reader.release()) this.wakePublisher();
    // Intact (not overwritten while we read it) and still not msgpack: the publisher wrote garbage.
    if (undecodable >= 0) throw new CorruptError('topic record does not decode', { topic: this.topic, seq: undecodable });
    return n;
  }

  /**
   * The iterator's next(). A message already decoded (a whole batch is decoded per read) is handed out without
   * entering an async function: a resolved promise is its only cost.
   */
  private next(): Promise<IteratorResult<unknown>> {
    const value = this.takeInbox();
    return value !== TORN ? Promise.resolve({ value, done: false }) : this.nextSlow();
  }

  /** The next decoded message, skipping torn ones; TORN when none is left. */
  private takeInbox(): unknown {
    while (this.inboxHead < this.inbox.length) {
      const value = this.inbox[this.inboxHead];
      this.inbox[this.inboxHead++] = undefined;
      if (this.inboxHead === this.inbox.length) { this.inbox.length = 0; this.inboxHead = 0; }
      if (value !== TORN) return value;
    }
    return TORN;
  }

  private async nextSlow(): Promise<IteratorResult<unknown>> {
    if (!this.reader) {
      this.joining ??= this.join();
      await this.joining;
    }
    for (;;) {
      const value = this.takeInbox();
      if (value !== TORN) return { value, done: false };
      if (this.closed || this.ending) return { value: undefined, done: true };
      const now = performance.now();
      if (now - this.lastYield > YIELD_MS) { await nextTurn(); this.lastYield = performance.now(); continue; }
      const reader = this.reader!;
      if (this.fill() > 0) continue;
      if (!reader.member()) throw this.evicted();
      if (reader.publisherClosed()) {
        if (reader.pending() > 0) continue;
        this.ending = true;
        continue;
      }
      if (await this.spinAfterTurns(reader)) continue;
      if (reader.park()) {
        await this.sleep(reader);
        reader.unpark();
      }
    }
  }

  /**
   * Busy-polls briefly before parking, like a channel's adaptive spin: the budget doubles when a record came
   * while spinning and halves when none did, between 1 µs and 100 µs.
   */
  private spin(reader: TopicReader): boolean {
    const start = performance.now();
    for (let i = 1; ; i++) {
      if (this.recordsOrEnd(reader)) {
        if (this.spinNs < 100_000) this.spinNs *= 2;
        return true;
      }
      if ((i & 31) === 0 && (performance.now() - start) * 1e6 > this.spinNs) break;
    }
    if (this.spinNs > 1000) this.spinNs >>= 1;
    return false;
  }

  /**
   * Microtask turns first (host/turns.ts), then the spin; true when records wait, the publisher closed, or the
   * subscription closed (close() during the turns releases the reader: it is not touched after that).
   */
  private async spinAfterTurns(reader: TopicReader): Promise<boolean> {
    return (await readyWithinTurns(() => this.closed || this.recordsOrEnd(reader))) || this.closed || this.spin(reader);
  }

  /** Whether records wait or the publisher closed (what ends a wait). */
  private recordsOrEnd(reader: TopicReader): boolean {
    return reader.pending() > 0 || reader.publisherClosed();
  }

  /**
   * Zero-copy reading: hands every waiting record to `handler` in place (valid during the call) and returns how
   * many; 0 when none wait or the subscription has not joined yet. On a lossy topic a record may be overwritten
   * while the handler reads it; such records are counted in `dropped` afterwards: use the iterator for
   * validated copies.
   */
  poll(handler: PollHandler): number {
    if (this.closed || (!this.reader && !this.tryJoin())) return 0;
    const reader = this.reader!;
    const engine = this.bus._engine;
    const n = reader.read();
    if (n === 0) return 0;
    const u32 = engine.u32, u8 = engine.u8;
    const batch = reader.batch >>> 2;
    let thrown: unknown;
    let e = batch;
    for (let i = 0; i < n; i++, e += ENTRY_U32) {
      // Every record is handed over (and the batch released) even if a handler throws; the first error is rethrown.
      try {
        const address = u32[e + A]!;
        // The header sits in the topic's data just before the payload (records are 16-byte aligned); on a lossy
        // topic it may be overwritten like the payload, which `dropped` then counts.
        const s = (address - SEQ_BEFORE_PAYLOAD) >>> 2;
        handler(u8, address, u32[e + LEN]!, u32[e + TYPE]!, u32[s]! + u32[s + 1]! * 2 ** 32);
      } catch (error) {
        thrown ??= error;
      }
    }
    // A handler closed the subscription: its reader and mapping are gone, nothing is left to release.
    if (this.closed) {
      if (thrown !== undefined) throw thrown;
      return n;
    }
    const oldest = reader.oldestSeq();
    const first = u32[batch + SEQ]!;
    if (((first - oldest) | 0) < 0) reader.addDropped(Math.min(n, (oldest - first) >>> 0));
    if (reader.release()) this.wakePublisher();
    if (thrown !== undefined) throw thrown;
    return n;
  }

  private evicted(): ShmbusError {
    return new ShmbusError(ErrorCode.PEER_DEAD, 'evicted from the topic (its publisher judged this process dead)', { details: { topic: this.topic } });
  }

  /** Resolves when records wait (or the publisher closed); spins briefly, then sleeps. */
  async readable(): Promise<void> {
    if (!this.reader) {
      this.joining ??= this.join();
      await this.joining;
    }
    const reader = this.reader;
    if (!reader || (await this.spinAfterTurns(reader))) return;
    if (reader.park()) {
      await this.sleep(reader);
      reader.unpark();
    }
  }

  /** True once the publisher closed and every record was read. */
  get ended(): boolean {
    return !!this.reader && this.reader.publisherClosed() && this.reader.pending() === 0;
  }

  /** Sleeps until the publisher publishes (or a second passes: then the caller rechecks the topic's state). */
  private sleep(reader: TopicReader): Promise<void> {
    if (COUNTING) perf.parks++;
    this.waiter ??= new WordWaiter(this.bus._engine, reader);
    return this.waiter.sleep(1000, () => this.closed);
  }

  /** Our release freed room for a parked publisher: wake it. */
  private wakePublisher(): void {
    wakeWord(this.bus._engine, this.mapped!.at + TOPIC_HEADER_OFFSET + TOPIC_SPACE_WAKE_OFFSET);
  }

  /** The next message, or undefined at the end. */
  async receive(): Promise<unknown> {
    const r = await this.next();
    return r.done ? undefined : r.value;
  }

  [Symbol.asyncIterator](): AsyncIterator<unknown> {
    return {
      next: () => this.next(),
      return: async () => { await this.close(); return { value: undefined, done: true }; },
    };
  }

  /** Leaves the topic. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.waiter?.close();
    this.reader?.dispose();
    this.mapped?.unmap();
    this.reader = undefined;
    this.mapped = undefined;
    this.bus._forget(this);
  }
}

