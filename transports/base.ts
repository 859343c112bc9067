/**
 * The parts of the transport contract (contract.ts) that do not depend on the mechanism, written once:
 *
 * - `FramedConnection`: the send queue and back-pressure (send / trySend / drained / 'drain' / maxQueued /
 *   QUEUE_FULL / MESSAGE_TOO_LARGE), the bounded inbox behind the async iterator and `receive`, msgpack encoding
 *   and decoding, orderly close, peer death and failure. A transport subclasses it and provides four hooks
 *   (writeFrame, pauseReading, resumeReading, closeTransport) and reports what the kernel did through five calls
 *   (writable, deliver, ended, peerDied, fail). `transports/shm/channel.ts` is the reference these semantics follow.
 * - `ListenerBase`: the accept queue behind `acceptNext` and the listener's async iterator.
 * - `parseTransportQuery`: the URL options every kernel transport shares (`maxQueued`), unknown ones refused.
 *
 * Receiving is push-based here (the kernel hands us messages through the event loop), so the inbox is bounded:
 * above a high-water mark the subclass stops pulling from the kernel, and the kernel's own buffer then stops the
 * sender. A slow `for await` consumer therefore back-pressures the peer instead of growing memory.
 */
import { EventEmitter } from 'node:events';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { encodePlain } from '../host/pack.js';
import { decodeMsgpack, plainUnpackr, plainUnpackrNoCopy } from '../host/codec.js';
import { RECORD_BYTES, RECORD_MSGPACK, RECORD_REQUEST, RECORD_REPLY_ERROR } from '../assembly/layout.js';
import { Rpc, type RequestHandler, type RequestOptions } from '../host/rpc.js';
import { trace, traceError } from '../host/trace.js';
import {
  BadArgumentError, BadUrlError, ClosedError, CorruptError, ErrorCode, PeerDeadError, ShmbusError,
} from '../host/errors.js';
import { DEFAULT_MAX_QUEUED } from '../host/url.js';
import { SendQueue, WRITE_QUEUED, type WriteKind } from '../host/send-queue.js';
import { dispatchMessages, type MessageSource } from './dispatch.js';
import type { Connection, ConnectionListener, ListenOptions } from './contract.js';

/** A busy iterator yields to the event loop at least this often (ms), so timers and I/O are never starved. */
const YIELD_MS = 2;
/** Inbox high-water marks: above either, the subclass stops reading; below half of both, it reads again. */
const DEFAULT_INBOX_MESSAGES = 8192;
const DEFAULT_INBOX_BYTES = 4 * 1024 * 1024;

export interface FramedConnectionOptions {
  /** The URL the connection was made from (shown in errors). */
  url: string;
  /** Largest encoded message the transport carries; larger sends throw ERR_SHMBUS_MESSAGE_TOO_LARGE. */
  maxMessageSize: number;
  /** Hard cap of messages waiting in the local send queue. */
  maxQueued: number;
  /** Inbox high-water mark in messages (default 8192). */
  inboxMessages?: number;
  /** Inbox high-water mark in encoded bytes (default 4 MiB; one larger message is always let in). */
  inboxBytes?: number;
}

export abstract class FramedConnection extends EventEmitter implements Connection {
  readonly url: string;
  readonly maxMessageSize: number;
  readonly maxQueued: number;

  // msgpackr hands out binary fields as views of the bytes it decodes; `deliver` bytes may be reused by the
  // caller, so those views must be copies (copyBuffers), unless the bytes are ours to keep anyway. Plain decoders
  // keep nothing between records: one of each serves every connection (host/codec.ts).
  private readonly unpackr = plainUnpackr;
  private readonly unpackrOwned = plainUnpackrNoCopy;
  private readonly inboxMessages: number;
  private readonly inboxBytesMax: number;

