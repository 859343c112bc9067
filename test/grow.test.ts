/**
 * Rings that start small and grow when a message needs it (RECORD_RESIZE, assembly/layout.ts; issue 11): messages
 * of growing sizes cross byte-exact in both directions; an idle connection reserves at most 256 KiB of shared
 * memory with the default options; a resize record a hostile peer gets wrong is CORRUPT on that connection; a full
 * file system at growth time is a typed NO_SPACE (the sender's send, or the reader's connection when the peer did
 * not populate), never a SIGBUS.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { listen, connect, ErrorCode, type Channel, type ShmbusError } from '../index.js';
import { Region } from '../host/region.js';
import { setShrinkAfter, type RingEnd } from '../host/ring.js';
import type { Engine } from '../host/engine.js';
import { RECORD_BYTES, RECORD_HEADER_SIZE, RECORD_RESIZE, RECORD_TYPE_OFFSET } from '../assembly/layout.js';
import { eventually, fileTimeout, startFixture, unique, within } from './helpers.js';

fileTimeout(t, 120, 30);

const KiB = 1024;
const MiB = 1024 * KiB;

interface Internals { tx: RingEnd; rx: RingEnd; engine: Engine }
const internals = (c: Channel) => c as unknown as Internals;

function fill(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed + (i >>> 11)) & 0xff;
  return b;
}

async function pair(t: Test, url: string): Promise<[Channel, Channel]> {
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]);
  await listener.close();
  t.teardown(async () => { await a.close(); await b!.close(); });
  return [a as Channel, b as Channel];
}

const SIZES = [0, 10, 4 * KiB, 16 * KiB, 30 * KiB, 40 * KiB, 100 * KiB, 300 * KiB, MiB, 2 * MiB, 5 * MiB, 64, 3 * MiB + 5];

t.test('messages of growing sizes cross byte-exact both ways while the rings grow (another process echoes them)', async (t) => {
  const url = `shm://${unique('grow-echo')}`;
  const listener = await listen(url);
  t.teardown(() => listener.close());
  startFixture(t, 'grow-echo', [url]);
  const ch = await within(30_000, listener.acceptNext(), 'the echo peer') as Channel;
  t.teardown(() => ch.close());
  const { tx, rx } = internals(ch);
  t.equal(tx.currentCapacity, 64 * KiB, 'our ring starts at 64 KiB');
  t.equal(rx.currentCapacity, 64 * KiB, 'the peer\'s ring too');
  const it = ch[Symbol.asyncIterator]();
  for (const [i, n] of SIZES.entries()) {
    const bytes = fill(n, i);
    if (!ch.sendBytes(bytes)) await ch.drained();
    const back = (await within(30_000, it.next(), `${n} bytes back`)).value as Uint8Array;
    t.ok(back.length === n && Buffer.compare(Buffer.from(back), Buffer.from(bytes)) === 0, `sendBytes: ${n} bytes back intact`);
    const value = { i, s: 'v'.repeat(n >>> 1), b: bytes.subarray(0, n >>> 2) };
    if (!ch.send(value)) await ch.drained();
    // Binary fields of values come back as Buffers.
    t.same((await within(30_000, it.next(), `value ${i} back`)).value, { ...value, b: Buffer.from(value.b) },
      `send: a value of ${n >>> 1} + ${n >>> 2} bytes back intact`);
  }
  t.equal(tx.currentCapacity, 4 * MiB, 'our ring grew to its maximum');
  t.equal(rx.currentCapacity, 4 * MiB, 'the peer\'s ring grew to its maximum');
});

t.test('in one process, both directions at once: every message intact and in order', async (t) => {
  const [a, b] = await pair(t, `shm://${unique('grow-duplex')}`);
  const sizes = [1, 50 * KiB, 8, 700 * KiB, 2 * MiB - 100, 12, 4 * MiB, 100];
  const receive = (c: Channel) => (async () => { const out: Uint8Array[] = []; for await (const m of c) { out.push(m as Uint8Array); if (out.length === sizes.length) break; } return out; })();
  const [gotA, gotB] = [receive(a), receive(b)];
  const send = async (c: Channel, seed: number) => { for (const [i, n] of sizes.entries()) if (!c.sendBytes(fill(n, seed + i))) await c.drained(); };
  await Promise.all([send(a, 100), send(b, 200)]);
  const [outA, outB] = await within(60_000, Promise.all([gotA, gotB]), 'both directions');
  sizes.forEach((n, i) => {
    t.ok(Buffer.compare(Buffer.from(outB[i]!), Buffer.from(fill(n, 100 + i))) === 0, `a → b: ${n} bytes intact`);
    t.ok(Buffer.compare(Buffer.from(outA[i]!), Buffer.from(fill(n, 200 + i))) === 0, `b → a: ${n} bytes intact`);
  });
});

t.test('an explicit small size never grows; trySend and claim of a record that needs growth wait for it', async (t) => {
  const [a, b] = await pair(t, `shm://${unique('grow-small')}?size=64KiB`);
  t.equal(internals(a).tx.currentCapacity, 64 * KiB);
  t.throws(() => a.sendBytes(new Uint8Array(40 * KiB)), { code: ErrorCode.MESSAGE_TOO_LARGE }, 'one record of the 64 KiB ring at most');
  const [c, d] = await pair(t, `shm://${unique('grow-try')}`);
  void b;
  const it = d[Symbol.asyncIterator]();
  const big = fill(200 * KiB, 3);
  t.equal(c.trySendBytes(big), false, 'trySend of a record that needs a larger ring: not now');
  const next = it.next();
  await within(10_000, c.drained(), 'drained once the reader passed the resize');
  t.equal(c.trySendBytes(big), true, 'then it fits');
  t.same(Buffer.from((await within(10_000, next, 'the record')).value as Uint8Array), Buffer.from(big), 'intact');
  t.ok(internals(c).tx.currentCapacity >= 1 * MiB, `grew to ${internals(c).tx.currentCapacity}`);
});

t.test('a ring a writer fills with small messages grows, and every message arrives in order', async (t) => {
  const [a, b] = await pair(t, `shm://${unique('grow-flood')}`);
  t.equal(internals(a).tx.currentCapacity, 64 * KiB, 'starts at 64 KiB');
  const count = 5000; // 5000 × 72 B of records: more than 64 KiB, so the writer finds the ring full
  const got = (async () => { const out: number[] = []; for await (const m of b) { out.push((m as { i: number }).i); if (out.length === count) break; } return out; })();
  for (let i = 0; i < count; i++) if (!a.send({ i, s: 'x'.repeat(40) })) await a.drained();
  const out = await within(60_000, got, 'every message');
  t.same(out, Array.from({ length: count }, (_, i) => i), 'in order, none lost');
  t.ok(internals(a).tx.currentCapacity >= MiB, `the filled ring grew (to ${internals(a).tx.currentCapacity})`);
  t.equal(internals(b).tx.currentCapacity, 64 * KiB, 'the other direction, never full, did not');
});

t.test('an idle connection reserves at most 256 KiB of shared memory by default; growing populates the rest', async (t) => {
  const fds: number[] = [];
  const original = Region.createMemfd;
  // Keep our own descriptor of each memfd the listener makes (the connection closes its own once both mapped).
  Region.createMemfd = function (this: typeof Region, ...args: Parameters<typeof Region.createMemfd>) {
    const region = original.apply(this, args);
    fds.push(fs.openSync(`/proc/self/fd/${region.fd}`, 'r'));
    return region;
  } as typeof Region.createMemfd;
  t.teardown(() => { Region.createMemfd = original; for (const fd of fds) fs.closeSync(fd); });
  const [a, b] = await pair(t, `shm://${unique('grow-idle')}`);
  Region.createMemfd = original;
  t.equal(fds.length, 1, 'one memfd for the connection');
  const allocated = () => fs.fstatSync(fds[0]!).blocks * 512;
  t.ok(allocated() <= 256 * KiB, `idle: ${allocated() / KiB} KiB allocated (segment of ${fs.fstatSync(fds[0]!).size / KiB} KiB)`);
  const it = b[Symbol.asyncIterator]();
  a.sendBytes(fill(MiB, 1));
  t.equal(((await within(10_000, it.next(), '1 MiB')).value as Uint8Array).length, MiB);
  t.ok(allocated() >= 4 * MiB, `after a 1 MiB message: ${allocated() / KiB} KiB allocated`);
  // Idle again: the ring shrinks back in band and its pages are freed (looked at every 50 ms here, 2 s by default).
  // The reader waits for the next message meanwhile, as an idle reader does.
  setShrinkAfter(50);
  t.teardown(() => setShrinkAfter(2000));
  let next = it.next();
  await eventually(() => allocated() <= 256 * KiB, 'the idle ring shrinks back', 20_000);
  t.ok(allocated() <= 256 * KiB, `idle again: ${allocated() / KiB} KiB allocated`);
  t.equal(internals(a).tx.currentCapacity, 64 * KiB, 'the writer is back at 64 KiB');
  // And grows again, both ways, byte-exact; the reader meets the shrink record before the next message.
  for (const n of [100, 2 * MiB, 10, 300 * KiB]) {
    a.sendBytes(fill(n, n));
    t.same(Buffer.from((await within(10_000, next, `${n} bytes`)).value as Uint8Array), Buffer.from(fill(n, n)), `${n} bytes intact after the shrink`);
    next = it.next();
  }
  await eventually(() => allocated() <= 256 * KiB, 'shrinks back once more', 20_000);
  a.send('last');
  t.equal((await within(10_000, next, 'last')).value, 'last', 'a message after the second shrink');
});

/** Writes a RECORD_RESIZE to `capacity` (with `reserved` after it) into `c`'s outbound ring, as a hostile peer
 * would: a record committed as bytes, its type rewritten in shared memory before the reader looks. */
