// The in-place record reader of channels (host/unpack.ts RecordDecoder): for the values `send` takes it gives what
// msgpackr gives; anything else it leaves to the checked way (copy, scan, msgpackr) with the structure tables of
// both in step; and from hostile bytes it never accepts what the checked way refuses, nor reads outside a record.
import t from 'tap';
import fc from 'fast-check';
import { isDeepStrictEqual } from 'node:util';
import { createRequire } from 'node:module';
import { Packr, Unpackr } from 'msgpackr';
import {
  decodeMsgpackAt, recordPackr, recordUnpackr, plainUnpackr, DEFAULT_DECODE_LIMITS, MAX_RECORD_KEYS, MAX_STRUCTURE_BYTES, type DecodeLimits,
} from '../host/codec.js';
import { RecordDecoder, NOT_DECODED, plainRecordDecoder, sharedStructures } from '../host/unpack.js';
import { encodePlain } from '../host/pack.js';
import { ErrorCode, listen, connect, type Channel, type ShmbusError } from '../index.js';
import { supported, comparable } from './arbitraries.js';
import { scaled, unique } from './helpers.js';

/** Equal values (Buffers and Uint8Arrays told apart; invalid Dates equal). */
const same = (a: unknown, b: unknown) => isDeepStrictEqual(comparable(a, true), comparable(b, true));

/** A receiving direction as a channel has it: the in-place reader first, the checked way when it gives up. */
function receiver(limits: DecodeLimits = DEFAULT_DECODE_LIMITS) {
  const { unpackr, structures } = recordUnpackr();
  const fast = new RecordDecoder(sharedStructures(unpackr), structures, limits);
  const counts = { inPlace: 0, checked: 0 };
  return {
    counts,
    structures,
    /** Per structure the reader knows: whether it made a builder for it. */
    builders: () => (fast as unknown as { readers: Array<{ build?: unknown } | undefined> }).readers.filter((x) => x !== undefined).map((x) => x.build !== undefined),
    /** Reads `record` placed at a random spot of a larger buffer with junk around it. */
    decode(record: Uint8Array, junk = 0xc1): unknown {
      const at = 1 + (record.length % 13);
      const memory = Buffer.alloc(at + record.length + 7, junk);
      memory.set(record, at);
      const value = fast.decode(memory, at, at + record.length);
      if (value !== NOT_DECODED) {
        counts.inPlace++;
        return value;
      }
      counts.checked++;
      return decodeMsgpackAt(unpackr, memory, at, at + record.length, limits, structures);
    },
  };
}

/** A receiver of plain msgpack records as a channel has it: the shared plain reader first, then the checked way;
 * the bytes are in a Uint8Array (a ring's memory) the reader sees as a Buffer. */
function plainReceiver(limits: DecodeLimits = DEFAULT_DECODE_LIMITS) {
  const fast = plainRecordDecoder(limits);
  const counts = { inPlace: 0, checked: 0 };
  return {
    counts,
    decode(record: Uint8Array): unknown {
      const at = 3 + (record.length % 11);
      const memory = new Uint8Array(at + record.length + 5).fill(0xc1);
      memory.set(record, at);
      const value = fast.decode(Buffer.from(memory.buffer), at, at + record.length);
      if (value !== NOT_DECODED) {
        counts.inPlace++;
        return value;
      }
      counts.checked++;
      return decodeMsgpackAt(plainUnpackr, memory, at, at + record.length, limits);
    },
  };
}

/** The checked way alone for plain records, from a ring's memory (a Uint8Array). */
function plainChecked(record: Uint8Array): unknown {
  const memory = new Uint8Array(record.length + 9);
  memory.set(record, 9);
  return decodeMsgpackAt(plainUnpackr, memory, 9, memory.length);
}

/** The checked way alone (copy, scan, msgpackr), with tables of its own. */
function checkedReceiver(limits: DecodeLimits = DEFAULT_DECODE_LIMITS) {
  const { unpackr, structures } = recordUnpackr();
  return (record: Uint8Array): unknown => decodeMsgpackAt(unpackr, Buffer.from(record), 0, record.length, limits, structures);
}

