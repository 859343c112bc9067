/**
 * listen / connect for shared-memory endpoints (shm://, sysv://, file://).
 *
 * The URL names an endpoint: a control socket in the abstract namespace (host/control.ts). Both sides first ask
 * the kernel who the other is (SO_PEERCRED) and refuse anyone they do not expect, before anything is read,
 * allocated or sent. For every admitted connection the listener then creates a fresh segment (two rings), maps
 * and formats it, and hands it over:
 *
 * - shm://   a memfd sealed against shrinking and growing, passed as a descriptor (SCM_RIGHTS): it never has a
 *            name, so nothing can be squatted, opened by others or left behind, and no peer can SIGBUS us.
 * - file://  an unnamed file (O_TMPFILE) in the URL's directory, passed the same way. Files cannot be sealed:
 *            a peer holding the descriptor can shrink it (see docs/security.md).
 * - sysv://  a private System V segment, marked for removal (IPC_RMID) right after the listener's own attach;
 *            Linux still lets the peer attach it by id, after checking it was made by the verified listener.
 *            For a peer of another uid the listener makes that uid the segment's owner (it stays the creator).
 *
 * So even SIGKILL of either side at any step leaves nothing in /dev/shm, on disk or in the kernel's tables.
 * Work before authentication is bounded: handshakes in progress and open connections are capped per listener,
 * and the whole handshake has one deadline on each side.
 */
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { CHANNEL_RING_COUNT, RING_TO_CONNECTOR, RING_TO_LISTENER, LAYOUT_VERSION, LAYOUT_VERSION_MAJOR, RING_MAX_CAPACITY, RING_MIN_CAPACITY, ringOffset, segmentBytes } from '../assembly/layout.js';
import { getEngine, type Engine } from '../host/engine.js';
import { Region } from '../host/region.js';
import { RingEnd } from '../host/ring.js';
import { formatSegment, readSegment } from '../host/segment.js';
import { Channel } from '../host/channel.js';
import {
  PROTOCOL, readLine, writeLine, remoteError, errorLine, credentialsOf, checkConnector, checkListener, parseAllow,
  receivePassedFd, sendPassedFd, type PeerPolicy,
} from '../host/control.js';
import { parseShmUrl, type ShmEndpoint } from '../host/url.js';
import type { PeerCredentials } from '../host/peer.js';
import { processStartTime } from '../host/sys/proc.js';
import { ownIdentity } from '../host/sys/socket.js';
import { mechanismFor } from '../host/wake/index.js';
import type { WakeParts } from '../host/channel.js';
import {
  BadArgumentError, ClosedError, CorruptError, ErrorCode, HandshakeError, ShmbusError, TimeoutError, VersionMismatchError,
} from '../host/errors.js';

import type { Transport, ConnectOptions, ListenOptions } from './contract.js';
import { ListenerBase } from './base.js';

const DEFAULT_TIMEOUT = 5000;
const DEFAULT_MAX_PENDING = 64;
const DEFAULT_MAX_CONNECTIONS = 1024;

/** The kind of segment each scheme hands over. */
const KIND = { shm: 'memfd', sysv: 'sysv', file: 'file' } as const;

/**
 * Test hook: with SHMBUS_TEST_STOP_AT=<side>:<step> in the environment, the handshake prints `step <side>:<step>`
 * on stdout when it reaches that step and goes no further, so a test can SIGKILL the process at exactly that
 * point. Read once; without it the hook costs one comparison per step.
 */
const STOP_AT = process.env.SHMBUS_TEST_STOP_AT;
function reached(side: 'listener' | 'connector', step: number): Promise<void> | undefined {
  if (STOP_AT === undefined || STOP_AT !== `${side}:${step}`) return undefined;
  fs.writeSync(1, `step ${side}:${step}\n`);
  return new Promise(() => {});
}

/** Milliseconds left until `deadline`, or a TIMEOUT error once it passed: one deadline covers every step. */
function left(deadline: number, timeoutMs: number): number {
  const ms = deadline - Date.now();
  if (ms <= 0) throw new TimeoutError('handshake timed out', { timeoutMs });
  return ms;
}

