// The record encoder of `send` (host/pack.ts): the bytes msgpackr's record packer writes, for the values it takes;
// every other value left to msgpackr with nothing changed; what a receiver decodes always equals what msgpackr alone
// would give it; and it never defines what the receiver's scan (host/codec.ts) refuses.
import t from 'tap';
import fc from 'fast-check';
import { isDeepStrictEqual } from 'node:util';
import { Packr, Unpackr } from 'msgpackr';
import { RecordEncoder, NOT_ENCODED, NO_ROOM, encoded, encodePlain } from '../host/pack.js';
import * as pack from '../host/pack.js';
import { decodeMsgpackAt, recordPackr, recordUnpackr, MAX_RECORD_KEYS, MAX_STRUCTURE_BYTES, DEFAULT_DECODE_LIMITS } from '../host/codec.js';
import { scaled, unique, within } from './helpers.js';
import { supported, comparable as bytesAsUint8Array } from './arbitraries.js';
import { listen, connect } from '../index.js';


t.test('for the values it takes, the bytes are those of msgpackr\'s record packer, message after message', async (t) => {
  let messages = 0;
  fc.assert(fc.property(fc.array(supported, { minLength: 1, maxLength: 200 }), (values) => {
    const encoder = new RecordEncoder();
    const packr = recordPackr();
    for (const v of values) {
      const n = encoder.encode(v);
      if (n === NOT_ENCODED) return false;
      const ours = Buffer.from(encoded.subarray(0, n));
      const theirs = Buffer.from(packr.pack(v));
      if (!ours.equals(theirs)) return false;
      messages++;
    }
    return true;
  }), { numRuns: scaled(200, 30) });
  t.pass(`${messages} messages byte for byte`);
});

t.test('encodeInto writes the same bytes within its room, or nothing at all (NO_ROOM) with the encoder unchanged', async (t) => {
  const memory = Buffer.alloc(4096);
  const view = new DataView(memory.buffer, memory.byteOffset, memory.byteLength);
  let fitted = 0;
  let refused = 0;
  fc.assert(fc.property(fc.array(fc.tuple(supported, fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 64 })), { minLength: 1, maxLength: 80 }), (steps) => {
    const ours = new RecordEncoder();
    const twin = new RecordEncoder();
    for (const [v, room, start] of steps) {
      memory.fill(0xee);
      const end = ours.encodeInto(v, memory, view, start, start + room);
      const n = twin.encode(v);
      if (n === NOT_ENCODED) return false;
      const expected = Buffer.from(encoded.subarray(0, n));
      // Nothing outside the room is touched, whatever happened.
      for (let i = 0; i < start; i++) if (memory[i] !== 0xee) return false;
      for (let i = start + room; i < memory.length; i++) if (memory[i] !== 0xee) return false;
      if (end === NO_ROOM) {
        refused++;
        // Unchanged: the same value, encoded aside now, gives the twin's bytes (definitions included).
        if (ours.encode(v) !== n || !encoded.subarray(0, n).equals(expected)) return false;
        continue;
      }
      fitted++;
      if (end - start !== n || !memory.subarray(start, end).equals(expected)) return false;
    }
    return true;
  }), { numRuns: scaled(200, 30) });
  t.ok(fitted > 0 && refused > 0, `${fitted} encoded in place, ${refused} refused for room`);
});

t.test('plain msgpack: the bytes of msgpackr without records, and any value decodes as msgpackr alone gives it', async (t) => {
  const theirs = new Packr({ useRecords: false });
  const plainEncoder = new RecordEncoder({ records: false });
  let same = 0;
  fc.assert(fc.property(supported, (v) => {
    const n = plainEncoder.encode(v);
    if (n === NOT_ENCODED) return false;
    same++;
    return Buffer.from(encoded.subarray(0, n)).equals(Buffer.from(theirs.pack(v)));
  }), { numRuns: scaled(2000, 300) });
  t.pass(`${same} values byte for byte`);
  const anything = fc.anything({
    withDate: true, withTypedArray: true, withBigInt: true, withMap: true, withSet: true, withNullPrototype: true,
    withBoxedValues: true, withSparseArray: true, maxDepth: 4,
  });
  let runs = 0;
  fc.assert(fc.property(anything, (v) => {
    let expected: unknown;
    try {
      const bytes = Uint8Array.from(theirs.pack(v));
      expected = decodeMsgpackAt(plainUnpackr, bytes, 0, bytes.length);
    } catch {
      return true; // msgpackr cannot encode it either (a bigint too large)
    }
    runs++;
    const bytes = Uint8Array.from(encodePlain(v));
    return isDeepStrictEqual(bytesAsUint8Array(decodeMsgpackAt(plainUnpackr, bytes, 0, bytes.length)), bytesAsUint8Array(expected));
  }), { numRuns: scaled(2000, 300) });
  t.pass(`${runs} values of any kind through encodePlain`);
  // Integers 0x40–0x7f are fixints without records, as msgpackr writes them.
  t.same([...encodePlain(0x7f)], [0x7f]);
  t.same([...encodePlain({ a: 0x40 })], [0xde, 0, 1, 0xa1, 0x61, 0x40]);
});

