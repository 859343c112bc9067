// Two-process tests of the shm channel, for every segment kind, and its errors.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { readdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { listen, connect, ErrorCode, type Channel } from '../index.js';
import { checkPattern, fillPattern, patternLength } from './fixtures/pattern.js';
import { asUnprivileged, eventually, fileTimeout, scaled, SCALE, startFixture, unique, within, type TestLike } from './helpers.js';

// Records per segment kind in the two-process test: 1,000,000 at stress scale.
const RECORDS = scaled(1_000_000);
// Measured on a busy 2-core machine (load 10-20): ~55 s at scale 1, of which ~15 s scale. Timeout: 4x that.
fileTimeout(t, 160, 60);
let serial = 0;

// Only what this test process created counts (other processes on the machine may use shmbus meanwhile):
// segment names carry the creator's pid, and `ipcs -m -p` lists each segment's creator.
function shmFiles(): string[] {
  return readdirSync('/dev/shm').filter((f) => f.startsWith('shmbus') && f.includes(`.${process.pid}.`));
}
function sysvSegments(): string[] {
  return execFileSync('ipcs', ['-m', '-p'], { encoding: 'utf8' }).split('\n')
    .filter((l) => /^\s*\d+/.test(l) && l.trim().split(/\s+/)[2] === String(process.pid));
}

/** test/fixtures/peer.ts in `mode` (see there), killed at the end of test `t` at the latest. */
function startPeer(t: TestLike, url: string, mode: string, count = 0, pauseEvery = 0, prefix: string[] = []) {
  const child = startFixture(t, 'peer', [url, mode, String(count), String(pauseEvery)], { prefix });
  return { child, exit: child.exit.then((e) => e.code), stderr: () => child.stderr() };
}

let before = { shm: shmFiles(), sysv: sysvSegments() };
t.beforeEach(() => { before = { shm: shmFiles(), sysv: sysvSegments() }; });
// Checked on the root test after each subtest (a subtest is already finished when afterEach runs).
t.afterEach((sub) => {
  t.same(shmFiles(), before.shm, `no /dev/shm segment left behind by: ${sub.name}`);
  t.same(sysvSegments(), before.sysv, `no System V segment left behind by: ${sub.name}`);
});

const fileDir = mkdtempSync(join(tmpdir(), 'shmbus-test-'));
t.teardown(() => rmSync(fileDir, { recursive: true, force: true }));

const kinds: [string, () => string][] = [
  ['posix', () => `shm://${unique('t')}`],
  // 0x5e<pid low 16 bits><serial>: apart from region.test.ts's 0x5b… keys, which may be in use at the same time.
  ['sysv', () => `sysv://0x${(((0x5e << 24) | ((process.pid & 0xffff) << 8) | (++serial & 0xff)) >>> 0).toString(16)}`],
  ['file', () => `file://${join(fileDir, unique('ring'))}`],
];

for (const [kind, makeUrl] of kinds) {
  t.test(`${kind}: ${RECORDS} mixed-size records arrive in order, none lost or duplicated, while the peer sends back`, async (t) => {
    const url = makeUrl();
    const listener = await listen(url);
    t.teardown(() => listener.close());
    const peer = startPeer(t, url, 'check', RECORDS);
    const conn = (await within(60_000, listener.acceptNext(), 'accept'))!;
    const scratch = new Uint8Array(70000);
    let falseReturns = 0;
    const sending = (async () => {
      for (let seq = 0; seq < RECORDS; seq++) {
        const len = patternLength(seq);
        fillPattern(scratch, seq, len);
        if (!conn.sendBytes(scratch.subarray(0, len))) { falseReturns++; await conn.drained(); }
      }
    })();
    let back = 0, backBad = 0;
    let verdict: { received: number; bad: number } | undefined;
    await within(120_000 * Math.max(1, SCALE), (async () => {
      for await (const msg of conn) {
        if (msg instanceof Uint8Array) { if (!checkPattern(msg, back)) backBad++; back++; }
        else verdict = msg as typeof verdict;
      }
    })(), 'receive');
    await sending;
    t.same(verdict, { received: RECORDS, bad: 0 }, 'peer got every record intact and in order');
    t.equal(back, Math.floor(RECORDS / 10), 'every record the peer sent back arrived');
    t.equal(backBad, 0);
    t.equal(await peer.exit, 0, peer.stderr());
    await conn.close();
    await listener.close();
    t.comment(`send returned false ${falseReturns} times`);
  });
}

