/**
 * sysvmq: System V message queues (msgget / msgsnd / msgrcv / msgctl).
 *
 *   sysvmq://0x5a10?perm=0600&qbytes=16384&maxMessage=16MiB&maxQueued=65536
 *
 * The key (hex or decimal, 1 … 0xffffffff) names the listener's queue. Options:
 *   perm        mode of the queues this side creates (default 0600; others need write, e.g. 0622/0666, and read
 *               on the listener's queue to find the listener: 0666)
 *   qbytes      bytes our inbound queue holds (default msgmnb; raising it above /proc/sys/kernel/msgmnb needs
 *               CAP_SYS_RESOURCE, else ERR_SHMBUS_LIMIT naming msgmnb)
 *   maxMessage  largest message (default 16 MiB); the two sides use the smaller of theirs
 *   maxQueued   hard cap of the local send queue (base.ts)
 *
 * Why not one blocking msgrcv per connection: a System V queue cannot be polled, so each waiting queue would
 * need its own thread. Instead every process has ONE "port" queue (IPC_PRIVATE), received by the process's
 * msgrcv thread (host/blocking.ts), and the mtype of a port message says which local object it is for and why:
 *
 *   mtype = id * 8 + kind     id: a listener or connection of the receiving process (1, 2, …)
 *     kind 1 HELLO   to a listener: msgpack {shmbus, proto, pid, start, port, id, q, max, packet}
 *          2 REPLY   to a connecting connection: {ok, pid, start, port, id, q, max, packet} or {ok: false, …}
 *          3 DATA    doorbell: your inbound queue has packets (no text)
 *          4 WANT    doorbell: I found your inbound queue full; tell me when it has room (no text)
 *          5 SPACE   doorbell: your outbound queue has room now (no text)
 *   mtype 1 is the thread's stop message.
 *
 * The data of a connection travels in two IPC_PRIVATE queues, one per direction, each created and removed by
 * its receiver (so a closing sender never destroys packets its peer has not read: it sends END and the reader
 * removes its queue when it is done). Packets are those of transports/fragment.ts (mtype 1), at most
 * min(msgmax, the receiver's qbytes) bytes each. A sender rings DATA once per flush, after the packets; the
 * receiver's port sees the doorbell only after the packets are in the queue, so no wakeup is lost. A sender
 * that finds the queue full rings WANT; the receiver answers SPACE as soon as a read pass took something (or
 * found the queue empty). Doorbells are msgsnd IPC_NOWAIT of zero-length messages: a port holds msgmnb of them
 * (16384); a doorbell that finds the port full is retried a millisecond later.
 *
 * The listener's queue (the key) holds a single "card": msgpack {shmbus, proto, pid, start, port, id} (mtype 1),
 * which connectors read without removing it (msgrcv MSG_COPY; where the kernel lacks it, take and put back).
 * A card whose process is dead is stale: a connector says NOT_FOUND, the next listener removes the queue (and
 * the dead listener's port) and takes the key.
 *
 * Peer death: the peer's pidfd sits in the process's epoll thread (host/blocking.ts; a /proc timer where pidfds
 * are missing), so a SIGKILL is seen in ~10 ms. The survivor then removes what the dead peer owned (its inbound
 * queue, its port), delivers what the peer left in our queue, and ends with ERR_SHMBUS_PEER_DEAD. A peer that
 * dies just after we closed is still reaped ("orphans" below). Normal exit removes everything owned
 * (onProcessExit); queues of a process killed with no surviving peer stay until `ipcrm` (System V ids have no
 * owner-death cleanup).
 *
 * Threads: a process using sysvmq: runs the msgrcv thread (its port) and the epoll thread (peer pidfds); both
 * serve every connection, neither is a libuv threadpool thread.
 *
 * Measured (2-core VM, Node 20, two processes, busy machine): 1 B round trip 72-80 µs, one-way p50 76 µs;
 * 64 B messages 1.2-1.3 M msg/s; 1 MiB messages 175-270 MB/s. The large-message rate is bounded by msgmnb: a
 * queue holds two 8 KiB packets, so every 16 KiB costs a WANT/SPACE exchange (two thread hops). qbytes (with
 * CAP_SYS_RESOURCE) or mq: with maxmsg=10 are the faster choices for large messages.
 */
