// SharedState: fields round-trip, one update is seen whole by readers in other processes, add/compareAndSet,
// watch() wakes on changes, a writer that died mid-update leaves the last complete version, and the typed errors
// (bad URL, bad field list, a field list that disagrees, another user's segment).
import t from 'tap';
import { openSync, writeSync, closeSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { SharedState } from '../../state/shared-state.js';
import { Mutex } from '../../state/mutex.js';
import { ErrorCode } from '../../host/errors.js';
import { STATE_SEQ_OFFSET, STATE_WRITER_OFFSET, stateCopyOffset } from '../../assembly/layout.js';
import { asUnprivileged, fileTimeout, scaled, startFixture, within } from '../helpers.js';
import { leftovers, stateUrl } from './common.js';

// Measured on a busy 2-core machine: ~10 s at scale 1.
fileTimeout(t, 60, 10);
let before = leftovers();
t.beforeEach(() => { before = leftovers(); });
t.afterEach((sub) => { t.same(leftovers(), before, `nothing left behind by: ${sub.name}`); });

const QUOTE = { bid: 'f64', ask: 'f64', stop: 'bool' } as const;

for (const scheme of ['shm', 'sysv'] as const) {
  t.test(`${scheme}: every field type round-trips; add and compareAndSet are atomic changes`, async (t) => {
    const fields = { a: 'u32', b: 'i32', c: 'u64', d: 'i64', e: 'f64', f: 'bool', g: 'string:8', h: 'bytes:4' } as const;
    const s = await SharedState.open(stateUrl(scheme), { fields });
    t.same(s.read(), { a: 0, b: 0, c: 0, d: 0, e: 0, f: false, g: '', h: new Uint8Array(0) }, 'a new state is all zero');
    t.equal(s.version, 0);
    s.update({ a: 0xffffffff, b: -5, c: 2n ** 64n - 1n, d: -(2n ** 63n), e: 1.25, f: true, g: 'ünï', h: new Uint8Array([1, 2, 3]) });
    t.same(s.read(), { a: 0xffffffff, b: -5, c: 2n ** 64n - 1n, d: -(2n ** 63n), e: 1.25, f: true, g: 'ünï', h: new Uint8Array([1, 2, 3]) });
    t.equal(s.version, 1, 'one update is one version');
    t.equal(s.add('a', 1), 0, 'u32 wraps like the machine word');
    t.equal(s.add('c', 1), 0);
    t.equal(s.add('b', 10), 5);
    t.equal(s.compareAndSet('b', 4, 9), false);
    t.equal(s.get('b'), 5);
    t.equal(s.compareAndSet('b', 5, 9), true);
    t.equal(s.get('b'), 9);
    t.equal(s.version, 5, 'a failed compareAndSet is not a change');
    const other = await SharedState.open(s.url, { fields, create: false });
    t.equal(other.get('g'), 'ünï', 'another handle sees the same bytes');
    other.close();
    s.close();
  });

  t.test(`${scheme}: a writer updating { bid, ask = bid + 1 } while 2 readers read(): never torn`, async (t) => {
    const url = stateUrl(scheme);
    const s = await SharedState.open(url, { fields: QUOTE });
    const writer = startFixture(t, 'state-peer', ['writer', url]);
    await writer.line(/^writing$/);
    const n = scaled(1_000_000, 10_000);
    const readers = [0, 1].map(() => startFixture(t, 'state-peer', ['reader', url, String(n)]));
    let local = 0;
    for (let i = 0; i < n / 10; i++) { const q = s.read(); if (q.ask !== q.bid + 1) local++; }
    for (const r of readers) {
      const v = JSON.parse(await r.line(/^\{/, 240_000)) as { torn: number; versions: number };
      t.equal(v.torn, 0, 'no torn snapshot');
      t.ok(v.versions > 0, `the writer changed the state while it read (${v.versions} versions)`);
    }
    t.equal(local, 0);
    s.set('stop', true);
    t.match(await writer.line(/^done /), /^done \d+$/);
    t.equal((await writer.exit).code, 0);
    s.close();
  });

  t.test(`${scheme}: watch() yields when another process changes the state`, async (t) => {
    const url = stateUrl(scheme);
    const s = await SharedState.open(url, { fields: QUOTE });
    const controller = new AbortController();
    const seen = (async () => {
      for await (const q of s.watch({ signal: controller.signal })) if ((q.bid as number) > 0) return q;
      return undefined;
    })();
    const writer = startFixture(t, 'state-peer', ['writer', url]);
    const q = await within(30_000, seen, 'a watched change');
    t.ok(q !== undefined && q.ask === (q.bid as number) + 1, 'a whole snapshot');
    s.set('stop', true);
    await writer.exit;
    controller.abort();
    s.close();
  });
}

t.test('watch() in one process: a set wakes it, abort ends it', async (t) => {
  const s = await SharedState.open(stateUrl('shm'), { fields: QUOTE });
  const controller = new AbortController();
  const got: number[] = [];
  const done = (async () => { for await (const q of s.watch({ signal: controller.signal })) { got.push(q.bid as number); if (q.bid === 3) controller.abort(); } })();
  // watch() has read the version it starts from before its first await: a set now is a change it must yield.
  s.set('bid', 3);
  await within(30_000, done, 'watch to end');
  t.same(got, [3]);
  s.close();
});

t.test('a writer that died mid-update: readers get the last complete version, the next writer carries on', async (t) => {
  const url = stateUrl('shm');
  const s = await SharedState.open(url, { fields: QUOTE });
  s.update({ bid: 1, ask: 2 });
  // A process that is gone now: its claim is what a writer killed mid-update leaves.
  const gone = spawnSync('true').pid!;
  const file = openSync(`/dev/shm/shmbus.state.${url.slice('shm://'.length)}`, 'r+');
  const claim = Buffer.alloc(8);
  claim.writeBigUInt64LE(BigInt(gone) | (12345n << 32n));
  writeSync(file, claim, 0, 8, STATE_WRITER_OFFSET);
  const seq = Buffer.alloc(4);
  seq.writeUInt32LE(3); // version 1 published, version 2 being written
  writeSync(file, seq, 0, 4, STATE_SEQ_OFFSET);
  const garbage = Buffer.alloc(8);
  garbage.writeDoubleLE(99);
  writeSync(file, garbage, 0, 8, stateCopyOffset(24, 0)); // version 2's copy: bid half written
  closeSync(file);
  t.same(s.read(), { bid: 1, ask: 2, stop: false }, 'the last complete version, at once');
  t.equal(s.version, 1);
  s.set('bid', 5);
  t.same(s.read(), { bid: 5, ask: 2, stop: false }, 'the next writer took the dead writer\'s claim over');
  t.equal(s.version, 2);
  s.close();
});

t.test('typed errors: bad URLs, bad field lists, bad values, a field list that disagrees', async (t) => {
  for (const url of ['tcp://127.0.0.1:1', 'file:///tmp/x', 'shm://', 'shm://a b', 'shm://a?size=4096', 'sysv://zz', 'sysv://0']) {
    await t.rejects(SharedState.open(url, { fields: QUOTE }), { code: /^ERR_SHMBUS_(BAD_URL|UNKNOWN_SCHEME)$/ }, url);
  }
  await t.rejects(SharedState.open(42 as unknown as string, { fields: QUOTE }), { code: ErrorCode.BAD_URL });
  for (const fields of [{}, { a: 'u8' }, { '1a': 'u32' }, { a: 'string:0' }, { a: 'bytes:999999' }, null, ['u32'], { a: 7 }]) {
    await t.rejects(SharedState.open(stateUrl('shm'), { fields: fields as never }), { code: ErrorCode.BAD_ARGUMENT }, JSON.stringify(fields));
  }
  await t.rejects(SharedState.open(stateUrl('shm'), undefined as never), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(SharedState.open(stateUrl('shm'), { fields: QUOTE, create: false }), { code: ErrorCode.NOT_FOUND });

  for (const scheme of ['shm', 'sysv'] as const) {
    const url = stateUrl(scheme);
    const s = await SharedState.open(url, { fields: { a: 'u32', b: 'string:8' } });
    await t.rejects(SharedState.open(url, { fields: { a: 'i32', b: 'string:8' } }), { code: ErrorCode.VERSION_MISMATCH }, 'another type');
    await t.rejects(SharedState.open(url, { fields: { b: 'string:8', a: 'u32' } }), { code: ErrorCode.VERSION_MISMATCH }, 'another order');
    await t.rejects(SharedState.open(url, { fields: { a: 'u32', b: 'string:9' } }), { code: ErrorCode.VERSION_MISMATCH }, 'another size');
    if (scheme === 'sysv') await t.rejects(Mutex.open(url), { code: ErrorCode.CORRUPT }, 'a state key opened as a mutex: bad magic');
    t.throws(() => s.set('a', -1), { code: ErrorCode.BAD_ARGUMENT });
    t.throws(() => s.set('b', 'much too long'), { code: ErrorCode.BAD_ARGUMENT });
    t.throws(() => s.set('nope' as 'a', 1), { code: ErrorCode.BAD_ARGUMENT });
    t.throws(() => s.add('b' as never, 1), { code: ErrorCode.BAD_ARGUMENT });
    t.throws(() => s.add('a', 1.5), { code: ErrorCode.BAD_ARGUMENT });
    await t.rejects(s.watch(null as never).next(), { code: ErrorCode.BAD_ARGUMENT }, 'watch(null)');
    t.equal(s.version, 0, 'no failed call changed anything');
    s.close();
    t.throws(() => s.read(), { code: ErrorCode.CLOSED });
  }
});

const nobody = asUnprivileged();
t.test('another user gets nothing: a 0600 state and mutex are refused to uid 65534, and its segment to us', { skip: 'skip' in nobody ? nobody.skip : false }, async (t) => {
  if ('skip' in nobody) return;
  const how = nobody;
  for (const scheme of ['shm', 'sysv'] as const) {
    const url = stateUrl(scheme);
    const s = await SharedState.open(url, { fields: QUOTE });
    const m = await Mutex.open(stateUrl(scheme));
    const spy = startFixture(t, 'state-peer', ['open-state', url], { prefix: how.prefix });
    t.equal(await spy.line(/^\S+$/), ErrorCode.PERMISSION_DENIED, `${scheme}: state refused`);
    const spy2 = startFixture(t, 'state-peer', ['open-mutex', m.url], { prefix: how.prefix });
    t.equal(await spy2.line(/^\S+$/), ErrorCode.PERMISSION_DENIED, `${scheme}: mutex refused`);
    s.close();
    m.close();
    // A segment another user made, even world-writable, is not attached (its owner is not us).
    const theirs = stateUrl(scheme);
    const maker = startFixture(t, 'state-peer', ['make-state', theirs, '666'], { prefix: how.prefix });
    await maker.line(/^made$/);
    await t.rejects(SharedState.open(theirs, { fields: QUOTE, perm: 0o666 }), { code: ErrorCode.PERMISSION_DENIED }, `${scheme}: theirs refused`);
    maker.process.kill('SIGTERM');
    await maker.exit;
  }
});
