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
 * A connector that already knows this listener process brings a segment of its own instead (shm:// only; see
 * connect.ts and control.ts): the listener checks it as a connector checks ours and maps it.
 *
 * So even SIGKILL of either side at any step leaves nothing in /dev/shm, on disk or in the kernel's tables.
 * Work before authentication is bounded: handshakes in progress and open connections are capped per listener,
 * and the whole handshake has one deadline on each side.
 */
import net from 'node:net';
import { threadId } from 'node:worker_threads';
import path from 'node:path';
import { CHANNEL_RING_COUNT, LAYOUT_VERSION, LAYOUT_VERSION_MAJOR, maxPayload, segmentBytes } from '../../assembly/layout.js';
import { Region } from '../../host/region.js';
import { credentialsOf, checkConnector, parseAllow, type PeerPolicy } from '../../host/control.js';
import { parseShmUrl, type ShmEndpoint } from '../../host/url.js';
import type { PeerCredentials } from '../../host/peer.js';
import { ownIdentity } from '../../host/sys/socket.js';
import { BadArgumentError, ErrorCode, HandshakeError, ShmbusError, VersionMismatchError } from '../../host/errors.js';
import type { ListenOptions } from '../contract.js';
import { ListenerBase, maxConnectionsOf, type Turn } from '../base.js';
import { trace, traceError } from '../../host/trace.js';
import { Channel } from './channel.js';
import { SegmentPool } from './pool.js';
import { PROTOCOL, readLine, takeWaitingLineWithFds, receiveLineWithFds, writeLine, remoteError, errorLine, sendPassedFd, sendLineWithFd } from './control.js';
import { closeFd } from '../../host/sys/shm.js';
import {
  DEFAULT_TIMEOUT, DEFAULT_CHANNEL_RING_SIZE, INITIAL_RING_SIZE, reserveFor, peerGrows, ownMaxMessage, agreedMaxMessage, reached, left, mapRegion, openRings, unmap,
  wakeLine, unreserveWake, peerWake, peerInThisThread, positive, versionText, checkGeometry, checkPeerSegment, createMemfdSegment, formatChannelSegment, type Mapping,
} from './handshake.js';

const DEFAULT_MAX_PENDING = 64;


/** Spare segments a shm:// listener keeps made ahead (pool.ts): enough for a short burst of opens; each holds the
 * pages its rings start with (132 KiB of /dev/shm with the default options). */
const SPARE_SEGMENTS = 4;

/**
 * A fresh segment for one connection with the verified peer `cred`. Only `sysv` has a name, and only until
 * `seal` below: memfd and unnamed files never have one.
 */
