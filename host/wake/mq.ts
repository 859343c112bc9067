/**
 * wake=mq: a POSIX message queue as the doorbell. Each process that parks on `mq` has ONE queue,
 * `/shmbus-wake.<pid>.<n>`, which the peers of all its channels open by name (from the handshake) and send a
 * 4-byte message to when they ring: the channel's id (from the handshake) times two, plus the direction.
 *
 * No thread: on Linux an mqd_t is a file descriptor, readable while a message waits, so the event loop watches
 * it (a libuv poll handle through koffi) and the main thread drains the queue without blocking. Each message
 * makes the main thread look at the wake words of the channel it names.
 *
 * No lost wakeup: the peer bumps the ring word before it sends, so the look sees it. A full queue (EAGAIN: the
 * queue holds fs.mqueue.msg_max messages, 10 by default) makes the bell fall back to the doorbell byte on the
 * control socket, so a wakeup is never dropped for lack of room.
 *
 * Lifetime: created by the first handshake that asks for `mq`, unlinked when its last channel closes and at
 * process exit (a crash leaves /dev/mqueue/shmbus-wake.<pid>.<n>; `shmbus clean` removes those of dead pids).
 *
 * Trust: a bell sends only to the peer's own queue: /shmbus-wake.<the peer's pid>.<n> (pid from SO_PEERCRED),
 * opened without O_CREAT, owned by the peer's uid.
 */
import { fstatSync } from 'node:fs';
import koffi from 'koffi';
import { wakeMqOpen, wakeMqClose, wakeMqUnlink, wakeMqSendRaw, wakeMqReceiveRaw, mqMsgMax } from '../sys/wakemq.js';
import { O_CREAT, O_EXCL, O_RDONLY, O_WRONLY, O_NONBLOCK } from '../sys/constants.js';
import { ErrorCode, ShmbusError } from '../errors.js';
import type { Bell, BellContext, WakeKind } from './mechanism.js';
import { ObjectMechanism, ringFallback, param, isInt, requirePeer, peerObjectName, WAKE_OBJECT_NAME, type Incarnation, type ProcessObject } from './common.js';
import type { PeerCredentials } from '../peer.js';
import { onProcessExit } from '../exit.js';

/** Names this mechanism creates: /shmbus-wake.<pid>.<n>. */
export const MQ_NAME = WAKE_OBJECT_NAME;
const MESSAGE_BYTES = 4;

class MqObject implements ProcessObject {
  readonly name: string;
  private readonly mqd: number;
  private readonly poll: ReturnType<typeof koffi.node.poll>;
  private readonly unhook: () => void;
  private readonly buffer = new Int32Array(1);

  constructor(gen: number, incarnation: Incarnation) {
    this.name = `/shmbus-wake.${process.pid}.${gen}`;
    this.mqd = openExclusive(this.name);
    try {
      this.poll = koffi.node.poll(this.mqd, { readable: true }, () => this.drain(incarnation));
    } catch (error) {
      wakeMqClose(this.mqd);
      wakeMqUnlink(this.name);
      throw new ShmbusError(ErrorCode.SYSCALL, 'cannot watch the wake queue', { cause: error, details: { name: this.name } });
    }
    // Watching alone does not keep the process alive; a parked channel does (hold).
    this.poll.unref();
    const name = this.name;
    this.unhook = onProcessExit(() => wakeMqUnlink(name));
  }

  private drain(incarnation: Incarnation): void {
    for (;;) {
      const n = wakeMqReceiveRaw(this.mqd, this.buffer);
      if (n < 0) return; // EAGAIN: empty (or EBADF after close)
      const v = this.buffer[0]!;
      incarnation.checkOne(v >>> 1, (v & 1) as WakeKind);
    }
  }

  params(): Record<string, unknown> {
    return { name: this.name };
  }

  hold(): void {
    this.poll.ref();
  }

  release(): void {
    this.poll.unref();
  }

  destroy(): void {
    this.unhook();
    this.poll.close();
    wakeMqClose(this.mqd);
    try { wakeMqUnlink(this.name); } catch { /* already gone */ }
  }
}

function openExclusive(name: string): number {
  const flags = O_RDONLY | O_CREAT | O_EXCL | O_NONBLOCK;
  const attr = { maxmsg: mqMsgMax(), msgsize: MESSAGE_BYTES };
  try {
    return wakeMqOpen(name, flags, 0o600, attr);
  } catch (error) {
    // A queue of that name left by a dead process that had our pid.
    if (!(error instanceof ShmbusError) || error.code !== ErrorCode.EXISTS) throw error;
    wakeMqUnlink(name);
    return wakeMqOpen(name, flags, 0o600, attr);
  }
}

/**
 * Opens the peer's queue for sending after checking it is the peer's own: named for the peer's pid, opened
 * without O_CREAT (a missing queue is NOT_FOUND, never created), and owned by the peer's uid (fstat of the
 * queue descriptor). The mqueue file system has no symlinks, so the name cannot lead elsewhere.
 */
function openPeerQueue(params: Record<string, unknown>, peer: PeerCredentials | undefined): number {
  const who = requirePeer(peer, 'mq');
  const name = peerObjectName(params, 'name', 'mq', who);
  const mqd = wakeMqOpen(name, O_WRONLY | O_NONBLOCK);
  let uid: number;
  try {
    uid = fstatSync(mqd).uid;
  } catch (error) {
    wakeMqClose(mqd);
    throw new ShmbusError(ErrorCode.SYSCALL, 'cannot fstat the peer\'s wake queue', { cause: error, details: { name } });
  }
  if (uid !== who.uid) {
    wakeMqClose(mqd);
    throw new ShmbusError(ErrorCode.PERMISSION_DENIED, 'the peer\'s wake queue belongs to another user', { details: { name, uid, expectedUid: who.uid } });
  }
  return mqd;
}

class MqBell implements Bell {
  private readonly ctx: BellContext;
  private mqd: number;
  private readonly id: number;
  private readonly message = new Int32Array(1);

  constructor(ctx: BellContext) {
    this.ctx = ctx;
    this.id = param(ctx.params, 'id', isInt, 'mq');
    this.mqd = openPeerQueue(ctx.params, ctx.peer);
  }

  ring(kind: WakeKind): void {
    this.message[0] = (this.id << 1) | kind;
    if (this.mqd >= 0 && wakeMqSendRaw(this.mqd, this.message, MESSAGE_BYTES) === 0) mqMechanism.stats.rings++;
    else ringFallback(this.ctx.socket, kind, mqMechanism.stats);
  }

  close(): void {
    if (this.mqd < 0) return;
    const mqd = this.mqd;
    this.mqd = -1;
    wakeMqClose(mqd);
  }
}

class MqMechanism extends ObjectMechanism {
  readonly name = 'mq';

  constructor() {
    super('mq');
  }

  protected create(gen: number, incarnation: Incarnation): ProcessObject {
    return new MqObject(gen, incarnation);
  }

  bell(ctx: BellContext): Bell {
    return new MqBell(ctx);
  }

  checkPeer(params: Record<string, unknown>, peer: PeerCredentials | undefined): void {
    param(params, 'id', isInt, 'mq');
    wakeMqClose(openPeerQueue(params, peer));
  }
}

export const mqMechanism = new MqMechanism();
