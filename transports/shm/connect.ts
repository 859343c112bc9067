/**
 * The connector's side of the shm handshake (the protocol: transports/shm/control.ts; the listener's side:
 * transports/shm/listener.ts).
 */
import net from 'node:net';
import { setImmediate as nextTurn } from 'node:timers/promises';
// The global `performance` is a lazy accessor on globalThis; the module binding is not.
import { performance } from 'node:perf_hooks';
import { threadId } from 'node:worker_threads';
import { LAYOUT_VERSION, maxPayload } from '../../assembly/layout.js';
import { Region } from '../../host/region.js';
import type { RingEnd } from '../../host/ring.js';
import { mechanismFor } from '../../host/wake/index.js';
import { trace } from '../../host/trace.js';
import { checkListener, pauseForRoom } from '../../host/control.js';
import { connectUnix, peerCredentials, sendBytes, sendFd } from '../../host/sys/socket.js';
import { parseShmUrl, type ShmEndpoint } from '../../host/url.js';
import type { PeerCredentials } from '../../host/peer.js';
import { BadArgumentError, ClosedError, Errno, ErrorCode, HandshakeError, peerText, ShmbusError, SystemError } from '../../host/errors.js';
import type { ConnectOptions } from '../contract.js';
import { Channel, YIELD_MS } from './channel.js';
import { PROTOCOL, writeLine, remoteError, errorLine, receivePassedFd, receiveLineWithFds } from './control.js';
import { closeFd } from '../../host/sys/shm.js';
import {
  DEFAULT_TIMEOUT, KIND, ownMaxMessage, agreedMaxMessage, reached, left, mapRegion, openRings, unmap, wakeLine, unreserveWake, peerWake, peerInThisThread, positive, checkGeometry,
  checkPeerSegment, createMemfdSegment, formatChannelSegment, type Mapping,
} from './handshake.js';

/** The listener's reply, checked before anything is attached: the kind the URL's scheme means and a geometry
 * within the ring limits whose size follows from it (a peer cannot make us map more than that). */
function checkReply(endpoint: ShmEndpoint, reply: Record<string, unknown>): { capacity: number; size: number; initial: number } {
  const { capacity, size, kind, initialCapacity } = reply;
  if (kind !== KIND[endpoint.scheme]) throw new HandshakeError('listener offers another kind of segment', { details: { kind: peerText(kind), expected: KIND[endpoint.scheme] } });
  // Layout 1.2: the rings start with initialCapacity data bytes and grow in band up to capacity (absent: they
  // never grow, as an older listener's).
  const geometry = checkGeometry(capacity, initialCapacity, 'listener');
  if (size !== geometry.size) throw new HandshakeError('listener announced a segment size that does not fit its rings', { details: { size: peerText(size), expected: geometry.size } });
  return geometry;
}

/**
 * Attaches the segment the verified listener `cred` made, after checking it is that one (host/region.ts).
 * `fds` are the descriptors that came with the reply: the segment's, when the reply says `fdWithReply`, else none
 * (an older listener sends it only when asked). Takes them over: each is closed or wrapped before this returns.
 */
async function receiveRegion(endpoint: ShmEndpoint, socket: net.Socket, reply: Record<string, unknown>, fds: number[], size: number, cred: PeerCredentials, deadline: number, timeout: number): Promise<Region> {
  const withReply = endpoint.scheme !== 'sysv' && reply.fdWithReply === true;
  if (fds.length !== (withReply ? 1 : 0)) throw new HandshakeError('listener sent another number of descriptors than its reply says', { details: { fds: fds.length } });
  if (endpoint.scheme === 'sysv') {
    if (typeof reply.shmid !== 'number') throw new HandshakeError('listener sent no shmid');
    return Region.attachPeerSysV(reply.shmid, { size, uid: cred.uid, pid: cred.pid });
  }
  const fd = withReply ? fds.pop()! : await receivePassedFd(socket, left(deadline, timeout), () => writeLine(socket, { fd: true }));
  return Region.fromPeerFd(fd, endpoint.scheme === 'shm' ? 'memfd' : 'file', { size, uid: cred.uid });
}

