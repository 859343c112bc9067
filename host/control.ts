/**
 * What every socket-based endpoint checks and reads before it trusts a peer, written once for the shm control
 * socket (transports/shm/control.ts) and the stream transports:
 *
 * - who is on the other end (SO_PEERCRED): the listener admits only the connectors its policy allows (`allow`,
 *   default: its own uid and root) and the connector only a listener of the uid it expects (`expectUid`, default:
 *   its own uid or root). The abstract namespace has no permissions, so this is what stops another local user
 *   from squatting an endpoint;
 * - `readHandshake`: one bounded handshake unit read from a socket, with a deadline;
 * - `pauseForRoom`: a connect that met the listener's full accept queue waits and tries again, until its deadline;
 * - the doorbell bytes a shm peer rings over its control socket (host/wake/ rings them too).
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { HandshakeError, ShmbusError, TimeoutError, ErrorCode } from './errors.js';
import type { PeerCredentials } from './peer.js';
import { ownIdentity, peerCredentials, peerGroups } from './sys/socket.js';

/** Doorbell bytes on a shm control socket: "your inbound ring has records", "your outbound ring has room". */
export const DOORBELL_DATA = 0x44; // 'D'
export const DOORBELL_SPACE = 0x53; // 'S'

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

/** The longest pause between two tries of a connect that the listener's full accept queue refused. */
const ROOM_PAUSE_MAX_MS = 16;

/**
 * After the `tries`-th connect (from 0) to a Unix socket failed with EAGAIN: the listener's accept queue is full.
 * A blocking connect(2) would sleep in the kernel until the listener accepts; ours do not block (they must not
 * stall the event loop), so the caller tries again after this pause (1 ms, doubling up to ROOM_PAUSE_MAX_MS), and
 * a client that connects faster than its listener accepts is paced by the listener instead of refused. Throws
 * ERR_SHMBUS_LIMIT once `deadline` (Date.now() time) has passed.
 */
export async function pauseForRoom(tries: number, url: string, deadline: number, timeoutMs: number): Promise<void> {
  const ms = deadline - Date.now();
  if (ms <= 0) throw new ShmbusError(ErrorCode.LIMIT, 'the listener has too many connections waiting', { details: { url, waitedMs: timeoutMs } });
  await sleep(Math.min(2 ** tries, ROOM_PAUSE_MAX_MS, ms));
}
