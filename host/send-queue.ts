/**
 * The send queue with back-pressure, written once for every connection (the shm channel, the kernel transports)
 * and the topic publisher. It follows Node's `stream.write` convention:
 *
 * - `send` always takes the message: written at once when nothing waits, else a private copy waits here (at
 *   most `maxQueued`, then ERR_SHMBUS_QUEUE_FULL) and `send` returns false;
 * - `trySend` writes now or not at all (false: nothing taken);
 * - `drained()` resolves, and `onDrain` fires ('drain'), once nothing waits and a refused write may be retried.
 *
 * The owner supplies how to write one message now (`write`: true = taken, false = no room now, nothing taken) and
 * tells the queue when room may have appeared (`writable()`). Which event that is (a kernel 'drain', a doorbell, a
 * reader's release of ring space) is the owner's business, as are its closed and failed states: the queue only
 * hears of them through `end`.
 */
import { MessageTooLargeError, QueueFullError } from './errors.js';

/** Why `write` is called: the first try of a `send`, of a `trySend`, or a queued message (a private copy). */
export const WRITE_SEND = 0;
export const WRITE_TRY = 1;
export const WRITE_QUEUED = 2;
export type WriteKind = typeof WRITE_SEND | typeof WRITE_TRY | typeof WRITE_QUEUED;

/**
 * Writes one whole message now, or nothing: true = taken, false = no room now. `bytes` is valid only during the
 * call unless `kind` is WRITE_QUEUED (then it is the queue's private copy, which the writer may keep). A throw
 * goes to the caller of `send` / `trySend` / `flush` / `writable` and leaves the queue as it was.
 */
export type WriteOne = (type: number, bytes: Uint8Array, kind: WriteKind) => boolean;

export interface SendQueueOptions {
  /** Largest message in bytes; larger ones throw ERR_SHMBUS_MESSAGE_TOO_LARGE. */
  maxMessageSize: number;
  /** Hard cap of messages waiting; one more throws ERR_SHMBUS_QUEUE_FULL. */
  maxQueued: number;
  write: WriteOne;
  /** Someone was told false (a send queued, a trySend refused) and now nothing waits: emit 'drain'. */
  onDrain?: () => void;
  /**
   * Whether a refused trySend (or `refused()`) holds later sends back until `writable()` (default true: a
   * kernel writer that said "would block" is not asked again before it says so). False lets a later send try
   * `write` at once (the shm ring: a smaller message may fit where the refused one did not); drained() still
   * waits for `writable()` either way.
   */
  refusalBlocks?: boolean;
}

/** One message waiting in the queue, in its private copy. */
export interface QueuedMessage { type: number; bytes: Uint8Array }

interface Waiter { resolve: () => void; reject: (e: Error) => void }

export class SendQueue {
  readonly maxMessageSize: number;
  readonly maxQueued: number;
  private readonly write: WriteOne;
  private readonly onDrain: (() => void) | undefined;
  private readonly items: QueuedMessage[] = [];
  private head = 0;
  /** A write was refused and the owner has not said "writable" since: new messages queue behind it. */
  private blocked = false;
  /** A trySend / claim was refused (refusalBlocks false): drained() waits for writable(), sends do not. */
  private triedAndRefused = false;
  private readonly refusalBlocks: boolean;
  /** Someone was told false: onDrain is owed once nothing waits. */
  private drainOwed = false;
  private flushing = false;
  private waiters: Waiter[] = [];
  /** Set by `end`: what drained() rejects with while anything still waits. */
  private reason: Error | undefined;

  constructor(options: SendQueueOptions) {
    this.maxMessageSize = options.maxMessageSize;
    this.maxQueued = options.maxQueued;
    this.write = options.write;
    this.onDrain = options.onDrain;
    this.refusalBlocks = options.refusalBlocks ?? true;
  }

  /** Messages waiting. */
  get length(): number {
    return this.items.length - this.head;
  }

