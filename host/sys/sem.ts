/**
 * Semaphores, both families, as typed wrappers in the style of shm.ts (errno read right after the call, failures
 * become SystemErrors with `name=value` details). Used by the `sem` and `sysvsem` wake mechanisms.
 *
 * POSIX named semaphores (sem_open …): glibc maps `/dev/shm/sem.<name>` and returns the address of the sem_t in
 * it. koffi hands that back as a number (declared intptr_t so SEM_FAILED, 0 in glibc, is visible); it is passed
 * back the same way. sem_open is variadic: declared with its full fixed prototype (mode and value always passed).
 *
 * System V semaphores (semget, semop, semctl): `struct sembuf` is 6 bytes (u16 num, i16 op, i16 flags). semctl is
 * variadic (its fourth argument is `union semun`); the commands used here pass an int, declared fixed.
 *
 * Limits, named in `details.limit` when the kernel refuses:
 *   semget ENOSPC   SEMMNI sets or SEMMNS semaphores exist (the 4th and 2nd fields of /proc/sys/kernel/sem)
 *   semop  ERANGE   a value would pass SEMVMX (32767)
 *   sem_post EOVERFLOW  the value would pass SEM_VALUE_MAX
 *   sem_open EMFILE/ENFILE  no file descriptor (the sem file is opened while it is mapped)
 */
import * as fs from 'node:fs';
import koffi from 'koffi';
import { BadArgumentError, ErrorCode, Errno, ShmbusError, SystemError, type ErrorCodeValue } from '../errors.js';
import {
  GETPID, GETVAL, IPC_NOWAIT, IPC_RMID, IPC_STAT, SEMBUF_SIZE, O_RDWR, O_NOFOLLOW, O_CLOEXEC, PROT_READ, PROT_WRITE, MAP_SHARED,
  CLOCK_MONOTONIC,
} from './constants.js';
import { monotonicDeadline } from './futex.js';

const lib = koffi.load('libc.so.6');

/** errno values the shared table in errors.ts does not have. */
export const ERANGE = 34;
export const EOVERFLOW = 75;
export const ELOOP = 40;

const c = {
  sem_open: lib.func('intptr_t sem_open(const char *name, int oflag, uint32_t mode, uint32_t value)') as
    (name: string, flags: number, mode: number, value: number) => number,
  sem_close: lib.func('int sem_close(intptr_t sem)') as (sem: number) => number,
  sem_unlink: lib.func('int sem_unlink(const char *name)') as (name: string) => number,
  sem_post: lib.func('int sem_post(intptr_t sem)') as (sem: number) => number,
  sem_wait: lib.func('int sem_wait(intptr_t sem)') as (sem: number) => number,
  sem_clockwait: lib.func('int sem_clockwait(intptr_t sem, int clock, const int64_t *abstime)') as (sem: number, clock: number, abstime: BigInt64Array) => number,
  sem_trywait: lib.func('int sem_trywait(intptr_t sem)') as (sem: number) => number,
  semget: lib.func('int semget(int key, int nsems, int semflg)') as (key: number, nsems: number, flags: number) => number,
  semop: lib.func('int semop(int semid, void *sops, size_t nsops)') as (semid: number, sops: Uint8Array, nsops: number) => number,
  semtimedop: lib.func('int semtimedop(int semid, void *sops, size_t nsops, const int64_t *timeout)') as (semid: number, sops: Uint8Array, nsops: number, timeout: BigInt64Array) => number,
  semctl: lib.func('int semctl(int semid, int semnum, int cmd, intptr_t arg)') as (semid: number, num: number, cmd: number, arg: number) => number,
  semctlBuf: lib.func('semctl', 'int', ['int', 'int', 'int', 'void *']) as (semid: number, num: number, cmd: number, buf: Uint8Array) => number,
  mmap: lib.func('intptr_t mmap(intptr_t addr, size_t len, int prot, int flags, int fd, int64_t offset)') as
    (addr: number, len: number, prot: number, flags: number, fd: number, offset: number) => number,
  munmap: lib.func('int munmap(intptr_t addr, size_t len)') as (addr: number, len: number) => number,
};

function fail(syscall: string, errno: number, details: Record<string, unknown>, code?: ErrorCodeValue): never {
  throw new SystemError(syscall, errno, details, code);
}

// ---------------------------------------------------------------------------------------------- POSIX

/** A semaphore name as sem_open wants it: '/' then 1…251 bytes without another '/' (glibc prepends "sem."). */
export function checkSemName(name: string): void {
  if (typeof name !== 'string' || !/^\/[^/\0]{1,251}$/.test(name)) {
    throw new BadArgumentError("a semaphore name is '/' followed by up to 251 bytes without '/'", { name });
  }
}

