/**
 * POSIX message queues (mq_open, mq_send, mq_receive, mq_getattr, mq_unlink), and the readiness calls a thread
 * needs to wait on many of them at once (epoll, eventfd, pidfd_open for peer processes) plus flock, which the mq
 * transport uses as a liveness lock on a listener's queue. Typed, throwing wrappers in the style of shm.ts: errno is read right after the
 * call, and a failure becomes a SystemError with the syscall, errno and `name=value` details.
 *
 * Why epoll lives here: on Linux an mqd_t is a real file descriptor (of the mqueue file system), readable
 * (EPOLLIN) while the queue holds a message and writable (EPOLLOUT) while it has room. That is what lets one
 * thread wait on every queue of a process, so the two families are bound together.
 *
 * Limits. The kernel refuses queue geometry and counts with errno values that alone do not say which limit was
 * hit; `mqOpen` names it in `details.limit`:
 *   EINVAL  mq_maxmsg > /proc/sys/fs/mqueue/msg_max, or mq_msgsize > /proc/sys/fs/mqueue/msgsize_max (without
 *           CAP_SYS_RESOURCE)
 *   EMFILE  the queue would take the user past RLIMIT_MSGQUEUE (bytes of every queue the user has, counting
 *           maxmsg * (msgsize + kernel overhead)), or the process is out of file descriptors (RLIMIT_NOFILE)
 *   ENOSPC  /proc/sys/fs/mqueue/queues_max queues exist
 *   ENOMEM  the kernel could not allocate the queue
 *
 * koffi notes: mq_open is variadic; it is declared with its full fixed prototype (mode and attr always passed),
 * which is ABI-compatible on x86_64. ssize_t results are declared intptr_t (koffi returns a number).
 */
import * as fs from 'node:fs';
import koffi from 'koffi';
import { BadArgumentError, ErrorCode, Errno, SystemError, type ErrorCodeValue } from '../errors.js';
import { lastErrno } from './libc.js';
import {
  EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD, EPOLL_EVENT_SIZE, EFD_CLOEXEC, EFD_NONBLOCK, LOCK_NB,
  LOCK_UN, O_CREAT, O_EXCL, RLIMIT_MSGQUEUE, RLIMIT_NOFILE,
} from './constants.js';

const lib = koffi.load('libc.so.6');

/** errno values the shared table in errors.ts does not have. */
export const EMSGSIZE = 90;
const EWOULDBLOCK = Errno.EAGAIN;

type Buf = Uint8Array | BigInt64Array | BigUint64Array | null;

const c = {
  mq_open: lib.func('int mq_open(const char *name, int oflag, uint32_t mode, void *attr)') as (name: string, flags: number, mode: number, attr: Buf) => number,
  mq_close: lib.func('int mq_close(int mqd)') as (mqd: number) => number,
  mq_unlink: lib.func('int mq_unlink(const char *name)') as (name: string) => number,
  mq_send: lib.func('int mq_send(int mqd, const void *msg, size_t len, uint32_t prio)') as (mqd: number, msg: Uint8Array, len: number, prio: number) => number,
  mq_receive: lib.func('intptr_t mq_receive(int mqd, void *msg, size_t len, void *prio)') as (mqd: number, msg: Uint8Array, len: number, prio: null) => number,
  mq_getattr: lib.func('int mq_getattr(int mqd, void *attr)') as (mqd: number, attr: BigInt64Array) => number,
  fchmod: lib.func('int fchmod(int fd, uint32_t mode)') as (fd: number, mode: number) => number,
  flock: lib.func('int flock(int fd, int op)') as (fd: number, op: number) => number,
  epoll_create1: lib.func('int epoll_create1(int flags)') as (flags: number) => number,
  epoll_ctl: lib.func('int epoll_ctl(int epfd, int op, int fd, void *event)') as (epfd: number, op: number, fd: number, event: Uint8Array | null) => number,
  epoll_wait: lib.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)') as (epfd: number, events: Uint8Array, max: number, timeout: number) => number,
  eventfd: lib.func('int eventfd(uint32_t initval, int flags)') as (initval: number, flags: number) => number,
  read: lib.func('intptr_t read(int fd, void *buf, size_t count)') as (fd: number, buf: Uint8Array, count: number) => number,
  write: lib.func('intptr_t write(int fd, const void *buf, size_t count)') as (fd: number, buf: Uint8Array, count: number) => number,
  close: lib.func('int close(int fd)') as (fd: number) => number,
  getrlimit: lib.func('int getrlimit(int resource, void *rlim)') as (resource: number, rlim: BigUint64Array) => number,
  pidfd_open: lib.func('int pidfd_open(int pid, uint32_t flags)') as (pid: number, flags: number) => number,
};

