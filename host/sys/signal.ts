/**
 * Real-time signals for the `signal` wake mechanism (host/wake/signal.ts): queued, thread-directed signals that
 * carry a 32-bit value, read through a signalfd by the event loop of the thread they are sent to.
 *
 * Why not a signal handler: a handler runs on whatever thread the kernel picks and may only call
 * async-signal-safe functions, so JavaScript (a koffi callback) cannot be one, and libuv's own handler
 * (process.on) neither knows real-time signals by name nor passes si_value on. Why not a process-directed signal
 * with signalfd or sigwaitinfo: both need the signal blocked in EVERY thread, and Node's threads (V8 platform,
 * libuv pool, inspector) exist before any user code runs, each with the signal unblocked; the kernel would hand
 * it to one of them. So the signal is sent to ONE thread, by thread id: the thread whose event loop serves the
 * channels (the main thread), which blocks the signal for itself only. A thread-directed signal stays pending
 * on that thread, no other thread ever sees it, and a signalfd read by that thread (watched by its epoll through
 * a libuv poll handle) hands it over with its value: one kernel wakeup, as for a doorbell byte.
 *
 * Safety net: a stray process-directed signal of that number (a confused peer, `kill -SIGRTMIN+n`) must not kill
 * the process, so the process disposition is set to a handler that does nothing: libc's `abs`, a pure function
 * with a compatible signature. Unlike SIG_IGN, a handler is reset to the default by execve, so children started
 * by this process do not inherit it (libuv only resets signals 1-31 in a child). Blocked signals are never
 * discarded by the disposition, so the signalfd still receives every one sent to the blocking thread.
 *
 * Sending: pidfd_open(tid, PIDFD_THREAD) (Linux ≥ 6.9) pins the exact thread, so a signal can never reach a
 * process that reused the pid or tid; pidfd_send_signal then queues the signal with a siginfo of si_code SI_QUEUE
 * (what sigqueue sends) and the value. Where PIDFD_THREAD is missing, rt_tgsigqueueinfo(pid, tid) does the same
 * with the pid and tid checked by the kernel at each call.
 *
 * Layouts (glibc, x86_64): sigset_t is 128 bytes, bit (sig − 1); siginfo_t is 128 bytes: si_signo i32 @0,
 * si_errno @4, si_code @8, si_pid @16, si_uid @20, si_value (union sigval, 8 bytes) @24.
 * struct signalfd_siginfo is 128 bytes: ssi_signo u32 @0, ssi_code i32 @8, ssi_pid u32 @12, ssi_int i32 @44.
 * struct sigaction (glibc's, not the kernel's): handler @0, sa_mask 128 bytes @8, sa_flags i32 @136, restorer @144.
 */
import koffi from 'koffi';
import { ErrorCode, Errno, ShmbusError, SystemError } from '../errors.js';
import {
  SYS_PIDFD_OPEN, SYS_PIDFD_SEND_SIGNAL, SYS_RT_TGSIGQUEUEINFO, SIG_BLOCK, SIG_UNBLOCK, SIGINFO_SIZE, SIGSET_SIZE,
  SI_QUEUE, PIDFD_THREAD,
} from './constants.js';

const lib = koffi.load('libc.so.6');

type Arg = number | bigint | null;

const c = {
  sigrtmin: lib.func('int __libc_current_sigrtmin()') as () => number,
  pthread_sigmask: lib.func('int pthread_sigmask(int how, void *set, void *oldset)') as (how: number, set: Uint8Array, old: Uint8Array | null) => number,
  sigaction: lib.func('int sigaction(int sig, void *act, void *oldact)') as (sig: number, act: Uint8Array | null, old: Uint8Array | null) => number,
  dlsym: lib.func('intptr_t dlsym(intptr_t handle, const char *name)') as (handle: number, name: string) => number,
  syscall: lib.func('long syscall(long nr, intptr_t a1, intptr_t a2, intptr_t a3, intptr_t a4, intptr_t a5)') as
    (nr: number, a1: Arg, a2: Arg, a3: Arg, a4: Arg, a5: Arg) => number,
  syscallInfo: lib.func('syscall', 'long', ['long', 'intptr_t', 'intptr_t', 'void *', 'intptr_t']) as
    (nr: number, a1: number, a2: number, info: Uint8Array, a4: number) => number,
  syscallInfo4: lib.func('syscall', 'long', ['long', 'intptr_t', 'intptr_t', 'intptr_t', 'void *']) as
    (nr: number, a1: number, a2: number, a3: number, info: Uint8Array) => number,
  close: lib.func('int close(int fd)') as (fd: number) => number,
  signalfd: lib.func('int signalfd(int fd, void *mask, int flags)') as (fd: number, mask: Uint8Array, flags: number) => number,
  read: lib.func('intptr_t read(int fd, void *buf, size_t count)') as (fd: number, buf: Uint8Array, count: number) => number,
  getuid: lib.func('uint32_t getuid()') as () => number,
};

/** errno values the shared table in errors.ts does not have. */
export const ESRCH = 3;

/** glibc's SIGRTMIN (34 with NPTL: 32 and 33 are its own). */
export function sigrtmin(): number {
  return c.sigrtmin();
}

/** A sigset_t holding `signals`. */
export function sigset(...signals: number[]): Uint8Array {
  const set = new Uint8Array(SIGSET_SIZE);
  for (const s of signals) set[(s - 1) >> 3]! |= 1 << ((s - 1) & 7);
  return set;
}