  /** 'closing': close() is flushing the queue; 'closed': closeTransport has been called. */
  private state: 'open' | 'closing' | 'closed' = 'open';
  /** The peer ended the stream in order: no more messages will arrive, and it reads nothing more. */
  private peerEnded = false;
  /** What ended the connection abnormally (dead peer, corrupt frame); every later call reports it. */
  private failure: ShmbusError | undefined;

  /** The send queue (host/send-queue.ts): a refused writeFrame blocks it until writable(). */
  private readonly sendQueue: SendQueue;

  private readonly inbox: unknown[] = [];
  private readonly inboxSizes: number[] = [];
  private inboxHead = 0;
  private inboxBytes = 0;
  private paused = false;
  private readerWaiters: (() => void)[] = [];
  private lastYield = performance.now();

  private closePromise: Promise<void> | undefined;
  private shutdownPromise: Promise<void> | undefined;
  /** destroy() was called: nothing more is waited for (see abandoned). */
  private destroying = false;
  /** Request/reply: incoming frames are pushed to us, so replies are handled whether or not anyone iterates. */
  private readonly rpc = new Rpc((type, value) => {
    this.checkSendable();
    this.sendQueue.send(type, encodePlain(value));
  }, () => {});

  constructor(opts: FramedConnectionOptions) {
    super();
    if (!Number.isInteger(opts.maxMessageSize) || opts.maxMessageSize < 0) {
      throw new BadArgumentError('maxMessageSize must be a non-negative integer', { maxMessageSize: opts.maxMessageSize });
    }
    if (!Number.isInteger(opts.maxQueued) || opts.maxQueued < 0) {
      throw new BadArgumentError('maxQueued must be a non-negative integer', { maxQueued: opts.maxQueued });
    }
    this.url = opts.url;
    this.maxMessageSize = opts.maxMessageSize;
    this.maxQueued = opts.maxQueued;
    this.sendQueue = new SendQueue({
      maxMessageSize: opts.maxMessageSize,
      maxQueued: opts.maxQueued,
      write: (type, bytes, kind) => this.write(type, bytes, kind),
      onDrain: () => this.emit('drain'),
    });
    this.inboxMessages = Math.max(1, opts.inboxMessages ?? DEFAULT_INBOX_MESSAGES);
    this.inboxBytesMax = Math.max(1, opts.inboxBytes ?? DEFAULT_INBOX_BYTES);
    this.on('newListener', (event) => { if (event === 'message') queueMicrotask(() => void dispatchMessages(this.messageSource)); });
  }

  // --- hooks the subclass implements -----------------------------------------------------------------------------

  /**
   * Hands one whole message to the kernel now, or nothing: true = taken, false = would block (nothing taken).
   * `bytes` is valid only during the call unless `owned` is true (then it is a private copy the subclass may
   * keep). After returning false the subclass must call `writable()` once the kernel can take more (later,
   * from an event: not from inside writeFrame). Throwing a ShmbusError fails the connection.
   */
  protected abstract writeFrame(type: number, bytes: Uint8Array, owned?: boolean): boolean;
  /** Stop pulling messages from the kernel: the inbox is above its high-water mark. */
  protected abstract pauseReading(): void;
  /** Pull again: the consumer caught up. */
  protected abstract resumeReading(): void;
  /**
   * Called once, after the local queue is flushed (close) or abandoned (failure, peer gone): tell the peer
   * end-of-stream (when it is still there), release fds, remove owned kernel objects. Must not reject for a peer
   * that is already gone.
   */
  protected abstract closeTransport(): Promise<void>;
  /**
   * destroy() was called: cut whatever closeTransport waits for now or would wait for (room for the end marker,
   * the peer's end), and release at once. closeTransport may already be running, or may still be to come.
   */
  protected abstract abandonTransport(): void;

  // --- what the subclass calls -----------------------------------------------------------------------------------

