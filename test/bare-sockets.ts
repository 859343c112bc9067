/**
 * libc's socket calls for tests that need a listening socket Node would not make: one bound by some exact address
 * bytes, or with a backlog of 0, that accepts only when the test says so.
 */
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');
export const libcSockets = {
  socket: lib.func('int socket(int domain, int type, int protocol)') as (domain: number, type: number, protocol: number) => number,
  bind: lib.func('int bind(int fd, void *addr, uint32_t addrlen)') as (fd: number, addr: Buffer, length: number) => number,
  listen: lib.func('int listen(int fd, int backlog)') as (fd: number, backlog: number) => number,
  accept4: lib.func('int accept4(int fd, void *addr, void *addrlen, int flags)') as (fd: number, addr: null, length: null, flags: number) => number,
};
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;

/** A non-blocking listening Unix socket bound to `address` (a whole struct sockaddr_un, or as many of its bytes as
 * the caller means) with `backlog`. */
export function bareListener(address: Buffer, backlog: number): number {
  const c = libcSockets;
  const fd = c.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0 || c.bind(fd, address, address.length) !== 0 || c.listen(fd, backlog) !== 0) throw new Error('cannot make the bare listener');
  return fd;
}

/** struct sockaddr_un for `path` (abstract: a leading NUL), all 110 bytes, as Node binds it. */
export function wholeAddress(path: string): Buffer {
  const address = Buffer.alloc(110);
  address.writeUInt16LE(AF_UNIX, 0);
  Buffer.from(path, 'utf8').copy(address, 2);
  return address;
}
