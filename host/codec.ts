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
 * Records (`RecordStructures`, for a channel direction whose sender packs with msgpackr `sequential: true`):
 * a value may define a structure inline (fixext 1, type 0x72 "r", an id byte 0x40–0x7f, then an array of string
 * keys, then that many values) and later name it by its id byte alone, followed by its values. The scan keeps the
 * same table of structures msgpackr keeps while decoding (an id byte with no structure is a plain integer, as for
 * msgpackr), so it knows how many values follow each record. What a peer may define is bounded: at most
 * MAX_RECORD_KEYS keys per structure and MAX_STRUCTURE_BYTES of keys for all 64 ids together; beyond, CORRUPT.
 *
 * Cost: a loop over the tokens (strings and binaries are skipped, not read), a few ns per value; see
 * bench/decode.ts for numbers next to msgpackr's own decode.
 */
import { Packr, Unpackr } from 'msgpackr';
import { BadArgumentError, BadStateError, CorruptError } from './errors.js';

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
  if (given === undefined) return DEFAULT_DECODE_LIMITS;
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
export const HEAP_VALUE = 8;
/** A JS array, before its elements. */
export const HEAP_ARRAY = 32;
/** A plain object (maps decode to objects), before its properties. */
export const HEAP_MAP = 48;
/** Each property of an object beyond the value's slot (key slot, descriptor). */
export const HEAP_ENTRY = 16;
/** A string, plus its bytes. */
export const HEAP_STRING = 16;
/** A copied binary (Uint8Array + ArrayBuffer), plus its bytes. */
export const HEAP_BINARY = 96;
/** A boxed number (float64, 64-bit integers) or a Date. */
export const HEAP_BOXED = 16;

/** Extension types our encoder writes: 0 (undefined, fixext 1) and −1 (timestamp, 4/8/12 bytes; msgpackr writes an
 * invalid Date, `new Date(NaN)`, as a 1-byte timestamp). */
const EXT_UNDEFINED = 0x00;
const EXT_TIMESTAMP = 0xff;

/** Keys one record structure may have. */
export const MAX_RECORD_KEYS = 256;
/** Key bytes (each key's length + HEAP_STRING) all structures of one direction may hold together. */
export const MAX_STRUCTURE_BYTES = 64 * 1024;
/** What one record key of `utf8Length` bytes counts toward MAX_STRUCTURE_BYTES (the sender keeps within it too). */
export function recordKeyBytes(utf8Length: number): number {
  return HEAP_STRING + utf8Length;
}
/** Ids 0x40–0x7f: the one-byte record ids of msgpackr. */
const RECORD_IDS = 64;
/** msgpackr's extension type of an inline record definition ("r"). */
const EXT_RECORD_DEFINITION = 0x72;

/**
 * The record structures a peer defined on one channel direction, as the scan sees them: how many values follow
 * each id. Lives as long as the msgpackr Unpackr that decodes the same records (both learn the same definitions in
 * the same order); after a CORRUPT the connection is over, so neither is used again.
 */
export class RecordStructures {
  /** Values that follow each id (index: id − 0x40); −1: not defined (the byte is a plain integer). */
  readonly fields = new Int32Array(RECORD_IDS).fill(-1);
  private readonly keyBytes = new Int32Array(RECORD_IDS);
  private total = 0;

  /** Key bytes held by all structures now. */
  get bytes(): number {
    return this.total;
  }

  /** Key bytes structure `id` (0–63) holds (0 when none is defined). */
  keyBytesOf(id: number): number {
    return this.keyBytes[id]!;
  }

  /** Whether a definition of `id` (0–63) costing `keyBytes` stays within MAX_STRUCTURE_BYTES. */
  fits(id: number, keyBytes: number): boolean {
    return this.total - this.keyBytes[id]! + keyBytes <= MAX_STRUCTURE_BYTES;
  }

