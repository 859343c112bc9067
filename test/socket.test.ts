/**
 * host/sys/socket.ts's connect and byte calls (the shm connector's control socket, transports/shm/connect.ts):
 * an abstract name is reached in both forms it can be bound with, a form whose peer fails the check is passed over
 * for the other, and the non-blocking send / peek / receive report what is there.
 */
import t from 'tap';
import net from 'node:net';
import { connectUnix, peekBytes, receiveFd, sendBytes, socketPair } from '../host/sys/socket.js';
import { Errno, SystemError } from '../host/errors.js';
import { closeFd } from '../host/sys/shm.js';
import { fileTimeout, unique, within } from './helpers.js';
import { AF_UNIX, SOCK_CLOEXEC, SOCK_NONBLOCK, bareListener, libcSockets } from './bare-sockets.js';

fileTimeout(t, 60);

const c = libcSockets;
const EPIPE = 32;

/** The errno of the SystemError `call` throws (undefined when it throws nothing, or something else). */
function errnoOf(call: () => unknown): number | undefined {
  try {
    call();
  } catch (error) {
    return error instanceof SystemError ? error.errno : undefined;
  }
  return undefined;
}

/** A non-blocking listener on the abstract `name` bound by the name's bytes alone (as a libuv that takes the
 * name's length binds it; Node 20's binds the whole sun_path). */
function bindBare(name: string): number {
  const bytes = Buffer.from(`\0${name}`, 'utf8');
  const address = Buffer.alloc(2 + bytes.length);
  address.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(address, 2);
  return bareListener(address, 8);
}

/** A connection waiting on the bare listener `fd`, accepted and closed: whether there was one. */
function acceptOne(fd: number): boolean {
  const conn = c.accept4(fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (conn < 0) return false;
  closeFd(conn);
  return true;
}

/** A Node server on the abstract `name` (the whole sun_path on this Node) and the sockets it accepted. */
async function nodeServer(name: string): Promise<{ server: net.Server; accepted: net.Socket[]; ended: Promise<void> }> {
  const accepted: net.Socket[] = [];
  let ended!: () => void;
  const endedP = new Promise<void>((resolve) => { ended = resolve; });
  const server = net.createServer((s) => { accepted.push(s); s.on('error', () => {}); s.on('end', ended); s.resume(); });
  await new Promise<void>((resolve) => server.listen({ path: `\0${name}` }, resolve));
  return { server, accepted, ended: endedP };
}

t.test('an abstract name bound by its bytes alone is reached as well as one bound by the whole sun_path', async (t) => {
  const bareName = unique('sock-bare');
  const bare = bindBare(bareName);
  t.teardown(() => closeFd(bare));
  const fd = connectUnix(`\0${bareName}`);
  closeFd(fd);
  t.ok(acceptOne(bare), 'the bare form took the connection');

  const nodeName = unique('sock-node');
  const { server, accepted } = await nodeServer(nodeName);
  t.teardown(() => { for (const s of accepted) s.destroy(); server.close(); });
  const viaNode = connectUnix(`\0${nodeName}`);
  await within(10_000, new Promise<void>((resolve) => (accepted.length ? resolve() : server.once('connection', () => resolve()))), 'the Node server to accept');
  closeFd(viaNode);
  t.equal(accepted.length, 1, 'the whole-sun_path form took the connection');
});

t.test('a form whose peer fails the check is passed over for the other, and is closed', async (t) => {
  const name = unique('sock-both');
  const { server, accepted, ended } = await nodeServer(name);
  const bare = bindBare(name);
  t.teardown(() => { closeFd(bare); for (const s of accepted) s.destroy(); server.close(); });
  let checks = 0;
  // The first form tried (the whole sun_path: the Node server) is refused, as a squatter of another uid would be.
  const fd = connectUnix(`\0${name}`, () => { if (checks++ === 0) throw new Error('not the expected uid'); });
  t.equal(checks, 2, 'both forms were checked');
  t.ok(acceptOne(bare), 'the connection returned is the bare form\'s');
  closeFd(fd);
  await within(10_000, ended, 'the refused connection to the Node server to be closed');
  t.pass('the refused connection was closed');

  const refusal = new Error('nobody passes');
  t.throws(() => connectUnix(`\0${name}`, () => { throw refusal; }), refusal, 'when no form passes, the check\'s error');
  t.ok(acceptOne(bare), 'the bare form was tried too');
});

t.test('nothing listening is ECONNREFUSED; a name too long is ENAMETOOLONG', async (t) => {
  t.equal(errnoOf(() => connectUnix(`\0${unique('sock-none')}`)), Errno.ECONNREFUSED, 'ECONNREFUSED');
  t.equal(errnoOf(() => connectUnix(`\0${'x'.repeat(200)}`)), Errno.ENAMETOOLONG, 'ENAMETOOLONG');
});

t.test('send, peek and receive without blocking', async (t) => {
  const [a, b] = socketPair();
  t.teardown(() => { closeFd(a); try { closeFd(b); } catch { /* closed below */ } });
  t.equal(peekBytes(b, 16), undefined, 'nothing there: undefined');
  t.equal(receiveFd(b, 16), undefined, 'nothing there: undefined');
  sendBytes(a, Buffer.from('hello\n'));
  t.equal(peekBytes(b, 16)?.toString(), 'hello\n', 'peeked');
  t.equal(peekBytes(b, 16)?.toString(), 'hello\n', 'still there after a peek');
  t.equal(receiveFd(b, 3)?.bytes.toString(), 'hel', 'taken, at most as asked');
  t.equal(receiveFd(b, 16)?.bytes.toString(), 'lo\n', 'the rest');
  closeFd(b);
  t.equal(errnoOf(() => sendBytes(a, Buffer.from('x'))), EPIPE, 'EPIPE once the peer closed, and no SIGPIPE');
  const [c1, c2] = socketPair();
  closeFd(c1);
  t.equal(receiveFd(c2, 16)?.bytes.length, 0, 'end of file: an empty buffer');
  closeFd(c2);
});
