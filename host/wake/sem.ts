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
 * Lifetime: created by the first handshake that asks for `sem`, unlinked when its last channel closes and at
 * process exit (a crash leaves the file; `shmbus clean` removes those of dead pids). The peer keeps its own
 * mapping open until its channel closes, so an unlinked semaphore stays valid for it; a new one gets a new name.
 */
import { semOpen, semClose, semUnlink, semPost } from '../sys/sem.js';
import { O_CREAT, O_EXCL } from '../sys/constants.js';
import { ErrorCode, ShmbusError } from '../errors.js';
import type { Bell, BellContext, WakeKind } from './mechanism.js';
import { ObjectMechanism, ringFallback, param, isString, type Incarnation, type ProcessObject } from './common.js';
import { WaitThread, onProcessExit } from './thread.js';

/** Names this mechanism creates: /shmbus-wake.<pid>.<n>. */
export const SEM_NAME = /^\/shmbus-wake\.\d+\.\d+$/;

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
      this.thread = new WaitThread({
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
    // The thread may still be inside sem_wait: unmap the semaphore only once it has left.
    void this.thread.stop().then(() => semClose(this.sem));
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

class SemBell implements Bell {
  private readonly ctx: BellContext;
  private sem: number;

  constructor(ctx: BellContext) {
    this.ctx = ctx;
    const name = param(ctx.params, 'name', isString, 'sem');
    if (!SEM_NAME.test(name)) throw new ShmbusError(ErrorCode.HANDSHAKE, 'the peer named a semaphore that is not a shmbus wake semaphore', { details: { name } });
    this.sem = semOpen(name, 0);
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
    semClose(sem);
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
}

export const semMechanism = new SemMechanism();
