/**
 * The control connection of a shm channel: a Unix stream socket in the abstract namespace.
 *
 * Before a single byte is exchanged each side asks the kernel who is on the other end (SO_PEERCRED, in
 * host/control.ts). It then carries (1) the handshake, newline-terminated JSON lines, at most one in flight per side:
 *
 *   connector → listener   {"shmbus":1,"version":<layout version>,"pid":…,"thread":…,"wake":…,"fdWithReply":true}
 *                          (sent on the bare descriptor right after connect(2), before Node's socket is built
 *                          around it, whose reads then stop before the event loop runs: see receiveLineWithFds)
 *   listener  → connector  {"ok":true,"kind":"memfd"|"sysv"|"file","shmid":…,"size":…,"capacity":…,"wake":…,
 *                          "thread":…,"fdWithReply":true}, for memfd and file with the segment's descriptor attached to the
 *                          line's bytes (SCM_RIGHTS, one sendmsg: sendLineWithFd)
 *                          or {"ok":false,"code":"ERR_SHMBUS_…","message":…}
 *   connector → listener   {"attached":true} or {"attached":false,"code":…,"message":…}
 *
 * A connector that knows the listener process (an earlier reply of it said "takesSegments": shm:// only, a listener
 * in another process: connect.ts) brings its own segment instead, made and formatted as the listener would, and does
 * not wait for the listener:
 *
 *   connector → listener   {"shmbus":1,…,"segment":{"capacity":…,"initialCapacity":…}}, the memfd attached to the
 *                          line (sendmsg); connect() returns the channel now
 *   listener  → connector  {"ok":true,"took":true,"wake":…,"maxMessage":…,"records":true} (the verdict, the first line the
 *                          channel reads: Channel readVerdict) or {"ok":false,"code":…,"message":…}
 *
 * and no third line. The listener checks that segment as a connector checks one of the listener's (sealed memfd of
 * the connector's uid, its size, its header) and takes rings up to its own size only.
 *
 * "thread" is the sender's worker_threads threadId: with the pid the kernel reports (SO_PEERCRED), equal ones say the
 * peer is this very thread (no spinning for it: see Channel). An older peer sends none.
 *
 * A connector whose hello lacks "fdWithReply" (the earlier protocol) gets the reply without the descriptor and
 * asks for it: {"fd":true}, answered by one byte FD_BYTE with the descriptor attached (receivePassedFd); a
 * reply without "fdWithReply" makes this connector ask the same way.
 *
 * and then (2) doorbell bytes, one per park of the peer: DOORBELL_DATA ("your inbound ring has records") and
 * DOORBELL_SPACE ("your outbound ring has room"). Its end-of-file tells a side that its peer is gone; whether
 * that was an orderly close is read from the ring's closed flags, not from the socket.
 */
import net from 'node:net';
import koffi from 'koffi';
import { HandshakeError, peerError, ShmbusError, SystemError, TimeoutError, ErrorCode } from '../../host/errors.js';
import { readHandshake, socketFd } from '../../host/control.js';
import { dupFd, peekBytes, receiveFd, sendFd, type Received } from '../../host/sys/socket.js';
import { closeFd } from '../../host/sys/shm.js';

export { DOORBELL_DATA, DOORBELL_SPACE } from '../../host/control.js';

/** The handshake's protocol number (the connector's `shmbus` field). */
export const PROTOCOL = 1;
/** The data byte that carries the segment descriptor. */
export const FD_BYTE = 0x46; // 'F'
const MAX_LINE = 4096;
/** The most descriptors one handshake line carries (the segment): a peer attaching more to the pieces of a line,
 * which could otherwise pile up a few thousand per handshake until its deadline, fails it at once. */
const LINE_FDS = 1;

/**
 * Reads one handshake line: resolves with the parsed JSON object and whatever bytes followed the line
 * (doorbells that arrived with it). Rejects on EOF, an over-long line, bad JSON or timeout.
 */
