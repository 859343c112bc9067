/**
 * listen / connect for shared-memory endpoints (shm://, sysv://, file://).
 *
 * The URL names an endpoint: a control socket in the abstract namespace. For every connection the listener
 * creates a fresh segment (two rings), named after its own pid and a counter, maps and formats it, and tells the
 * connector its name over the control socket. Once the connector has mapped it, the listener removes the name
 * (shm_unlink, unlink, IPC_RMID): the memory lives on while mapped, and nothing can be left behind on disk or in
 * the kernel's tables even if both processes are killed afterwards.
 */
import net from 'node:net';
import { EventEmitter } from 'node:events';
import { CHANNEL_RING_COUNT, RING_TO_CONNECTOR, RING_TO_LISTENER, LAYOUT_VERSION, LAYOUT_VERSION_MAJOR, ringOffset, segmentBytes } from '../assembly/layout.js';
import { getEngine, type Engine } from '../host/engine.js';
import { Region } from '../host/region.js';
import { RingEnd } from '../host/ring.js';
import { formatSegment, readSegment } from '../host/segment.js';
import { Channel } from '../host/channel.js';
import { PROTOCOL, readLine, writeLine, remoteError, errorLine } from '../host/control.js';
import { parseShmUrl, type ShmEndpoint } from '../host/url.js';
import { processStartTime } from '../host/sys/proc.js';
import { mechanismFor } from '../host/wake/index.js';
import type { WakeParts } from '../host/channel.js';
import {
  ClosedError, CorruptError, ErrorCode, HandshakeError, ShmbusError, VersionMismatchError,
} from '../host/errors.js';

import type { Transport, ConnectOptions, ListenOptions, ConnectionListener } from './contract.js';

const DEFAULT_TIMEOUT = 5000;
let connectionCounter = 0;

/** A mapped segment plus the window it occupies; undone in reverse order on any failure. */
interface Mapping { engine: Engine; region: Region; window: number; windowSize: number }

function mapRegion(engine: Engine, region: Region): Mapping {
  const windowSize = region.size;
  const window = engine.allocWindow(windowSize);
  try {
    region.mapAt(engine.address(window));
  } catch (error) {
    engine.freeWindow(window, windowSize);
    throw error;
  }
  return { engine, region, window, windowSize };
}

function unmap(m: Mapping): void {
  try {
    m.region.unmapAt(m.engine.address(m.window));
    m.engine.freeWindow(m.window, m.windowSize);
  } finally {
    m.region.close();
  }
}

function createRegion(endpoint: ShmEndpoint, size: number): Region {
  const n = ++connectionCounter;
  const mode = endpoint.perm;
  switch (endpoint.scheme) {
    case 'shm': return Region.createPosix(`/shmbus.${endpoint.name}.${process.pid}.${n}`, { size, mode, exclusive: true });
    case 'sysv': return Region.createSysV('private', { size, mode });
    case 'file': return Region.createFile(`${endpoint.name}.${process.pid}.${n}.ring`, { size, mode, exclusive: true });
  }
}

/** What a side says about how it sleeps: its mechanism's name and what a peer needs to ring it. */
function wakeLine(endpoint: ShmEndpoint): Record<string, unknown> {
  const mechanism = mechanismFor(endpoint.wake, endpoint.url);
  return { mode: mechanism.name, params: mechanism.params() };
}

/** How to ring the peer, from its handshake line: its mechanism and that mechanism's parameters. */
function peerWake(endpoint: ShmEndpoint, line: unknown): WakeParts {
  if (typeof line !== 'object' || line === null || typeof (line as { mode?: unknown }).mode !== 'string') {
    throw new HandshakeError('peer did not say how to wake it');
  }
  const { mode, params } = line as { mode: string; params?: unknown };
  return {
    mine: mechanismFor(endpoint.wake, endpoint.url),
    peer: mechanismFor(mode, endpoint.url),
    peerParams: typeof params === 'object' && params !== null ? params as Record<string, unknown> : {},
  };
}