/** A mapped segment plus the window it occupies; undone in reverse order on any failure. */
interface Mapping { engine: Engine; region: Region; window: number; windowSize: number }

/** Maps `region` into a fresh window of the engine's memory. On failure the region is closed too (removed if we
 * own it), so a caller never has to remember it: nothing made for a failed setup outlives it. */
function mapRegion(engine: Engine, region: Region): Mapping {
  try {
    const windowSize = region.size;
    const window = engine.allocWindow(windowSize);
    try {
      region.mapAt(engine.address(window));
    } catch (error) {
      engine.freeWindow(window, windowSize);
      throw error;
    }
    return { engine, region, window, windowSize };
  } catch (error) {
    try { region.close(); } catch { /* the first failure is the one to report */ }
    throw error;
  }
}

function unmap(m: Mapping): void {
  try {
    m.region.unmapAt(m.engine.address(m.window));
    m.engine.freeWindow(m.window, m.windowSize);
  } finally {
    m.region.close();
  }
}

/**
 * A fresh segment for one connection with the verified peer `cred`. Only `sysv` has a name, and only until
 * `seal` below: memfd and unnamed files never have one.
 */
function createRegion(endpoint: ShmEndpoint, size: number, cred: PeerCredentials): Region {
  const mode = endpoint.perm;
  switch (endpoint.scheme) {
    case 'shm': return Region.createMemfd(`shmbus.${endpoint.name}`.slice(0, 200), { size, mode });
    case 'file': return Region.createAnonymousFile(path.dirname(endpoint.name), { size, mode });
    case 'sysv': {
      const region = Region.createSysV('private', { size, mode });
      try {
        if (cred.uid !== ownIdentity().uid && cred.uid !== 0) region.grantTo(cred.uid, cred.gid);
      } catch (error) {
        region.close();
        throw error;
      }
      return region;
    }
  }
}

/** What a side says about how it sleeps: its mechanism's name and what a peer needs to ring it. */
function wakeLine(endpoint: ShmEndpoint): Record<string, unknown> {
  const mechanism = mechanismFor(endpoint.wake, endpoint.url);
  return { mode: mechanism.name, params: mechanism.params() };
}

/**
 * How to ring the peer, from its handshake line: its mechanism and that mechanism's parameters, with the
 * peer's verified credentials, which those parameters must name (checked by the mechanism).
 */
function peerWake(endpoint: ShmEndpoint, line: unknown, cred: PeerCredentials): WakeParts {
  if (typeof line !== 'object' || line === null || typeof (line as { mode?: unknown }).mode !== 'string') {
    throw new HandshakeError('peer did not say how to wake it');
  }
  const { mode, params } = line as { mode: string; params?: unknown };
  const peer = mechanismFor(mode, endpoint.url);
  const peerParams = typeof params === 'object' && params !== null ? params as Record<string, unknown> : {};
  // Whatever the peer names for us to ring (a pid, a semaphore, a queue) must be its own: refused here, before
  // anything is allocated for it.
  peer.checkPeer(peerParams, cred);
  return { mine: mechanismFor(endpoint.wake, endpoint.url), peer, peerParams, peerCred: cred };
}

/** The listener's reply, checked before anything is attached: the kind the URL's scheme means and a geometry
 * within the ring limits whose size follows from it (a peer cannot make us map more than that). */
function checkReply(endpoint: ShmEndpoint, reply: Record<string, unknown>): { capacity: number; size: number } {
  const { capacity, size, kind } = reply;
  if (kind !== KIND[endpoint.scheme]) throw new HandshakeError('listener offers another kind of segment', { details: { kind: String(kind), expected: KIND[endpoint.scheme] } });
  if (typeof capacity !== 'number' || !Number.isInteger(capacity) || capacity < RING_MIN_CAPACITY || capacity > RING_MAX_CAPACITY || (capacity & (capacity - 1)) !== 0) {
    throw new HandshakeError('listener announced a bad ring capacity', { details: { capacity: String(capacity) } });
  }
  const expected = segmentBytes(CHANNEL_RING_COUNT, capacity);
  if (size !== expected) throw new HandshakeError('listener announced a segment size that does not fit its rings', { details: { size: String(size), expected } });
  return { capacity, size: expected };
}

