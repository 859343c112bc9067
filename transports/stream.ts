/**
 * Messages over a byte stream (unix and tcp sockets, pipes, FIFOs): a FramedConnection over Node streams whose
 * fds libuv watches with epoll, so receiving never blocks the event loop or a threadpool thread.
 *
 * Wire format, the same for every byte-stream transport, both directions:
 *
 *   frame   = length u32 LE | type u8 | payload (length bytes)
 *   type    1  RECORD_BYTES    raw bytes (sendBytes)            ┐ the record types of assembly/layout.ts
 *           2  RECORD_MSGPACK  one msgpack value (send)         │
 *         3-5  request/reply   msgpack [id, value] (host/rpc.ts) ┘
 *           0x7f FRAME_END     orderly close: empty payload, nothing follows it
 *
 * A receiver never delivers a partial frame. A frame longer than the receiver's maxMessageSize, or of an unknown
 * type, is corrupt: the connection fails with ERR_SHMBUS_CORRUPT. End-of-file (or a reset) without FRAME_END
 * means the peer died: ERR_SHMBUS_PEER_DEAD after every whole frame that arrived.
 *
 * Writes are batched per turn of the event loop: small frames are copied into a 64 KiB batch that is written
 * once (setImmediate) or when full; large payloads go out as their own chunk behind their header (one writev).
 */
import type net from 'node:net';
import { RECORD_BYTES, RECORD_REPLY_ERROR } from '../assembly/layout.js';
import {
  CorruptError, ErrorCode, HandshakeError, PeerDeadError, ShmbusError, TimeoutError,
} from '../host/errors.js';
import { FramedConnection, ListenerBase, asShmbusError } from './base.js';
import { readHandshake } from '../host/control.js';

export const FRAME_HEADER_SIZE = 5;
export const FRAME_END = 0x7f;
/** Default largest message on a byte stream. Frames are reassembled in one buffer, so this bounds memory. */
export const DEFAULT_STREAM_MAX_MESSAGE = 64 * 1024 * 1024;

/** Small frames are copied into the batch; larger payloads are written as their own chunk (no extra copy). */
const BATCH_SIZE = 64 * 1024;
const SMALL_PAYLOAD = 16 * 1024;
/** After our FRAME_END, how long we keep reading (and dropping) until the peer's end-of-file. Closing a TCP
 * socket with unread input sends RST, which can destroy data of ours still in flight. */
const LINGER_MS = 2000;
/** After a write fails (EPIPE, reset), how long the input gets to show whether the peer closed or died. */
const VERDICT_MS = 1000;

/** Reassembles frames from chunks. Each byte is copied at most once; whole frames inside a chunk not at all. */
export class FrameReader {
  /** Set to stop handing out frames (after FRAME_END or an error); the rest of the input is ignored. */
  stopped = false;
  private readonly header = new Uint8Array(FRAME_HEADER_SIZE);
  private headerHave = 0;
  private body: Uint8Array | undefined;
  private bodyHave = 0;
  private type = 0;

  constructor(
    private readonly maxLength: number,
    /** `owned`: `bytes` is a fresh buffer nobody else holds; otherwise a view valid only during the call. */
    private readonly onFrame: (type: number, bytes: Uint8Array, owned: boolean) => void,
  ) {}

  /** True while a frame has begun but not completed. */
  get midFrame(): boolean {
    return this.headerHave > 0 || this.body !== undefined;
  }

