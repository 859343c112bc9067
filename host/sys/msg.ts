/**
 * System V message queues (msgget, msgsnd, msgrcv, msgctl): typed, throwing wrappers in the style of shm.ts.
 *
 * Message buffers. msgsnd/msgrcv take a `struct msgbuf { long mtype; char mtext[]; }`: callers pass one
 * Uint8Array whose first 8 bytes are the mtype (little-endian i64) followed by the text; `size` counts the text
 * only. `MSG_HEADER` is those 8 bytes. Keeping the mtype in the caller's buffer lets a sender build a packet in
 * place (no copy to prepend it).
 *
 * Limits, named in `details.limit` when the kernel refuses:
 *   msgget ENOSPC      /proc/sys/kernel/msgmni queues exist
 *   msgsnd EINVAL      a text longer than /proc/sys/kernel/msgmax (or than the queue's msg_qbytes)
 *   msgctl IPC_SET     msg_qbytes above /proc/sys/kernel/msgmnb needs CAP_SYS_RESOURCE (EPERM)
 * Queue ids die with IPC_RMID at once, even while someone uses them: later calls get EIDRM (a sleeper) or
 * EINVAL (a new call). Both are reported as ERR_SHMBUS_NOT_FOUND, "the queue is gone".
 */
import koffi from 'koffi';
import { readFileSync } from 'node:fs';
import { ErrorCode, Errno, SystemError, type ErrorCodeValue } from '../errors.js';
import { lastErrno } from './libc.js';
import { readSysctl } from './mq.js';
import { IPC_NOWAIT, IPC_RMID, IPC_SET, IPC_STAT, MSG_COPY } from './constants.js';

const lib = koffi.load('libc.so.6');

/** Bytes of the mtype in front of every message buffer. */
export const MSG_HEADER = 8;
/** errno values the shared table in errors.ts does not have. */
export const ENOMSG = 42;
export const E2BIG = 7;

const c = {
  msgget: lib.func('int msgget(int key, int msgflg)') as (key: number, flags: number) => number,
  msgsnd: lib.func('int msgsnd(int msqid, const void *msgp, size_t msgsz, int msgflg)') as (id: number, buf: Uint8Array, size: number, flags: number) => number,
  msgrcv: lib.func('intptr_t msgrcv(int msqid, void *msgp, size_t msgsz, intptr_t msgtyp, int msgflg)') as (id: number, buf: Uint8Array, size: number, type: number, flags: number) => number,
  msgctl: lib.func('int msgctl(int msqid, int cmd, void *buf)') as (id: number, cmd: number, buf: Uint8Array | null) => number,
};

function fail(syscall: string, errno: number, details: Record<string, unknown>, code?: ErrorCodeValue): never {
  throw new SystemError(syscall, errno, details, code);
}

/** A key as `ipcs -q` prints it. */
export function formatMsgKey(key: number): string {
  return '0x' + (key >>> 0).toString(16).padStart(8, '0');
}

const gone = (errno: number) => errno === Errno.EIDRM || errno === Errno.EINVAL;

export interface MsgLimits {
  /** Largest message text (bytes). */
  msgmax: number;
  /** Default (and, unprivileged, largest) bytes per queue. */
  msgmnb: number;
  /** Most queues in the system (IPC namespace). */
  msgmni: number;
}

export function msgLimits(): MsgLimits {
  return {
    msgmax: readSysctl('/proc/sys/kernel/msgmax') ?? 8192,
    msgmnb: readSysctl('/proc/sys/kernel/msgmnb') ?? 16384,
    msgmni: readSysctl('/proc/sys/kernel/msgmni') ?? 32000,
  };
}

/** msgget. `key` 0 is IPC_PRIVATE (a new queue every time, known by its id only). */
export function msgGet(key: number, flags: number): number {
  const id = c.msgget(key | 0, flags);
  if (id >= 0) return id;
  const errno = lastErrno();
  if (errno === Errno.ENOSPC) fail('msgget', errno, { key: formatMsgKey(key), limit: '/proc/sys/kernel/msgmni', max: msgLimits().msgmni }, ErrorCode.LIMIT);
  fail('msgget', errno, { key: formatMsgKey(key) });
}

