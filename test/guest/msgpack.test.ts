// The guest codec (assembly/guest/msgpack.ts) against the public msgpack test vectors of `msgpack-test-suite`:
// every accepted encoding of every vector decodes to the vector's value, and re-encodes to one of its accepted
// encodings (the codec writes the smallest one). Then the typed errors, one per kind of bad input.
import t from 'tap';
import { createRequire } from 'node:module';
import {
  MSGPACK_OK, MSGPACK_E_TRUNCATED, MSGPACK_E_TYPE, MSGPACK_E_LENGTH, MSGPACK_E_DEPTH, MSGPACK_E_LIMIT, MSGPACK_E_UTF8,
  MSGPACK_E_RANGE, MSGPACK_E_TRAILING,
} from '../../assembly/layout.js';
import { Codec, type Described } from './codec.js';

type Vector = Record<string, unknown> & { msgpack: string[] };
const suite = createRequire(import.meta.url)('msgpack-test-suite') as Record<string, Vector[]>;

const bytes = (dashed: string): Uint8Array => Uint8Array.from(dashed === '' ? [] : dashed.split('-').map((h) => parseInt(h, 16)));
const dashed = (b: Uint8Array): string => [...b].map((x) => x.toString(16).padStart(2, '0')).join('-');
const hexOf = (dashedHex: string): string => dashedHex.replaceAll('-', '');

/** Why `d` is not `expected` (a JSON value of the suite: null, boolean, number, string, array, object), or ''. */
function mismatch(d: Described, expected: unknown, exactInt?: bigint): string {
  if (expected === null) return d === null ? '' : 'expected nil';
  if (typeof expected === 'boolean') return d === expected ? '' : `expected ${expected}`;
  if (typeof expected === 'number' || exactInt !== undefined) {
    if (d === null || typeof d !== 'object' || Array.isArray(d)) return 'expected a number';
    const want = exactInt ?? BigInt(Number.isInteger(expected) ? (expected as number) : 0);
    if ('int' in d) return Number.isInteger(expected) || exactInt !== undefined ? (BigInt(d.int) === want ? '' : `int ${d.int}`) : 'int for a fraction';
    if ('uint' in d) return BigInt(d.uint) === want ? '' : `uint ${d.uint}`;
    const n = exactInt !== undefined ? Number(exactInt) : (expected as number);
    if ('f32' in d) return new DataView(Uint32Array.of(parseInt(d.f32, 16)).buffer).getFloat32(0, true) === n ? '' : `f32 ${d.f32}`;
    if ('f64' in d) {
      const dv = new DataView(new ArrayBuffer(8));
      dv.setBigUint64(0, BigInt(`0x${d.f64}`));
      return dv.getFloat64(0) === n ? '' : `f64 ${d.f64}`;
    }
    return 'expected a number';
  }
  if (typeof expected === 'string') {
    return d !== null && typeof d === 'object' && 'str' in d && Buffer.from(d.str, 'hex').toString('utf8') === expected ? '' : 'expected the string';
  }
  if (Array.isArray(expected)) {
    if (!Array.isArray(d) || d.length !== expected.length) return 'expected an array of the same length';
    for (let i = 0; i < d.length; i++) {
      const m = mismatch(d[i]!, expected[i]);
      if (m) return `[${i}]: ${m}`;
    }
    return '';
  }
  const entries = Object.entries(expected as object);
  if (d === null || typeof d !== 'object' || Array.isArray(d) || !('map' in d) || d.map.length !== entries.length) return 'expected a map of the same size';
  for (let i = 0; i < entries.length; i++) {
    const [k, v] = entries[i]!;
    const m = mismatch(d.map[i]![0], k) || mismatch(d.map[i]![1], v);
    if (m) return `{${k}}: ${m}`;
  }
  return '';
}

/** The [seconds, nanoseconds] a timestamp ext (-1) holds, per the spec's three layouts. */
function timestamp(data: Buffer): [number, number] | undefined {
  if (data.length === 4) return [data.readUInt32BE(0), 0];
  if (data.length === 8) {
    const all = data.readBigUInt64BE(0);
    return [Number(all & 0x3ffffffffn), Number(all >> 34n)];
  }
  if (data.length === 12) return [Number(data.readBigInt64BE(4)), data.readUInt32BE(0)];
  return undefined;
}

