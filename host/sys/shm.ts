/**
 * Typed, throwing wrappers over the shared-memory, mapping and file syscalls in `libc.ts`.
 *
 * Each wrapper returns plain numbers (fds, ids, sizes) or BigInt addresses, and turns a failure into a
 * `SystemError` carrying the syscall, errno and `name=value` details. errno is read immediately after the call.
 * Where the generic errno → code mapping of `SystemError` is wrong for a syscall, the wrapper overrides it.
 */
import * as fs from 'node:fs';
import { BadArgumentError, ErrorCode, Errno, SystemError, type ErrorCodeValue } from '../errors.js';
import * as libc from './libc.js';
import {
  IPC_RMID, IPC_SET, IPC_STAT, F_GET_SEALS, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, MS_SYNC, PROT_READ, PROT_WRITE, F_ADD_SEALS,
  MADV_POPULATE_WRITE, MADV_REMOVE, PAGE_SIZE,
} from './constants.js';

type Overrides = Partial<Record<number, ErrorCodeValue>>;

/** Throws the SystemError for a failed call. Callers pass `libc.lastErrno()` as the second argument, so errno is
 * read before the details object is even built (nothing, not even a GC, runs in between). */
function fail(syscall: string, errno: number, detailFields: Record<string, unknown>, overrides?: Overrides): never {
  throw new SystemError(syscall, errno, detailFields, overrides?.[errno]);
}

/** A key as the 8-digit hex `ipcs` prints, so messages and `ipcs -m` agree. */
export function formatKey(key: number): string {
  return '0x' + (key >>> 0).toString(16).padStart(8, '0');
}

function addrHex(addr: bigint): string {
  return '0x' + addr.toString(16);
}

/** Converts an `intptr_t` result (koffi gives a number while it fits in 53 bits) to a BigInt address. */
function toAddr(result: number | bigint): bigint {
  return typeof result === 'bigint' ? result : BigInt(result);
}

// ---------------------------------------------------------------------------------------------- System V

/** shmget. An EINVAL here is a size the kernel refuses (SHMMIN/SHMMAX, or larger than the existing segment) and
 * ENOSPC means SHMMNI ids or SHMALL pages are used up: both are kernel limits, not a full file system. */
export function shmGet(key: number, size: number, flags: number): number {
  const id = libc.shmget(key | 0, size, flags);
  if (id < 0) fail('shmget', libc.lastErrno(), { key: formatKey(key), size }, { [Errno.EINVAL]: ErrorCode.LIMIT, [Errno.ENOSPC]: ErrorCode.LIMIT });
  return id;
}

/** shmat at `addr` (null: the kernel picks). With SHM_REMAP it replaces whatever is mapped there. */
export function shmAttach(shmid: number, addr: bigint | null, flags: number): bigint {
  const result = libc.shmat(shmid, addr, flags);
  if (result === -1 || result === -1n) {
    // ENOMEM from shmat is address space / page tables, a limit of this process rather than of /dev/shm.
    fail('shmat', libc.lastErrno(), { shmid, addr: addr === null ? 'null' : addrHex(addr) }, { [Errno.ENOMEM]: ErrorCode.LIMIT });
  }
  return toAddr(result);
}

export function shmDetach(addr: bigint): void {
  if (libc.shmdt(addr) < 0) fail('shmdt', libc.lastErrno(), { addr: addrHex(addr) });
}

export interface ShmStat {
  key: number;
  /** Size in bytes (shm_segsz). */
  size: number;
  /** Creator's pid and the pid of the last shmat/shmdt. */
  cpid: number;
  lpid: number;
  /** Current attaches. */
  nattch: number;
  /** Permission bits only (0o777). */
  mode: number;
  uid: number;
  gid: number;
  /** Creator's uid (the owner, `uid`, can be changed with IPC_SET; the creator cannot). */
  cuid: number;
  /** IPC_RMID was done: the segment dies with its last detach (SHM_DEST). */
  removed: boolean;
}

const SHM_DEST = 0o1000;

/** shmctl(IPC_STAT). EINVAL means no segment has this id (any more): NOT_FOUND. */
export function shmStat(shmid: number): ShmStat {
  const ds: Partial<libc.RawShmidDs> = {};
  if (libc.shmctlStat(shmid, IPC_STAT, ds) < 0) fail('shmctl', libc.lastErrno(), { cmd: 'IPC_STAT', shmid }, { [Errno.EINVAL]: ErrorCode.NOT_FOUND });
  const { perm, segsz, cpid, lpid, nattch } = ds as libc.RawShmidDs;
  return {
    key: perm.key, size: Number(segsz), cpid, lpid, nattch: Number(nattch),
    mode: perm.mode & 0o777, uid: perm.uid, gid: perm.gid, cuid: perm.cuid, removed: (perm.mode & SHM_DEST) !== 0,
  };
}