/** Attaches the segment the verified listener `cred` made, after checking it is that one (host/region.ts). */
async function receiveRegion(endpoint: ShmEndpoint, socket: net.Socket, reply: Record<string, unknown>, size: number, cred: PeerCredentials, deadline: number, timeout: number): Promise<Region> {
  if (endpoint.scheme === 'sysv') {
    if (typeof reply.shmid !== 'number') throw new HandshakeError('listener sent no shmid');
    return Region.attachPeerSysV(reply.shmid, { size, uid: cred.uid, pid: cred.pid });
  }
  const fd = await receivePassedFd(socket, left(deadline, timeout), () => writeLine(socket, { fd: true }));
  return Region.fromPeerFd(fd, endpoint.scheme === 'shm' ? 'memfd' : 'file', { size, uid: cred.uid });
}

function policyOf(endpoint: ShmEndpoint, options: ListenOptions): PeerPolicy {
  if (options.allow === undefined) return endpoint.allow;
  try {
    return parseAllow(options.allow);
  } catch (cause) {
    throw new BadArgumentError((cause as Error).message, { allow: options.allow });
  }
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) throw new BadArgumentError(`${name} must be a positive integer`, { [name]: value });
  return value;
}

/** A listening endpoint: an async iterable of incoming channels (the accept queue is transports/base.ts's
 * ListenerBase). Emits 'connection' and 'error' (a connector refused or a handshake that failed; the listener goes
 * on). */
export class Listener extends ListenerBase<Channel> {
  private readonly server: net.Server;
  private readonly endpoint: ShmEndpoint;
  private readonly handshakeTimeout: number;
  private readonly policy: PeerPolicy;
  private readonly maxPending: number;
  private readonly maxConnections: number;
  /** Sockets still in their handshake. */
  private readonly pending = new Set<net.Socket>();
  /** Channels this listener made that are not closed yet (maxConnections counts them). */
  private live = 0;

  /** @internal use listen() */
  constructor(endpoint: ShmEndpoint, server: net.Server, options: ListenOptions) {
    super(endpoint.url);
    this.endpoint = endpoint;
    this.server = server;
    this.handshakeTimeout = positive(options.handshakeTimeout, DEFAULT_TIMEOUT, 'handshakeTimeout');
    this.policy = policyOf(endpoint, options);
    this.maxPending = positive(options.maxPending, DEFAULT_MAX_PENDING, 'maxPending');
    this.maxConnections = positive(options.maxConnections, DEFAULT_MAX_CONNECTIONS, 'maxConnections');
    server.on('connection', (socket) => this.admit(socket));
  }

  /** Handshakes in progress and connections open now. */
  get load(): { pending: number; connections: number } {
    return { pending: this.pending.size, connections: this.live };
  }

  /** Everything before the handshake, all synchronous and allocation-free: who it is, then the caps. */
  private admit(socket: net.Socket): void {
    // A connector that dies mid-handshake makes our writes fail; readLine and the Channel report it.
    socket.on('error', () => {});
    if (this.closed) { socket.destroy(); return; }
    let cred: PeerCredentials;
    try {
      cred = credentialsOf(socket);
      checkConnector(socket, cred, this.policy);
    } catch (error) {
      return this.refuse(socket, error);
    }
    // Over the cap nothing is read or written: the connector just sees the socket close.
    if (this.pending.size >= this.maxPending) { socket.destroy(); return; }
    if (this.live + this.pending.size >= this.maxConnections) {
      return this.refuse(socket, new ShmbusError(ErrorCode.LIMIT, 'listener has as many connections as it allows', { details: { maxConnections: this.maxConnections } }));
    }
    void this.accept(socket, cred);
  }

  private refuse(socket: net.Socket, error: unknown): void {
    if (!socket.destroyed) { try { writeLine(socket, errorLine(error, 'ok')); } catch { /* peer gone */ } socket.end(); }
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }

  private async accept(socket: net.Socket, cred: PeerCredentials): Promise<void> {
    const timeout = this.handshakeTimeout;
    const deadline = Date.now() + timeout;
    // Every wait below is a read bounded by what is left of this one deadline.
    this.pending.add(socket);
    let mapping: Mapping | undefined;
    try {
      await reached('listener', 1);
      const { message: hello } = await readLine(socket, left(deadline, timeout));
      if (hello.shmbus !== PROTOCOL || typeof hello.version !== 'number') throw new HandshakeError('connector does not speak the shmbus protocol');
      if (hello.version >>> 16 !== LAYOUT_VERSION_MAJOR) {
        throw new VersionMismatchError('connector layout', versionText(hello.version), versionText(LAYOUT_VERSION));
      }
      const wake = peerWake(this.endpoint, hello.wake, cred);
      const mine = wakeLine(this.endpoint);
      wake.myParams = mine.params as Record<string, unknown>;
      const engine = getEngine();
      const capacity = this.endpoint.size;
      const size = segmentBytes(CHANNEL_RING_COUNT, capacity);
      const region = createRegion(this.endpoint, size, cred);
      mapping = mapRegion(engine, region);
      // A System V segment loses its key now, right after our own attach: it dies with the last detach whatever
      // happens next, and the peer can still attach it by id (Linux).
      if (region.kind === 'sysv') region.remove();
      formatSegment(engine, mapping.window, CHANNEL_RING_COUNT, capacity, process.pid, processStartTime(process.pid) ?? 0n);
      await reached('listener', 2);
      writeLine(socket, { ok: true, kind: region.kind, shmid: region.kind === 'sysv' ? region.shmid : undefined, size, capacity, wake: mine });
      await reached('listener', 3);
      if (region.fd >= 0) {
        const { message: ask, rest } = await readLine(socket, left(deadline, timeout));
        if (ask.fd !== true) throw remoteError(ask, 'connector did not ask for the segment');
        if (rest.length !== 0) throw new HandshakeError('connector sent more than its request for the segment');
        sendPassedFd(socket, region.fd);
        await reached('listener', 4);
      }
      const { message: ack, rest } = await readLine(socket, left(deadline, timeout));
      if (ack.attached !== true) throw remoteError(ack, 'connector could not attach');
      await reached('listener', 5);
      const tx = new RingEnd(engine, mapping.window + ringOffset(RING_TO_CONNECTOR, capacity), capacity, 'producer');
      const rx = new RingEnd(engine, mapping.window + ringOffset(RING_TO_LISTENER, capacity), capacity, 'consumer');
      this.pending.delete(socket);
      const channel = new Channel({ ...mapping, tx, rx, socket, endpoint: this.endpoint, pendingBytes: rest, side: 'listener', wake });
      mapping = undefined;
      this.live++;
      channel.once('close', () => { this.live--; });
      this.offer(channel);
    } catch (error) {
      this.pending.delete(socket);
      if (mapping) { try { unmap(mapping); } catch { /* report the handshake's failure */ } }
      this.refuse(socket, error);
    }
  }

  /** Stops the handshakes in progress and the server (ListenerBase.close closes channels not yet taken). */
  protected async stop(): Promise<void> {
    for (const socket of this.pending) socket.destroy();
    // net.Server.close() stops listening at once, but its callback waits for every accepted socket to end:
    // channels handed out stay open (the contract), so do not wait for them.
    this.server.close();
  }
}

const versionText = (v: number) => `${v >>> 16}.${v & 0xffff}`;

/** Listens on a shared-memory endpoint URL. Fails with ERR_SHMBUS_EXISTS when anyone, of any uid, already
 * listens there (the abstract namespace has no owners: see docs/security.md). */
export async function listen(url: string, options: ListenOptions = {}): Promise<Listener> {
  const endpoint = parseShmUrl(url);
  // Options are checked before the name is taken.
  policyOf(endpoint, options);
  const server = net.createServer({ allowHalfOpen: false, pauseOnConnect: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      reject(error.code === 'EADDRINUSE'
        ? new ShmbusError(ErrorCode.EXISTS, 'an endpoint already listens at this URL', { details: { url } })
        : new ShmbusError(ErrorCode.SYSCALL, 'cannot listen', { cause: error, details: { url } }));
    });
    server.listen({ path: endpoint.controlPath }, () => resolve());
  });
  try {
    return new Listener(endpoint, server, options);
  } catch (error) {
    server.close();
    throw error;
  }
}