function createRegion(endpoint: ShmEndpoint, capacity: number, initial: number, cred: PeerCredentials): Region {
  const mode = endpoint.perm;
  const size = segmentBytes(CHANNEL_RING_COUNT, capacity);
  switch (endpoint.scheme) {
    case 'shm': return createMemfdSegment(endpoint, capacity, initial);
    case 'file': return Region.createAnonymousFile(path.dirname(endpoint.name), { size, mode, reserve: reserveFor(capacity, initial) });
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

function policyOf(endpoint: ShmEndpoint, options: ListenOptions): PeerPolicy {
  if (options.allow === undefined) return endpoint.allow;
  try {
    return parseAllow(options.allow);
  } catch (cause) {
    throw new BadArgumentError((cause as Error).message, { allow: options.allow });
  }
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
  /** Sockets still in their handshake. */
  private readonly pending = new Set<net.Socket>();
  /** Refused sockets kept open until the connector has read why (refuse): at most maxPending of them. */
  private readonly refusing = new Set<net.Socket>();
  /** shm:// only: spare segments of the geometry a connector that grows its rings gets (the usual one). */
  private readonly pool: SegmentPool | undefined;
  /** The initial ring capacity the pool's segments are made for. */
  private readonly poolInitial: number;

  /** @internal use listen() */
  constructor(endpoint: ShmEndpoint, server: net.Server, options: ListenOptions) {
    super(endpoint.url, maxConnectionsOf(options));
    this.endpoint = endpoint;
    this.server = server;
    this.handshakeTimeout = positive(options.handshakeTimeout, DEFAULT_TIMEOUT, 'handshakeTimeout');
    this.policy = policyOf(endpoint, options);
    this.maxPending = positive(options.maxPending, DEFAULT_MAX_PENDING, 'maxPending');
    server.on('connection', (socket) => this.admit(socket));
    const capacity = endpoint.sizeGiven ? endpoint.size : DEFAULT_CHANNEL_RING_SIZE;
    this.poolInitial = Math.min(INITIAL_RING_SIZE, capacity);
    if (endpoint.scheme === 'shm') {
      this.pool = new SegmentPool(() => createMemfdSegment(endpoint, capacity, this.poolInitial), SPARE_SEGMENTS, () => this.pending.size === 0);
    }
  }

  /** Segments made ahead for the next connections (pool.ts): memfds this listener holds that no connection has. */
  get spareSegments(): number {
    return this.pool?.size ?? 0;
  }

  /** Handshakes in progress and connections open now. */
  get load(): { pending: number; connections: number } {
    return { pending: this.pending.size, connections: this.connections };
  }

  /** Everything before the handshake, all synchronous and allocation-free: who it is, then the caps. */
  private admit(socket: net.Socket): void {
    // A connector that dies mid-handshake makes our writes fail; readLine and the Channel report it.
    socket.on('error', () => {});
    if (this.closed) { socket.destroy(); return; }
    let cred: PeerCredentials | undefined;
    try {
      cred = credentialsOf(socket);
      checkConnector(socket, cred, this.policy);
    } catch (error) {
      return this.refuse(socket, error, cred);
    }
    // Over the cap nothing is read or written: the connector just sees the socket close.
    if (this.pending.size >= this.maxPending) {
      if (trace.enabled) trace('listen %s: closed a connection of pid %d uid %d: %d handshakes in progress (maxPending)', this.url, cred.pid, cred.uid, this.pending.size);
      socket.destroy();
      return;
    }
    if (this.full(this.pending.size)) {
      return this.refuse(socket, this.limitError(), cred);
    }
    void this.handshake(socket, cred);
  }

  /** Tells the connector `who` (when the kernel said) why it is refused, and reports it (trace, 'error' listeners). */
  private refuse(socket: net.Socket, error: unknown, who: PeerCredentials | undefined): void {
    if (trace.enabled) trace('listen %s: refused pid %s uid %s: %s', this.url, who?.pid ?? '?', who?.uid ?? '?', traceError(error));
    if (this.refusing.size >= this.maxPending) {
      // As many refused connectors as handshakes may be in progress are kept until they read why; past that (a
      // user who is not allowed, connecting again and again without hanging up) the socket is closed at once.
      socket.destroy();
    } else if (!socket.destroyed) {
      try { writeLine(socket, errorLine(error, 'ok')); } catch { /* peer gone */ }
      socket.end();
      // Reads (and drops) what the connector still sends until it hangs up, which closes the socket: it may never
      // have read (refused on arrival, or its hello taken directly), and closing with unread bytes would reset the
      // connection, which can cost the connector the error line. One that never hangs up is cut off after the
      // handshake timeout.
      socket.resume();
      const timer = setTimeout(() => socket.destroy(), this.handshakeTimeout);
      timer.unref();
      this.refusing.add(socket);
      socket.once('close', () => {
        clearTimeout(timer);
        this.refusing.delete(socket);
      });
    }
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }

  private async handshake(socket: net.Socket, cred: PeerCredentials): Promise<void> {
    const timeout = this.handshakeTimeout;
    const deadline = Date.now() + timeout;
    // Every wait below is a read bounded by what is left of this one deadline.
    this.pending.add(socket);
    let mapping: Mapping | undefined;
    /** Descriptors that came with the hello and are not closed or wrapped in a Region yet. */
    let fds: number[] = [];
    /** This connection's place among its process's connections (from the hello on; ListenerBase.takeTurn). */
    let turn: Turn<Channel> | undefined;
    /** How we sleep, as our reply says it (its wake reservation is given back if no channel takes it). */
    let mine: Record<string, unknown> | undefined;
    try {
      await reached('listener', 1);
      // Usually already there: a connector sends its hello right after connecting.
      const got = takeWaitingLineWithFds(socket) ?? await receiveLineWithFds(socket, left(deadline, timeout), () => {});
      const hello = got.message;
      fds = got.fds;
      // A pid of 0 is a connector in a pid namespace we cannot see: unrelated processes could share it.
      if (cred.pid > 0) turn = this.takeTurn(cred.pid);
      if (hello.shmbus !== PROTOCOL || typeof hello.version !== 'number') throw new HandshakeError('connector does not speak the shmbus protocol');
      if (hello.version >>> 16 !== LAYOUT_VERSION_MAJOR) {
        throw new VersionMismatchError('connector layout', versionText(hello.version), versionText(LAYOUT_VERSION));
      }
      const offered = hello.segment !== undefined;
      if (fds.length !== (offered ? 1 : 0)) throw new HandshakeError('connector sent another number of descriptors than its hello says', { details: { fds: fds.length } });
      const wake = peerWake(this.endpoint, hello.wake, cred);
      mine = wakeLine(this.endpoint);
      wake.myParams = mine.params as Record<string, unknown>;
      const capacity = this.endpoint.sizeGiven ? this.endpoint.size : DEFAULT_CHANNEL_RING_SIZE;
      const ownMax = ownMaxMessage(this.endpoint);
      if (offered) {
        // The connector's own segment (connect.ts connectWithSegment): checked as a connector checks ours.
        const theirs = this.takeConnectorSegment(hello.segment, fds.pop()!, capacity, cred);
        mapping = theirs.mapping;
        const { tx, rx } = openRings(mapping, theirs.capacity, 'listener', theirs.initial);
        await reached('listener', 6);
        // The channel, with whatever the connector already sent in its ring; then the verdict, once nothing can fail.
        const channel = new Channel({
          ...mapping, tx, rx, socket, endpoint: this.endpoint, pendingBytes: got.rest, side: 'listener', wake, peerRecords: hello.records === true,
          maxMessage: agreedMaxMessage(ownMax, hello.maxMessage, maxPayload(theirs.capacity)), peerInThisThread: peerInThisThread(cred, hello),
        });
        writeLine(socket, { ok: true, took: true, wake: mine, maxMessage: ownMax, records: true });
        this.opened(channel, socket, mapping, turn);
        mapping = undefined;
        return;
      }
      const maxMessage = agreedMaxMessage(ownMax, hello.maxMessage, maxPayload(capacity));
      const size = segmentBytes(CHANNEL_RING_COUNT, capacity);
      // Rings start small and grow in band when the connector understands it (layout 1.2): only their first
      // INITIAL_RING_SIZE bytes are reserved now.
      const initial = peerGrows(hello.version) ? Math.min(INITIAL_RING_SIZE, capacity) : capacity;
      // A spare made ahead (pool.ts) when it has this geometry, else one made now.
      const region = (initial === this.poolInitial ? this.pool?.take() : undefined) ?? createRegion(this.endpoint, capacity, initial, cred);
      mapping = mapRegion(region);
      // A System V segment loses its key now, right after our own attach: it dies with the last detach whatever
      // happens next, and the peer can still attach it by id (Linux).
      if (region.kind === 'sysv') region.remove();
      formatChannelSegment(mapping, capacity);
      // The ring ends are opened now, in the same turn as the engine was chosen, so its handles are ours.
      const { tx, rx } = openRings(mapping, capacity, 'listener', initial);
      await reached('listener', 2);
      // takesSegments: the connector may bring its own segment next time (shm:// only).
      const reply = {
        ok: true, kind: region.kind, shmid: region.kind === 'sysv' ? region.shmid : undefined, size, capacity, initialCapacity: initial, wake: mine, maxMessage: ownMax, records: true, thread: threadId,
        takesSegments: this.endpoint.scheme === 'shm' ? true : undefined,
      };
      const fdWithReply = region.fd >= 0 && hello.fdWithReply === true;
      // The descriptor goes with the reply, in one message: no round trip to ask for it.
      if (fdWithReply) sendLineWithFd(socket, { ...reply, fdWithReply: true }, region.fd);
      else writeLine(socket, reply);
      await reached('listener', 3);
      if (region.fd >= 0 && !fdWithReply) {
        // An older connector asks for the descriptor first.
        const { message: ask, rest } = await readLine(socket, left(deadline, timeout));
        if (ask.fd !== true) throw remoteError(ask, 'connector did not ask for the segment');
        if (rest.length !== 0) throw new HandshakeError('connector sent more than its request for the segment');
        sendPassedFd(socket, region.fd);
      }
      if (region.fd >= 0) await reached('listener', 4);
      // A connector in another process maps and builds its side now (~200 µs): time to make the next connection's
      // segment if none is spare, which back-to-back connections never leave the idle refill (pool.ts) time to do.
      // (One in this process would wait for it instead.)
      if (fdWithReply && cred.pid !== process.pid) this.pool?.fillWhileWaiting();
      const { message: ack, rest } = await readLine(socket, left(deadline, timeout));
      if (ack.attached !== true) throw remoteError(ack, 'connector could not attach');
      await reached('listener', 5);
      this.opened(new Channel({ ...mapping, tx, rx, socket, endpoint: this.endpoint, pendingBytes: rest, side: 'listener', wake, maxMessage, peerRecords: hello.records === true,
        peerInThisThread: peerInThisThread(cred, hello) }), socket, mapping, turn);
      mapping = undefined;
    } catch (error) {
      this.pending.delete(socket);
      if (turn !== undefined) this.settle(turn, undefined);
      if (mine !== undefined) unreserveWake(this.endpoint, mine);
      if (mapping) { try { unmap(mapping); } catch { /* report the handshake's failure */ } }
      for (const fd of fds) { try { closeFd(fd); } catch { /* idem */ } }
      this.refuse(socket, error, cred);
    }
  }

  /**
   * Maps the segment a connector made for this connection (its hello's `segment`, with descriptor `fd`), after
   * checking it: a memfd of the connector's uid sealed against resizing (so it cannot SIGBUS us: host/region.ts
   * fromPeerFd), of the size its rings need, rings no larger than this endpoint's `capacity`, its header saying so.
   * Takes `fd` over. Returns the mapping and the rings' geometry.
   */
  private takeConnectorSegment(segment: unknown, fd: number, capacity: number, cred: PeerCredentials): { mapping: Mapping; capacity: number; initial: number } {
    let geometry: { capacity: number; initial: number; size: number };
    try {
      if (this.endpoint.scheme !== 'shm') throw new HandshakeError('this endpoint makes the segments of its connections', { details: { scheme: this.endpoint.scheme } });
      const announced = (typeof segment === 'object' && segment !== null ? segment : {}) as { capacity?: unknown; initialCapacity?: unknown };
      geometry = checkGeometry(announced.capacity, announced.initialCapacity, 'connector');
      // Rings up to this endpoint's size: the connector pays for its segment, we only map it.
      if (geometry.capacity > capacity) {
        throw new HandshakeError('connector brought larger rings than this endpoint allows', { details: { capacity: geometry.capacity, allowed: capacity } });
      }
    } catch (error) {
      try { closeFd(fd); } catch { /* report the first failure */ }
      throw error;
    }
    // Each closes what it was given on failure.
    const mapping = mapRegion(Region.fromPeerFd(fd, 'memfd', { size: geometry.size, uid: cred.uid }));
    try {
      checkPeerSegment(mapping, geometry.capacity);
    } catch (error) {
      unmap(mapping);
      throw error;
    }
    return { mapping, capacity: geometry.capacity, initial: geometry.initial };
  }

  /** A connection whose handshake is done: counted, its descriptor closed, and offered to acceptNext() in its turn. */
  private opened(channel: Channel, socket: net.Socket, mapping: Mapping, turn: Turn<Channel> | undefined): void {
    this.pending.delete(socket);
    // Both sides have mapped the segment, which has no name: its descriptor is not needed any more (the mappings
    // keep the memory, and unmapping works without it), so an open connection holds one descriptor, its socket.
    mapping.mapped.region.close();
    this.track(channel);
    if (turn === undefined) this.offer(channel);
    else this.settle(turn, channel);
    // Off this connection's path: the next one finds its segment made.
    this.pool?.refill();
  }

  /** Stops the handshakes in progress and the server (ListenerBase.close closes channels not yet taken). */
  protected async stop(): Promise<void> {
    for (const socket of this.pending) socket.destroy();
    for (const socket of this.refusing) socket.destroy();
    this.pool?.close();
    // net.Server.close() stops listening at once, but its callback waits for every accepted socket to end:
    // channels handed out stay open (the contract), so do not wait for them.
    this.server.close();
  }
}

/** Listens on a shared-memory endpoint URL. Fails with ERR_SHMBUS_EXISTS when anyone, of any uid, already
 * listens there (the abstract namespace has no owners: see docs/security.md). */
export async function listen(url: string, options: ListenOptions = {}): Promise<Listener> {
  const endpoint = parseShmUrl(url);
  // Options are checked before the name is taken.
  policyOf(endpoint, options);
  maxConnectionsOf(options);
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
