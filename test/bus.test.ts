// Pub/sub over the Bus: several subscriber processes, lossy lapping, late joiners, dead subscribers, bad input.
import t from 'tap';
import { readdirSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bus } from '../bus/index.js';
import { ErrorCode } from '../host/errors.js';
import { fileTimeout, startFixture, unique, within, type Child, type TestLike } from './helpers.js';

// Measured on a busy 2-core machine (load 10-20): ~17 s. Timeout: 4x that.
fileTimeout(t, 70);
const busUrl = () => `shm://${unique('bustest')}`;
// Only this process's buses count (their names carry our pid): other processes may use shmbus meanwhile.
const shmFiles = () => readdirSync('/dev/shm').filter((f) => f.startsWith(`shmbus.bus.bustest-${process.pid}-`));
let before = shmFiles();
t.beforeEach(() => { before = shmFiles(); });
t.afterEach((sub) => { t.same(shmFiles(), before, `nothing left in /dev/shm by: ${sub.name}`); });

/** A bus-peer process: `ready()` once it joined, `result()` its JSON verdict, `exit` its exit code. */
function peer(t: TestLike, url: string, topic: string, mode: string, count = 0): { child: Child; ready: () => Promise<string>; result: () => Promise<unknown>; exit: Promise<number | null> } {
  const child = startFixture(t, 'bus-peer', [url, topic, mode, String(count)]);
  return {
    child,
    ready: () => child.line(/^ready$/),
    result: () => child.line(/^\{/, 120_000).then((l) => JSON.parse(l) as unknown),
    exit: child.exit.then((e) => e.code),
  };
}

t.test('every subscriber process of a lossless topic gets every message in order', async (t) => {
  const url = busUrl();
  const bus = await Bus.open(url);
  const pub = bus.publisher('ticks', { capacity: '64KiB', policy: 'lossless' });
  const N = 100_000;
  const subs = [peer(t, url, 'ticks', 'sub', N), peer(t, url, 'ticks', 'sub', N), peer(t, url, 'ticks', 'sub', N)];
  await Promise.all(subs.map((s) => s.ready()));
  let waits = 0;
  for (let n = 0; n < N; n++) if (!pub.publish({ n })) { waits++; await pub.drained(); }
  for (const s of subs) t.same(await s.result(), { received: N, bad: 0 });
  t.ok(waits > 0, 'the 64 KiB topic pushed back on the publisher');
  for (const s of subs) t.equal(await s.exit, 0);
  await bus.close();
});

t.test('lossy: a subscriber that does not keep up is lapped; received + dropped = published, exactly', async (t) => {
  const bus = await Bus.open(busUrl());
  const pub = bus.publisher('fast', { capacity: '4KiB', policy: 'lossy' });
  const sub = bus.subscribe('fast');
  const N = 5000;
  let refused = 0;
  for (let n = 0; n < N; n++) if (!pub.publish({ n })) refused++;
  t.equal(refused, 0, 'a lossy publisher never waits');
  await pub.close();
  const got: number[] = [];
  for await (const m of sub) got.push((m as { n: number }).n);
  t.ok(got.length < N, `lapped: got ${got.length}`);
  t.equal(got.length + sub.dropped, N, 'every message is received or counted as dropped');
  t.same(got, got.slice().sort((a, b) => a - b), 'in order');
  t.equal(got.at(-1), N - 1, 'the newest arrived');
  await bus.close();
});

t.test('a late joiner from earliest gets exactly the last K; from latest gets only new ones', async (t) => {
  const bus = await Bus.open(busUrl());
  const pub = bus.publisher('hist', { capacity: '64KiB', history: 10 });
  for (let n = 0; n < 1000; n++) pub.publish({ n });
  const late = bus.subscribe('hist', { from: 'earliest' });
  const now = bus.subscribe('hist', { from: 'latest' });
  pub.publish({ n: 1000 });
  await pub.close();
  const got: number[] = [];
  for await (const m of late) got.push((m as { n: number }).n);
  t.same(got, [990, 991, 992, 993, 994, 995, 996, 997, 998, 999, 1000]);
  const fresh: number[] = [];
  for await (const m of now) fresh.push((m as { n: number }).n);
  t.same(fresh, [1000]);
  await bus.close();
});

t.test('poll hands each record over with its sequence number in the topic', async (t) => {
  const bus = await Bus.open(busUrl());
  const pub = bus.publisher('seqs', { capacity: '64KiB', history: 4 });
  for (let n = 0; n < 10; n++) pub.publishBytes(Uint8Array.of(n));
  const late = bus.subscribe('seqs', { from: 'earliest' });
  const seen: Array<[number, number]> = [];
  const take = (memory: Uint8Array, offset: number, _length: number, _type: number, seq: number) => { seen.push([memory[offset]!, seq]); };
  while (late.poll(take) > 0) { /* the history, then nothing */ }
  t.same(seen, [[6, 6], [7, 7], [8, 8], [9, 9]], 'the history keeps its numbers: what came before it is a gap');
  seen.length = 0;
  for (let n = 10; n < 13; n++) pub.publishBytes(Uint8Array.of(n));
  while (late.poll(take) > 0) { /* drain */ }
  t.same(seen, [[10, 10], [11, 11], [12, 12]]);
  await late.close();
  await pub.close();
  await bus.close();
});

t.test('subscribe before the publisher starts', async (t) => {
  const bus = await Bus.open(busUrl());
  const sub = bus.subscribe('later');
  const first = sub.receive();
  await new Promise((r) => setImmediate(r)); // the receive is parked before the topic has a publisher
  const pub = bus.publisher('later');
  // The subscriber joins on its next poll: keep publishing until it sees one.
  let n = 0;
  const timer = setInterval(() => pub.publish({ n: n++ }), 5);
  const msg = (await first) as { n: number };
  clearInterval(timer);
  t.type(msg.n, 'number');
  t.match(bus.topics(), [{ name: 'later', publisher: { pid: process.pid, alive: true }, subscribers: [{ pid: process.pid, alive: true }] }]);
  await bus.close();
});

t.test('a subscriber that finds the topic created but not yet sized waits for it (no error)', async (t) => {
  const url = busUrl();
  const bus = await Bus.open(url);
  // What a subscriber sees between a publisher's shm_open(O_CREAT) and its ftruncate: an empty file.
  const file = `/dev/shm/shmbus.bus.${url.slice('shm://'.length)}.sizing`;
  writeFileSync(file, '', { mode: 0o600, flag: 'wx' });
  const sub = bus.subscribe('sizing');
  const first = sub.receive();
  await new Promise((r) => setImmediate(r)); // it looked at the empty file (at subscribe) and waits
  unlinkSync(file);
  const pub = bus.publisher('sizing');
  let n = 0;
  const timer = setInterval(() => pub.publish({ n: n++ }), 5);
  const msg = (await within(30_000, first, 'the first message')) as { n: number };
  clearInterval(timer);
  t.type(msg.n, 'number', 'joined once the topic was made');
  await bus.close();
});

t.test('Bus.open and publisher() meet a registry or topic another process created but has not sized yet', async (t) => {
  const url = busUrl();
  const ns = url.slice('shm://'.length);
  // What a second process sees between the creator's shm_open(O_CREAT) and its ftruncate: an empty file.
  const registry = `/dev/shm/shmbus.bus.${ns}`;
  writeFileSync(registry, '', { mode: 0o600, flag: 'wx' });
  const opening = Bus.open(url);
  await new Promise((r) => setImmediate(r)); // it found the empty registry and waits for it to be sized
  unlinkSync(registry); // (the creator gave up: the next look creates it)
  const bus = await within(30_000, opening, 'Bus.open');
  const topic = `/dev/shm/shmbus.bus.${ns}.unsized`;
  writeFileSync(topic, '', { mode: 0o600, flag: 'wx' });
  t.throws(() => bus.publisher('unsized'), { code: ErrorCode.EXISTS }, 'a topic being made by another publisher');
  unlinkSync(topic);
  const pub = bus.publisher('unsized');
  t.ok(pub.publish({ ok: true }), 'once it is gone, this publisher makes it');
  await bus.close();
});

t.test('a closed subscription stays closed: readable() after close() does not join the topic again', async (t) => {
  const bus = await Bus.open(busUrl());
  const pub = bus.publisher('closed-sub');
  const sub = bus.subscribe('closed-sub');
  t.equal(bus.topics()[0]!.subscribers.length, 1, 'joined');
  await sub.close();
  t.same(bus.topics()[0]!.subscribers, [], 'left');
  await sub.readable();
  t.same(bus.topics()[0]!.subscribers, [], 'still no subscriber after readable()');
  await pub.close();
  await bus.close();
});

t.test('a subscriber killed mid-stream no longer holds a lossless publisher once it is found dead', async (t) => {
  const url = busUrl();
  const bus = await Bus.open(url);
  const pub = bus.publisher('held', { capacity: '4KiB' });
  const stalled = peer(t, url, 'held', 'stall');
  await stalled.ready();
  let n = 0;
  while (pub.publish({ n })) n++;
  t.ok(n > 0 && pub.queued === 1, 'the stalled subscriber holds the publisher');
  stalled.child.kill('SIGKILL');
  await stalled.exit;
  // The liveness check (LIVENESS_MS) finds it dead; the watchdog only keeps a broken check from hanging the file.
  await within(30_000, pub.drained(), 'the publisher to be freed from the dead subscriber');
  t.pass('the publisher is free again');
  t.same(bus.topics()[0]!.subscribers, [], 'the dead subscriber was evicted');
  await bus.close();
});

t.test('bad input gives typed errors', async (t) => {
  const bus = await Bus.open(busUrl());
  t.throws(() => bus.subscribe('nope', { create: false }), { code: ErrorCode.NOT_FOUND }, 'unknown topic with create: false');
  t.throws(() => bus.publisher('h', { capacity: '4KiB', history: 4096 }), { code: ErrorCode.BAD_ARGUMENT }, 'history larger than capacity');
  bus.publisher('one');
  t.throws(() => bus.publisher('one'), { code: ErrorCode.EXISTS }, 'second publisher on a topic');
  t.throws(() => bus.publisher('bad name!'), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => bus.publisher('x', { capacity: 3000 }), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => bus.publisher('x', { policy: 'sometimes' as never }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(Bus.open('tcp://x'), { code: ErrorCode.UNKNOWN_SCHEME });
  await t.rejects(Bus.open('shm://x?y=1'), { code: ErrorCode.BAD_URL });
  const sub = bus.subscribe('wait', { timeout: 50 });
  await t.rejects(sub.receive(), { code: ErrorCode.TIMEOUT });
  await bus.close();
  t.throws(() => bus.publisher('z'), { code: ErrorCode.CLOSED });
});

t.test('file-backed topics keep their history across restarts', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'shmbus-bus-'));
  const url = `file://${dir}/market`;
  let bus = await Bus.open(url);
  let pub = bus.publisher('log', { capacity: '64KiB', history: 3 });
  for (let n = 0; n < 10; n++) pub.publish({ n });
  await bus.close();
  bus = await Bus.open(url);
  const got: number[] = [];
  const sub = bus.subscribe('log', { from: 'earliest' });
  pub = bus.publisher('log', { capacity: '64KiB', history: 3 });
  pub.publish({ n: 10 });
  await pub.close();
  for await (const m of sub) got.push((m as { n: number }).n);
  t.same(got, [7, 8, 9, 10], 'history from the previous run, then the new message');
  await bus.destroy();
  t.same(readdirSync(dir), [], 'destroy removed the files');
  rmSync(dir, { recursive: true, force: true });
});

