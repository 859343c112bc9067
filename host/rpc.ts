/**
 * Request/reply over any connection: requests and replies are records of their own types (RECORD_REQUEST,
 * RECORD_REPLY, RECORD_REPLY_ERROR in assembly/layout.ts) carrying msgpack `[id, value]`, so they never mix with
 * plain messages. A connection owns one `Rpc`; it hands incoming records of those types to `incoming` and sends
 * what `Rpc` asks through `send`.
 *
 * - `request(value, { timeout, signal })` resolves with the reply, or rejects with ERR_SHMBUS_TIMEOUT, an abort
 *   (ERR_SHMBUS_CLOSED with the signal's reason as cause), the server's error (its code), or the connection's end.
 * - `handle(fn)` answers requests: the value fn returns (or resolves to) is sent back; a throw becomes a failed
 *   reply with the error's code and message. A reply to a peer that has gone is dropped quietly. Requests that
 *   arrive before a handler is set wait for one (up to 1024 of them and 16 MiB of their records, the first one
 *   whatever its size; past that they fail with ERR_SHMBUS_BAD_STATE). Handlers that return a promise run
 *   concurrently, up to 65,536 at once and 64 MiB of their requests' records (the first whatever its size): a request
 *   past that fails at once with ERR_SHMBUS_LIMIT, so a peer cannot make us hold without bound.
 */
import { RECORD_REQUEST, RECORD_REPLY, RECORD_REPLY_ERROR } from '../assembly/layout.js';
import { BadArgumentError, ClosedError, CorruptError, ErrorCode, isConnectionEnd, peerError, peerText, ShmbusError, TimeoutError } from './errors.js';

export interface RequestOptions {
  /** Milliseconds to wait for the reply. Default: no limit. */
  timeout?: number;
  signal?: AbortSignal;
}

/** Answers one request. Runs for every request, concurrently. */
export type RequestHandler = (value: unknown) => unknown;

/** Requests kept while no handler is set, and their records' bytes (the first is kept whatever its size); later
 * ones are refused with ERR_SHMBUS_BAD_STATE. */
const MAX_EARLY_REQUESTS = 1024;
const MAX_EARLY_BYTES = 16 * 1024 * 1024;
/** Requests whose handler's promise has not settled yet, and their records' bytes; later ones are refused with
 * ERR_SHMBUS_LIMIT until some settle. */
const MAX_ANSWERING = 65536;
const MAX_ANSWERING_BYTES = 64 * 1024 * 1024;

interface Pending { resolve(v: unknown): void; reject(e: Error): void; timer?: NodeJS.Timeout; cleanup?: () => void }

export class Rpc {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private handler: RequestHandler | undefined;
  /** Why the connection ended, or how to say it (made on first need: an Error's stack costs ~10 µs, and most
   * connections end with nothing pending and no request after). */
  private ended: Error | (() => Error) | undefined;
  /** Requests that arrived before any handler was set (a peer may ask before this side called handle()). */
  private readonly early: [id: number, value: unknown, bytes: number][] = [];
  /** Bytes of the records of `early`. */
  private earlyBytes = 0;

  /**
   * @param send hands one record to the connection (taking it even when it must queue); throws if closed.
   * @param activity told when the connection must keep reading for us (requests pending or a handler set).
   */
  constructor(
    private readonly send: (type: number, value: unknown) => void,
    private readonly activity: (active: boolean) => void,
  ) {}

  /** True while replies are awaited or a handler serves requests: the connection must keep reading. */
  get active(): boolean {
    return this.pending.size > 0 || this.handler !== undefined;
  }

  request(value: unknown, options: RequestOptions = {}): Promise<unknown> {
    if (this.ended) return Promise.reject(this.endError());
    const { timeout, signal } = options;
    if (timeout !== undefined && (!Number.isFinite(timeout) || timeout < 0)) {
      return Promise.reject(new BadArgumentError('timeout must be a non-negative number of ms', { timeout }));
    }
    if (signal?.aborted) return Promise.reject(new ClosedError('request aborted', { reason: String(signal.reason) }));
    const id = this.nextId;
    this.nextId = this.nextId === 0x7fffffff ? 1 : this.nextId + 1;
    return new Promise((resolve, reject) => {
      const wasActive = this.active;
      const entry: Pending = { resolve, reject };
      const settle = () => {
        this.pending.delete(id);
        if (entry.timer) clearTimeout(entry.timer);
        entry.cleanup?.();
        if (!this.active) this.activity(false);
      };
      entry.resolve = (v) => { settle(); resolve(v); };
      entry.reject = (e) => { settle(); reject(e); };
      if (timeout !== undefined) {
        entry.timer = setTimeout(() => entry.reject(new TimeoutError('no reply in time', { timeout, id })), timeout);
      }
      if (signal) {
        const onAbort = () => entry.reject(new ClosedError('request aborted', { reason: String(signal.reason), id }));
        signal.addEventListener('abort', onAbort, { once: true });
        entry.cleanup = () => signal.removeEventListener('abort', onAbort);
      }
      this.pending.set(id, entry);
      try {
        this.send(RECORD_REQUEST, [id, value]);
      } catch (error) {
        entry.reject(error as Error);
        return;
      }
      // Told after the request is out: the connection may start waiting for the reply at once (spinning on its
      // ring), and a wait that starts before the request is sent only burns its budget.
      if (!wasActive && this.pending.has(id)) this.activity(true);
    });
  }