import { pack } from 'msgpackr';
import { decodePeer } from '../host/codec.js';
import {
  BadUrlError, CorruptError, ErrorCode, HandshakeError, peerError, peerText, ShmbusError, TimeoutError, VersionMismatchError,
} from '../host/errors.js';
import { parseSize } from '../host/url.js';
import { EpollThread, MsgrcvThread, PORT_PAYLOAD_MAX, watchProcess } from '../host/blocking.js';
import { LIVENESS_MS } from '../host/liveness.js';
import { isProcessAlive, processEuid, processStartTime } from '../host/sys/proc.js';
import {
  E2BIG, MSG_HEADER, formatMsgKey, listMsgQueues, msgExists, msgGet, msgLimits, msgPeek, msgReceive, msgRemoveIfExists, msgSend,
  msgSetMode, msgSetQbytes, msgStat, msgType, setMsgType,
} from '../host/sys/msg.js';
import { IPC_CREAT, IPC_EXCL, IPC_PRIVATE } from '../host/sys/constants.js';
import { ListenerBase, asShmbusError, maxConnectionsOf, parseTransportQuery, splitUrl } from './base.js';
import { onProcessExit } from '../host/exit.js';
import { reap, sysvmqReapers, type MsgQueueCandidate } from '../host/reap.js';
import { MIN_PACKET, QueueConnection } from './fragment.js';
import type { ConnectOptions, ListenOptions, Transport } from './contract.js';

const PROTOCOL = 1;
const DEFAULT_TIMEOUT = 5000;
export const DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024;
const MAX_MAX_MESSAGE = 1024 * 1024 * 1024;

export const KIND_HELLO = 1;
export const KIND_REPLY = 2;
export const KIND_DATA = 3;
export const KIND_WANT = 4;
export const KIND_SPACE = 5;
const KINDS = 8;
/** mtype of the card in a listener's queue, and of data packets. */
const CARD_TYPE = 1;
const DATA_TYPE = 1;
/** How long a doorbell that found the peer's port full waits before it is tried again. */
const RETRY_MS = 1;

export interface SysvMqEndpoint {
  url: string;
  key: number;
  maxQueued: number;
  perm: number;
  qbytes: number | undefined;
  maxMessage: number;
}

export function parseSysvMqUrl(url: string): SysvMqEndpoint {
  const { rest, query } = splitUrl(url, 'sysvmq');
  const { maxQueued, params } = parseTransportQuery(url, query, ['perm', 'qbytes', 'maxMessage']);
  const m = /^\/\/(0x[0-9a-f]{1,8}|\d{1,10})$/i.exec(rest);
  if (!m) throw new BadUrlError('sysvmq: URL needs a key (sysvmq://0x1234 or sysvmq://4660)', url);
  const key = Number(m[1]);
  if (key <= 0 || key > 0xffffffff) throw new BadUrlError('sysvmq: key out of range (1 … 0xffffffff)', url);
  const permText = params.get('perm');
  let perm = 0o600;
  if (permText !== null) {
    if (!/^0?[0-7]{3}$/.test(permText)) throw new BadUrlError('perm must be an octal mode like 0600', url, { details: { perm: permText } });
    perm = parseInt(permText, 8);
  }
  const size = (name: string, min: number, max: number) => {
    const text = params.get(name);
    if (text === null) return undefined;
    const n = parseSize(text);
    if (n === undefined || n < min || n > max) throw new BadUrlError(`${name} out of range`, url, { details: { [name]: text, min, max } });
    return n;
  };
  return {
    url, key, maxQueued, perm,
    qbytes: size('qbytes', MIN_PACKET, 2 ** 31 - 1),
    maxMessage: size('maxMessage', 0, MAX_MAX_MESSAGE) ?? DEFAULT_MAX_MESSAGE,
  };
}

const startText = (pid: number) => String(processStartTime(pid) ?? '');
const parseStart = (text: unknown) => (typeof text === 'string' && /^\d+$/.test(text) ? BigInt(text) : undefined);
/** Others may only write our port and inbound queues (doorbells, packets), never read them. */
const writeOnlyFor = (perm: number) => 0o600 | (perm & 0o022);

// ------------------------------------------------------------------------------------------------ the port

/** A local object the port routes messages to. */
interface PortUser {
  onPortMessage(kind: number, payload: Uint8Array): void;
  onPortFailure(error: ShmbusError): void;
}

/**
 * The process's port queue and its routing table. Created on first use; removed when the last user releases it
 * (and at normal exit).
 */
class Port {
  private static current: Port | undefined;
  readonly msqid: number;
  private mode: number;
  private users = 0;
  /** Users that only linger for their END (QueueConnection.lingerForEnd): they do not keep the process alive. */
  private lingering = 0;
  private nextId = 1;
  private readonly routes = new Map<number, PortUser>();
  private readonly cancelExit: () => void;
  private readonly bell = new Uint8Array(MSG_HEADER + PORT_PAYLOAD_MAX);

