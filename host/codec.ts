/**
 * Decoding msgpack that a peer wrote: one place for every receiver (channel, bus, the framed transports).
 *
 * msgpackr decodes whatever it is given, and a peer chooses what that is. Three things go wrong with hostile
 * bytes, and a linear pre-scan of the record (`checkMsgpack`) rules each out before msgpackr runs:
 *
 *  - Amplification. One byte (0x80, an empty map) becomes a JS object of ~60 bytes: a 2 MiB record of them grew a
 *    receiver's heap by 128 MiB and held its event loop for half a second. The scan adds up what the decoded
 *    value will roughly cost on the heap (`HEAP_*` below: per value, container, map entry, string, binary) and
 *    refuses a record whose estimate passes `maxDecodedRatio` × its length (plus `slackBytes`, so that small
 *    records never trip it). Ordinary data sits far below: an array of small integers costs ~8 bytes per byte,
 *    objects like `{id: 1}` ~18; a record of empty maps ~56, of empty arrays ~40.
 *  - Deep nesting. msgpackr decodes recursively, so 100k nested one-element arrays overflow the stack. The scan
 *    walks with its own stack and refuses past `maxDepth`.
 *  - Bytes msgpackr does not refuse: 0xC1 ("never used") decodes to an internal marker object; extension types
 *    run msgpackr's extension decoders (structured-clone references, string bundles that move the read
 *    position, error and RegExp constructors). Our encoder (a Packr with default options) emits only two:
 *    type 0 (undefined) and −1 (timestamps), so those are the only ones accepted. Trailing bytes after the one
 *    value are refused too (msgpackr would silently drop them).
 *
 * Every refusal is ERR_SHMBUS_CORRUPT with `details.reason` (and the limit passed, for the two limits).
 *
 * Cost: a loop over the tokens (strings and binaries are skipped, not read), a few ns per value; see
 * bench/decode.ts for numbers next to msgpackr's own decode.
 */
import { Unpackr } from 'msgpackr';
import { BadArgumentError, CorruptError } from './errors.js';

/** How much a peer's record may cost us to decode. */
export interface DecodeLimits {
  /** The decoded value's estimated heap size may be at most this many times the record's length (+ slackBytes). */
  maxDecodedRatio: number;
  /** Estimated heap bytes every record may use whatever its length, so small records never trip the ratio. */
  slackBytes: number;
  /** Deepest nesting of arrays and maps accepted. */
  maxDepth: number;
}

/** The defaults: 32 × the record (+ 64 KiB), nesting up to 512. */
export const DEFAULT_DECODE_LIMITS: Readonly<DecodeLimits> = Object.freeze({ maxDecodedRatio: 32, slackBytes: 65536, maxDepth: 512 });

/** Fills in the defaults and checks the values a caller gave. */
export function decodeLimits(given?: Partial<DecodeLimits>): DecodeLimits {
  const limits = { ...DEFAULT_DECODE_LIMITS, ...given };
  for (const [key, value] of Object.entries(limits)) {
    if (typeof value !== 'number' || !(value >= 0) || !Number.isFinite(value)) {
      throw new BadArgumentError(`decode limit ${key} must be a finite non-negative number`, { [key]: value });
    }
  }
  return limits;
}

// Rough heap cost (V8, 64-bit, pointer compression off) of what msgpackr makes of each kind of token. Only the
// order of magnitude matters: the limit is a ratio with a wide margin.
/** Every value occupies a slot in its parent (array element, property). */
const HEAP_VALUE = 8;
/** A JS array, before its elements. */
const HEAP_ARRAY = 32;
/** A plain object (maps decode to objects), before its properties. */
const HEAP_MAP = 48;
/** Each property of an object beyond the value's slot (key slot, descriptor). */
const HEAP_ENTRY = 16;
/** A string, plus its bytes. */
const HEAP_STRING = 16;
/** A copied binary (Uint8Array + ArrayBuffer), plus its bytes. */
const HEAP_BINARY = 96;
/** A boxed number (float64, 64-bit integers) or a Date. */
const HEAP_BOXED = 16;

/** Extension types our encoder writes: 0 (undefined, fixext 1) and −1 (timestamp, 4/8/12 bytes). */
const EXT_UNDEFINED = 0x00;
const EXT_TIMESTAMP = 0xff;

/** One scratch stack per process: records are checked one at a time (decoding is synchronous). */
let stack = new Float64Array(64);

function refuse(reason: string, details: Record<string, unknown>): never {
  throw new CorruptError('peer data is not acceptable msgpack', { reason, ...details });
}

/**
 * Checks that `bytes` hold exactly one msgpack value that msgpackr may decode safely within `limits`; throws
 * ERR_SHMBUS_CORRUPT otherwise. Never reads outside `bytes`.
 */