/** What a call gives: its value, or the error code it throws. */
function outcome(f: () => unknown): { value?: unknown; code?: string; reason?: string } {
  try {
    return { value: f() };
  } catch (error) {
    const e = error as ShmbusError;
    return { code: e.code ?? String(error), reason: (e.details as { reason?: string } | undefined)?.reason };
  }
}

t.test('the values send takes are all read in place, and equal what msgpackr alone makes of the same bytes', async (t) => {
  let records = 0;
  fc.assert(fc.property(fc.array(supported, { minLength: 1, maxLength: 120 }), (values) => {
    const packr = recordPackr();
    const reference = new Unpackr({ sequential: true, copyBuffers: true });
    const r = receiver();
    for (const v of values) {
      const bytes = Buffer.from(packr.pack(v));
      const expected = reference.unpack(Buffer.from(bytes));
      if (!same(r.decode(bytes), expected)) return false;
      records++;
    }
    // Every value of these is one the reader takes (nesting stays far below 64).
    return r.counts.checked === 0;
  }), { numRuns: scaled(300, 40) });
  t.pass(`${records} records read in place`);
});

t.test('any value: the two ways alternate record by record, with one table of structures, as msgpackr alone', async (t) => {
  const anything = fc.anything({
    withDate: true, withTypedArray: true, withBigInt: true, withMap: true, withSet: true, withNullPrototype: true,
    withBoxedValues: true, withSparseArray: true, maxDepth: 4,
  });
  const mixed = fc.oneof(anything, supported, fc.record({ a: supported, when: fc.oneof(fc.date(), fc.integer(), fc.bigInt()) }));
  const totals = { inPlace: 0, checked: 0 };
  fc.assert(fc.property(fc.array(mixed, { minLength: 1, maxLength: 60 }), (values) => {
    const packr = recordPackr();
    const reference = new Unpackr({ sequential: true, copyBuffers: true });
    const r = receiver();
    for (const v of values) {
      let bytes: Buffer;
      try {
        bytes = Buffer.from(packr.pack(v));
      } catch {
        continue; // msgpackr cannot encode it (a bigint too large)
      }
      let expected: unknown;
      try {
        expected = reference.unpack(Buffer.from(bytes));
      } catch {
        break; // msgpackr cannot read what it wrote (a bigint past 64 bits): nothing to compare with after it
      }
      if (!same(r.decode(bytes), expected)) return false;
    }
    totals.inPlace += r.counts.inPlace;
    totals.checked += r.counts.checked;
    return true;
  }), { numRuns: scaled(300, 40) });
  t.ok(totals.inPlace > 0 && totals.checked > 0, `${totals.inPlace} read in place, ${totals.checked} the checked way`);
});

t.test('hostile bytes: never accepted when the checked way refuses them, never decoded differently', async (t) => {
  // Streams of valid records, then bytes overwritten, cut or appended; each receiver reads the same records.
  const stream = fc.array(supported, { minLength: 1, maxLength: 12 }).map((values) => {
    const packr = recordPackr();
    return values.map((v) => Uint8Array.from(packr.pack(v)));
  });
  const edit = fc.record({
    record: fc.nat(), at: fc.nat(), byte: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0x40, 0x41, 0x72, 0xd4, 0xdc, 0xdd, 0xff, 0x90, 0xc1)),
    kind: fc.constantFrom('set', 'cut', 'append'),
  });
  let refused = 0;
  let compared = 0;
  fc.assert(fc.property(stream, fc.array(edit, { minLength: 1, maxLength: 4 }), (generated, edits) => {
    const records = generated.map((bytes) => Uint8Array.from(bytes)); // fast-check reuses what it generated
    for (const e of edits) {
      const i = e.record % records.length;
      const bytes = records[i]!;
      const at = e.at % (bytes.length + 1);
      if (e.kind === 'set' && at < bytes.length) bytes[at] = e.byte;
      else if (e.kind === 'cut') records[i] = bytes.subarray(0, at);
      else records[i] = Uint8Array.from([...bytes, e.byte]);
    }
    const ours = receiver();
    const checked = checkedReceiver();
    for (const record of records) {
      if (record.length === 0) continue;
      const a = outcome(() => ours.decode(record));
      const b = outcome(() => checked(record));
      compared++;
      if (a.code !== b.code || a.reason !== b.reason || !same(a.value, b.value)) return false;
      if (a.code !== undefined) {
        refused++;
        break; // a CORRUPT ends a connection
      }
    }
    return true;
  }), { numRuns: scaled(3000, 400) });
  t.ok(refused > 0, `${compared} records compared, ${refused} refused by both`);
});

