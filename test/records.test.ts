// Values with record structures on shm channels (issue 10): `send` packs with msgpackr `sequential: true` when the
// peer said `records: true` in the handshake (RECORD_MSGPACK_RECORDS); the receiver's scan (host/codec.ts) keeps
// the same table of structures as msgpackr, and bounds what a peer may define. Both sides agree, order holds
// across definitions (queued, fragmented, recycled ids, a send that throws), and hostile bytes are CORRUPT.
import t, { type Test } from 'tap';
import fc from 'fast-check';
import { Unpackr } from 'msgpackr';
import { listen, connect, ErrorCode, type Channel, type ShmbusError } from '../index.js';
import {
  decodeMsgpackAt, checkMsgpackRange, recordPackr, recordUnpackr, RecordStructures, MAX_RECORD_KEYS, MAX_STRUCTURE_BYTES,
  DEFAULT_DECODE_LIMITS, RecordBatch, BATCH_RECORD,
} from '../host/codec.js';
import { isDeepStrictEqual } from 'node:util';
import { RECORD_MSGPACK_RECORDS } from '../assembly/layout.js';
import { RecordEncoder } from '../host/pack.js';
import type { RingEnd } from '../host/ring.js';
import type { Engine } from '../host/engine.js';
import { fileTimeout, unique, within, scaled } from './helpers.js';
import { comparable } from './arbitraries.js';

fileTimeout(t, 90, 10);

interface Internals { tx: RingEnd; engine: Engine; encoder: RecordEncoder | undefined; peerRecords: boolean; recordsIn: unknown }
const internals = (c: Channel) => c as unknown as Internals;

async function pair(t: Test, query = 'size=1MiB'): Promise<[Channel, Channel]> {
  const url = `shm://${unique('records')}?${query}`;
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]);
  await listener.close();
  t.teardown(async () => { await a.close(); await b!.close(); });
  return [a as Channel, b as Channel];
}

/** Decodes a stream of records the way a channel does: one scan table and Unpackr for the direction. */
function receiver() {
  const { unpackr, structures } = recordUnpackr();
  return {
    structures,
    decode: (bytes: Uint8Array) => decodeMsgpackAt(unpackr, bytes, 0, bytes.length, DEFAULT_DECODE_LIMITS, structures),
  };
}

const shapes = (n: number) => Array.from({ length: n }, (_, k) => ({ [`k${k}`]: k, s: 'x'.repeat(k % 7), f: k / 3, nested: { [`n${k % 5}`]: [k] } }));

t.test('both sides agree on records in the handshake and every message arrives equal and in order', async (t) => {
  const [a, b] = await pair(t);
  t.ok(internals(a).peerRecords, 'the connector encodes with records');
  t.ok(internals(b).peerRecords, 'the listener encodes with records');
  t.equal(internals(a).encoder, undefined, 'its encoder is made with the first send');
  t.equal(internals(b).recordsIn, undefined, 'the decoder with the first record');
  // 100 shapes, twice: more than msgpackr's 32 own ids, so ids are recycled and shapes defined again.
  const values: unknown[] = [...shapes(100), ...shapes(100), 'plain', 42, [1, { a: undefined, d: new Date(5) }], { bin: Buffer.from([1, 2, 3]) }];
  let sent = 0;
  for (const v of values) {
    if (!a.send(v)) await a.drained();
    sent++;
  }
  a.sendBytes(Buffer.from('raw'));
  t.ok(a.trySend({ tried: 1 }), 'trySend (plain msgpack) between record messages');
  a.send({ k0: 'after', s: '', f: 0, nested: { n0: [] } });
  const it = b[Symbol.asyncIterator]();
  const got: unknown[] = [];
  for (let i = 0; i < sent + 3; i++) got.push((await within(10_000, it.next(), `message ${i}`)).value);
  t.same(got.slice(0, sent), values.map((v) => (v && typeof v === 'object' && 'bin' in v ? { bin: new Uint8Array([1, 2, 3]) } : v)), 'values');
  t.same(Buffer.from(got[sent] as Uint8Array).toString(), 'raw', 'bytes in order');
  t.same(got.slice(sent + 1), [{ tried: 1 }, { k0: 'after', s: '', f: 0, nested: { n0: [] } }], 'plain and record messages in order');
  b.handle((v) => v);
  t.same(await within(10_000, a.request({ k3: 3, s: 'r', f: 1, nested: {} }), 'request'), { k3: 3, s: 'r', f: 1, nested: {} },
    'request/reply still works next to records');
});