t.test('back-pressure with a slow reader: the queue stays bounded and every record arrives', async (t) => {
  const url = `shm://${unique('slow')}?size=64KiB&maxQueued=64`;
  const listener = await listen(url);
  const total = 999; // records 0…998 are all under 1 KiB (record 999 would exceed a 64 KiB ring's maximum)
  const peer = startPeer(t, url, 'slow', total, 100);
  const conn = (await within(60_000, listener.acceptNext(), 'accept'))!;
  const scratch = new Uint8Array(70000);
  let falseReturns = 0, maxQueued = 0;
  for (let seq = 0; seq < total; seq++) {
    fillPattern(scratch, seq, patternLength(seq));
    if (!conn.sendBytes(scratch.subarray(0, patternLength(seq)))) {
      falseReturns++;
      maxQueued = Math.max(maxQueued, conn.queued);
      await conn.drained();
    }
  }
  let verdict: unknown;
  for await (const msg of conn) if (!(msg instanceof Uint8Array)) verdict = msg;
  t.same(verdict, { received: total, bad: 0 }, 'the slow reader got every record');
  t.ok(falseReturns > 0, 'send returned false at least once');
  t.ok(maxQueued <= 64, `queue stayed within maxQueued (max seen ${maxQueued})`);
  t.equal(await peer.exit, 0, peer.stderr());
  await conn.close();
  await listener.close();
});

t.test('trySend, claim, message sizes 0 and max, max+1 rejected, maxQueued enforced', async (t) => {
  const url = `shm://${unique('api')}?size=4KiB&maxQueued=3`;
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]) as [Channel, Channel];
  t.equal(a.maxMessageSize, 2048 - 8);
  t.ok(a.sendBytes(new Uint8Array(0)), 'zero-length record');
  t.ok(a.sendBytes(new Uint8Array(a.maxMessageSize).fill(9)), 'maximum record');
  t.throws(() => a.sendBytes(new Uint8Array(a.maxMessageSize + 1)), { code: ErrorCode.MESSAGE_TOO_LARGE });
  t.throws(() => a.send('x'.repeat(5000)), { code: ErrorCode.MESSAGE_TOO_LARGE });
  t.notOk(a.trySendBytes(new Uint8Array(a.maxMessageSize)), 'trySend refuses when the ring is full');
  t.equal(a.queued, 0, 'a refused trySend is not taken');
  t.equal(a.sendBytes(new Uint8Array(a.maxMessageSize)), false, 'send takes it and says wait');
  a.sendBytes(new Uint8Array(1)); a.sendBytes(new Uint8Array(2));
  t.equal(a.queued, 3);
  t.throws(() => a.sendBytes(new Uint8Array(3)), { code: ErrorCode.QUEUE_FULL }, 'past maxQueued send throws');
  t.equal(a.claim(10), null, 'claim waits behind queued messages');
  const got: number[] = [];
  const reading = (async () => { for await (const m of b) { got.push((m as Uint8Array).length); if (got.length === 6) break; } })();
  await a.drained();
  t.equal(a.queued, 0);
  const claim = a.claim(100)!;
  t.ok(claim, 'claim after drain');
  t.throws(() => a.claim(1), { code: ErrorCode.BAD_STATE }, 'one claim at a time');
  claim.bytes.fill(5);
  claim.commit(42);
  t.throws(() => claim.commit(), { code: ErrorCode.BAD_STATE });
  a.claim(7)!.abort();
  await within(5000, reading, 'reading');
  t.same(got, [0, a.maxMessageSize, a.maxMessageSize, 1, 2, 42]);
  await a.close();
  t.throws(() => a.send(1), { code: ErrorCode.CLOSED }, 'send after close');
  // b sees the orderly close: its iterator ends without error.
  const rest: unknown[] = [];
  for await (const m of b) rest.push(m);
  t.same(rest, []);
  await b.close();
  await listener.close();
});