/**
 * The control socket, connected to a listener of the expected uid (its credentials as the kernel recorded them),
 * with the two system calls that finish at once (the kernel queues a Unix connect for the listener's accept), not
 * Node's net.connect, whose socket object costs more than the connect itself and whose 'connect' event waits a
 * turn of the event loop. The hello goes out on this descriptor before Node's socket is built around it, so the
 * listener works on it meanwhile. Undefined when the listener's accept queue is full (EAGAIN).
 */
function openControl(endpoint: ShmEndpoint, url: string, expectUid: number | undefined): { fd: number; cred: PeerCredentials } | undefined {
  let cred: PeerCredentials | undefined;
  let fd: number;
  try {
    // Before a byte is sent the kernel says who listens; anyone but the expected uid is refused (host/control.ts).
    fd = connectUnix(endpoint.controlPath, (candidate) => {
      cred = peerCredentials(candidate);
      checkListener(cred, expectUid);
    });
  } catch (error) {
    if (!(error instanceof SystemError) || error.syscall !== 'connect') throw error;
    if (error.errno === Errno.ECONNREFUSED || error.errno === Errno.ENOENT) {
      throw new ShmbusError(ErrorCode.NOT_FOUND, 'nothing listens at this URL', { details: { url } });
    }
    if (error.errno === Errno.EAGAIN) return undefined;
    throw new ShmbusError(ErrorCode.SYSCALL, 'cannot connect', { cause: error, details: { url } });
  }
  return { fd, cred: cred! };
}

/** openControl, waiting while the listener's accept queue is full (host/control.ts pauseForRoom), until the deadline. */
async function openControlWaiting(endpoint: ShmEndpoint, url: string, expectUid: number | undefined, deadline: number, timeout: number): Promise<{ fd: number; cred: PeerCredentials }> {
  for (let tries = 0; ; tries++) {
    const opened = openControl(endpoint, url, expectUid);
    if (opened !== undefined) return opened;
    await pauseForRoom(tries, url, deadline, timeout);
  }
}

/** The connector's last handshake line. */
const ATTACHED = Buffer.from(JSON.stringify({ attached: true }) + '\n');

/**
 * What a full handshake told this process about a shm:// listener in another process that takes a connector's own
 * segment (`takesSegments` in its reply): the listener process (its pid and uid, as the kernel reported them) and
 * the geometry and limits it chose. The next connect to the same listener process makes the segment itself and
 * returns without waiting for the listener (connectWithSegment).
 *
 * A later process that got the same pid and listens at the same name under the same uid (the uid is checked on
 * every connect, before a byte is sent) is taken for the known one: it takes our segment (rings no larger than
 * its own), or refuses it, or, as an older listener, answers with a reply that is no verdict: then that one
 * channel fails with ERR_SHMBUS_HANDSHAKE, and the next connect makes the new listener known. (Checking the
 * process's start time in /proc would rule this out, but the read cost ~80 µs a connect, a third of it.)
 */
interface KnownListener {
  pid: number;
  uid: number;
  capacity: number;
  initial: number;
  maxMessage: unknown;
  records: boolean;
}

/** Known listeners by control socket path; the oldest is forgotten beyond KNOWN_MAX. */
const known = new Map<string, KnownListener>();
const KNOWN_MAX = 256;

function remember(endpoint: ShmEndpoint, listener: KnownListener): void {
  known.delete(endpoint.controlPath);
  if (known.size >= KNOWN_MAX) known.delete(known.keys().next().value!);
  known.set(endpoint.controlPath, listener);
}

