// The conformance harness: what a case is, and how a test gets one connection whose other end is a child
// process (test/fixtures/conn-peer.ts, compiled to dist/), for any transport.
//
// A case either listens (listenerCase: listen here, the child connects to the URL) or starts its child itself
// (pipe:, spawnWithPipe). Every case names what it leaves in the system (files, sockets, segments, queues), so
// each test can check that nothing is left behind.
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import tap from 'tap';
import { listen, spawnWithPipe, type Connection, type ConnectionListener } from '../../index.js';
import { adoptChild, startChild, within, type Child, type TestLike } from '../helpers.js';

export { within };

export const PEER = fileURLToPath(new URL('../../dist/test/fixtures/conn-peer.js', import.meta.url));
/** The peer measures its live memory after gc(). */
const PEER_EXEC_ARGV = ['--expose-gc'];
// tap preloads its own hooks through NODE_OPTIONS; the peer runs plain compiled JS.
const PEER_ENV = { ...process.env, NODE_OPTIONS: '' };

export type Query = Record<string, string | number>;

export interface Peer {
  child: ChildProcess;
  /** The helper's handle: kills the peer's process group, waits for stdout lines. */
  handle: Child;
  /** Exit code, or the signal's name. */
  exit: Promise<number | string>;
  stderr(): string;
  stdout(): string;
}

export interface Session {
  /** This process's end of the connection. */
  conn: Connection;
  peer: Peer;
  /** The listener, for cases that listen. */
  listener?: ConnectionListener;
  /** Closes our end and the listener, and waits for the child to exit (killing it after `graceMs`). */
  close(graceMs?: number): Promise<void>;
}

export interface ConformanceCase {
  name: string;
  /** Whether the transport has endpoints to listen on (everything but pipe:). */
  listens: boolean;
  /** A fresh URL for this case, with `query` as options; nothing listens on it yet. */
  url(query?: Query): string;
  /** Starts a child running `mode` of conn-peer and returns our end of its connection. The child is killed
   * when test `owner` ends (default: when the file ends). */
  open(mode: string, args?: Record<string, number>, query?: Query, owner?: TestLike): Promise<Session>;
  /** What of this transport exists in the system now (file names, socket names, segment names, queues). */
  leftovers(): string[];
  /** URLs of this scheme that are malformed: listen and connect must refuse them with ERR_SHMBUS_BAD_URL. */
  badUrls: string[];
  /** Whether a listening endpoint shows up in leftovers() (a socket file, a FIFO): then the exit test can see
   * it appear and disappear. */
  endpointVisible: boolean;
  /** A well-formed URL nobody listens on (connect must say ERR_SHMBUS_NOT_FOUND). */
  idleUrl(): Promise<string>;
  /** What the transport's process-wide machinery looks like now, for the message of a watchdog that fired. */
  diagnose?(): string;
}

const children = new Set<Child>();
/** Sessions not closed yet: a test that failed half-way leaves its own, and they would keep tap waiting. */
const sessions = new Set<Session>();

/** Kills every child still running and closes every session a failed test left open (suite teardown). */
export async function killAll(): Promise<void> {
  for (const c of children) c.kill('SIGKILL');
  // With the peers dead, close() has nothing left to wait for.
  await Promise.all([...sessions].map((s) => within(5000, s.close(0), 'teardown close').catch(() => {})));
}

function track(session: Session): Session {
  sessions.add(session);
  const close = session.close;
  session.close = (graceMs) => { sessions.delete(session); return close(graceMs); };
  return session;
}

function watch(handle: Child): Peer {
  children.add(handle);
  // The helper's exit comes once the child's stdio pipes are closed too.
  const exit = handle.exit.then(({ code, signal }) => {
    children.delete(handle);
    return code ?? signal ?? 'unknown';
  });
  return { child: handle.process, handle, exit, stderr: () => handle.stderr(), stdout: () => handle.stdout() };
}

/** Starts conn-peer with `url` in `mode` (used by listener cases and by the listen-wait tests); it is killed when
 * test `owner` ends at the latest (default: the file's root test). */
