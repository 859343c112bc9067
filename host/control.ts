/**
 * The control connection of a shm channel: a Unix stream socket in the abstract namespace.
 *
 * Before a single byte is exchanged each side asks the kernel who is on the other end (SO_PEERCRED): the
 * listener admits only the connectors its policy allows (`allow`, default: its own uid and root) and the
 * connector only a listener of the uid it expects (`expectUid`, default: its own uid or root). The abstract
 * namespace has no permissions, so this is what stops another local user from squatting an endpoint.
 *
 * It then carries (1) the handshake, newline-terminated JSON lines, at most one in flight per side:
 *
 *   connector → listener   {"shmbus":1,"version":<layout version>,"pid":…,"wake":…}
 *   listener  → connector  {"ok":true,"kind":"memfd"|"sysv"|"file","shmid":…,"size":…,"capacity":…,"wake":…}
 *                          or {"ok":false,"code":"ERR_SHMBUS_…","message":…}
 *   memfd and file only:
 *   connector → listener   {"fd":true}           (the connector has stopped its socket reads: see receivePassedFd)
 *   listener  → connector  one byte FD_BYTE with the segment's descriptor attached (SCM_RIGHTS)
 *   connector → listener   {"attached":true} or {"attached":false,"code":…,"message":…}
 *
 * and then (2) doorbell bytes, one per park of the peer: DOORBELL_DATA ("your inbound ring has records") and
 * DOORBELL_SPACE ("your outbound ring has room"). Its end-of-file tells a side that its peer is gone; whether
 * that was an orderly close is read from the ring's closed flags, not from the socket.
 */
import net from 'node:net';
import koffi from 'koffi';
import { HandshakeError, ShmbusError, SystemError, TimeoutError, type ErrorCodeValue, ErrorCode } from './errors.js';
import type { PeerCredentials } from './peer.js';
import { dupFd, ownIdentity, peerCredentials, peerGroups, receiveFd, sendFd } from './sys/socket.js';
import { closeFd } from './sys/shm.js';

export const PROTOCOL = 1;
/** The data byte that carries the segment descriptor. */
export const FD_BYTE = 0x46; // 'F'
export const DOORBELL_DATA = 0x44; // 'D'
export const DOORBELL_SPACE = 0x53; // 'S'
const MAX_LINE = 4096;

/**
 * Reads from `socket` until `parse` finds one whole handshake unit in what arrived. `parse` returns the unit and
 * how many bytes it used, undefined when it needs more, or throws a HandshakeError when the bytes cannot be
 * right. Resolves with the unit and whatever bytes followed it (the socket is left paused); rejects on
 * end-of-file, error, a parse error or timeout. Shared by every handshake (shm control lines, stream frames).
 */
export function readHandshake<T>(socket: net.Socket, timeoutMs: number, parse: (buffered: Buffer) => { value: T; used: number } | undefined): Promise<{ value: T; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new TimeoutError('handshake timed out', { timeoutMs })), timeoutMs);
    const onData = (chunk: Buffer) => {
      buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
      let found: { value: T; used: number } | undefined;
      try {
        found = parse(buffered);
      } catch (error) {
        return finish(error instanceof ShmbusError ? error : new HandshakeError('bad handshake', { cause: error }));
      }
      if (found) finish(undefined, { value: found.value, rest: buffered.subarray(found.used) });
    };
    const onEnd = () => finish(new HandshakeError('peer went away during the handshake'));
    const onError = (cause: Error) => finish(new HandshakeError('connection failed during the handshake', { cause }));
    function finish(error?: ShmbusError, value?: { value: T; rest: Buffer }) {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      socket.pause();
      if (error) reject(error);
      else resolve(value!);
    }
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onError);
    socket.resume();
  });
}

/**
 * Reads one handshake line: resolves with the parsed JSON object and whatever bytes followed the line
 * (doorbells that arrived with it). Rejects on EOF, an over-long line, bad JSON or timeout.
 */
export async function readLine(socket: net.Socket, timeoutMs: number): Promise<{ message: Record<string, unknown>; rest: Buffer }> {
  const { value, rest } = await readHandshake(socket, timeoutMs, (buffered) => {
    const nl = buffered.indexOf(0x0a);
    if (nl < 0) {
      if (buffered.length > MAX_LINE) throw new HandshakeError('handshake line too long');
      return undefined;
    }
    let message: unknown;
    try {
      message = JSON.parse(buffered.subarray(0, nl).toString('utf8'));
    } catch (cause) {
      throw new HandshakeError('handshake line is not JSON', { cause });
    }
    if (typeof message !== 'object' || message === null) throw new HandshakeError('handshake line is not an object');
    return { value: message as Record<string, unknown>, used: nl + 1 };
  });
  return { message: value, rest };
}

