// plugins/codec.ts, the plugin host's own msgpack for small plain values, against msgpackr and host/codec.ts's
// checked decoder: what it encodes decodes as msgpackr's encoding does; what it decodes decodes as the checked
// decoder decodes it (binaries included: a Buffer from a small record, a Uint8Array from a larger one); whatever it
// does not take it hands back (undefined / BAIL_VALUE / false), and no input makes it throw or accept a record the
// checked decoder refuses. The msgpack-test-suite vectors, then properties over random values and random bytes.
import t from 'tap';
import fc from 'fast-check';
import { createRequire } from 'node:module';
import { isDeepStrictEqual } from 'node:util';
import { Packr, Unpackr } from 'msgpackr';
import { decodeMsgpackAt } from '../../host/codec.js';
import { BAIL_VALUE, SMALL_RECORD, encodeValue, keep, readReply, readValue, reply } from '../../plugins/codec.js';
import { fileTimeout, scaled } from '../helpers.js';

fileTimeout(t, 90, 10);

// The host's own pair (plugins/plugin.ts).
const packr = new Packr({ useRecords: false, moreTypes: false });
const unpackr = new Unpackr({ useRecords: false, copyBuffers: true });

type Vector = Record<string, unknown> & { msgpack: string[] };
const suite = createRequire(import.meta.url)('msgpack-test-suite') as Record<string, Vector[]>;
const bytesOf = (dashed: string): Uint8Array => Uint8Array.from(dashed === '' ? [] : dashed.split('-').map((h) => parseInt(h, 16)));

/** `record` placed at an offset of a larger array, as records sit in a ring. */
function inMemory(record: Uint8Array, at = 3): Uint8Array {
  const u8 = new Uint8Array(at + record.length + 5).fill(0xc1);
  u8.set(record, at);
  return u8;
}

/** The checked decoder's value of the record, or the error it throws. */
function checked(u8: Uint8Array, start: number, end: number): { value?: unknown; error?: unknown } {
  try {
    return { value: decodeMsgpackAt(unpackr, u8, start, end) };
  } catch (error) {
    return { error };
  }
}

/** '' when readValue agrees with the checked decoder on `record` (or left it to it), else why not. */
function agrees(record: Uint8Array): string {
  const u8 = inMemory(record);
  const start = 3;
  const end = 3 + record.length;
  const mine = readValue(u8, start, end);
  if (mine === BAIL_VALUE) return '';
  const ref = checked(u8, start, end);
  if (ref.error) return `accepted what the checked decoder refuses (${String(ref.error)})`;
  return isDeepStrictEqual(mine, ref.value) ? '' : `decoded ${String(mine)} where the checked decoder gives ${String(ref.value)}`;
}

t.test('msgpack-test-suite: every encoding of every vector decodes as the checked decoder decodes it, or is left to it', async (t) => {
  let taken = 0;
  let all = 0;
  const bad: string[] = [];
  for (const [group, vectors] of Object.entries(suite)) {
    for (const vector of vectors) {
      for (const dashed of vector.msgpack) {
        all++;
        const record = bytesOf(dashed);
        const why = agrees(record);
        if (why) bad.push(`${group} ${dashed}: ${why}`);
        if (readValue(inMemory(record), 3, 3 + record.length) !== BAIL_VALUE) taken++;
      }
    }
  }
  t.same(bad, [], `${all} encodings`);
  t.ok(taken > all / 2, `most are taken here (${taken} of ${all}): the plain kinds`);
});