  /** @internal a definition of `id` (0–63) with `count` keys costing `keyBytes` was read (by the scan, or by
   * host/unpack.ts RecordDecoder, which also puts a previous state back with it: count −1 for none). */
  define(id: number, count: number, keyBytes: number): void {
    const total = this.total - this.keyBytes[id]! + keyBytes;
    if (total > MAX_STRUCTURE_BYTES) {
      refuse('record structures too large', { limit: 'MAX_STRUCTURE_BYTES', maxStructureBytes: MAX_STRUCTURE_BYTES, bytes: total });
    }
    this.total = total;
    this.keyBytes[id] = keyBytes;
    this.fields[id] = count;
  }
}

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
export function checkMsgpackRange(
  bytes: Uint8Array, start: number, end: number, limits: DecodeLimits = DEFAULT_DECODE_LIMITS, records?: RecordStructures,
): void {
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
    let children = 0;
    let skip = 0;
    if (t < 0x80 || t >= 0xe0) {
      if (records === undefined || t < 0x40 || t >= 0x80 || records.fields[t - 0x40]! < 0) {
        // fixint, the commonest token: take the whole run of them at this level in one tight loop (with records,
        // 0x40–0x7f may name a structure: the loop stops there).
        const top = records === undefined ? 0x80 : 0x40;
        while (need > 0 && pos < end) {
          const u = bytes[pos]!;
          if (u >= top && u < 0xe0) break;
          pos++;
          need--;
          cost += HEAP_VALUE;
        }
        while (need === 0 && depth > 0) need = stack[--depth]!;
        continue;
      }
      // A record of a structure defined earlier: its values follow.
      children = records.fields[t - 0x40]!;
      cost += HEAP_MAP + children * HEAP_ENTRY;
    } else if (t < 0x90) {
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
          if (t === 0xd4 && records !== undefined && pos < end && bytes[pos] === EXT_RECORD_DEFINITION) {
            pos = defineRecord(bytes, start, end, pos + 1, records);
            // The definition is followed by the record's values, as a reference would be.
            children = defined.count;
            cost += HEAP_MAP + HEAP_ARRAY + children * HEAP_ENTRY + defined.keyBytes;
            break;
          }
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

/** What the last defineRecord found. */
const defined = { count: 0, keyBytes: 0 };

/**
 * An inline record definition whose id byte is at `pos` (after 0xd4 0x72): the id, then an array of string keys.
 * Checks it, enters it in `records` (bounded) and returns the position of its first value.
 */
function defineRecord(bytes: Uint8Array, start: number, end: number, pos: number, records: RecordStructures): number {
  if (pos >= end) refuse('truncated', { at: pos - start, length: end - start });
  const id = bytes[pos++]!;
  // msgpackr's one-byte ids; the two-byte form (fixext 2) is never written by our encoder and stays refused.
  if (id < 0x40 || id >= 0x40 + RECORD_IDS) refuse('record definition with an id out of range', { at: pos - 1 - start, id });
  if (pos >= end) refuse('truncated', { at: pos - start, length: end - start });
  const a = bytes[pos++]!;
  let count: number;
  if (a >= 0x90 && a < 0xa0) count = a & 0x0f;
  else if (a === 0xdc || a === 0xdd) {
    const size = a === 0xdc ? 2 : 4;
    count = len(bytes, start, end, pos, size);
    pos += size;
  } else refuse('record definition without an array of keys', { at: pos - 1 - start, token: '0x' + a.toString(16) });
  if (count > MAX_RECORD_KEYS) refuse('record structure with too many keys', { limit: 'MAX_RECORD_KEYS', maxRecordKeys: MAX_RECORD_KEYS, keys: count });
  let keyBytes = 0;
  for (let i = 0; i < count; i++) {
    if (pos >= end) refuse('truncated', { at: pos - start, length: end - start });
    const k = bytes[pos++]!;
    let n: number;
    if (k >= 0xa0 && k < 0xc0) n = k & 0x1f;
    else if (k === 0xd9 || k === 0xda || k === 0xdb) {
      const size = k === 0xd9 ? 1 : k === 0xda ? 2 : 4;
      n = len(bytes, start, end, pos, size);
      pos += size;
    } else refuse('record key is not a string', { at: pos - 1 - start, token: '0x' + k.toString(16) });
    if (n > end - pos) refuse('truncated', { at: pos - start, need: n, length: end - start });
    pos += n;
    keyBytes += recordKeyBytes(n);
  }
  records.define(id - 0x40, count, keyBytes);
  defined.count = count;
  defined.keyBytes = keyBytes;
  return pos;
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
  const ok = type === EXT_UNDEFINED ? n === 1 : type === EXT_TIMESTAMP && (n === 1 || n === 4 || n === 8 || n === 12);
  if (!ok) refuse('msgpack extension type not accepted', { at: pos - start, type: type > 127 ? type - 256 : type, length: n });
  return pos + 1 + n;
}

/**
 * Decodes one record from a peer: `checkMsgpack`, then `unpackr`. Whatever msgpackr still throws is
 * ERR_SHMBUS_CORRUPT too, with the cause. `bytes` must be the caller's own, which no peer can write: they are
 * checked and decoded where they are (for shared memory, decodeMsgpackAt copies first).
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
export const SMALL_RECORD = 128;
const scratch = Buffer.allocUnsafeSlow(SMALL_RECORD);
const scratchRange = { start: 0, end: 0 };

/**
 * `decodeMsgpack` of the record `bytes[start … end)` (a ring's whole memory), bounded the same way. A small
 * record is first copied into one reused private buffer, then checked and decoded there: no view and no DataView
 * per record (msgpackr caches its DataView on the buffer), msgpackr reads short strings in JS (it takes its
 * native extractor, slow for a few bytes, once the buffer's end is past ~140), and a peer rewriting the shared
 * bytes cannot change them between the check and the decode. Larger records are copied too (a copy of the
 * record's own, of the type of `bytes`; a Buffer with `records`). msgpackr gives binary fields
 * the type of what it decodes from: a Buffer up to SMALL_RECORD and with `records` (as RecordBatch does: a channel's
 * `send` delivers Buffers whatever the size), the caller's array otherwise (host/unpack.ts mirrors this).
 */
export function decodeMsgpackAt(
  unpackr: Unpackr, bytes: Uint8Array, start: number, end: number, limits: DecodeLimits = DEFAULT_DECODE_LIMITS, records?: RecordStructures,
): unknown {
  const length = end - start;
  let source: Uint8Array;
  let range: { start: number; end: number } | undefined;
  if (length <= SMALL_RECORD && start >= 0 && end <= bytes.length) {
    for (let i = 0; i < length; i++) scratch[i] = bytes[start + i]!;
    checkMsgpackRange(scratch, 0, length, limits, records);
    source = scratch;
    scratchRange.end = length;
    range = scratchRange;
  } else {
    // A private copy, checked and decoded: msgpackr must read exactly what the scan passed (with records, the
    // scan's table must learn exactly the definitions msgpackr reads), and decode no string from bytes a peer may
    // rewrite meanwhile (host/unpack.ts utf8). The copy has the type of `bytes` (a Buffer's copy is a Buffer), as
    // its binaries then do.
    source = records !== undefined ? Buffer.from(bytes.subarray(start, end)) : Uint8Array.prototype.slice.call(bytes, start, end);
    checkMsgpackRange(source, 0, length, limits, records);
  }
  try {
    return unpackr.unpack(source, range);
  } catch (cause) {
    throw new CorruptError('peer data does not decode', { reason: 'msgpack', length, cause: String(cause) });
  }
}

/**
 * The pair that encodes / decodes values with inline record structures (one per channel direction, see
 * RecordStructures): a Packr that defines each shape the first time it sends it, and the receiver's Unpackr with
 * its scan table. Both keep state across records: every record packed must reach the peer, in order. Channels
 * send with host/pack.ts RecordEncoder, which writes the same bytes as this Packr for the values it takes (the
 * tests hold it to that); this one is the reference, and what older peers send.
 */
export function recordPackr(): Packr {
  return new Packr({ sequential: true });
}

/** The receiving side of `recordPackr`'s records: decode with `decodeMsgpackAt(unpackr, …, structures)`. */
export function recordUnpackr(): { unpackr: Unpackr; structures: RecordStructures } {
  // copyBuffers: binary fields must not stay views into the ring. trusted (implied by sequential) keeps the
  // structures across records, which the scan table mirrors.
  return { unpackr: new Unpackr({ sequential: true, copyBuffers: true }), structures: new RecordStructures() };
}

/** The decoder of plain msgpack (no record structures), shared: it keeps nothing between records. copyBuffers:
 * binary fields of a decoded value must not stay views into a ring, which the peer reuses. */
export const plainUnpackr = new Unpackr({ useRecords: false, copyBuffers: true });
/** The same without copies of binary fields: for bytes that are the receiver's own to keep. */
export const plainUnpackrNoCopy = new Unpackr({ useRecords: false });

let plainEncoder: Packr | undefined;
/** The encoder of plain msgpack, shared (made on first use): with RESET_BUFFER_MODE each result is valid until the
 * next pack, and every caller copies it at once. */
export function plainPackr(): Packr {
  return (plainEncoder ??= new Packr({ useRecords: false }));
}

/** `decodeMsgpack` with a plain decoder (no shared structures), for handshake lines and other one-off records. */
export function decodePeer(bytes: Uint8Array, limits: DecodeLimits = DEFAULT_DECODE_LIMITS): unknown {
  return decodeMsgpack(plainUnpackr, bytes, limits);
}

/** Records up to this long are decoded in batches by RecordBatch; longer ones alone. */
export const BATCH_RECORD = 4096;
/** RecordBatch's copy of the records waiting for their decode. */
const BATCH_BYTES = 64 * 1024;
/**
 * The one copy buffer of every RecordBatch in the process (made on first use): a batch is filled and flushed within
 * one synchronous read of one channel (a channel's readInbox), so two are never pending at once, which `add`
 * checks. One per channel would cost 64 KiB of memory per connection.
 */
let batchScratch: Buffer | undefined;
/** The batch whose records are in batchScratch now. */
let batchOwner: RecordBatch | undefined;

/**
 * Decodes a run of small records with one call into msgpackr instead of one each: msgpackr's `unpack` pays a cost
 * per call (set-up of its module state; short strings through its native slice), `unpackMultiple` once for the run
 * (`npm run bench:encode`: ~355 ns a 44-byte record decoded alone, ~225 in a batch of 100, copy and check included).
 *
 * `add` copies a record into a private buffer (so that a peer rewriting the shared bytes cannot change them between
 * the check and the decode) and checks it there, in order, with the direction's scan table; `flush` decodes all
 * the records added, in order, and hands each value to `out`. Every record is checked to hold exactly one value, so
 * msgpackr's run splits where the records do (verified value by value: a disagreement is CORRUPT). A record that
 * fails its check throws at `add`; those added before it still decode at the next `flush`. A value msgpackr
 * refuses throws CORRUPT at `flush`, after the values before it were handed out.
 */
export class RecordBatch {
  private used = 0;
  /** Where each record added ends in `scratch`. */
  private readonly ends: number[] = [];
  private handed = 0;
  private readonly range = { start: 0, end: 0 };
  private out: (value: unknown) => void = () => {};
  private readonly take = (value: unknown, _from?: number, end?: number): void => {
    if (end !== this.ends[this.handed]) {
      throw new CorruptError('peer data does not decode', { reason: 'msgpack', cause: 'a record\'s value ends elsewhere than the record' });
    }
    this.handed++;
    this.out(value);
  };

  constructor(
    private readonly unpackr: Unpackr,
    private readonly structures: RecordStructures,
    private readonly limits: DecodeLimits,
  ) {}

  /** Decodes one record alone (one too large to batch): `decodeMsgpackAt` with this direction's table. Nothing may
   * be pending (flush first). */
  decodeAlone(bytes: Uint8Array, start: number, end: number): unknown {
    return decodeMsgpackAt(this.unpackr, bytes, start, end, this.limits, this.structures);
  }

  /** Records added and not decoded yet. */
  get pending(): number {
    return this.ends.length;
  }

  /**
   * Copies the record `bytes[start … end)` (at most BATCH_RECORD bytes) and checks it (ERR_SHMBUS_CORRUPT now if it
   * fails, the record not added); its value comes out of the next `flush`. A full buffer is flushed into `out` first.
   */
  add(bytes: Uint8Array, start: number, end: number, out: (value: unknown) => void): void {
    const length = end - start;
    if (!(length >= 0 && length <= BATCH_RECORD && start >= 0 && end <= bytes.length)) {
      throw new BadArgumentError('record range not batchable', { start, end, length: bytes.length });
    }
    if (this.used + length > BATCH_BYTES) this.flush(out);
    if (batchOwner !== this) {
      if (batchOwner !== undefined) throw new BadStateError('two record batches pending at once', {});
      batchOwner = this;
    }
    const s = (batchScratch ??= Buffer.allocUnsafeSlow(BATCH_BYTES));
    const at = this.used;
    if (length <= 256) for (let i = 0; i < length; i++) s[at + i] = bytes[start + i]!;
    else s.set(bytes.subarray(start, end), at);
    try {
      checkMsgpackRange(s, at, at + length, this.limits, this.structures);
    } catch (error) {
      if (this.ends.length === 0) batchOwner = undefined;
      throw error;
    }
    this.used = at + length;
    this.ends.push(this.used);
  }

  /** Decodes the records added, in order, into `out`. */
  flush(out: (value: unknown) => void): void {
    const count = this.ends.length;
    if (count === 0) return;
    const used = this.used;
    const scratch = batchScratch!;
    this.used = 0;
    this.handed = 0;
    this.out = out;
    try {
      if (count === 1) {
        // One record (request/reply, a quiet channel): unpack's range form reads the buffer as it is, no view.
        this.range.end = used;
        out(this.unpackr.unpack(scratch, this.range));
      } else {
        this.unpackr.unpackMultiple(scratch.subarray(0, used), this.take);
        if (this.handed !== count) {
          throw new CorruptError('peer data does not decode', { reason: 'msgpack', cause: 'fewer values than records' });
        }
      }
    } catch (cause) {
      if (cause instanceof CorruptError) throw cause;
      throw new CorruptError('peer data does not decode', { reason: 'msgpack', length: used, cause: String(cause) });
    } finally {
      this.ends.length = 0;
      this.out = () => {};
      batchOwner = undefined;
    }
  }
}