  private constructor(perm: number) {
    this.mode = writeOnlyFor(perm);
    this.msqid = msgGet(IPC_PRIVATE, IPC_CREAT | this.mode);
    const msqid = this.msqid;
    this.cancelExit = onProcessExit(() => { msgRemoveIfExists(msqid); });
    try {
      MsgrcvThread.get().attach(msqid, (mtype, payload) => this.route(mtype, payload), (error) => this.failAll(error));
    } catch (error) {
      msgRemoveIfExists(msqid);
      this.cancelExit();
      throw error;
    }
  }

  /** The port, created if needed; `perm`'s write bits are granted on it. Pair with release(). */
  static acquire(perm: number): Port {
    const port = (Port.current ??= new Port(perm));
    port.users++;
    if (port.lingering > 0) port.holdProcess();
    const mode = port.mode | writeOnlyFor(perm);
    if (mode !== port.mode) {
      msgSetMode(port.msqid, mode);
      port.mode = mode;
    }
    return port;
  }

  /** One more holder of a port already acquired (each accepted connection). Pair with release(). */
  retain(): void {
    this.users++;
    if (this.lingering > 0) this.holdProcess();
  }

  /** A user now only lingers for its END: once every user does, the port no longer keeps the process alive. */
  weaken(): void {
    this.lingering++;
    this.holdProcess();
  }

  /** @param lingered the user had called weaken() */
  release(lingered = false): void {
    if (lingered) this.lingering--;
    if (--this.users > 0) {
      this.holdProcess();
      return;
    }
    if (Port.current === this) Port.current = undefined;
    MsgrcvThread.get().detach(this.msqid);
    msgRemoveIfExists(this.msqid);
    this.cancelExit();
  }

  private holdProcess(): void {
    MsgrcvThread.get().keepAlive(this.users > this.lingering);
  }

  newId(): number {
    return this.nextId++;
  }

  register(id: number, user: PortUser): void {
    this.routes.set(id, user);
  }

  unregister(id: number): void {
    this.routes.delete(id);
  }

  /**
   * Sends one message to a port (ours or a peer's): true when sent, or when the port is gone (nothing to tell
   * then); false when it is full (try again later).
   */
  send(port: number, id: number, kind: number, payload?: Uint8Array): boolean {
    const buf = this.bell;
    setMsgType(buf, id * KINDS + kind);
    const length = payload ? payload.length : 0;
    if (length > PORT_PAYLOAD_MAX) throw new HandshakeError('handshake message too long for a port', { details: { length, max: PORT_PAYLOAD_MAX } });
    if (payload) buf.set(payload, MSG_HEADER);
    try {
      return msgSend(port, buf, length);
    } catch (error) {
      if (error instanceof ShmbusError && error.code === ErrorCode.NOT_FOUND) return true;
      throw error;
    }
  }

  private route(mtype: number, payload: Uint8Array): void {
    const id = Math.floor(mtype / KINDS);
    const kind = mtype % KINDS;
    const user = this.routes.get(id);
    if (user) {
      user.onPortMessage(kind, payload);
      return;
    }
    // A hello for a listener that is gone: refuse it, so the connector does not wait for its timeout.
    if (kind === KIND_HELLO) {
      const hello = decode(payload);
      if (hello && typeof hello.port === 'number' && typeof hello.id === 'number') {
        try {
          this.send(hello.port, hello.id, KIND_REPLY, pack({ ok: false, code: ErrorCode.NOT_FOUND, message: 'the listener closed' }));
        } catch { /* connector gone */ }
      }
    }
    // Doorbells for closed connections: nothing to do.
  }

  private failAll(error: ShmbusError): void {
    for (const user of [...this.routes.values()]) user.onPortFailure(error);
  }
}

function decode(payload: Uint8Array): Record<string, unknown> | undefined {
  try {
    const v = decodePeer(payload);
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? v as Record<string, unknown> : undefined;
  } catch {
    return undefined;
  }
}

/** Creates our inbound queue for a connection: IPC_PRIVATE, writable by the peer, `qbytes` if asked. */
/**
 * The queues a peer names for us to send to and, once it died, to remove (its inbound queue and its port) must be
 * its own: made by the uid its process runs as (/proc/sysvipc/msg, readable whatever the queues' modes). Otherwise
 * a peer could make us write into, and later remove, another user's queues. Nothing is sent to one that fails this.
 */