/**
 * sem_open. With O_CREAT|O_EXCL it creates the semaphore with `value` and sets `mode` exactly (sem_open masks it
 * with the umask, so the file in /dev/shm is chmod'ed after). Returns the sem_t address.
 */
export function semOpen(name: string, flags: number, mode = 0o600, value = 0): number {
  checkSemName(name);
  const sem = c.sem_open(name, flags, mode, value);
  if (sem === 0) {
    const errno = koffi.errno();
    switch (errno) {
      case Errno.EMFILE: fail('sem_open', errno, { name, limit: 'RLIMIT_NOFILE' }, ErrorCode.LIMIT);
      case Errno.ENFILE: fail('sem_open', errno, { name, limit: '/proc/sys/fs/file-max' }, ErrorCode.LIMIT);
      case Errno.EINVAL: case Errno.ENAMETOOLONG: fail('sem_open', errno, { name }, ErrorCode.BAD_ARGUMENT);
      default: fail('sem_open', errno, { name });
    }
  }
  if ((flags & 0o300) === 0o300) {
    // O_CREAT|O_EXCL: the file is certainly ours; give it the exact mode. A failure here leaves a semaphore that
    // is merely more restricted than asked, which is not worth failing the channel for.
    try { fs.chmodSync(`/dev/shm/sem.${name.slice(1)}`, mode); } catch { /* /dev/shm elsewhere: keep the umask'ed mode */ }
  }
  return sem;
}

export function semClose(sem: number): void {
  if (c.sem_close(sem) < 0) fail('sem_close', koffi.errno(), {});
}

/** sem_unlink. Returns false when the name did not exist (ENOENT): removing is idempotent for callers. */
export function semUnlink(name: string): boolean {
  checkSemName(name);
  if (c.sem_unlink(name) === 0) return true;
  const errno = koffi.errno();
  if (errno === Errno.ENOENT) return false;
  fail('sem_unlink', errno, { name });
}

/**
 * sem_post. Returns false (instead of throwing) when the value is at SEM_VALUE_MAX (EOVERFLOW): the waiter has
 * that many wakeups pending already, and the caller falls back to another doorbell.
 */
export function semPost(sem: number): boolean {
  if (c.sem_post(sem) === 0) return true;
  const errno = koffi.errno();
  if (errno === EOVERFLOW) return false;
  fail('sem_post', errno, {});
}

/** Raw sem_wait for a wait thread's loop: 0, or the errno (EINTR is an ordinary outcome there). */
export function semWaitRaw(sem: number): number {
  return c.sem_wait(sem) === 0 ? 0 : koffi.errno();
}

/** sem_wait that gives up after `ms` (sem_clockwait on CLOCK_MONOTONIC): 0, ETIMEDOUT, or another errno. */
export function semWaitBoundedRaw(sem: number, ms: number): number {
  return c.sem_clockwait(sem, CLOCK_MONOTONIC, monotonicDeadline(ms)) === 0 ? 0 : koffi.errno();
}

/** sem_trywait: true when it took one, false when the value was 0 (EAGAIN). */
export function semTryWait(sem: number): boolean {
  if (c.sem_trywait(sem) === 0) return true;
  const errno = koffi.errno();
  if (errno === Errno.EAGAIN || errno === Errno.EINTR) return false;
  fail('sem_trywait', errno, {});
}

/** sizeof(sem_t) on x86_64 glibc: the size of every /dev/shm/sem.* file sem_open creates. */
export const SEM_T_SIZE = 32;

/**
 * Opens an EXISTING named semaphore that must belong to `ownerUid`, the way sem_open does it (open the file in
 * /dev/shm, map it shared), but checking the file through the descriptor before mapping it: no O_CREAT (a
 * missing name is NOT_FOUND, never created), O_NOFOLLOW (a symlink planted under the name is refused), and fstat
 * must show a regular file of sizeof(sem_t) with one link, owned by `ownerUid` (PERMISSION_DENIED otherwise).
 * Returns the sem_t address for semPost; release it with semUnmap (not semClose: glibc's sem_close only knows
 * the semaphores its own sem_open mapped).
 */