function writeResize(c: Channel, capacity: number, reserved = 0): void {
  const { tx, engine } = internals(c);
  const at = tx.claim(8, RECORD_BYTES);
  if (at <= 0) throw new Error('no room for the record');
  const view = new DataView(engine.memory.buffer);
  view.setUint32(at, capacity, true);
  view.setUint32(at + 4, reserved, true);
  tx.commit(8);
  view.setUint32(at - RECORD_HEADER_SIZE + RECORD_TYPE_OFFSET, RECORD_RESIZE, true);
}

t.test('a resize record a hostile peer gets wrong fails that connection with CORRUPT', async (t) => {
  const cases: [string, number, number][] = [
    ['not a power of two', 96 * KiB, 0],
    ['larger than the ring the window maps', 8 * MiB, 0],
    ['no larger than the ring now', 64 * KiB, 0],
    ['smaller than the smallest ring', 512, 0],
    ['zero', 0, 0],
    ['reserved word set', 128 * KiB, 1],
  ];
  for (const [name, capacity, reserved] of cases) {
    const [a, b] = await pair(t, `shm://${unique('grow-hostile')}`);
    const errors: ShmbusError[] = [];
    b.on('error', (e) => errors.push(e));
    a.send('before');
    writeResize(a, capacity, reserved);
    a.send('after');
    const it = b[Symbol.asyncIterator]();
    t.equal((await within(10_000, it.next(), 'first')).value, 'before', `${name}: what came before is delivered`);
    await t.rejects(within(10_000, it.next(), name), { code: ErrorCode.CORRUPT }, `${name}: CORRUPT`);
    t.same(errors.map((e) => e.code), [ErrorCode.CORRUPT], `${name}: reported once`);
  }
  // The same record on a ring that never grows (an explicit size as large as the initial one).
  const [a, b] = await pair(t, `shm://${unique('grow-hostile-fixed')}?size=64KiB`);
  writeResize(a, 128 * KiB);
  await t.rejects(within(10_000, b[Symbol.asyncIterator]().next(), 'fixed'), { code: ErrorCode.CORRUPT }, 'a ring that cannot grow: CORRUPT');
});