function check(d: Described, v: Vector): string {
  if ('nil' in v) return mismatch(d, null);
  if ('bool' in v) return mismatch(d, v.bool);
  if ('binary' in v) return d !== null && typeof d === 'object' && 'bin' in d && d.bin === hexOf(v.binary as string) ? '' : 'expected the binary';
  if ('bignum' in v) return mismatch(d, 0, BigInt(v.bignum as string));
  if ('number' in v) return mismatch(d, v.number);
  if ('string' in v) return mismatch(d, v.string);
  if ('array' in v) return mismatch(d, v.array);
  if ('map' in v) return mismatch(d, v.map);
  if ('timestamp' in v) {
    if (d === null || typeof d !== 'object' || !('ext' in d) || d.ext !== -1) return 'expected a timestamp ext';
    const ts = timestamp(Buffer.from(d.data, 'hex'));
    const [sec, nsec] = v.timestamp as [number, number];
    return ts && ts[0] === sec && ts[1] === nsec ? '' : `timestamp ${String(ts)}`;
  }
  if ('ext' in v) {
    const [type, data] = v.ext as [number, string];
    return d !== null && typeof d === 'object' && 'ext' in d && d.ext === type && d.data === hexOf(data) ? '' : 'expected the ext';
  }
  return `unknown vector kind ${Object.keys(v).join(',')}`;
}

const codec = await Codec.load();

t.test('every vector of msgpack-test-suite decodes to its value and re-encodes to an accepted encoding', async (t) => {
  let encodings = 0;
  const groups = Object.keys(suite);
  t.ok(groups.length >= 15, 'the suite has its groups');
  for (const group of groups) {
    for (const vector of suite[group]!) {
      for (const encoding of vector.msgpack) {
        encodings++;
        const input = bytes(encoding);
        const d = codec.describe(input);
        if (typeof d === 'number') {
          t.fail(`${group} ${encoding}: decode failed with ${d}`);
          continue;
        }
        const why = check(d, vector);
        if (why) t.fail(`${group} ${encoding}: ${why} (got ${JSON.stringify(d)})`);
        const again = codec.roundtrip(input);
        if (typeof again === 'number') t.fail(`${group} ${encoding}: roundtrip failed with ${again}`);
        else if (!vector.msgpack.includes(dashed(again))) t.fail(`${group} ${encoding}: re-encoded to ${dashed(again)}, not one of ${vector.msgpack.join(' ')}`);
        if (codec.skip(input) !== MSGPACK_OK) t.fail(`${group} ${encoding}: skip disagrees`);
      }
    }
  }
  t.ok(encodings >= 200, `checked ${encodings} encodings`);
  t.same(codec.aborts, [], 'the module never aborted');
});

t.test('each kind of bad input is its own typed error, at the right place', async (t) => {
  const cases: [string, string, number, number?][] = [
    ['empty input', '', MSGPACK_E_TRUNCATED, 0],
    ['0xc1 never used', 'c1', MSGPACK_E_TYPE, 0],
    ['0xc1 inside an array', '92-01-c1', MSGPACK_E_TYPE, 2],
    ['uint16 cut short', 'cd-01', MSGPACK_E_TRUNCATED],
    ['float64 cut short', 'cb-00-00-00', MSGPACK_E_TRUNCATED],
    ['array missing items', '93-cd-00-01-02', MSGPACK_E_TRUNCATED],
    ['array declaring more items than bytes', '93-01-02', MSGPACK_E_LENGTH],
    ['str8 longer than the input', 'd9-05-61-62', MSGPACK_E_LENGTH],
    ['bin32 of 4 GiB', 'c6-ff-ff-ff-ff-00', MSGPACK_E_LIMIT],
    ['bin8 longer than the input', 'c4-03-00', MSGPACK_E_LENGTH],
    ['array32 declaring more items than bytes', 'dd-00-01-00-00-01', MSGPACK_E_LENGTH],
    ['map16 declaring more pairs than bytes', 'de-00-03-a1-61-01', MSGPACK_E_LENGTH],
    ['ext8 longer than the input', 'c7-09-01-00', MSGPACK_E_LENGTH],
    ['ext header without its type', 'd4', MSGPACK_E_TRUNCATED],
    ['bytes after the value', '01-02', MSGPACK_E_TRAILING, 1],
    ['overlong UTF-8', 'a2-c0-80', MSGPACK_E_UTF8],
    ['a lone surrogate in UTF-8', 'a3-ed-a0-80', MSGPACK_E_UTF8],
    ['UTF-8 cut inside a character', 'a1-e2', MSGPACK_E_UTF8],
  ];
  for (const [what, hex, code, at] of cases) {
    const input = bytes(hex);
    t.equal(codec.roundtrip(input), code, what);
    t.equal(codec.skip(input), what.includes('UTF-8') ? MSGPACK_OK : code, `${what} (skip)`);
    if (at !== undefined) t.equal(codec.errorOffset(input), at, `${what}: offset`);
  }
  t.same(codec.aborts, [], 'the module never aborted');
});

