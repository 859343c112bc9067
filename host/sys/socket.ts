/**
 * Unix-socket credentials and descriptor passing, for the control connection of shm channels.
 *
 * - `peerCredentials` / `peerGroups`: who is on the other end, as the kernel recorded it when the peer called
 *   connect() (or listen(), seen from a connector): SO_PEERCRED and SO_PEERGROUPS. Nothing the peer says.
 * - `sendFd` / `receiveFd`: one byte carrying one file descriptor in an SCM_RIGHTS control message.
 * - `dupFd`: a second descriptor for the same socket, so a poll handle can watch it beside libuv's own.
 * - `connectUnix` / `sendBytes`: a connected, non-blocking stream socket made with two system calls, and a write
 *   to it, for a handshake that must say its first line before Node's socket machinery is built around it.
 * - `peekBytes`: a look at what waits in a socket, without blocking, for a handshake line that is already there
 *   when the connection is accepted (then taken with `receiveFd`, with the descriptor that may come with it).
 *
 * The structures are laid out by hand in Buffers (x86_64 sizes in constants.ts): msghdr points at an iovec and a
 * control buffer, so their addresses go in as integers, and the Buffers are held in locals for the call.
 */
import koffi from 'koffi';
import { Errno, SystemError } from '../errors.js';
import type { PeerCredentials } from '../peer.js';
import * as libc from './libc.js';
import {
  CMSGHDR_SIZE, F_DUPFD_CLOEXEC, IOVEC_SIZE, MSG_CMSG_CLOEXEC, MSG_CTRUNC, MSG_DONTWAIT, MSG_NOSIGNAL, MSG_PEEK, MSGHDR_SIZE,
  SCM_RIGHTS, SO_PEERCRED, SO_PEERGROUPS, SOL_SOCKET, UCRED_SIZE,
} from './constants.js';

const lib = koffi.load('libc.so.6');
const c = {
  getsockopt: lib.func('int getsockopt(int fd, int level, int optname, void *optval, void *optlen)') as
    (fd: number, level: number, name: number, value: Buffer, length: Buffer) => number,
  sendmsg: lib.func('intptr_t sendmsg(int fd, void *msg, int flags)') as (fd: number, msg: Buffer, flags: number) => number,
  recvmsg: lib.func('intptr_t recvmsg(int fd, void *msg, int flags)') as (fd: number, msg: Buffer, flags: number) => number,
  socket: lib.func('int socket(int domain, int type, int protocol)') as (domain: number, type: number, protocol: number) => number,
  connect: lib.func('int connect(int fd, void *addr, uint32_t addrlen)') as (fd: number, addr: Buffer, length: number) => number,
  recv: lib.func('intptr_t recv(int fd, void *buf, size_t len, int flags)') as (fd: number, bytes: Buffer, length: number, flags: number) => number,
  send: lib.func('intptr_t send(int fd, void *buf, size_t len, int flags)') as (fd: number, bytes: Buffer, length: number, flags: number) => number,
  geteuid: lib.func('uint32_t geteuid()') as () => number,
  getegid: lib.func('uint32_t getegid()') as () => number,
};

// struct msghdr (x86_64): void *msg_name @0, socklen_t msg_namelen @8, struct iovec *msg_iov @16,
// size_t msg_iovlen @24, void *msg_control @32, size_t msg_controllen @40, int msg_flags @48.
const MSG_IOV_OFFSET = 16;
const MSG_IOVLEN_OFFSET = 24;
const MSG_CONTROL_OFFSET = 32;
const MSG_CONTROLLEN_OFFSET = 40;
const MSG_FLAGS_OFFSET = 48;
// struct iovec: void *iov_base @0, size_t iov_len @8.
const IOV_BASE_OFFSET = 0;
const IOV_LEN_OFFSET = 8;
// struct cmsghdr: size_t cmsg_len @0, int cmsg_level @8, int cmsg_type @12, data @16 (CMSGHDR_SIZE).
const CMSG_LEN_OFFSET = 0;
const CMSG_LEVEL_OFFSET = 8;
const CMSG_TYPE_OFFSET = 12;