  /** The kernel can take more: flush the queue, then resolve drained() and emit 'drain'. */
  protected writable(): void {
    if (this.state === 'closed') return;
    try {
      this.sendQueue.writable();
    } catch {
      /* write() already failed the connection with the reason */
    }
  }

  /**
   * One complete message arrived. `bytes` may be reused by the caller after this returns, unless `owned` (then
   * raw bytes are handed to the consumer without another copy). msgpack is decoded now: a message that does
   * not decode, or an unknown type, fails the connection with ERR_SHMBUS_CORRUPT.
   */
  protected deliver(type: number, bytes: Uint8Array, owned = false): void {
    if (this.failure || this.state === 'closed') return;
    let value: unknown;
    if (type >= RECORD_REQUEST && type <= RECORD_REPLY_ERROR) {
      try {
        this.rpc.incoming(type, decodeMsgpack(owned ? this.unpackrOwned : this.unpackr, bytes), bytes.length);
      } catch (cause) {
        this.fail(cause instanceof CorruptError ? cause : new CorruptError('request/reply message does not decode', { url: this.url, length: bytes.length, cause: String(cause) }));
      }
      return;
    } else if (type === RECORD_MSGPACK) {
      try {
        value = decodeMsgpack(owned ? this.unpackrOwned : this.unpackr, bytes);
      } catch (cause) {
        this.fail(cause instanceof CorruptError ? cause : new CorruptError('msgpack message does not decode', { url: this.url, length: bytes.length, cause: String(cause) }));
        return;
      }
    } else if (type === RECORD_BYTES) {
      // new Uint8Array(x) copies; a Buffer's slice() would not.
      value = owned ? bytes : new Uint8Array(bytes);
    } else {
      this.fail(new CorruptError('message of an unknown type', { url: this.url, type }));
      return;
    }
    this.inbox.push(value);
    this.inboxSizes.push(bytes.length);
    this.inboxBytes += bytes.length;
    if (!this.paused && (this.inbox.length - this.inboxHead >= this.inboxMessages || this.inboxBytes >= this.inboxBytesMax)) {
      this.paused = true;
      this.pauseReading();
    }
    this.wakeReaders();
  }

  /** The peer ended the stream in order. The iterator ends after what already arrived; sends now throw CLOSED. */
  protected ended(): void {
    if (this.peerEnded || this.failure || this.state === 'closed') return;
    this.peerEnded = true;
    this.wakeReaders();
    void this.shutdown();
  }

  /** The peer is gone without closing: the iterator throws ERR_SHMBUS_PEER_DEAD after what arrived. */
  protected peerDied(error?: ShmbusError): void {
    if (this.peerEnded || this.failure || this.state === 'closed') return;
    this.fail(error ?? new PeerDeadError('peer went away without closing', { url: this.url }));
  }

  /** Ends the connection with an error: reported to drain waiters, 'error' listeners, the iterator, later calls. */
  protected fail(error: ShmbusError): void {
    if (this.failure || this.state === 'closed') return;
    if (trace.enabled) trace('%s: ended: %s', this.url, traceError(error));
    this.failure = error;
    this.sendQueue.end(error, false);
    this.wakeReaders();
    if (this.listenerCount('error') > 0) this.emit('error', error);
    void this.shutdown();
  }

  /** The error that ended the connection (dead peer, corrupt frame), if one did. */
  protected get failedWith(): ShmbusError | undefined {
    return this.failure;
  }

  /** destroy() was called: closeTransport waits for nothing (see abandonTransport). */
  protected get abandoned(): boolean {
    return this.destroying;
  }

  /** True once closeTransport has been (or is being) called. */
  protected get transportClosed(): boolean {
    return this.state === 'closed';
  }

  // --- sending ---------------------------------------------------------------------------------------------------

  /** Messages waiting in the local queue. */
  get queued(): number {
    return this.sendQueue.length;
  }

