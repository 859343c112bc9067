// fast-check arbitraries, and a comparison of decoded values, that more than one test file uses.
import fc from 'fast-check';

/** The values the encoder takes: what `send` is usually given. */
export const supported = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.oneof(
      fc.integer(), fc.integer({ min: 0, max: 300 }), fc.integer({ min: -200, max: 0 }), fc.double(), fc.constantFrom(0x3f, 0x40, 0x7f, 0xff, 0x100, 2 ** 32, -(2 ** 31) - 1, -0),
      fc.string(), fc.string({ unit: 'binary' }), fc.string({ unit: 'grapheme', minLength: 20, maxLength: 120 }),
      fc.constantFrom('\ud800', 'a\udc00b', 'x'.repeat(31), 'é'.repeat(20), '€'.repeat(100)),
      fc.boolean(), fc.constant(null), fc.constant(undefined),
      fc.uint8Array({ maxLength: 300 }).map((u) => Buffer.from(u)), fc.uint8Array({ maxLength: 40 }),
    ),
    fc.array(tie('value'), { maxLength: 20 }),
    // Keys from a small set, so that shapes repeat; and now and then a fresh one.
    fc.dictionary(fc.oneof(fc.constantFrom('a', 'b', 'id', 's', 'f', 'x', '0', '__proto__', 'toString', 'é'), fc.string({ maxLength: 8 })), tie('value'), { maxKeys: 6, noNullPrototype: true }),
  ),
})).value;

/**
 * `v` made comparable with isDeepStrictEqual, deep: Dates as their time (two invalid Dates are not equal to it:
 * NaN !== NaN) and, unless `keepBytes`, Buffers as plain Uint8Arrays (msgpackr gives a bin as one or the other
 * depending on what it decoded from).
 */
export function comparable(v: unknown, keepBytes = false): unknown {
  if (v instanceof Uint8Array) return keepBytes ? v : new Uint8Array(v);
  if (v instanceof Date) return `Date ${v.getTime()}`;
  if (Array.isArray(v)) return v.map((x) => comparable(x, keepBytes));
  if (v instanceof Map) return new Map([...v].map(([k, x]) => [comparable(k, keepBytes), comparable(x, keepBytes)]));
  if (v instanceof Set) return new Set([...v].map((x) => comparable(x, keepBytes)));
  if (v !== null && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(v)) {
      const value = comparable((v as Record<string, unknown>)[key], keepBytes);
      Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return v;
}