t.test('order holds across definitions when messages queue, and for messages sent as fragments', async (t) => {
  const [a, b] = await pair(t, 'size=64KiB&maxMessage=1MiB');
  const n = scaled(20_000, 2000);
  const big = { k1: 'y'.repeat(200_000), s: 'big', f: 1, nested: { n1: [1] } };
  const expect = (i: number) => (i % 997 === 5 ? big : shapes(40)[i % 40]!);
  const receiving = (async () => {
    const it = b[Symbol.asyncIterator]();
    let bad = -1;
    for (let i = 0; i < n; i++) {
      const { value } = await within(20_000, it.next(), () => `message ${i}`);
      if (bad < 0 && JSON.stringify(value) !== JSON.stringify(expect(i))) bad = i;
    }
    return bad;
  })();
  let queued = 0;
  for (let i = 0; i < n; i++) {
    if (!a.send(expect(i))) {
      queued++;
      if (queued % 3 === 0) await a.drained(); // let the queue grow sometimes, drain other times
    }
  }
  t.equal(await receiving, -1, `${n} messages (${queued} sends queued, large ones fragmented) all equal, in order`);
});

t.test('a send that throws after packing a new shape leaves the next message of that shape decodable', async (t) => {
  const [a, b] = await pair(t, 'size=64KiB&maxMessage=256KiB');
  t.throws(() => a.send({ fresh: 1, huge: 2n ** 70n }), 'msgpackr refuses the value half-way through the record');
  t.throws(() => a.send({ other: 'z'.repeat(300_000) }), { code: ErrorCode.MESSAGE_TOO_LARGE }, 'packed, then refused');
  a.send({ fresh: 1, huge: 2 });
  a.send({ other: 'ok' });
  const it = b[Symbol.asyncIterator]();
  t.same((await within(10_000, it.next(), 'first')).value, { fresh: 1, huge: 2 });
  t.same((await within(10_000, it.next(), 'second')).value, { other: 'ok' });
});

t.test('codec: a stream of records scans and decodes exactly as msgpackr alone', async (t) => {
  const value = fc.anything({
    withDate: true, withTypedArray: false, withBigInt: false, withMap: false, withSet: false, withNullPrototype: false,
    withBoxedValues: false, withSparseArray: false, maxDepth: 5,
  });
  const packr = recordPackr();
  const mine = receiver();
  const theirs = new Unpackr({ sequential: true });
  let runs = 0;
  fc.assert(fc.property(value, (v) => {
    const packed = new Uint8Array(packr.pack(v));
    runs++;
    const ours = mine.decode(packed);
    const alone = theirs.unpack(packed);
    return JSON.stringify(ours) === JSON.stringify(alone);
  }), { numRuns: scaled(3000, 300) });
  t.pass(`${runs} values in one stream`);
  t.ok(mine.structures.bytes <= MAX_STRUCTURE_BYTES, 'the table stays bounded');
});

t.test('codec: records decoded in batches give the values decoded one by one, in order, across flushes', async (t) => {
  const value = fc.anything({
    withDate: true, withTypedArray: false, withBigInt: false, withMap: false, withSet: false, withNullPrototype: false,
    withBoxedValues: false, withSparseArray: false, maxDepth: 4,
  });
  let records = 0;
  fc.assert(fc.property(fc.array(fc.tuple(value, fc.boolean()), { minLength: 1, maxLength: 120 }), (steps) => {
    const packr = recordPackr();
    const one = receiver();
    const { unpackr, structures } = recordUnpackr();
    const batch = new RecordBatch(unpackr, structures, DEFAULT_DECODE_LIMITS);
    const got: unknown[] = [];
    const expected: unknown[] = [];
    const out = (v: unknown) => { got.push(v); };
    // A ring's memory: records at odd places, as they lie in a ring.
    const memory = new Uint8Array(BATCH_RECORD + 64);
    for (const [v, flushAfter] of steps) {
      const packed = new Uint8Array(packr.pack(v));
      if (packed.length > BATCH_RECORD) continue;
      records++;
      expected.push(one.decode(packed));
      memory.set(packed, 7);
      batch.add(memory, 7, 7 + packed.length, out);
      memory.fill(0xc1); // the shared bytes change after add: the batch decodes its own copy
      if (flushAfter) batch.flush(out);
    }
    batch.flush(out);
    // comparable: two invalid Dates are not isDeepStrictEqual (NaN !== NaN).
    return isDeepStrictEqual(comparable(got, true), comparable(expected, true)) && batch.pending === 0;
  }), { numRuns: scaled(300, 40), examples: [[[[new Date(NaN), false], [[], false]]]] });
  t.pass(`${records} records`);
  // More than the batch's buffer holds: add flushes by itself, order kept.
  const packr = recordPackr();
  const { unpackr, structures } = recordUnpackr();
  const batch = new RecordBatch(unpackr, structures, DEFAULT_DECODE_LIMITS);
  const got: unknown[] = [];
  const n = 200;
  for (let i = 0; i < n; i++) {
    const packed = new Uint8Array(packr.pack({ i, s: 'z'.repeat(1000) }));
    batch.add(packed, 0, packed.length, (v) => got.push(v));
  }
  t.ok(got.length > 0, `flushed on its own: ${got.length} values out before the last flush`);
  batch.flush((v) => got.push(v));
  t.same(got.map((v) => (v as { i: number }).i), Array.from({ length: n }, (_, i) => i), `${n} records of 1 KiB in order`);
});

