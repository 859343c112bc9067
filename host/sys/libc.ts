/**
 * Raw libc bindings (Linux x86_64, glibc ≥ 2.34 where shm_open lives in libc.so.6), loaded once with koffi.
 *
 * These are the bare C functions: they return -1 and leave the reason in errno. Call `lastErrno()` right after a
 * failing call, before anything else can run a libc function on this thread. The typed, throwing wrappers are in
 * `shm.ts`; nothing outside `host/sys/` should import this file.
 *
 * Conventions:
 * - Addresses are BigInt going in (`void *`); `mmap`/`shmat` are declared to return `intptr_t` so MAP_FAILED (-1)
 *   is visible (a `void *` result would come back as a pointer value, not a number). koffi hands `intptr_t` back
 *   as a JS number while it fits in 53 bits (every user-space address on x86_64 does), so wrappers convert it.
 * - Variadic functions (`open`, `shm_open`, `fcntl`) are declared with fixed prototypes: koffi cannot call
 *   variadics asynchronously, and the fixed form is ABI-compatible on x86_64 for integer arguments.
 * - `off_t`/`size_t` are 64-bit; sizes are passed as JS numbers (exact up to 2^53).
 */
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');

// Anonymous structs: a named koffi type is global, and a second load of this module would collide with it.
/** `struct ipc_perm` (glibc 2.36 x86_64, 48 bytes: `mode` is a 32-bit mode_t there). */
const IpcPerm = koffi.struct({
  key: 'int32', uid: 'uint32', gid: 'uint32', cuid: 'uint32', cgid: 'uint32', mode: 'uint32',
  seq: 'uint16', pad2: 'uint16', reserved1: 'ulong', reserved2: 'ulong',
});

/** `struct shmid_ds` (x86_64, 112 bytes), filled by `shmctl(IPC_STAT)`. */
export const ShmidDs = koffi.struct({
  perm: IpcPerm, segsz: 'size_t', atime: 'int64', dtime: 'int64', ctime: 'int64',
  cpid: 'int32', lpid: 'int32', nattch: 'ulong', reserved5: 'ulong', reserved6: 'ulong',
});

/** What koffi writes into the object passed as `shmctlStat`'s out parameter. */
export interface RawShmidDs {
  perm: { key: number; uid: number; gid: number; cuid: number; cgid: number; mode: number };
  segsz: number | bigint;
  cpid: number;
  lpid: number;
  nattch: number | bigint;
}

type Addr = bigint | null;

// System V shared memory
export const shmget = lib.func('int shmget(int key, size_t size, int shmflg)') as (key: number, size: number, flags: number) => number;
export const shmat = lib.func('intptr_t shmat(int shmid, void *addr, int shmflg)') as (shmid: number, addr: Addr, flags: number) => number | bigint;
export const shmdt = lib.func('int shmdt(void *addr)') as (addr: bigint) => number;
/** shmctl for commands without a buffer (IPC_RMID): pass null. */
export const shmctl = lib.func('int shmctl(int shmid, int cmd, void *buf)') as (shmid: number, cmd: number, buf: null) => number;
/** shmctl(IPC_STAT): the same symbol with a typed out parameter, so koffi decodes the struct into `out`. */
export const shmctlStat = lib.func('shmctl', 'int', ['int', 'int', koffi.out(koffi.pointer(ShmidDs))]) as
  (shmid: number, cmd: number, out: Partial<RawShmidDs>) => number;
/** shmctl(IPC_SET): the same symbol taking the struct in (only perm.uid, perm.gid and the mode bits are used). */
export const shmctlSet = lib.func('shmctl', 'int', ['int', 'int', koffi.pointer(ShmidDs)]) as
  (shmid: number, cmd: number, ds: RawShmidDs) => number;
export const ftok = lib.func('int ftok(const char *path, int proj_id)') as (path: string, projId: number) => number;

// POSIX shared memory and memfd
export const shm_open = lib.func('int shm_open(const char *name, int oflag, uint32_t mode)') as (name: string, flags: number, mode: number) => number;
export const shm_unlink = lib.func('int shm_unlink(const char *name)') as (name: string) => number;
export const memfd_create = lib.func('int memfd_create(const char *name, unsigned int flags)') as (name: string, flags: number) => number;

// Mappings
export const mmap = lib.func('intptr_t mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)') as
  (addr: Addr, length: number, prot: number, flags: number, fd: number, offset: number) => number | bigint;
export const munmap = lib.func('int munmap(void *addr, size_t length)') as (addr: bigint, length: number) => number;
export const madvise = lib.func('int madvise(void *addr, size_t length, int advice)') as (addr: bigint, length: number, advice: number) => number;
export const msync = lib.func('int msync(void *addr, size_t length, int flags)') as (addr: bigint, length: number, flags: number) => number;

// Files
export const open = lib.func('int open(const char *path, int flags, uint32_t mode)') as (path: string, flags: number, mode: number) => number;
export const close = lib.func('int close(int fd)') as (fd: number) => number;
export const unlink = lib.func('int unlink(const char *path)') as (path: string) => number;
export const ftruncate = lib.func('int ftruncate(int fd, int64_t length)') as (fd: number, length: number) => number;
export const fallocate = lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t length)') as
  (fd: number, mode: number, offset: number, length: number) => number;
export const fchmod = lib.func('int fchmod(int fd, uint32_t mode)') as (fd: number, mode: number) => number;
export const fcntl = lib.func('int fcntl(int fd, int cmd, int arg)') as (fd: number, cmd: number, arg: number) => number;

// Processes
export const getpid = lib.func('int getpid()') as () => number;

/** errno of the last failed libc call on this thread; read it immediately after the call. */
export function lastErrno(): number {
  return koffi.errno();
}

/** Sets errno to 0, for the few calls whose -1 result can also be a valid value (ftok). */
export function clearErrno(): void {
  koffi.errno(0);
}

// Process control. prctl is variadic in glibc; declared with a fixed prototype of five integer arguments
// (ABI-compatible on x86_64, as syscall(2) is in futex.ts).
export const prctl = lib.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)') as
  (option: number, a2: number, a3: number, a4: number, a5: number) => number;
