/**
 * wake=signal: a real-time signal carrying the channel id, queued to the thread whose event loop serves the
 * channel, and read there through a signalfd.
 *
 * Receiving. A process that parks on `signal` blocks the wake signal (SIGRTMIN+6) in its event-loop thread
 * only, and opens a signalfd for it, watched by that thread's epoll (a libuv poll handle). Peers send the signal
 * to that thread by id; it stays pending there (blocked), wakes the epoll, and the signalfd hands it over with
 * its si_value: the channel's id (from the handshake) times two plus the direction. The main thread then looks
 * at that channel's wake word. One kernel wakeup per ring, no thread of ours, no threadpool. Why not a handler,
 * and why peers address the thread and not the process: see host/sys/signal.ts (a process-directed signal would
 * be delivered to whichever of Node's threads does not block it, and they cannot all be made to block it after
 * start).
 *
 * Sending. The handshake gives the peer our pid, the thread's tid, our start time and the signal number. The
 * peer opens a pidfd for that thread (PIDFD_THREAD), checks that it still belongs to a process with that pid
 * and start time (against pid reuse), and rings with pidfd_send_signal(SI_QUEUE, value), which is sigqueue
 * aimed at one thread. A pidfd names one thread for as long as it is open, so a ring can never reach another
 * process, even after we die and our pid is reused.
 *
 * Trust: the peer chooses what it puts in the handshake, so none of it is taken on its word. The pid must be
 * the peer's own (SO_PEERCRED of the control socket), the tid one of that process's threads, the start time
 * that process's, its effective uid the peer's, and the signal exactly the wake signal; anything else refuses
 * the handshake (PERMISSION_DENIED, or HANDSHAKE for a malformed or foreign signal number).
 *
 * No lost wakeup, even when signals coalesce: real-time signals queue one entry per send (they do not coalesce
 * like standard signals), so every ring arrives with its own id. When the queue is full (RLIMIT_SIGPENDING of
 * the receiving user: EAGAIN), or the thread is gone (ESRCH), the bell falls back to the doorbell byte on the
 * control socket. The peer bumps the ring word before it signals, so the look always sees it.
 *
 * Side effects on the process: the wake signal's disposition becomes a no-op handler for the rest of its life
 * (so that a stray process-directed signal cannot kill it; an embedder's own handler for that signal is refused
 * with ERR_SHMBUS_EXISTS instead of being replaced), and while the mechanism is in use the event-loop thread
 * blocks that one signal (threads it starts meanwhile inherit the block, which only means the signal is not
 * delivered to them either).
 */
import koffi from 'koffi';
import {
  sigrtmin, installNoopHandler, pidfdOpenThread, pidfdSendSignalRaw, tgsigqueueRaw, makeSiginfo,
  setSiginfoValue, closeFd, blockInThisThread, unblockInThisThread, signalfdOpen, signalfdReadRaw, signalfdValue,
  SIGNALFD_SIGINFO_SIZE,
} from '../sys/signal.js';
import { gettid } from '../sys/futex.js';
import { processStartTime, processEuid, isProcessAlive, isThreadOf } from '../sys/proc.js';
import type { PeerCredentials } from '../peer.js';
import { Errno, ErrorCode, PeerDeadError, ShmbusError, SystemError } from '../errors.js';
import type { Bell, BellContext, WakeKind } from './mechanism.js';
import { ObjectMechanism, ringFallback, param, isInt, isString, requirePeer, type Incarnation, type ProcessObject } from './common.js';

/** SIGRTMIN + this is the wake signal (glibc reserves the two below SIGRTMIN; low RT signals are popular). */
const SIGNAL_OFFSET = 6;

export function wakeSignal(): number {
  return sigrtmin() + SIGNAL_OFFSET;
}

class SignalObject implements ProcessObject {
  private readonly tid: number;
  private readonly signal: number;
  private readonly fd: number;
  private readonly poll: ReturnType<typeof koffi.node.poll>;
  private readonly buffer = new Uint8Array(SIGNALFD_SIGINFO_SIZE * 64);

  constructor(incarnation: Incarnation) {
    const signal = (this.signal = wakeSignal());
    installNoopHandler(signal);
    // Block before the signalfd exists and before any peer knows where to send: from now on every signal sent to
    // this thread waits in its queue until read.
    blockInThisThread(signal);
    this.tid = gettid();
    let fd = -1;
    try {
      fd = signalfdOpen(signal);
      this.poll = koffi.node.poll(fd, { readable: true }, () => this.drain(incarnation));
    } catch (error) {
      if (fd >= 0) closeFd(fd);
      unblockInThisThread(signal);
      throw error instanceof ShmbusError ? error : new ShmbusError(ErrorCode.SYSCALL, 'cannot watch the wake signal', { cause: error });
    }
    this.fd = fd;
    // Watching alone does not keep the process alive; a parked channel does (hold).
    this.poll.unref();
  }

  private drain(incarnation: Incarnation): void {
    for (;;) {
      const n = signalfdReadRaw(this.fd, this.buffer);
      for (let i = 0; i < n; i++) {
        const v = signalfdValue(this.buffer, i);
        incarnation.checkOne(v >>> 1, (v & 1) as WakeKind);
      }
      if (n < 64) return;
    }
  }

  params(): Record<string, unknown> {
    return { pid: process.pid, tid: this.tid, startTime: String(processStartTime(process.pid) ?? 0n), signal: this.signal };
  }

  hold(): void {
    this.poll.ref();
  }

  release(): void {
    this.poll.unref();
  }

  destroy(): void {
    this.poll.close();
    closeFd(this.fd);
    // A ring still on its way is then delivered to the no-op handler: harmless.
    unblockInThisThread(this.signal);
  }
}

