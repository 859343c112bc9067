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
import { existsSync } from 'node:fs';
import koffi from 'koffi';
import {
  sigrtmin, sigrtmax, installNoopHandler, pidfdOpenThread, pidfdSendSignalRaw, tgsigqueueRaw, makeSiginfo,
  setSiginfoValue, closeFd, blockInThisThread, unblockInThisThread, signalfdOpen, signalfdReadRaw, signalfdValue,
  SIGNALFD_SIGINFO_SIZE,
} from '../sys/signal.js';
import { gettid } from '../sys/futex.js';
import { processStartTime } from '../sys/proc.js';
import { Errno, ErrorCode, PeerDeadError, ShmbusError, SystemError } from '../errors.js';
import type { Bell, BellContext, WakeKind } from './mechanism.js';
import { ObjectMechanism, ringFallback, param, isInt, isString, type Incarnation, type ProcessObject } from './common.js';

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
    const p = ctx.params;
    this.pid = param(p, 'pid', isInt, 'signal');
    this.tid = param(p, 'tid', isInt, 'signal');
    this.signal = param(p, 'signal', isInt, 'signal');
    this.id = param(p, 'id', isInt, 'signal');
    const startTime = param(p, 'startTime', isString, 'signal');
    if (this.pid <= 0 || this.tid <= 0 || this.signal < sigrtmin() || this.signal > sigrtmax() || !/^\d+$/.test(startTime)) {
      throw new ShmbusError(ErrorCode.HANDSHAKE, 'the peer\'s signal wake parameters are out of range', { details: { pid: this.pid, tid: this.tid, signal: this.signal } });
    }
    if (pidfdThreads !== false) {
      try {
        this.pidfd = pidfdOpenThread(this.tid);
        pidfdThreads = true;
      } catch (error) {
        if (!(error instanceof SystemError) || error.errno !== Errno.EINVAL) throw error;
        pidfdThreads = false;
      }
    }
    // Checked after the pidfd is open: from then on the pidfd names this thread whatever happens to the ids.
    const sameProcess = existsSync(`/proc/${this.pid}/task/${this.tid}`) && processStartTime(this.pid) === BigInt(startTime);
    if (!sameProcess) {
      this.close();
      throw new PeerDeadError('the peer\'s wake thread is not running any more', { pid: this.pid, tid: this.tid });
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
}

export const signalMechanism = new SignalMechanism();