export function startPeer(url: string, mode: string, args: Record<string, number> = {}, stdin: 'ignore' | 'pipe' = 'ignore', owner: TestLike = tap): Peer {
  return watch(startChild(owner, [process.execPath, ...PEER_EXEC_ARGV, PEER, url, mode, JSON.stringify(args)], { stdin, env: PEER_ENV }));
}

/** Waits for the child; kills it if it takes longer than `graceMs` (a watchdog: far above a normal exit). */
export async function reap(peer: Peer, graceMs = 30_000): Promise<number | string> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((r) => { timer = setTimeout(() => r('late'), graceMs); });
  const first = await Promise.race([peer.exit, late]);
  clearTimeout(timer);
  if (first !== 'late') return first;
  peer.child.kill('SIGKILL');
  return peer.exit;
}

export function withQuery(url: string, query: Query = {}): string {
  const entries = Object.entries(query);
  if (entries.length === 0) return url;
  return url + (url.includes('?') ? '&' : '?') + entries.map(([k, v]) => `${k}=${encodeURIComponent(String(v))}`).join('&');
}

/** A case for a transport with listen/connect: we listen, the child connects. */
export function listenerCase(spec: {
  name: string;
  url: (query?: Query) => string;
  leftovers: () => string[];
  badUrls: string[];
  endpointVisible: boolean;
  idleUrl?: () => Promise<string>;
}): ConformanceCase {
  return {
    idleUrl: async () => spec.url(),
    ...spec,
    listens: true,
    async open(mode, args = {}, query = {}, owner = tap) {
      const listener = await listen(spec.url(query));
      // stdin: the expect-close mode waits for a line there.
      const peer = startPeer(listener.url, mode, args, 'pipe', owner);
      let conn: Connection | undefined;
      try {
        conn = await within(60_000, Promise.race([
          listener.acceptNext(),
          peer.exit.then((code) => { throw new Error(`peer exited (${code}) before connecting: ${peer.stderr()}`); }),
        ]), 'accept');
        if (!conn) throw new Error('listener closed');
      } catch (error) {
        await listener.close();
        peer.child.kill('SIGKILL');
        await peer.exit;
        throw error;
      }
      conn.on('error', () => { /* tests read errors from the iterator and drained() */ });
      const c = conn;
      return track({
        conn: c, peer, listener,
        async close(graceMs) {
          await within(60_000, c.close(), 'close');
          await listener.close();
          await reap(peer, graceMs);
        },
      });
    },
  };
}

/** The pipe: case: spawnWithPipe starts the child; the parent's end needs no listener. */
export function pipeCase(spec: { name: string; leftovers: () => string[] }): ConformanceCase {
  return {
    name: spec.name,
    listens: false,
    endpointVisible: false,
    leftovers: spec.leftovers,
    url: (query) => withQuery('pipe:', query),
    idleUrl: async () => 'pipe:',
    badUrls: ['pipe://x', 'pipe:/dev/null', 'pipe:?in=abc', 'pipe:?in=3&out=3'],
    async open(mode, args = {}, query = {}, owner = tap) {
      const url = withQuery('pipe:', query);
      // detached: its own process group, which adoptChild kills when `owner` ends.
      const { child, connection } = spawnWithPipe(PEER, [url, mode, JSON.stringify(args)], {
        url, execArgv: PEER_EXEC_ARGV, env: PEER_ENV, stdio: ['pipe', 'pipe', 'pipe'], detached: true,
      });
      const peer = watch(adoptChild(owner, child, `${PEER} ${url} ${mode}`));
      connection.on('error', () => {});
      return track({
        conn: connection, peer,
        async close(graceMs) {
          await within(60_000, connection.close(), 'close');
          await reap(peer, graceMs);
        },
      });
    },
  };
}

/** Entries of /proc/net/unix whose path contains `needle` (abstract names start with '@'). */
export function unixSockets(needle: string): string[] {
  return readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)
    .map((line) => line.trim().split(/\s+/)[7])
    .filter((p): p is string => p !== undefined && p.includes(needle))
    .sort();
}

/** File names in `dir`. */
export function filesIn(dir: string): string[] {
  return readdirSync(dir).sort();
}

/** This process's open sockets and pipes: a connection that was not released shows up here. */
export function openSocketsAndPipes(): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target.startsWith('socket:') || target.startsWith('pipe:')) n++;
    } catch { /* closed while listing */ }
  }
  return n;
}