t.test('plain records: read in place as the checked way reads them, binaries of the same types', async (t) => {
  const anything = fc.anything({
    withDate: true, withTypedArray: true, withBigInt: true, withMap: true, withSet: true, withNullPrototype: true, maxDepth: 4,
  });
  const packr = new Packr({ useRecords: false });
  const totals = { inPlace: 0, checked: 0 };
  fc.assert(fc.property(fc.oneof(supported, anything, fc.uint8Array({ minLength: 100, maxLength: 300 })), (v) => {
    let bytes: Uint8Array;
    try {
      bytes = Uint8Array.from(fc.sample(fc.boolean(), 1)[0] ? encodePlain(v) : packr.pack(v));
    } catch {
      return true; // msgpackr cannot encode it (a bigint too large)
    }
    const r = plainReceiver();
    const got = outcome(() => r.decode(bytes));
    const expected = outcome(() => plainChecked(bytes));
    totals.inPlace += r.counts.inPlace;
    totals.checked += r.counts.checked;
    // (A Map with keys msgpackr cannot make into strings is refused by both.)
    return got.code === expected.code && same(got.value, expected.value);
  }), { numRuns: scaled(3000, 400) });
  t.ok(totals.inPlace > 0 && totals.checked > 0, `${totals.inPlace} read in place, ${totals.checked} the checked way`);
  const r = plainReceiver();
  t.same(Object.keys(r.decode(Uint8Array.from([0x81, 0xa9, ...Buffer.from('__proto__'), 0x01])) as object), ['__proto_']);
  t.same(r.decode(Uint8Array.from([0x81, 0x01, 0x02])), { 1: 2 }, 'an integer key: the checked way makes it a string');
  t.same(r.counts, { inPlace: 1, checked: 1 });
  t.ok(Buffer.isBuffer(r.decode(Uint8Array.from([0xc4, 2, 1, 2]))), 'a binary of a short record: a Buffer');
  const long = r.decode(Uint8Array.from([0xc5, 0, 200, ...new Uint8Array(200)])) as Uint8Array;
  t.ok(long instanceof Uint8Array && !Buffer.isBuffer(long), 'of a record past 128 bytes: a Uint8Array, as the checked way makes it');
});

t.test('msgpack-test-suite: every encoding of every vector reads in place as the checked way reads it, or is left to it', async (t) => {
  const suite = createRequire(import.meta.url)('msgpack-test-suite') as Record<string, Array<{ msgpack: string[] }>>;
  const r = plainReceiver();
  let all = 0;
  const bad: string[] = [];
  for (const [group, vectors] of Object.entries(suite)) {
    for (const vector of vectors) {
      for (const dashed of vector.msgpack) {
        all++;
        const bytes = Uint8Array.from(dashed === '' ? [] : dashed.split('-').map((h) => parseInt(h, 16)));
        if (bytes.length === 0) continue;
        const got = outcome(() => r.decode(bytes));
        const expected = outcome(() => plainChecked(bytes));
        if (got.code !== expected.code || !same(got.value, expected.value)) bad.push(`${group} ${dashed}`);
      }
    }
  }
  t.same(bad, [], `${all} encodings`);
  t.ok(r.counts.inPlace > all / 2, `most are read in place (${r.counts.inPlace} of ${all}): the plain kinds`);
});

