/**
 * Opening a shm:// connection sends the segment's descriptor with the listener's reply (one sendmsg, read with
 * recvmsg by the connector: transports/shm/control.ts). A listener that gets the count of descriptors wrong fails
 * the connection with a typed error, and every descriptor it sent is closed; a connector of the earlier protocol
 * (no `fdWithReply` in its hello) still gets the segment when it asks for it. One process's connections are
 * accepted in the order it made them, whatever order their handshakes end in.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import { listen, connect } from '../transports/shm/index.js';
import { readLine, receivePassedFd, writeLine } from '../transports/shm/control.js';
import { Region } from '../host/region.js';
import { socketFd } from '../host/control.js';
import { sendFd } from '../host/sys/socket.js';
import { ErrorCode, ShmbusError } from '../host/errors.js';
import { CHANNEL_RING_COUNT, LAYOUT_VERSION, segmentBytes } from '../assembly/layout.js';
import { fileTimeout, unique, within, eventually } from './helpers.js';

fileTimeout(t, 60);
const WATCHDOG = 30_000;
const CAPACITY = 64 * 1024;
const SIZE = segmentBytes(CHANNEL_RING_COUNT, CAPACITY);

/** Our descriptors of memfds named `name`. */
function memfds(name: string): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try { if (fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(`/memfd:${name}`)) n++; } catch { /* closed meanwhile */ }
  }
  return n;
}

/** A hello of the current protocol, as a connector that brings no segment sends it. */
const HELLO = { shmbus: 1, version: LAYOUT_VERSION, pid: process.pid, wake: { mode: 'doorbell', params: {} }, maxMessage: 0, records: true };

/** A bare control socket to the listener of shm://`name` (a connector by hand), destroyed when `t` ends. */
async function rawConnector(t: Test, name: string): Promise<net.Socket> {
  const socket = net.connect(`\0shmbus/shm/${name}`);
  socket.on('error', () => {});
  t.teardown(() => { socket.destroy(); });
  await new Promise((r) => socket.once('connect', r));
  return socket;
}

const reply = (extra: Record<string, unknown>) => Buffer.from(JSON.stringify({
  ok: true, kind: 'memfd', size: SIZE, capacity: CAPACITY, initialCapacity: CAPACITY, wake: { mode: 'doorbell', params: {} }, maxMessage: 0, records: true, ...extra,
}) + '\n');

t.test('a listener that sends another count of descriptors than its reply says: HANDSHAKE, and all of them closed', async (t) => {
  const name = unique('open-fake');
  // A segment the connector would accept: sealed, of the announced size, ours.
  const segment = Region.createMemfd(`shmbus.${name}`, { size: SIZE });
  t.teardown(() => segment.close());
  const cases: Array<[string, (s: net.Socket) => void, string]> = [
    ['fdWithReply but no descriptor', (s) => s.write(reply({ fdWithReply: true })), ErrorCode.HANDSHAKE],
    ['fdWithReply and two descriptors (one per piece of the line)', (s) => {
      const line = reply({ fdWithReply: true });
      sendFd(socketFd(s), segment.fd, line.subarray(0, 20));
      sendFd(socketFd(s), segment.fd, line.subarray(20));
    }, ErrorCode.HANDSHAKE],
    ['a descriptor with a reply that does not say fdWithReply', (s) => sendFd(socketFd(s), segment.fd, reply({})), ErrorCode.HANDSHAKE],
    ['a descriptor with a refusal', (s) => sendFd(socketFd(s), segment.fd, Buffer.from(JSON.stringify({ ok: false, code: ErrorCode.LIMIT, message: 'no' }) + '\n')), ErrorCode.LIMIT],
    ['a descriptor with half a line, then the end', (s) => { sendFd(socketFd(s), segment.fd, reply({ fdWithReply: true }).subarray(0, 30)); s.end(); }, ErrorCode.HANDSHAKE],
    // Without a limit, pieces of a line that never ends could each bring descriptors until the deadline.
    ['a descriptor with each piece of a line that does not end', (s) => {
      for (let i = 0; i < 3; i++) sendFd(socketFd(s), segment.fd, reply({ fdWithReply: true }).subarray(i * 5, i * 5 + 5));
    }, ErrorCode.HANDSHAKE],
  ];
  let answer: (s: net.Socket) => void = () => {};
  const server = net.createServer((s) => {
    s.on('error', () => {});
    s.once('data', () => answer(s));
  });
  await new Promise<void>((r) => server.listen(`\0shmbus/shm/${name}`, r));
  t.teardown(() => server.close());
  for (const [what, send, code] of cases) {
    answer = send;
    const before = memfds(`shmbus.${name}`);
    const error = await within(WATCHDOG, connect(`shm://${name}`, { timeout: WATCHDOG }).then(async (c) => { await c.close(); return undefined; }, (e: unknown) => e), what);
    t.ok(error instanceof ShmbusError, `${what}: a typed error`);
    t.equal((error as ShmbusError | undefined)?.code, code, `${what}: ${code}`);
    t.equal(memfds(`shmbus.${name}`), before, `${what}: every descriptor received was closed`);
  }
});

