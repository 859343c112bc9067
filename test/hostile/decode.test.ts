// msgpack that a peer wrote is decoded only within limits (host/codec.ts): amplification, nesting, 0xC1, foreign
// extensions, truncation and trailing bytes are ERR_SHMBUS_CORRUPT; everything our own encoder writes still
// decodes exactly as msgpackr alone would. Then the same through a real channel, and a ring the peer scribbled on
// the send path failing the channel as a whole.
import t, { type Test } from 'tap';
import fc from 'fast-check';
import { Packr, Unpackr } from 'msgpackr';
import { listen, connect, ErrorCode, type Channel, type ShmbusError } from '../../index.js';
import { checkMsgpack, decodeMsgpack, decodeLimits, DEFAULT_DECODE_LIMITS } from '../../host/codec.js';
import { RECORD_MSGPACK, RING_HEAD_OFFSET, RING_TO_LISTENER, ringOffset } from '../../assembly/layout.js';
import type { RingEnd } from '../../host/ring.js';
import type { Engine } from '../../host/engine.js';
import { fileTimeout, unique, within, scaled } from '../helpers.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 90, 10);

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, copyBuffers: true });
const bytes = (...b: number[]) => Uint8Array.from(b);

/** An array32 of `n` copies of the one-byte value `token`. */
function arrayOf(n: number, token: number): Uint8Array {
  const out = new Uint8Array(5 + n).fill(token);
  out[0] = 0xdd;
  new DataView(out.buffer).setUint32(1, n);
  return out;
}

function corrupt(t: Test, input: Uint8Array, reason: RegExp, what: string): void {
  t.throws(() => decodeMsgpack(unpackr, input), { code: ErrorCode.CORRUPT, details: { reason } }, what);
}

t.test('amplification: a record of empty maps or arrays is refused before anything is decoded', async (t) => {
  const mib2 = 2 << 20;
  corrupt(t, arrayOf(mib2, 0x80), /too large/, '2 MiB of empty maps (the reported attack: 128 MiB of heap)');
  corrupt(t, arrayOf(mib2, 0x90), /too large/, '2 MiB of empty arrays');
  const bins = new Uint8Array(5 + 2 * (mib2 >> 1));
  bins[0] = 0xdd;
  new DataView(bins.buffer).setUint32(1, mib2 >> 1);
  for (let i = 5; i < bins.length; i += 2) bins[i] = 0xc4;
  corrupt(t, bins, /too large/, '1M empty binaries');
  // A record that declares more elements than it has bytes is truncated whatever msgpackr would allocate.
  corrupt(t, bytes(0xdd, 0xff, 0xff, 0xff, 0xff, 0x01), /truncated/, 'an array declaring 4G elements');
  corrupt(t, bytes(0xdf, 0x7f, 0xff, 0xff, 0xff, 0x01, 0x01), /truncated/, 'a map declaring 2G entries');
  // Small records never trip the ratio (the slack), and ordinary data is far below it.
  t.doesNotThrow(() => checkMsgpack(arrayOf(1000, 0x80)), '1000 empty maps in one small record are fine');
  t.doesNotThrow(() => checkMsgpack(arrayOf(mib2, 0x01)), '2 MiB of small integers are fine');
  const objects = packr.pack(Array.from({ length: 100_000 }, (_, i) => ({ id: i & 0x7f })));
  t.doesNotThrow(() => checkMsgpack(objects), '100,000 small objects are fine');
  // The ratio is the knob.
  t.throws(() => checkMsgpack(objects, decodeLimits({ maxDecodedRatio: 4, slackBytes: 0 })), { code: ErrorCode.CORRUPT, details: { limit: 'maxDecodedRatio' } }, 'a tighter ratio refuses them');
  t.throws(() => decodeLimits({ maxDecodedRatio: -1 }), { code: ErrorCode.BAD_ARGUMENT }, 'a negative limit is a bad argument');
});

