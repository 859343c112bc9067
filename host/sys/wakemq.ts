/**
 * The few POSIX message queue calls the `mq` wake mechanism needs (host/wake/mq.ts), bound here rather than
 * shared with the mq transport's bindings (host/sys/mq.ts) so the two can change independently.
 *
 * A wake queue carries tiny messages (one i32: which channel, which direction) and is always used with
 * O_NONBLOCK: the receiver's descriptor is watched by the event loop (on Linux an mqd_t is a real file
 * descriptor, readable while a message waits), so nobody ever blocks in mq_receive.
 *
 * mq_open is variadic: declared with its full fixed prototype (mode and attr always passed). `struct mq_attr` is
 * four longs: flags, maxmsg, msgsize, curmsgs.
 *
 * Limits, named in `details.limit` when the kernel refuses mq_open:
 *   EMFILE   RLIMIT_MSGQUEUE (bytes of queues per user) or RLIMIT_NOFILE (descriptors)
 *   ENOSPC   /proc/sys/fs/mqueue/queues_max queues exist (root is exempt)
 *   EINVAL   maxmsg past /proc/sys/fs/mqueue/msg_max or msgsize past msgsize_max (root is exempt)
 *   ENFILE   the system's file limit
 */
import * as fs from 'node:fs';
import koffi from 'koffi';
import { BadArgumentError, ErrorCode, Errno, SystemError } from '../errors.js';

const lib = koffi.load('libc.so.6');

const c = {
  mq_open: lib.func('int mq_open(const char *name, int oflag, uint32_t mode, void *attr)') as
    (name: string, flags: number, mode: number, attr: BigInt64Array | null) => number,
  mq_close: lib.func('int mq_close(int mqd)') as (mqd: number) => number,
  mq_unlink: lib.func('int mq_unlink(const char *name)') as (name: string) => number,
  mq_send: lib.func('int mq_send(int mqd, const void *msg, size_t len, uint32_t prio)') as (mqd: number, msg: Int32Array, len: number, prio: number) => number,
  mq_receive: lib.func('intptr_t mq_receive(int mqd, void *msg, size_t len, void *prio)') as (mqd: number, msg: Int32Array, len: number, prio: null) => number,
  fchmod: lib.func('int fchmod(int fd, uint32_t mode)') as (fd: number, mode: number) => number,
};

const MQ_SYSCTL = '/proc/sys/fs/mqueue';

function sysctl(name: string): number | undefined {
  try {
    return Number(fs.readFileSync(`${MQ_SYSCTL}/${name}`, 'latin1').trim());
  } catch {
    return undefined;
  }
}

/** Most messages a queue may hold without privileges (fs.mqueue.msg_max, 10 by default). */
export function mqMsgMax(): number {
  return sysctl('msg_max') ?? 10;
}

function checkName(name: string): void {
  if (typeof name !== 'string' || !/^\/[^/\0]{1,254}$/.test(name)) {
    throw new BadArgumentError("a queue name is '/' followed by up to 254 bytes without '/'", { name });
  }
}

/**
 * mq_open. With `attr` and O_CREAT|O_EXCL it creates the queue with that geometry and sets `mode` exactly
 * (mq_open masks it with the umask). Kernel refusals are ERR_SHMBUS_LIMIT with the limit named.
 */
export function wakeMqOpen(name: string, flags: number, mode = 0o600, attr?: { maxmsg: number; msgsize: number }): number {
  checkName(name);
  let attrBuf: BigInt64Array | null = null;
  if (attr) {
    attrBuf = new BigInt64Array(4);
    attrBuf[1] = BigInt(attr.maxmsg);
    attrBuf[2] = BigInt(attr.msgsize);
  }
  const mqd = c.mq_open(name, flags, mode, attrBuf);
  if (mqd < 0) {
    const errno = koffi.errno();
    const details: Record<string, unknown> = { name, ...attr };
    switch (errno) {
      case Errno.EMFILE: {
        // Both "no descriptor left" and "RLIMIT_MSGQUEUE": the descriptor count tells them apart.
        let fds = 0;
        try { fds = fs.readdirSync('/proc/self/fd').length; } catch { /* no /proc */ }
        const nofile = rlimitSoft('Max open files');
        const limit = nofile !== undefined && fds >= nofile - 1 ? 'RLIMIT_NOFILE' : 'RLIMIT_MSGQUEUE';
        throw new SystemError('mq_open', errno, { ...details, limit, max: limit === 'RLIMIT_NOFILE' ? nofile : rlimitSoft('Max msgqueue size') }, ErrorCode.LIMIT);
      }
      case Errno.ENOSPC:
        throw new SystemError('mq_open', errno, { ...details, limit: `${MQ_SYSCTL}/queues_max`, max: sysctl('queues_max') }, ErrorCode.LIMIT);
      case Errno.EINVAL:
        if (attr) throw new SystemError('mq_open', errno, { ...details, limit: `${MQ_SYSCTL}/msg_max or msgsize_max`, msgMax: sysctl('msg_max'), msgsizeMax: sysctl('msgsize_max') }, ErrorCode.LIMIT);
        throw new SystemError('mq_open', errno, details, ErrorCode.BAD_ARGUMENT);
      case Errno.ENFILE:
        throw new SystemError('mq_open', errno, { ...details, limit: '/proc/sys/fs/file-max' }, ErrorCode.LIMIT);
      case Errno.ENOMEM:
        throw new SystemError('mq_open', errno, { ...details, limit: 'kernel memory' }, ErrorCode.LIMIT);
      default:
        throw new SystemError('mq_open', errno, details);
    }
  }
  if ((flags & 0o300) === 0o300 && c.fchmod(mqd, mode) < 0) {
    const errno = koffi.errno();
    c.mq_close(mqd);
    throw new SystemError('fchmod', errno, { name, mode: '0o' + mode.toString(8) });
  }
  return mqd;
}

/** A soft limit of this process from /proc/self/limits ("Max open files", "Max msgqueue size"). */
function rlimitSoft(label: string): number | undefined {
  try {
    const line = fs.readFileSync('/proc/self/limits', 'latin1').split('\n').find((l) => l.startsWith(label));
    const soft = line?.slice(label.length).trim().split(/\s+/)[0];
    return soft === undefined || soft === 'unlimited' ? undefined : Number(soft);
  } catch {
    return undefined;
  }
}

export function wakeMqClose(mqd: number): void {
  if (c.mq_close(mqd) < 0) throw new SystemError('mq_close', koffi.errno(), { mqd });
}

/** mq_unlink; false when the name did not exist. */
export function wakeMqUnlink(name: string): boolean {
  checkName(name);
  if (c.mq_unlink(name) === 0) return true;
  const errno = koffi.errno();
  if (errno === Errno.ENOENT) return false;
  throw new SystemError('mq_unlink', errno, { name });
}

/** mq_send of `msg` (its first `len` bytes) on a non-blocking descriptor: 0, or the errno (EAGAIN: full). */
export function wakeMqSendRaw(mqd: number, msg: Int32Array, len: number): number {
  return c.mq_send(mqd, msg, len, 0) === 0 ? 0 : koffi.errno();
}

/** mq_receive on a non-blocking descriptor into `msg` (its whole byteLength must be ≥ the queue's msgsize):
 * the message length, or -errno (-EAGAIN: empty). */
export function wakeMqReceiveRaw(mqd: number, msg: Int32Array): number {
  const n = c.mq_receive(mqd, msg, msg.byteLength, null);
  return n < 0 ? -koffi.errno() : n;
}
