/**
 * A connector that knows a shm:// listener process (an earlier connection to it said `takesSegments`) brings its
 * own segment: it sends the memfd with its hello and returns the channel at once, as a Unix socket's connect
 * returns once the kernel queued it (transports/shm/connect.ts connectWithSegment). The listener checks that
 * segment as a connector checks one of the listener's, and a segment it cannot take fails that handshake with a
 * typed error, leaving nothing open.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { listen, connect } from '../transports/shm/index.js';
import { readLine } from '../transports/shm/control.js';
import { Region } from '../host/region.js';
import { socketFd } from '../host/control.js';
import { parseShmUrl } from '../host/url.js';
import { dupFd, sendFd } from '../host/sys/socket.js';
import { closeFd, ftruncate, memfdCreate, openFile } from '../host/sys/shm.js';
import { MFD_ALLOW_SEALING, MFD_CLOEXEC, O_CREAT, O_RDWR } from '../host/sys/constants.js';
import { ErrorCode, type ShmbusError } from '../host/errors.js';
import { CHANNEL_RING_COUNT, LAYOUT_VERSION, RING_CONSUMER_PARK_OFFSET, segmentBytes } from '../assembly/layout.js';
import { reapDeadWakeObjects } from '../host/wake/reap.js';
import { fileTimeout, needsMqueue, startFixture, unique, within, eventually, type Child } from './helpers.js';

fileTimeout(t, 60);
const WATCHDOG = 30_000;

/** Our descriptors whose /proc link starts with `prefix`. */
function descriptorsOf(prefix: string): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try { if (fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(prefix)) n++; } catch { /* closed meanwhile */ }
  }
  return n;
}

/** A listener in a child process (test/fixtures/handshake-peer.ts, echoing) that this process knows: one connection
 * to it was opened and closed, so the next ones bring their own segment. */
async function knownListener(t: Test, url: string): Promise<Child> {
  const child = startFixture(t, 'handshake-peer', ['listen', url]);
  await child.line('listening');
  // The first connection waits for the listener, which says it takes a connector's segment.
  await (await within(WATCHDOG, connect(url), 'the first connect')).close();
  return child;
}

t.test('a known listener: connect returns before the listener answers; what is sent first arrives, in order', async (t) => {
  const url = `shm://${unique('own')}`;
  const child = await knownListener(t, url);
  child.kill('SIGSTOP');
  let stopped = true;
  t.teardown(() => { if (stopped) child.kill('SIGCONT'); });
  // The listener cannot answer now: both connects resolve all the same.
  const c = await within(WATCHDOG, connect(url), 'a connect to a stopped listener');
  const big = 'x'.repeat(300_000); // beyond the 64 KiB the rings start with: the ring grows before the listener took it
  c.send({ n: 1 });
  c.send({ n: 2, big });
  c.send({ n: 3 });
  const late = await within(WATCHDOG, connect(url, { timeout: 200 }), 'a connect with a short deadline');
  const error = await within(WATCHDOG, late.receive().then(() => undefined, (e: ShmbusError) => e), 'the verdict deadline');
  t.equal(error?.code, ErrorCode.TIMEOUT, 'no verdict within the deadline: TIMEOUT on the channel');
  await late.close();
  child.kill('SIGCONT');
  stopped = false;
  const echoed = [];
  for (let i = 0; i < 3; i++) echoed.push(await within(WATCHDOG, c.receive(), `echo ${i + 1}`) as { n: number; big?: string });
  t.same(echoed.map((m) => m.n), [1, 2, 3], 'every message sent before the verdict, in order');
  t.equal(echoed[1]!.big, big, 'the large one whole');
  await c.close();
});

t.test('a ring owed to the listener before its verdict is done once the verdict comes', async (t) => {
  const url = `shm://${unique('own-ring')}`;
  const child = await knownListener(t, url);
  child.kill('SIGSTOP');
  const c = await within(WATCHDOG, connect(url), 'a connect to a stopped listener');
  child.kill('SIGCONT');
  // This thread blocks (so the verdict stays unread) until the listener took the segment and parked on its empty
  // inbound ring: a message sent now owes it a ring that cannot be done yet.
  const internals = c as unknown as { engine: { memory: WebAssembly.Memory }; tx: { ring: number } };
  const parkWord = (internals.tx.ring + RING_CONSUMER_PARK_OFFSET) / 4;
  const until = Date.now() + WATCHDOG;
  let parked = false;
  while (!parked && Date.now() < until) parked = (Atomics.load(new Int32Array(internals.engine.memory.buffer), parkWord) & 1) === 1;
  t.ok(parked, 'the listener parked before its verdict was read');
  c.send({ after: 'park' });
  t.same(await within(WATCHDOG, c.receive(), 'the echo (the held ring woke the listener)'), { after: 'park' }, 'the message was read and echoed');
  await c.close();
});

