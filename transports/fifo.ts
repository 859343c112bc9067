/**
 * fifo: named pipes (mkfifo), framed as in stream.ts. Many connections at once, each over its own pair of FIFOs.
 *
 *   fifo:///tmp/app.fifo        an absolute path of at most 1024 bytes; option: maxQueued
 *
 * The rendezvous. The listener creates `path` as a FIFO (0600) and keeps it open read-write, so it never reads
 * end-of-file between connectors. A connector:
 *   1. creates its own two FIFOs next to it, `path.<pid>.<n>.c2l` (connector → listener) and `.l2c` (back), and
 *      opens `.l2c` for reading;
 *   2. writes one request frame to `path`: msgpack {shmbus: 1, c2l, l2c, pid}. It is shorter than PIPE_BUF, so
 *      the kernel writes it whole even while other connectors write theirs;
 *   3. the listener opens `.c2l` for reading and `.l2c` for writing and answers on `.l2c`: {ok: true} (or
 *      {ok: false, code, message});
 *   4. the connector opens `.c2l` for writing, sends {opened: true} on it, and removes both names (the open fds
 *      keep the FIFOs alive). The listener waits for that frame before it hands out the connection: until then
 *      `.c2l` has had no writer, and a connector dying in between would never show up as end-of-file.
 * From then on both sides speak the frames of stream.ts; end-of-file on a side's input is the peer's death
 * unless FRAME_END came first.
 *
 * Nothing blocks: every open uses O_NONBLOCK in an order where it cannot fail for want of a peer (opening a FIFO
 * for writing without a reader is ENXIO, which here means the other side is gone), and reads and writes go
 * through libuv's epoll (net.Socket over the fd).
 *
 * Cleanup: the listener removes `path` on close and on normal exit, and at start replaces a stale `path` (a FIFO
 * nobody reads) and removes connection FIFOs whose creator process is gone. The connector removes its two FIFOs
 * once the handshake is over, or when it fails, or at exit.
 */
import net from 'node:net';
import fs from 'node:fs';
import { basename, dirname } from 'node:path';
import { fifoHandshakeFiles, reap, type FileCandidate, type Reaper } from '../host/reap.js';
import { pack } from 'msgpackr';
import { decodePeer } from '../host/codec.js';
import { RECORD_MSGPACK } from '../assembly/layout.js';
import {
  BadUrlError, ErrorCode, HandshakeError, peerError, peerText, ShmbusError, SystemError, TimeoutError, VersionMismatchError,
} from '../host/errors.js';
import { growPipe, mkfifo } from '../host/sys/fifo.js';
import { ListenerBase, maxConnectionsOf, parseTransportQuery, splitUrl, type Turn } from './base.js';
import { onProcessExit } from '../host/exit.js';
import { FrameReader, StreamConnection, encodeFrame, readHandshakeFrame } from './stream.js';
import type { Transport, ConnectOptions, ListenOptions, Connection } from './contract.js';

const PROTOCOL = 1;
const PATH_MAX = 1024;
const DEFAULT_TIMEOUT = 5000;
/** Buffer asked for each connection FIFO (capped by pipe-max-size): fewer wakeups for large messages. */
const FIFO_BYTES = 1 << 20;
const { O_RDONLY, O_WRONLY, O_RDWR, O_NONBLOCK, O_NOFOLLOW } = fs.constants;

export interface FifoEndpoint {
  url: string;
  path: string;
  maxQueued: number;
}

export function parseFifoUrl(url: string): FifoEndpoint {
  const { rest, query } = splitUrl(url, 'fifo');
  const { maxQueued } = parseTransportQuery(url, query);
  let path: string;
  try {
    path = decodeURIComponent(rest.startsWith('//') ? rest.slice(2) : '');
  } catch (cause) {
    throw new BadUrlError('bad percent-escape in the path', url, { cause });
  }
  if (!path.startsWith('/') || path.endsWith('/') || path.includes('\0')) throw new BadUrlError('fifo: URL needs an absolute file path (fifo:///dir/name)', url);
  if (Buffer.byteLength(path) > PATH_MAX) throw new BadUrlError('fifo: path too long', url, { details: { max: PATH_MAX } });
  return { url, path, maxQueued };
}