  /** Feeds one chunk. Throws CorruptError for a frame longer than the maximum (the reader then stops). */
  push(chunk: Uint8Array): void {
    const n = chunk.length;
    let pos = 0;
    while (pos < n && !this.stopped) {
      if (this.body === undefined) {
        let length: number;
        if (this.headerHave === 0 && n - pos >= FRAME_HEADER_SIZE) {
          length = (chunk[pos]! | (chunk[pos + 1]! << 8) | (chunk[pos + 2]! << 16) | (chunk[pos + 3]! << 24)) >>> 0;
          this.type = chunk[pos + 4]!;
          pos += FRAME_HEADER_SIZE;
        } else {
          const take = Math.min(FRAME_HEADER_SIZE - this.headerHave, n - pos);
          this.header.set(chunk.subarray(pos, pos + take), this.headerHave);
          this.headerHave += take;
          pos += take;
          if (this.headerHave < FRAME_HEADER_SIZE) return;
          this.headerHave = 0;
          const h = this.header;
          length = (h[0]! | (h[1]! << 8) | (h[2]! << 16) | (h[3]! << 24)) >>> 0;
          this.type = h[4]!;
        }
        if (length > this.maxLength) {
          this.stopped = true;
          throw new CorruptError('frame longer than the largest message', { length, max: this.maxLength, type: this.type });
        }
        if (n - pos >= length) {
          this.onFrame(this.type, chunk.subarray(pos, pos + length), false);
          pos += length;
          continue;
        }
        this.body = new Uint8Array(length);
        this.bodyHave = 0;
      }
      const take = Math.min(this.body.length - this.bodyHave, n - pos);
      this.body.set(chunk.subarray(pos, pos + take), this.bodyHave);
      this.bodyHave += take;
      pos += take;
      if (this.bodyHave === this.body.length) {
        const body = this.body;
        this.body = undefined;
        this.onFrame(this.type, body, true);
      }
    }
  }
}

/** A frame header for `length` payload bytes of `type`, written at `out[at]`. */
export function writeFrameHeader(out: Uint8Array, at: number, type: number, length: number): void {
  out[at] = length & 0xff;
  out[at + 1] = (length >>> 8) & 0xff;
  out[at + 2] = (length >>> 16) & 0xff;
  out[at + 3] = (length >>> 24) & 0xff;
  out[at + 4] = type;
}

/** One whole frame as a fresh buffer (handshakes). */
export function encodeFrame(type: number, payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_SIZE + payload.length);
  writeFrameHeader(out, 0, type, payload.length);
  out.set(payload, FRAME_HEADER_SIZE);
  return out;
}

/**
 * Reads one frame of at most `maxLength` bytes from `socket` (a handshake step). Resolves with it and whatever
 * bytes followed it; the socket is left paused. Rejects on end-of-file, error, an over-long frame or timeout.
 */
export async function readHandshakeFrame(socket: net.Socket, timeoutMs: number, maxLength = 4096): Promise<{ type: number; payload: Uint8Array; rest: Buffer }> {
  const { value, rest } = await readHandshake(socket, timeoutMs, (buffered) => {
    if (buffered.length < FRAME_HEADER_SIZE) return undefined;
    const length = buffered.readUInt32LE(0);
    if (length > maxLength) throw new HandshakeError('handshake frame too long', { details: { length, max: maxLength } });
    if (buffered.length < FRAME_HEADER_SIZE + length) return undefined;
    return { value: { type: buffered[4]!, payload: buffered.subarray(FRAME_HEADER_SIZE, FRAME_HEADER_SIZE + length) }, used: FRAME_HEADER_SIZE + length };
  });
  return { ...value, rest };
}

export interface StreamConnectionOptions {
  url: string;
  maxQueued: number;
  maxMessageSize?: number;
  /** Where frames come from, and where they go: the same socket, or two pipe ends. */
  input: net.Socket;
  output: net.Socket;
  /** Bytes already read from `input` (after a handshake frame). */
  pending?: Uint8Array;
}

export class StreamConnection extends FramedConnection {
  private readonly input: net.Socket;
  private readonly output: net.Socket;
  private readonly reader: FrameReader;
  private batch = Buffer.allocUnsafeSlow(BATCH_SIZE);
  private used = 0;
  private flushScheduled = false;
  /** FRAME_END arrived: the peer closed in order. */
  private endSeen = false;
  /** The input reached end-of-file or failed. */
  private inputDone = false;
  /** A write failed: nothing more goes out; the input decides whether the peer closed or died. */
  private outputBroken = false;
  private verdictTimer: NodeJS.Timeout | undefined;

  constructor(opts: StreamConnectionOptions) {
    super({ url: opts.url, maxQueued: opts.maxQueued, maxMessageSize: opts.maxMessageSize ?? DEFAULT_STREAM_MAX_MESSAGE });
    this.input = opts.input;
    this.output = opts.output;
    this.reader = new FrameReader(this.maxMessageSize, this.onFrame);
    this.output.on('drain', () => this.writable());
    this.input.on('error', this.onInputError);
    // A socket's write error destroys its read side too, so 'close' decides. A pipe's write end fails alone
    // (EPIPE once the peer's read end is gone), and the peer's FRAME_END may still be waiting in our input.
    if (this.output !== this.input) this.output.on('error', this.onOutputError);
    this.input.on('data', this.onData);
    this.input.on('end', this.onInputEnd);
    this.input.on('close', this.onInputEnd);
    if (opts.pending?.length) this.onData(opts.pending);
    this.input.resume();
  }

