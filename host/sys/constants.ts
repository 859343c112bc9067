/**
 * Linux x86_64 values of the libc constants the `host/sys` bindings use (checked against glibc 2.36 headers).
 * Plain numbers so callers can OR them together.
 */

// <sys/ipc.h>
export const IPC_PRIVATE = 0;
export const IPC_CREAT = 0o1000;
export const IPC_EXCL = 0o2000;
export const IPC_NOWAIT = 0o4000;
export const IPC_RMID = 0;
export const IPC_SET = 1;
export const IPC_STAT = 2;

// <sys/shm.h>
export const SHM_RDONLY = 0o10000;
export const SHM_RND = 0o20000;
/** Linux-only: let shmat replace an existing mapping at the address (like MAP_FIXED). */
export const SHM_REMAP = 0o40000;
export const SHM_EXEC = 0o100000;

// <fcntl.h>
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_TRUNC = 0o1000;
export const O_NOFOLLOW = 0o400000;
export const O_CLOEXEC = 0o2000000;

// fcntl commands and memfd seals
export const F_GETFD = 1;
export const F_SETFD = 2;
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 1;
export const F_SEAL_SHRINK = 2;
export const F_SEAL_GROW = 4;
export const F_SEAL_WRITE = 8;

// <sys/mman.h>
export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MAP_FIXED_NOREPLACE = 0x100000;
export const MS_ASYNC = 1;
export const MS_INVALIDATE = 2;
export const MS_SYNC = 4;
export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;

/** The page size every offset and length of a mapping must be a multiple of (x86_64, no huge pages). */
export const PAGE_SIZE = 4096;
/** Longest memfd name: NAME_MAX (255) minus the "memfd:" prefix the kernel adds. */
export const MFD_NAME_MAX = 249;
/** Longest POSIX shm name after its leading '/', in bytes: it becomes a file name in /dev/shm (NAME_MAX). */
export const SHM_NAME_MAX = 255;