export async function readLine(socket: net.Socket, timeoutMs: number): Promise<{ message: Record<string, unknown>; rest: Buffer }> {
  const { value, rest } = await readHandshake(socket, timeoutMs, parseLine);
  return { message: value, rest };
}

/**
 * Listener side: the connector's hello, with the descriptor a connector bringing its own segment attaches to it,
 * when all of the line already waits in the socket (a connector sends its hello right after connecting, so it is
 * usually there when the connection is accepted), taken now instead of after the turns of the event loop that
 * receiveLineWithFds waits for. Undefined when it is not all there yet or the socket ended: then
 * receiveLineWithFds waits for it (and reports the end). Only for a socket libuv is not reading (an accepted socket
 * of a server that pauses on connect). The caller owns the descriptors; on a throw none are left open. Throws
 * HandshakeError for a line that is not a JSON object or that came with other control data.
 */
export function takeWaitingLineWithFds(socket: net.Socket): LineWithFds | undefined {
  const fd = socketFd(socket);
  // A peek takes no descriptor: without a control buffer the kernel drops its copies of them.
  const waiting = peekBytes(fd, MAX_LINE + 1);
  const nl = waiting === undefined ? -1 : waiting.indexOf(0x0a);
  if (nl < 0) return undefined;
  const found = parseLine(waiting!.subarray(0, nl + 1))!;
  // Nothing else reads this socket, so what was peeked is what is taken, with the descriptors sent with it.
  const taken = receiveFd(fd, nl + 1);
  try {
    if (taken === undefined || taken.bytes.length !== nl + 1) throw new HandshakeError('handshake line went missing while it was read');
    refuseOtherControlData(taken);
  } catch (error) {
    for (const passed of taken?.fds ?? []) closeQuietly(passed);
    throw error;
  }
  return { message: found.value, rest: Buffer.alloc(0), fds: taken.fds };
}

/** One whole line at the start of `buffered`, parsed, and how many bytes it took; undefined while it is incomplete. */
export function parseLine(buffered: Buffer): { value: Record<string, unknown>; used: number } | undefined {
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
}

export function writeLine(socket: net.Socket, message: Record<string, unknown>): void {
  socket.write(JSON.stringify(message) + '\n');
}

/** The error a peer reported in a handshake line, rebuilt with its code. */
export function remoteError(message: Record<string, unknown>, fallback: string): ShmbusError {
  return peerError(message, ErrorCode.HANDSHAKE, 'peer refused: ', fallback);
}