t.test('a loop of connects to a known listener lets the event loop turn', async (t) => {
  const url = `shm://${unique('own-turn')}`;
  await knownListener(t, url);
  // Such a connect awaits no reply: without a turn of its own now and then, a loop of them runs in microtasks only,
  // and this process's timers and I/O (another connect's handshake) wait until the loop ends.
  let turned = false;
  setImmediate(() => { turned = true; });
  const conns = [];
  while (!turned && conns.length < 300) conns.push(await within(WATCHDOG, connect(url), 'a connect'));
  t.ok(turned, `the event loop turned during the loop (after ${conns.length} connects)`);
  await Promise.all(conns.map((c) => c.close()));
});

t.test('a refusal of a known listener ends the channel with its typed error; the next connect waits for the verdict', async (t) => {
  const url = `shm://${unique('own-full')}`;
  const child = startFixture(t, 'handshake-peer', ['listen', url, '1']);
  await child.line('listening');
  const first = await within(WATCHDOG, connect(url), 'the first connect');
  first.send({ ping: 1 });
  t.same(await within(WATCHDOG, first.receive(), 'the echo'), { ping: 1 }, 'the first connection works');
  // The listener allows one connection: this one is refused, after connect() returned.
  const second = await within(WATCHDOG, connect(url), 'a connect that brings its own segment');
  const refused = await within(WATCHDOG, second.receive().then(() => undefined, (e: ShmbusError) => e), 'the verdict');
  t.equal(refused?.code, ErrorCode.LIMIT, 'over the cap: LIMIT, on the channel');
  t.throws(() => second.send(1), { code: ErrorCode.LIMIT }, 'and from every later call');
  await second.close();
  // A refusal makes the listener unknown again: the next connect waits for the verdict and is refused itself.
  const third = await connect(url).then(async (c) => { await c.close(); return undefined; }, (e: ShmbusError) => e);
  t.equal(third?.code, ErrorCode.LIMIT, 'over the cap: LIMIT, from connect');
  await first.close();
});

// With a named mechanism both sides park at once when idle (no spin), so every message below is a ring: the bell
// the connector builds from the verdict's wake line, and the listener's from the hello's.
for (const mode of ['doorbell', 'futex', 'sem', 'sysvsem', 'signal', 'mq'] as const) {
  t.test(`wake=${mode}: a connection that brings its own segment rings both ways`, { skip: mode === 'mq' && needsMqueue() }, async (t) => {
    const url = `shm://${unique(`own-${mode}`)}?wake=${mode}`;
    const child = await knownListener(t, url);
    // The listener is SIGKILLed when the test ends: its wake objects are then reaped.
    t.teardown(async () => { child.kill(); await child.exit; reapDeadWakeObjects(); });
    const c = await within(WATCHDOG, connect(url), 'a connect that brings its own segment');
    for (let i = 0; i < 5; i++) {
      c.send({ i });
      t.same(await within(WATCHDOG, c.receive(), `echo ${i}`), { i }, `echo ${i}`);
    }
    await c.close();
  });
}