/** Most descriptors one receiveFd call accepts; more in one message is a protocol violation (and closed). */
const MAX_RECEIVED_FDS = 8;
const CMSG_DATA_ALIGN = 8;

/** This process's effective uid and gid: what SO_PEERCRED shows a peer. */
export function ownIdentity(): { uid: number; gid: number } {
  return { uid: c.geteuid(), gid: c.getegid() };
}

/** SO_PEERCRED: the peer's pid, effective uid and gid when it connected (listened). */
export function peerCredentials(fd: number): PeerCredentials {
  const value = Buffer.alloc(UCRED_SIZE);
  const length = Buffer.alloc(4);
  length.writeUInt32LE(UCRED_SIZE);
  if (c.getsockopt(fd, SOL_SOCKET, SO_PEERCRED, value, length) < 0) {
    throw new SystemError('getsockopt', libc.lastErrno(), { option: 'SO_PEERCRED', fd });
  }
  return { pid: value.readInt32LE(0), uid: value.readUInt32LE(4), gid: value.readUInt32LE(8) };
}

/** SO_PEERGROUPS: the peer's supplementary groups. ENOPROTOOPT (kernel < 4.13) gives an empty list. */
export function peerGroups(fd: number): number[] {
  for (let room = 64; ; room *= 4) {
    const value = Buffer.alloc(room * 4);
    const length = Buffer.alloc(4);
    length.writeUInt32LE(value.length);
    if (c.getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, value, length) === 0) {
      const n = length.readUInt32LE(0) / 4;
      return Array.from({ length: n }, (_, i) => value.readUInt32LE(i * 4));
    }
    const errno = libc.lastErrno();
    // ERANGE: the kernel wrote the size it needs into length; 65536 groups is the most there can be.
    if (errno === Errno.ERANGE && room < 65536) continue;
    if (errno === ENOPROTOOPT) return [];
    throw new SystemError('getsockopt', errno, { option: 'SO_PEERGROUPS', fd });
  }
}
const ENOPROTOOPT = 92;

/** fcntl(F_DUPFD_CLOEXEC): a new descriptor for the same open file. */
export function dupFd(fd: number): number {
  const copy = libc.fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) throw new SystemError('fcntl', libc.lastErrno(), { cmd: 'F_DUPFD_CLOEXEC', fd });
  return copy;
}

/** A msghdr over one iovec (`data`) and an optional control buffer. The returned Buffers must stay referenced
 * for the duration of the call: the msghdr holds their addresses, not the objects. */
function messageHeader(data: Buffer, control: Buffer | undefined): { msg: Buffer; iov: Buffer } {
  const iov = Buffer.alloc(IOVEC_SIZE);
  iov.writeBigUInt64LE(koffi.address(data) as bigint, IOV_BASE_OFFSET);
  iov.writeBigUInt64LE(BigInt(data.length), IOV_LEN_OFFSET);
  // msg_name stays NULL: the socket is connected.
  const msg = Buffer.alloc(MSGHDR_SIZE);
  msg.writeBigUInt64LE(koffi.address(iov) as bigint, MSG_IOV_OFFSET);
  msg.writeBigUInt64LE(1n, MSG_IOVLEN_OFFSET);
  if (control) {
    msg.writeBigUInt64LE(koffi.address(control) as bigint, MSG_CONTROL_OFFSET);
    msg.writeBigUInt64LE(BigInt(control.length), MSG_CONTROLLEN_OFFSET);
  }
  return { msg, iov };
}

/**
 * Sends `byte` (or the bytes `data`) with `passFd` attached (SCM_RIGHTS) on a connected Unix stream socket,
 * without blocking and without SIGPIPE. The kernel takes the bytes and the descriptor together or not at all;
 * EAGAIN (a full socket buffer) is thrown like every other failure, as a SystemError, and so is a partial send.
 * `passFd` may be several descriptors, sent in one control message (the tests send a receiver more than it takes).
 */