function checkPeerQueues(pid: number, ids: number[]): void {
  const uid = processEuid(pid);
  const queues = listMsgQueues();
  for (const id of ids) {
    const queue = queues.find((q) => q.msqid === id);
    if (uid === undefined || queue === undefined || queue.cuid !== uid) {
      throw new ShmbusError(ErrorCode.PERMISSION_DENIED, 'the peer named a queue that is not its own', {
        details: { msqid: id, creatorUid: queue?.cuid, peerUid: uid, peerPid: pid },
      });
    }
  }
}

/** A peer's packet size: each of our packets to it is a buffer of that size, so it must be one the kernel can
 * carry (at least MIN_PACKET, at most msgmax) before anything is allocated for it. */
function packetFits(packet: number): boolean {
  return Number.isSafeInteger(packet) && packet >= MIN_PACKET && packet <= msgLimits().msgmax;
}

function createInbound(ep: SysvMqEndpoint): { msqid: number; packet: number } {
  const msqid = msgGet(IPC_PRIVATE, IPC_CREAT | writeOnlyFor(ep.perm));
  try {
    if (ep.qbytes !== undefined) msgSetQbytes(msqid, ep.qbytes);
    const qbytes = msgStat(msqid).qbytes;
    // A packet must fit the queue when it is empty, and be a message the kernel accepts.
    return { msqid, packet: Math.min(msgLimits().msgmax, qbytes) };
  } catch (error) {
    msgRemoveIfExists(msqid);
    throw error;
  }
}

// ------------------------------------------------------------------------------------------------ connection

interface SysvParts {
  url: string;
  maxQueued: number;
  maxMessageSize: number;
  port: Port;
  id: number;
  /** Our inbound queue (ours to remove) and its packet size. */
  rxq: number;
  rxPacket: number;
  /** The peer's inbound queue and packet size, its port and its id there. */
  txq: number;
  txPacket: number;
  peerPort: number;
  peerId: number;
  peerPid: number;
  peerStart: bigint | undefined;
  side: 'listener' | 'connector';
}

export class SysvMqConnection extends QueueConnection implements PortUser {
  private readonly port: Port;
  private readonly id: number;
  private readonly rxq: number;
  private readonly txq: number;
  private readonly peerPort: number;
  private readonly peerId: number;
  private readonly cancelExit: () => void;
  /** The peer rang WANT: answer SPACE after the next read pass that made room. */
  private wantSpace = false;
  /** Doorbells that found the peer's port full, to try again. */
  private readonly owed = new Set<number>();
  private retryTimer: NodeJS.Timeout | undefined;
  /** letProcessGo() was called: our port holder is a weak one (Port.weaken). */
  private lingered = false;

  /** @internal made by listen/connect */
  constructor(parts: SysvParts) {
    super({
      url: parts.url, maxQueued: parts.maxQueued, maxMessageSize: parts.maxMessageSize,
      packetSize: parts.txPacket, txHeadroom: MSG_HEADER, receiveSize: parts.rxPacket, rxHeadroom: MSG_HEADER,
      peerPid: parts.peerPid, peerStart: parts.peerStart, side: parts.side,
    });
    this.port = parts.port;
    this.id = parts.id;
    this.rxq = parts.rxq;
    this.txq = parts.txq;
    this.peerPort = parts.peerPort;
    this.peerId = parts.peerId;
    const rxq = this.rxq;
    this.cancelExit = onProcessExit(() => { msgRemoveIfExists(rxq); });
    this.port.register(this.id, this);
    // Packets that arrived before we listened for doorbells.
    this.startReading();
  }

  /** @internal */
  onPortMessage(kind: number): void {
    switch (kind) {
      case KIND_DATA:
        this.onReadable();
        break;
      case KIND_WANT:
        this.wantSpace = true;
        this.onReadable();
        break;
      case KIND_SPACE:
        this.onRoom();
        break;
      default:
        /* a stray handshake message: ignore */
    }
  }

  /** @internal */
  onPortFailure(error: ShmbusError): void {
    this.onTransportError(error);
  }

  protected sendPacket(buf: Uint8Array, length: number): boolean {
    // mtype 1, little-endian i64: the other seven bytes of the headroom are never written.
    buf[0] = DATA_TYPE;
    return msgSend(this.txq, buf, length);
  }

  protected receivePacket(buf: Uint8Array): number {
    try {
      return msgReceive(this.rxq, buf, 0, false);
    } catch (error) {
      if ((error as { errno?: number }).errno === E2BIG) {
        throw new CorruptError('packet longer than agreed in the handshake', { url: this.url, max: buf.length - MSG_HEADER });
      }
      throw error;
    }
  }