/** open(2) with O_NONBLOCK: returns the fd, or the errno code ('ENXIO': no reader on the other end). */
function openFifo(path: string, flags: number): number | string {
  try {
    return fs.openSync(path, flags | O_NONBLOCK);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? 'EIO';
  }
}

function isFifo(fd: number): boolean {
  return fs.fstatSync(fd).isFIFO();
}

const reader = (fd: number) => new net.Socket({ fd, readable: true, writable: false });
const writer = (fd: number) => new net.Socket({ fd, readable: false, writable: true });
const frame = (value: unknown) => encodeFrame(RECORD_MSGPACK, pack(value));

function decodeFrame(f: { type: number; payload: Uint8Array }): Record<string, unknown> {
  if (f.type !== RECORD_MSGPACK) throw new HandshakeError('handshake frame of the wrong type', { details: { type: f.type } });
  let value: unknown;
  try {
    value = decodePeer(f.payload);
  } catch (cause) {
    throw new HandshakeError('handshake frame does not decode', { cause });
  }
  if (typeof value !== 'object' || value === null) throw new HandshakeError('handshake frame is not a map');
  return value as Record<string, unknown>;
}

function unlinkQuietly(path: string): void {
  fs.rmSync(path, { force: true });
}

/** Removes `path.<pid>.<n>.c2l|l2c` left by connectors that were killed mid-handshake. */
function reapConnectionFifos(path: string): void {
  const prefix = basename(path) + '.';
  reap([fifoHandshakeFiles as Reaper], { dirs: [dirname(path)], select: (c) => (c as FileCandidate).entry.startsWith(prefix) });
}

/** Creates the rendezvous FIFO, replacing a stale one. */
function createRendezvous(ep: FifoEndpoint): void {
  for (let attempt = 0; ; attempt++) {
    try {
      mkfifo(ep.path, 0o600);
      return;
    } catch (error) {
      if (!(error instanceof SystemError) || error.code !== ErrorCode.EXISTS || attempt > 0) throw error;
    }
    const probe = openFifo(ep.path, O_WRONLY);
    if (typeof probe === 'number') {
      fs.closeSync(probe);
      throw new ShmbusError(ErrorCode.EXISTS, 'an endpoint already listens at this URL', { details: { url: ep.url } });
    }
    const stat = fs.lstatSync(ep.path, { throwIfNoEntry: false });
    if (stat && !stat.isFIFO()) throw new ShmbusError(ErrorCode.EXISTS, 'a file that is not a FIFO is in the way', { details: { url: ep.url } });
    // ENXIO: a FIFO nobody reads, left by a listener that died.
    unlinkQuietly(ep.path);
  }
}

class FifoListener extends ListenerBase<StreamConnection> {
  private readonly ep: FifoEndpoint;
  private readonly rendezvous: net.Socket;
  private readonly handshakeTimeout: number;
  private readonly forget: () => void;
  /** The rendezvous FIFO's inode: at exit, remove the path only if it is still ours. */
  private readonly ino: number;
  private readonly pending = new Set<net.Socket>();

  constructor(ep: FifoEndpoint, fd: number, ino: number, handshakeTimeout: number, maxConnections: number) {
    super(ep.url, maxConnections);
    this.ep = ep;
    this.handshakeTimeout = handshakeTimeout;
    this.forget = onProcessExit(() => this.unlinkIfOurs(ino));
    this.ino = ino;
    this.rendezvous = reader(fd);
    const requests = new FrameReader(4096, (type, payload) => void this.handshake(type, payload));
    this.rendezvous.on('data', (chunk: Buffer) => {
      try {
        requests.push(chunk);
      } catch (error) {
        // Requests are written whole and read whole, so dropping the rest of this chunk resynchronises.
        this.reportError(error);
        requests.stopped = false;
      }
    });
    this.rendezvous.on('error', (error) => this.reportError(error));
  }

  private unlinkIfOurs(ino: number): void {
    if (fs.lstatSync(this.ep.path, { throwIfNoEntry: false })?.ino === ino) fs.unlinkSync(this.ep.path);
  }