export function sendFd(socketFd: number, passFd: number | readonly number[], byte: number | Buffer): void {
  const data = typeof byte === 'number' ? Buffer.from([byte]) : byte;
  const fds = typeof passFd === 'number' ? [passFd] : passFd;
  // CMSG_SPACE(n × sizeof(int)): the header, then the descriptors, padded to the data alignment.
  const control = Buffer.alloc(CMSGHDR_SIZE + Math.ceil((4 * fds.length) / CMSG_DATA_ALIGN) * CMSG_DATA_ALIGN);
  control.writeBigUInt64LE(BigInt(CMSGHDR_SIZE + 4 * fds.length), CMSG_LEN_OFFSET); // CMSG_LEN(n × sizeof(int))
  control.writeInt32LE(SOL_SOCKET, CMSG_LEVEL_OFFSET);
  control.writeInt32LE(SCM_RIGHTS, CMSG_TYPE_OFFSET);
  fds.forEach((fd, i) => control.writeInt32LE(fd, CMSGHDR_SIZE + 4 * i));
  const { msg, iov } = messageHeader(data, control);
  const sent = c.sendmsg(socketFd, msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (sent < 0) throw new SystemError('sendmsg', libc.lastErrno(), { fd: socketFd });
  void iov;
  // The descriptors went with the first byte: a partial send cannot be completed by ordinary writes here.
  if (sent !== data.length) throw new SystemError('sendmsg', Errno.EIO, { fd: socketFd, sent });
}

/** What one recvmsg brought: the data bytes, every descriptor that came with them (the caller owns and must
 * close all of them), and whether the kernel had to drop control data that did not fit. */
export interface Received {
  bytes: Buffer;
  fds: number[];
  truncated: boolean;
  /** A control message other than SCM_RIGHTS (credentials, ...) came along. */
  foreign: boolean;
}

/**
 * One non-blocking recvmsg of at most `max` data bytes, accepting descriptors (close-on-exec). Returns
 * undefined when nothing is there yet (EAGAIN); bytes.length 0 means end of file.
 */
export function receiveFd(socketFd: number, max = 1): Received | undefined {
  const data = Buffer.alloc(max);
  const control = Buffer.alloc(CMSGHDR_SIZE + MAX_RECEIVED_FDS * 4);
  const { msg, iov } = messageHeader(data, control);
  const n = c.recvmsg(socketFd, msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) {
    const errno = libc.lastErrno();
    if (errno === Errno.EAGAIN) return undefined;
    throw new SystemError('recvmsg', errno, { fd: socketFd });
  }
  void iov;
  const controlLength = Number(msg.readBigUInt64LE(MSG_CONTROLLEN_OFFSET));
  const flags = msg.readInt32LE(MSG_FLAGS_OFFSET);
  const fds: number[] = [];
  let foreign = false;
  // Walk every cmsghdr the kernel wrote (CMSG_FIRSTHDR / CMSG_NXTHDR), bounded by what it reported.
  for (let at = 0; at + CMSGHDR_SIZE <= controlLength;) {
    const length = Number(control.readBigUInt64LE(at + CMSG_LEN_OFFSET));
    if (length < CMSGHDR_SIZE || at + length > controlLength) break;
    const level = control.readInt32LE(at + CMSG_LEVEL_OFFSET);
    const type = control.readInt32LE(at + CMSG_TYPE_OFFSET);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let p = at + CMSGHDR_SIZE; p + 4 <= at + length; p += 4) fds.push(control.readInt32LE(p));
    } else {
      foreign = true;
    }
    at += Math.ceil(length / CMSG_DATA_ALIGN) * CMSG_DATA_ALIGN;
  }
  return { bytes: data.subarray(0, n), fds, truncated: (flags & MSG_CTRUNC) !== 0, foreign };
}

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
/** struct sockaddr_un: sa_family_t sun_family @0, char sun_path[108] @2. */
const SUN_PATH_OFFSET = 2;
const SUN_PATH_MAX = 108;