export function writeLine(socket: net.Socket, message: Record<string, unknown>): void {
  socket.write(JSON.stringify(message) + '\n');
}

/** The error a peer reported in a handshake line, rebuilt with its code. */
export function remoteError(message: Record<string, unknown>, fallback: string): ShmbusError {
  const code = typeof message.code === 'string' && message.code.startsWith('ERR_SHMBUS_') ? (message.code as ErrorCodeValue) : ErrorCode.HANDSHAKE;
  const text = typeof message.message === 'string' ? message.message : fallback;
  return new ShmbusError(code, `peer refused: ${text}`);
}

/** The message to send back for an error. */
export function errorLine(error: unknown, key: 'ok' | 'attached'): Record<string, unknown> {
  const code = error instanceof ShmbusError ? error.code : ErrorCode.HANDSHAKE;
  return { [key]: false, code, message: error instanceof Error ? error.message : String(error) };
}

// ------------------------------------------------------------------------------------------------ credentials

/** Who may connect to a listener, besides its own uid and root. */
export interface PeerPolicy {
  /** Admit every local user (the endpoint is public; each connection still gets its own segment). */
  readonly any: boolean;
  readonly uids: readonly number[];
  /** Matched against the peer's effective gid and its supplementary groups (SO_PEERGROUPS). */
  readonly gids: readonly number[];
}

export const OWNER_ONLY: PeerPolicy = { any: false, uids: [], gids: [] };

const ID = /^\d{1,10}$/;

function parseId(text: string, what: string): number {
  if (!ID.test(text) || Number(text) > 0xfffffffe) throw new Error(`${what} must be a number 0..4294967294`);
  return Number(text);
}

/**
 * Parses an `allow` list: `uid:1000,gid:50,uid:1001`, or `any`. Throws a plain Error with the reason (the
 * caller wraps it in its own typed error: a bad URL, a bad argument).
 */
export function parseAllow(text: string): PeerPolicy {
  if (text === 'any') return { any: true, uids: [], gids: [] };
  const uids: number[] = [];
  const gids: number[] = [];
  for (const item of text.split(',')) {
    const m = /^(uid|gid):(.*)$/.exec(item);
    if (!m) throw new Error(`allow takes uid:<n>, gid:<n> (comma-separated) or any; got '${item}'`);
    (m[1] === 'uid' ? uids : gids).push(parseId(m[2]!, m[1]!));
  }
  return { any: false, uids, gids };
}

/** Parses an expected listener uid (the `expectUid` option). */
export function parseUid(text: string): number {
  return parseId(text, 'expectUid');
}

/** The control socket's descriptor (Node keeps it in its handle; Linux only). */
export function socketFd(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new HandshakeError('control socket has no descriptor (closed?)');
  return fd;
}

/** The kernel's record of who is on the other end of the control socket. */
export function credentialsOf(socket: net.Socket): PeerCredentials {
  return peerCredentials(socketFd(socket));
}

function refused(message: string, cred: PeerCredentials): ShmbusError {
  return new ShmbusError(ErrorCode.PERMISSION_DENIED, message, { details: { peerUid: cred.uid, peerGid: cred.gid, peerPid: cred.pid } });
}

/**
 * Listener side: throws ERR_SHMBUS_PERMISSION_DENIED unless the connector's uid is ours or root's, or `policy`
 * admits it. Root is always admitted: it can read and write our memory anyway, so refusing it guards nothing.
 */
export function checkConnector(socket: net.Socket, cred: PeerCredentials, policy: PeerPolicy): void {
  const me = ownIdentity().uid;
  if (cred.uid === me || cred.uid === 0 || policy.any || policy.uids.includes(cred.uid)) return;
  if (policy.gids.length > 0) {
    if (policy.gids.includes(cred.gid)) return;
    if (peerGroups(socketFd(socket)).some((g) => policy.gids.includes(g))) return;
  }
  throw refused('connector is not allowed on this endpoint', cred);
}

/**
 * Connector side: throws ERR_SHMBUS_PERMISSION_DENIED, naming the uid found, unless the listener runs as
 * `expectUid`, or (when none is given) as our own uid or root. Anything else is someone squatting the name.
 */
