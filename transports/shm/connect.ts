/**
 * The connector's side of the shm handshake (the protocol: transports/shm/control.ts; the listener's side:
 * transports/shm/listener.ts).
 */
import net from 'node:net';
import { threadId } from 'node:worker_threads';
import path from 'node:path';
import { CHANNEL_RING_COUNT, LAYOUT_VERSION, RING_MAX_CAPACITY, RING_MIN_CAPACITY, maxPayload, segmentBytes } from '../../assembly/layout.js';
import { Region } from '../../host/region.js';
import { readSegment } from '../../host/segment.js';
import { checkListener } from '../../host/control.js';
import { connectUnix, peerCredentials, sendBytes } from '../../host/sys/socket.js';
import { parseShmUrl, type ShmEndpoint } from '../../host/url.js';
import type { PeerCredentials } from '../../host/peer.js';
import { BadArgumentError, ClosedError, CorruptError, Errno, ErrorCode, HandshakeError, ShmbusError, SystemError } from '../../host/errors.js';
import type { ConnectOptions } from '../contract.js';
import { Channel } from './channel.js';
import { PROTOCOL, writeLine, remoteError, errorLine, receivePassedFd, receiveLineWithFds } from './control.js';
import { closeFd } from '../../host/sys/shm.js';
import { DEFAULT_TIMEOUT, KIND, ownMaxMessage, agreedMaxMessage, reached, left, mapRegion, openRings, unmap, wakeLine, peerWake, peerInThisThread, positive, type Mapping } from './handshake.js';

/** The listener's reply, checked before anything is attached: the kind the URL's scheme means and a geometry
 * within the ring limits whose size follows from it (a peer cannot make us map more than that). */
function checkReply(endpoint: ShmEndpoint, reply: Record<string, unknown>): { capacity: number; size: number; initial: number } {
  const { capacity, size, kind, initialCapacity } = reply;
  if (kind !== KIND[endpoint.scheme]) throw new HandshakeError('listener offers another kind of segment', { details: { kind: String(kind), expected: KIND[endpoint.scheme] } });
  if (typeof capacity !== 'number' || !Number.isInteger(capacity) || capacity < RING_MIN_CAPACITY || capacity > RING_MAX_CAPACITY || (capacity & (capacity - 1)) !== 0) {
    throw new HandshakeError('listener announced a bad ring capacity', { details: { capacity: String(capacity) } });
  }
  const expected = segmentBytes(CHANNEL_RING_COUNT, capacity);
  if (size !== expected) throw new HandshakeError('listener announced a segment size that does not fit its rings', { details: { size: String(size), expected } });
  // Layout 1.2: the rings start with initialCapacity data bytes and grow in band up to capacity (absent: they
  // never grow, as an older listener's).
  const initial = initialCapacity ?? capacity;
  if (typeof initial !== 'number' || !Number.isInteger(initial) || initial < RING_MIN_CAPACITY || initial > capacity || (initial & (initial - 1)) !== 0) {
    throw new HandshakeError('listener announced a bad initial ring capacity', { details: { initialCapacity: String(initialCapacity) } });
  }
  return { capacity, size: expected, initial };
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
 * listener works on it meanwhile.
 */
function openControl(endpoint: ShmEndpoint, url: string, expectUid: number | undefined): { fd: number; cred: PeerCredentials } {
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
    if (error.errno === Errno.EAGAIN) throw new ShmbusError(ErrorCode.LIMIT, 'the listener has too many connections waiting', { cause: error, details: { url } });
    throw new ShmbusError(ErrorCode.SYSCALL, 'cannot connect', { cause: error, details: { url } });
  }
  return { fd, cred: cred! };
}

/** The connector's last handshake line. */
const ATTACHED = Buffer.from(JSON.stringify({ attached: true }) + '\n');

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
  // The hello is ready before the connect, so that it follows the connect at once: the listener, woken by the
  // connect, usually finds it waiting (listener.ts takeWaitingLine). A wake reservation made here for a connect
  // that then fails is given back by its timer (host/wake/common.ts).
  const mine = wakeLine(endpoint);
  // fdWithReply: the listener sends the segment's descriptor with its reply, in one message (no request for it).
  const hello = Buffer.from(JSON.stringify({
    shmbus: PROTOCOL, version: LAYOUT_VERSION, pid: process.pid, thread: threadId, wake: mine, maxMessage: ownMaxMessage(endpoint), records: true, fdWithReply: true,
  }) + '\n');
  const { fd, cred } = openControl(endpoint, url, expectUid);
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
      const info = readSegment(mapping.engine, mapping.window, r.size);
      if (info.ringCount !== CHANNEL_RING_COUNT || info.capacity !== capacity) {
        throw new CorruptError('segment geometry differs from the handshake', { ringCount: info.ringCount, capacity: info.capacity });
      }
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
      const channel = new Channel({ ...mapping, tx, rx, socket, endpoint, pendingBytes: Buffer.alloc(0), side: 'connector', wake, maxMessage: agreedMaxMessage(ownMaxMessage(endpoint), reply.maxMessage, maxPayload(capacity)), peerRecords: reply.records === true,
        peerInThisThread: peerInThisThread(cred, reply) });
      // Both sides have mapped the segment, which has no name: its descriptor is not needed any more (the mappings
      // keep the memory, and unmapping works without it), so an open connection holds one descriptor, its socket.
      r.close();
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
    for (const fd of fds) { try { closeFd(fd); } catch { /* idem */ } }
    socket.destroy();
    if (error instanceof ShmbusError) throw error;
    throw new ClosedError('connection failed', { url, cause: String(error) });
  }
}