  // --- FramedConnection hooks ------------------------------------------------------------------------------------

  protected writeFrame(type: number, bytes: Uint8Array, owned = false): boolean {
    if (this.outputBroken) return false;
    if (this.output.destroyed) throw new PeerDeadError('connection to the peer is gone', { url: this.url });
    // Not writableNeedDrain: that stays set until the 'drain' event's tick even when the kernel already took
    // everything (a corked large write sets it every time). Past the high-water mark 'drain' is sure to come.
    if (this.output.writableLength >= this.output.writableHighWaterMark) return false;
    const length = bytes.length;
    if (length <= SMALL_PAYLOAD) {
      if (this.used + FRAME_HEADER_SIZE + length > BATCH_SIZE) this.flush();
      writeFrameHeader(this.batch, this.used, type, length);
      this.batch.set(bytes, this.used + FRAME_HEADER_SIZE);
      this.used += FRAME_HEADER_SIZE + length;
      this.scheduleFlush();
      return true;
    }
    if (this.used + FRAME_HEADER_SIZE > BATCH_SIZE) this.flush();
    writeFrameHeader(this.batch, this.used, type, length);
    this.used += FRAME_HEADER_SIZE;
    // The caller may reuse `bytes` once we return; a queued message is already our own copy.
    const payload = owned ? bytes : new Uint8Array(bytes);
    this.output.cork();
    this.flush();
    this.output.write(payload);
    this.output.uncork();
    return true;
  }

  protected pauseReading(): void {
    this.input.pause();
  }

  protected resumeReading(): void {
    this.input.resume();
  }

  protected async closeTransport(): Promise<void> {
    clearTimeout(this.verdictTimer);
    const { input, output } = this;
    // After a failure (a corrupt or dead peer) there is nothing to finish in order: drop the connection.
    const orderly = this.failedWith === undefined;
    if (orderly && !this.outputBroken && !output.destroyed && output.writable) {
      if (this.used + FRAME_HEADER_SIZE > BATCH_SIZE) this.flush();
      writeFrameHeader(this.batch, this.used, FRAME_END, 0);
      this.used += FRAME_HEADER_SIZE;
      this.flush();
      // After destroy(): the END goes if the kernel takes it now (the write is tried at once), nothing waits.
      if (!this.abandoned) await new Promise<void>((resolve) => {
        output.once('finish', resolve);
        output.once('close', resolve);
        output.once('error', () => resolve());
        output.end();
      });
    }
    // Read (and drop) until the peer's end-of-file, so closing never resets data still on its way to the peer.
    this.reader.stopped = true;
    if (orderly && !this.abandoned && !this.inputDone && !input.destroyed) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, LINGER_MS);
        const done = () => { clearTimeout(timer); resolve(); };
        input.once('end', done);
        input.once('close', done);
        input.once('error', done);
        input.resume();
      });
    }
    input.destroy();
    output.destroy();
  }

  protected abandonTransport(): void {
    // A closeTransport waiting for 'finish' or for the peer's end-of-file hears 'close' now.
    if (this.transportClosed) {
      this.input.destroy();
      this.output.destroy();
    }
  }

  // --- reading ---------------------------------------------------------------------------------------------------

  private readonly onData = (chunk: Uint8Array): void => {
    try {
      this.reader.push(chunk);
    } catch (error) {
      this.reader.stopped = true;
      this.fail(asShmbusError(error));
    }
  };

  private readonly onFrame = (type: number, bytes: Uint8Array, owned: boolean): void => {
    if (type >= RECORD_BYTES && type <= RECORD_REPLY_ERROR) {
      this.deliver(type, bytes, owned);
    } else if (type === FRAME_END) {
      this.reader.stopped = true;
      this.endSeen = true;
      clearTimeout(this.verdictTimer);
      this.ended();
    } else {
      this.reader.stopped = true;
      throw new CorruptError('frame of an unknown type', { url: this.url, type, length: bytes.length });
    }
  };

  private readonly onInputEnd = (): void => {
    if (this.inputDone) return;
    this.inputDone = true;
    clearTimeout(this.verdictTimer);
    if (!this.endSeen) this.peerDied(new PeerDeadError('peer went away without closing', { url: this.url, midFrame: this.reader.midFrame }));
  };

  private readonly onInputError = (error: NodeJS.ErrnoException): void => {
    if (this.inputDone) return;
    this.inputDone = true;
    clearTimeout(this.verdictTimer);
    if (!this.endSeen) this.peerDied(new PeerDeadError('connection to the peer failed', { url: this.url, errno: error.code }));
  };

  /**
   * A write failed (EPIPE, ECONNRESET). The peer may have closed in order with its FRAME_END still unread in our
   * input, so the input decides; if it says nothing within VERDICT_MS, the peer is dead.
   */
  private readonly onOutputError = (error: NodeJS.ErrnoException): void => {
    if (this.outputBroken) return;
    this.outputBroken = true;
    if (this.endSeen || this.inputDone || this.transportClosed) return;
    this.verdictTimer = setTimeout(() => {
      this.peerDied(new PeerDeadError('connection to the peer failed', { url: this.url, errno: error.code }));
    }, VERDICT_MS);
    this.verdictTimer.unref();
  };

  // --- writing ---------------------------------------------------------------------------------------------------

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(this.flushNow);
  }

  private readonly flushNow = (): void => {
    this.flushScheduled = false;
    if (!this.output.destroyed && !this.outputBroken) this.flush();
  };

  private flush(): void {
    if (this.used === 0) return;
    const chunk = this.batch.subarray(0, this.used);
    this.output.write(chunk);
    this.used = 0;
    // The kernel took it all synchronously: nothing references the batch any more, reuse it.
    if (this.output.writableLength !== 0) this.batch = Buffer.allocUnsafeSlow(BATCH_SIZE);
  }
}