t.test('nesting: deeper than maxDepth is refused (msgpackr would recurse until the stack overflows)', async (t) => {
  const deep = new Uint8Array(200_001).fill(0x91);
  deep[deep.length - 1] = 0x01;
  corrupt(t, deep, /nested too deeply/, '200,000 nested arrays');
  const ok = new Uint8Array(DEFAULT_DECODE_LIMITS.maxDepth + 1).fill(0x91);
  ok[ok.length - 1] = 0x01;
  t.doesNotThrow(() => decodeMsgpack(unpackr, ok), `${DEFAULT_DECODE_LIMITS.maxDepth} levels are fine`);
});

t.test('bytes msgpackr does not refuse on its own', async (t) => {
  t.ok(unpackr.unpack(bytes(0xc1)) !== undefined, 'msgpackr alone turns 0xc1 into an internal object');
  corrupt(t, bytes(0xc1), /0xc1/, '0xc1 at the top');
  corrupt(t, bytes(0x92, 0x01, 0xc1), /0xc1/, '0xc1 inside an array');
  corrupt(t, bytes(0x81, 0xc1, 0x01), /0xc1/, '0xc1 as a map key');
  corrupt(t, bytes(0x01, 0x02), /trailing/, 'a second value after the first');
  // Extensions our encoder never writes: structured-clone ids and pointers, string bundles (they move msgpackr's
  // read position), Error and RegExp constructors, typed arrays, sets, BigInt, and types nobody defined.
  const foreign: [string, Uint8Array][] = [
    ['0x69 structured-clone id', bytes(0xd6, 0x69, 0, 0, 0, 1, 0x90)],
    ['0x70 structured-clone pointer', bytes(0xd6, 0x70, 0, 0, 0, 1)],
    ['0x62 string bundle', bytes(0xd6, 0x62, 0, 0, 0, 9, 0xa0)],
    ['0x65 error', bytes(0xd4, 0x65, 0, 0x93, 0xa5, 0x45, 0x72, 0x72, 0x6f, 0x72, 0xa1, 0x78, 0xc0)],
    ['0x78 RegExp', bytes(0xd4, 0x78, 0, 0x92, 0xa1, 0x61, 0xa0)],
    ['0x74 typed array', bytes(0xd5, 0x74, 0x01, 0x00)],
    ['0x73 set', bytes(0xd4, 0x73, 0, 0x90)],
    ['0x42 bigint', bytes(0xd4, 0x42, 0x01)],
    ['0x10 undefined type', bytes(0xd4, 0x10, 0x00)],
    ['timestamp of a bad length', bytes(0xd5, 0xff, 0, 0)],
  ];
  for (const [name, input] of foreign) corrupt(t, input, /extension/, name);
  t.same(decodeMsgpack(unpackr, packr.pack([new Date(1234567), undefined, null])), [new Date(1234567), undefined, null], 'dates and undefined (our extensions) decode');
  const invalid = decodeMsgpack(unpackr, packr.pack({ d: new Date(NaN) })) as { d: Date };
  t.ok(invalid.d instanceof Date && Number.isNaN(invalid.d.getTime()), 'an invalid Date (a 1-byte timestamp) decodes as one, not CORRUPT');
});

t.test('truncated records: every proper prefix of real data is CORRUPT, never anything else', async (t) => {
  const full = packr.pack({ a: [1, 2.5, 'x'.repeat(40), new Uint8Array(300)], b: { c: new Date(5), d: -7n }, e: 'ü'.repeat(70), f: 2 ** 40 });
  let bad = 0;
  for (let n = 0; n < full.length; n++) {
    try {
      decodeMsgpack(unpackr, full.subarray(0, n));
      bad++;
    } catch (error) {
      if ((error as ShmbusError).code !== ErrorCode.CORRUPT) bad++;
    }
  }
  t.equal(bad, 0, `all ${full.length} prefixes refused with CORRUPT`);
  t.same(decodeMsgpack(unpackr, full), unpackr.unpack(full), 'the whole record decodes');
});

