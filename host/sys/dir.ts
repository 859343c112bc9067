/**
 * Files looked at and removed relative to a directory descriptor (openat, unlinkat), for the reapers
 * (host/reap.ts). A path string is resolved anew by every call, so a directory swapped for a symlink between the
 * listing and the unlink would redirect it; a descriptor pins the directory that was listed, and the final
 * component is never followed (O_NOFOLLOW, and unlinkat removes a symlink itself, never its target).
 */
import * as fs from 'node:fs';
import koffi from 'koffi';
import { BadArgumentError, Errno, SystemError } from '../errors.js';
import { O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK, O_RDONLY } from './constants.js';

const lib = koffi.load('libc.so.6');

const O_DIRECTORY = 0o200000;
const O_PATH = 0o10000000;

const c = {
  open: lib.func('int open(const char *path, int flags, uint32_t mode)') as (path: string, flags: number, mode: number) => number,
  openat: lib.func('int openat(int dirfd, const char *path, int flags, uint32_t mode)') as (dirfd: number, path: string, flags: number, mode: number) => number,
  unlinkat: lib.func('int unlinkat(int dirfd, const char *path, int flags)') as (dirfd: number, path: string, flags: number) => number,
  close: lib.func('int close(int fd)') as (fd: number) => number,
};

/** A name inside the directory itself: no '/', not '.' or '..' (a listing only ever yields such names). */
function checkEntry(name: string): void {
  if (name.length === 0 || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new BadArgumentError('not a name inside the directory', { name });
  }
}

/** An open directory: list it, look at and remove its entries, then close it. */
export class DirHandle {
  private constructor(readonly path: string, readonly fd: number) {}

  /** Opens `path` as a directory (O_DIRECTORY: anything else fails with ENOTDIR). */
  static open(path: string): DirHandle {
    const fd = c.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0) throw new SystemError('open', koffi.errno(), { path });
    return new DirHandle(path, fd);
  }

  /** Names in the directory the descriptor holds, not whatever `path` names now. */
  list(): string[] {
    return fs.readdirSync(`/proc/self/fd/${this.fd}`);
  }

  /** lstat of an entry (the entry itself, a symlink is not followed), or undefined when it is gone. */
  lstat(name: string): fs.Stats | undefined {
    checkEntry(name);
    const fd = c.openat(this.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd < 0) {
      const errno = koffi.errno();
      if (errno === Errno.ENOENT) return undefined;
      throw new SystemError('openat', errno, { dir: this.path, name });
    }
    try {
      return fs.fstatSync(fd);
    } finally {
      c.close(fd);
    }
  }

  /**
   * The first `max` bytes of a regular file entry and its stat (from the same open file), or undefined when it
   * is gone, not a regular file, or a symlink (O_NOFOLLOW: ELOOP). O_NONBLOCK: a FIFO planted under the name
   * cannot make the open hang.
   */
  readHead(name: string, max: number): { stat: fs.Stats; head: Buffer } | undefined {
    checkEntry(name);
    const fd = c.openat(this.fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0);
    if (fd < 0) {
      const errno = koffi.errno();
      if (errno === Errno.ENOENT || errno === ELOOP || errno === Errno.EACCES || errno === ENXIO) return undefined;
      throw new SystemError('openat', errno, { dir: this.path, name });
    }
    try {
      const stat = fs.fstatSync(fd);
      if (!stat.isFile()) return undefined;
      const head = Buffer.alloc(Math.min(max, stat.size));
      let got = 0;
      while (got < head.length) {
        const n = fs.readSync(fd, head, got, head.length - got, got);
        if (n === 0) break;
        got += n;
      }
      return { stat, head: head.subarray(0, got) };
    } finally {
      c.close(fd);
    }
  }

  /** unlinkat of an entry (a symlink is removed, never followed). False when it was already gone. */
  unlink(name: string): boolean {
    checkEntry(name);
    if (c.unlinkat(this.fd, name, 0) === 0) return true;
    const errno = koffi.errno();
    if (errno === Errno.ENOENT) return false;
    throw new SystemError('unlinkat', errno, { dir: this.path, name });
  }

  close(): void {
    c.close(this.fd);
  }
}

const ELOOP = 40;
const ENXIO = 6;