  /** Nothing waits and no refused write is outstanding: a send goes straight to `write`. */
  get idle(): boolean {
    return this.head === this.items.length && !this.blocked && !this.triedAndRefused;
  }

  /** The oldest waiting message (the next `write` of a flush), if any. */
  peek(): QueuedMessage | undefined {
    return this.head < this.items.length ? this.items[this.head] : undefined;
  }

  /** Writes `bytes` now if nothing waits, else keeps a private copy. True = written; false = wait for drained(). */
  send(type: number, bytes: Uint8Array): boolean {
    if (bytes.length > this.maxMessageSize) throw new MessageTooLargeError(bytes.length, this.maxMessageSize);
    if (this.head === this.items.length && !this.blocked) {
      if (this.write(type, bytes, WRITE_SEND)) return true;
      this.blocked = true;
    }
    if (this.length >= this.maxQueued) throw new QueueFullError(this.maxQueued);
    // The caller may reuse its buffer (and msgpackr reuses its own): keep a private copy.
    this.items.push({ type, bytes: new Uint8Array(bytes) });
    this.drainOwed = true;
    return false;
  }

  /** Writes `bytes` now, or takes nothing (false: wait for drained(), then try again). */
  trySend(type: number, bytes: Uint8Array): boolean {
    if (bytes.length > this.maxMessageSize) throw new MessageTooLargeError(bytes.length, this.maxMessageSize);
    if (this.head === this.items.length && !this.blocked && this.write(type, bytes, WRITE_TRY)) return true;
    this.refused();
    return false;
  }

  /** A write the owner made on its own (a zero-copy claim) was refused: drained() waits, 'drain' is owed. */
  refused(): void {
    if (this.refusalBlocks) this.blocked = true;
    else this.triedAndRefused = true;
    this.drainOwed = true;
  }

  /**
   * Writes waiting messages in order until one is refused (the queue then stays blocked). True when nothing
   * waits any more. Does not settle drained(): only `writable` says a refused write may be retried.
   */
  flush(): boolean {
    if (this.flushing) return this.length === 0;
    this.flushing = true;
    try {
      while (this.head < this.items.length) {
        const item = this.items[this.head]!;
        if (!this.write(item.type, item.bytes, WRITE_QUEUED)) {
          this.blocked = true;
          return false;
        }
        this.items[this.head++] = undefined as unknown as QueuedMessage;
      }
      return true;
    } finally {
      this.flushing = false;
      if (this.head === this.items.length) {
        this.items.length = 0;
        this.head = 0;
      } else if (this.head > 1024 && this.head * 2 > this.items.length) {
        this.items.splice(0, this.head);
        this.head = 0;
      }
    }
  }

  /**
   * Room may have appeared: retry what waits; once nothing does, resolve drained() and call onDrain (if owed).
   * True when the queue is idle afterwards.
   */
  writable(): boolean {
    if (this.flushing) return false;
    this.blocked = false;
    if (!this.flush()) return false;
    this.blocked = false;
    this.triedAndRefused = false;
    const waiters = this.waiters;
    if (waiters.length) {
      this.waiters = [];
      for (const w of waiters) w.resolve();
    }
    if (this.drainOwed) {
      this.drainOwed = false;
      this.onDrain?.();
    }
    return true;
  }

  /** Resolves once the queue is idle; rejects with the reason if it is ended first (see `end`). */
  drained(): Promise<void> {
    if (this.idle) return Promise.resolve();
    if (this.reason) return Promise.reject(this.reason);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /**
   * The messages can no longer be delivered (failure, close, peer gone): rejects drained() with `reason` now and
   * later while anything waits. With `drop`, waiting messages are given up and the queue is idle again. Returns
   * how many were dropped.
   */
  end(reason: Error, drop: boolean): number {
    this.reason = reason;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(reason);
    if (!drop) return 0;
    const dropped = this.length;
    this.items.length = 0;
    this.head = 0;
    this.blocked = false;
    this.triedAndRefused = false;
    this.drainOwed = false;
    return dropped;
  }
}