/**
 * msgsnd with IPC_NOWAIT of `size` text bytes; `buf` starts with the mtype. True: queued; false: the queue is
 * full (EAGAIN). A queue that was removed throws NOT_FOUND; a text longer than msgmax throws LIMIT.
 */
export function msgSend(id: number, buf: Uint8Array, size: number): boolean {
  for (;;) {
    if (c.msgsnd(id, buf, size, IPC_NOWAIT) === 0) return true;
    const errno = lastErrno();
    if (errno === Errno.EAGAIN) return false;
    if (errno === Errno.EINTR) continue;
    if (errno === Errno.EINVAL && size > msgLimits().msgmax) {
      fail('msgsnd', errno, { msqid: id, size, limit: '/proc/sys/kernel/msgmax', max: msgLimits().msgmax }, ErrorCode.LIMIT);
    }
    fail('msgsnd', errno, { msqid: id, size }, gone(errno) ? ErrorCode.NOT_FOUND : undefined);
  }
}

/**
 * msgrcv of the first message matching `type` (0: any, >0: that mtype, <0: the lowest mtype ≤ |type|), at most
 * `buf.length - 8` text bytes. With `wait` false (IPC_NOWAIT) it returns -1 when none is waiting (ENOMSG).
 * Blocking calls belong on a dedicated thread (host/blocking.ts), never on the event loop or libuv's pool.
 * A message longer than the buffer throws E2BIG (and stays queued) unless `flags` has MSG_NOERROR.
 */
export function msgReceive(id: number, buf: Uint8Array, type: number, wait: boolean, flags = 0): number {
  for (;;) {
    const n = c.msgrcv(id, buf, buf.length - MSG_HEADER, type, flags | (wait ? 0 : IPC_NOWAIT));
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno === ENOMSG) return -1;
    if (errno === Errno.EINTR) continue;
    fail('msgrcv', errno, { msqid: id, buffer: buf.length - MSG_HEADER }, gone(errno) ? ErrorCode.NOT_FOUND : undefined);
  }
}

/**
 * Copies the message at position `index` (0 = oldest) without removing it (MSG_COPY). Returns its text length,
 * -1 if there is no such message, or undefined if the kernel has no MSG_COPY (built without
 * CONFIG_CHECKPOINT_RESTORE: ENOSYS).
 */
export function msgPeek(id: number, buf: Uint8Array, index: number): number | undefined {
  const n = c.msgrcv(id, buf, buf.length - MSG_HEADER, index, IPC_NOWAIT | MSG_COPY);
  if (n >= 0) return n;
  const errno = lastErrno();
  if (errno === ENOMSG) return -1;
  if (errno === Errno.ENOSYS) return undefined;
  fail('msgrcv', errno, { msqid: id, index, flags: 'MSG_COPY' }, gone(errno) ? ErrorCode.NOT_FOUND : undefined);
}

/** The mtype at the front of a message buffer. */
export function msgType(buf: Uint8Array): number {
  return Number(new DataView(buf.buffer, buf.byteOffset, MSG_HEADER).getBigInt64(0, true));
}

export function setMsgType(buf: Uint8Array, type: number): void {
  new DataView(buf.buffer, buf.byteOffset, MSG_HEADER).setBigInt64(0, BigInt(type), true);
}

export interface MsgStat {
  key: number;
  /** Permission bits (0o777). */
  mode: number;
  uid: number;
  cuid: number;
  /** Bytes and messages in the queue now, and the most bytes it may hold. */
  cbytes: number;
  qnum: number;
  qbytes: number;
  /** Pid of the last msgsnd and of the last msgrcv (0: none yet). */
  lspid: number;
  lrpid: number;
}

/** sizeof(struct msqid_ds) on x86_64: ipc_perm (48), stime, rtime, ctime, cbytes, qnum, qbytes (8 each), lspid, lrpid (4 each), 2 reserved. */
const MSQID_DS_SIZE = 120;