function attachRegion(endpoint: ShmEndpoint, reply: Record<string, unknown>): Region {
  switch (endpoint.scheme) {
    case 'shm': return Region.attachPosix(String(reply.name));
    case 'sysv': return Region.attachSysV({ shmid: Number(reply.shmid) });
    case 'file': return Region.attachFile(String(reply.name));
  }
}

/** A listening endpoint: an async iterable of incoming channels. Emits 'connection' and 'error'. */
export class Listener extends EventEmitter implements ConnectionListener {
  readonly url: string;
  private readonly server: net.Server;
  private readonly endpoint: ShmEndpoint;
  private readonly handshakeTimeout: number;
  private readonly accepted: Channel[] = [];
  private waiter: ((c: Channel | undefined) => void) | undefined;
  private closed = false;
  private readonly pending = new Set<net.Socket>();

  /** @internal use listen() */
  constructor(endpoint: ShmEndpoint, server: net.Server, options: ListenOptions) {
    super();
    this.url = endpoint.url;
    this.endpoint = endpoint;
    this.server = server;
    this.handshakeTimeout = options.handshakeTimeout ?? DEFAULT_TIMEOUT;
    server.on('connection', (socket) => void this.accept(socket));
  }

  private async accept(socket: net.Socket): Promise<void> {
    this.pending.add(socket);
    // A connector that dies mid-handshake makes our writes fail; readLine and the Channel report it.
    socket.on('error', () => {});
    let mapping: Mapping | undefined;
    try {
      const { message: hello } = await readLine(socket, this.handshakeTimeout);
      if (hello.shmbus !== PROTOCOL || typeof hello.version !== 'number') throw new HandshakeError('connector does not speak the shmbus protocol');
      if (hello.version >>> 16 !== LAYOUT_VERSION_MAJOR) {
        throw new VersionMismatchError('connector layout', versionText(hello.version), versionText(LAYOUT_VERSION));
      }
      const engine = getEngine();
      const capacity = this.endpoint.size;
      const size = segmentBytes(CHANNEL_RING_COUNT, capacity);
      const region = createRegion(this.endpoint, size);
      mapping = mapRegion(engine, region);
      formatSegment(engine, mapping.window, CHANNEL_RING_COUNT, capacity, process.pid, processStartTime(process.pid) ?? 0n);
      const wake = peerWake(this.endpoint, hello.wake);
      const mine = wakeLine(this.endpoint);
      wake.myParams = mine.params as Record<string, unknown>;
      writeLine(socket, { ok: true, kind: region.kind, name: region.name, shmid: region.shmid, size, capacity, wake: mine });
      const { message: ack, rest } = await readLine(socket, this.handshakeTimeout);
      if (ack.attached !== true) throw remoteError(ack, 'connector could not attach');
      region.remove();
      const tx = new RingEnd(engine, mapping.window + ringOffset(RING_TO_CONNECTOR, capacity), capacity, 'producer');
      const rx = new RingEnd(engine, mapping.window + ringOffset(RING_TO_LISTENER, capacity), capacity, 'consumer');
      this.pending.delete(socket);
      const channel = new Channel({ ...mapping, tx, rx, socket, endpoint: this.endpoint, pendingBytes: rest, side: 'listener', wake });
      mapping = undefined;
      if (this.closed) { void channel.close(); return; }
      this.emit('connection', channel);
      if (this.waiter) { const w = this.waiter; this.waiter = undefined; w(channel); } else this.accepted.push(channel);
    } catch (error) {
      this.pending.delete(socket);
      if (!socket.destroyed) { try { writeLine(socket, errorLine(error, 'ok')); } catch { /* peer gone */ } socket.end(); }
      if (mapping) unmap(mapping);
      if (this.listenerCount('error') > 0) this.emit('error', error);
    }
  }

  /** The next incoming channel, or undefined once the listener is closed. */
  acceptNext(): Promise<Channel | undefined> {
    const ready = this.accepted.shift();
    if (ready) return Promise.resolve(ready);
    if (this.closed) return Promise.resolve(undefined);
    return new Promise((resolve) => { this.waiter = resolve; });
  }

  [Symbol.asyncIterator](): AsyncIterator<Channel> {
    return {
      next: async () => {
        const c = await this.acceptNext();
        return c ? { value: c, done: false } : { value: undefined, done: true };
      },
      return: async () => ({ value: undefined, done: true }),
    };
  }