  /** Sends a request; resolves with the peer's reply (see host/rpc.ts for the outcomes). */
  request(value: unknown, options?: RequestOptions): Promise<unknown> {
    return this.rpc.request(value, options);
  }

  /** Answers the peer's requests with `handler`. */
  handle(handler: RequestHandler | undefined): this {
    this.rpc.handle(handler);
    return this;
  }

  send(value: unknown): boolean {
    this.checkSendable();
    return this.sendQueue.send(RECORD_MSGPACK, encodePlain(value));
  }

  sendBytes(bytes: Uint8Array): boolean {
    this.checkSendable();
    if (!(bytes instanceof Uint8Array)) throw new BadArgumentError('sendBytes takes a Uint8Array', { type: typeof bytes });
    return this.sendQueue.send(RECORD_BYTES, bytes);
  }

  trySend(value: unknown): boolean {
    this.checkSendable();
    return this.sendQueue.trySend(RECORD_MSGPACK, encodePlain(value));
  }

  trySendBytes(bytes: Uint8Array): boolean {
    this.checkSendable();
    if (!(bytes instanceof Uint8Array)) throw new BadArgumentError('trySendBytes takes a Uint8Array', { type: typeof bytes });
    return this.sendQueue.trySend(RECORD_BYTES, bytes);
  }

  /** Resolves when nothing waits locally and a refused trySend would be tried again; rejects with the reason
   * if the queued messages can no longer be delivered. */
  drained(): Promise<void> {
    if (this.sendQueue.idle) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    if (this.state === 'closed') return Promise.reject(new ClosedError('connection is closed', { url: this.url }));
    return this.sendQueue.drained();
  }

  private checkSendable(): void {
    if (this.failure) throw this.failure;
    if (this.peerEnded) throw new ClosedError('peer closed the connection', { url: this.url });
    if (this.state !== 'open') throw new ClosedError('connection is closed', { url: this.url });
  }

  /**
   * writeFrame for the send queue. A throw fails the connection and reaches the sender as that failure (from a
   * flush, writable() swallows it: the failure is reported everywhere already).
   */
  private write(type: number, bytes: Uint8Array, kind: WriteKind): boolean {
    try {
      return this.writeFrame(type, bytes, kind === WRITE_QUEUED);
    } catch (error) {
      this.fail(asShmbusError(error));
      throw this.failure ?? asShmbusError(error);
    }
  }

  // --- receiving -------------------------------------------------------------------------------------------------

  /** The next message: a decoded value, or a Uint8Array for raw bytes. Undefined at the end of the stream. */
  async receive(): Promise<unknown> {
    const r = await this.next();
    return r.done ? undefined : r.value;
  }

  /** The receive side `on('message')` dispatches from (transports/dispatch.ts). */
  private readonly messageSource: MessageSource = {
    listenerCount: (event) => this.listenerCount(event),
    emit: (event, value) => this.emit(event, value),
    hasReceived: () => this.inboxHead < this.inbox.length,
    takeReceived: () => this.take(),
    next: () => this.next(),
    putBack: (value) => {
      this.inbox.splice(this.inboxHead, 0, value);
      this.inboxSizes.splice(this.inboxHead, 0, 0);
    },
  };

  [Symbol.asyncIterator](): AsyncIterator<unknown> {
    return {
      next: () => this.next(),
      // Leaving a for-await loop early does not close the connection (as with transports/shm/channel.ts).
      return: async () => ({ value: undefined, done: true }),
    };
  }

  private async next(): Promise<IteratorResult<unknown>> {
    for (;;) {
      if (this.inboxHead < this.inbox.length) {
        // Values resolve as microtasks; an inbox that never runs dry would starve timers and I/O without this.
        if (performance.now() - this.lastYield > YIELD_MS) {
          await nextTurn();
          this.lastYield = performance.now();
          continue;
        }
        return { value: this.take(), done: false };
      }
      if (this.failure) throw this.failure;
      if (this.state === 'closed' || this.peerEnded) return { value: undefined, done: true };
      await new Promise<void>((resolve) => this.readerWaiters.push(resolve));
      // Waiting for the kernel went through the event loop: that was a yield.
      this.lastYield = performance.now();
    }
  }