t.test('a committed or aborted claim cannot commit or abort a later one; close cuts an open claim off', async (t) => {
  const url = `shm://${unique('claim-stale')}`;
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]) as [Channel, Channel];
  const first = a.claim(2)!;
  first.memory.set([1, 1], first.offset);
  first.commit();
  const second = a.claim(2)!;
  first.abort();
  t.throws(() => first.commit(), { code: ErrorCode.BAD_STATE }, 'committed once');
  second.memory.set([2, 2], second.offset);
  second.commit();
  const aborted = a.claim(3)!;
  aborted.abort();
  const third = a.claim(3)!;
  aborted.abort();
  t.throws(() => aborted.commit(), { code: ErrorCode.BAD_STATE }, 'aborted');
  third.bytes.set([3, 3, 3]);
  third.commit();
  const batch = a.claimBatch(1, 2)!;
  first.abort();
  batch.memory[batch.offset(0)] = 4;
  batch.commit(1);
  t.throws(() => batch.commit(1), { code: ErrorCode.BAD_STATE }, 'a batch commits once');
  t.same([...(await b.receive()) as Uint8Array], [1, 1]);
  t.same([...(await b.receive()) as Uint8Array], [2, 2]);
  t.same([...(await b.receive()) as Uint8Array], [3, 3, 3]);
  t.same([...(await b.receive()) as Uint8Array], [4]);
  for (const size of [-1, 1.5, NaN]) t.throws(() => a.claim(size), { code: ErrorCode.BAD_ARGUMENT }, `claim(${size})`);
  t.throws(() => a.claim(2 ** 32), { code: ErrorCode.MESSAGE_TOO_LARGE }, 'claim(2^32)');
  const open = a.claim(1)!;
  t.throws(() => a.claim(2 ** 32), { code: ErrorCode.MESSAGE_TOO_LARGE }, 'the size is checked before the open claim');
  await a.close();
  t.throws(() => open.commit(), { code: ErrorCode.CLOSED }, 'cut off by close');
  open.abort();
  t.throws(() => a.claim(1), { code: ErrorCode.CLOSED }, 'no claim after close');
  t.equal(await b.receive(), undefined, 'the peer got nothing more: its channel ended');
  await b.close();
  await listener.close();
});

t.test('a claim is written through its view or at its offset in memory, and arrives as written', async (t) => {
  const url = `shm://${unique('claim-at')}`;
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]) as [Channel, Channel];
  const viewed = a.claim(5)!;
  t.equal(viewed.size, 5);
  const view = viewed.bytes;
  t.equal(viewed.bytes, view, 'one view per claim');
  t.equal(view.buffer, viewed.memory.buffer, 'the view is of the memory');
  t.equal(view.byteOffset, viewed.offset, 'at the offset');
  t.equal(view.length, 5);
  view.set([1, 2, 3, 4, 5]);
  t.throws(() => viewed.commit(6), { code: ErrorCode.BAD_ARGUMENT }, 'no commit past the claim');
  viewed.commit(4);
  const placed = a.claim(3)!;
  placed.memory.set([7, 8, 9], placed.offset);
  placed.commit();
  t.same([...(await b.receive()) as Uint8Array], [1, 2, 3, 4]);
  t.same([...(await b.receive()) as Uint8Array], [7, 8, 9]);
  await a.close();
  await b.close();
  await listener.close();
});

