/**
 * wake=sem: POSIX named semaphores. Each process that parks on `sem` has ONE semaphore,
 * `/shmbus-wake.<pid>.<n>` (the file /dev/shm/sem.shmbus-wake.<pid>.<n>), which the peers of all its channels
 * open by name (from the handshake) and post when they ring. The process's `sem` wait thread sleeps in sem_wait
 * on it; each post makes the main thread look at the wake words of every channel parked on `sem` (common.ts).
 *
 * No lost wakeup: a semaphore counts, so a post before the thread waits is kept; the peer bumps the ring word
 * before it posts, so the look that the post causes sees it. Posting past SEM_VALUE_MAX (EOVERFLOW: billions of
 * wakeups nobody took) falls back to the doorbell byte.
 *
 * Lifetime: created by the first handshake that asks for `sem`, unlinked when its last channel closes (the wait
 * thread then idles until the next semaphore) and at process exit (a crash leaves the file; `shmbus clean` removes those of dead pids). The peer keeps its own
 * mapping open until its channel closes, so an unlinked semaphore stays valid for it; a new one gets a new name.
 *
 * Trust: a bell posts only the peer's own semaphore: the name must be /shmbus-wake.<the peer's pid>.<n> (pid
 * from SO_PEERCRED), and the file, opened without O_CREAT and with O_NOFOLLOW, must belong to the peer's uid.
 */
import { semOpen, semClose, semUnlink, semPost, semOpenOwned, semUnmap } from '../sys/sem.js';
import type { PeerCredentials } from '../peer.js';
import { O_CREAT, O_EXCL } from '../sys/constants.js';
import { ErrorCode, ShmbusError } from '../errors.js';
import type { Bell, BellContext, WakeKind } from './mechanism.js';
import { ObjectMechanism, ringFallback, requirePeer, peerObjectName, WAKE_OBJECT_NAME, type Incarnation, type ProcessObject } from './common.js';
import { acquireWaitThread, retireWaitThread, type WaitThread } from './thread.js';
import { onProcessExit } from '../exit.js';

/** Names this mechanism creates: /shmbus-wake.<pid>.<n>. */
export const SEM_NAME = WAKE_OBJECT_NAME;

class SemObject implements ProcessObject {
  readonly name: string;
  private readonly sem: number;
  private readonly thread: WaitThread;
  private readonly unhook: () => void;

  constructor(gen: number, incarnation: Incarnation) {
    this.name = `/shmbus-wake.${process.pid}.${gen}`;
    this.sem = openExclusive(this.name);
    try {
      const sem = this.sem;
      this.thread = acquireWaitThread({
        family: 'sem',
        data: { sem },
        onMessage: () => incarnation.checkAll(),
        kick: () => { semPost(sem); },
        onFailure: (error) => incarnation.fail(error),
      });
    } catch (error) {
      semClose(this.sem);
      semUnlink(this.name);
      throw error;
    }
    const name = this.name;
    this.unhook = onProcessExit(() => semUnlink(name));
  }

  params(): Record<string, unknown> {
    return { name: this.name };
  }

  hold(): void {
    this.thread.hold();
  }

  release(): void {
    this.thread.release();
  }

  destroy(): void {
    this.unhook();
    try { semUnlink(this.name); } catch { /* already gone */ }
    // The thread may still be inside sem_wait: unmap the semaphore only once it has left (it then idles for the
    // next semaphore: thread.ts retireWaitThread).
    void retireWaitThread(this.thread).then(() => semClose(this.sem));
  }
}

/** Creates the semaphore; a file of that name left by a dead process with our pid is replaced. */
function openExclusive(name: string): number {
  try {
    return semOpen(name, O_CREAT | O_EXCL, 0o600, 0);
  } catch (error) {
    if (!(error instanceof ShmbusError) || error.code !== ErrorCode.EXISTS) throw error;
    semUnlink(name);
    return semOpen(name, O_CREAT | O_EXCL, 0o600, 0);
  }
}

/**
 * Maps the peer's semaphore after checking it is the peer's own: named for the peer's pid, opened without
 * O_CREAT and with O_NOFOLLOW, and owned by the peer's uid (host/sys/sem.ts semOpenOwned).
 */
function openPeerSem(params: Record<string, unknown>, peer: PeerCredentials | undefined): number {
  const who = requirePeer(peer, 'sem');
  return semOpenOwned(peerObjectName(params, 'name', 'sem', who), who.uid);
}

class SemBell implements Bell {
  private readonly ctx: BellContext;
  private sem: number;

  constructor(ctx: BellContext) {
    this.ctx = ctx;
    this.sem = openPeerSem(ctx.params, ctx.peer);
  }

  ring(kind: WakeKind): void {
    let posted = false;
    try {
      posted = this.sem !== 0 && semPost(this.sem);
    } catch { /* EINVAL: not a semaphore any more; the doorbell still works */ }
    if (posted) semMechanism.stats.rings++;
    else ringFallback(this.ctx.socket, kind, semMechanism.stats);
  }

  close(): void {
    if (this.sem === 0) return;
    const sem = this.sem;
    this.sem = 0;
    semUnmap(sem);
  }
}

class SemMechanism extends ObjectMechanism {
  readonly name = 'sem';

  constructor() {
    super('sem');
  }

  protected create(gen: number, incarnation: Incarnation): ProcessObject {
    return new SemObject(gen, incarnation);
  }

  bell(ctx: BellContext): Bell {
    return new SemBell(ctx);
  }

  checkPeer(params: Record<string, unknown>, peer: PeerCredentials | undefined): void {
    semUnmap(openPeerSem(params, peer));
  }
}

export const semMechanism = new SemMechanism();