  private async handshake(type: number, payload: Uint8Array): Promise<void> {
    let input: net.Socket | undefined;
    let output: net.Socket | undefined;
    let request: Record<string, unknown> = {};
    /** This connection's place among its process's connections (ListenerBase.takeTurn): requests are read in the
     * order they were written, and a process writes its next one only once connect() resolved. The pid is the
     * request's word for it: only a writer of the rendezvous FIFO (mode 0600 by default) could lie, and then delay
     * that process's later connections by at most the handshake timeout. */
    let turn: Turn<StreamConnection> | undefined;
    try {
      request = decodeFrame({ type, payload });
      const pid = request.pid;
      if (typeof pid === 'number' && Number.isSafeInteger(pid) && pid > 0) turn = this.takeTurn(pid);
      const { c2l, l2c } = request;
      if (!this.isConnectionPath(c2l) || !this.isConnectionPath(l2c)) throw new HandshakeError('connection FIFOs must sit next to the endpoint', { details: { c2l, l2c } });
      // O_NOFOLLOW and the FIFO check before any byte is written: a request cannot make us write elsewhere.
      const inFd = openFifo(c2l, O_RDONLY | O_NOFOLLOW);
      if (typeof inFd !== 'number') throw new HandshakeError('cannot open the connector\'s FIFO', { details: { path: c2l, errno: inFd } });
      if (!isFifo(inFd)) { fs.closeSync(inFd); throw new HandshakeError('not a FIFO', { details: { path: c2l } }); }
      input = reader(inFd);
      this.pending.add(input);
      const outFd = openFifo(l2c, O_WRONLY | O_NOFOLLOW);
      if (typeof outFd !== 'number') throw new HandshakeError('connector went away', { details: { path: l2c, errno: outFd } });
      if (!isFifo(outFd)) { fs.closeSync(outFd); throw new HandshakeError('not a FIFO', { details: { path: l2c } }); }
      output = writer(outFd);
      output.on('error', () => { /* a connector that died: the handshake read reports it */ });
      if (request.shmbus !== PROTOCOL) {
        const error = new VersionMismatchError('connector protocol', peerText(request.shmbus), String(PROTOCOL));
        output.end(frame({ ok: false, code: error.code, message: error.message }));
        throw error;
      }
      // Handshakes in progress count too: each holds two descriptors of ours until it ends.
      if (this.full(this.pending.size - 1)) {
        const error = this.limitError();
        output.end(frame({ ok: false, code: error.code, message: error.message }));
        throw error;
      }
      output.write(frame({ ok: true }));
      const reply = await readHandshakeFrame(input, this.handshakeTimeout);
      if (decodeFrame(reply).opened !== true) throw new HandshakeError('connector did not open its FIFO');
      // Both ends are open: the names have served. The connector removes them next, but one killed right after
      // {opened} would leave them, so the listener removes them too.
      this.removeRequestFifos(request);
      this.pending.delete(input);
      output.removeAllListeners('error');
      const connection = new StreamConnection({ url: this.url, maxQueued: this.ep.maxQueued, input, output, pending: reply.rest });
      this.track(connection);
      if (turn === undefined) this.offer(connection);
      else this.settle(turn, connection);
    } catch (error) {
      if (turn !== undefined) this.settle(turn, undefined);
      if (input) { this.pending.delete(input); input.destroy(); }
      output?.destroy();
      // The connector failed or lied; its FIFOs must not outlive this.
      this.removeRequestFifos(request);
      this.reportError(error);
    }
  }

  /** Removes the connection FIFOs a request named: FIFOs next to the endpoint only (a request cannot make us
   * remove a regular file or anything elsewhere). */
  private removeRequestFifos(request: Record<string, unknown>): void {
    for (const p of [request.c2l, request.l2c]) {
      if (this.isConnectionPath(p) && fs.lstatSync(p, { throwIfNoEntry: false })?.isFIFO()) unlinkQuietly(p);
    }
  }

  /** A name directly next to the endpoint (`<path>.<anything without a slash>`): no `..` can lead elsewhere. */
  private isConnectionPath(p: unknown): p is string {
    const prefix = this.ep.path + '.';
    return typeof p === 'string' && p.startsWith(prefix) && !p.slice(prefix.length).includes('/');
  }

  protected async stop(): Promise<void> {
    for (const s of this.pending) s.destroy();
    this.rendezvous.destroy();
    this.unlinkIfOurs(this.ino);
    this.forget();
  }
}