/**
 * shmctl(IPC_SET) of the owner: makes `uid` the segment's owner while this process stays its creator. The kernel
 * grants the owner bits of the mode to both (ipcperms checks cuid and uid), so a 0600 segment then admits
 * exactly one other user. Only the owner, the creator or a privileged process may do this.
 */
export function shmSetOwner(shmid: number, uid: number, gid: number): void {
  const ds: Partial<libc.RawShmidDs> = {};
  if (libc.shmctlStat(shmid, IPC_STAT, ds) < 0) fail('shmctl', libc.lastErrno(), { cmd: 'IPC_STAT', shmid }, { [Errno.EINVAL]: ErrorCode.NOT_FOUND });
  const raw = ds as libc.RawShmidDs;
  raw.perm.uid = uid;
  raw.perm.gid = gid;
  if (libc.shmctlSet(shmid, IPC_SET, raw) < 0) fail('shmctl', libc.lastErrno(), { cmd: 'IPC_SET', shmid, uid, gid }, { [Errno.EINVAL]: ErrorCode.NOT_FOUND });
}

/** shmctl(IPC_RMID): the segment goes away now if nothing is attached, else at its last detach. */
export function shmRemove(shmid: number): void {
  if (libc.shmctl(shmid, IPC_RMID, null) < 0) fail('shmctl', libc.lastErrno(), { cmd: 'IPC_RMID', shmid }, { [Errno.EINVAL]: ErrorCode.NOT_FOUND });
}

/** ftok: a key from an existing path's device and inode and the low 8 bits of projId (which must not be 0). */
export function ftok(path: string, projId = 1): number {
  if (!Number.isInteger(projId) || projId < 1 || projId > 255) throw new BadArgumentError('ftok projId must be 1..255', { projId });
  // -1 is also a possible key (0xffffffff), so errno tells failure apart.
  libc.clearErrno();
  const key = libc.ftok(path, projId);
  if (key === -1 && libc.lastErrno() !== 0) fail('ftok', libc.lastErrno(), { path, projId });
  return key;
}

// ---------------------------------------------------------------------------------------------- POSIX, memfd

/** shm_open. A name glibc refuses (EINVAL, ENAMETOOLONG) is a bad argument. */
export function shmOpen(name: string, flags: number, mode: number): number {
  const fd = libc.shm_open(name, flags, mode);
  if (fd < 0) fail('shm_open', libc.lastErrno(), { name }, { [Errno.EINVAL]: ErrorCode.BAD_ARGUMENT, [Errno.ENAMETOOLONG]: ErrorCode.BAD_ARGUMENT });
  return fd;
}

export function shmUnlink(name: string): void {
  if (libc.shm_unlink(name) < 0) fail('shm_unlink', libc.lastErrno(), { name });
}

export function memfdCreate(name: string, flags: number): number {
  const fd = libc.memfd_create(name, flags);
  if (fd < 0) fail('memfd_create', libc.lastErrno(), { name }, { [Errno.EINVAL]: ErrorCode.BAD_ARGUMENT });
  return fd;
}

/** fcntl(F_ADD_SEALS) on a memfd created with MFD_ALLOW_SEALING. */
export function addSeals(fd: number, seals: number): void {
  if (libc.fcntl(fd, F_ADD_SEALS, seals) < 0) fail('fcntl', libc.lastErrno(), { cmd: 'F_ADD_SEALS', fd, seals });
}

/** fcntl(F_GET_SEALS): the seals of a memfd. EINVAL: the fd is not of a kind that can be sealed at all. */
export function getSeals(fd: number): number {
  const seals = libc.fcntl(fd, F_GET_SEALS, 0);
  if (seals < 0) fail('fcntl', libc.lastErrno(), { cmd: 'F_GET_SEALS', fd });
  return seals;
}

// ---------------------------------------------------------------------------------------------- mappings

function mmapAt(addr: bigint, len: number, prot: number, flags: number, fd: number, offset: number): bigint {
  const result = libc.mmap(addr, len, prot, flags, fd, offset);
  if (result === -1 || result === -1n) {
    // ENOMEM from mmap is the address space or vm.max_map_count: a limit, not a full /dev/shm.
    fail('mmap', libc.lastErrno(), { addr: addrHex(addr), len, fd, offset }, { [Errno.ENOMEM]: ErrorCode.LIMIT });
  }
  const got = toAddr(result);
  // MAP_FIXED either maps at addr or fails; anything else would mean memory we do not own was touched.
  if (got !== addr) throw new SystemError('mmap', Errno.EFAULT, { addr: addrHex(addr), got: addrHex(got) });
  return got;
}

