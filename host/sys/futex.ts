/**
 * Futexes: FUTEX_WAKE on a 32-bit word (shared between processes, or private to this one) and futex_waitv(2),
 * which sleeps on up to 128 words at once (Linux ≥ 5.16). Used by the futex wake mechanism
 * (host/wake/futex.ts): a parked side's wait thread sleeps on the ring words of every channel parked on a futex,
 * and the peer wakes it with FUTEX_WAKE on the word it just bumped.
 *
 * glibc has no wrapper for either call; `syscall(2)` is variadic, so it is declared here with a fixed prototype of
 * six integer arguments (ABI-compatible on x86_64: glibc's syscall() is assembly that never reads %al).
 *
 * Shared or private. A word in a MAP_SHARED segment must be waited and woken WITHOUT the private flag: the kernel
 * then keys the futex by the backing page, so the peer's wake (through its own mapping at another address)
 * reaches our waiter. A word in a SharedArrayBuffer that only this process's threads touch uses the private flag,
 * which skips the page lookup.
 *
 * The wait side is a raw call returning `{ result, errno }` instead of throwing: it runs in the wait thread's loop
 * (host/wake/wait-loops.ts), where EAGAIN (a word already changed), EINTR and ETIMEDOUT are ordinary outcomes.
 */
import koffi from 'koffi';
import { SystemError, Errno } from '../errors.js';
import {
  SYS_FUTEX, SYS_FUTEX_WAITV, SYS_GETTID, FUTEX_WAKE, FUTEX_PRIVATE_FLAG, FUTEX_WAITV_MAX, FUTEX_WAITV_SIZE,
  CLOCK_MONOTONIC,
} from './constants.js';

const lib = koffi.load('libc.so.6');

type Arg = number | bigint | null;

/** syscall(2) with six integer arguments; the kernel ignores the ones a call does not take. */
const syscall6 = lib.func('long syscall(long nr, intptr_t a1, intptr_t a2, intptr_t a3, intptr_t a4, intptr_t a5, intptr_t a6)') as
  (nr: number, a1: Arg, a2: Arg, a3: Arg, a4: Arg, a5: Arg, a6: Arg) => number;

/** The same symbol for futex_waitv(waiters, nr, flags, timeout, clockid): the list and the deadline are typed
 * arrays, which koffi hands to the kernel as pointers to their bytes (no copy) during a synchronous call. */
const waitvCall = lib.func('syscall', 'long', ['long', 'void *', 'intptr_t', 'intptr_t', 'void *', 'intptr_t']) as
  (nr: number, waiters: BigUint64Array, count: number, flags: number, ts: BigInt64Array | null, clock: number) => number;

export { FUTEX_WAITV_MAX, FUTEX_WAITV_SIZE };

const INT_MAX = 0x7fffffff;

/**
 * FUTEX_WAKE: wakes up to `count` threads sleeping on the 32-bit word at `addr` (all of them by default).
 * Returns how many were woken. Throws SystemError for an address the kernel cannot use (EFAULT, EINVAL).
 */
export function futexWake(addr: bigint, shared: boolean, count = INT_MAX): number {
  const op = FUTEX_WAKE | (shared ? 0 : FUTEX_PRIVATE_FLAG);
  const n = syscall6(SYS_FUTEX, addr, op, count, 0, 0, 0);
  if (n < 0) throw new SystemError('futex', koffi.errno(), { op: shared ? 'FUTEX_WAKE' : 'FUTEX_WAKE_PRIVATE', addr: '0x' + addr.toString(16) });
  return n;
}

export interface RawResult {
  /** The system call's result: for futex_waitv the index of the entry that woke us, -1 on failure. */
  result: number;
  /** errno when result is -1, else 0. */
  errno: number;
}

/**
 * futex_waitv(waiters, count, 0, deadline, CLOCK_MONOTONIC): sleeps until one of the `count` entries of
 * `waiters` is woken (result: its index), or returns at once with EAGAIN when some entry's word no longer holds
 * its expected value.
 *
 * `waiters` holds `struct futex_waitv` entries, three u64 each: expected value, address, flags
 * (FUTEX2_SIZE_U32, | FUTEX2_PRIVATE for a process-private word). `deadline` is an absolute CLOCK_MONOTONIC time
 * ([seconds, nanoseconds]) or null to sleep without limit. Never throws: see RawResult.
 */
export function futexWaitv(waiters: BigUint64Array, count: number, deadline: BigInt64Array | null = null): RawResult {
  const result = waitvCall(SYS_FUTEX_WAITV, waiters, count, 0, deadline, CLOCK_MONOTONIC);
  return result < 0 ? { result: -1, errno: koffi.errno() } : { result, errno: 0 };
}

/**
 * Whether this kernel has futex_waitv: a call with no entries fails with EINVAL where it exists and ENOSYS
 * where it does not (Linux < 5.16, or a seccomp filter refusing it).
 */
export function futexWaitvErrno(): number {
  const empty = new BigUint64Array(3);
  const r = waitvCall(SYS_FUTEX_WAITV, empty, 0, 0, null, CLOCK_MONOTONIC);
  return r < 0 ? koffi.errno() : 0;
}

/** A struct timespec (two int64) on CLOCK_MONOTONIC `ms` from now: an absolute deadline for futex_waitv and
 * sem_clockwait (Node's hrtime is CLOCK_MONOTONIC). */
export function monotonicDeadline(ms: number): BigInt64Array {
  const at = process.hrtime.bigint() + BigInt(Math.round(ms * 1_000_000));
  return new BigInt64Array([at / 1_000_000_000n, at % 1_000_000_000n]);
}

/** The kernel thread id of the calling thread (what tgkill and pidfd_open with PIDFD_THREAD address). */
export function gettid(): number {
  return syscall6(SYS_GETTID, 0, 0, 0, 0, 0, 0);
}

/** The process address of a view's first byte: where a futex word in a SharedArrayBuffer lives. */
export function addressOf(view: Int32Array | Uint8Array): bigint {
  const a = koffi.address(view);
  return typeof a === 'bigint' ? a : BigInt(a as number);
}

export { Errno };
