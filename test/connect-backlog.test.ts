/**
 * A connect to a listener whose accept queue is full (connect(2) says EAGAIN) waits for room until its timeout, as a
 * blocking connect to a Unix socket would, instead of failing at once (shm:// and unix://, host/control.ts pauseForRoom): a client that connects in a loop faster than
 * the listener accepts is paced, not refused (found by `npm run test:stress`: the 10,000 clients of scale-many).
 *
 * The "listener" here is a bare socket at the endpoint's control path with a backlog of 0 that never accepts on its
 * own: one waiting connection fills its queue, so the connect under test meets EAGAIN in its first, synchronous
 * part; the test then accepts by hand and reads the hello that connect sends.
 */
import t from 'tap';
import net from 'node:net';
import { connect } from '../index.js';
import { ErrorCode, ShmbusError } from '../host/errors.js';
import { parseShmUrl } from '../host/url.js';
import { parseUnixUrl } from '../transports/unix.js';
import { closeFd } from '../host/sys/shm.js';
import { fileTimeout, unique, within, type TestLike } from './helpers.js';
import { SOCK_CLOEXEC, bareListener, libcSockets, wholeAddress } from './bare-sockets.js';

fileTimeout(t, 60);

/** A listening socket at `path` with a backlog of 0, bound as Node binds it; nothing accepts on it until
 * admitNext. */
const fullListener = (path: string): number => bareListener(wholeAddress(path), 0);

/** Accepts one waiting connection of `listener` and closes it. */
function dropOne(listener: number): void {
  const fd = libcSockets.accept4(listener, null, null, SOCK_CLOEXEC);
  if (fd < 0) throw new Error('nothing to accept');
  closeFd(fd);
}

/**
 * Makes room in the full `listener` (drops the filler's connection) and from then on lets a Node server accept on
 * it (the server closes it at the end of the test): the next connection, the one that waited for room.
 */
async function admitNext(t: TestLike, listener: number): Promise<net.Socket> {
  dropOne(listener);
  const server = net.createServer();
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  server.listen({ fd: listener });
  const ours = await within(20_000, accepted, 'the waiting connect to reach the listener');
  t.teardown(() => ours.destroy());
  return ours;
}

/** A connection that occupies the listener's whole queue (backlog 0: one). */
async function fill(path: string): Promise<net.Socket> {
  const filler = net.connect(path);
  await new Promise<void>((resolve, reject) => { filler.once('connect', resolve); filler.once('error', reject); });
  return filler;
}

t.test('a connect meeting a full accept queue waits for room, then sends its hello', async (t) => {
  const url = `shm://${unique('backlog')}`;
  const listener = fullListener(parseShmUrl(url).controlPath);
  const filler = await fill(parseShmUrl(url).controlPath);
  t.teardown(() => filler.destroy());

  // The queue is full now: this connect's connect(2) fails with EAGAIN before connect() returns its promise.
  const pending = connect(url, { timeout: 30_000 });
  const outcome = pending.then(() => 'connected', (error: unknown) => error);

  const ours = await admitNext(t, listener);
  const line = await within(20_000, new Promise<string>((resolve) => {
    let text = '';
    ours.on('data', (b: Buffer) => { text += b.toString(); if (text.includes('\n')) resolve(text.slice(0, text.indexOf('\n'))); });
  }), 'its hello');
  const hello = JSON.parse(line) as Record<string, unknown>;
  t.ok(hello.shmbus, 'the connect sent its hello once the queue had room');
  ours.destroy(); // no listener answers: the connect fails, but not with LIMIT
  const error = await outcome;
  t.ok(error instanceof ShmbusError && error.code !== ErrorCode.LIMIT, `then ends with the listener's going, not LIMIT (${String(error)})`);
});

t.test('a queue that stays full ends the connect with LIMIT at its timeout, leaving nothing', async (t) => {
  const url = `shm://${unique('backlog')}`;
  const listener = fullListener(parseShmUrl(url).controlPath);
  t.teardown(() => closeFd(listener));
  const filler = await fill(parseShmUrl(url).controlPath);
  t.teardown(() => filler.destroy());
  const error = await connect(url, { timeout: 200 }).then(() => undefined, (e: unknown) => e);
  t.ok(error instanceof ShmbusError && error.code === ErrorCode.LIMIT, `LIMIT (${String(error)})`);
  t.match(String((error as Error).message), /too many connections waiting/);
});

t.test('unix:// waits for room the same way', async (t) => {
  const url = `unix://@${unique('backlog-unix')}`;
  const path = parseUnixUrl(url).path;
  const listener = fullListener(path);
  const filler = await fill(path);
  t.teardown(() => filler.destroy());
  const pending = connect(url, { timeout: 30_000 });
  const outcome = pending.then((conn) => conn, (error: unknown) => error);
  // Node's connect of a Unix socket makes the connect(2) before net.connect returns (it reports EAGAIN a turn
  // later): the first try was refused before the queue gets room here.
  const ours = await admitNext(t, listener);
  ours.resume(); // read to its end-of-file, then end ours: the close below waits for that
  const conn = await outcome;
  t.ok(conn !== undefined && !(conn instanceof Error), `the connect resolved once the queue had room (${String(conn)})`);
  if (conn !== undefined && !(conn instanceof Error)) await (conn as { close(): Promise<void> }).close();
});
