/** The publishing end of a topic. */
import { EventEmitter } from 'node:events';
import { encodePlain } from '../host/pack.js';
import {
  RECORD_BYTES, RECORD_MSGPACK, TOPIC_HEADER_OFFSET, TOPIC_HEADER_SIZE, TOPIC_SLOT_SIZE, TOPIC_PUBLISHER_CLAIM_OFFSET,
  TOPIC_PUBLISHER_START_OFFSET, SLOT_CLAIM_OFFSET, TOPIC_WAKE_OFFSET, CLAIM_FREE,
} from '../assembly/layout.js';
import { claimAlive, dropClaim, ownClaim, takeClaim } from '../host/claim.js';
import { TopicWriter, type Policy } from '../host/topic.js';
import { LIVENESS_MS } from '../host/liveness.js';
import { processStartTime } from '../host/sys/proc.js';
import { BadArgumentError, ClosedError, CorruptError, ErrorCode, ShmbusError } from '../host/errors.js';
import { SendQueue } from '../host/send-queue.js';
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
  /** Messages waiting for room in the topic (the one send queue, host/send-queue.ts). */
  private readonly sendQueue: SendQueue;
  private pumping = false;
  private closed = false;
  private wakeScheduled = false;
  private waiter: WordWaiter | undefined;
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
    this.sendQueue = new SendQueue({
      maxMessageSize: this.maxMessageSize,
      maxQueued,
      write: (type, bytes) => this.write(type, bytes),
      onDrain: () => this.emit('drain'),
      // A smaller message may fit where a refused one did not.
      refusalBlocks: false,
    });
  }

  /** Messages waiting locally. */
  get queued(): number { return this.sendQueue.length; }

  /** Publishes a value (msgpack). */
  publish(value: unknown): boolean {
    this.checkOpen();
    return this.enqueue(RECORD_MSGPACK, encodePlain(value));
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
    if (this.sendQueue.trySend(RECORD_MSGPACK, encodePlain(value))) return true;
    // drained() now waits for room: the pump notices it.
    void this.pump();
    return false;
  }

  /** Resolves when no message waits locally. */
  drained(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed && this.sendQueue.length) return Promise.reject(new ClosedError('publisher is closed'));
    return this.sendQueue.drained();
  }

  private checkOpen(): void {
    if (this.failure) throw this.failure;
    if (this.closed) throw new ClosedError('publisher is closed', { topic: this.topic });
  }

  private enqueue(type: number, bytes: Uint8Array): boolean {
    if (this.sendQueue.send(type, bytes)) return true;
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
      while (!this.closed) {
        if (this.sendQueue.flush()) break;
        if (this.evictDead()) continue;
        const next = this.sendQueue.peek()!;
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
      this.sendQueue.end(this.failure, true);
      return;
    } finally {
      this.pumping = false;
    }
    // Nothing waits: settle drained() and emit 'drain' (if someone was told false).
    if (this.sendQueue.length === 0) this.sendQueue.writable();
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
    if (this.sendQueue.length) await this.drained().catch(() => {});
    this.closed = true;
    this.sendQueue.end(new ClosedError('publisher is closed', { topic: this.topic }), true);
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