async function listen(url: string, options: ListenOptions = {}): Promise<FifoListener> {
  const ep = parseFifoUrl(url);
  const maxConnections = maxConnectionsOf(options);
  createRendezvous(ep);
  // Once the endpoint is ours: its FIFO next to them is what proves connection FIFOs shmbus's (host/reap.ts).
  reapConnectionFifos(ep.path);
  // Read-write: the listener is a writer too, so the FIFO never reads end-of-file between connectors.
  const fd = openFifo(ep.path, O_RDWR);
  if (typeof fd !== 'number') {
    unlinkQuietly(ep.path);
    throw new ShmbusError(ErrorCode.SYSCALL, 'cannot open the FIFO', { details: { url, errno: fd } });
  }
  return new FifoListener(ep, fd, fs.fstatSync(fd).ino, options.handshakeTimeout ?? DEFAULT_TIMEOUT, maxConnections);
}

let connectionCounter = 0;

async function connect(url: string, options: ConnectOptions = {}): Promise<Connection> {
  const ep = parseFifoUrl(url);
  const timeout = options.timeout ?? DEFAULT_TIMEOUT;
  const deadline = Date.now() + timeout;
  const rendezvous = openFifo(ep.path, O_WRONLY);
  if (typeof rendezvous !== 'number') {
    throw new ShmbusError(ErrorCode.NOT_FOUND, 'nothing listens at this URL', { details: { url, errno: rendezvous } });
  }
  const base = `${ep.path}.${process.pid}.${++connectionCounter}`;
  const c2l = `${base}.c2l`;
  const l2c = `${base}.l2c`;
  const removeFifos = () => { unlinkQuietly(c2l); unlinkQuietly(l2c); };
  const forget = onProcessExit(removeFifos);
  let input: net.Socket | undefined;
  let output: net.Socket | undefined;
  try {
    if (!isFifo(rendezvous)) throw new ShmbusError(ErrorCode.NOT_FOUND, 'the endpoint is not a FIFO', { details: { url } });
    mkfifo(c2l, 0o600);
    mkfifo(l2c, 0o600);
    const inFd = openFifo(l2c, O_RDONLY);
    if (typeof inFd !== 'number') throw new ShmbusError(ErrorCode.SYSCALL, 'cannot open our own FIFO', { details: { path: l2c, errno: inFd } });
    input = reader(inFd);
    growPipe(inFd, FIFO_BYTES);
    await writeWhole(rendezvous, frame({ shmbus: PROTOCOL, c2l, l2c, pid: process.pid }), deadline, url);
    const answer = await readHandshakeFrame(input, Math.max(1, deadline - Date.now()));
    const reply = decodeFrame(answer);
    if (reply.ok !== true) {
      throw peerError(reply, ErrorCode.HANDSHAKE, '', 'listener refused the connection', { url });
    }
    const outFd = openFifo(c2l, O_WRONLY);
    if (typeof outFd !== 'number') throw new HandshakeError('listener went away during the handshake', { details: { url, errno: outFd } });
    output = writer(outFd);
    growPipe(outFd, FIFO_BYTES);
    // The first bytes on the new FIFO; the connection's frames queue up behind them.
    output.write(frame({ opened: true }));
    return new StreamConnection({ url, maxQueued: ep.maxQueued, input, output, pending: answer.rest });
  } catch (error) {
    input?.destroy();
    output?.destroy();
    throw error;
  } finally {
    fs.closeSync(rendezvous);
    removeFifos();
    forget();
  }
}

/** Writes a request (< PIPE_BUF, so whole or not at all) without blocking; retries while the pipe is full. */
async function writeWhole(fd: number, bytes: Buffer, deadline: number, url: string): Promise<void> {
  for (;;) {
    try {
      fs.writeSync(fd, bytes);
      return;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'EPIPE') throw new ShmbusError(ErrorCode.NOT_FOUND, 'nothing listens at this URL', { details: { url } });
      if (code !== 'EAGAIN') throw new ShmbusError(ErrorCode.SYSCALL, 'cannot write to the FIFO', { cause: error, details: { url, errno: code } });
    }
    if (Date.now() > deadline) throw new TimeoutError('the listener does not read its FIFO', { url });
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const fifoTransport: Transport = { name: 'fifo', schemes: ['fifo'], listen, connect };