export function checkMsgpack(bytes: Uint8Array, limits: DecodeLimits = DEFAULT_DECODE_LIMITS): void {
  checkMsgpackRange(bytes, 0, bytes.length, limits);
}

/**
 * `checkMsgpack` for the record `bytes[start … end)` of a larger buffer (a ring's whole memory): nothing outside
 * the range is read, and positions in errors count from `start`. Lets a receiver check and decode in place,
 * without a view per record.
 */
export function checkMsgpackRange(bytes: Uint8Array, start: number, end: number, limits: DecodeLimits = DEFAULT_DECODE_LIMITS): void {
  if (!(start >= 0 && end >= start && end <= bytes.length)) throw new BadArgumentError('record range outside the buffer', { start, end, length: bytes.length });
  const length = end - start;
  const budget = limits.maxDecodedRatio * length + limits.slackBytes;
  let pos = start;
  let cost = 0;
  let depth = 0;
  // Values still to read at the current level; the levels above wait on `stack`.
  let need = 1;
  while (need > 0) {
    if (pos >= end) refuse('truncated', { at: pos - start, length });
    const t = bytes[pos++]!;
    need--;
    cost += HEAP_VALUE;
    if (t < 0x80 || t >= 0xe0) {
      // fixint, the commonest token: take the whole run of them at this level in one tight loop.
      while (need > 0 && pos < end) {
        const u = bytes[pos]!;
        if (u >= 0x80 && u < 0xe0) break;
        pos++;
        need--;
        cost += HEAP_VALUE;
      }
      while (need === 0 && depth > 0) need = stack[--depth]!;
      continue;
    }
    let children = 0;
    let skip = 0;
    if (t < 0x90) {
      children = (t & 0x0f) * 2;
      cost += HEAP_MAP + (t & 0x0f) * HEAP_ENTRY;
    } else if (t < 0xa0) {
      children = t & 0x0f;
      cost += HEAP_ARRAY;
    } else if (t < 0xc0) {
      skip = t & 0x1f;
      cost += HEAP_STRING + skip;
    } else {
      switch (t) {
        case 0xc0: case 0xc2: case 0xc3: break;
        case 0xc1: refuse('byte 0xc1 is never used in msgpack', { at: pos - 1 - start });
        case 0xc4: case 0xd9: skip = len(bytes, start, end, pos, 1); pos += 1; cost += (t === 0xc4 ? HEAP_BINARY : HEAP_STRING) + skip; break;
        case 0xc5: case 0xda: skip = len(bytes, start, end, pos, 2); pos += 2; cost += (t === 0xc5 ? HEAP_BINARY : HEAP_STRING) + skip; break;
        case 0xc6: case 0xdb: skip = len(bytes, start, end, pos, 4); pos += 4; cost += (t === 0xc6 ? HEAP_BINARY : HEAP_STRING) + skip; break;
        case 0xca: case 0xcc: case 0xcd: case 0xce: case 0xd0: case 0xd1: case 0xd2:
          skip = t === 0xca || t === 0xce || t === 0xd2 ? 4 : t === 0xcd || t === 0xd1 ? 2 : 1;
          break;
        case 0xcb: case 0xcf: case 0xd3: skip = 8; cost += HEAP_BOXED; break;
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
          pos = ext(bytes, start, end, pos, 1 << (t - 0xd4));
          cost += HEAP_BOXED;
          break;
        case 0xc7: case 0xc8: case 0xc9: {
          const size = t === 0xc7 ? 1 : t === 0xc8 ? 2 : 4;
          const n = len(bytes, start, end, pos, size);
          pos = ext(bytes, start, end, pos + size, n);
          cost += HEAP_BOXED;
          break;
        }
        case 0xdc: case 0xdd: {
          const size = t === 0xdc ? 2 : 4;
          children = len(bytes, start, end, pos, size);
          pos += size;
          cost += HEAP_ARRAY;
          break;
        }
        case 0xde: case 0xdf: {
          const size = t === 0xde ? 2 : 4;
          const n = len(bytes, start, end, pos, size);
          pos += size;
          children = n * 2;
          cost += HEAP_MAP + n * HEAP_ENTRY;
          break;
        }
        default: refuse('unknown msgpack token', { at: pos - 1 - start, token: '0x' + t.toString(16) });
      }
    }
    if (skip > 0) {
      if (skip > end - pos) refuse('truncated', { at: pos - start, need: skip, length });
      pos += skip;
    }
    if (children > 0) {
      // Every value takes at least one byte: a count past what is left cannot be right (and must not be trusted
      // for anything, msgpackr allocates arrays by it).
      if (children > end - pos) refuse('truncated', { at: pos - start, declared: children, left: end - pos });
      // Checked here (and once at the end) rather than per value: only containers grow the cost fast.
      if (cost > budget) tooLarge(limits, length, cost);
      if (depth >= limits.maxDepth) refuse('nested too deeply', { limit: 'maxDepth', maxDepth: limits.maxDepth });
      if (depth === stack.length) {
        const bigger = new Float64Array(stack.length * 2);
        bigger.set(stack);
        stack = bigger;
      }
      stack[depth++] = need;
      need = children;
    }
    while (need === 0 && depth > 0) need = stack[--depth]!;
  }
  if (pos !== end) refuse('trailing bytes after the value', { at: pos - start, length });
  if (cost > budget) tooLarge(limits, length, cost);
}