  private take(): unknown {
    const value = this.inbox[this.inboxHead];
    this.inbox[this.inboxHead] = undefined;
    this.inboxBytes -= this.inboxSizes[this.inboxHead]!;
    this.inboxHead++;
    if (this.inboxHead === this.inbox.length) {
      this.inbox.length = 0;
      this.inboxSizes.length = 0;
      this.inboxHead = 0;
    } else if (this.inboxHead > 1024 && this.inboxHead * 2 > this.inbox.length) {
      this.inbox.splice(0, this.inboxHead);
      this.inboxSizes.splice(0, this.inboxHead);
      this.inboxHead = 0;
    }
    if (this.paused && this.state !== 'closed' && !this.failure
      && (this.inbox.length - this.inboxHead) * 2 <= this.inboxMessages && this.inboxBytes * 2 <= this.inboxBytesMax) {
      this.paused = false;
      this.resumeReading();
    }
    return value;
  }

  private wakeReaders(): void {
    if (this.readerWaiters.length === 0) return;
    const waiters = this.readerWaiters;
    this.readerWaiters = [];
    for (const w of waiters) w();
  }

  // --- closing ---------------------------------------------------------------------------------------------------

  /**
   * Hands every queued message to the kernel, then closes the transport (the peer reads what was sent, then its
   * iterator ends). Messages that can no longer be delivered (the peer went away) are given up; drained() tells
   * why. Idempotent. Like transports/shm/channel.ts, it waits as long as a live peer takes to make room.
   */
  close(): Promise<void> {
    this.closePromise ??= (async () => {
      if (this.state === 'open') this.state = 'closing';
      if (this.queued > 0 && !this.failure) {
        try {
          await this.drained();
        } catch {
          /* the reason already went to drain waiters and 'error' listeners */
        }
      }
      await this.shutdown();
    })();
    return this.closePromise;
  }

  /**
   * Closes now, delivering nothing more: messages still in the local queue are given up (drained() rejects with
   * ERR_SHMBUS_CLOSED), and nothing waits for the peer to make room or to answer. A close() under way ends with it.
   */
  destroy(): Promise<void> {
    if (!this.destroying) {
      this.destroying = true;
      if (this.state === 'open') this.state = 'closing';
      this.abandonTransport();
    }
    const done = this.shutdown();
    this.closePromise ??= done;
    return done;
  }

  private shutdown(): Promise<void> {
    this.shutdownPromise ??= (async () => {
      this.state = 'closed';
      this.rpc.end(this.failure ?? (() => new ClosedError(this.peerEnded ? 'peer closed the connection' : 'connection is closed', { url: this.url })));
      if (!this.sendQueue.idle) {
        const reason = this.failure ?? (this.peerEnded
          ? new ClosedError('peer closed the connection before queued messages were delivered', { url: this.url, queued: this.queued })
          : new ClosedError('connection closed before queued messages were delivered', { url: this.url, queued: this.queued }));
        this.sendQueue.end(reason, true);
      }
      this.wakeReaders();
      try {
        await this.closeTransport();
      } catch (error) {
        if (!this.failure && this.listenerCount('error') > 0) this.emit('error', asShmbusError(error));
      }
      this.emit('close');
    })();
    return this.shutdownPromise;
  }
}

/** Wraps anything thrown into a ShmbusError (kernel errors from node:net arrive as plain Errors with a code). */
export function asShmbusError(error: unknown): ShmbusError {
  if (error instanceof ShmbusError) return error;
  return new ShmbusError(ErrorCode.SYSCALL, error instanceof Error ? error.message : String(error), { cause: error });
}

// --- listeners -----------------------------------------------------------------------------------------------------