/** A listener over a net.Server (unix, tcp): every accepted socket becomes a StreamConnection. */
export class ServerListener extends ListenerBase<StreamConnection> {
  private readonly server: net.Server;
  private readonly onStop: (() => void) | undefined;

  /** @param maxConnections maxConnectionsOf(options): past it an accepted socket is closed at once (before a byte is
   * read) and the refusal reported to 'error' listeners. */
  constructor(url: string, server: net.Server, maxConnections: number, makeConnection: (socket: net.Socket) => StreamConnection, onStop?: () => void) {
    super(url, maxConnections);
    this.server = server;
    this.onStop = onStop;
    server.on('connection', (socket) => {
      try {
        if (this.full()) throw this.limitError();
        const connection = makeConnection(socket);
        this.track(connection);
        this.offer(connection);
      } catch (error) {
        socket.destroy();
        this.reportError(error);
      }
    });
    server.on('error', (error) => this.reportError(error));
  }

  protected async stop(): Promise<void> {
    // close() stops listening (and libuv unlinks a socket file) at once; its callback would wait for every
    // connection ever accepted to end, and connections handed out outlive the listener.
    this.server.close();
    this.onStop?.();
  }
}

/** Maps a node:net error of listen/connect to a typed error. */
export function socketError(error: NodeJS.ErrnoException, url: string, what: 'listen' | 'connect'): ShmbusError {
  if (error instanceof ShmbusError) return error;
  const details = { url, errno: error.code };
  switch (error.code) {
    case 'EADDRINUSE': return new ShmbusError(ErrorCode.EXISTS, 'an endpoint already listens at this URL', { details });
    case 'ECONNREFUSED': case 'ENOENT': case 'ENOTFOUND': case 'EAI_AGAIN':
      return new ShmbusError(ErrorCode.NOT_FOUND, what === 'connect' ? 'nothing listens at this URL' : 'directory not found', { details });
    case 'EACCES': case 'EPERM': return new ShmbusError(ErrorCode.PERMISSION_DENIED, `${what} refused`, { details });
    default: return new ShmbusError(ErrorCode.SYSCALL, `cannot ${what}`, { cause: error, details });
  }
}

/** Waits for a socket's 'connect', bounded by `timeoutMs`; maps failures with socketError. */
export function whenConnected(socket: net.Socket, url: string, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new TimeoutError('connect timed out', { url, timeoutMs }));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      reject(socketError(error, url, 'connect'));
    });
  });
}