t.test('property: what our encoder writes decodes exactly as msgpackr alone; random bytes are CORRUPT or a value', async (t) => {
  const value = fc.anything({
    withDate: true, withTypedArray: false, withBigInt: false, withMap: false, withSet: false, withNullPrototype: false,
    withBoxedValues: false, withSparseArray: false, maxDepth: 6,
  });
  let runs = 0;
  fc.assert(fc.property(value, (v) => {
    const packed = new Uint8Array(packr.pack(v));
    runs++;
    // Equal as msgpack: decoding both ways and encoding again gives the same bytes.
    return Buffer.from(packr.pack(decodeMsgpack(unpackr, packed))).equals(Buffer.from(packr.pack(unpackr.unpack(packed))));
  }), { numRuns: scaled(2000, 200) });
  t.pass(`${runs} encoded values decode as msgpackr decodes them`);
  let others = 0;
  fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), (input) => {
    try {
      decodeMsgpack(unpackr, input);
    } catch (error) {
      if ((error as ShmbusError).code !== ErrorCode.CORRUPT) others++;
    }
    return true;
  }), { numRuns: scaled(50_000, 2000) });
  t.equal(others, 0, 'random bytes never raise anything but CORRUPT');
});

interface Internals { tx: RingEnd; engine: Engine; window: number }
const internals = (c: Channel): Internals => {
  const i = c as unknown as Internals & { mapped: { at: number } };
  return { tx: i.tx, engine: i.engine, window: i.mapped.at };
};

async function pair(t: Test, size = '8MiB'): Promise<[Channel, Channel]> {
  const url = `shm://${unique('decode')}?size=${size}`;
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]);
  await listener.close();
  t.teardown(async () => { await a.close(); await b!.close(); });
  return [a as Channel, b as Channel];
}

t.test('through a channel: a hostile record fails that channel with CORRUPT, nothing is decoded', async (t) => {
  const [a, b] = await pair(t);
  const errors: ShmbusError[] = [];
  b.on('error', (e) => errors.push(e));
  const it = b[Symbol.asyncIterator]();
  // Rings start small and grow in band when a message needs it: one large message through first, so the claim
  // below fits at once.
  a.sendBytes(new Uint8Array(1 << 20));
  t.equal(((await within(10_000, it.next(), 'the large message')).value as Uint8Array).length, 1 << 20, 'the ring grew');
  a.send({ before: 1 });
  // Written straight into a's outbound ring, as a hostile peer would: 1 MiB of empty maps as a msgpack record.
  const record = arrayOf(1 << 20, 0x80);
  const { tx, engine } = internals(a);
  const at = tx.claim(record.length, RECORD_MSGPACK);
  t.ok(at > 0, 'the record fits in the ring');
  if (at <= 0) return;
  engine.u8.set(record, at);
  tx.commit(record.length);
  a.send({ after: 1 });
  t.same((await within(10_000, it.next(), 'first message')).value, { before: 1 }, 'what came before is delivered');
  await t.rejects(within(10_000, it.next(), 'the hostile record'), { code: ErrorCode.CORRUPT, details: { reason: /too large/ } },
    'the hostile record ends the iterator; nothing after it is delivered');
  t.same(errors.map((e) => e.code), [ErrorCode.CORRUPT], '\'error\' reported it');
  t.throws(() => b.send(1), { code: ErrorCode.CORRUPT }, 'the channel is failed: later sends throw the same error');
});

t.test('send: a consumer position the peer scribbled fails the channel, not just that call', async (t) => {
  const [a, b] = await pair(t, '64KiB');
  const errors: ShmbusError[] = [];
  a.on('error', (e) => errors.push(e));
  void b;
  const big = { fill: 'x'.repeat(200) };
  while (a.trySend(big));
  // The peer (b) owns the consumer position of a's outbound ring: move it past everything ever written.
  const { tx, engine, window } = internals(a);
  const head = window + ringOffset(RING_TO_LISTENER, tx.capacity) + RING_HEAD_OFFSET;
  new DataView(engine.memory.buffer).setBigUint64(head, 1n << 50n, true);
  // A message that does not fit by the ring's cached view, so the producer reads the real position.
  t.throws(() => a.send(big), { code: ErrorCode.CORRUPT }, 'send throws CORRUPT');
  t.equal(errors.length, 1, '\'error\' was emitted once');
  t.throws(() => a.send({ again: 1 }), { code: ErrorCode.CORRUPT }, 'later sends throw the same error');
  const it = a[Symbol.asyncIterator]();
  await t.rejects(within(10_000, it.next(), 'the iterator'), { code: ErrorCode.CORRUPT }, 'the iterator ends with it');
});