t.test('a valid resize record from a peer that populated nothing still reads right', async (t) => {
  const [a, b] = await pair(t, `shm://${unique('grow-unpopulated')}`);
  writeResize(a, 1 * MiB);
  // The writer's own handle did not switch (a hostile writer could do anything): the reader populates and reads on.
  const it = b[Symbol.asyncIterator]();
  a.send('x');
  // 'x' was written in the old geometry after the record: the reader, now in the new one, finds garbage or nothing.
  const r = await within(10_000, it.next().then((v) => ({ ok: v }), (e: ShmbusError) => ({ error: e.code })), 'the reader');
  t.ok('ok' in r || r.error === ErrorCode.CORRUPT, `no crash: ${JSON.stringify(r)}`);
});

// A small tmpfs to fill up: file:// segments live in it. Mounting needs CAP_SYS_ADMIN; without it, skipped.
const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-grow-'));
const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'none', mnt]).status === 0;
t.teardown(() => {
  // Lazily (-l): a failed test may still hold a file in it open; the mount must not outlive the test either way.
  if (mounted) spawnSync('umount', ['-l', mnt]);
  fs.rmSync(mnt, { recursive: true, force: true });
});
const skip = !mounted && 'cannot mount a tmpfs here (needs CAP_SYS_ADMIN)';