function tooLarge(limits: DecodeLimits, length: number, estimatedBytes: number): never {
  refuse('decoded value would be too large for the record', { limit: 'maxDecodedRatio', maxDecodedRatio: limits.maxDecodedRatio, length, estimatedBytes });
}

/** A big-endian length of `size` bytes at `pos`. */
function len(bytes: Uint8Array, start: number, end: number, pos: number, size: number): number {
  if (size > end - pos) refuse('truncated', { at: pos - start, need: size, length: end - start });
  let n = 0;
  for (let i = 0; i < size; i++) n = n * 256 + bytes[pos + i]!;
  return n;
}

/** An extension of `n` data bytes whose type byte is at `pos`; returns the position after it. */
function ext(bytes: Uint8Array, start: number, end: number, pos: number, n: number): number {
  if (n + 1 > end - pos) refuse('truncated', { at: pos - start, need: n + 1, length: end - start });
  const type = bytes[pos]!;
  const ok = type === EXT_UNDEFINED ? n === 1 : type === EXT_TIMESTAMP && (n === 4 || n === 8 || n === 12);
  if (!ok) refuse('msgpack extension type not accepted', { at: pos - start, type: type > 127 ? type - 256 : type, length: n });
  return pos + 1 + n;
}

/**
 * Decodes one record from a peer: `checkMsgpack`, then `unpackr`. Whatever msgpackr still throws is
 * ERR_SHMBUS_CORRUPT too, with the cause.
 */
export function decodeMsgpack(unpackr: Unpackr, bytes: Uint8Array, limits: DecodeLimits = DEFAULT_DECODE_LIMITS): unknown {
  checkMsgpack(bytes, limits);
  try {
    return unpackr.unpack(bytes);
  } catch (cause) {
    throw new CorruptError('peer data does not decode', { reason: 'msgpack', length: bytes.length, cause: String(cause) });
  }
}

/** Records up to this long are decoded from a private copy (see decodeMsgpackAt). */
const SMALL_RECORD = 128;
const scratch = Buffer.allocUnsafeSlow(SMALL_RECORD);
const scratchRange = { start: 0, end: 0 };

/**
 * `decodeMsgpack` of the record `bytes[start … end)` (a ring's whole memory), bounded the same way. A small
 * record is first copied into one reused private buffer, then checked and decoded there: no view and no DataView
 * per record (msgpackr caches its DataView on the buffer), msgpackr reads short strings in JS (it takes its
 * native extractor, slow for a few bytes, once the buffer's end is past ~140), and a peer rewriting the shared
 * bytes cannot change them between the check and the decode. Larger records decode from a view, as before.
 */
export function decodeMsgpackAt(unpackr: Unpackr, bytes: Uint8Array, start: number, end: number, limits: DecodeLimits = DEFAULT_DECODE_LIMITS): unknown {
  const length = end - start;
  let source: Uint8Array;
  let range: { start: number; end: number } | undefined;
  if (length <= SMALL_RECORD && start >= 0 && end <= bytes.length) {
    for (let i = 0; i < length; i++) scratch[i] = bytes[start + i]!;
    checkMsgpackRange(scratch, 0, length, limits);
    source = scratch;
    scratchRange.end = length;
    range = scratchRange;
  } else {
    checkMsgpackRange(bytes, start, end, limits);
    source = bytes.subarray(start, end);
  }
  try {
    return unpackr.unpack(source, range);
  } catch (cause) {
    throw new CorruptError('peer data does not decode', { reason: 'msgpack', length, cause: String(cause) });
  }
}

const plainUnpackr = new Unpackr({ useRecords: false, copyBuffers: true });

/** `decodeMsgpack` with a plain decoder (no shared structures), for handshake lines and other one-off records. */
export function decodePeer(bytes: Uint8Array, limits: DecodeLimits = DEFAULT_DECODE_LIMITS): unknown {
  return decodeMsgpack(plainUnpackr, bytes, limits);
}