t.test('a peer in this very thread is not spun for (wake=adaptive); one in another thread of the process is', async (t) => {
  const budget = (c: Channel) => (c as unknown as { spinNs: number }).spinNs;
  const url = `shm://${unique('same-thread')}`;
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]) as [Channel, Channel];
  t.equal(budget(a), 0, 'the connector does not spin for a listener of this thread');
  t.equal(budget(b!), 0, 'nor the listener for the connector');
  // Request/reply and a ping-pong still work (each wait parks, and the doorbell wakes it).
  b.handle((v) => v);
  for (let i = 0; i < 50; i++) t.equal(await a.request(i), i);
  await a.close();
  await b.close();
  // Explicit spins stay: the URL asked for them.
  const spinUrl = `shm://${unique('same-thread-spin')}?spin=50`;
  const spinListener = await listen(spinUrl);
  const [c, d] = await Promise.all([connect(spinUrl), spinListener.acceptNext()]) as [Channel, Channel];
  t.equal(budget(c), 50_000, 'spin=50 is 50 µs, also within one thread');
  await Promise.all([c.close(), d!.close(), spinListener.close()]);
  // A connector in a worker thread of this process: its listener here spins for it.
  const indexUrl = pathToFileURL(fileURLToPath(new URL('../dist/index.js', import.meta.url))).href;
  const worker = new Worker(`
    const { workerData, parentPort } = require('node:worker_threads');
    import(${JSON.stringify(indexUrl)}).then(async ({ connect }) => {
      const conn = await connect(workerData.url);
      parentPort.postMessage(conn.spinNs);
      await conn.receive();
      await conn.close();
    });`, { eval: true, workerData: { url } });
  const fromWorker = new Promise((resolve, reject) => { worker.once('message', resolve); worker.once('error', reject); });
  const e = (await within(60_000, listener.acceptNext(), 'the worker to connect'))!;
  t.ok((await within(60_000, fromWorker, 'the worker\'s budget')) as number > 0, 'the worker spins for a listener of another thread');
  t.ok(budget(e as Channel) > 0, 'the listener spins for a connector of another thread');
  e.send('done');
  await within(60_000, new Promise((resolve) => worker.once('exit', resolve)), 'the worker to end');
  await e.close();
  await listener.close();
});

t.test('close delivers everything already sent, and the peer sees the end', async (t) => {
  const url = `shm://${unique('close')}?size=4KiB`;
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]) as [Channel, Channel];
  for (let i = 0; i < 500; i++) a.send({ i });
  t.ok(a.queued > 0, 'some messages are queued locally');
  const closing = a.close();
  const got: number[] = [];
  for await (const m of b) got.push((m as { i: number }).i);
  await closing;
  t.same(got, Array.from({ length: 500 }, (_, i) => i));
  await b.close();
  await listener.close();
});

t.test('peer killed with SIGKILL: the reader gets PEER_DEAD, not a hang', async (t) => {
  const url = `shm://${unique('kill')}`;
  const listener = await listen(url);
  const peer = startPeer(t, url, 'hang');
  const conn = (await within(60_000, listener.acceptNext(), 'accept'))!;
  const first = await within(60_000, conn.receive(), 'ready');
  t.same(first, { ready: true });
  const pending = conn.receive();
  peer.child.kill('SIGKILL');
  await t.rejects(within(30_000, pending, 'dead peer'), { code: ErrorCode.PEER_DEAD });
  t.throws(() => conn.send(1), { code: ErrorCode.PEER_DEAD });
  await conn.close();
  await peer.exit;
  await listener.close();
});

t.test('bad input gives typed errors with stable codes', async (t) => {
  await t.rejects(listen('shm://'), { code: ErrorCode.BAD_URL });
  await t.rejects(listen('not a url'), { code: ErrorCode.BAD_URL });
  await t.rejects(listen('gopher://x'), { code: ErrorCode.UNKNOWN_SCHEME });
  await t.rejects(listen('shm://x?size=3000'), { code: ErrorCode.BAD_URL }, 'size not a power of two');
  await t.rejects(listen('shm://x?size=lots'), { code: ErrorCode.BAD_URL });
  await t.rejects(listen('shm://x?colour=blue'), { code: ErrorCode.BAD_URL }, 'unsupported option');
  await t.rejects(listen('shm://x?maxMessage=lots'), { code: ErrorCode.BAD_URL }, 'maxMessage not a size');
  await t.rejects(listen('shm://x?maxMessage=2GiB'), { code: ErrorCode.BAD_URL }, 'maxMessage past 1 GiB');
  await t.rejects(listen('shm://x?wake=pigeon'), { code: ErrorCode.BAD_URL }, 'unknown wake mode');
  await t.rejects(listen('sysv://banana'), { code: ErrorCode.BAD_URL });
  await t.rejects(listen('file://relative/path'), { code: ErrorCode.BAD_URL });
  await t.rejects(connect(`shm://${unique('nobody')}`), { code: ErrorCode.NOT_FOUND }, 'nothing listens');
  const url = `shm://${unique('twice')}`;
  const l = await listen(url);
  await t.rejects(listen(url), { code: ErrorCode.EXISTS }, 'endpoint already in use');
  await l.close();
});