  protected waitReadable(): void {
    /* the peer rings DATA after every flush */
  }

  protected waitWritable(): void {
    this.ring(KIND_WANT);
  }

  protected afterSend(): void {
    this.ring(KIND_DATA);
  }

  protected afterReceive(removed: number, emptied: boolean): void {
    if (this.wantSpace && (removed > 0 || emptied)) {
      this.wantSpace = false;
      this.ring(KIND_SPACE);
    }
  }

  protected reapPeer(): void {
    msgRemoveIfExists(this.txq);
    // The dead peer's port served all its connections; any survivor may remove it. IPC_RMID on an id the kernel
    // has since given to a new queue would need 65536 queue creations at that index in between.
    msgRemoveIfExists(this.peerPort);
  }

  protected release(): void {
    clearTimeout(this.retryTimer);
    this.owed.clear();
    this.port.unregister(this.id);
    // Our inbound queue: the peer sending to it now gets EIDRM/EINVAL, and reads our END.
    msgRemoveIfExists(this.rxq);
    this.cancelExit();
    this.port.release(this.lingered);
    if (!this.peerGone) adoptPeerQueue(this.peerPid, this.peerStart, this.txq, this.peerPort);
  }

  protected letProcessGo(): void {
    if (this.lingered) return;
    this.lingered = true;
    this.port.weaken();
  }

  private ring(kind: number): void {
    if (this.peerGone) return;
    let sent: boolean;
    try {
      sent = this.port.send(this.peerPort, this.peerId, kind);
    } catch (error) {
      this.onTransportError(asShmbusError(error));
      return;
    }
    if (sent) return;
    this.owed.add(kind);
    if (this.retryTimer !== undefined) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      const kinds = [...this.owed];
      this.owed.clear();
      for (const k of kinds) this.ring(k);
    }, RETRY_MS);
    // The connection keeps the process alive through its port, for as long as it should (not while it lingers).
    this.retryTimer.unref();
  }
}

// ------------------------------------------------------------------------------------------------ orphans

/**
 * Queues of peers we closed on while they were alive. The peer removes its inbound queue once it has read our
 * END; a peer killed before that (or killed a moment before our close, too recently for us to see) cannot, and
 * after our close nobody would: so the process watch goes on until the queue is gone or its owner is dead, and
 * then removes it (and the dead owner's port). Checked every LIVENESS_MS; entries cost a set entry each.
 */
const orphans = new Map<string, { stop: () => void; queues: Set<number>; port: number }>();
let orphanTimer: NodeJS.Timeout | undefined;
let orphanWaiters: (() => void)[] = [];

function adoptPeerQueue(pid: number, start: bigint | undefined, queue: number, port: number): void {
  if (!msgExists(queue)) return;
  const key = `${pid}:${start ?? ''}`;
  let entry = orphans.get(key);
  if (!entry) {
    const e = {
      queues: new Set<number>(), port,
      stop: watchProcess(pid, start, () => {
        for (const q of e.queues) msgRemoveIfExists(q);
        msgRemoveIfExists(e.port);
        dropOrphans(key);
      }),
    };
    entry = e;
    orphans.set(key, e);
  }
  entry.queues.add(queue);
  orphanTimer ??= setInterval(() => {
    for (const [k, e] of orphans) {
      for (const q of e.queues) if (!msgExists(q)) e.queues.delete(q);
      if (e.queues.size === 0) dropOrphans(k);
    }
  }, LIVENESS_MS);
  orphanTimer.unref();
}

function dropOrphans(key: string): void {
  const e = orphans.get(key);
  if (!e) return;
  orphans.delete(key);
  e.stop();
  if (orphans.size > 0) return;
  clearInterval(orphanTimer);
  orphanTimer = undefined;
  const waiters = orphanWaiters;
  orphanWaiters = [];
  for (const w of waiters) w();
}

/**
 * Resolves once no closed connection's peer queue is being watched (each peer removed its queue or was reaped),
 * or after `timeoutMs`. For tests that check for leftovers right after killing a peer.
 */
export function orphansSettled(timeoutMs = 2000): Promise<void> {
  if (orphans.size === 0) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    orphanWaiters.push(() => { clearTimeout(timer); resolve(); });
  });
}

// ------------------------------------------------------------------------------------------------ the card

interface Card { pid: number; start: bigint | undefined; port: number; id: number }

