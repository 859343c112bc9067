/**
 * The control connection of a shm channel: a Unix stream socket in the abstract namespace.
 *
 * It carries (1) the handshake, newline-terminated JSON lines, at most one in flight per side:
 *
 *   connector → listener   {"shmbus":1,"version":<layout version>,"pid":…}
 *   listener  → connector  {"ok":true,"kind":"posix"|"sysv"|"file","name":…,"shmid":…,"size":…,"capacity":…}
 *                          or {"ok":false,"code":"ERR_SHMBUS_…","message":…}
 *   connector → listener   {"attached":true} or {"attached":false,"code":…,"message":…}
 *
 * and then (2) doorbell bytes, one per park of the peer: DOORBELL_DATA ("your inbound ring has records") and
 * DOORBELL_SPACE ("your outbound ring has room"). Its end-of-file tells a side that its peer is gone; whether
 * that was an orderly close is read from the ring's closed flags, not from the socket.
 */
import net from 'node:net';
import { HandshakeError, ShmbusError, TimeoutError, type ErrorCodeValue, ErrorCode } from './errors.js';

export const PROTOCOL = 1;
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