  /** Stops accepting. Channels already handed out stay open; ones not yet taken are closed. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.pending) s.destroy();
    for (const c of this.accepted.splice(0)) await c.close();
    if (this.waiter) { const w = this.waiter; this.waiter = undefined; w(undefined); }
    // net.Server.close() stops listening at once, but its callback waits for every accepted socket to end:
    // channels handed out stay open (the contract), so do not wait for them.
    this.server.close();
  }
}

const versionText = (v: number) => `${v >>> 16}.${v & 0xffff}`;

/** Listens on a shared-memory endpoint URL. */
export async function listen(url: string, options: ListenOptions = {}): Promise<Listener> {
  const endpoint = parseShmUrl(url);
  const server = net.createServer({ allowHalfOpen: false, pauseOnConnect: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      reject(error.code === 'EADDRINUSE'
        ? new ShmbusError(ErrorCode.EXISTS, 'an endpoint already listens at this URL', { details: { url } })
        : new ShmbusError(ErrorCode.SYSCALL, 'cannot listen', { cause: error, details: { url } }));
    });
    server.listen({ path: endpoint.controlPath }, () => resolve());
  });
  return new Listener(endpoint, server, options);
}

/** Connects to a shared-memory endpoint URL. */
export async function connect(url: string, options: ConnectOptions = {}): Promise<Channel> {
  const endpoint = parseShmUrl(url);
  const timeout = options.timeout ?? DEFAULT_TIMEOUT;
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ path: endpoint.controlPath, allowHalfOpen: false });
    s.once('connect', () => { s.removeAllListeners('error'); s.on('error', () => {}); resolve(s); });
    s.once('error', (error: NodeJS.ErrnoException) => {
      reject(error.code === 'ECONNREFUSED' || error.code === 'ENOENT'
        ? new ShmbusError(ErrorCode.NOT_FOUND, 'nothing listens at this URL', { details: { url } })
        : new ShmbusError(ErrorCode.SYSCALL, 'cannot connect', { cause: error, details: { url } }));
    });
  });
  let mapping: Mapping | undefined;
  try {
    const mine = wakeLine(endpoint);
    writeLine(socket, { shmbus: PROTOCOL, version: LAYOUT_VERSION, pid: process.pid, wake: mine });
    const { message: reply } = await readLine(socket, timeout);
    if (reply.ok !== true) throw remoteError(reply, 'listener refused the connection');
    const engine = getEngine();
    try {
      const wake = peerWake(endpoint, reply.wake);
      wake.myParams = mine.params as Record<string, unknown>;
      const region = attachRegion(endpoint, reply);
      mapping = mapRegion(engine, region);
      const info = readSegment(engine, mapping.window, region.size);
      if (info.ringCount !== CHANNEL_RING_COUNT || info.capacity !== reply.capacity) {
        throw new CorruptError('segment geometry differs from the handshake', { ringCount: info.ringCount, capacity: info.capacity });
      }
      const capacity = info.capacity;
      const tx = new RingEnd(engine, mapping.window + ringOffset(RING_TO_LISTENER, capacity), capacity, 'producer');
      const rx = new RingEnd(engine, mapping.window + ringOffset(RING_TO_CONNECTOR, capacity), capacity, 'consumer');
      writeLine(socket, { attached: true });
      const channel = new Channel({ ...mapping, tx, rx, socket, endpoint, pendingBytes: Buffer.alloc(0), side: 'connector', wake });
      mapping = undefined;
      return channel;
    } catch (error) {
      if (!socket.destroyed) writeLine(socket, errorLine(error, 'attached'));
      throw error;
    }
  } catch (error) {
    if (mapping) unmap(mapping);
    socket.destroy();
    if (error instanceof ShmbusError) throw error;
    throw new ClosedError('connection failed', { url, cause: String(error) });
  }
}

/** Shared-memory rings: the reference transport. */
export const shmTransport: Transport = {
  name: 'shm',
  schemes: ['shm', 'sysv', 'file'],
  listen,
  connect,
};