function parseCard(buf: Uint8Array, n: number): Card | undefined {
  if (msgType(buf) !== CARD_TYPE) return undefined;
  const c = decode(buf.subarray(MSG_HEADER, MSG_HEADER + n));
  if (!c || c.shmbus !== 1 || typeof c.pid !== 'number' || typeof c.port !== 'number' || typeof c.id !== 'number') return undefined;
  if (c.proto !== PROTOCOL) throw new VersionMismatchError('listener protocol', peerText(c.proto), String(PROTOCOL));
  return { pid: c.pid, start: parseStart(c.start), port: c.port, id: c.id };
}

/**
 * Reads the card of the listener queue `kid` without removing it. Undefined when the queue holds no card (a
 * listener that is still writing it, or not a shmbus queue).
 */
async function readCard(kid: number): Promise<Card | undefined> {
  const buf = new Uint8Array(MSG_HEADER + 512);
  for (let attempt = 0; attempt < 50; attempt++) {
    const n = msgPeek(kid, buf, 0);
    if (n === undefined) {
      // No MSG_COPY in this kernel: take the card and put it straight back. Another connector doing the same
      // makes us see an empty queue for a moment.
      const got = msgReceive(kid, buf, CARD_TYPE, false);
      if (got >= 0) {
        msgSend(kid, buf, got);
        return parseCard(buf, got);
      }
    } else if (n >= 0) {
      return parseCard(buf, n);
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  return undefined;
}

// ------------------------------------------------------------------------------------------------ listener

export class SysvMqListener extends ListenerBase<SysvMqConnection> implements PortUser {
  private readonly endpoint: SysvMqEndpoint;
  private readonly kid: number;
  private readonly port: Port;
  private readonly id: number;
  private readonly cancelExit: () => void;

  /** @internal use listen() */
  constructor(endpoint: SysvMqEndpoint, kid: number, port: Port, id: number, maxConnections: number) {
    super(endpoint.url, maxConnections);
    this.endpoint = endpoint;
    this.kid = kid;
    this.port = port;
    this.id = id;
    this.cancelExit = onProcessExit(() => { msgRemoveIfExists(kid); });
    port.register(id, this);
  }

  /** @internal */
  onPortMessage(kind: number, payload: Uint8Array): void {
    if (kind !== KIND_HELLO || this.closed) return;
    try {
      this.handshake(payload);
    } catch (error) {
      this.reportError(error);
    }
  }

  /** @internal */
  onPortFailure(error: ShmbusError): void {
    this.reportError(error);
  }

  private handshake(payload: Uint8Array): void {
    const hello = decode(payload);
    if (!hello || hello.shmbus !== 1) throw new HandshakeError('not a shmbus hello');
    const { pid, port, id, q, max, packet } = hello;
    if (typeof pid !== 'number' || typeof port !== 'number' || typeof id !== 'number' || typeof q !== 'number'
      || typeof max !== 'number' || typeof packet !== 'number') {
      throw new HandshakeError('hello lacks fields');
    }
    const peerStart = parseStart(hello.start);
    if (!isProcessAlive(pid, peerStart)) throw new HandshakeError('connector went away during the handshake', { details: { pid } });
    // Before anything is sent to its port, even a refusal.
    checkPeerQueues(pid, [q, port]);
    const refuse = (error: ShmbusError) => {
      try {
        this.port.send(port, id, KIND_REPLY, pack({ ok: false, code: error.code, message: error.message.slice(0, 160) }));
      } catch { /* connector gone */ }
      throw error;
    };
    if (hello.proto !== PROTOCOL) refuse(new VersionMismatchError('connector protocol', peerText(hello.proto), String(PROTOCOL)));
    if (!packetFits(packet)) refuse(new HandshakeError('connector\'s packet size is not one a System V message can have', { details: { packet, msgmax: msgLimits().msgmax } }));
    if (this.full()) refuse(this.limitError());
    let inbound: { msqid: number; packet: number };
    try {
      inbound = createInbound(this.endpoint);
    } catch (error) {
      refuse(asShmbusError(error));
      return;
    }
    const maxMessageSize = Math.min(this.endpoint.maxMessage, Math.max(0, Math.floor(max)));
    const connId = this.port.newId();
    let conn: SysvMqConnection | undefined;
    // Each connection holds the port too: it outlives the listener while connections are open.
    this.port.retain();
    try {
      conn = new SysvMqConnection({
        url: this.url, maxQueued: this.endpoint.maxQueued, maxMessageSize, port: this.port, id: connId,
        rxq: inbound.msqid, rxPacket: inbound.packet, txq: q, txPacket: packet, peerPort: port, peerId: id,
        peerPid: pid, peerStart, side: 'listener',
      });
      const reply = pack({
        ok: true, pid: process.pid, start: startText(process.pid), port: this.port.msqid, id: connId, q: inbound.msqid,
        max: maxMessageSize, packet: inbound.packet,
      });
      if (!this.port.send(port, id, KIND_REPLY, reply)) throw new HandshakeError('the connector\'s port is full');
    } catch (error) {
      if (conn) void conn.close();
      else { msgRemoveIfExists(inbound.msqid); this.port.release(); }
      throw error;
    }
    this.track(conn);
    this.offer(conn);
  }

  protected async stop(): Promise<void> {
    this.port.unregister(this.id);
    // Only our own queue: if it was replaced (we were thought dead), the card names someone else.
    try {
      const card = await readCard(this.kid).catch(() => undefined);
      if (!card || card.pid === process.pid) msgRemoveIfExists(this.kid);
    } finally {
      this.cancelExit();
      this.port.release();
    }
  }
}

/** Creates the key's queue with our card; replaces a stale one (its listener is dead) once. */
async function createListenerQueue(ep: SysvMqEndpoint, port: Port, id: number): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    let kid: number;
    try {
      kid = msgGet(ep.key, IPC_CREAT | IPC_EXCL | ep.perm);
    } catch (error) {
      if (!(error instanceof ShmbusError) || error.code !== ErrorCode.EXISTS || attempt > 2) throw error;
      let old: number;
      try {
        old = msgGet(ep.key, 0);
      } catch (e) {
        if (e instanceof ShmbusError && e.code === ErrorCode.NOT_FOUND) continue;
        throw e;
      }
      const details = { url: ep.url, key: formatMsgKey(ep.key) };
      const card = await readCard(old);
      if (!card) throw new ShmbusError(ErrorCode.EXISTS, 'the key names a queue that is not a shmbus listener', { details });
      if (isProcessAlive(card.pid, card.start)) throw new ShmbusError(ErrorCode.EXISTS, 'an endpoint already listens at this URL', { details: { ...details, pid: card.pid } });
      // A killed listener's queue, its port and the queues it received from: its reapers (the ones `shmbus clean`
      // runs) take them, each checked to be that listener's (never a queue a card merely names).
      const report = reap(sysvmqReapers, { select: (c) => (c as MsgQueueCandidate).endpointKey === ep.key });
      const kept = report.outcomes.find((o) => o.kind === 'sysvmq-key' && o.action === 'kept');
      if (kept) throw new ShmbusError(ErrorCode.EXISTS, 'a killed listener\'s queue holds the key and cannot be removed', { details: { ...details, why: kept.why } });
      continue;
    }
    try {
      const buf = new Uint8Array(MSG_HEADER + 256);
      setMsgType(buf, CARD_TYPE);
      const card = pack({ shmbus: 1, proto: PROTOCOL, pid: process.pid, start: startText(process.pid), port: port.msqid, id });
      buf.set(card, MSG_HEADER);
      if (!msgSend(kid, buf, card.length)) throw new ShmbusError(ErrorCode.LIMIT, 'the listener queue cannot hold its card', { details: { key: formatMsgKey(ep.key) } });
    } catch (error) {
      msgRemoveIfExists(kid);
      throw error;
    }
    return kid;
  }
}