/**
 * A connect to a known listener resolves without a turn of the event loop (no reply is awaited): a loop of them would
 * starve this process's timers and I/O (it did: handshakes of other connects in the same process timed out with
 * their replies waiting in their sockets). So such a connect first lets the event loop turn when it has not for
 * YIELD_MS (the channel iterator's rule, transports/shm/channel.ts).
 */
let turnedAt = performance.now();
let turnWatched = false;

async function letTheLoopTurn(): Promise<void> {
  if (!turnWatched) {
    turnWatched = true;
    setImmediate(() => { turnWatched = false; turnedAt = performance.now(); });
  }
  if (performance.now() - turnedAt > YIELD_MS) await nextTurn();
}

/** A segment this connector made for a known listener, mapped and formatted, its ring ends open. */
interface OwnSegment { mapping: Mapping; tx: RingEnd; rx: RingEnd; listener: KnownListener }

function makeOwnSegment(endpoint: ShmEndpoint, listener: KnownListener): OwnSegment {
  const mapping = mapRegion(createMemfdSegment(endpoint, listener.capacity, listener.initial));
  try {
    formatChannelSegment(mapping, listener.capacity);
    // Opened in the same turn as the engine was chosen, so its handles are ours.
    const { tx, rx } = openRings(mapping, listener.capacity, 'connector', listener.initial);
    return { mapping, tx, rx, listener };
  } catch (error) {
    unmap(mapping);
    throw error;
  }
}

/**
 * Connects to a shared-memory endpoint URL. The listener must run as `options.expectUid` (or the URL's
 * `expectUid`; by default our own uid or root): anyone else gets not a single byte from us.
 *
 * The first connection to a listener process waits for its verdict (the full handshake). A shm:// listener in
 * another process that said it takes a connector's segment is then known: later connections to that same process
 * bring their own segment and resolve as soon as it is sent, as a Unix socket's connect does once the kernel
 * queued it; the listener's verdict arrives on the channel, and a refusal (a full listener, its handshake deadline)
 * ends the channel with that typed error.
 */
export async function connect(url: string, options: ConnectOptions = {}): Promise<Channel> {
  const endpoint = parseShmUrl(url);
  const timeout = positive(options.timeout, DEFAULT_TIMEOUT, 'timeout');
  const expectUid = options.expectUid ?? endpoint.expectUid;
  if (expectUid !== undefined && (!Number.isInteger(expectUid) || expectUid < 0 || expectUid > 0xfffffffe)) {
    throw new BadArgumentError('expectUid must be a uid', { expectUid });
  }
  const deadline = Date.now() + timeout;
  // The hello is ready before the connect, so that it follows the connect at once: the listener, woken by the
  // connect, usually finds it waiting (control.ts takeWaitingLineWithFds). A wake reservation made here for a connect
  // that then fails is given back (host/wake/common.ts). A known listener's segment is made here too, for the same
  // reason, and unmapped if the connect fails.
  if (endpoint.scheme === 'shm' && known.has(endpoint.controlPath)) await letTheLoopTurn();
  const mine = wakeLine(endpoint);
  try {
    return await openChannel(endpoint, url, expectUid, deadline, timeout, mine);
  } catch (error) {
    unreserveWake(endpoint, mine);
    throw error;
  }
}