t.test('plain map keys come from a cache by their bytes, and always decode to themselves', async (t) => {
  const r = plainReceiver();
  // 3000 short keys share 1024 slots: keys that land in one slot replace each other and must still be themselves.
  const keys = Array.from({ length: 3000 }, (_, i) => `k${i.toString(36)}`);
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < keys.length; i += 100) {
      const part = Object.fromEntries(keys.slice(i, i + 100).map((k) => [k, i]));
      const got = r.decode(Uint8Array.from(encodePlain(part)));
      if (!isDeepStrictEqual(got, part)) t.fail(`keys ${i}… (round ${round})`);
    }
  }
  // Keys of other bytes than ASCII, at and past the cached length, and __proto__ from the cache.
  const odd = { 'é': 1, 'ключ': 2, ['x'.repeat(16)]: 3, ['y'.repeat(17)]: 4, '€€€€€': 5, '': 6 };
  for (let round = 0; round < 2; round++) t.same(r.decode(Uint8Array.from(encodePlain(odd))), odd, `other keys (round ${round})`);
  const proto = Uint8Array.from([0x81, 0xa9, ...Buffer.from('__proto__'), 0x01]);
  for (let round = 0; round < 2; round++) t.same(Object.keys(r.decode(proto) as object), ['__proto_'], `__proto__ renamed (round ${round})`);
  t.equal(r.counts.checked, 0, 'all read in place');
});

t.test('plain records, hostile bytes: the same outcome as the checked way', async (t) => {
  const edit = fc.record({ at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }), kind: fc.constantFrom('set', 'cut', 'append') });
  let refused = 0;
  fc.assert(fc.property(supported, fc.array(edit, { minLength: 1, maxLength: 3 }), (v, edits) => {
    let bytes = Uint8Array.from(encodePlain(v));
    for (const e of edits) {
      const at = e.at % (bytes.length + 1);
      if (e.kind === 'set' && at < bytes.length) bytes[at] = e.byte;
      else if (e.kind === 'cut') bytes = bytes.subarray(0, at);
      else bytes = Uint8Array.from([...bytes, e.byte]);
    }
    if (bytes.length === 0) return true;
    const a = outcome(() => plainReceiver().decode(bytes));
    const b = outcome(() => plainChecked(bytes));
    if (a.code !== undefined) refused++;
    return a.code === b.code && a.reason === b.reason && same(a.value, b.value);
  }), { numRuns: scaled(3000, 400) });
  t.ok(refused > 0, `${refused} refused by both`);
});

t.test('what the checked way refuses, the reader gives up on first; limits are the same', async (t) => {
  const corrupt = (r: ReturnType<typeof receiver>, bytes: number[] | Buffer, reason: string) => {
    const before = r.counts.checked;
    const got = outcome(() => r.decode(Uint8Array.from(bytes)));
    t.equal(got.code, ErrorCode.CORRUPT, reason);
    t.match(got.reason, reason);
    t.equal(r.counts.checked, before + 1, `${reason}: given up in place`);
  };
  // An array of 65,535 empty arrays: ~40 heap bytes a byte, past 32 × the record.
  corrupt(receiver(), Buffer.concat([Buffer.from([0xdc, 0xff, 0xff]), Buffer.alloc(0xffff, 0x90)]), 'too large');
  corrupt(receiver({ ...DEFAULT_DECODE_LIMITS, maxDepth: 3 }), [0x91, 0x91, 0x91, 0x91, 0x01], 'nested');
  corrupt(receiver(), [0xc1], '0xc1');
  corrupt(receiver(), [0x92, 0x01], 'truncated');
  corrupt(receiver(), [0x01, 0x02], 'trailing');
  corrupt(receiver(), [0xd4, 0x72, 0x20, 0x91, 0xa1, 0x61, 0x01], 'id out of range');
  corrupt(receiver(), [0xd4, 0x72, 0x40, 0x91, 0x01, 0x01], 'not a string');
  // A reference to 0x40 (defined with no keys), then 0x40 defined again with one, then a byte too many: given up,
  // and the checked way must read the reference as it was when the record began (the new definition taken back).
  const late = receiver();
  t.same(late.decode(Uint8Array.from([0xd4, 0x72, 0x40, 0x90])), {});
  corrupt(late, [0x92, 0x40, 0xd4, 0x72, 0x40, 0x91, 0xa1, 0x61, 0x01, 0x00], 'trailing');
  const tooMany = recordPackr().pack(Object.fromEntries(Array.from({ length: MAX_RECORD_KEYS + 1 }, (_, i) => [`k${i}`, i])));
  corrupt(receiver(), Buffer.from(tooMany), 'too many keys');
  // Definitions whose keys add up past MAX_STRUCTURE_BYTES: the one that passes it is refused.
  const r = receiver();
  const packr = recordPackr();
  const key = 'k'.repeat(250);
  let failed = false;
  for (let n = 0; !failed && n < 64; n++) {
    const value = Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`${key}${n}-${i}`, i]));
    const bytes = Uint8Array.from(packr.pack(value));
    try {
      t.same(r.decode(bytes), value);
    } catch (error) {
      failed = true;
      t.equal((error as ShmbusError).code, ErrorCode.CORRUPT);
      t.ok(r.structures.bytes <= MAX_STRUCTURE_BYTES, 'the table stays within its bound');
    }
  }
  t.ok(failed, 'the definition past the bound is refused');
});