t.test('codec: a record that fails its check is refused at add; those added before it still decode', async (t) => {
  const packr = recordPackr();
  const { unpackr, structures } = recordUnpackr();
  const batch = new RecordBatch(unpackr, structures, DEFAULT_DECODE_LIMITS);
  const got: unknown[] = [];
  const out = (v: unknown) => { got.push(v); };
  for (const v of [{ a: 1 }, { a: 2 }, 'three']) {
    const packed = new Uint8Array(packr.pack(v));
    batch.add(packed, 0, packed.length, out);
  }
  const bad = Uint8Array.from([0x92, 0x01, 0xc1]);
  t.throws(() => batch.add(bad, 0, bad.length, out), { code: ErrorCode.CORRUPT }, 'refused at add');
  t.equal(batch.pending, 3, 'not added');
  // One copy buffer per process: another batch cannot start while this one holds records.
  const other = new RecordBatch(recordUnpackr().unpackr, new RecordStructures(), DEFAULT_DECODE_LIMITS);
  const one = Uint8Array.from([0x01]);
  t.throws(() => other.add(one, 0, 1, out), { code: ErrorCode.BAD_STATE }, 'a second batch pending at once is refused');
  batch.flush(out);
  t.same(got, [{ a: 1 }, { a: 2 }, 'three'], 'the records before it decode, in order');
  // A batch refused on its first record does not keep the buffer.
  t.throws(() => other.add(bad, 0, bad.length, out), { code: ErrorCode.CORRUPT });
  batch.add(one, 0, 1, out);
  batch.flush(out);
  t.equal(got.at(-1), 1, 'the buffer is free again after a refused first record');
  t.throws(() => batch.add(new Uint8Array(BATCH_RECORD + 1), 0, BATCH_RECORD + 1, out), { code: ErrorCode.BAD_ARGUMENT }, 'a record past BATCH_RECORD');
});

/** fixext 1, "r", the id, an array of the keys (each a fixstr), then whatever follows. */
function definition(id: number, keys: string[], ...rest: number[]): Uint8Array {
  const out = [0xd4, 0x72, id, ...(keys.length < 16 ? [0x90 | keys.length] : [0xdc, keys.length >> 8, keys.length & 0xff])];
  for (const k of keys) out.push(0xa0 | k.length, ...Buffer.from(k));
  return Uint8Array.from([...out, ...rest]);
}

function corrupt(t: Test, structures: RecordStructures, input: Uint8Array, reason: RegExp, what: string): void {
  const { unpackr } = recordUnpackr();
  t.throws(() => decodeMsgpackAt(unpackr, input, 0, input.length, DEFAULT_DECODE_LIMITS, structures),
    { code: ErrorCode.CORRUPT, details: { reason } }, what);
}

t.test('codec: hostile definitions are CORRUPT', async (t) => {
  const s = () => new RecordStructures();
  corrupt(t, s(), Uint8Array.from([0xd4, 0x72, 0x3f, 0x90]), /id out of range/, 'an id below 0x40');
  corrupt(t, s(), Uint8Array.from([0xd4, 0x72, 0x80, 0x90]), /id out of range/, 'an id past 0x7f');
  corrupt(t, s(), Uint8Array.from([0xd5, 0x72, 0x60, 0x00, 0x90]), /extension type not accepted/, 'the two-byte form');
  corrupt(t, s(), Uint8Array.from([0xd4, 0x72, 0x40, 0x81, 0xa1, 0x61, 0x01]), /without an array of keys/, 'keys as a map');
  corrupt(t, s(), Uint8Array.from([0xd4, 0x72, 0x40, 0x91, 0x01, 0x02]), /key is not a string/, 'a number as key');
  corrupt(t, s(), Uint8Array.from([0xd4, 0x72, 0x40, 0x91, 0x40, 0x02]), /key is not a string/, 'a record as key');
  const many = [0xd4, 0x72, 0x40, 0xdc, (MAX_RECORD_KEYS + 1) >> 8, (MAX_RECORD_KEYS + 1) & 0xff];
  for (let i = 0; i <= MAX_RECORD_KEYS; i++) many.push(0xa1, 0x61);
  corrupt(t, s(), Uint8Array.from(many), /too many keys/, `${MAX_RECORD_KEYS + 1} keys`);
  // Every proper prefix of a definition with its values is CORRUPT (truncated), never a value or another error.
  const full = definition(0x41, ['a', 'bb'], 0x01, 0xa1, 0x78);
  for (let cut = 1; cut < full.length; cut++) corrupt(t, s(), full.subarray(0, cut), /truncated/, `cut at ${cut}`);
  // A reference whose values are missing.
  const known = s();
  receiverWith(known).decode(definition(0x42, ['a', 'b'], 1, 2));
  corrupt(t, known, Uint8Array.from([0x42, 0x01]), /truncated/, 'a record short of its values');
  corrupt(t, known, Uint8Array.from([0x42, 0x01, 0x02, 0x03]), /trailing/, 'more values than its keys');
});