/**
 * A non-blocking AF_UNIX stream socket connected to `path` and accepted by `check` (which throws to refuse the
 * peer, say for its credentials): two system calls, finished when this returns (a Unix connect never waits for the
 * listener's accept: the kernel queues it, and data written now waits for the listener in the new connection).
 * Throws what `check` threw, or SystemError: ECONNREFUSED when nothing listens there, EAGAIN when the listener's
 * backlog is full, ENOENT for a file path that does not exist.
 *
 * A path that starts with NUL is an abstract name, and an abstract name is all the address bytes it was bound
 * with: Node 20's libuv binds the whole of sun_path (the name, then NULs), a libuv that takes the name's length
 * binds just the name. Both are tried, the whole sun_path first, until one is there and passes `check`: whoever
 * holds the other form (a squatter of another uid) can neither take the connection nor stop it.
 */
export function connectUnix(path: string, check: (fd: number) => void = () => {}): number {
  const name = Buffer.from(path, 'utf8');
  const abstract = name.length > 0 && name[0] === 0;
  const shown = abstract ? `@${path.slice(1)}` : path;
  if (name.length === 0 || name.length > SUN_PATH_MAX - (abstract ? 0 : 1)) throw new SystemError('connect', Errno.ENAMETOOLONG, { path: shown });
  const address = Buffer.alloc(SUN_PATH_OFFSET + SUN_PATH_MAX);
  address.writeUInt16LE(AF_UNIX, 0);
  name.copy(address, SUN_PATH_OFFSET);
  const lengths = abstract ? [address.length, SUN_PATH_OFFSET + name.length] : [address.length];
  /** What `check` threw for a form that is there, which says more than a form nobody listens on. */
  let refused: unknown;
  let errno = 0;
  for (const length of lengths) {
    const fd = c.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new SystemError('socket', libc.lastErrno());
    if (c.connect(fd, address, length) !== 0) {
      errno = libc.lastErrno();
      libc.close(fd);
      if (errno === Errno.ECONNREFUSED) continue;
      break;
    }
    try {
      check(fd);
      return fd;
    } catch (error) {
      libc.close(fd);
      refused = error;
    }
  }
  if (refused !== undefined) throw refused;
  throw new SystemError('connect', errno, { path: shown });
}

/** Writes all of `bytes` to the non-blocking socket `fd` at once, or throws SystemError (EAGAIN: no room; a short
 * write is reported as EAGAIN too, since the caller cannot finish it). Never raises SIGPIPE. */
export function sendBytes(fd: number, bytes: Buffer): void {
  const n = c.send(fd, bytes, bytes.length, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n < 0) throw new SystemError('send', libc.lastErrno());
  if (n !== bytes.length) throw new SystemError('send', Errno.EAGAIN, { sent: n, length: bytes.length });
}

const socketpair = lib.func('int socketpair(int domain, int type, int protocol, void *sv)') as
  (domain: number, type: number, protocol: number, sv: Buffer) => number;

/** socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC): two connected ends, for a parent and a worker it starts (the
 * worker's end is handed over as an inherited descriptor or, to a thread, by number). */
export function socketPair(): [number, number] {
  const sv = Buffer.alloc(8);
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) !== 0) throw new SystemError('socketpair', libc.lastErrno());
  return [sv.readInt32LE(0), sv.readInt32LE(4)];
}

/** The bytes waiting in socket `fd` (at most `max`), left there (MSG_PEEK); undefined when there are none yet
 * (EAGAIN); an empty Buffer at end of file. Descriptors passed with them are not taken. */
export function peekBytes(fd: number, max: number): Buffer | undefined {
  return receive(fd, max, MSG_PEEK);
}

function receive(fd: number, max: number, flags: number): Buffer | undefined {
  const bytes = Buffer.allocUnsafe(max);
  const n = c.recv(fd, bytes, max, flags | MSG_DONTWAIT);
  if (n < 0) {
    const errno = libc.lastErrno();
    if (errno === Errno.EAGAIN) return undefined;
    throw new SystemError('recv', errno, { fd });
  }
  return bytes.subarray(0, n);
}