t.test('strings are decoded from a private copy, never from the shared bytes themselves', async (t) => {
  // V8 decodes UTF-8 in two passes: bytes rewritten in between must not reach it. A source whose own string readers
  // throw shows that none is used on it.
  const poisoned = (bytes: Uint8Array) => {
    const memory = Buffer.alloc(bytes.length + 4);
    memory.set(bytes, 2);
    for (const name of ['utf8Slice', 'latin1Slice', 'asciiSlice', 'toString']) {
      Object.defineProperty(memory, name, { value: () => { throw new Error(`${name} on the shared bytes`); } });
    }
    return memory;
  };
  const value = { short: 'abc', ascii: 'x'.repeat(40), utf8: 'é€😀'.repeat(20), long: 'y'.repeat(5000), key: [{ 'ключ': 'значение' }] };
  const { unpackr, structures } = recordUnpackr();
  const records = new RecordDecoder(sharedStructures(unpackr), structures, DEFAULT_DECODE_LIMITS);
  const bytes = Uint8Array.from(recordPackr().pack(value));
  t.same(records.decode(poisoned(bytes), 2, 2 + bytes.length), value, 'records');
  const plainBytes = Uint8Array.from(encodePlain(value));
  t.same(plainRecordDecoder(DEFAULT_DECODE_LIMITS).decode(poisoned(plainBytes), 2, 2 + plainBytes.length), value, 'plain');
});

t.test('what it does not take is decoded the checked way, equal', async (t) => {
  const r = receiver();
  const checked = (bytes: number[]) => {
    const before = r.counts.checked;
    const value = r.decode(Uint8Array.from(bytes));
    t.equal(r.counts.checked, before + 1);
    return value;
  };
  t.same(checked([0x81, 0xa1, 0x61, 0x01]), new Map([['a', 1]]), 'a map');
  t.equal(checked([0xcf, 0, 0, 0, 1, 0, 0, 0, 0]), 2n ** 32n, 'uint 64');
  t.same(checked([0xd6, 0xff, 0, 0, 0, 1]), new Date(1000), 'a timestamp');
  let deep: unknown = 1;
  for (let i = 0; i < 70; i++) deep = [deep];
  t.same(r.decode(Uint8Array.from(recordPackr().pack(deep))), deep, 'nesting past 64');
  // An id byte with no structure is an integer; undefined is fixext 1 type 0.
  t.same(r.decode(Uint8Array.from([0x92, 0x45, 0xd4, 0x00, 0x00])), [0x45, undefined]);
  t.equal(r.decode(Uint8Array.from([0xd4, 0x00, 0x00])), undefined);
});

t.test('keys from the peer only ever make own data properties, also once a builder is made for them', async (t) => {
  const r = receiver();
  const packr = recordPackr();
  // An own `__proto__` key, as JSON.parse makes one.
  const object = JSON.parse('{"__proto__":1,"a\\"b":2,"}),process.exit(3),({":3,"\u2028\\\\":4,"constructor":5,"0":6}') as Record<string, number>;
  for (let i = 0; i < 20; i++) {
    const got = r.decode(Uint8Array.from(packr.pack(object))) as Record<string, unknown>;
    t.equal(Object.getPrototypeOf(got), Object.prototype);
    t.same(Object.keys(got), ['0', '__proto_', 'a"b', '}),process.exit(3),({', '\u2028\\', 'constructor']);
    t.same(Object.values(got), [6, 1, 2, 3, 4, 5]);
  }
  t.equal(r.counts.checked, 0, 'all in place');
  t.ok(r.builders().includes(true), 'a builder was made for the structure used 20 times');
  // A structure of many keys is never compiled, however often it is used.
  const wide = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`key${i}`, i]));
  for (let i = 0; i < 20; i++) t.same(r.decode(Uint8Array.from(packr.pack(wide))), wide);
  t.equal(r.builders().filter(Boolean).length, 1, 'no builder for 40 keys');
});