/** Connections a listener keeps open at once unless ListenOptions.maxConnections says otherwise. */
const DEFAULT_MAX_CONNECTIONS = 1024;

/** ListenOptions.maxConnections, checked (a positive integer; default 1024). Called before a listener makes anything. */
export function maxConnectionsOf(options: ListenOptions): number {
  const value = options.maxConnections;
  if (value === undefined) return DEFAULT_MAX_CONNECTIONS;
  if (!Number.isSafeInteger(value) || value < 1) throw new BadArgumentError('maxConnections must be a positive integer', { maxConnections: value });
  return value;
}

/** A connection's place among those of one connector, from its first message until it is offered (ListenerBase.takeTurn). */
export interface Turn<C> {
  readonly connector: number;
  /** Its handshake ended: with `connection`, or failed without one. */
  done: boolean;
  connection: C | undefined;
}

/**
 * The accept queue of a listener: a subclass calls `offer` per accepted connection and implements `stop`. One whose
 * handshakes can end out of order keeps each connector's connections in order with `takeTurn` and `settle`.
 */
export abstract class ListenerBase<C extends Connection = Connection> extends EventEmitter implements ConnectionListener {
  readonly url: string;
  private readonly accepted: C[] = [];
  private waiters: ((c: C | undefined) => void)[] = [];
  private closing: Promise<void> | undefined;
  /** Per connector: its handshakes from the first message on, oldest first, until offered (see settle). */
  private readonly turns = new Map<number, Turn<C>[]>();

  /** Connections this listener made that are not closed yet, handed out or not (see track). */
  private live = 0;

  /** @param maxConnections the most connections open at once (maxConnectionsOf); past it `full` says so. */
  constructor(url: string, protected readonly maxConnections: number) {
    super();
    this.url = url;
  }

  /** Counts `connection` against maxConnections until it closes. */
  protected track(connection: C): void {
    this.live++;
    connection.once('close', () => { this.live--; });
  }

  /** Connections made and not closed yet (handed out or waiting to be). */
  protected get connections(): number {
    return this.live;
  }

  /** Whether `more` connections on top of those open would pass maxConnections (a subclass refuses the next one). */
  protected full(more = 0): boolean {
    return this.live + more >= this.maxConnections;
  }

  /** What a connector past maxConnections is told. */
  protected limitError(): ShmbusError {
    return new ShmbusError(ErrorCode.LIMIT, 'listener has as many connections as it allows', { details: { maxConnections: this.maxConnections } });
  }

  /** Stop accepting and remove what the listener created (socket file, FIFO). Called once. */
  protected abstract stop(): Promise<void>;

  protected get closed(): boolean {
    return this.closing !== undefined;
  }

  /** Hands a new connection to the next acceptNext(), or queues it. After close it is closed instead. */
  protected offer(connection: C): void {
    if (this.closing) {
      void connection.destroy();
      return;
    }
    this.emit('connection', connection);
    const waiter = this.waiters.shift();
    if (waiter) waiter(connection);
    else this.accepted.push(connection);
  }

  /**
   * The place of a connection whose first handshake message just came from `connector` (a process id), behind
   * that connector's earlier connections still in their handshake or waiting for one (see settle).
   */
  protected takeTurn(connector: number): Turn<C> {
    const turn: Turn<C> = { connector, done: false, connection: undefined };
    const queue = this.turns.get(connector);
    if (queue === undefined) this.turns.set(connector, [turn]);
    else queue.push(turn);
    return turn;
  }