t.test('a connector of the earlier protocol asks for the descriptor and gets it then', async (t) => {
  const name = unique('open-old');
  const listener = await listen(`shm://${name}?size=64KiB`);
  const errors: ShmbusError[] = [];
  listener.on('error', (e: ShmbusError) => errors.push(e));
  t.teardown(() => listener.close());
  const socket = await rawConnector(t, name);
  writeLine(socket, HELLO);
  const { message } = await readLine(socket, WATCHDOG);
  t.equal(message.ok, true, 'the listener replies');
  t.equal(message.fdWithReply, undefined, 'without the descriptor');
  const fd = await receivePassedFd(socket, WATCHDOG, () => writeLine(socket, { fd: true }));
  const region = Region.fromPeerFd(fd, 'memfd', { size: message.size as number, uid: process.geteuid!() });
  t.equal(region.size, SIZE, 'the sealed segment of the announced size comes when asked for');
  region.close();
  writeLine(socket, { attached: false, code: ErrorCode.CORRUPT, message: 'test: not attaching' });
  await eventually(() => errors.length > 0, 'the listener to report the refusal');
  t.equal(errors[0]?.code, ErrorCode.CORRUPT, 'the listener reports what the connector said');
  socket.destroy();
  await eventually(() => memfds(`shmbus.${name}`) === 0 && listener.load.pending === 0, 'nothing kept');
  t.same(listener.load, { pending: 0, connections: 0 }, 'no handshake or connection left');
  // And the current protocol on the same listener works.
  const [c, s] = await Promise.all([connect(`shm://${name}?size=64KiB`), listener.acceptNext()]);
  c.send('hello');
  t.equal(await s!.receive(), 'hello', 'a current connector opens as usual');
  await c.close();
  await s!.close();
});

// A Unix socket's accept queue keeps the order of one process's connects; so does a shm:// listener. The listener
// offers a full handshake's connection once it reads the connector's last line, which can come after the hello of
// the next connection that process makes: here the first handshake's last line is held back on purpose until the
// listener has finished the second (a full handshake, or one where the connector brings its own segment).
for (const second of ['full handshake', 'own segment'] as const) {
  t.test(`one process's connections are accepted in the order it made them (the second: ${second})`, async (t) => {
    const name = unique('open-order');
    const url = `shm://${name}?size=64KiB`;
    const listener = await listen(url);
    t.teardown(() => listener.close());
    if (second === 'own segment') {
      // A connection this process made before: the next connect knows the listener and brings its own segment.
      const [c, s] = await Promise.all([connect(url), listener.acceptNext()]);
      await c.close();
      await s!.close();
    }
    const socket = await rawConnector(t, name);
    writeLine(socket, HELLO);
    const { message } = await readLine(socket, WATCHDOG);
    t.equal(message.ok, true, 'the listener replies to the first');
    const fd = await receivePassedFd(socket, WATCHDOG, () => writeLine(socket, { fd: true }));
    fs.closeSync(fd);
    const later = await connect(url);
    t.teardown(() => later.close());
    await eventually(() => listener.load.pending === 1 && listener.load.connections === 1, 'the listener to finish the second handshake');
    writeLine(socket, { attached: true });
    const first = await listener.acceptNext();
    const next = await listener.acceptNext();
    later.send('from the second');
    socket.destroy();
    t.equal(await within(WATCHDOG, next!.receive().catch((e: unknown) => e), 'the second'), 'from the second', 'the second accepted is the second made');
    const end = await within(WATCHDOG, first!.receive().then((v) => ({ v }), (e: unknown) => ({ e })), 'the first');
    t.notOk('v' in end && end.v === 'from the second', 'the first accepted is the first made (its peer sent nothing and hung up)');
    await first!.close();
    await next!.close();
  });
}

t.test('closing the listener closes a connection that waited for an earlier one of its process', async (t) => {
  const name = unique('open-order-close');
  const url = `shm://${name}?size=64KiB`;
  const listener = await listen(url);
  const socket = await rawConnector(t, name);
  writeLine(socket, HELLO);
  await readLine(socket, WATCHDOG);
  fs.closeSync(await receivePassedFd(socket, WATCHDOG, () => writeLine(socket, { fd: true })));
  const later = await connect(url);
  await eventually(() => listener.load.pending === 1 && listener.load.connections === 1, 'the listener to finish the second handshake');
  await listener.close();
  t.equal(await within(WATCHDOG, later.receive(), 'the end'), undefined, 'the waiting connection is closed, in order');
  await eventually(() => listener.load.pending === 0 && listener.load.connections === 0, 'no handshake or connection left');
  await later.close();
});

t.test('a connector that attaches a descriptor to each piece of its hello: HANDSHAKE at once, all of them closed', async (t) => {
  const name = unique('open-fds');
  const listener = await listen(`shm://${name}?size=64KiB`);
  t.teardown(() => listener.close());
  const failed = new Promise<ShmbusError>((resolve) => listener.once('error', resolve));
  const segment = Region.createMemfd(`shmbus.${name}`, { size: SIZE });
  t.teardown(() => segment.close());
  const socket = await rawConnector(t, name);
  // A hello that never ends, a descriptor with every piece (the listener's deadline is 5 s: the error must not be it).
  const hello = Buffer.from(JSON.stringify({ shmbus: 1, version: LAYOUT_VERSION, pid: process.pid }));
  for (let i = 0; i < 3; i++) sendFd(socketFd(socket), segment.fd, hello.subarray(i * 5, i * 5 + 5));
  const error = await within(WATCHDOG, failed, 'the listener\'s error');
  t.equal(error.code, ErrorCode.HANDSHAKE, `${error.code}: ${error.message}`);
  await eventually(() => memfds(`shmbus.${name}`) === 1, 'every descriptor the listener received to be closed');
  t.pass('only our own descriptor of the segment is left');
});
