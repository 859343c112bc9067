/**
 * Removes the wake objects of processes that died without cleaning up (SIGKILL, a crash): what `shmbus clean`
 * runs. A live owner removes its own at close and at exit; only a dead one leaves them.
 *
 *   /dev/shm/sem.shmbus-wake.<pid>.<n>      POSIX semaphores (wake=sem)
 *   /dev/mqueue/shmbus-wake.<pid>.<n>       POSIX message queues (wake=mq), where the mqueue file system is mounted
 *   System V sets with key 0xb5<pid>        (wake=sysvsem) whose liveness semaphore (#1, held with SEM_UNDO by
 *                                           the owner) the kernel has taken back, and whose pid is not running
 */
import { readdirSync, unlinkSync } from 'node:fs';
import { isProcessAlive } from '../sys/proc.js';
import { listSemSets, semGetVal, semRemove } from '../sys/sem.js';
import { wakeMqUnlink } from '../sys/wakemq.js';
import { SYSVSEM_KEY_TAG } from './sysvsem.js';

const SEM_FILE = /^sem\.shmbus-wake\.(\d+)\.\d+$/;
const MQ_FILE = /^shmbus-wake\.(\d+)\.\d+$/;

function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Removes what dead processes left; returns a description of each object removed. */
export function reapDeadWakeObjects(shmDir = '/dev/shm', mqDir = '/dev/mqueue'): string[] {
  const removed: string[] = [];
  for (const file of list(shmDir)) {
    const m = SEM_FILE.exec(file);
    if (!m || isProcessAlive(Number(m[1]))) continue;
    try {
      unlinkSync(`${shmDir}/${file}`);
      removed.push(`${shmDir}/${file}`);
    } catch { /* raced with its owner or another cleaner */ }
  }
  for (const file of list(mqDir)) {
    const m = MQ_FILE.exec(file);
    if (!m || isProcessAlive(Number(m[1]))) continue;
    try {
      if (wakeMqUnlink(`/${file}`)) removed.push(`${mqDir}/${file}`);
    } catch { /* raced */ }
  }
  for (const set of listSemSets()) {
    if ((set.key & 0xff000000) >>> 0 !== SYSVSEM_KEY_TAG || set.nsems !== 2) continue;
    const pid = set.key & 0xffffff;
    try {
      if (semGetVal(set.semid, 1) !== 0 || isProcessAlive(pid)) continue;
      if (semRemove(set.semid)) removed.push(`semid ${set.semid} (key 0x${set.key.toString(16)})`);
    } catch { /* removed meanwhile */ }
  }
  return removed;
}