function fail(syscall: string, errno: number, details: Record<string, unknown>, code?: ErrorCodeValue): never {
  throw new SystemError(syscall, errno, details, code);
}

// ---------------------------------------------------------------------------------------------- limits

const MQUEUE_SYSCTL = '/proc/sys/fs/mqueue';

/** A number from /proc/sys, or undefined where it cannot be read (no /proc, another namespace's view). */
export function readSysctl(path: string): number | undefined {
  try {
    const n = Number(fs.readFileSync(path, 'latin1').trim());
    return Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

export interface MqLimits {
  /** Largest mq_maxmsg an unprivileged mq_open may ask for. */
  msgMax: number;
  /** Largest mq_msgsize an unprivileged mq_open may ask for. */
  msgsizeMax: number;
  /** Most queues in the system (IPC namespace). */
  queuesMax: number;
  /** Bytes of queues one user may have (RLIMIT_MSGQUEUE, soft). */
  rlimit: number;
}

/** The limits as the kernel sees them now (Linux defaults where /proc cannot be read). */
export function mqLimits(): MqLimits {
  return {
    msgMax: readSysctl(`${MQUEUE_SYSCTL}/msg_max`) ?? 10,
    msgsizeMax: readSysctl(`${MQUEUE_SYSCTL}/msgsize_max`) ?? 8192,
    queuesMax: readSysctl(`${MQUEUE_SYSCTL}/queues_max`) ?? 256,
    rlimit: getRlimit(RLIMIT_MSGQUEUE).soft,
  };
}

/** getrlimit: soft and hard limit (Infinity for RLIM_INFINITY). */
export function getRlimit(resource: number): { soft: number; hard: number } {
  const rlim = new BigUint64Array(2);
  if (c.getrlimit(resource, rlim) < 0) fail('getrlimit', lastErrno(), { resource });
  const num = (v: bigint) => (v === 0xffffffffffffffffn ? Infinity : Number(v));
  return { soft: num(rlim[0]!), hard: num(rlim[1]!) };
}

/**
 * What a queue costs against RLIMIT_MSGQUEUE (ipc/mqueue.c, mqueue_get_inode): its message bytes plus, per
 * message, a struct msg_msg (48 bytes) and a priority tree node (48 bytes, at most MQ_PRIO_MAX of them).
 */
export function mqQueueBytes(maxmsg: number, msgsize: number): number {
  return maxmsg * msgsize + maxmsg * 48 + Math.min(maxmsg, 32768) * 48;
}

// ---------------------------------------------------------------------------------------------- queues

export interface MqAttr {
  /** 0 or O_NONBLOCK. */
  flags: number;
  /** Most messages the queue holds. */
  maxmsg: number;
  /** Largest message in bytes. */
  msgsize: number;
  /** Messages in the queue now. */
  curmsgs: number;
}

/** A queue name as mq_open wants it: '/' then 1…255 bytes without another '/'. */
export function checkMqName(name: string): void {
  if (typeof name !== 'string' || !name.startsWith('/') || name.length < 2 || name.indexOf('/', 1) >= 0 || name.includes('\0')) {
    throw new BadArgumentError("a queue name is '/' followed by a name without '/'", { name });
  }
  if (Buffer.byteLength(name) - 1 > 255) throw new BadArgumentError('queue name longer than NAME_MAX (255 bytes)', { name });
}

/**
 * mq_open. With `attr` (and O_CREAT) it creates a queue of that geometry; `mode` is then set exactly with
 * fchmod (mq_open masks it with the umask). Refusals of a kernel limit are ERR_SHMBUS_LIMIT with `details.limit`
 * naming it (the sysctl path or the rlimit), the value asked for and the limit.
 */
export function mqOpen(name: string, flags: number, mode = 0o600, attr?: { maxmsg: number; msgsize: number }): number {
  checkMqName(name);
  let attrBuf: BigInt64Array | null = null;
  if (attr) {
    if (!Number.isInteger(attr.maxmsg) || attr.maxmsg < 1 || !Number.isInteger(attr.msgsize) || attr.msgsize < 1) {
      throw new BadArgumentError('queue geometry must be positive integers', { maxmsg: attr.maxmsg, msgsize: attr.msgsize });
    }
    attrBuf = new BigInt64Array(8);
    attrBuf[1] = BigInt(attr.maxmsg);
    attrBuf[2] = BigInt(attr.msgsize);
  }
  const mqd = c.mq_open(name, flags, mode, attrBuf);
  if (mqd < 0) openFailed(name, lastErrno(), attr);
  // Only a queue we certainly created (O_CREAT|O_EXCL) gets its mode set: an existing one is not ours to change.
  if ((flags & O_CREAT) !== 0 && (flags & O_EXCL) !== 0 && c.fchmod(mqd, mode) < 0) {
    const errno = lastErrno();
    c.close(mqd);
    fail('fchmod', errno, { name, mode: '0o' + mode.toString(8) });
  }
  return mqd;
}

function openFailed(name: string, errno: number, attr: { maxmsg: number; msgsize: number } | undefined): never {
  const details: Record<string, unknown> = { name };
  if (attr) Object.assign(details, attr);
  switch (errno) {
    case Errno.EINVAL: {
      if (attr) {
        const limits = mqLimits();
        if (attr.msgsize > limits.msgsizeMax) {
          fail('mq_open', errno, { ...details, limit: `${MQUEUE_SYSCTL}/msgsize_max`, max: limits.msgsizeMax }, ErrorCode.LIMIT);
        }
        if (attr.maxmsg > limits.msgMax) {
          fail('mq_open', errno, { ...details, limit: `${MQUEUE_SYSCTL}/msg_max`, max: limits.msgMax }, ErrorCode.LIMIT);
        }
      }
      fail('mq_open', errno, details, ErrorCode.BAD_ARGUMENT);
    }
    case Errno.EMFILE: {
      // EMFILE is both "no fd left" and "RLIMIT_MSGQUEUE": the fd count tells them apart.
      const nofile = getRlimit(RLIMIT_NOFILE).soft;
      let open = 0;
      try { open = fs.readdirSync('/proc/self/fd').length; } catch { /* no /proc: assume the queue rlimit */ }
      if (open >= nofile - 1) fail('mq_open', errno, { ...details, limit: 'RLIMIT_NOFILE', max: nofile }, ErrorCode.LIMIT);
      const bytes = attr ? mqQueueBytes(attr.maxmsg, attr.msgsize) : undefined;
      fail('mq_open', errno, { ...details, limit: 'RLIMIT_MSGQUEUE', max: getRlimit(RLIMIT_MSGQUEUE).soft, queueBytes: bytes }, ErrorCode.LIMIT);
    }
    case Errno.ENFILE:
      fail('mq_open', errno, { ...details, limit: '/proc/sys/fs/file-max' }, ErrorCode.LIMIT);
    case Errno.ENOSPC:
      fail('mq_open', errno, { ...details, limit: `${MQUEUE_SYSCTL}/queues_max`, max: readSysctl(`${MQUEUE_SYSCTL}/queues_max`) }, ErrorCode.LIMIT);
    case Errno.ENOMEM:
      fail('mq_open', errno, { ...details, limit: 'kernel memory' }, ErrorCode.LIMIT);
    case Errno.ENAMETOOLONG:
      fail('mq_open', errno, details, ErrorCode.BAD_ARGUMENT);
    default:
      fail('mq_open', errno, details);
  }
}

export function mqClose(mqd: number): void {
  // Like close(2): Linux releases the descriptor even when EINTR is reported.
  if (c.mq_close(mqd) < 0) {
    const errno = lastErrno();
    if (errno !== Errno.EINTR) fail('mq_close', errno, { mqd });
  }
}

/** mq_unlink that reports whether the name existed (ENOENT is no error when removing what may be gone). */
export function mqUnlinkIfExists(name: string): boolean {
  if (c.mq_unlink(name) === 0) return true;
  const errno = lastErrno();
  if (errno === Errno.ENOENT) return false;
  fail('mq_unlink', errno, { name });
}

/**
 * mq_send of `bytes[0 … length)` on a queue opened O_NONBLOCK. True: the queue took it; false: the queue is full
 * (EAGAIN). EMSGSIZE (longer than the queue's mq_msgsize) is a LIMIT naming it.
 */
export function mqSend(mqd: number, bytes: Uint8Array, length = bytes.length, prio = 0): boolean {
  if (c.mq_send(mqd, bytes, length, prio) === 0) return true;
  const errno = lastErrno();
  if (errno === EWOULDBLOCK) return false;
  if (errno === EMSGSIZE) fail('mq_send', errno, { mqd, length, limit: 'mq_msgsize' }, ErrorCode.LIMIT);
  fail('mq_send', errno, { mqd, length });
}

/**
 * mq_receive into `buf` (at least the queue's mq_msgsize long) on a queue opened O_NONBLOCK: the message's
 * length, or -1 when the queue is empty (EAGAIN).
 */
export function mqReceive(mqd: number, buf: Uint8Array): number {
  const n = c.mq_receive(mqd, buf, buf.length, null);
  if (n >= 0) return n;
  const errno = lastErrno();
  if (errno === EWOULDBLOCK) return -1;
  if (errno === EMSGSIZE) fail('mq_receive', errno, { mqd, buffer: buf.length, limit: 'mq_msgsize' }, ErrorCode.BAD_ARGUMENT);
  fail('mq_receive', errno, { mqd });
}

export function mqGetattr(mqd: number): MqAttr {
  const attr = new BigInt64Array(8);
  if (c.mq_getattr(mqd, attr) < 0) fail('mq_getattr', lastErrno(), { mqd });
  return { flags: Number(attr[0]), maxmsg: Number(attr[1]), msgsize: Number(attr[2]), curmsgs: Number(attr[3]) };
}

/**
 * flock with LOCK_NB: true when the lock was taken (or released), false when another open file description holds
 * a conflicting lock. A flock belongs to the open file description, so it is released when its last fd closes,
 * including when the holder is killed: that makes it a liveness lock.
 */
export function tryFlock(fd: number, op: number): boolean {
  if (c.flock(fd, op | (op === LOCK_UN ? 0 : LOCK_NB)) === 0) return true;
  const errno = lastErrno();
  if (errno === EWOULDBLOCK) return false;
  fail('flock', errno, { fd, op });
}

/** Blocking flock (no LOCK_NB): 0 or the errno. Blocks the calling thread; the lock benchmark's file-lock peer. */
export function flockRaw(fd: number, op: number): number {
  return c.flock(fd, op) === 0 ? 0 : lastErrno();
}

// ---------------------------------------------------------------------------------------------- epoll, eventfd

export function epollCreate(): number {
  const fd = c.epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) fail('epoll_create1', lastErrno(), {}, ErrorCode.LIMIT);
  return fd;
}

/** One struct epoll_event, reused: epoll_ctl copies it before returning. Per thread (module instance). */
const eventBuf = new Uint8Array(EPOLL_EVENT_SIZE);
const eventView = new DataView(eventBuf.buffer);

/** epoll_ctl ADD / MOD with `events`, carrying `token` (u32) as the event's data; DEL ignores both. */
export function epollCtl(epfd: number, op: number, fd: number, events: number, token: number): void {
  eventView.setUint32(0, events >>> 0, true);
  eventView.setUint32(4, token >>> 0, true);
  eventView.setUint32(8, 0, true);
  if (c.epoll_ctl(epfd, op, fd, op === EPOLL_CTL_DEL ? null : eventBuf) < 0) {
    const opName = op === EPOLL_CTL_ADD ? 'ADD' : op === EPOLL_CTL_MOD ? 'MOD' : 'DEL';
    fail('epoll_ctl', lastErrno(), { op: opName, fd, events });
  }
}

/**
 * epoll_wait into `events` (a multiple of EPOLL_EVENT_SIZE bytes): how many events were written (0 on EINTR or
 * timeout). Each event is (u32 events, u64 data) packed; `epollEventAt` reads one.
 */
export function epollWait(epfd: number, events: Uint8Array, timeoutMs: number): number {
  const n = c.epoll_wait(epfd, events, Math.floor(events.length / EPOLL_EVENT_SIZE), timeoutMs);
  if (n >= 0) return n;
  const errno = lastErrno();
  if (errno === Errno.EINTR) return 0;
  fail('epoll_wait', errno, { epfd });
}

export function epollEventAt(view: DataView, i: number): { events: number; token: number } {
  const at = i * EPOLL_EVENT_SIZE;
  return { events: view.getUint32(at, true), token: view.getUint32(at + 4, true) };
}

/** A non-blocking, close-on-exec eventfd: a counter one thread adds to and another waits on. */
export function eventfdCreate(): number {
  const fd = c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) fail('eventfd', lastErrno(), {}, ErrorCode.LIMIT);
  return fd;
}