/** Both threads a System V connection uses (the port's msgrcv, and epoll for the peer's pidfd) run before a
 * listener or connection is handed out, so its first messages do not wait for a thread to load (~50 ms). */
async function threadsRunning(): Promise<void> {
  await Promise.all([MsgrcvThread.get().start(), EpollThread.get().start()]);
}

export async function listen(url: string, options: ListenOptions = {}): Promise<SysvMqListener> {
  const ep = parseSysvMqUrl(url);
  const maxConnections = maxConnectionsOf(options);
  await threadsRunning();
  const port = Port.acquire(ep.perm);
  const id = port.newId();
  let kid: number;
  try {
    kid = await createListenerQueue(ep, port, id);
  } catch (error) {
    port.release();
    throw error;
  }
  return new SysvMqListener(ep, kid, port, id, maxConnections);
}

// ------------------------------------------------------------------------------------------------ connector

export async function connect(url: string, options: ConnectOptions = {}): Promise<SysvMqConnection> {
  const ep = parseSysvMqUrl(url);
  const timeout = options.timeout ?? DEFAULT_TIMEOUT;
  await threadsRunning();
  const notFound = (message: string) => new ShmbusError(ErrorCode.NOT_FOUND, message, { details: { url, key: formatMsgKey(ep.key) } });
  let kid: number;
  try {
    kid = msgGet(ep.key, 0);
  } catch (error) {
    if (error instanceof ShmbusError && error.code === ErrorCode.NOT_FOUND) throw notFound('nothing listens at this URL');
    throw error;
  }
  const card = await readCard(kid);
  if (!card) throw notFound('nothing listens at this URL (the key\'s queue has no listener card)');
  if (!isProcessAlive(card.pid, card.start)) throw notFound('nothing listens at this URL (the listener is gone)');

  const port = Port.acquire(ep.perm);
  const id = port.newId();
  let inbound: { msqid: number; packet: number } | undefined;
  let cancelExit: (() => void) | undefined;
  try {
    inbound = createInbound(ep);
    const rxq = inbound.msqid;
    cancelExit = onProcessExit(() => { msgRemoveIfExists(rxq); });
    const hello = pack({
      shmbus: 1, proto: PROTOCOL, pid: process.pid, start: startText(process.pid), port: port.msqid, id, q: rxq,
      max: ep.maxMessage, packet: inbound.packet,
    });
    // Doorbells that come right behind the reply (the listener may send at once) arrive before the connection
    // exists: the handshake's route keeps them for it. Losing a WANT would leave the listener waiting forever.
    const early = new Set<number>();
    const reply = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const deadline = Date.now() + timeout;
      let done = false;
      const finish = (error?: Error, value?: Record<string, unknown>) => {
        if (done) return;
        done = true;
        clearInterval(timer);
        if (error) {
          port.unregister(id);
          reject(error);
        } else {
          resolve(value!);
        }
      };
      port.register(id, {
        onPortMessage(kind, payload) {
          if (kind !== KIND_REPLY) {
            if (done) early.add(kind);
            return;
          }
          const r = decode(payload);
          if (!r) finish(new HandshakeError('reply does not decode', { details: { url } }));
          else finish(undefined, r);
        },
        onPortFailure: (error) => finish(error),
      });
      let sent = false;
      const trySend = () => {
        try {
          sent = port.send(card.port, card.id, KIND_HELLO, hello);
        } catch (error) {
          finish(asShmbusError(error));
        }
      };
      const timer = setInterval(() => {
        if (Date.now() >= deadline) finish(new TimeoutError('handshake timed out', { url, timeoutMs: timeout }));
        else if (!isProcessAlive(card.pid, card.start) || !msgExists(kid)) finish(notFound('the listener went away during the handshake'));
        else if (!sent) trySend();
      }, Math.min(LIVENESS_MS, timeout));
      trySend();
    });
    if (reply.ok !== true) {
      port.unregister(id);
      throw peerError(reply, ErrorCode.HANDSHAKE, 'listener refused: ', 'no reason', { url });
    }
    const { pid, port: peerPort, id: peerId, q, max, packet } = reply;
    if (typeof pid !== 'number' || typeof peerPort !== 'number' || typeof peerId !== 'number' || typeof q !== 'number'
      || typeof max !== 'number' || typeof packet !== 'number' || !packetFits(packet)) {
      port.unregister(id);
      throw new HandshakeError('reply lacks fields', { details: { url } });
    }
    if (pid !== card.pid) throw new HandshakeError('the reply comes from another process than the listener', { details: { url, pid, listener: card.pid } });
    checkPeerQueues(pid, [q, peerPort]);
    cancelExit();
    cancelExit = undefined;
    const conn = new SysvMqConnection({
      url, maxQueued: ep.maxQueued, maxMessageSize: Math.min(ep.maxMessage, max), port, id,
      rxq, rxPacket: inbound.packet, txq: q, txPacket: packet, peerPort, peerId, peerPid: pid,
      peerStart: parseStart(reply.start), side: 'connector',
    });
    inbound = undefined;
    // After the caller's continuation, like the first read (startReading): a WANT must not be lost, and a DATA
    // must not deliver before the caller could attach its handlers.
    if (early.size > 0) setImmediate(() => { for (const kind of early) conn.onPortMessage(kind); });
    return conn;
  } catch (error) {
    port.unregister(id);
    if (inbound) msgRemoveIfExists(inbound.msqid);
    cancelExit?.();
    port.release();
    throw error;
  }
}

export const sysvmqTransport: Transport = {
  name: 'sysvmq',
  schemes: ['sysvmq'],
  listen,
  connect,
};