t.test('values: what encodeValue writes decodes as msgpackr\'s own encoding of the value', async (t) => {
  const samples: unknown[] = [
    0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 2 ** 32 - 1, 2 ** 32, -1, -32, -33, -128, -129, -32768, -32769,
    -(2 ** 31), -(2 ** 31) - 1, 1.5, -0, NaN, Infinity, -Infinity, 2 ** 53, '', 'a', 'abc', 'x'.repeat(31), 'x'.repeat(32),
    'x'.repeat(255), 'x'.repeat(256), 'x'.repeat(70000), 'é', 'héllo wörld', '\ud800', 'x'.repeat(30) + 'é', '€'.repeat(11), true, false, null,
    { id: 12345, sym: 'ACME', px: 12.5, qty: 100, side: 'buy', note: 'x'.repeat(47) }, [1, [2, [3]]], { a: { b: { c: [] } } },
    Buffer.from([1, 2, 3]), new Uint8Array(300), Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, i])),
    Array.from({ length: 20 }, (_, i) => i), JSON.parse('{"__proto__": 7}'), { hasOwnProperty: 1, x: 2 },
    undefined, 10n, new Date(0), new Map([[1, 2]]), Object.create(null), [undefined], { deep: JSON.parse('['.repeat(70) + ']'.repeat(70)) },
  ];
  for (const v of samples) {
    const mine = encodeValue(v, -1);
    const expected = unpackr.unpack(packr.pack(v));
    if (mine) t.ok(isDeepStrictEqual(unpackr.unpack(Buffer.from(mine)), expected), `${describe(v)} encodes to the same value`);
    else t.pass(`${describe(v)} is left to msgpackr`);
    const request = encodeValue(v, 1234567);
    if (request) t.ok(isDeepStrictEqual(unpackr.unpack(Buffer.from(request)), [1234567, expected]), `${describe(v)} as a request [id, value]`);
  }
  t.equal(encodeValue(undefined, -1), undefined, 'undefined is msgpackr\'s (an extension)');
  t.equal(encodeValue({ a: 1n }, 5), undefined, 'a BigInt anywhere in the value is msgpackr\'s');
  const a = encodeValue({ a: 1 }, 1)!;
  const kept = keep(a);
  encodeValue({ b: 2 }, 2);
  t.same(unpackr.unpack(Buffer.from(kept)), [1, { a: 1 }], 'keep copies the scratch bytes the next encode overwrites');
  const own = new Uint8Array(4);
  t.equal(keep(own), own, 'keep leaves other arrays alone');
});

function describe(v: unknown): string {
  if (typeof v === 'string') return `string(${v.length})`;
  if (typeof v === 'bigint') return 'bigint';
  if (v instanceof Uint8Array) return `bytes(${v.length})`;
  try { return (JSON.stringify(v) ?? String(v)).slice(0, 40); } catch { return typeof v; }
}

t.test('property: random values encode as msgpackr\'s encoding decodes, and their records decode as the checked decoder does', async (t) => {
  const value = fc.anything({
    withDate: true, withTypedArray: true, withBigInt: true, withMap: true, withSet: false, withNullPrototype: true,
    withBoxedValues: false, withSparseArray: true, maxDepth: 5,
  });
  let encoded = 0;
  let decoded = 0;
  fc.assert(fc.property(value, fc.integer({ min: 0, max: 0x7fffffff }), (v, id) => {
    let reference: Uint8Array;
    try {
      reference = new Uint8Array(packr.pack([id, v]));
    } catch {
      encodeValue(v, id); // msgpackr cannot encode it: this path must not throw either (it hands it over)
      return true;
    }
    let expected: [number, unknown];
    try {
      expected = unpackr.unpack(Buffer.from(reference)) as [number, unknown];
    } catch {
      // msgpackr encodes but cannot decode it (a Map with a Date for a key): nothing here may take it either way.
      return encodeValue(v, id) === undefined && agrees(reference) === '';
    }
    const mine = encodeValue(v, id);
    if (mine) {
      encoded++;
      if (!isDeepStrictEqual(unpackr.unpack(Buffer.from(mine)), expected)) return false;
    }
    // Decoding: the reference encoding and ours, in place.
    for (const record of mine ? [reference, keep(mine)] : [reference]) {
      const u8 = inMemory(record, 7);
      if (readReply(u8, 7, 7 + record.length)) {
        decoded++;
        const ref = checked(u8, 7, 7 + record.length);
        if (ref.error || reply.id !== id || !isDeepStrictEqual(reply.value, (ref.value as unknown[])[1])) return false;
      }
      if (agrees(record) !== '') return false;
    }
    return true;
  }), { numRuns: scaled(3000, 300) });
  t.ok(encoded > 0 && decoded > 0, `${encoded} values encoded here, ${decoded} records decoded here`);
});