// The reaper of dead buses is tested in test/reap.test.ts, which runs alone (reapers act on every dead process).

t.test('values of every kind arrive equal, both those read in place and those left to msgpackr', async (t) => {
  const bus = await Bus.open(busUrl());
  const pub = bus.publisher('kinds', { capacity: '64KiB', policy: 'lossless' });
  const sub = bus.subscribe('kinds');
  // Nested past the in-place reader's depth (host/unpack.ts MAX_DEPTH 64): msgpackr decodes that one.
  let deep: unknown = 'bottom';
  for (let i = 0; i < 80; i++) deep = [deep];
  const values: unknown[] = [
    { sym: 'ACME', px: 101.25, qty: 300, seq: 1, ts: 123456789n },
    { text: 'é€😀 ключ', bin: Buffer.from([1, 2, 3, 250]), list: [1, -1, 2 ** 40, null, true, 0.5] },
    deep,
  ];
  for (const v of values) t.ok(pub.publish(v));
  pub.publishBytes(Uint8Array.from([9, 8, 7]));
  await pub.close();
  const got: unknown[] = [];
  for await (const m of sub) got.push(m);
  t.same(got.slice(0, 3), values);
  t.ok(Buffer.from((got[1] as { bin: Uint8Array }).bin).equals(Buffer.from([1, 2, 3, 250])), 'binary field: its bytes');
  t.same([...(got[3] as Uint8Array)], [9, 8, 7], 'raw bytes');
  await bus.close();
});