const one = new Uint8Array(new BigUint64Array([1n]).buffer);
const sink = new Uint8Array(8);

/** Adds 1 to the eventfd's counter, which makes it readable (EAGAIN only if the counter would overflow). */
export function eventfdSignal(fd: number): void {
  if (c.write(fd, one, 8) < 0) {
    const errno = lastErrno();
    if (errno !== EWOULDBLOCK) fail('write', errno, { fd, what: 'eventfd' });
  }
}

/** Resets the eventfd's counter to 0 (nothing to read is fine). */
export function eventfdDrain(fd: number): void {
  if (c.read(fd, sink, 8) < 0) {
    const errno = lastErrno();
    if (errno !== EWOULDBLOCK) fail('read', errno, { fd, what: 'eventfd' });
  }
}

/**
 * pidfd_open (Linux 5.3+, glibc 2.36+): an fd that becomes readable (EPOLLIN) when process `pid` exits, so a
 * death can be waited for in the epoll set like any queue. Returns the fd; 'gone' if there is no such process
 * (ESRCH); 'unsupported' where the kernel or libc cannot (ENOSYS, or a pid of another namespace: EINVAL).
 */
export function pidfdOpen(pid: number): number | 'gone' | 'unsupported' {
  const fd = c.pidfd_open(pid, 0);
  if (fd >= 0) return fd;
  const errno = lastErrno();
  if (errno === Errno.ESRCH) return 'gone';
  if (errno === Errno.ENOSYS || errno === Errno.EINVAL || errno === Errno.EPERM) return 'unsupported';
  if (errno === Errno.EMFILE || errno === Errno.ENFILE) return 'unsupported';
  fail('pidfd_open', errno, { pid });
}

export function closeFd(fd: number): void {
  if (c.close(fd) < 0) {
    const errno = lastErrno();
    if (errno !== Errno.EINTR) fail('close', errno, { fd });
  }
}