t.test('property: random and mutated records never throw and are never taken when the checked decoder refuses them', async (t) => {
  const seeds = [
    new Uint8Array(packr.pack([7, { id: 12345, sym: 'ACME', px: 12.5, qty: 100, side: 'buy', note: 'x'.repeat(47) }])),
    new Uint8Array(packr.pack([300, [1, -2, 3.5, 'héllo', null, true, Buffer.from([1, 2])]])),
    new Uint8Array(packr.pack([70000, { a: { b: [{ c: 'd' }] }, e: 'x'.repeat(40) }])),
  ];
  const mutated = fc.tuple(fc.integer({ min: 0, max: seeds.length - 1 }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), fc.nat())
    .map(([i, edits, cut]) => {
      const r = Uint8Array.from(seeds[i]!);
      for (const [at, b] of edits) r[at % r.length] = b;
      return r.subarray(0, cut % 3 === 0 ? cut % (r.length + 1) : r.length);
    });
  let failures = 0;
  const check = (record: Uint8Array): boolean => {
    const u8 = inMemory(record);
    try {
      readReply(u8, 3, 3 + record.length);
      if (agrees(record) !== '') failures++;
    } catch {
      failures++;
    }
    return true;
  };
  fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), check), { numRuns: scaled(30_000, 2000) });
  fc.assert(fc.property(mutated, check), { numRuns: scaled(30_000, 2000) });
  t.equal(failures, 0, 'no throw, no disagreement');
});

t.test('edges: records past SMALL_RECORD, ids the fast path does not read, deep nesting, bad ranges', async (t) => {
  const large = new Uint8Array(packr.pack([1, 'x'.repeat(SMALL_RECORD)]));
  t.notOk(readReply(inMemory(large), 3, 3 + large.length), 'a large record is the checked decoder\'s');
  const negative = new Uint8Array(packr.pack([-1, 'x']));
  t.notOk(readReply(inMemory(negative), 3, 3 + negative.length), 'a negative id is the checked decoder\'s');
  const deep = new Uint8Array(packr.pack([1, JSON.parse('['.repeat(100) + ']'.repeat(100))]));
  t.notOk(readReply(inMemory(deep), 3, 3 + deep.length), 'nesting past 64 levels is the checked decoder\'s');
  const ok = new Uint8Array(packr.pack([2, { a: [1, 2] }]));
  const u8 = inMemory(ok);
  t.notOk(readReply(u8, 3, u8.length + 1), 'a range past the memory is refused');
  t.notOk(readReply(u8, 3, 3 + ok.length - 1), 'a truncated record is refused');
  t.notOk(readReply(u8, 3, 3 + ok.length + 1), 'trailing bytes are refused');
  t.ok(readReply(u8, 3, 3 + ok.length), 'the record itself is taken');
  t.same(reply, { id: 2, value: { a: [1, 2] } });
  // A map key cached under the same slot as another must still decode to its own string.
  const keys = Array.from({ length: 3000 }, (_, i) => `k${i.toString(36)}`);
  const o = Object.fromEntries(keys.slice(0, 100).map((k) => [k, 1]));
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < keys.length; i += 100) {
      const part = Object.fromEntries(keys.slice(i, i + 100).map((k) => [k, i]));
      const record = encodeValue(part, 9)!;
      const m = inMemory(keep(record));
      t.ok(readReply(m, 3, 3 + record.length) && isDeepStrictEqual(reply.value, part), `keys ${i}… decode to themselves (round ${round})`);
    }
  }
  t.ok(isDeepStrictEqual(Object.keys(o), keys.slice(0, 100)));
});