/** connect() once its wake line `mine` is made: the full handshake, or one with a segment of our own. */
async function openChannel(endpoint: ShmEndpoint, url: string, expectUid: number | undefined, deadline: number, timeout: number, mine: Record<string, unknown>): Promise<Channel> {
  const knownListener = endpoint.scheme === 'shm' ? known.get(endpoint.controlPath) : undefined;
  let own = knownListener && makeOwnSegment(endpoint, knownListener);
  let opened: { fd: number; cred: PeerCredentials };
  try {
    opened = await openControlWaiting(endpoint, url, expectUid, deadline, timeout);
  } catch (error) {
    if (own) unmap(own.mapping);
    throw error;
  }
  const { fd, cred } = opened;
  if (own && (own.listener.pid !== cred.pid || own.listener.uid !== cred.uid)) {
    // Another process listens there now: the full handshake, as with any new listener.
    known.delete(endpoint.controlPath);
    unmap(own.mapping);
    own = undefined;
  }
  if (own) {
    if (trace.enabled) trace('connect %s: listener pid %d knows us: our own segment, its verdict comes on the channel', url, cred.pid);
    return connectWithSegment(endpoint, fd, cred, own, mine, timeout);
  }
  // fdWithReply: the listener sends the segment's descriptor with its reply, in one message (no request for it).
  const hello = Buffer.from(JSON.stringify({
    shmbus: PROTOCOL, version: LAYOUT_VERSION, pid: process.pid, thread: threadId, wake: mine, maxMessage: ownMaxMessage(endpoint), records: true, fdWithReply: true,
  }) + '\n');
  let socket: net.Socket;
  try {
    await reached('connector', 1);
    sendBytes(fd, hello);
    // Built while the listener reads the hello. Its reads start here and stop again below before the event loop
    // runs (receiveLineWithFds), so libuv never reads the reply, whose descriptor it would drop.
    socket = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: false });
  } catch (error) {
    try { closeFd(fd); } catch { /* report the first failure */ }
    throw error;
  }
  socket.on('error', () => {});
  let mapping: Mapping | undefined;
  let region: Region | undefined;
  /** Descriptors received and not yet closed or wrapped in a Region. */
  let fds: number[] = [];
  try {
    const replied = receiveLineWithFds(socket, left(deadline, timeout), () => {});
    // Settled below; this only keeps a failure during a test stop (reached) from counting as unhandled.
    replied.catch(() => {});
    await reached('connector', 2);
    const { message: reply, rest, fds: received } = await replied;
    fds = received;
    if (reply.ok !== true) throw remoteError(reply, 'listener refused the connection');
    try {
      if (rest.length !== 0) throw new HandshakeError('listener sent more than its reply');
      const { capacity, size, initial } = checkReply(endpoint, reply);
      const wake = peerWake(endpoint, reply.wake, cred);
      wake.myParams = mine.params as Record<string, unknown>;
      await reached('connector', 3);
      region = await receiveRegion(endpoint, socket, reply, fds, size, cred, deadline, timeout);
      await reached('connector', 4);
      const r = region;
      region = undefined;
      mapping = mapRegion(r);
      checkPeerSegment(mapping, capacity);
      // Opened in the same turn as the engine was chosen, so its handles are ours.
      const { tx, rx } = openRings(mapping, capacity, 'connector', initial);
      await reached('connector', 5);
      left(deadline, timeout);
      // Straight to the descriptor, as the hello: nothing was written through the socket, so nothing waits before it.
      try {
        sendBytes(fd, ATTACHED);
      } catch (cause) {
        throw new HandshakeError('peer went away during the handshake', { cause });
      }
      const maxMessage = agreedMaxMessage(ownMaxMessage(endpoint), reply.maxMessage, maxPayload(capacity));
      const channel = new Channel({ ...mapping, tx, rx, socket, endpoint, pendingBytes: Buffer.alloc(0), side: 'connector', wake, maxMessage, peerRecords: reply.records === true,
        peerInThisThread: peerInThisThread(cred, reply) });
      // Both sides have mapped the segment, which has no name: its descriptor is not needed any more (the mappings
      // keep the memory, and unmapping works without it), so an open connection holds one descriptor, its socket.
      r.close();
      mapping = undefined;
      // A listener of this process is not remembered: its handshake costs no wake-up of another process, and it may
      // be closed and opened again with other options under the same pid.
      if (reply.takesSegments === true && endpoint.scheme === 'shm' && cred.pid !== process.pid) {
        remember(endpoint, { pid: cred.pid, uid: cred.uid, capacity, initial, maxMessage: reply.maxMessage, records: reply.records === true });
      }
      if (trace.enabled) trace('connect %s: open (full handshake with listener pid %d uid %d)', url, cred.pid, cred.uid);
      await reached('connector', 6);
      return channel;
    } catch (error) {
      if (!socket.destroyed) writeLine(socket, errorLine(error, 'attached'));
      throw error;
    }
  } catch (error) {
    if (mapping) { try { unmap(mapping); } catch { /* report the handshake's failure */ } }
    if (region) { try { region.close(); } catch { /* idem */ } }
    for (const fd of fds) { try { closeFd(fd); } catch { /* idem */ } }
    socket.destroy();
    if (error instanceof ShmbusError) throw error;
    throw new ClosedError('connection failed', { url, cause: String(error) });
  }
}

