/**
 * unix: Unix-domain stream sockets, framed as in stream.ts.
 *
 *   unix:///run/app.sock      a socket file; an absolute path of at most 107 bytes (the kernel's sun_path)
 *   unix://@name              Linux's abstract namespace: no file at all, the name dies with the listener
 *
 * Options: `maxQueued`; `allow` (listener: who else may connect, `uid:1000,gid:50` or `any`) and `expectUid`
 * (connector: the uid the listener must run as), as for shm: (docs/security.md). Both ends check the other with
 * SO_PEERCRED first: by default a listener serves its own uid and root, a connector talks to a listener of its
 * own uid or root. That matters most for abstract names, which have no permissions at all; a socket file's mode
 * still applies on top. Percent-escapes in the path or name are decoded.
 *
 * A listener refuses an endpoint someone listens on (ERR_SHMBUS_EXISTS). A socket file nobody listens on (left by
 * a listener that was killed) is replaced; a file that is not a socket is never touched. The listener removes
 * its socket file on close and on normal exit.
 */
import net from 'node:net';
import fs from 'node:fs';
import { BadArgumentError, BadUrlError, ShmbusError, ErrorCode } from '../host/errors.js';
import { checkConnector, checkListener, credentialsOf, pauseForRoom, OWNER_ONLY, parseAllow, parseUid, type PeerPolicy } from '../host/control.js';
import { maxConnectionsOf, parseTransportQuery, splitUrl } from './base.js';
import { onProcessExit } from '../host/exit.js';
import { ServerListener, StreamConnection, socketError, whenConnected } from './stream.js';
import type { Transport, ConnectOptions, ListenOptions, Connection, ConnectionListener } from './contract.js';

const SUN_PATH_MAX = 107;
const DEFAULT_TIMEOUT = 5000;

export interface UnixEndpoint {
  url: string;
  /** What node:net takes: the file path, or '\0name' for the abstract namespace. */
  path: string;
  abstract: boolean;
  maxQueued: number;
  /** Listener: who may connect besides its own uid and root. */
  allow: PeerPolicy;
  /** Connector: the uid the listener must run as (undefined: our own uid or root). */
  expectUid?: number;
}

export function parseUnixUrl(url: string): UnixEndpoint {
  const { rest, query } = splitUrl(url, 'unix');
  const { maxQueued, params } = parseTransportQuery(url, query, ['allow', 'expectUid']);
  let allow = OWNER_ONLY;
  let expectUid: number | undefined;
  try {
    const allowText = params.get('allow');
    if (allowText !== null) allow = parseAllow(allowText);
    const expectText = params.get('expectUid');
    if (expectText !== null) expectUid = parseUid(expectText);
  } catch (cause) {
    throw new BadUrlError((cause as Error).message, url);
  }
  if (!rest.startsWith('//')) throw new BadUrlError('unix: URL is unix:///absolute/path or unix://@abstract-name', url);
  let target: string;
  try {
    target = decodeURIComponent(rest.slice(2));
  } catch (cause) {
    throw new BadUrlError('bad percent-escape in the path', url, { cause });
  }
  let path: string;
  let abstract = false;
  if (target.startsWith('@')) {
    if (target.length < 2) throw new BadUrlError('unix: abstract name is empty', url);
    path = '\0' + target.slice(1);
    abstract = true;
  } else if (target.startsWith('/') && !target.endsWith('/')) {
    path = target;
  } else {
    throw new BadUrlError('unix: URL is unix:///absolute/path or unix://@abstract-name', url);
  }
  if (path.includes('\0', abstract ? 1 : 0)) throw new BadUrlError('unix: path holds a NUL byte', url);
  if (Buffer.byteLength(path) > SUN_PATH_MAX) throw new BadUrlError('unix: path longer than the kernel allows', url, { details: { max: SUN_PATH_MAX } });
  return { url, path, abstract, maxQueued, allow, expectUid };
}

function bind(server: net.Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => reject(error);
    server.once('error', onError);
    server.listen({ path }, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** True when something accepts connections at `path`. */
function listening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect({ path });
    probe.once('connect', () => { probe.destroy(); resolve(true); });
    probe.once('error', () => resolve(false));
  });
}

async function listen(url: string, options: ListenOptions = {}): Promise<ConnectionListener> {
  const ep = parseUnixUrl(url);
  const maxConnections = maxConnectionsOf(options);
  let policy = ep.allow;
  if (options.allow !== undefined) {
    try {
      policy = parseAllow(options.allow);
    } catch (cause) {
      throw new BadArgumentError((cause as Error).message, { allow: options.allow });
    }
  }
  const server = net.createServer({ allowHalfOpen: true });
  try {
    await bind(server, ep.path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || ep.abstract || await listening(ep.path)) {
      throw socketError(error as NodeJS.ErrnoException, url, 'listen');
    }
    // Nobody listens: a leftover of a listener that died. Replace it, but only if it is a socket.
    let stat: fs.Stats;
    try {
      stat = fs.lstatSync(ep.path);
    } catch {
      throw socketError(error as NodeJS.ErrnoException, url, 'listen');
    }
    if (!stat.isSocket()) throw new ShmbusError(ErrorCode.EXISTS, 'a file that is not a socket is in the way', { details: { url } });
    fs.rmSync(ep.path, { force: true });
    try {
      await bind(server, ep.path);
    } catch (again) {
      throw socketError(again as NodeJS.ErrnoException, url, 'listen');
    }
  }
  let forget: (() => void) | undefined;
  if (!ep.abstract) {
    // Remove the file at exit only while it is still ours (same inode): a later listener may own the name.
    const ino = fs.lstatSync(ep.path).ino;
    forget = onProcessExit(() => {
      if (fs.lstatSync(ep.path, { throwIfNoEntry: false })?.ino === ino) fs.unlinkSync(ep.path);
    });
  }
  // A connector that is not allowed is disconnected before a byte is read (ServerListener reports the error).
  return new ServerListener(url, server, maxConnections, (socket) => {
    checkConnector(socket, credentialsOf(socket), policy);
    return new StreamConnection({ url, maxQueued: ep.maxQueued, input: socket, output: socket });
  }, forget);
}

async function connect(url: string, options: ConnectOptions = {}): Promise<Connection> {
  const ep = parseUnixUrl(url);
  const timeout = options.timeout ?? DEFAULT_TIMEOUT;
  const deadline = Date.now() + timeout;
  let socket: net.Socket;
  for (let tries = 0; ; tries++) {
    try {
      socket = await whenConnected(net.connect({ path: ep.path, allowHalfOpen: true }), url, Math.max(1, deadline - Date.now()));
      break;
    } catch (error) {
      // The listener's accept queue is full: wait for room, as a blocking connect would (host/control.ts).
      if (!(error instanceof ShmbusError) || error.details?.errno !== 'EAGAIN') throw error;
      await pauseForRoom(tries, url, deadline, timeout);
    }
  }
  try {
    checkListener(credentialsOf(socket), options.expectUid ?? ep.expectUid);
  } catch (error) {
    socket.destroy();
    throw error;
  }
  return new StreamConnection({ url, maxQueued: ep.maxQueued, input: socket, output: socket });
}

export const unixTransport: Transport = { name: 'unix', schemes: ['unix'], listen, connect };