/** Blocks `sig` in the CALLING thread only (pthread_sigmask). */
export function blockInThisThread(sig: number): void {
  const rc = c.pthread_sigmask(SIG_BLOCK, sigset(sig), null);
  // pthread functions return the error number instead of setting errno.
  if (rc !== 0) throw new SystemError('pthread_sigmask', rc, { sig });
}

/** Unblocks `sig` in the calling thread. */
export function unblockInThisThread(sig: number): void {
  const rc = c.pthread_sigmask(SIG_UNBLOCK, sigset(sig), null);
  if (rc !== 0) throw new SystemError('pthread_sigmask', rc, { sig });
}

/** sizeof(struct signalfd_siginfo). */
export const SIGNALFD_SIGINFO_SIZE = 128;

/** signalfd(-1, {sig}, SFD_NONBLOCK | SFD_CLOEXEC): a descriptor that reads the signals pending for the thread
 * that reads it (and the process), readable while one is pending. */
export function signalfdOpen(sig: number): number {
  const fd = c.signalfd(-1, sigset(sig), 0o4000 | 0o2000000);
  if (fd < 0) {
    const errno = koffi.errno();
    throw new SystemError('signalfd', errno, { sig }, errno === Errno.EMFILE || errno === Errno.ENFILE ? ErrorCode.LIMIT : undefined);
  }
  return fd;
}

/** Reads pending signals into `buf` (a multiple of SIGNALFD_SIGINFO_SIZE): how many, 0 when none is pending. */
export function signalfdReadRaw(fd: number, buf: Uint8Array): number {
  const n = c.read(fd, buf, buf.byteLength);
  return n < 0 ? 0 : Math.floor(n / SIGNALFD_SIGINFO_SIZE);
}

/** ssi_int (the sival_int the sender put in) of the i-th signalfd_siginfo in `buf`. */
export function signalfdValue(buf: Uint8Array, i: number): number {
  return new DataView(buf.buffer, buf.byteOffset + i * SIGNALFD_SIGINFO_SIZE, SIGNALFD_SIGINFO_SIZE).getInt32(44, true);
}

/** A siginfo as sigqueue would send it: SI_QUEUE, our pid and uid, and `value` in si_value. Reusable: see setSiginfoValue. */
export function makeSiginfo(sig: number, value: number): Uint8Array {
  const info = new Uint8Array(SIGINFO_SIZE);
  const view = new DataView(info.buffer);
  view.setInt32(0, sig, true);
  view.setInt32(8, SI_QUEUE, true);
  view.setInt32(16, process.pid, true);
  view.setUint32(20, c.getuid(), true);
  view.setInt32(24, value, true);
  return info;
}

export function setSiginfoValue(info: Uint8Array, value: number): void {
  new DataView(info.buffer, info.byteOffset, SIGINFO_SIZE).setInt32(24, value, true);
}

/**
 * Makes sure a process-directed `sig` cannot kill this process: installs libc's `abs` as its handler (see the top
 * of this file) unless it already has a handler. Throws when the signal is already in use by someone else
 * (another handler, or SIG_IGN set by the embedder): sharing it would make both sides misread each other's
 * signals. Idempotent.
 */
export function installNoopHandler(sig: number): void {
  const old = new Uint8Array(152);
  if (c.sigaction(sig, null, old) < 0) throw new SystemError('sigaction', koffi.errno(), { sig });
  const current = new DataView(old.buffer).getBigUint64(0, true);
  const noop = BigInt(c.dlsym(0, 'abs'));
  if (noop === 0n) throw new ShmbusError(ErrorCode.SYSCALL, 'cannot find libc abs() for the no-op signal handler');
  if (current === noop) return;
  if (current !== 0n) {
    throw new ShmbusError(ErrorCode.EXISTS, 'the wake signal already has a handler in this process', { details: { sig, handler: '0x' + current.toString(16) } });
  }
  const act = new Uint8Array(152);
  const view = new DataView(act.buffer);
  view.setBigUint64(0, noop, true);
  // SA_RESTART: a thread that does take a stray signal resumes its system call instead of seeing EINTR.
  view.setInt32(136, 0x10000000, true);
  if (c.sigaction(sig, act, null) < 0) throw new SystemError('sigaction', koffi.errno(), { sig });
}

/** pidfd_open(tid, PIDFD_THREAD): a descriptor that names exactly this thread for as long as it is open. */
export function pidfdOpenThread(tid: number): number {
  const fd = c.syscall(SYS_PIDFD_OPEN, tid, PIDFD_THREAD, 0, 0, 0);
  if (fd < 0) {
    const errno = koffi.errno();
    throw new SystemError('pidfd_open', errno, { tid, flags: 'PIDFD_THREAD' }, errno === ESRCH ? ErrorCode.PEER_DEAD : undefined);
  }
  return fd;
}

/** pidfd_send_signal(pidfd, sig, info, 0): 0 or the errno (EAGAIN: the receiver's queue is full; ESRCH: gone). */
export function pidfdSendSignalRaw(pidfd: number, sig: number, info: Uint8Array): number {
  return c.syscallInfo(SYS_PIDFD_SEND_SIGNAL, pidfd, sig, info, 0) < 0 ? koffi.errno() : 0;
}

/** rt_tgsigqueueinfo(pid, tid, sig, info): 0 or the errno. */
export function tgsigqueueRaw(pid: number, tid: number, sig: number, info: Uint8Array): number {
  return c.syscallInfo4(SYS_RT_TGSIGQUEUEINFO, pid, tid, sig, info) < 0 ? koffi.errno() : 0;
}

export function closeFd(fd: number): void {
  if (c.close(fd) < 0 && koffi.errno() !== Errno.EINTR) throw new SystemError('close', koffi.errno(), { fd });
}