t.test('a segment the listener cannot take: a typed error for that handshake, and nothing kept', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-own-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const name = unique('own-bad');
  const url = `shm://${name}`;
  const listener = await listen(url, { handshakeTimeout: WATCHDOG });
  t.teardown(() => listener.close());
  const errors: ShmbusError[] = [];
  listener.on('error', (e: ShmbusError) => errors.push(e));
  // The geometry a default listener gives: 4 MiB rings that start with 64 KiB.
  const capacity = 4 * 1024 * 1024;
  const size = segmentBytes(CHANNEL_RING_COUNT, capacity);
  const segment = { capacity, initialCapacity: 64 * 1024 };
  const hello = (extra: Record<string, unknown> = {}) => Buffer.from(JSON.stringify({
    shmbus: 1, version: LAYOUT_VERSION, pid: process.pid, wake: { mode: 'doorbell', params: {} }, maxMessage: 0, records: true, segment, ...extra,
  }) + '\n');
  /** Sealed memfds made for the case at hand, closed once it is sent. */
  const made: Region[] = [];
  const memfd = (bytes: number, sealed: boolean): number => {
    if (sealed) {
      const region = Region.createMemfd(`shmbus.${name}`, { size: bytes, reserve: [[0, 4096]] });
      made.push(region);
      return region.fd;
    }
    const fd = memfdCreate(`shmbus.${name}`, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    ftruncate(fd, bytes);
    return fd;
  };
  const cases: Array<[string, () => { fd?: number | number[]; line: Buffer }, string]> = [
    ['a hello that announces a segment and sends no descriptor', () => ({ line: hello() }), ErrorCode.HANDSHAKE],
    // More than the listener's control buffer holds (8): the kernel drops the rest, the listener closes what it got.
    ['a hello with nine descriptors', () => {
      const fd = memfd(size, true);
      return { fd: [fd, ...Array.from({ length: 8 }, () => dupFd(fd))], line: hello() };
    }, ErrorCode.HANDSHAKE],
    ['a descriptor with a hello that announces no segment', () => ({ fd: memfd(size, true), line: hello({ segment: undefined }) }), ErrorCode.HANDSHAKE],
    ['larger rings than this endpoint allows', () => ({ fd: memfd(4096, true), line: hello({ segment: { capacity: capacity * 2 } }) }), ErrorCode.HANDSHAKE],
    ['a capacity that is no ring size', () => ({ fd: memfd(size, true), line: hello({ segment: { capacity: 3 } }) }), ErrorCode.HANDSHAKE],
    // String() throws on this (its toString is no function): the error's text must not.
    ['a capacity that is an object whose toString is a number', () => ({ fd: memfd(size, true), line: hello({ segment: { capacity: [{ toString: 0 }] } }) }), ErrorCode.HANDSHAKE],
    ['an initial capacity that is one too', () => ({ fd: memfd(size, true), line: hello({ segment: { capacity, initialCapacity: { toString: 0, valueOf: 0 } } }) }), ErrorCode.HANDSHAKE],
    ['a memfd not sealed against resizing (it could SIGBUS the listener)', () => ({ fd: memfd(size, false), line: hello() }), ErrorCode.PERMISSION_DENIED],
    ['a sealed memfd of another size', () => ({ fd: memfd(size - 4096, true), line: hello() }), ErrorCode.CORRUPT],
    ['a sealed memfd of the right size that is not formatted', () => ({ fd: memfd(size, true), line: hello() }), ErrorCode.CORRUPT],
    ['a regular file', () => {
      const fd = openFile(path.join(dir, 'plain'), O_CREAT | O_RDWR);
      ftruncate(fd, size);
      return { fd, line: hello() };
    }, ErrorCode.PERMISSION_DENIED],
  ];
  for (const [what, make, code] of cases) {
    const socket = net.connect(parseShmUrl(url).controlPath);
    socket.on('error', () => {});
    await within(WATCHDOG, new Promise((r) => socket.once('connect', r)), `${what}: connect`);
    const { fd, line } = make();
    if (fd === undefined) socket.write(line);
    else {
      sendFd(socketFd(socket), fd, line);
      const sent = typeof fd === 'number' ? [fd] : fd;
      if (made.length > 0) {
        for (const region of made.splice(0)) region.close();
        for (const dup of sent.slice(1)) closeFd(dup);
      } else for (const one of sent) closeFd(one);
    }
    const { message } = await within(WATCHDOG, readLine(socket, WATCHDOG), `${what}: the listener's answer`);
    t.match(message, { ok: false, code }, `${what}: ${code}`);
    socket.destroy();
    await eventually(() => listener.load.pending === 0, `${what}: no handshake left pending`);
    t.equal(descriptorsOf(`/memfd:shmbus.${name}`) + descriptorsOf(path.join(dir, 'plain')), 0, `${what}: the listener closed what it got`);
  }
  t.same(errors.map((e) => e.code), cases.map(([, , code]) => code), 'the listener reported each');
  t.same(listener.load, { pending: 0, connections: 0 });
});

t.test('a file:// listener makes the segments of its connections itself', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-own-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const url = `file://${dir}/${unique('own-file')}?size=64KiB`;
  const listener = await listen(url, { handshakeTimeout: WATCHDOG });
  t.teardown(() => listener.close());
  listener.on('error', () => {});
  const capacity = 64 * 1024;
  const region = Region.createMemfd(`shmbus.${unique('own-file')}`, { size: segmentBytes(CHANNEL_RING_COUNT, capacity) });
  t.teardown(() => region.close());
  const socket = net.connect(parseShmUrl(url).controlPath);
  socket.on('error', () => {});
  await within(WATCHDOG, new Promise((r) => socket.once('connect', r)), 'connect');
  sendFd(socketFd(socket), region.fd, Buffer.from(JSON.stringify({
    shmbus: 1, version: LAYOUT_VERSION, pid: process.pid, wake: { mode: 'doorbell', params: {} }, maxMessage: 0, records: true, segment: { capacity },
  }) + '\n'));
  const { message } = await within(WATCHDOG, readLine(socket, WATCHDOG), 'the answer');
  t.match(message, { ok: false, code: ErrorCode.HANDSHAKE }, 'refused: HANDSHAKE');
  socket.destroy();
  // And a real connector never offers one there: every connect waits for the listener's own segment.
  const [c, s] = await Promise.all([connect(url), listener.acceptNext()]);
  c.send('hello');
  t.equal(await within(WATCHDOG, s!.receive(), 'a message'), 'hello');
  await c.close();
  await s!.close();
});
