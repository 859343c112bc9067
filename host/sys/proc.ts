/**
 * Process identity for segment ownership: a pid alone is reused by the kernel, so owners are recorded as
 * (pid, start time) and a segment's owner counts as alive only if both still match.
 */
import * as fs from 'node:fs';

interface ProcStat {
  state: string;
  startTime: bigint;
}

/** Parses /proc/<pid>/stat. The comm field (2) is in parentheses and may itself hold ')' and spaces, so the
 * fields are counted from the LAST ')'. Fields after it start at 3 (state); starttime is field 22. */
function readProcStat(pid: number): ProcStat | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  const close = text.lastIndexOf(')');
  if (close < 0) return undefined;
  const fields = text.slice(close + 2).split(' ');
  const state = fields[0];
  const start = fields[22 - 3];
  if (state === undefined || start === undefined || !/^\d+$/.test(start)) return undefined;
  return { state, startTime: BigInt(start) };
}

/** Start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat), or undefined if there is
 * no such process. Together with the pid it identifies one process for the life of the machine. */
export function processStartTime(pid: number): bigint | undefined {
  return readProcStat(pid)?.startTime;
}

/**
 * Whether `pid` is a running process, and, when `startTime` is given, the same one that had that start time
 * (not a later process that got the pid back). kill(pid, 0) semantics: EPERM means it exists but is not ours,
 * which still counts as alive. A zombie counts as dead: it will never clean up after itself.
 */
export function isProcessAlive(pid: number, startTime?: bigint): boolean {
  // kill(0, …) and kill(-n, …) address process groups, never a single process.
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const stat = readProcStat(pid);
  // No stat: either it exited since kill(), or /proc is not mounted and kill() is all we know (then assume alive:
  // the safe answer for a caller deciding whether to reap the owner's segments).
  if (stat === undefined) return !fs.existsSync('/proc/self/stat');
  if (stat.state === 'Z' || stat.state === 'X') return false;
  return startTime === undefined || stat.startTime === startTime;
}

/** Whether `tid` is a thread of process `pid` (its /proc/<pid>/task/<tid> exists). */
export function isThreadOf(pid: number, tid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0 || !Number.isInteger(tid) || tid <= 0) return false;
  return fs.existsSync(`/proc/${pid}/task/${tid}`);
}

/**
 * Whether any task (a process or a thread of one) has the number `id` now. The kernel records some pids as a
 * thread's id (System V's lrpid: the receiving thread), and process and thread ids come from one pool, so a
 * number a dead process had may now be a thread's.
 */
export function taskIdInUse(id: number): boolean {
  if (!Number.isInteger(id) || id <= 0) return false;
  // /proc/<tid> resolves for a thread too, though /proc does not list it.
  return fs.existsSync(`/proc/${id}`);
}

/** The effective uid of a running process (the Uid: line of /proc/<pid>/status), or undefined. */
export function processEuid(pid: number): number | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    const line = fs.readFileSync(`/proc/${pid}/status`, 'latin1').split('\n').find((l) => l.startsWith('Uid:'));
    const euid = line?.slice(4).trim().split(/\s+/)[1];
    return euid === undefined ? undefined : Number(euid);
  } catch {
    return undefined;
  }
}

