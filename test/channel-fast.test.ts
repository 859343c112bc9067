// The shm channel's fast paths (issue 10): records decoded in place from the ring's memory, the iterator handing
// out a decoded batch, large records read one at a time and sent without a queue copy when room comes soon.
import t from 'tap';
import { pack, Unpackr } from 'msgpackr';
import { listen, connect, ErrorCode, type Channel } from '../index.js';
import { checkMsgpack, checkMsgpackRange, decodeMsgpackAt, decodeMsgpack, DEFAULT_DECODE_LIMITS } from '../host/codec.js';
import { unique, within, type TestLike } from './helpers.js';
import { RING_HEADER_SIZE, RING_TAIL_OFFSET, RECORD_BYTES } from '../assembly/layout.js';
import { getEngine } from '../host/engine.js';
import { RingEnd } from '../host/ring.js';

const unpackr = () => new Unpackr({ useRecords: false, copyBuffers: true });

/** `record` placed at `at` inside a larger buffer whose other bytes are `fill`. */
function embed(record: Uint8Array, at: number, total: number, fill = 0xa5): Uint8Array {
  const memory = new Uint8Array(total).fill(fill);
  memory.set(record, at);
  return memory;
}

t.test('decodeMsgpackAt decodes a record in the middle of a larger buffer, small and large', async (t) => {
  for (const value of [{ i: 1, s: 'x'.repeat(30), f: 1 / 3 }, { s: 'y'.repeat(5000), list: [1, 2, 3] }, 7, 'short']) {
    const record = pack(value);
    const memory = embed(record, 1000, 20_000);
    t.same(decodeMsgpackAt(unpackr(), memory, 1000, 1000 + record.length), value, `${record.length} bytes`);
    t.same(decodeMsgpackAt(unpackr(), memory, 1000, 1000 + record.length), decodeMsgpack(unpackr(), record));
  }
});

t.test('decodeMsgpackAt reads nothing past the record: bytes after `end` never complete a truncated value', async (t) => {
  for (const value of ['x'.repeat(30), 'z'.repeat(3000)]) {
    const record = pack(value);
    // The whole record is in memory, but the range stops one byte short: a reader that looked past `end` would
    // decode the string; a bounded one refuses it as truncated.
    const memory = embed(record, 64, 8192);
    t.throws(() => decodeMsgpackAt(unpackr(), memory, 64, 64 + record.length - 1),
      { code: ErrorCode.CORRUPT, details: { reason: 'truncated' } }, `${record.length} bytes`);
  }
  // Trailing bytes inside the range are refused, whatever follows it.
  const two = new Uint8Array([...pack(1), ...pack(2)]);
  t.throws(() => decodeMsgpackAt(unpackr(), embed(two, 8, 64), 8, 8 + two.length),
    { code: ErrorCode.CORRUPT, details: { reason: 'trailing bytes after the value', at: 1 } });
  // An empty record is not a value.
  t.throws(() => decodeMsgpackAt(unpackr(), new Uint8Array(16), 8, 8), { code: ErrorCode.CORRUPT });
});

t.test('decodeMsgpackAt keeps the pre-scan limits and the accepted extension types', async (t) => {
  // 4000 empty maps: far past maxDecodedRatio for a record this size with no slack.
  const maps = new Uint8Array(3 + 4000).fill(0x80);
  maps.set([0xdc, 4000 >> 8, 4000 & 0xff]);
  const limits = { ...DEFAULT_DECODE_LIMITS, slackBytes: 0 };
  t.throws(() => decodeMsgpackAt(unpackr(), embed(maps, 16, 8192), 16, 16 + maps.length, limits),
    { code: ErrorCode.CORRUPT, details: { limit: 'maxDecodedRatio' } });
  // 0xc1 and an unaccepted extension type, in a small record (decoded from the private copy).
  t.throws(() => decodeMsgpackAt(unpackr(), embed(new Uint8Array([0x91, 0xc1]), 40, 128), 40, 42),
    { code: ErrorCode.CORRUPT, details: { at: 1 } });
  t.throws(() => decodeMsgpackAt(unpackr(), embed(new Uint8Array([0xd4, 0x05, 0x00]), 40, 128), 40, 43),
    { code: ErrorCode.CORRUPT, details: { reason: 'msgpack extension type not accepted', at: 1 } });
  // Deep nesting in a large record (decoded from a view).
  const deep = new Uint8Array(600).fill(0x91);
  deep[599] = 0x01;
  t.throws(() => decodeMsgpackAt(unpackr(), embed(deep, 8, 2048), 8, 608), { code: ErrorCode.CORRUPT, details: { limit: 'maxDepth' } });
});

t.test('checkMsgpackRange checks what checkMsgpack checks, at an offset, and refuses a range outside the buffer', async (t) => {
  const record = pack({ a: [1, 2, { b: 'c' }], d: new Uint8Array(10) });
  checkMsgpack(record);
  checkMsgpackRange(embed(record, 33, 500), 33, 33 + record.length);
  t.throws(() => checkMsgpackRange(record, 0, record.length + 1), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => checkMsgpackRange(record, -1, 2), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => checkMsgpackRange(record, 5, 4), { code: ErrorCode.BAD_ARGUMENT });
});

async function pair(t: TestLike, query = ''): Promise<[Channel, Channel]> {
  const url = `shm://${unique('fast')}${query}`;
  const listener = await listen(url);
  t.teardown(() => listener.close());
  const [a, b] = await within(10_000, Promise.all([connect(url), listener.acceptNext()]), 'connect');
  t.teardown(async () => { await a.close(); await b!.close(); });
  return [a as Channel, b as Channel];
}