t.test('a full file system at growth time: the send that needs it fails with NO_SPACE; the connection goes on', { skip }, async (t) => {
  const [a, b] = await pair(t, `file://${mnt}/${unique('grow-full')}?size=1MiB`);
  const free = fs.statfsSync(mnt).bavail * fs.statfsSync(mnt).bsize;
  const filler = path.join(mnt, 'filler');
  fs.writeFileSync(filler, Buffer.alloc(Math.max(0, free - 64 * KiB)));
  t.teardown(() => fs.rmSync(filler, { force: true }));
  t.throws(() => a.sendBytes(fill(300 * KiB, 1)), { code: ErrorCode.NO_SPACE }, 'a message that needs a larger ring: NO_SPACE');
  // A record that fits the ring as it is still goes (a growth it does not need is given up, not an error).
  a.sendBytes(fill(20 * KiB, 2));
  a.send('small');
  const it = b[Symbol.asyncIterator]();
  t.same(Buffer.from((await within(10_000, it.next(), '20 KiB')).value as Uint8Array), Buffer.from(fill(20 * KiB, 2)), 'a record that fits goes');
  t.equal((await within(10_000, it.next(), 'small')).value, 'small', 'the connection goes on');
  fs.rmSync(filler);
  a.sendBytes(fill(300 * KiB, 3));
  t.same(Buffer.from((await within(10_000, it.next(), '300 KiB')).value as Uint8Array), Buffer.from(fill(300 * KiB, 3)), 'with room again it grows');
});

t.test('a full file system when the reader populates what a hostile writer did not: NO_SPACE on that connection', { skip }, async (t) => {
  const [a, b] = await pair(t, `file://${mnt}/${unique('grow-full-reader')}?size=1MiB`);
  const errors: ShmbusError[] = [];
  b.on('error', (e) => errors.push(e));
  const free = fs.statfsSync(mnt).bavail * fs.statfsSync(mnt).bsize;
  const filler = path.join(mnt, 'filler');
  fs.writeFileSync(filler, Buffer.alloc(Math.max(0, free - 64 * KiB)));
  t.teardown(() => fs.rmSync(filler, { force: true }));
  writeResize(a, 1 * MiB);
  await t.rejects(within(10_000, b[Symbol.asyncIterator]().next(), 'the reader'), { code: ErrorCode.NO_SPACE }, 'the reader fails with NO_SPACE');
  t.same(errors.map((e) => e.code), [ErrorCode.NO_SPACE], 'reported once');
});