t.test('nesting past the depth limit is DEPTH, for both readValue and skip; at the limit it decodes', async (t) => {
  const nested = (n: number) => Uint8Array.from([...Array(n).fill(0x91), 0xc0]);
  t.equal(codec.roundtrip(nested(65), 64), MSGPACK_E_DEPTH, '65 nested arrays with a limit of 64');
  t.equal(codec.skip(nested(65), 64), MSGPACK_E_DEPTH);
  t.same(codec.roundtrip(nested(64), 64), nested(64), '64 nested arrays round-trip');
  t.equal(codec.skip(nested(64), 64), MSGPACK_OK);
  t.equal(codec.roundtrip(nested(100_000), 64), MSGPACK_E_DEPTH, '100000 levels: an error, not a stack overflow');
  t.equal(codec.skip(nested(100_000), 64), MSGPACK_E_DEPTH);
  t.same(codec.roundtrip(nested(512), 1e9), nested(512), 'a limit above 512 is clamped to 512: 512 levels decode');
  t.equal(codec.roundtrip(nested(513), 1e9), MSGPACK_E_DEPTH, 'and 513 do not');
  t.equal(codec.skip(nested(513), 1e9), MSGPACK_E_DEPTH);
  const maps = Uint8Array.from([...Array(70).fill(0).flatMap(() => [0x81, 0xa0]), 0xc0]);
  t.equal(codec.roundtrip(maps, 64), MSGPACK_E_DEPTH, 'maps count as levels too');
  t.same(codec.aborts, [], 'the module never aborted');
});

t.test('typed readers and writers', async (t) => {
  const { pack } = await import('msgpackr');
  const good = pack([-5_000_000_000, 4_000_000_000, 1.5, 'héllo', Buffer.from([1, 2, 3]), true, null]);
  const back = codec.typed(good);
  t.ok(back instanceof Uint8Array, 'reads and writes the array');
  if (back instanceof Uint8Array) {
    const { unpack } = await import('msgpackr');
    t.same(unpack(back), [-5_000_000_000, 4_000_000_000, 1.5, 'héllo', Uint8Array.from([1, 2, 3]), true, null]);
  }
  t.equal(codec.typed(pack([1, -1, 1.5, 's', Buffer.from([]), true, null])), MSGPACK_E_RANGE, 'readU32 of -1');
  t.equal(codec.typed(pack([1, 2 ** 32, 1.5, 's', Buffer.from([]), true, null])), MSGPACK_E_RANGE, 'readU32 of 2^32');
  t.equal(codec.typed(bytes('97-cf-80-00-00-00-00-00-00-00-01-01-a0-c4-00-c3-c0')), MSGPACK_E_RANGE, 'readI64 of 2^63');
  t.equal(codec.typed(pack([1.5, 2, 3, 's', Buffer.from([]), true, null])), MSGPACK_E_RANGE, 'readI64 of 1.5');
  t.equal(codec.typed(pack([2 ** 64, 2, 3, 's', Buffer.from([]), true, null])), MSGPACK_E_RANGE, 'readI64 of the float 2^64');
  t.equal(codec.typed(pack([1, 2, 'x', 's', Buffer.from([]), true, null])), MSGPACK_E_TYPE, 'readF64 of a string');
  t.equal(codec.typed(pack([1, 2, 3, 's', 'not binary', true, null])), MSGPACK_E_TYPE, 'readBinary of a string');
  t.equal(codec.typed(pack([1, 2, 3, 's', Buffer.from([]), 1, null])), MSGPACK_E_TYPE, 'readBool of an int');
  t.equal(codec.typed(pack([1, 2, 3, 's', Buffer.from([]), true, 0])), MSGPACK_E_TYPE, 'readNil of an int');
  t.equal(codec.typed(bytes('97-01-02-cb-00-00-00-00-00')), MSGPACK_E_TRUNCATED, 'a float cut short');
  t.same(codec.aborts, [], 'the module never aborted');
});