/** pidfd_open(PIDFD_THREAD) exists (Linux ≥ 6.9); else rings go through rt_tgsigqueueinfo. */
let pidfdThreads: boolean | undefined;

/** What a peer's signal params name, after the checks that need no kernel object (see verifyTarget). */
interface SignalTarget { pid: number; tid: number; signal: number; id: number; startTime: bigint }

function signalTarget(params: Record<string, unknown>, peer: PeerCredentials | undefined): SignalTarget {
  const who = requirePeer(peer, 'signal');
  const pid = param(params, 'pid', isInt, 'signal');
  const tid = param(params, 'tid', isInt, 'signal');
  const signal = param(params, 'signal', isInt, 'signal');
  const id = param(params, 'id', isInt, 'signal');
  const startTime = param(params, 'startTime', isString, 'signal');
  if (tid <= 0 || !/^\d{1,20}$/.test(startTime)) {
    throw new ShmbusError(ErrorCode.HANDSHAKE, 'the peer\'s signal wake parameters are out of range', { details: { pid, tid, startTime } });
  }
  // Only the wake signal: any other number could be one the peer's process (or, if the checks below were ever
  // fooled, a victim) does not expect, with its default action.
  if (signal !== wakeSignal()) {
    throw new ShmbusError(ErrorCode.HANDSHAKE, 'the peer asked to be woken with a signal other than the wake signal', { details: { signal, expected: wakeSignal() } });
  }
  if (pid !== who.pid) {
    throw new ShmbusError(ErrorCode.PERMISSION_DENIED, 'the peer named another process as its wake target', { details: { pid, peerPid: who.pid } });
  }
  return { pid, tid, signal, id, startTime: BigInt(startTime) };
}

/**
 * Checks, after a pidfd pins the thread (where the kernel has PIDFD_THREAD), that the thread belongs to the
 * peer: a thread of the peer's pid, in a process that started when the peer says it did and runs as the
 * peer's uid. The start time rules out a process that got the peer's pid after the peer died.
 */
function verifyTarget(t: SignalTarget, peer: PeerCredentials): void {
  if (!isProcessAlive(t.pid)) throw new PeerDeadError('the peer\'s wake thread is not running any more', { pid: t.pid, tid: t.tid });
  const refuse = (why: string, details: Record<string, unknown>) => {
    throw new ShmbusError(ErrorCode.PERMISSION_DENIED, `the peer's wake thread is not its own: ${why}`, { details: { pid: t.pid, tid: t.tid, ...details } });
  };
  if (!isThreadOf(t.pid, t.tid)) refuse('not a thread of the peer', {});
  // The pid is the one the kernel gave for the peer when it connected; a process with another start time there
  // means the peer has gone (its pid reused), or it lied about itself: either way nothing to ring.
  const started = processStartTime(t.pid);
  if (started !== t.startTime) {
    throw new PeerDeadError('the process with the peer\'s pid is not the one that connected', { pid: t.pid, startTime: String(t.startTime), found: String(started) });
  }
  const euid = processEuid(t.pid);
  if (euid !== peer.uid) refuse('the process runs as another user', { uid: euid, expectedUid: peer.uid });
}

/** pidfd_open(tid, PIDFD_THREAD) when the kernel has it, else -1 (rings then go by pid and tid). */
function openThread(tid: number): number {
  if (pidfdThreads === false) return -1;
  try {
    const fd = pidfdOpenThread(tid);
    pidfdThreads = true;
    return fd;
  } catch (error) {
    if (!(error instanceof SystemError) || error.errno !== Errno.EINVAL) throw error;
    pidfdThreads = false;
    return -1;
  }
}

class SignalBell implements Bell {
  private readonly ctx: BellContext;
  private readonly pid: number;
  private readonly tid: number;
  private readonly signal: number;
  private pidfd = -1;
  private readonly info: Uint8Array;
  private readonly id: number;

  constructor(ctx: BellContext) {
    this.ctx = ctx;
    const target = signalTarget(ctx.params, ctx.peer);
    ({ pid: this.pid, tid: this.tid, signal: this.signal, id: this.id } = target);
    this.pidfd = openThread(this.tid);
    // Checked after the pidfd is open: from then on the pidfd names this thread whatever happens to the ids.
    try {
      verifyTarget(target, ctx.peer!);
    } catch (error) {
      this.close();
      throw error;
    }
    this.info = makeSiginfo(this.signal, 0);
  }

  ring(kind: WakeKind): void {
    setSiginfoValue(this.info, (this.id << 1) | kind);
    const errno = this.pidfd >= 0
      ? pidfdSendSignalRaw(this.pidfd, this.signal, this.info)
      : tgsigqueueRaw(this.pid, this.tid, this.signal, this.info);
    if (errno === 0) signalMechanism.stats.rings++;
    else ringFallback(this.ctx.socket, kind, signalMechanism.stats);
  }

  close(): void {
    if (this.pidfd < 0) return;
    const fd = this.pidfd;
    this.pidfd = -1;
    closeFd(fd);
  }
}

class SignalMechanism extends ObjectMechanism {
  readonly name = 'signal';

  constructor() {
    super('signal');
  }

  protected create(_gen: number, incarnation: Incarnation): ProcessObject {
    return new SignalObject(incarnation);
  }

  bell(ctx: BellContext): Bell {
    return new SignalBell(ctx);
  }

  checkPeer(params: Record<string, unknown>, peer: PeerCredentials | undefined): void {
    const target = signalTarget(params, peer);
    const pidfd = openThread(target.tid);
    try {
      verifyTarget(target, peer!);
    } finally {
      if (pidfd >= 0) closeFd(pidfd);
    }
  }
}

export const signalMechanism = new SignalMechanism();