t.test('plain maps: keys from the peer only ever make own data properties; a key twice; nesting; a map given up', async (t) => {
  const r = plainReceiver();
  const hostile = JSON.parse('{"__proto__":1,"a\\"b":2,"}),process.exit(3),({":3,"\u2028\\\\":4,"constructor":5,"0":6}') as Record<string, number>;
  const nested = { outer: 1, inner: { x: [1, { y: 'z' }], hostile } };
  // The same key twice in one map (msgpackr keeps the last value, in the first one's place).
  const twice = Uint8Array.from([0x83, 0xa1, 0x61, 0x01, 0xa1, 0x62, 0x02, 0xa1, 0x61, 0x03]);
  for (let i = 0; i < 20; i++) {
    const got = r.decode(Uint8Array.from(encodePlain(hostile))) as Record<string, unknown>;
    t.equal(Object.getPrototypeOf(got), Object.prototype);
    t.same(Object.keys(got), ['0', '__proto_', 'a"b', '}),process.exit(3),({', '\u2028\\', 'constructor']);
    t.same(Object.values(got), [6, 1, 2, 3, 4, 5]);
    t.ok(same(r.decode(Uint8Array.from(encodePlain(nested))), plainChecked(Uint8Array.from(encodePlain(nested)))), 'nested maps');
    const dup = r.decode(twice) as Record<string, unknown>;
    t.same(Object.entries(dup), Object.entries(plainChecked(twice) as object), 'a key twice');
  }
  t.equal(r.counts.checked, 0, 'all in place');
  // A map given up half-way (a 64-bit integer inside it): the checked way reads it, and the next one reads in place.
  t.same(r.decode(Uint8Array.from([0x82, 0xa1, 0x61, 0x01, 0xa1, 0x62, 0xcf, 0, 0, 0, 0, 0, 0, 0, 1])), { a: 1, b: 1 });
  t.same(r.decode(Uint8Array.from(encodePlain({ c: 2 }))), { c: 2 });
});

t.test('a channel reads records in place, the others the checked way, in order within one read', async (t) => {
  const url = `shm://${unique('unpack')}`;
  const listener = await listen(url);
  const [a, b] = (await Promise.all([connect(url), listener.acceptNext()])) as [Channel, Channel];
  await listener.close();
  t.teardown(async () => { await a.close(); await b.close(); });
  const decode = RecordDecoder.prototype.decode;
  const counts = { inPlace: 0, given: 0 };
  RecordDecoder.prototype.decode = function (this: RecordDecoder, ...args: Parameters<typeof decode>) {
    const value = decode.apply(this, args);
    if (value === NOT_DECODED) counts.given++;
    else counts.inPlace++;
    return value;
  };
  t.teardown(() => { RecordDecoder.prototype.decode = decode; });
  // A Date is not one the encoder takes: it goes as plain msgpack, and arrives in its place.
  // A large record (past the 4 KiB of a batched one) is read in place too.
  const values = [
    { i: 1, s: 'x' }, { i: 2, when: new Date(7) }, { i: 3, s: 'y' }, [1, [2, { z: null }]], { i: 4, s: 'é' },
    { big: 'y'.repeat(100_000), bin: Buffer.alloc(10_000, 1) }, { i: 5, s: 'z' },
  ];
  for (const v of values) a.send(v);
  const got: unknown[] = [];
  for await (const m of b) {
    got.push(m);
    if (got.length === values.length) break;
  }
  t.same(got, values);
  // The Date went as plain msgpack: the plain reader (a RecordDecoder too) leaves its timestamp to the checked way.
  t.same(counts, { inPlace: 6, given: 1 }, 'every record-structure record read in place');
  t.ok(Buffer.isBuffer((got[5] as { bin: unknown }).bin), 'a binary arrives as a Buffer');
});