/** mmap(addr, len, prot, MAP_SHARED|MAP_FIXED, fd, offset): replaces whatever was mapped at [addr, addr+len). */
export function mmapFixed(addr: bigint, len: number, fd: number, offset = 0, prot = PROT_READ | PROT_WRITE): bigint {
  return mmapAt(addr, len, prot, MAP_SHARED | MAP_FIXED, fd, offset);
}

/** Puts private zero pages over [addr, addr+len): unmaps a window (also a SysV attach) without leaving a hole
 * that the kernel could hand to the next mmap(NULL) while the wasm memory still covers the range. */
export function mmapAnonymousFixed(addr: bigint, len: number): bigint {
  return mmapAt(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
}

export function msync(addr: bigint, len: number, flags = MS_SYNC): void {
  if (libc.msync(addr, len, flags) < 0) fail('msync', libc.lastErrno(), { addr: addrHex(addr), len });
}

// ---------------------------------------------------------------------------------------------- files and fds

/** open. ENAMETOOLONG is a bad argument; the rest maps as usual (ENOENT → NOT_FOUND, EACCES → PERMISSION_DENIED). */
export function openFile(path: string, flags: number, mode = 0o600): number {
  const fd = libc.open(path, flags, mode);
  if (fd < 0) fail('open', libc.lastErrno(), { path }, { [Errno.ENAMETOOLONG]: ErrorCode.BAD_ARGUMENT });
  return fd;
}

export function unlinkFile(path: string): void {
  if (libc.unlink(path) < 0) fail('unlink', libc.lastErrno(), { path });
}

export function closeFd(fd: number): void {
  // Linux releases the fd even when close reports EINTR; retrying could close someone else's new fd.
  if (libc.close(fd) < 0) {
    const errno = libc.lastErrno();
    if (errno !== Errno.EINTR) fail('close', errno, { fd });
  }
}

/** fchmod: sets the mode exactly, where open/shm_open would have masked it with the umask. */
export function fchmod(fd: number, mode: number): void {
  if (libc.fchmod(fd, mode) < 0) fail('fchmod', libc.lastErrno(), { fd, mode: '0o' + mode.toString(8) });
}

export function ftruncate(fd: number, size: number): void {
  if (libc.ftruncate(fd, size) < 0) fail('ftruncate', libc.lastErrno(), { fd, size });
}

/** fallocate(fd, 0, offset, len): reserves the blocks (tmpfs pages) now, so a full file system fails here with
 * ENOSPC (NO_SPACE) instead of a SIGBUS on first touch. Extends the file if offset+len is past its end. */
export function fallocate(fd: number, offset: number, len: number): void {
  if (libc.fallocate(fd, 0, offset, len) < 0) fail('fallocate', libc.lastErrno(), { fd, offset, len });
}

/**
 * madvise(MADV_POPULATE_WRITE) over [addr, addr + len) of a shared mapping (page-aligned outward): the pages exist
 * when it returns, so a full /dev/shm is ERR_SHMBUS_NO_SPACE here (EFAULT: "populating would have raised SIGBUS",
 * ENOMEM) and never a SIGBUS on the first touch later.
 */
export function populateWrite(addr: bigint, len: number): void {
  const page = BigInt(PAGE_SIZE);
  const start = addr & ~(page - 1n);
  const end = (addr + BigInt(len) + page - 1n) & ~(page - 1n);
  if (end <= start) return;
  if (libc.madvise(start, Number(end - start), MADV_POPULATE_WRITE) < 0) {
    fail('madvise', libc.lastErrno(), { advice: 'MADV_POPULATE_WRITE', len }, { [Errno.EFAULT]: ErrorCode.NO_SPACE });
  }
}

/** madvise(MADV_REMOVE) over the whole pages inside [addr, addr + len) of a shared mapping: frees their backing
 * store (tmpfs pages) for every mapping of the segment; touching them again allocates anew. */
export function removePages(addr: bigint, len: number): void {
  const page = BigInt(PAGE_SIZE);
  const start = (addr + page - 1n) & ~(page - 1n);
  const end = (addr + BigInt(len)) & ~(page - 1n);
  if (end <= start) return;
  if (libc.madvise(start, Number(end - start), MADV_REMOVE) < 0) fail('madvise', libc.lastErrno(), { advice: 'MADV_REMOVE', len });
}

/** fstat through Node (same syscall); its errors become SystemErrors like the rest. */
export function fdStat(fd: number): fs.Stats {
  try {
    return fs.fstatSync(fd);
  } catch (err) {
    const errno = typeof (err as NodeJS.ErrnoException).errno === 'number' ? -(err as NodeJS.ErrnoException).errno! : Errno.EIO;
    throw new SystemError('fstat', errno, { fd });
  }
}

export function fdSize(fd: number): number {
  return fdStat(fd).size;
}

/** What /proc/self/fd/<fd> points to ('/dev/shm/x', '/memfd:x (deleted)', a path), or undefined. */
export function fdPath(fd: number): string | undefined {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return undefined;
  }
}
