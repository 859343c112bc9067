/** The publishing end of a topic. */
import { EventEmitter } from 'node:events';
import { Packr } from 'msgpackr';
import {
  RECORD_BYTES, RECORD_MSGPACK, TOPIC_HEADER_OFFSET, TOPIC_HEADER_SIZE, TOPIC_SLOT_SIZE, TOPIC_PUBLISHER_CLAIM_OFFSET,
  TOPIC_PUBLISHER_START_OFFSET, SLOT_CLAIM_OFFSET, TOPIC_WAKE_OFFSET, CLAIM_FREE,
} from '../assembly/layout.js';
import { claimAlive, dropClaim, ownClaim, takeClaim } from '../host/claim.js';
import { TopicWriter, type Policy } from '../host/topic.js';
import { LIVENESS_MS } from '../host/liveness.js';
import { processStartTime } from '../host/sys/proc.js';
import {
  BadArgumentError, ClosedError, CorruptError, ErrorCode, MessageTooLargeError, QueueFullError, ShmbusError,
} from '../host/errors.js';
import type { Bus } from './bus.js';
import type { Mapped } from '../host/mapped.js';
import { WordWaiter, wakeWord } from './waiter.js';

export interface PublisherOptions {
  /** Ring bytes: a power of two, number or '16MiB'. Default 1 MiB. */
  capacity?: number | string;
  /** 'lossless' (default): wait for the slowest live subscriber; 'lossy': never wait, subscribers may lap. */
  policy?: Policy;
  /** The newest `history` messages stay available to late joiners (`from: 'earliest'`). Default 0. */
  history?: number;
  /** Subscriber slots. Default 64. */
  maxSubscribers?: number;
  /** Hard cap of messages waiting locally when the topic is full (lossless). Default 65536. */
  maxQueued?: number;
}

interface Queued { type: number; bytes: Uint8Array }

/**
 * The publishing end of a topic. `publish` follows `send`'s conventions: always takes the message, returns
 * false once messages wait locally (a lossless topic held by a slow subscriber); `drained()` says when to go on.
 */
export class Publisher extends EventEmitter {
  readonly topic: string;
  readonly maxMessageSize: number;
  readonly maxQueued: number;
  private readonly bus: Bus;
  private readonly mapped: Mapped;
  private readonly writer: TopicWriter;
  private readonly packr = new Packr({ useRecords: false });
  private readonly queue: Queued[] = [];
  private pumping = false;
  private closed = false;
  private wakeScheduled = false;
  private waiter: WordWaiter | undefined;
  private drainWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  /** Set when the topic turned out corrupt while queued messages were moved in: every later call throws it. */
  private failure: Error | undefined;

  /** @internal use Bus.publisher */
  constructor(bus: Bus, topic: string, mapped: Mapped, capacity: number, maxSubscribers: number, maxQueued: number) {
    super();
    this.bus = bus;
    this.topic = topic;
    this.mapped = mapped;
    this.maxQueued = maxQueued;
    const engine = mapped.engine;
    // Claim the topic: one publisher at a time; a dead one's claim is taken over, by one compare-and-swap of the
    // whole claim word (host/claim.ts), so two would-be publishers can never both win.
    const words = new BigUint64Array(engine.memory.buffer);
    const claimWord = (mapped.at + TOPIC_HEADER_OFFSET + TOPIC_PUBLISHER_CLAIM_OFFSET) / 8;
    if (!takeClaim(words, claimWord, ownClaim())) {
      const holder = Atomics.load(words, claimWord);
      throw new ShmbusError(ErrorCode.EXISTS, 'the topic already has a publisher', { details: { topic, pid: Number(holder & 0xffffffffn) } });
    }
    new DataView(engine.memory.buffer).setBigUint64(mapped.at + TOPIC_HEADER_OFFSET + TOPIC_PUBLISHER_START_OFFSET, processStartTime(process.pid) ?? 0n, true);
    try {
      this.writer = new TopicWriter(engine, mapped.at, capacity, maxSubscribers);
    } catch (error) {
      dropClaim(words, claimWord, ownClaim());
      throw error;
    }
    this.maxMessageSize = this.writer.maxPayload;
  }

  /** Messages waiting locally. */
  get queued(): number { return this.queue.length; }

  /** Publishes a value (msgpack). */
  publish(value: unknown): boolean {
    this.checkOpen();
    return this.enqueue(RECORD_MSGPACK, this.packr.pack(value));
  }

  /** Publishes raw bytes (copied). */
  publishBytes(bytes: Uint8Array): boolean {
    this.checkOpen();
    if (!(bytes instanceof Uint8Array)) throw new BadArgumentError('publishBytes takes a Uint8Array');
    return this.enqueue(RECORD_BYTES, bytes);
  }