export function checkListener(cred: PeerCredentials, expectUid: number | undefined): void {
  const me = ownIdentity().uid;
  const ok = expectUid === undefined ? cred.uid === me || cred.uid === 0 : cred.uid === expectUid;
  if (!ok) {
    throw refused(`the endpoint is held by uid ${cred.uid}, not by ${expectUid === undefined ? `uid ${me} or root` : `uid ${expectUid}`}`, cred);
  }
}

// ------------------------------------------------------------------------------------------------ descriptors

interface StreamHandle { fd: number; reading?: boolean; readStop(): number; readStart(): number }

function handleOf(socket: net.Socket): StreamHandle {
  const handle = (socket as unknown as { _handle?: StreamHandle })._handle;
  if (!handle || typeof handle.fd !== 'number' || handle.fd < 0 || typeof handle.readStop !== 'function') {
    throw new HandshakeError('control socket has no descriptor (closed?)');
  }
  return handle;
}

/** Listener side: sends the segment's descriptor with one FD_BYTE. The socket's own writes must be done
 * (they are: the connector asked for the descriptor after reading our last line). */
export function sendPassedFd(socket: net.Socket, fd: number): void {
  if (socket.writableLength !== 0) throw new HandshakeError('control socket still has bytes to write before the descriptor');
  sendFd(socketFd(socket), fd, FD_BYTE);
}

/**
 * Connector side: receives the one descriptor the listener sends with FD_BYTE, after `ask()` requested it.
 *
 * Node's own reads would throw the descriptor away (libuv reads a plain stream socket with read(2)), so libuv
 * stops reading this socket first, `ask` is sent only then, and the message is taken with recvmsg on a dup of
 * the socket, watched by a poll handle of its own (libuv allows one watcher per descriptor). Reading resumes
 * afterwards. Exactly one descriptor must come with exactly FD_BYTE; anything received besides is closed.
 * Rejects on end of file, a protocol violation, or `timeoutMs`.
 */
export function receivePassedFd(socket: net.Socket, timeoutMs: number, ask: () => void): Promise<number> {
  const handle = handleOf(socket);
  const wasReading = handle.reading !== false;
  handle.readStop();
  let dup: number;
  try {
    dup = dupFd(handle.fd);
  } catch (error) {
    if (wasReading) handle.readStart();
    return Promise.reject(error);
  }
  return new Promise((resolve, reject) => {
    let poll: ReturnType<typeof koffi.node.poll> | undefined;
    let done = false;
    const timer = setTimeout(() => finish(new TimeoutError('handshake timed out waiting for the segment descriptor', { timeoutMs })), timeoutMs);
    function finish(error: ShmbusError | undefined, fd?: number): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      poll?.close();
      try { closeFd(dup); } catch { /* keep the first outcome */ }
      if (wasReading && !socket.destroyed) handle.readStart();
      if (error) reject(error);
      else resolve(fd!);
    }
    const onReadable = () => {
      let got;
      try {
        got = receiveFd(dup, 1);
      } catch (error) {
        return finish(error instanceof ShmbusError ? error : new HandshakeError('cannot receive the segment descriptor', { cause: error }));
      }
      if (!got) return; // woken without data
      const [first, ...extra] = got.fds;
      for (const fd of extra) closeQuietly(fd);
      if (got.bytes.length === 0) {
        if (first !== undefined) closeQuietly(first);
        return finish(new HandshakeError('peer went away during the handshake'));
      }
      if (got.bytes[0] !== FD_BYTE || first === undefined || extra.length > 0 || got.truncated || got.foreign) {
        if (first !== undefined) closeQuietly(first);
        return finish(new HandshakeError('expected exactly one segment descriptor', { details: { fds: got.fds.length, byte: got.bytes[0], truncated: got.truncated } }));
      }
      finish(undefined, first);
    };
    try {
      poll = koffi.node.poll(dup, { readable: true, disconnect: true }, onReadable);
    } catch (cause) {
      return finish(new ShmbusError(ErrorCode.SYSCALL, 'cannot watch the control socket', { cause }));
    }
    try {
      ask();
    } catch (error) {
      finish(error instanceof ShmbusError ? error : new HandshakeError('cannot ask for the segment descriptor', { cause: error }));
    }
  });
}

function closeQuietly(fd: number): void {
  try { closeFd(fd); } catch (error) { if (!(error instanceof SystemError)) throw error; }
}