t.test('encodePlain hands out views of the encoder buffer it wrote, also after that buffer grew', async (t) => {
  const first = encodePlain({ a: 1 });
  t.equal(first.buffer, encoded.buffer, 'a view of the shared buffer, no copy');
  t.same([...encodePlain({ a: 2 })], [...Uint8Array.from([0xde, 0, 1, 0xa1, 0x61, 2])], 'the bytes of the latest encode');
  // A value larger than the buffer makes it grow (a new buffer): views of the old one must not be handed out again.
  const before = encoded.buffer;
  const large = encodePlain({ s: 'x'.repeat(encoded.length * 2) });
  t.ok(large.length > 8192);
  t.not(encoded.buffer, before, 'the buffer grew');
  const again = encodePlain({ a: 3 });
  t.equal(again.buffer, encoded.buffer, 'the view is of the buffer now in use');
  t.same([...again], [0xde, 0, 1, 0xa1, 0x61, 3]);
});

t.test('past 32 shapes (all the ids), ids are reused oldest first, defined again inline, and the receiver follows', async (t) => {
  const encoder = new RecordEncoder();
  const packr = recordPackr();
  const { unpackr, structures } = recordUnpackr();
  for (let round = 0; round < 3; round++) {
    for (let k = 0; k < 150; k++) {
      const v = { [`k${k}`]: k, s: 's'.repeat(k % 5), nested: { [`n${k % 70}`]: [k, { deep: k }] } };
      const n = encoder.encode(v);
      const bytes = Uint8Array.from(encoded.subarray(0, n));
      if (!Buffer.from(bytes).equals(Buffer.from(packr.pack(v)))) t.fail(`message ${round}/${k} differs from msgpackr's`);
      const got = decodeMsgpackAt(unpackr, bytes, 0, bytes.length, DEFAULT_DECODE_LIMITS, structures);
      if (!isDeepStrictEqual(got, v)) t.fail(`message ${round}/${k} decoded as ${JSON.stringify(got)}`);
    }
  }
  t.pass('450 messages of 150 shapes (and 70 nested ones) decoded equal');
});

/** msgpackr as the fallback: plain msgpack, decoded by the receiver's plain decoder (as the channel does). */
const plainPackr = new Packr({ useRecords: false });
const plainUnpackr = new Unpackr({ useRecords: false, copyBuffers: true });

/** A receiver of one direction, fed what `send` writes: records, or plain msgpack for what the encoder left. */
function sender() {
  const encoder = new RecordEncoder();
  const { unpackr, structures } = recordUnpackr();
  return {
    encoder,
    structures,
    /** What the peer decodes of `v`, and whether the encoder took it. */
    roundTrip(v: unknown): { value: unknown; encoded: boolean } {
      const n = encoder.encode(v);
      if (n === NOT_ENCODED) {
        const bytes = Uint8Array.from(plainPackr.pack(v));
        return { value: decodeMsgpackAt(plainUnpackr, bytes, 0, bytes.length), encoded: false };
      }
      const bytes = Uint8Array.from(encoded.subarray(0, n));
      return { value: decodeMsgpackAt(unpackr, bytes, 0, bytes.length, DEFAULT_DECODE_LIMITS, structures), encoded: true };
    },
  };
}

t.test('any value: the receiver decodes what msgpackr alone would give it, and a value left to msgpackr changes nothing', async (t) => {
  const anything = fc.anything({
    withDate: true, withTypedArray: true, withBigInt: true, withMap: true, withSet: true, withNullPrototype: true,
    withBoxedValues: true, withSparseArray: true, maxDepth: 4,
  });
  // Dates and the like inside objects whose shapes are also sent without them: a failed encode must not leave a
  // shape believed defined.
  const mixed = fc.oneof(anything, supported, fc.record({ a: supported, when: fc.oneof(fc.date(), fc.integer()) }));
  let left = 0;
  let taken = 0;
  fc.assert(fc.property(fc.array(mixed, { minLength: 1, maxLength: 60 }), (values) => {
    const s = sender();
    for (const v of values) {
      let expected: unknown;
      try {
        const bytes = Uint8Array.from(plainPackr.pack(v));
        expected = decodeMsgpackAt(plainUnpackr, bytes, 0, bytes.length);
      } catch {
        continue; // msgpackr cannot encode it either (a bigint too large): `send` throws
      }
      const got = s.roundTrip(v);
      if (got.encoded) taken++;
      else left++;
      if (!isDeepStrictEqual(bytesAsUint8Array(got.value), bytesAsUint8Array(expected))) return false;
    }
    return s.structures.bytes <= MAX_STRUCTURE_BYTES;
  }), { numRuns: scaled(300, 40), examples: [[[{ a: 0, when: new Date(NaN) }, 0]]] });
  t.ok(taken > 0 && left > 0, `${taken} values encoded, ${left} left to msgpackr, all decoded as msgpackr alone`);
});

