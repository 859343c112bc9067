/**
 * The transport contract: what every mechanism (shared-memory rings, pipes, FIFOs, message queues, sockets)
 * promises, so that a user switches between them by changing the URL and nothing else.
 *
 * Ordering. Messages arrive in the order they were sent, each exactly once, on each direction of a connection.
 *
 * Framing. A message is one value (msgpack, `send`) or one byte string (`sendBytes`); the receiver gets exactly
 * that value or those bytes back (bytes as a `Uint8Array` copy). A partial message is never delivered. A frame
 * that cannot be decoded closes the connection with ERR_SHMBUS_CORRUPT.
 *
 * Size limits. `maxMessageSize` is the largest encoded message a connection carries; every transport carries at
 * least 1 MiB (message queues split and reassemble). A larger message throws ERR_SHMBUS_MESSAGE_TOO_LARGE from
 * send and is not taken.
 *
 * Back-pressure (Node's stream.write convention). `send` always takes the message; it returns false once the
 * message had to wait in the local queue, and `drained()` / 'drain' say when to go on. Past `maxQueued` waiting
 * messages `send` throws ERR_SHMBUS_QUEUE_FULL. `trySend` takes a message only if the transport accepts it now.
 * Nothing is dropped silently: messages that can no longer be delivered reject `drained()` with the reason.
 *
 * Close and end of stream. `close()` delivers every message already taken (as far as the transport can), then
 * closes; the peer's iterator ends after the last message. A peer that dies without closing makes the iterator
 * throw ERR_SHMBUS_PEER_DEAD (after everything that had arrived) within about a second, and later sends throw.
 * `close()` waits as long as a live peer takes to read (as a socket's end() does); `destroy()` closes at once:
 * messages still in the local queue are given up (drained() rejects with ERR_SHMBUS_CLOSED), and nothing waits for
 * the peer. The peer still gets what the transport already took, then the end, with two exceptions: a pipe or
 * socket whose end marker no longer fit ends as if we had died (ERR_SHMBUS_PEER_DEAD), and a socket that still held
 * data from the peer we had not read is reset by the kernel, which can lose what was in flight to the peer. A
 * message queue, which has no end-of-file, keeps trying to hand over its end marker in the background (up to 30 s,
 * holding its descriptors but not the process: if the process exits first, the peer sees it die); so does one that
 * failed, unless the peer sent data we could not take (ERR_SHMBUS_CORRUPT: it gets one try).
 *
 * Errors. Bad URLs and unsupported options: ERR_SHMBUS_BAD_URL / ERR_SHMBUS_UNKNOWN_SCHEME. Kernel refusals:
 * SystemError with the syscall and errno (a refused limit names it in `details`).
 *
 * Receiving never blocks the event loop and never holds a libuv threadpool thread per connection.
 *
 * Cleanup. Whoever creates a kernel object (FIFO file, queue, socket file, segment) removes it on close and on
 * normal exit.
 */
import type { EventEmitter } from 'node:events';
import { UnknownSchemeError } from '../host/errors.js';
import { schemeOf } from '../host/url.js';
import type { RequestHandler, RequestOptions } from '../host/rpc.js';

/**
 * One end of a duplex message connection. `Channel` (shared memory) is the reference implementation.
 *
 * Events: 'drain' (the local queue emptied after a send returned false), 'close', 'error', and 'message': while
 * a 'message' listener is attached (Node's `process.on('message')` style) every incoming message is emitted to
 * it, a whole batch per wake; take messages either that way or through the iterator / `receive`, not both.
 */