  /** Serves requests with `fn` (replaces an earlier handler; undefined stops serving). */
  handle(fn: RequestHandler | undefined): void {
    const wasActive = this.active;
    this.handler = fn;
    if (wasActive !== this.active) this.activity(this.active);
    if (fn) {
      this.earlyBytes = 0;
      for (const [id, value, bytes] of this.early.splice(0)) this.answer(id, value, bytes);
    }
  }

  /** A record of one of the request/reply types arrived, decoded from `bytes` bytes. */
  incoming(type: number, decoded: unknown, bytes: number): void {
    if (!Array.isArray(decoded) || decoded.length !== 2 || typeof decoded[0] !== 'number') {
      throw new CorruptError('request/reply record is not [id, value]', { type });
    }
    const [id, value] = decoded as [number, unknown];
    if (type === RECORD_REQUEST) {
      // Before any handler is set, requests wait for one (bounded); the requester's timeout covers the wait.
      if (!this.handler && this.early.length < MAX_EARLY_REQUESTS && (this.early.length === 0 || this.earlyBytes + bytes <= MAX_EARLY_BYTES)) {
        this.early.push([id, value, bytes]);
        this.earlyBytes += bytes;
      } else {
        this.answer(id, value, bytes);
      }
      return;
    }
    const entry = this.pending.get(id);
    if (!entry) return; // timed out or aborted already: the late reply is dropped
    if (type === RECORD_REPLY) entry.resolve(value);
    else entry.reject(remoteError(value));
  }

  /** Answers whose handler returned a promise and that are not sent yet, and their requests' record bytes. */
  private answering = 0;
  private answeringBytes = 0;

  /** Whether a handler's promise is still to settle (its reply then goes out from a later microtask). */
  get answersPending(): boolean {
    return this.answering > 0;
  }

  /**
   * Runs the handler and replies: at once when it returns a plain value or throws (no promise turn: the
   * connection may go on to wait for the next request right after, and a reply left for a microtask would wait
   * behind that), once it settles when it returns a promise.
   */
  private answer(id: number, value: unknown, bytes: number): void {
    let result: unknown;
    try {
      if (!this.handler) throw new ShmbusError(ErrorCode.BAD_STATE, 'no request handler on this connection');
      if (this.answering > 0 && (this.answering >= MAX_ANSWERING || this.answeringBytes + bytes > MAX_ANSWERING_BYTES)) {
        throw new ShmbusError(ErrorCode.LIMIT, 'too many requests in progress on this connection', {
          details: { inProgress: this.answering, bytes: this.answeringBytes, maxInProgress: MAX_ANSWERING, maxBytes: MAX_ANSWERING_BYTES },
        });
      }
      result = this.handler(value);
      // Inside the try: reading `then` can throw too (a getter, a revoked Proxy).
      if (result === null || (typeof result !== 'object' && typeof result !== 'function') || typeof (result as PromiseLike<unknown>).then !== 'function') {
        this.reply(id, RECORD_REPLY, result);
        return;
      }
    } catch (error) {
      this.reply(id, RECORD_REPLY_ERROR, errorReply(error));
      return;
    }
    this.answering++;
    this.answeringBytes += bytes;
    const settled = () => { this.answering--; this.answeringBytes -= bytes; };
    Promise.resolve(result).then(
      (v) => { settled(); this.reply(id, RECORD_REPLY, v); },
      (error) => { settled(); this.reply(id, RECORD_REPLY_ERROR, errorReply(error)); },
    );
  }

  private reply(id: number, type: number, result: unknown): void {
    try {
      this.send(type, [id, result]);
    } catch (error) {
      // The connection ended: the requester went away, nobody is waiting for this reply.
      if (this.ended || isConnectionEnd(error)) return;
      // The value could not be sent (larger than the connection carries, not encodable): the requester gets why,
      // instead of waiting for a reply that never comes.
      if (type === RECORD_REPLY) this.reply(id, RECORD_REPLY_ERROR, errorReply(error));
    }
  }

  /** The connection ended: every pending request rejects with `error` (or what it returns, made only if needed). */
  end(error: Error | (() => Error)): void {
    this.ended ??= error;
    if (this.pending.size === 0) return;
    const reason = this.endError();
    for (const entry of [...this.pending.values()]) entry.reject(reason);
  }

  private endError(): Error {
    if (typeof this.ended === 'function') this.ended = this.ended();
    return this.ended!;
  }
}

/** What a failed reply carries: the error's shmbus code (ERR_SHMBUS_REMOTE when it has none) and message. */
export function errorReply(error: unknown): { code: string; message: string } {
  return {
    code: error instanceof ShmbusError ? error.code : ErrorCode.REMOTE,
    // A handler may throw anything, even a value String() throws on.
    message: error instanceof Error ? error.message : peerText(error, 1000),
  };
}

/** The error a requester sees for a failed reply (errorReply's value): its code if a shmbus one, else REMOTE. */
export function remoteError(value: unknown): ShmbusError {
  return peerError(value, ErrorCode.REMOTE, 'request failed on the peer: ', 'unknown error');
}
