/**
 * The reapers of wake objects (host/reap.ts runs them): what a process that parked on `sem`, `mq` or `sysvsem`
 * leaves when it dies without cleaning up (SIGKILL, a crash). A live owner removes its own at close and at exit.
 *
 *   /dev/shm/sem.shmbus-wake.<pid>.<n>      POSIX semaphores (wake=sem)
 *   /dev/mqueue/shmbus-wake.<pid>.<n>       POSIX message queues (wake=mq), where the mqueue file system is mounted
 *   System V sets with key 0xb5<pid>        (wake=sysvsem) of two semaphores, whose liveness semaphore (#1, held
 *                                           with SEM_UNDO by the owner) the kernel has taken back, and whose pid
 *                                           is not running
 */
import { listFiles, pidFileReaper, processVerdict, reap, removedNames, type Candidate, type ReapOptions, type Reaper } from '../reap.js';
import { listSemSets, semGetVal, semRemove } from '../sys/sem.js';
import { SYSVSEM_KEY_TAG } from './sysvsem.js';

/** glibc's sem_t: a named semaphore's file holds exactly one. */
const SEM_FILE_BYTES = 32;
const SEM_FILE = /^sem\.shmbus-wake\.([1-9][0-9]{0,9})\.[1-9][0-9]{0,15}$/;
const MQ_FILE = /^shmbus-wake\.([1-9][0-9]{0,9})\.[1-9][0-9]{0,15}$/;

/** A wake semaphore (host/wake/sem.ts): its name carries the owner's pid. */
export const wakeSemaphores = pidFileReaper('wake-sem', '/dev/shm/sem.shmbus-wake.<pid>.<n>', 'owner',
  (scope, kind) => listFiles(scope, kind, scope.shmDir, SEM_FILE, (entry, dir) => dir.lstat(entry)?.size === SEM_FILE_BYTES));

/** A wake queue (host/wake/mq.ts); unlinking its file in the mqueue file system is mq_unlink. */
export const wakeQueues = pidFileReaper('wake-mq', '/dev/mqueue/shmbus-wake.<pid>.<n>', 'owner',
  (scope, kind) => listFiles(scope, kind, scope.mqDir, MQ_FILE));

interface SemSetCandidate extends Candidate {
  readonly semid: number;
  readonly key: number;
  readonly pid: number;
}

/** The current entry of a set, if it still has the key and owner it was found with. */
function sameSet(c: SemSetCandidate): boolean {
  return listSemSets().some((s) => s.semid === c.semid && s.key === c.key && s.uid === c.uid && s.nsems === 2);
}

/** A process's wake set (host/wake/sysvsem.ts): the key is the tag and the pid, the shape two semaphores. */
export const wakeSemSets: Reaper<SemSetCandidate> = {
  kind: 'wake-sysvsem',
  pattern: 'System V semaphore sets with key 0xb5<pid> of 2 semaphores',
  find() {
    return listSemSets()
      .filter((s) => (s.key & 0xff000000) >>> 0 === SYSVSEM_KEY_TAG && s.nsems === 2)
      .map((s) => ({ kind: this.kind, name: `semid=${s.semid} key=0x${s.key.toString(16)}`, uid: s.uid, semid: s.semid, key: s.key, pid: s.key & 0xffffff }));
  },
  isDead(c) {
    if (!sameSet(c)) return { dead: false, why: 'changed since the scan' };
    // The owner holds #1 with SEM_UNDO: the kernel gives it back, whoever killed the owner and however.
    if (semGetVal(c.semid, 1) !== 0) return { dead: false, why: 'its liveness semaphore is held: the owner is alive' };
    return processVerdict('owner', c.pid);
  },
  remove(c, scope) {
    const verdict = this.isDead(c, scope);
    if (!verdict.dead) return verdict;
    return semRemove(c.semid) ? verdict : { dead: false, why: 'already gone' };
  },
};

export const wakeReapers: readonly Reaper[] = [wakeSemaphores as Reaper, wakeQueues as Reaper, wakeSemSets as Reaper];

/** Removes the wake objects dead processes left; returns what was removed (paths, `semid=… key=…`). */
export function reapDeadWakeObjects(shmDir = '/dev/shm', mqDir = '/dev/mqueue', options: Omit<ReapOptions, 'shmDir' | 'mqDir'> = {}): string[] {
  return removedNames(reap(wakeReapers, { ...options, shmDir, mqDir }));
}