/**
 * A connection to a known listener (see connect): the hello goes out with our own segment's descriptor attached, in
 * one sendmsg, and the channel is returned at once. The listener checks the segment as we check one of its own
 * (sealed memfd, size, header: host/region.ts fromPeerFd, checkPeerSegment) and answers with its verdict, the
 * first line the channel reads: until then the channel does not ring the listener (the listener looks at its ring
 * once it took the segment), and a refusal, a listener gone without a verdict, or none within `timeout` ends it
 * with a typed error; this process then forgets the listener.
 */
async function connectWithSegment(endpoint: ShmEndpoint, fd: number, cred: PeerCredentials, own: OwnSegment, mine: Record<string, unknown>, timeout: number): Promise<Channel> {
  const { mapping, tx, rx, listener } = own;
  const hello = Buffer.from(JSON.stringify({
    shmbus: PROTOCOL, version: LAYOUT_VERSION, pid: process.pid, thread: threadId, wake: mine, maxMessage: ownMaxMessage(endpoint), records: true,
    segment: { capacity: listener.capacity, initialCapacity: listener.initial },
  }) + '\n');
  let socket: net.Socket | undefined;
  try {
    await reached('connector', 7);
    try {
      sendFd(fd, mapping.mapped.region.fd, hello);
    } catch (cause) {
      throw new HandshakeError('peer went away during the handshake', { cause });
    }
    socket = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: false });
    socket.on('error', () => {});
    const myParams = mine.params as Record<string, unknown>;
    const forget = () => { if (known.get(endpoint.controlPath) === listener) known.delete(endpoint.controlPath); };
    const channel = new Channel({
      ...mapping, tx, rx, socket, endpoint, pendingBytes: Buffer.alloc(0), side: 'connector',
      wake: { mine: mechanismFor(endpoint.wake, endpoint.url), peerCred: cred, myParams },
      verdict: {
        timeoutMs: timeout,
        accept: (reply) => {
          if (reply.ok !== true) throw remoteError(reply, 'listener refused the connection');
          if (reply.took !== true) throw new HandshakeError('listener did not take our segment');
          if (reply.maxMessage !== listener.maxMessage || reply.records !== listener.records) {
            throw new HandshakeError('listener announced other limits than before', { details: { maxMessage: peerText(reply.maxMessage) } });
          }
          const wake = peerWake(endpoint, reply.wake, cred);
          wake.myParams = myParams;
          return wake;
        },
        failed: forget,
      },
      maxMessage: agreedMaxMessage(ownMaxMessage(endpoint), listener.maxMessage, maxPayload(listener.capacity)), peerRecords: listener.records,
      // A known listener is in another process (see remember's caller): never this thread.
    });
    // The listener gets its own descriptor with the hello; ours is not needed any more (see connect).
    mapping.mapped.region.close();
    await reached('connector', 8);
    return channel;
  } catch (error) {
    try { unmap(mapping); } catch { /* report the first failure */ }
    if (socket) socket.destroy();
    else { try { closeFd(fd); } catch { /* idem */ } }
    throw error;
  }
}