t.test('a value left to msgpackr after a new shape was defined in it leaves that shape undefined', async (t) => {
  const encoder = new RecordEncoder();
  t.equal(encoder.encode({ fresh: 1, when: new Date(0) }), NOT_ENCODED, 'a Date is left to msgpackr');
  const n = encoder.encode({ fresh: 1, when: 2 });
  t.same([...encoded.subarray(0, 3)], [0xd4, 0x72, 0x40], 'the shape is defined in the next message that has it, with the first id');
  t.ok(n > 3);
  t.same([...encoded.subarray(0, encoder.encode({ fresh: 3, when: 4 }))], [0x40, 3, 4], 'then named by its id');
  // An id taken from an older shape by the failed message goes back to it.
  const full = new RecordEncoder();
  for (let k = 0; k < 32; k++) full.encode({ [`k${k}`]: k });
  t.equal(full.encode({ newer: 1, d: new Date(0) }), NOT_ENCODED);
  t.same([...encoded.subarray(0, full.encode({ k0: 5 }))], [0x40, 5], 'the oldest shape still holds its id');
  // reset(): every shape is defined again.
  encoder.reset();
  encoder.encode({ fresh: 1, when: 2 });
  t.same([...encoded.subarray(0, 3)], [0xd4, 0x72, 0x40], 'after reset, defined again');
});

t.test('a getter that throws: the error comes out, nothing is left defined, and a channel goes on', async (t) => {
  const encoder = new RecordEncoder();
  const throwing = { fresh: 1, get bad(): number { throw new Error('getter failed'); } };
  t.throws(() => encoder.encode(throwing), /getter failed/, 'encode passes the error on');
  const memory = Buffer.alloc(256);
  const view = new DataView(memory.buffer, memory.byteOffset, memory.byteLength);
  t.throws(() => encoder.encodeInto(throwing, memory, view, 0, 256), /getter failed/, 'encodeInto too');
  encoder.encode({ fresh: 1, bad: 2 });
  t.same([...encoded.subarray(0, 3)], [0xd4, 0x72, 0x40], 'the shape is defined by the next message that has it');
  // Through a channel: the claim the encoder wrote into is given up, and the next messages arrive.
  const url = `shm://${unique('pack-getter')}`;
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]);
  await listener.close();
  t.teardown(async () => { await a.close(); await b!.close(); });
  t.throws(() => a.send(throwing), /getter failed/, 'send throws the getter\'s error');
  a.send({ fresh: 1, bad: 2 });
  a.send({ fresh: 3, bad: 4 });
  const it = b![Symbol.asyncIterator]();
  t.same((await within(10_000, it.next(), 'first')).value, { fresh: 1, bad: 2 });
  t.same((await within(10_000, it.next(), 'second')).value, { fresh: 3, bad: 4 });
});

t.test('a getter that sends another message while its value is encoded: both arrive whole', async (t) => {
  const url = `shm://${unique('pack-reenter')}`;
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]);
  const [c, d] = await Promise.all([connect(url), listener.acceptNext()]);
  await listener.close();
  t.teardown(async () => { await Promise.all([a, b!, c, d!].map((x) => x.close())); });
  // On another channel: it goes through msgpackr, the outer message through the encoder. The outer one is larger
  // than send's claim in the ring, so it is encoded aside, in the buffer the inner one would use too (its getter
  // runs once per attempt: twice here).
  let calls = 0;
  const outer = { x: 1, big: 'w'.repeat(5000), get inner(): string { calls++; c.send({ nested: 'z'.repeat(3000), n: [calls] }); return 'y'.repeat(40); } };
  a.send(outer);
  // And through the plain encoder (request/reply) from inside a records encode.
  b!.handle((v) => v);
  const replied = a.request({ asked: 1 });
  const sneaky = { q: 2, get r(): number { void c.request({ also: 'x' }).catch(() => {}); return 3; } };
  a.send(sneaky);
  const got = b![Symbol.asyncIterator]();
  t.same((await within(10_000, got.next(), 'outer')).value, { x: 1, big: 'w'.repeat(5000), inner: 'y'.repeat(40) }, 'the outer message');
  t.same((await within(10_000, got.next(), 'second')).value, { q: 2, r: 3 }, 'the message whose getter made a request');
  const inner = d![Symbol.asyncIterator]();
  for (let i = 1; i <= calls; i++) {
    t.same((await within(10_000, inner.next(), `inner ${i}`)).value, { nested: 'z'.repeat(3000), n: [i] }, `message ${i} sent from the getter`);
  }
  t.same(await within(10_000, replied, 'reply'), { asked: 1 }, 'request/reply alongside');
});