  /** Publishes only if the topic takes it now; false = not taken. */
  tryPublish(value: unknown): boolean {
    this.checkOpen();
    const bytes = this.packr.pack(value);
    if (bytes.length > this.maxMessageSize) throw new MessageTooLargeError(bytes.length, this.maxMessageSize);
    return this.queue.length === 0 && this.write(RECORD_MSGPACK, bytes);
  }

  /** Resolves when no message waits locally. */
  drained(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.queue.length === 0) return Promise.resolve();
    if (this.closed) return Promise.reject(new ClosedError('publisher is closed'));
    return new Promise((resolve, reject) => this.drainWaiters.push({ resolve, reject }));
  }

  private checkOpen(): void {
    if (this.failure) throw this.failure;
    if (this.closed) throw new ClosedError('publisher is closed', { topic: this.topic });
  }

  private enqueue(type: number, bytes: Uint8Array): boolean {
    if (bytes.length > this.maxMessageSize) throw new MessageTooLargeError(bytes.length, this.maxMessageSize);
    if (this.queue.length === 0 && this.write(type, bytes)) return true;
    if (this.queue.length >= this.maxQueued) throw new QueueFullError(this.maxQueued);
    this.queue.push({ type, bytes: new Uint8Array(bytes) });
    void this.pump();
    return false;
  }

  private write(type: number, bytes: Uint8Array): boolean {
    const at = this.writer.claim(bytes.length, type);
    if (at === 0) return false;
    this.mapped.engine.u8.set(bytes, at);
    if (this.writer.commit(bytes.length)) this.scheduleWake();
    return true;
  }

  /**
   * A commit saw sleeping subscribers (and bumped the wake word): wake them once per turn of the event loop,
   * after this turn's burst of publishes.
   */
  private scheduleWake(): void {
    if (this.wakeScheduled) return;
    this.wakeScheduled = true;
    queueMicrotask(() => {
      this.wakeScheduled = false;
      if (!this.closed) wakeWord(this.mapped.engine, this.mapped.at + TOPIC_HEADER_OFFSET + TOPIC_WAKE_OFFSET);
    });
  }

  /** Moves queued messages into the topic; while held, evicts subscribers whose process died. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length && !this.closed) {
        const next = this.queue[0]!;
        if (this.write(next.type, next.bytes)) { this.queue.shift(); continue; }
        if (this.evictDead()) continue;
        if (this.writer.park(next.bytes.length)) {
          // Woken by a subscriber's release, or after LIVENESS_MS to check the slowest one is still alive.
          this.waiter ??= new WordWaiter(this.mapped.engine, this.writer);
          await this.waiter.sleep(LIVENESS_MS, () => this.closed);
          this.writer.unpark();
        }
      }
    } catch (error) {
      // A corrupt topic (a member scribbled it): the publisher is unusable. Nobody awaits pump(), so the error
      // goes to drained() and to every later publish, never to an unhandled rejection.
      this.failure = error instanceof Error ? error : new CorruptError('publisher failed', { cause: String(error) });
      this.queue.length = 0;
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w.reject(this.failure);
      return;
    } finally {
      this.pumping = false;
    }
    if (this.queue.length === 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w.resolve();
      this.emit('drain');
    }
  }

  /** If the subscriber holding us back is dead, evicts it. */
  private evictDead(): boolean {
    const slot = this.writer.slowest();
    if (slot < 0) return false;
    const words = new BigUint64Array(this.mapped.engine.memory.buffer);
    const s = this.mapped.at + TOPIC_HEADER_OFFSET + TOPIC_HEADER_SIZE + slot * TOPIC_SLOT_SIZE;
    // SYNC: pairs with the compare-and-swap in topic_join; evict only succeeds if the slot still holds this claim.
    const claim = Atomics.load(words, (s + SLOT_CLAIM_OFFSET) / 8);
    if (claim === BigInt(CLAIM_FREE) || claimAlive(claim)) return false;
    return this.writer.evict(slot, claim);
  }

  /** Stops publishing: queued messages are delivered first (as long as subscribers read), then subscribers end. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.queue.length) await this.drained().catch(() => {});
    this.closed = true;
    this.waiter?.close();
    this.writer.close();
    // Sleeping subscribers must see the close now, not at their next timeout.
    wakeWord(this.mapped.engine, this.mapped.at + TOPIC_HEADER_OFFSET + TOPIC_WAKE_OFFSET);
    dropClaim(new BigUint64Array(this.mapped.engine.memory.buffer), (this.mapped.at + TOPIC_HEADER_OFFSET + TOPIC_PUBLISHER_CLAIM_OFFSET) / 8, ownClaim());
    this.writer.dispose();
    this.mapped.unmap();
    this.bus._forget(this);
  }
}