function receiverWith(structures: RecordStructures) {
  const { unpackr } = recordUnpackr();
  return { decode: (bytes: Uint8Array) => decodeMsgpackAt(unpackr, bytes, 0, bytes.length, DEFAULT_DECODE_LIMITS, structures) };
}

t.test('codec: the structures a peer defines stay bounded; a message whose structure set overflows is CORRUPT', async (t) => {
  const keys = (id: number) => Array.from({ length: 30 }, (_, k) => `${id}-${k}`.padEnd(31, 'k'));
  const r = receiver();
  // Redefining one id again and again replaces it: no growth.
  for (let i = 0; i < 1000; i++) r.decode(definition(0x40, keys(i), ...new Array(30).fill(0xc0)));
  t.ok(r.structures.bytes < 2048, `one id redefined 1000 times holds ${r.structures.bytes} bytes`);
  // All 64 ids with 30 keys of 31 bytes: 64 × 30 × 47 > MAX_STRUCTURE_BYTES, so some definition overflows.
  let refused: ShmbusError | undefined;
  let id = 0x40;
  for (; id < 0x80 && !refused; id++) {
    try {
      r.decode(definition(id, keys(id), ...new Array(30).fill(0xc0)));
    } catch (error) {
      refused = error as ShmbusError;
    }
  }
  t.equal(refused?.code, ErrorCode.CORRUPT, `refused at id 0x${(id - 1).toString(16)}`);
  t.match(refused?.details, { reason: /structures too large/, limit: 'MAX_STRUCTURE_BYTES' });
  t.ok(r.structures.bytes <= MAX_STRUCTURE_BYTES, 'the table never passed its bound');
  // Several definitions inside one message add up the same way.
  const one: number[] = [0xdc, 0, 64];
  for (let i = 0; i < 64; i++) one.push(...definition(0x40 + i, keys(i), ...new Array(30).fill(0xc0)));
  corrupt(t, new RecordStructures(), Uint8Array.from(one), /structures too large/, 'one message defining too much');
});

t.test('codec: without a table, record bytes keep their plain meaning and definitions stay refused', async (t) => {
  const bytes = Uint8Array.from([0x92, 0x40, 0x7f]);
  checkMsgpackRange(bytes, 0, bytes.length);
  t.same(new Unpackr({ useRecords: false }).unpack(bytes), [64, 127], 'fixints');
  t.throws(() => checkMsgpackRange(definition(0x40, ['a'], 1), 0, 6), { code: ErrorCode.CORRUPT, details: { reason: /extension type not accepted/ } });
  // With a table, an id nobody defined is a plain integer, as msgpackr decodes it.
  t.same(receiver().decode(bytes), [64, 127], 'undefined ids are integers');
});

t.test('through a channel: a hostile record-structure record fails that channel with CORRUPT', async (t) => {
  const [a, b] = await pair(t);
  const errors: ShmbusError[] = [];
  b.on('error', (e) => errors.push(e));
  a.send({ before: 1 });
  const record = definition(0x40, ['a'], 0xc1);
  const { tx, engine } = internals(a);
  const at = tx.claim(record.length, RECORD_MSGPACK_RECORDS);
  engine.u8.set(record, at);
  tx.commit(record.length);
  a.send({ after: 1 });
  const it = b[Symbol.asyncIterator]();
  t.same((await within(10_000, it.next(), 'first message')).value, { before: 1 }, 'what came before is delivered');
  await t.rejects(within(10_000, it.next(), 'the hostile record'), { code: ErrorCode.CORRUPT }, 'the hostile record ends the iterator');
  t.same(errors.map((e) => e.code), [ErrorCode.CORRUPT], '\'error\' reported it');
});