function statBuf(id: number): Uint8Array {
  const buf = new Uint8Array(MSQID_DS_SIZE);
  if (c.msgctl(id, IPC_STAT, buf) < 0) {
    const errno = lastErrno();
    fail('msgctl', errno, { cmd: 'IPC_STAT', msqid: id }, gone(errno) ? ErrorCode.NOT_FOUND : undefined);
  }
  return buf;
}

/** msgctl(IPC_STAT). A removed queue throws NOT_FOUND. */
export function msgStat(id: number): MsgStat {
  const v = new DataView(statBuf(id).buffer);
  return {
    key: v.getInt32(0, true), uid: v.getUint32(4, true), cuid: v.getUint32(12, true), mode: v.getUint32(20, true) & 0o777,
    cbytes: Number(v.getBigUint64(72, true)), qnum: Number(v.getBigUint64(80, true)), qbytes: Number(v.getBigUint64(88, true)),
    lspid: v.getInt32(96, true), lrpid: v.getInt32(100, true),
  };
}

/** Whether a queue id still names a queue (msgctl IPC_STAT succeeds or is only refused for permission). */
export function msgExists(id: number): boolean {
  const buf = new Uint8Array(MSQID_DS_SIZE);
  if (c.msgctl(id, IPC_STAT, buf) === 0) return true;
  return !gone(lastErrno());
}

/** msgctl(IPC_SET) of msg_qbytes. Lowering is allowed; raising it above msgmnb needs CAP_SYS_RESOURCE. */
export function msgSetQbytes(id: number, qbytes: number): void {
  const buf = statBuf(id);
  const v = new DataView(buf.buffer);
  v.setBigUint64(88, BigInt(qbytes), true);
  if (c.msgctl(id, IPC_SET, buf) < 0) {
    const errno = lastErrno();
    if (errno === Errno.EPERM && qbytes > msgLimits().msgmnb) {
      fail('msgctl', errno, { cmd: 'IPC_SET', msqid: id, qbytes, limit: '/proc/sys/kernel/msgmnb', max: msgLimits().msgmnb }, ErrorCode.LIMIT);
    }
    fail('msgctl', errno, { cmd: 'IPC_SET', msqid: id, qbytes }, gone(errno) ? ErrorCode.NOT_FOUND : undefined);
  }
}

/** msgctl(IPC_SET) of the mode bits only. */
export function msgSetMode(id: number, mode: number): void {
  const buf = statBuf(id);
  const v = new DataView(buf.buffer);
  v.setUint32(20, (v.getUint32(20, true) & ~0o777) | (mode & 0o777), true);
  if (c.msgctl(id, IPC_SET, buf) < 0) {
    const errno = lastErrno();
    fail('msgctl', errno, { cmd: 'IPC_SET', msqid: id, mode: '0o' + mode.toString(8) }, gone(errno) ? ErrorCode.NOT_FOUND : undefined);
  }
}

/** IPC_RMID that reports whether the queue was still there (removing what may already be gone). */
export function msgRemoveIfExists(id: number): boolean {
  if (c.msgctl(id, IPC_RMID, null) === 0) return true;
  const errno = lastErrno();
  if (gone(errno)) return false;
  fail('msgctl', errno, { cmd: 'IPC_RMID', msqid: id });
}

/** A System V queue as /proc/sysvipc/msg lists it (readable by anyone, whatever the queue's mode). */
export interface MsgQueue { key: number; msqid: number; uid: number; cuid: number; lspid: number; lrpid: number }

/** Every System V queue of this IPC namespace (empty when /proc/sysvipc/msg cannot be read). */
export function listMsgQueues(): MsgQueue[] {
  let text: string;
  try {
    text = readFileSync('/proc/sysvipc/msg', 'latin1');
  } catch {
    return [];
  }
  // Header: key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid stime rtime ctime
  return text.trim().split('\n').slice(1).map((line) => {
    const f = line.trim().split(/\s+/).map(Number);
    return { key: f[0]! >>> 0, msqid: f[1]!, uid: f[7]!, cuid: f[9]!, lspid: f[5]!, lrpid: f[6]! };
  }).filter((q) => Number.isInteger(q.msqid) && Number.isInteger(q.uid) && Number.isInteger(q.cuid));
}