export function semOpenOwned(name: string, ownerUid: number, dir = '/dev/shm'): number {
  checkSemName(name);
  const path = `${dir}/sem.${name.slice(1)}`;
  let fd: number;
  try {
    fd = fs.openSync(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  } catch (error) {
    const errno = -Number((error as NodeJS.ErrnoException).errno ?? 0);
    // ELOOP: a symlink planted under the name.
    fail('open', errno, { path }, errno === ELOOP ? ErrorCode.PERMISSION_DENIED : undefined);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.nlink !== 1 || st.size !== SEM_T_SIZE || st.uid !== ownerUid) {
      throw new ShmbusError(ErrorCode.PERMISSION_DENIED, 'the semaphore file is not one the peer created', {
        details: { path, uid: st.uid, expectedUid: ownerUid, size: st.size, nlink: st.nlink, file: st.isFile() },
      });
    }
    const addr = c.mmap(0, SEM_T_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (addr === -1) fail('mmap', koffi.errno(), { path, length: SEM_T_SIZE });
    return addr;
  } finally {
    fs.closeSync(fd);
  }
}

/** Unmaps a semaphore mapped by semOpenOwned. */
export function semUnmap(sem: number): void {
  if (c.munmap(sem, SEM_T_SIZE) < 0) fail('munmap', koffi.errno(), {});
}

// ---------------------------------------------------------------------------------------------- System V

const SEM_SYSCTL = '/proc/sys/kernel/sem';

export interface SemLimits {
  /** Most semaphores in one set. */
  semmsl: number;
  /** Most semaphores in the system (IPC namespace). */
  semmns: number;
  /** Most operations in one semop. */
  semopm: number;
  /** Most sets in the system (IPC namespace). */
  semmni: number;
}

/** /proc/sys/kernel/sem: "SEMMSL SEMMNS SEMOPM SEMMNI" (Linux defaults where it cannot be read). */
export function semLimits(): SemLimits {
  try {
    const [semmsl, semmns, semopm, semmni] = fs.readFileSync(SEM_SYSCTL, 'latin1').trim().split(/\s+/).map(Number);
    return { semmsl: semmsl!, semmns: semmns!, semopm: semopm!, semmni: semmni! };
  } catch {
    return { semmsl: 32000, semmns: 1024000000, semopm: 500, semmni: 32000 };
  }
}

/** Sets and semaphores in use, from /proc/sysvipc/sem (undefined where it cannot be read). */
export function semUsage(): { sets: number; semaphores: number } | undefined {
  try {
    const lines = fs.readFileSync('/proc/sysvipc/sem', 'latin1').trim().split('\n').slice(1);
    let semaphores = 0;
    for (const line of lines) semaphores += Number(line.trim().split(/\s+/)[3] ?? 0);
    return { sets: lines.length, semaphores };
  } catch {
    return undefined;
  }
}

/**
 * semget. ENOSPC is a kernel limit: which one (SEMMNI sets or SEMMNS semaphores) is read from /proc and named in
 * `details.limit`. EINVAL is `nsems` past SEMMSL (or a set with that key but fewer semaphores).
 */
export function semGet(key: number, nsems: number, flags: number): number {
  const id = c.semget(key | 0, nsems, flags);
  if (id >= 0) return id;
  const errno = koffi.errno();
  const details: Record<string, unknown> = { key: '0x' + (key >>> 0).toString(16).padStart(8, '0'), nsems };
  if (errno === Errno.ENOSPC) {
    const limits = semLimits();
    const usage = semUsage();
    const sets = usage !== undefined && usage.sets >= limits.semmni;
    fail('semget', errno, {
      ...details,
      limit: sets ? `${SEM_SYSCTL} SEMMNI (sets)` : `${SEM_SYSCTL} SEMMNS (semaphores)`,
      max: sets ? limits.semmni : limits.semmns,
      inUse: usage ? (sets ? usage.sets : usage.semaphores) : undefined,
    }, ErrorCode.LIMIT);
  }
  if (errno === Errno.EINVAL) fail('semget', errno, { ...details, limit: `${SEM_SYSCTL} SEMMSL`, max: semLimits().semmsl }, ErrorCode.LIMIT);
  fail('semget', errno, details);
}

/** One `struct sembuf` operation. */
export interface SemOp { num: number; op: number; flags: number }

/** Encodes operations into `buf` (reused by callers on hot paths) and returns it. */
export function encodeSemOps(ops: readonly SemOp[], buf = new Uint8Array(ops.length * SEMBUF_SIZE)): Uint8Array {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  ops.forEach((o, i) => {
    view.setUint16(i * SEMBUF_SIZE, o.num, true);
    view.setInt16(i * SEMBUF_SIZE + 2, o.op, true);
    view.setInt16(i * SEMBUF_SIZE + 4, o.flags, true);
  });
  return buf;
}

/** Raw semop for hot paths and wait loops: 0, or the errno. */
export function semOpRaw(semid: number, sops: Uint8Array, nsops: number): number {
  return c.semop(semid, sops, nsops) === 0 ? 0 : koffi.errno();
}

/** semop that gives up after `ms` (semtimedop): 0, EAGAIN when the time ran out, or another errno. */
export function semOpBoundedRaw(semid: number, sops: Uint8Array, nsops: number, ms: number): number {
  const ns = Math.round(ms * 1_000_000);
  const timeout = new BigInt64Array([BigInt(Math.floor(ns / 1_000_000_000)), BigInt(ns % 1_000_000_000)]);
  return c.semtimedop(semid, sops, nsops, timeout) === 0 ? 0 : koffi.errno();
}

/** semop that throws; EAGAIN (IPC_NOWAIT and it would block) is returned as false. */
export function semOp(semid: number, ops: readonly SemOp[]): boolean {
  const errno = semOpRaw(semid, encodeSemOps(ops), ops.length);
  if (errno === 0) return true;
  if (errno === Errno.EAGAIN && ops.some((o) => (o.flags & IPC_NOWAIT) !== 0)) return false;
  if (errno === ERANGE) fail('semop', errno, { semid, limit: 'SEMVMX', max: 32767 }, ErrorCode.LIMIT);
  fail('semop', errno, { semid }, errno === Errno.EINVAL || errno === Errno.EIDRM ? ErrorCode.NOT_FOUND : undefined);
}

/** semctl(GETVAL). */
export function semGetVal(semid: number, num: number): number {
  const v = c.semctl(semid, num, GETVAL, 0);
  if (v < 0) fail('semctl', koffi.errno(), { cmd: 'GETVAL', semid, num }, ErrorCode.NOT_FOUND);
  return v;
}

/** semctl(IPC_RMID): the set goes away at once; threads blocked in semop on it return EIDRM. False if it was gone. */
export function semRemove(semid: number): boolean {
  if (c.semctl(semid, 0, IPC_RMID, 0) === 0) return true;
  const errno = koffi.errno();
  if (errno === Errno.EINVAL || errno === Errno.EIDRM) return false;
  fail('semctl', errno, { cmd: 'IPC_RMID', semid });
}

/** System V semaphore sets as /proc/sysvipc/sem lists them (key, semid, nsems, uid). */
export function listSemSets(): { key: number; semid: number; nsems: number; uid: number }[] {
  let text: string;
  try {
    text = fs.readFileSync('/proc/sysvipc/sem', 'latin1');
  } catch {
    return [];
  }
  // Header: key semid perms nsems uid gid cuid cgid otime ctime
  return text.trim().split('\n').slice(1).map((line) => {
    const f = line.trim().split(/\s+/).map(Number);
    return { key: f[0]! >>> 0, semid: f[1]!, nsems: f[3]!, uid: f[4]! };
  });
}

/** What IPC_STAT says about a semaphore set (struct semid_ds, x86_64: ipc_perm key@0 uid@4 gid@8 cuid@12
 * cgid@16 mode@20, then sem_otime@48, sem_ctime@64, sem_nsems@80). */
export interface SemStat { key: number; uid: number; gid: number; cuid: number; cgid: number; mode: number; nsems: number }

/** semctl(IPC_STAT). NOT_FOUND when the set is gone, PERMISSION_DENIED without read permission. */
export function semStat(semid: number): SemStat {
  const buf = new Uint8Array(128);
  if (c.semctlBuf(semid, 0, IPC_STAT, buf) < 0) {
    const errno = koffi.errno();
    fail('semctl', errno, { cmd: 'IPC_STAT', semid }, errno === Errno.EINVAL || errno === Errno.EIDRM ? ErrorCode.NOT_FOUND : undefined);
  }
  const v = new DataView(buf.buffer);
  return {
    key: v.getUint32(0, true), uid: v.getUint32(4, true), gid: v.getUint32(8, true), cuid: v.getUint32(12, true),
    cgid: v.getUint32(16, true), mode: v.getUint32(20, true) & 0o777, nsems: Number(v.getBigUint64(80, true)),
  };
}

/** semctl(GETPID): the pid of the last process that did a semop on semaphore `num`. */
export function semGetPid(semid: number, num: number): number {
  const v = c.semctl(semid, num, GETPID, 0);
  if (v < 0) {
    const errno = koffi.errno();
    fail('semctl', errno, { cmd: 'GETPID', semid, num }, errno === Errno.EINVAL || errno === Errno.EIDRM ? ErrorCode.NOT_FOUND : undefined);
  }
  return v;
}