export interface Connection extends EventEmitter, AsyncIterable<unknown> {
  /** The URL the connection was made from. */
  readonly url: string;
  /** Largest message, in encoded bytes, that one send carries. */
  readonly maxMessageSize: number;
  /** Hard cap of messages waiting in the local queue. */
  readonly maxQueued: number;
  /** Messages waiting in the local queue now. */
  readonly queued: number;
  /** Sends a value (msgpack). Returns false once messages wait locally. */
  send(value: unknown): boolean;
  /** Sends raw bytes (copied). Returns false once messages wait locally. */
  sendBytes(bytes: Uint8Array): boolean;
  /** Sends only if the transport takes the message now; false = not taken. */
  trySend(value: unknown): boolean;
  trySendBytes(bytes: Uint8Array): boolean;
  /** Resolves when no message waits locally; rejects if they can no longer be delivered. */
  drained(): Promise<void>;
  /** The next message, or undefined at the end of the stream. */
  receive(): Promise<unknown>;
  /** Delivers what was taken, then closes. Idempotent. */
  close(): Promise<void>;
  /** Closes now without delivering what still waits locally, and without waiting for the peer (a peer that never
   * reads holds close() until it exits; it cannot hold this). Ends a close() under way. Idempotent. */
  destroy(): Promise<void>;
  /** Sends a request; resolves with the peer's reply (host/rpc.ts). */
  request(value: unknown, options?: RequestOptions): Promise<unknown>;
  /** Answers the peer's requests (undefined stops). */
  handle(handler: RequestHandler | undefined): unknown;
}

/** A listening endpoint: an async iterable of incoming connections. Emits 'connection' and 'error'. */
export interface ConnectionListener extends EventEmitter, AsyncIterable<Connection> {
  readonly url: string;
  /** The next incoming connection, or undefined once the listener is closed. Connections one process made one
   * after the other (each once the previous connect() resolved) come in that order. */
  acceptNext(): Promise<Connection | undefined>;
  /** Stops accepting and removes what the listener created. Connections handed out stay open; those not taken yet
   * are destroyed (nothing of theirs waits for their peer). */
  close(): Promise<void>;
}

export interface ConnectOptions {
  /** Milliseconds the connection (and its handshake) may take. shm and unix: this includes waiting for room while
   * the listener's accept queue is full (then ERR_SHMBUS_LIMIT when it stays full). */
  timeout?: number;
  /**
   * shm and unix: the uid the listener must run as (SO_PEERCRED); by default our own uid or root. Anyone else holding
   * the endpoint fails the connection with ERR_SHMBUS_PERMISSION_DENIED before a byte is sent. Overrides the
   * URL's `expectUid`.
   */
  expectUid?: number;
}

export interface ListenOptions {
  /** Milliseconds a connector gets for its whole handshake. */
  handshakeTimeout?: number;
  /**
   * shm and unix: who may connect besides the listener's own uid and root, checked with SO_PEERCRED before anything is
   * allocated: `'uid:1000,gid:50'` (gids match the peer's effective and supplementary groups) or `'any'`.
   * Overrides the URL's `allow`.
   */
  allow?: string;
  /** shm: most handshakes in progress at once; further connectors are disconnected at once. Default 64. */
  maxPending?: number;
  /** Most open connections from this listener (handed out or not yet taken), on every transport that listens:
   * further connectors are refused with ERR_SHMBUS_LIMIT (shm, fifo, mq, sysvmq: their connect() fails with it;
   * unix, tcp: the socket the kernel accepted is closed before a byte is read, so the connector's connection ends
   * at once). Default 1024. */
  maxConnections?: number;
}

/** One mechanism, chosen by URL scheme. */
export interface Transport {
  /** A short name for tables and errors: 'shm', 'unix', 'mq', ... */
  readonly name: string;
  /** The URL schemes it serves, without ':'. */
  readonly schemes: readonly string[];
  listen(url: string, options?: ListenOptions): Promise<ConnectionListener>;
  connect(url: string, options?: ConnectOptions): Promise<Connection>;
}

const registry = new Map<string, Transport>();

/** Makes a transport available to listen/connect for its schemes. A later registration replaces an earlier one. */
export function registerTransport(transport: Transport): void {
  for (const scheme of transport.schemes) registry.set(scheme, transport);
}

/** The transport serving `url`'s scheme. Throws ERR_SHMBUS_UNKNOWN_SCHEME (or BAD_URL for a non-URL). */
export function transportFor(url: string): Transport {
  const scheme = schemeOf(url);
  const transport = registry.get(scheme);
  if (!transport) throw new UnknownSchemeError(url, scheme);
  return transport;
}

/** Every registered transport, once each. */
export function transports(): Transport[] {
  return [...new Set(registry.values())];
}
