/**
 * wake=sysvsem: System V semaphores. Each process that parks on `sysvsem` has ONE set of two semaphores, with
 * the key 0xb5000000 | pid (so `shmbus clean` can find the sets of dead processes):
 *   #0  the doorbell: every peer of every channel adds 1 when it rings; the process's `sysvsem` wait thread
 *       sleeps in semop(#0, -1) and, once woken, takes what else is pending and has the main thread look at the
 *       wake words of every channel parked on `sysvsem` (common.ts).
 *   #1  liveness: the owner adds 1 with SEM_UNDO at creation, so the kernel takes it back when the owner dies,
 *       however it dies. A set whose #1 is 0 belongs to a dead process: `shmbus clean`, and the next process
 *       that gets the same pid, remove it. This is where SEM_UNDO helps crash safety; on #0 it would not (an undo
 *       on the poster's exit would take back wakeups it gave, and the owner never adds to #0).
 *
 * No lost wakeup: a semaphore counts, so a ring before the thread waits is kept; the peer bumps the ring word
 * before it adds, so the look that follows sees it. A value at SEMVMX (32767: ERANGE) or a set already removed
 * (EIDRM, EINVAL) makes the bell fall back to the doorbell byte.
 *
 * Lifetime: created by the first handshake that asks for `sysvsem`, removed (IPC_RMID, which also ends the
 * thread's semop with EIDRM; the thread then idles until the next set) when its last channel closes and at
 * process exit.
 *
 * Trust: a bell adds only to the peer's own set, checked once at the handshake (verifyPeerSet): key, owner,
 * creator and the pid holding #1 must all be the peer's (pid and uid from SO_PEERCRED). A semid is then
 * trusted for the life of the channel: the kernel gives a removed set's slot a new sequence number, so the same
 * semid names another set only after its slot in the kernel's table has been reused some 65,000 times.
 */
import { semGet, semOp, semOpRaw, semGetVal, semGetPid, semStat, semRemove, encodeSemOps } from '../sys/sem.js';
import type { PeerCredentials } from '../peer.js';
import { IPC_CREAT, IPC_EXCL, SEM_UNDO } from '../sys/constants.js';
import { ErrorCode, ShmbusError } from '../errors.js';
import type { Bell, BellContext, WakeKind } from './mechanism.js';
import { ObjectMechanism, ringFallback, param, isInt, requirePeer, type Incarnation, type ProcessObject } from './common.js';
import { acquireWaitThread, retireWaitThread, type WaitThread } from './thread.js';

/** The key of a process's wake set: this tag in the top byte, the pid (up to 2^24) below. */
export const SYSVSEM_KEY_TAG = 0xb5000000;
export const sysvsemKey = (pid: number) => (SYSVSEM_KEY_TAG | (pid & 0xffffff)) >>> 0;

class SysvSemObject implements ProcessObject {
  readonly semid: number;
  private readonly thread: WaitThread;

  constructor(incarnation: Incarnation) {
    this.semid = createSet(sysvsemKey(process.pid));
    const semid = this.semid;
    try {
      semOp(semid, [{ num: 1, op: 1, flags: SEM_UNDO }]);
      this.thread = acquireWaitThread({
        family: 'sysvsem',
        data: { semid },
        onMessage: () => incarnation.checkAll(),
        // Removing the set is how the thread is moved off it or stopped: its semop returns EIDRM. Also right at
        // process exit.
        kick: () => { semRemove(semid); },
        onFailure: (error) => incarnation.fail(error),
      });
    } catch (error) {
      semRemove(semid);
      throw error;
    }
  }

  params(): Record<string, unknown> {
    return { semid: this.semid };
  }

  hold(): void {
    this.thread.hold();
  }

  release(): void {
    this.thread.release();
  }

  destroy(): void {
    // Moves the epoch, then removes the set (the kick): the thread leaves it and idles for the next set.
    void retireWaitThread(this.thread);
    semRemove(this.semid);
  }
}

function createSet(key: number): number {
  for (let attempt = 0; ; attempt++) {
    try {
      return semGet(key, 2, IPC_CREAT | IPC_EXCL | 0o600);
    } catch (error) {
      if (attempt > 0 || !(error instanceof ShmbusError) || error.code !== ErrorCode.EXISTS) throw error;
      // A set with our key: left by a dead process that had our pid (its liveness semaphore is 0), or another
      // program's. Only the first is ours to remove.
      const old = semGet(key, 0, 0);
      if (semGetVal(old, 1) !== 0) {
        throw new ShmbusError(ErrorCode.EXISTS, 'a live System V semaphore set already has this process\'s wake key', { details: { key: '0x' + key.toString(16) } });
      }
      semRemove(old);
    }
  }
}

const PLUS_ONE = encodeSemOps([{ num: 0, op: 1, flags: 0 }]);

/**
 * The peer's semid, after checking that the set is the peer's own wake set: its key is the one for the peer's
 * pid, it has two semaphores, its owner and creator are the peer's uid, the last process to touch the liveness
 * semaphore (#1, which only the owner ever changes) is the peer's pid, and that semaphore is still held.
 */
function verifyPeerSet(params: Record<string, unknown>, peer: PeerCredentials | undefined): number {
  const who = requirePeer(peer, 'sysvsem');
  const semid = param(params, 'semid', isInt, 'sysvsem');
  if (semid < 0) throw new ShmbusError(ErrorCode.HANDSHAKE, 'the peer\'s sysvsem wake parameters are invalid', { details: { semid } });
  const st = semStat(semid);
  const expectedKey = sysvsemKey(who.pid);
  const refuse = (why: string, details: Record<string, unknown>) => {
    throw new ShmbusError(ErrorCode.PERMISSION_DENIED, `the peer named a semaphore set that is not its wake set: ${why}`, { details: { semid, ...details } });
  };
  if (st.key !== expectedKey) refuse('another key', { key: '0x' + st.key.toString(16), expectedKey: '0x' + expectedKey.toString(16) });
  if (st.uid !== who.uid || st.cuid !== who.uid) refuse('another owner', { uid: st.uid, cuid: st.cuid, expectedUid: who.uid });
  if (st.nsems !== 2) refuse('another shape', { nsems: st.nsems });
  if (semGetVal(semid, 1) === 0) {
    throw new ShmbusError(ErrorCode.PEER_DEAD, 'the peer\'s wake semaphore set belongs to a dead process', { details: { semid } });
  }
  const holder = semGetPid(semid, 1);
  if (holder !== who.pid) refuse('held by another process', { pid: holder, expectedPid: who.pid });
  return semid;
}

class SysvSemBell implements Bell {
  private readonly ctx: BellContext;
  private readonly semid: number;

  constructor(ctx: BellContext) {
    this.ctx = ctx;
    this.semid = verifyPeerSet(ctx.params, ctx.peer);
  }

  ring(kind: WakeKind): void {
    if (semOpRaw(this.semid, PLUS_ONE, 1) === 0) sysvsemMechanism.stats.rings++;
    else ringFallback(this.ctx.socket, kind, sysvsemMechanism.stats);
  }

  close(): void {}
}

class SysvSemMechanism extends ObjectMechanism {
  readonly name = 'sysvsem';

  constructor() {
    super('sysvsem');
  }

  protected create(_gen: number, incarnation: Incarnation): ProcessObject {
    return new SysvSemObject(incarnation);
  }

  bell(ctx: BellContext): Bell {
    return new SysvSemBell(ctx);
  }

  checkPeer(params: Record<string, unknown>, peer: PeerCredentials | undefined): void {
    verifyPeerSet(params, peer);
  }
}

export const sysvsemMechanism = new SysvSemMechanism();