t.test('the iterator hands out a whole decoded batch in order, mixed with receive() and request/reply', async (t) => {
  const [a, b] = await pair(t);
  b.handle((x) => (x as number) * 2);
  const count = 5000;
  for (let i = 0; i < count; i++) {
    const ok = i % 3 === 0 ? a.sendBytes(new Uint8Array([i & 0xff, i >> 8])) : a.send({ i, s: 'x'.repeat(i % 40) });
    if (!ok) await a.drained();
  }
  t.equal(await a.request(21), 42, 'a request answered while the batch waits');
  const it = b[Symbol.asyncIterator]();
  for (let i = 0; i < count; i++) {
    const m = i % 7 === 0 ? await b.receive() : (await it.next()).value;
    if (i % 3 === 0) {
      if (!(m instanceof Uint8Array) || m[0] !== (i & 0xff) || m[1] !== i >> 8) return t.fail(`bytes ${i}: ${String(m)}`);
    } else if ((m as { i: number }).i !== i || (m as { s: string }).s.length !== i % 40) {
      return t.fail(`object ${i}: ${JSON.stringify(m)}`);
    }
  }
  t.pass(`${count} messages in order`);
});

t.test('a burst of small sends moves the ring\'s tail once per KiB; the rest is published when the run ends', async (t) => {
  const [a, b] = await pair(t);
  const { tx, engine } = a as unknown as { tx: RingEnd; engine: ReturnType<typeof getEngine> };
  const tail = () => Number(engine.view.getBigUint64(tx.ring + RING_TAIL_OFFSET, true));
  await a.drained();
  const start = tail();
  const bytes = new Uint8Array(56).fill(3); // 64 bytes a record with its header
  const tails: number[] = [];
  for (let i = 0; i < 20; i++) {
    t.ok(a.sendBytes(bytes));
    tails.push(tail() - start);
  }
  t.same(tails.slice(0, 2), [64, 64], 'the first send of the burst is published at once; the second waits');
  t.equal(tails.filter((x, i) => i > 0 && x !== tails[i - 1]).length, 1, 'one more store of the tail within the burst, at a KiB');
  t.equal(tails[16], 17 * 64, 'sixteen more records (1 KiB) published with one store');
  t.equal(tails[19], 17 * 64, 'and the rest not yet');
  await null;
  t.equal(tail() - start, 20 * 64, 'published once this run of JavaScript ended');
  for (let i = 0; i < 20; i++) t.same(await b.receive(), bytes);
});

t.test('large records on a small ring: every byte arrives, in order, with small ones in between', async (t) => {
  // 256 KiB ring: records of 60 KiB are "large" (a sixteenth of the ring or more): read one at a time, and the
  // sender spins for room before queueing a copy.
  const [a, b] = await pair(t, '?size=256k');
  const count = 200;
  const big = 60 * 1024;
  const sending = (async () => {
    const buf = new Uint8Array(big);
    for (let i = 0; i < count; i++) {
      buf.fill(i & 0xff);
      buf[0] = i >> 8;
      if (!a.sendBytes(buf)) await a.drained();
      // The buffer is reused at once: what was queued must be a copy, what went to the ring already is.
      if (i % 10 === 0 && !a.send({ small: i })) await a.drained();
    }
  })();
  const it = b[Symbol.asyncIterator]();
  for (let i = 0; i < count; i++) {
    const m = (await within(30_000, it.next(), `record ${i}`)).value as Uint8Array;
    if (!(m instanceof Uint8Array) || m.length !== big || m[0] !== i >> 8 || m[1] !== (i & 0xff) || m[big - 1] !== (i & 0xff)) {
      return t.fail(`record ${i} is wrong`);
    }
    if (i % 10 === 0) t.same((await it.next()).value, { small: i }, `small ${i}`);
  }
  await sending;
  t.pass(`${count} large records intact`);
});

t.test('a refused claim reports exactly the free bytes it needs, padding included', async (t) => {
  const engine = await getEngine();
  const cap = 4096;
  const size = RING_HEADER_SIZE + cap;
  const win = engine.allocWindow(size);
  t.teardown(() => engine.freeWindow(win, size));
  engine.u8.fill(0, win, win + size);
  RingEnd.format(engine, win, cap);
  const producer = new RingEnd(engine, win, cap, 'producer');
  const consumer = new RingEnd(engine, win, cap, 'consumer');
  t.teardown(() => { producer.dispose(); consumer.dispose(); });
  // Records of 1000 + 8 bytes: four fit before the end (4032), the fifth would need 64 bytes of padding first.
  for (let i = 0; i < 4; i++) { t.not(producer.claim(1000, RECORD_BYTES), 0); producer.commit(1000); }
  t.equal(producer.claim(1000, RECORD_BYTES), 0, 'full');
  t.equal(producer.needed(), 64 + 1008, 'padding to the end plus the record');
  // Free exactly that much (one record is 1008; two are 2016 >= 1072): the same claim now succeeds.
  t.equal(consumer.read(2), 2);
  consumer.release();
  t.ok(producer.free() >= producer.needed());
  t.not(producer.claim(1000, RECORD_BYTES), 0, 'claim succeeds once free() reaches needed()');
  producer.commit(1000);
  // The rest is readable as before: two records up to the tail seen first, then the padding and the new one.
  t.equal(consumer.read(), 2);
  consumer.release();
  t.equal(consumer.read(), 1, 'the padding is skipped');
  consumer.release();
  // Four more (the last one after padding again) fill the ring exactly; then a record needs only itself.
  for (let i = 0; i < 4; i++) { t.not(producer.claim(1000, RECORD_BYTES), 0); producer.commit(1000); }
  t.equal(producer.free(), 0);
  t.equal(producer.claim(1000, RECORD_BYTES), 0, 'full again');
  t.equal(producer.needed(), 1008, 'no padding needed at this position');
});