function connectSocket(endpoint: ShmEndpoint, url: string, ms: number): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ path: endpoint.controlPath, allowHalfOpen: false });
    const timer = setTimeout(() => { s.destroy(); reject(new TimeoutError('connect timed out', { url, timeoutMs: ms })); }, ms);
    s.once('connect', () => { clearTimeout(timer); s.removeAllListeners('error'); s.on('error', () => {}); resolve(s); });
    s.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(error.code === 'ECONNREFUSED' || error.code === 'ENOENT'
        ? new ShmbusError(ErrorCode.NOT_FOUND, 'nothing listens at this URL', { details: { url } })
        : error.code === 'EAGAIN'
          ? new ShmbusError(ErrorCode.LIMIT, 'the listener has too many connections waiting', { cause: error, details: { url } })
          : new ShmbusError(ErrorCode.SYSCALL, 'cannot connect', { cause: error, details: { url } }));
    });
  });
}

/** Connects to a shared-memory endpoint URL. The listener must run as `options.expectUid` (or the URL's
 * `expectUid`; by default our own uid or root): anyone else gets not a single byte from us. */
export async function connect(url: string, options: ConnectOptions = {}): Promise<Channel> {
  const endpoint = parseShmUrl(url);
  const timeout = positive(options.timeout, DEFAULT_TIMEOUT, 'timeout');
  const expectUid = options.expectUid ?? endpoint.expectUid;
  if (expectUid !== undefined && (!Number.isInteger(expectUid) || expectUid < 0 || expectUid > 0xfffffffe)) {
    throw new BadArgumentError('expectUid must be a uid', { expectUid });
  }
  const deadline = Date.now() + timeout;
  const socket = await connectSocket(endpoint, url, timeout);
  let mapping: Mapping | undefined;
  let region: Region | undefined;
  try {
    const cred = credentialsOf(socket);
    checkListener(cred, expectUid);
    await reached('connector', 1);
    const mine = wakeLine(endpoint);
    writeLine(socket, { shmbus: PROTOCOL, version: LAYOUT_VERSION, pid: process.pid, wake: mine });
    await reached('connector', 2);
    const { message: reply, rest } = await readLine(socket, left(deadline, timeout));
    if (reply.ok !== true) throw remoteError(reply, 'listener refused the connection');
    try {
      if (rest.length !== 0) throw new HandshakeError('listener sent more than its reply');
      const { capacity, size } = checkReply(endpoint, reply);
      const wake = peerWake(endpoint, reply.wake, cred);
      wake.myParams = mine.params as Record<string, unknown>;
      await reached('connector', 3);
      region = await receiveRegion(endpoint, socket, reply, size, cred, deadline, timeout);
      await reached('connector', 4);
      const engine = getEngine();
      const r = region;
      region = undefined;
      mapping = mapRegion(engine, r);
      const info = readSegment(engine, mapping.window, r.size);
      if (info.ringCount !== CHANNEL_RING_COUNT || info.capacity !== capacity) {
        throw new CorruptError('segment geometry differs from the handshake', { ringCount: info.ringCount, capacity: info.capacity });
      }
      await reached('connector', 5);
      const tx = new RingEnd(engine, mapping.window + ringOffset(RING_TO_LISTENER, capacity), capacity, 'producer');
      const rx = new RingEnd(engine, mapping.window + ringOffset(RING_TO_CONNECTOR, capacity), capacity, 'consumer');
      left(deadline, timeout);
      writeLine(socket, { attached: true });
      const channel = new Channel({ ...mapping, tx, rx, socket, endpoint, pendingBytes: Buffer.alloc(0), side: 'connector', wake });
      mapping = undefined;
      await reached('connector', 6);
      return channel;
    } catch (error) {
      if (!socket.destroyed) writeLine(socket, errorLine(error, 'attached'));
      throw error;
    }
  } catch (error) {
    if (mapping) { try { unmap(mapping); } catch { /* report the handshake's failure */ } }
    if (region) { try { region.close(); } catch { /* idem */ } }
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