t.test('rings shrinking and growing again while messages flow: every message intact, in order', async (t) => {
  setShrinkAfter(1);
  t.teardown(() => setShrinkAfter(2000));
  const [a, b] = await pair(t, `shm://${unique('grow-churn')}`);
  const cycle = [10, 200 * KiB, 30, MiB, 5, 3 * MiB, 70 * KiB];
  const ia = a[Symbol.asyncIterator]();
  const ib = b[Symbol.asyncIterator]();
  for (let i = 0; i < 60; i++) {
    const n = cycle[i % cycle.length]!;
    const [from, to, it] = i % 2 === 0 ? [a, b, ib] : [b, a, ia];
    void to;
    const next = it.next();
    if (!from.sendBytes(fill(n, i))) await from.drained();
    const got = (await within(10_000, next, `message ${i}`)).value as Uint8Array;
    if (got.length !== n || Buffer.compare(Buffer.from(got), Buffer.from(fill(n, i))) !== 0) t.fail(`message ${i} (${n} bytes) differs`);
    // Idle gaps now and then, for the shrink timer to catch some rings (how many depends on the machine).
    if (i % 5 === 4) await new Promise((r) => setTimeout(r, 20));
  }
  t.pass('60 messages of 5 B to 3 MiB crossed intact, both ways');
  // Idle now, with both readers waiting as idle readers do: both rings shrink back (the event, however long).
  const lastA = ia.next(), lastB = ib.next();
  await eventually(() => internals(a).tx.currentCapacity === 64 * KiB && internals(b).tx.currentCapacity === 64 * KiB, 'both rings shrink back once idle');
  t.pass('both rings shrank back once idle');
  a.sendBytes(fill(300 * KiB, 7));
  b.sendBytes(fill(9, 8));
  const [toB, toA] = await within(10_000, Promise.all([lastB, lastA]), 'the messages after the shrink');
  t.same(Buffer.from(toB.value as Uint8Array), Buffer.from(fill(300 * KiB, 7)), 'a → b after the shrink (grows again)');
  t.same(Buffer.from(toA.value as Uint8Array), Buffer.from(fill(9, 8)), 'b → a after the shrink');
});

t.test('across processes, rings shrinking and growing again on both sides: every message intact, in order', async (t) => {
  setShrinkAfter(1);
  t.teardown(() => setShrinkAfter(2000));
  const url = `shm://${unique('grow-churn-echo')}`;
  const listener = await listen(url);
  t.teardown(() => listener.close());
  startFixture(t, 'grow-echo', [url], { env: { GROW_SHRINK_MS: '1' } });
  const ch = await within(30_000, listener.acceptNext(), 'the echo peer') as Channel;
  t.teardown(() => ch.close());
  const it = ch[Symbol.asyncIterator]();
  const cycle = [10, 200 * KiB, 30, MiB, 5, 3 * MiB, 70 * KiB, 1];
  let bad = 0;
  for (let i = 0; i < 80; i++) {
    const n = cycle[i % cycle.length]!;
    const bytes = fill(n, i);
    const next = it.next();
    if (!ch.sendBytes(bytes)) await ch.drained();
    const back = (await within(30_000, next, `message ${i} back`)).value as Uint8Array;
    if (back.length !== n || Buffer.compare(Buffer.from(back), Buffer.from(bytes)) !== 0) bad++;
    // Idle gaps now and then, so both sides' rings shrink and the next large message grows them again.
    if (i % 4 === 3) await new Promise((r) => setTimeout(r, 10));
  }
  t.equal(bad, 0, '80 messages of 1 B to 3 MiB came back intact, in order');
});

t.test('a trySend refused while the ring shrinks back waits for the growth it needs, not forever', async (t) => {
  const [a, b] = await pair(t, `shm://${unique('grow-try-shrink')}`);
  const it = b[Symbol.asyncIterator]();
  a.sendBytes(fill(MiB, 1));
  await within(10_000, it.next(), 'the 1 MiB message');
  setShrinkAfter(5);
  t.teardown(() => setShrinkAfter(2000));
  // Nobody reads meanwhile: the shrink record waits in the ring.
  await eventually(() => internals(a).tx.resizing, 'a shrink announced');
  const big = fill(200 * KiB, 2);
  t.equal(a.trySendBytes(big), false, 'refused while the shrink is outstanding');
  const next = it.next();
  let tries = 0;
  while (!a.trySendBytes(big)) {
    tries++;
    await within(10_000, a.drained(), 'drained');
  }
  t.same(Buffer.from((await within(10_000, next, 'the record')).value as Uint8Array), Buffer.from(big), `taken after ${tries} drain(s), intact`);
});
