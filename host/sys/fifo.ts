/**
 * Pipes and FIFOs: the two calls Node has no API for. Everything else on these fds (open with O_NONBLOCK,
 * reading and writing through epoll, close, unlink) goes through node:fs and node:net.
 *
 * Like `shm.ts`, each wrapper throws a `SystemError` carrying the syscall, errno and details; errno is read
 * immediately after the call. The functions are bound here rather than in `libc.ts` because nothing else needs
 * them; koffi hands back the same library handle for a second load of libc.so.6.
 */
import koffi from 'koffi';
import { readFileSync } from 'node:fs';
import { ErrorCode, Errno, SystemError } from '../errors.js';
import { fcntl, lastErrno } from './libc.js';
import { O_CLOEXEC } from './constants.js';

/** fcntl commands for a pipe's buffer size (Linux-only, <fcntl.h>). */
const F_SETPIPE_SZ = 1031;
const F_GETPIPE_SZ = 1032;

const lib = koffi.load('libc.so.6');
const mkfifoRaw = lib.func('int mkfifo(const char *path, uint32_t mode)') as (path: string, mode: number) => number;
const pipe2Raw = lib.func('int pipe2(_Out_ int *fds, int flags)') as (fds: number[], flags: number) => number;

/** mkfifo. EEXIST (a file of that name exists, FIFO or not) keeps its EXISTS code so callers can probe it. */
export function mkfifo(path: string, mode: number): void {
  if (mkfifoRaw(path, mode) < 0) {
    const errno = lastErrno();
    // ENAMETOOLONG / ENOTDIR are a path the caller gave us: a bad argument, not a kernel failure.
    const code = errno === Errno.ENAMETOOLONG || errno === 20 /* ENOTDIR */ ? ErrorCode.BAD_ARGUMENT : undefined;
    throw new SystemError('mkfifo', errno, { path, mode: '0' + mode.toString(8) }, code);
  }
}

/**
 * pipe2 with O_CLOEXEC: [readEnd, writeEnd]. Close-on-exec matters: a pipe end inherited by an unrelated child
 * would keep the pipe open after its owner died, and the reader would never see end-of-file.
 */
export function pipe(): [number, number] {
  const fds = [-1, -1];
  if (pipe2Raw(fds, O_CLOEXEC) < 0) throw new SystemError('pipe2', lastErrno(), {});
  return [fds[0]!, fds[1]!];
}

/** The largest pipe buffer an unprivileged process may ask for (/proc/sys/fs/pipe-max-size, 1 MiB by default). */
function pipeMaxSize(): number {
  try {
    return Number(readFileSync('/proc/sys/fs/pipe-max-size', 'utf8').trim()) || 65536;
  } catch {
    return 65536;
  }
}

/**
 * Asks for a pipe buffer of `bytes` (capped at pipe-max-size) and returns the size the kernel gave. A larger
 * buffer means fewer wakeups per megabyte; the 64 KiB default makes large messages cost a wakeup per 64 KiB.
 * EPERM (the user's pipe quota, /proc/sys/fs/pipe-user-pages-soft) is not an error: the pipe keeps its size.
 */
export function growPipe(fd: number, bytes: number): number {
  const result = fcntl(fd, F_SETPIPE_SZ, Math.min(bytes, pipeMaxSize()));
  if (result >= 0) return result;
  const errno = lastErrno();
  if (errno === Errno.EPERM || errno === Errno.EBUSY) return fcntl(fd, F_GETPIPE_SZ, 0);
  throw new SystemError('fcntl', errno, { cmd: 'F_SETPIPE_SZ', fd, bytes });
}