  /**
   * A handshake that ended, with its connection or with none (it failed): offers it, and every later one of its
   * connector that was waiting for it, in the order of their first messages. A process connects again only once
   * connect() resolved, so its first messages come in the order it made its connections; but a handshake that ends
   * with the connector's last message ends when the listener reads that, which can be after the next connection's
   * first message (or its whole handshake), and the accept queue would then have them the other way round. A Unix
   * socket's accept queue keeps that order; so does this. Only one connector's connections wait for each other,
   * each at most for the handshake timeout of an earlier one.
   */
  protected settle(turn: Turn<C>, connection: C | undefined): void {
    turn.done = true;
    turn.connection = connection;
    const queue = this.turns.get(turn.connector);
    // The listener closed meanwhile: offer() closes it.
    if (queue === undefined) {
      if (connection !== undefined) this.offer(connection);
      return;
    }
    while (queue.length > 0 && queue[0]!.done) {
      const ready = queue.shift()!.connection;
      if (ready !== undefined) this.offer(ready);
    }
    if (queue.length === 0) this.turns.delete(turn.connector);
  }

  /** A connector that failed its handshake: reported to 'error' listeners only (the listener goes on). */
  protected reportError(error: unknown): void {
    if (trace.enabled) trace('listen %s: a connector failed: %s', this.url, traceError(error));
    if (this.listenerCount('error') > 0) this.emit('error', asShmbusError(error));
  }

  acceptNext(): Promise<C | undefined> {
    const ready = this.accepted.shift();
    if (ready) return Promise.resolve(ready);
    if (this.closing) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  [Symbol.asyncIterator](): AsyncIterator<C> {
    return {
      next: async () => {
        const c = await this.acceptNext();
        return c ? { value: c, done: false } : { value: undefined, done: true };
      },
      return: async () => ({ value: undefined, done: true }),
    };
  }

  /** Stops accepting. Connections already handed out stay open; ones not yet taken are destroyed: their peer
   * cannot hold this close by never reading. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const w of this.waiters.splice(0)) w(undefined);
      // Connections waiting for an earlier one of their connector are not taken either.
      const waiting = [...this.turns.values()].flat().flatMap((turn) => (turn.connection ? [turn.connection] : []));
      this.turns.clear();
      await Promise.all([...this.accepted.splice(0), ...waiting].map((c) => c.destroy()));
      await this.stop();
    })();
    return this.closing;
  }
}

// --- URL options ---------------------------------------------------------------------------------------------------

export interface TransportQuery {
  maxQueued: number;
  /** Every option, for the transport's own (already validated against `extra`). */
  params: URLSearchParams;
}

/**
 * Parses the query string of a kernel-transport URL: `maxQueued` (hard cap of the local send queue, default
 * 65536) plus the transport's own `extra` option names; anything else is ERR_SHMBUS_BAD_URL.
 */
export function parseTransportQuery(url: string, query: string, extra: readonly string[] = []): TransportQuery {
  const params = new URLSearchParams(query);
  for (const key of params.keys()) {
    if (key !== 'maxQueued' && !extra.includes(key)) throw new BadUrlError('unsupported option', url, { details: { option: key } });
  }
  let maxQueued = DEFAULT_MAX_QUEUED;
  const text = params.get('maxQueued');
  if (text !== null) {
    if (!/^\d{1,9}$/.test(text)) throw new BadUrlError('maxQueued must be a non-negative integer', url, { details: { maxQueued: text } });
    maxQueued = Number(text);
  }
  return { maxQueued, params };
}

/** Splits `scheme:rest?query#…` without URL's normalisation (which would eat `@` and percent-escapes). */
export function splitUrl(url: string, scheme: string): { rest: string; query: string } {
  if (typeof url !== 'string') throw new BadUrlError('URL must be a string', String(url));
  const prefix = scheme + ':';
  if (url.slice(0, prefix.length).toLowerCase() !== prefix) throw new BadUrlError(`not a ${scheme}: URL`, url);
  const body = url.slice(prefix.length);
  if (body.includes('#')) throw new BadUrlError('URL must not have a fragment', url);
  const q = body.indexOf('?');
  return q < 0 ? { rest: body, query: '' } : { rest: body.slice(0, q), query: body.slice(q + 1) };
}
