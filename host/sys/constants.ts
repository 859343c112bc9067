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
/** Linux-only: let shmat replace an existing mapping at the address (like MAP_FIXED). */
export const SHM_REMAP = 0o40000;

// <fcntl.h>
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOFOLLOW = 0o400000;
export const O_CLOEXEC = 0o2000000;

// fcntl commands and memfd seals
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 1;
export const F_SEAL_SHRINK = 2;
export const F_SEAL_GROW = 4;
export const F_SEAL_WRITE = 8;

// <sys/mman.h>
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MS_SYNC = 4;
export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;

/** The page size every offset and length of a mapping must be a multiple of (x86_64, no huge pages). */
export const PAGE_SIZE = 4096;
/** madvise: make the pages of a shared mapping exist now as if written (Linux 5.14+); a full tmpfs fails with
 * EFAULT instead of a later SIGBUS. */
export const MADV_POPULATE_WRITE = 23;
/** madvise: free the backing pages of a shared (tmpfs) mapping range. */
export const MADV_REMOVE = 9;
/** Longest memfd name: NAME_MAX (255) minus the "memfd:" prefix the kernel adds. */
export const MFD_NAME_MAX = 249;
/** Longest POSIX shm name after its leading '/', in bytes: it becomes a file name in /dev/shm (NAME_MAX). */
export const SHM_NAME_MAX = 255;

// --- message queues and readiness (host/sys/mq.ts, host/sys/msg.ts, the receive thread of host/blocking.ts) ---

/** <fcntl.h>: also the mq_open flag that makes mq_send/mq_receive return EAGAIN instead of blocking. */
export const O_NONBLOCK = 0o4000;

// <sys/msg.h>
/** msgrcv: truncate a longer message instead of failing with E2BIG (the message is removed either way). */
export const MSG_NOERROR = 0o10000;
/** msgrcv: receive the first message whose mtype is NOT msgtyp. */
/** msgrcv (Linux ≥ 3.8, CONFIG_CHECKPOINT_RESTORE): copy the message at index msgtyp without removing it. */
export const MSG_COPY = 0o40000;

// <sys/epoll.h>
export const EPOLL_CLOEXEC = 0o2000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
/** After one event the fd is disabled until EPOLL_CTL_MOD arms it again. */
export const EPOLLONESHOT = 1 << 30;
/** sizeof(struct epoll_event) on x86_64: the struct is packed (u32 events, u64 data). */
export const EPOLL_EVENT_SIZE = 12;

// <sys/eventfd.h>
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;

// <sys/file.h>
export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

// <sys/resource.h>
export const RLIMIT_NOFILE = 7;
export const RLIMIT_MSGQUEUE = 12;

// ---- wake mechanisms (host/sys/futex.ts, sem.ts, signal.ts, wakemq.ts) ----

// x86_64 system call numbers for the calls glibc has no wrapper for (or whose wrapper we avoid).
export const SYS_FUTEX = 202;
export const SYS_GETTID = 186;
export const SYS_RT_TGSIGQUEUEINFO = 297;
export const SYS_PIDFD_SEND_SIGNAL = 424;
export const SYS_PIDFD_OPEN = 434;
/** futex_waitv(2), Linux ≥ 5.16. */
export const SYS_FUTEX_WAITV = 449;

// <linux/futex.h>
export const FUTEX_WAIT = 0;
export const FUTEX_WAKE = 1;
/** Without it a futex is keyed by the backing page (shared across processes); with it, by this process's mm. */
export const FUTEX_PRIVATE_FLAG = 128;
/** futex_waitv entry flags: a 32-bit word (FUTEX2_SIZE_U32), optionally private (FUTEX2_PRIVATE). */
export const FUTEX2_SIZE_U32 = 0x02;
export const FUTEX2_PRIVATE = 128;
/** Most entries one futex_waitv call takes. */
export const FUTEX_WAITV_MAX = 128;
/** sizeof(struct futex_waitv): u64 val, u64 uaddr, u32 flags, u32 reserved. */
export const FUTEX_WAITV_SIZE = 24;

// <time.h>
export const CLOCK_MONOTONIC = 1;

// <sys/sem.h>
export const SEM_UNDO = 0x1000;
export const GETPID = 11;
export const GETVAL = 12;
/** Largest value of a System V semaphore (semop past it fails with ERANGE). */
export const SEMVMX = 32767;
/** sizeof(struct sembuf): u16 sem_num, i16 sem_op, i16 sem_flg. */
export const SEMBUF_SIZE = 6;
/** Largest value of a POSIX semaphore (sem_post past it fails with EOVERFLOW). */
export const SEM_VALUE_MAX = 0x7fffffff;

// <signal.h>
export const SIG_BLOCK = 0;
export const SIG_UNBLOCK = 1;
/** si_code of a signal sent with sigqueue (and what pidfd_send_signal / rt_tgsigqueueinfo must carry). */
export const SI_QUEUE = -1;
/** sizeof(siginfo_t) and sizeof(sigset_t) as glibc declares them on x86_64. */
export const SIGINFO_SIZE = 128;
export const SIGSET_SIZE = 128;
/** pidfd_open flag (Linux ≥ 6.9): the pidfd names one thread, and signals sent through it go to that thread. */
export const PIDFD_THREAD = 0o200;

// ---- Unix-socket credentials and descriptor passing (host/sys/socket.ts) ----

// <sys/socket.h>
export const SOL_SOCKET = 1;
export const SO_PEERCRED = 17;
/** Linux ≥ 4.13: the supplementary groups of the peer, as they were when it connected (or listened). */
export const SO_PEERGROUPS = 59;
/** The control message type that carries file descriptors. */
export const SCM_RIGHTS = 1;
export const MSG_CTRUNC = 0x8;
export const MSG_PEEK = 0x2;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
/** recvmsg: received descriptors get FD_CLOEXEC atomically. */
export const MSG_CMSG_CLOEXEC = 0x40000000;
/** sizeof(struct ucred): pid, uid, gid as 32-bit integers. */
export const UCRED_SIZE = 12;
/** sizeof(struct msghdr) and sizeof(struct iovec) on x86_64; the cmsghdr header is 16 bytes (size_t len, int
 * level, int type) and its data is 8-aligned (CMSG_ALIGN). */
export const MSGHDR_SIZE = 56;
export const IOVEC_SIZE = 16;
export const CMSGHDR_SIZE = 16;

// fcntl commands
export const F_DUPFD_CLOEXEC = 1030;
/** Since Linux 5.1: no new writable mapping or write(2), existing mappings stay writable. */
export const F_SEAL_FUTURE_WRITE = 0x10;
/** open(2): an unnamed regular file in the given directory (Linux ≥ 3.11; includes O_DIRECTORY). */
export const O_TMPFILE = 0o20200000;