t.test('what the receiver would refuse, or what would not describe the value, is left to msgpackr', async (t) => {
  const s = sender();
  const wide = Object.fromEntries(Array.from({ length: MAX_RECORD_KEYS + 1 }, (_, k) => [`key${k}`, k]));
  t.same(s.roundTrip(wide), { value: wide, encoded: false }, `${MAX_RECORD_KEYS + 1} keys`);
  const justWide = Object.fromEntries(Array.from({ length: MAX_RECORD_KEYS }, (_, k) => [`key${k}`, k]));
  t.same(s.roundTrip(justWide), { value: justWide, encoded: true }, `${MAX_RECORD_KEYS} keys`);
  let deep: unknown = 1;
  for (let i = 0; i < 70; i++) deep = [deep];
  t.same(s.roundTrip(deep), { value: deep, encoded: false }, 'nested 70 deep');
  // 32 shapes (all the ids) of 30 keys of 60 bytes would pass MAX_STRUCTURE_BYTES at the receiver: those that
  // would go plain.
  const r = sender();
  let plain = 0;
  for (let id = 0; id < 32; id++) {
    const v = Object.fromEntries(Array.from({ length: 30 }, (_, k) => [`${id}-${k}`.padEnd(60, 'k'), k]));
    const got = r.roundTrip(v);
    if (!got.encoded) plain++;
    t.same(got.value, v) || t.fail(`shape ${id}`);
  }
  t.ok(plain > 0, `${plain} of 32 wide shapes went as plain msgpack`);
  t.ok(r.structures.bytes <= MAX_STRUCTURE_BYTES, 'the receiver\'s table stayed within its bound');
  // A getter that deletes a key the values have not reached yet: the shape written no longer describes them.
  const changing: Record<string, unknown> = {};
  Object.defineProperty(changing, 'a', { enumerable: true, get() { delete changing.c; return 1; } });
  changing.b = 2;
  changing.c = 3;
  t.equal(s.encoder.encode(changing), NOT_ENCODED, 'keys that change under the encoder');
  // An object whose prototype is another object (its `constructor` is still Object): for…in would see inherited keys.
  const child = Object.assign(Object.create({ inherited: 1 }) as Record<string, unknown>, { own: 2 });
  t.same(s.roundTrip(child), { value: { own: 2 }, encoded: false }, 'an object with a prototype of its own: only its own keys, by msgpackr');
  // Object.prototype with an enumerable property: for…in would see it.
  (Object.prototype as Record<string, unknown>).polluted = 1;
  try {
    t.equal(s.encoder.encode({ a: 1 }), NOT_ENCODED, 'an Object.prototype with enumerable properties');
  } finally {
    delete (Object.prototype as Record<string, unknown>).polluted;
  }
  t.ok(s.roundTrip({ a: 1 }).encoded, 'and taken again once it has none');
});

t.test('the shared buffer grown for a huge message is let go once messages are ordinary again', async (t) => {
  const encoder = new RecordEncoder();
  const huge = 'h'.repeat(20 * 1024 * 1024);
  t.ok(encoder.encode({ huge }) > 20 * 1024 * 1024, 'a 20 MiB message');
  const grown = pack.encoded.length;
  t.ok(grown > 16 * 1024 * 1024, `the buffer grew to ${grown} bytes`);
  encoder.encode({ small: 1 });
  t.equal(pack.encoded.length, grown, 'kept for the message right after the huge one');
  const n = encoder.encode({ small: 2 });
  t.ok(pack.encoded.length <= 8192, 'let go at the next');
  t.same([...pack.encoded.subarray(0, n)], [0x41, 2], 'and the message is whole');
});

t.test('the tree of shapes seen stays bounded when every message has new keys', async (t) => {
  const s = sender();
  const n = scaled(100_000, 20_000);
  for (let i = 0; i < n; i++) {
    const v = { [`user${i}`]: i, [`other${i}`]: i };
    const got = s.roundTrip(v);
    if (!got.encoded || !isDeepStrictEqual(got.value, v)) { t.fail(`message ${i}`); return; }
  }
  const slots = (s.encoder as unknown as { keySlots: number }).keySlots;
  t.ok(slots <= 65536 + 2, `${n} messages of fresh keys; ${slots} keys remembered`);
});