const nobody = asUnprivileged();
t.test('permission denied: a connector of another user cannot attach a 0600 segment', { skip: 'skip' in nobody ? nobody.skip : false }, async (t) => {
  const prefix = 'prefix' in nobody ? nobody.prefix : [];
  for (const url of [`shm://${unique('perm')}`, `sysv://0x${(0x5c000000 + (process.pid & 0xffff)).toString(16)}`]) {
    const listener = await listen(url);
    const errors: string[] = [];
    listener.on('error', (e: { code: string }) => errors.push(e.code));
    const peer = startPeer(t, url, 'hang', 0, 0, prefix);
    t.not(await within(60_000, peer.exit, 'peer exit'), 0, 'the peer failed');
    t.match(peer.stderr(), /ERR_SHMBUS_PERMISSION_DENIED/, `${url}: the peer got PERMISSION_DENIED`);
    await eventually(() => errors.length > 0, 'the listener to report the refused connector');
    t.same(errors, [ErrorCode.PERMISSION_DENIED], 'the listener heard why');
    await listener.close();
  }
});

t.test('version mismatch in the handshake is a typed error on both sides', async (t) => {
  const url = `shm://${unique('ver')}`;
  const listener = await listen(url);
  const heard: string[] = [];
  listener.on('error', (e: { code: string }) => heard.push(e.code));
  // A connector from the future: layout major version 2.
  const reply = await new Promise<string>((resolve, reject) => {
    const s = net.connect({ path: `\0shmbus/shm/${url.slice('shm://'.length)}` });
    let text = '';
    s.on('data', (d) => { text += d; });
    s.on('close', () => resolve(text));
    s.on('error', reject);
    s.write(JSON.stringify({ shmbus: 1, version: 2 << 16, pid: process.pid }) + '\n');
  });
  t.match(JSON.parse(reply), { ok: false, code: ErrorCode.VERSION_MISMATCH });
  t.same(heard, [ErrorCode.VERSION_MISMATCH]);
  await listener.close();

  // A listener from the future answering our connect.
  const fakeUrl = `shm://${unique('fake')}`;
  const server = net.createServer((s) => {
    s.once('data', () => s.end(JSON.stringify({ ok: false, code: ErrorCode.VERSION_MISMATCH, message: 'layout 2.0' }) + '\n'));
  });
  await new Promise<void>((r) => server.listen({ path: `\0shmbus/shm/${fakeUrl.slice('shm://'.length)}` }, r));
  await t.rejects(connect(fakeUrl), { code: ErrorCode.VERSION_MISMATCH });
  await new Promise((r) => server.close(r));
});

t.test('a channel that never runs dry does not starve timers', async (t) => {
  const url = `shm://${unique('busy')}?size=1MiB`;
  const listener = await listen(url);
  const peer = startPeer(t, url, 'flood', 20_000_000);
  const conn = (await within(60_000, listener.acceptNext(), 'accept'))!;
  let timerFired = false;
  let received = 0;
  // The peer says when the ring is full: from then on the reader never finds it empty.
  await peer.child.line('full');
  setTimeout(() => { timerFired = true; }, 5);
  for await (const _ of conn) {
    received++;
    if (timerFired) break;
  }
  t.ok(timerFired, `a 5 ms timer fired while ${received} messages streamed in`);
  t.ok(received < 20_000_000, 'before the stream ended');
  peer.child.kill('SIGKILL');
  await peer.exit;
  await conn.close();
  await listener.close();
});