/** The message to send back for an error. */
export function errorLine(error: unknown, key: 'ok' | 'attached'): Record<string, unknown> {
  const code = error instanceof ShmbusError ? error.code : ErrorCode.HANDSHAKE;
  return { [key]: false, code, message: error instanceof Error ? error.message : String(error) };
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

/** Listener side: sends `message` as one line with the segment's descriptor attached to it (SCM_RIGHTS), in one
 * sendmsg: the reply and the segment arrive together, with no request in between (a connector that says
 * `fdWithReply` in its hello reads them with receiveLineWithFds). Nothing may have been written before. */
export function sendLineWithFd(socket: net.Socket, message: Record<string, unknown>, fd: number): void {
  if (socket.writableLength !== 0) throw new HandshakeError('control socket still has bytes to write before the descriptor');
  sendFd(socketFd(socket), fd, Buffer.from(JSON.stringify(message) + '\n'));
}

/** A handshake line with every descriptor that came with its bytes (the caller owns them and must close them). */
export interface LineWithFds { message: Record<string, unknown>; rest: Buffer; fds: number[] }

/**
 * Connector side: reads the listener's reply line together with the descriptors attached to its bytes, after
 * `ask()` sent the hello that asks for it. As receivePassedFd, libuv stops reading the socket before `ask` runs,
 * and the line is taken with recvmsg on a dup of the socket; reading resumes afterwards. The line may arrive in
 * pieces (at most MAX_LINE bytes); whatever descriptors arrive with any of them are collected (at most LINE_FDS),
 * and on any failure closed here. Rejects on end of file, a bad line, or `timeoutMs`.
 */
export function receiveLineWithFds(socket: net.Socket, timeoutMs: number, ask: () => void): Promise<LineWithFds> {
  let buffered: Buffer = Buffer.alloc(0);
  const fds: number[] = [];
  return watchReadable(socket, timeoutMs, ask, 'the reply', (dup) => {
    const got = receiveFd(dup, MAX_LINE + 1);
    if (!got) return undefined; // woken without data
    fds.push(...got.fds);
    if (fds.length > LINE_FDS) throw new HandshakeError('peer attached more descriptors than a handshake line carries', { details: { fds: fds.length } });
    refuseOtherControlData(got);
    if (got.bytes.length === 0) throw new HandshakeError('peer went away during the handshake');
    buffered = buffered.length ? Buffer.concat([buffered, got.bytes]) : got.bytes;
    const found = parseLine(buffered);
    return found && { message: found.value, rest: buffered.subarray(found.used), fds };
  }, () => { for (const fd of fds.splice(0)) closeQuietly(fd); });
}

/**
 * Stops libuv's reads of `socket`, watches a dup of it, calls `ask`, and calls `step(dup)` each time it is
 * readable until `step` returns a result (undefined: not yet) or throws; then stops watching, closes the dup,
 * resumes reading and settles. `discard` runs on failure, to close what `step` collected.
 */
function watchReadable<T>(socket: net.Socket, timeoutMs: number, ask: () => void, what: string, step: (dup: number) => T | undefined, discard: () => void): Promise<T> {
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
    const timer = setTimeout(() => finish(new TimeoutError(`handshake timed out waiting for ${what}`, { timeoutMs })), timeoutMs);
    function finish(error: unknown, value?: T): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      poll?.close();
      try { closeFd(dup); } catch { /* keep the first outcome */ }
      if (wasReading && !socket.destroyed) handle.readStart();
      if (error !== undefined) {
        discard();
        reject(error instanceof ShmbusError ? error : new HandshakeError(`cannot receive ${what}`, { cause: error }));
      } else {
        resolve(value!);
      }
    }
    const onReadable = () => {
      let value: T | undefined;
      try {
        value = step(dup);
      } catch (error) {
        return finish(error);
      }
      if (value !== undefined) finish(undefined, value);
    };
    try {
      poll = koffi.node.poll(dup, { readable: true, disconnect: true }, onReadable);
    } catch (cause) {
      return finish(new ShmbusError(ErrorCode.SYSCALL, 'cannot watch the control socket', { cause }));
    }
    try {
      ask();
    } catch (error) {
      finish(error instanceof ShmbusError ? error : new HandshakeError(`cannot ask for ${what}`, { cause: error }));
    }
  });
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
  return watchReadable(socket, timeoutMs, ask, 'the segment descriptor', (dup) => {
    const got = receiveFd(dup, 1);
    if (!got) return undefined; // woken without data
    const [first, ...extra] = got.fds;
    for (const fd of extra) closeQuietly(fd);
    if (got.bytes.length === 0) {
      if (first !== undefined) closeQuietly(first);
      throw new HandshakeError('peer went away during the handshake');
    }
    if (got.bytes[0] !== FD_BYTE || first === undefined || extra.length > 0 || got.truncated || got.foreign) {
      if (first !== undefined) closeQuietly(first);
      throw new HandshakeError('expected exactly one segment descriptor', { details: { fds: got.fds.length, byte: got.bytes[0], truncated: got.truncated } });
    }
    return first;
  }, () => {});
}

/** A handshake line's control data must be descriptors only, all of them received (the caller closes them). */
function refuseOtherControlData(got: Received): void {
  if (got.truncated || got.foreign) {
    throw new HandshakeError('handshake line came with control data it may not carry', { details: { fds: got.fds.length, truncated: got.truncated } });
  }
}

function closeQuietly(fd: number): void {
  try { closeFd(fd); } catch (error) { if (!(error instanceof SystemError)) throw error; }
}
