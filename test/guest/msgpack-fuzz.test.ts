// Fuzzing the guest codec (assembly/guest/msgpack.ts): random bytes and mutated valid encodings always come back
// as a typed error or a value, never a trap (the module's abort import throws, so a trap fails the property);
// random values round-trip through msgpackr → the guest codec → msgpackr unchanged.
import t from 'tap';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { MSGPACK_OK, MSGPACK_E_UTF8 } from '../../assembly/layout.js';
import { scaled } from '../helpers.js';
import { Codec } from './codec.js';

const codec = await Codec.load();
const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'bigint' });

/** A decode gives a value or one of the MSGPACK_E_* codes; a value re-encodes and decodes to the same thing. */
function decodesSafely(bytes: Uint8Array): boolean {
  const out = codec.roundtrip(bytes, 16);
  if (typeof out === 'number') {
    if (out >= 0 || out < -8) throw new Error(`not a MSGPACK_E_* code: ${out}`);
    const skipped = codec.skip(bytes, 16);
    // skip does not validate UTF-8; otherwise it fails exactly where readValue fails.
    if (out !== MSGPACK_E_UTF8 && skipped !== out) throw new Error(`skip says ${skipped}, decode ${out}`);
    return true;
  }
  if (codec.skip(bytes, 16) !== MSGPACK_OK) throw new Error('skip fails where decode succeeds');
  const again = codec.roundtrip(out, 16);
  if (!(again instanceof Uint8Array) || Buffer.compare(again, out) !== 0) throw new Error('the re-encoding does not re-encode to itself');
  return true;
}

/** Values msgpackr and the codec both represent: what a plugin's host sends. */
const { value } = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.maxSafeInteger(),
    fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }),
    fc.double({ noNaN: true }),
    fc.string({ unit: 'grapheme', maxLength: 40 }),
    fc.string({ maxLength: 300 }),
    fc.uint8Array({ maxLength: 300 }),
    fc.array(tie('value'), { maxLength: 20 }),
    fc.dictionary(fc.string({ maxLength: 10 }).filter((k) => k !== '__proto__'), tie('value'), { maxKeys: 20 }),
  ),
}));

/** The same value whatever width each side picked: safe bigints as numbers, -0 as 0, byte arrays as Uint8Array. */
function norm(v: unknown): unknown {
  if (typeof v === 'bigint') return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  if (typeof v === 'number') return Object.is(v, -0) ? 0 : v;
  if (v instanceof Uint8Array) return Uint8Array.from(v);
  if (Array.isArray(v)) return v.map(norm);
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, norm(x)]));
  return v;
}

t.test('random bytes: a value or a typed error, never a trap', async (t) => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), decodesSafely), { numRuns: scaled(50_000) });
  // Bytes drawn from the interesting first bytes: headers with lengths, containers, 0xc1.
  const headers = fc.constantFrom(0x90, 0x9f, 0x80, 0x8f, 0xa5, 0xc1, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xd4, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xff, 0x00);
  fc.assert(fc.property(fc.array(fc.oneof(headers, fc.integer({ min: 0, max: 255 })), { maxLength: 64 }).map((a) => Uint8Array.from(a)), decodesSafely), { numRuns: scaled(50_000) });
  t.same(codec.aborts, [], 'the module never aborted');
});

t.test('mutated valid encodings: a value or a typed error, never a trap', async (t) => {
  const mutation = fc.record({
    flips: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
    cut: fc.option(fc.nat()),
    insert: fc.option(fc.tuple(fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 9 }))),
  });
  fc.assert(fc.property(value, mutation, (v, m) => {
    let bytes = Uint8Array.from(packr.pack(v));
    for (const [at, b] of m.flips) if (bytes.length > 0) bytes[at % bytes.length] = b;
    if (m.insert) {
      const at = m.insert[0] % (bytes.length + 1);
      bytes = Uint8Array.from([...bytes.subarray(0, at), ...m.insert[1], ...bytes.subarray(at)]);
    }
    if (m.cut !== null) bytes = bytes.subarray(0, m.cut % (bytes.length + 1));
    return decodesSafely(bytes);
  }), { numRuns: scaled(20_000) });
  t.same(codec.aborts, [], 'the module never aborted');
});

t.test('random values round-trip: msgpackr → guest decode → guest encode → msgpackr', async (t) => {
  fc.assert(fc.property(value, (v) => {
    const out = codec.roundtrip(packr.pack(v), 64);
    if (typeof out === 'number') throw new Error(`decode failed: ${out}`);
    t.same(norm(packr.unpack(out)), norm(v));
    return true;
  }), { numRuns: scaled(5_000) });
  t.same(codec.aborts, [], 'the module never aborted');
});
