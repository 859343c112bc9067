/**
 * A one-pass decoder for the records `send` writes (host/pack.ts RecordEncoder, or msgpackr with
 * `sequential: true`), reading a peer's bytes where they are (the ring), checking as it goes.
 *
 * Why: a record read alone cost a receiver a copy, the scan of host/codec.ts and one msgpackr `unpack` call, ~360 ns
 * for `{ i, s: 'x'.repeat(30), f }` (~230 ns in a batch of 100, RecordBatch), much of it msgpackr's set-up per
 * call; this reads it in ~210 ns (`npm run bench:encode`), and a round trip pays that at every hop.
 *
 * What it takes: the tokens RecordEncoder writes (nil, booleans, integers up to 32 bits, float 32/64, str, bin,
 * array, undefined as fixext 1 type 0, record definitions and references with one-byte ids). `plainRecordDecoder`
 * reads plain msgpack the same way (what `encodePlain` writes: maps with string keys as objects, no record
 * structures), as the shared plain Unpackr would. Anything else (maps with records, map keys that are not strings,
 * timestamps and other extensions, 64-bit integers, nesting past 64) and anything wrong (truncated, a token msgpack
 * never uses, trailing bytes, a limit passed) makes `decode` return NOT_DECODED, having allocated at most what the
 * limits allow; the caller then decodes that record the checked way (copy, scan, msgpackr), which decodes it or
 * names what is wrong with ERR_SHMBUS_CORRUPT. So this never has an error of its own to report, and what it
 * accepts is what the scan accepts: the same heap estimate per token (HEAP_* in host/codec.ts) against the same
 * budget, the same depth rule, the same bounds on definitions.
 *
 * Values equal msgpackr's for the same bytes: records become plain objects with their keys in order (a key
 * `__proto__` becomes `__proto_`, as msgpackr does; so do map keys), binaries are copied out (`copyBuffers`; those
 * of 65 bytes to 2 KiB share a slab, see host/large.ts copyOut) as Buffers, or, for plain records longer than
 * SMALL_RECORD, as Uint8Arrays (what the checked way makes of them, see decodeMsgpackAt), an id
 * byte with no structure is an integer. Strings: through Node's UTF-8 decoder (short ASCII ones in JS; invalid
 * sequences become U+FFFD, as for the native string extractor msgpackr uses on Node).
 *
 * State is shared with the direction's msgpackr Unpackr and its scan table (RecordStructures), so that the two
 * ways of decoding can alternate record by record: a definition read here is entered in both (as msgpackr and the
 * scan would enter it), one read there is used here. A record given up takes back every definition it entered,
 * before the checked way reads it from its start: a definition late in a record must not change how a reference
 * earlier in it reads (msgpackr, in sequential mode, puts structures back after a failed read the same way).
 *
 * Shared memory: every length is read once and checked against the record's end before anything is read or
 * allocated by it, so a peer rewriting the bytes meanwhile gets a value made of whatever it wrote, or NOT_DECODED,
 * never a read outside the record; a string is decoded from a private copy of its bytes (see utf8).
 */
import {
  HEAP_ARRAY, HEAP_BINARY, HEAP_BOXED, HEAP_ENTRY, HEAP_MAP, HEAP_STRING, HEAP_VALUE, MAX_RECORD_KEYS, SMALL_RECORD,
  recordKeyBytes, RecordStructures, DEFAULT_DECODE_LIMITS, type DecodeLimits,
} from './codec.js';
import { BadArgumentError } from './errors.js';
import { copyOut, copyOutBuffer } from './large.js';
import type { Unpackr } from 'msgpackr';

/** What `decode` returns for a record it leaves to the checked way. */
export const NOT_DECODED: unique symbol = Symbol('shmbus.notDecoded');

/** Nesting deeper than this (or than the limits' maxDepth) is left to the checked way. */
const MAX_DEPTH = 64;
/** ASCII strings up to this long are built in JS, by one String.fromCharCode call; longer ones, and any with other
 * bytes, from a private copy (see utf8). */
const SHORT_STRING = 8;
const RECORD_IDS = 64;
const EXT_RECORD_DEFINITION = 0x72;
const EXT_UNDEFINED = 0x00;

/** Thrown inside a decode to give up on the record; caught by `decode`, never seen outside. */
const GIVE_UP = { giveUp: true };

/** Buffer's UTF-8 and latin1 readers without toString's argument handling (undocumented, present since Node 0.x;
 * msgpackr uses latin1Slice the same way). */
interface SliceBuffer extends Buffer {
  utf8Slice(start: number, end: number): string;
  latin1Slice(start: number, end: number): string;
}

/** The msgpackr structure table entry: the keys, in order. msgpackr hangs its readers on it. */
type SharedStructure = string[] | undefined;

// The record being decoded (decoding is synchronous and calls no user code, so one set per process).
let src = Buffer.alloc(0) as SliceBuffer;
let view = new DataView(src.buffer);
let viewOf: Buffer = src;
/** The same bytes as a plain Uint8Array (copyOut makes plain copies from it; a Buffer's slice is a view). */
let bytesOf: Uint8Array = new Uint8Array(0);
let pos = 0;
let end = 0;
let cost = 0;
let budget = 0;
let depth = 0;
let maxDepth = 0;
let decoder: RecordDecoder | undefined;
/** Whether the record being decoded is plain msgpack (maps as objects, no record structures). */
let plain = false;
/** Whether its binaries become Buffers (else Uint8Arrays). */
let binariesAsBuffers = true;
/** What the definitions entered by the record being decoded replaced, to put back if it is given up: per
 * definition, the id, the shared table's entry, the scan table's count and key bytes. */
const replaced: Array<[number, SharedStructure, number, number]> = [];

/** The structure table of a records Unpackr (msgpackr keeps it as `structures`, see host/codec.ts recordUnpackr). */
export function sharedStructures(unpackr: Unpackr): SharedStructure[] {
  const structures = (unpackr as unknown as { structures?: SharedStructure[] }).structures;
  if (!Array.isArray(structures)) throw new BadArgumentError('not an Unpackr with record structures', {});
  return structures;
}

/** How one record structure is read: its keys as objects get them, and, once used BUILD_AFTER times, a function
 * made for it that builds the object as a literal (V8 then makes every object of the structure with one hidden
 * class and no keyed stores: ~50 ns less for three keys). */
interface Structure {
  /** The keys, `__proto__` renamed to `__proto_` (as msgpackr does: the literal must never set a prototype). */
  readonly names: string[];
  /** The shared table's entry these were made from. */
  readonly from: SharedStructure;
  /** Records read with it so far, counted up to BUILD_AFTER; −1 when it never gets a builder. */
  uses: number;
  build: (() => Record<string, unknown>) | undefined;
}

/** Uses of a structure before a builder is made for it: a peer that defines a new structure for every few records
 * makes us compile at most once per BUILD_AFTER records of it (msgpackr compiles after 2). */
const BUILD_AFTER = 8;
/** Structures with more keys, or more key characters, than this are read with keyed stores only: what a builder
 * saves is small next to reading that many values, and the source compiled stays small. */
const BUILD_MAX_KEYS = 32;
const BUILD_MAX_CHARS = 1024;

/**
 * A function that reads a record of `names` with `value` for each key in order and returns the object. The keys
 * come from the peer: each is written as a JSON string literal (a computed key could not break out of it), and
 * none is `__proto__` (renamed), so the literal only ever defines own data properties.
 */
function builder(names: string[], value: () => unknown): () => Record<string, unknown> {
  const body = names.map((name) => `[${JSON.stringify(name)}]:v()`).join(',');
  return new Function('v', `return function record(){return {${body}}}`)(value) as () => Record<string, unknown>;
}

/**
 * Reads one channel direction's records in place (see the file's comment): with record structures, sharing the
 * tables of that direction's Unpackr and scan (`sharedStructures(unpackr)`, its RecordStructures), or plain
 * (`plainRecordDecoder`).
 */
export class RecordDecoder {
  /** Per id (0–63): how records of its structure are read, made when first met. */
  private readonly readers: Array<Structure | undefined> = new Array(RECORD_IDS).fill(undefined);

  /**
   * @param shared the structure table of the direction's msgpackr Unpackr (`unpackr.structures`)
   * @param structures the scan's table for the same direction
   */
  constructor(
    private readonly shared: SharedStructure[],
    private readonly structures: RecordStructures,
    private readonly limits: DecodeLimits,
    /** Plain msgpack: maps are objects, 0x40–0x7f integers (see plainRecordDecoder). */
    private readonly plain = false,
  ) {}

  /** The value of the record `bytes[start … stop)`, or NOT_DECODED (see the file's comment). */
  decode(bytes: Buffer, start: number, stop: number): unknown {
    if (!(start >= 0 && stop > start && stop <= bytes.length) || decoder !== undefined) return NOT_DECODED;
    src = bytes as SliceBuffer;
    if (viewOf !== bytes) {
      view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
      bytesOf = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
      viewOf = bytes;
    }
    pos = start;
    end = stop;
    cost = 0;
    budget = this.limits.maxDecodedRatio * (stop - start) + this.limits.slackBytes;
    depth = 0;
    maxDepth = Math.min(MAX_DEPTH, this.limits.maxDepth);
    plain = this.plain;
    binariesAsBuffers = !this.plain || stop - start <= SMALL_RECORD;
    decoder = this;
    let value: unknown = NOT_DECODED;
    try {
      value = read();
      if (pos !== end || cost > budget) value = NOT_DECODED;
    } catch {
      // GIVE_UP, or anything unforeseen (a stack overflow): the checked way decides.
      value = NOT_DECODED;
    } finally {
      decoder = undefined;
      if (replaced.length !== 0) {
        if (value === NOT_DECODED) this.takeBack();
        replaced.length = 0;
      }
    }
    return value;
  }

  /** Puts back what the definitions of a record given up replaced, last first. */
  private takeBack(): void {
    for (let i = replaced.length - 1; i >= 0; i--) {
      const [id, shared, count, keyBytes] = replaced[i]!;
      this.structures.define(id, count, keyBytes);
      this.shared[id] = shared;
    }
  }

  /** @internal how to read structure `id` (0–63), or undefined when none is defined (the id is an integer). */
  reader(id: number): Structure | undefined {
    const from = this.shared[id];
    if (from === undefined || this.structures.fields[id]! < 0) return undefined;
    const known = this.readers[id];
    if (known !== undefined && known.from === from) return known;
    const names = from.map((key) => (key === '__proto__' ? '__proto_' : key));
    if (names.length !== this.structures.fields[id] || names.some((key) => typeof key !== 'string')) throw GIVE_UP;
    const buildable = names.length <= BUILD_MAX_KEYS && names.reduce((n, name) => n + name.length, 0) <= BUILD_MAX_CHARS;
    return (this.readers[id] = { names, from, uses: buildable ? 0 : -1, build: undefined });
  }

  /** @internal a definition of `id` was read: enter it where msgpackr and the scan would. */
  define(id: number, keys: string[], keyBytes: number): Structure {
    if (!this.structures.fits(id, keyBytes)) throw GIVE_UP;
    replaced.push([id, this.shared[id], this.structures.fields[id]!, this.structures.keyBytesOf(id)]);
    this.structures.define(id, keys.length, keyBytes);
    this.shared[id] = keys;
    return this.reader(id)!;
  }
}

function read(): unknown {
  if (pos >= end) throw GIVE_UP;
  const t = src[pos++]!;
  cost += HEAP_VALUE;
  if (t < 0x40) return t;
  if (t < 0x80) {
    const structure = plain ? undefined : decoder!.reader(t - 0x40);
    return structure === undefined ? t : readRecord(structure);
  }
  if (t >= 0xe0) return t - 0x100;
  if (t >= 0xa0 && t < 0xc0) return readString(t & 0x1f);
  if (t >= 0x90 && t < 0xa0) return readArray(t & 0x0f);
  if (t < 0x90) return readMap(t & 0x0f);
  let n: number;
  switch (t) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return readBinary(length(1));
    case 0xc5: return readBinary(length(2));
    case 0xc6: return readBinary(length(4));
    case 0xca: need(4); n = view.getFloat32(pos); pos += 4; return n;
    case 0xcb: need(8); n = view.getFloat64(pos); pos += 8; cost += HEAP_BOXED; return n;
    case 0xcc: need(1); return src[pos++]!;
    case 0xcd: need(2); n = view.getUint16(pos); pos += 2; return n;
    case 0xce: need(4); n = view.getUint32(pos); pos += 4; return n;
    case 0xd0: need(1); return view.getInt8(pos++);
    case 0xd1: need(2); n = view.getInt16(pos); pos += 2; return n;
    case 0xd2: need(4); n = view.getInt32(pos); pos += 4; return n;
    case 0xd4: {
      need(2);
      const type = src[pos++]!;
      if (type === EXT_RECORD_DEFINITION) return readDefinition();
      if (type !== EXT_UNDEFINED) throw GIVE_UP;
      pos++; // the one data byte, unused
      cost += HEAP_BOXED;
      return undefined;
    }
    case 0xd9: return readString(length(1));
    case 0xda: return readString(length(2));
    case 0xdb: return readString(length(4));
    case 0xdc: return readArray(length(2));
    case 0xdd: return readArray(length(4));
    case 0xde: return readMap(length(2));
    case 0xdf: return readMap(length(4));
    default: throw GIVE_UP; // other extensions, 64-bit integers, 0xc1
  }
}

/** Gives up unless `n` more bytes are in the record. */
function need(n: number): void {
  if (n > end - pos) throw GIVE_UP;
}

/** A big-endian length of `size` bytes. */
function length(size: number): number {
  need(size);
  let n = 0;
  for (let i = 0; i < size; i++) n = n * 256 + src[pos++]!;
  return n;
}

/** The byte length of a string whose header token is `t` (its length bytes read); gives up on any other token. */
function stringLength(t: number): number {
  if (t >= 0xa0 && t < 0xc0) return t & 0x1f;
  if (t === 0xd9) return length(1);
  if (t === 0xda) return length(2);
  if (t === 0xdb) return length(4);
  throw GIVE_UP;
}

/** Before reading `children` values of a container: the scan's checks at the same point. */
function enter(children: number): void {
  if (children > end - pos || cost > budget || depth >= maxDepth) throw GIVE_UP;
  depth++;
}

function readRecord(structure: Structure): Record<string, unknown> {
  const names = structure.names;
  const n = names.length;
  cost += HEAP_MAP + n * HEAP_ENTRY;
  if (n === 0) return {};
  enter(n);
  let object: Record<string, unknown>;
  if (structure.build !== undefined) object = structure.build();
  else {
    if (structure.uses >= 0 && ++structure.uses === BUILD_AFTER) structure.build = builder(names, read);
    object = {};
    for (let i = 0; i < n; i++) object[names[i]!] = read();
  }
  depth--;
  return object;
}

/** After 0xd4 0x72: the id, the array of keys, then the record's values. */
function readDefinition(): Record<string, unknown> {
  need(2);
  const id = src[pos++]!;
  if (id < 0x40 || id >= 0x40 + RECORD_IDS) throw GIVE_UP;
  const a = src[pos++]!;
  const count = a >= 0x90 && a < 0xa0 ? a & 0x0f : a === 0xdc ? length(2) : a === 0xdd ? length(4) : -1;
  if (count < 0 || count > MAX_RECORD_KEYS || count > end - pos) throw GIVE_UP;
  const keys = new Array<string>(count);
  let keyBytes = 0;
  for (let i = 0; i < count; i++) {
    need(1);
    const n = stringLength(src[pos++]!);
    keys[i] = text(n);
    keyBytes += recordKeyBytes(n);
  }
  // What the scan counts for a definition beyond a reference's (its token's HEAP_VALUE is counted by read(), the
  // record's HEAP_MAP and entries by readRecord).
  cost += HEAP_ARRAY + keyBytes;
  return readRecord(decoder!.define(id - 0x40, keys, keyBytes));
}

/** A map of `n` entries as an object (plain records only: with records msgpackr makes a Map, left to it). Keys
 * must be strings (msgpackr turns others into strings: left to it). */
function readMap(n: number): Record<string, unknown> {
  if (!plain) throw GIVE_UP;
  cost += HEAP_MAP + n * HEAP_ENTRY;
  const object: Record<string, unknown> = {};
  if (n === 0) return object;
  enter(2 * n);
  for (let i = 0; i < n; i++) {
    // The key is a token the scan counts like any string.
    need(1);
    const bytes = stringLength(src[pos++]!);
    cost += HEAP_VALUE + HEAP_STRING + bytes;
    const key = bytes <= KEY_MAX ? cachedKey(bytes) : text(bytes);
    object[key === '__proto__' ? '__proto_' : key] = read();
  }
  depth--;
  return object;
}

/**
 * Map keys met before, by their bytes: a key of up to KEY_MAX bytes decodes to the string made the first time.
 * The same string object record after record makes building the object cheap for V8 (a key it has seen, not a new
 * string to look up in its table of names first): `[id, { 6 keys }]` read in ~930 ns without, ~590 with (a scratch loop).
 */
const KEY_CACHE = 1024;
const KEY_MAX = 16;
const keyStrings = new Array<string | undefined>(KEY_CACHE).fill(undefined);
const keyBytes = new Uint8Array(KEY_CACHE * KEY_MAX);
const keyLengths = new Uint8Array(KEY_CACHE);
/** The key being read: each of its bytes is read from the record once, into here. */
const keyScratch = Buffer.alloc(KEY_MAX) as SliceBuffer;

/** A map key of `n` (≤ KEY_MAX) bytes at `pos`, from the cache when the same bytes made it before. */
function cachedKey(n: number): string {
  need(n);
  let hash = n;
  let high = 0;
  for (let i = 0; i < n; i++) {
    const b = src[pos++]!;
    keyScratch[i] = b;
    high |= b;
    hash = (Math.imul(hash, 31) + b) | 0;
  }
  const slot = (hash ^ (hash >>> 10)) & (KEY_CACHE - 1);
  const cached = keyStrings[slot];
  if (cached !== undefined && keyLengths[slot] === n) {
    const at = slot * KEY_MAX;
    let i = 0;
    while (i < n && keyBytes[at + i] === keyScratch[i]) i++;
    if (i === n) return cached;
  }
  // Decoded from the private copy (see utf8): latin1 for ASCII, else UTF-8.
  const key = high < 0x80 ? keyScratch.latin1Slice(0, n) : keyScratch.utf8Slice(0, n);
  keyStrings[slot] = key;
  keyLengths[slot] = n;
  keyBytes.set(keyScratch.subarray(0, n), slot * KEY_MAX);
  return key;
}

function readArray(n: number): unknown[] {
  cost += HEAP_ARRAY;
  if (n === 0) return [];
  enter(n);
  const array = new Array<unknown>(n);
  for (let i = 0; i < n; i++) array[i] = read();
  depth--;
  return array;
}

function readString(n: number): string {
  cost += HEAP_STRING + n;
  return text(n);
}

/** `n` bytes of UTF-8. */
function text(n: number): string {
  need(n);
  const at = pos;
  pos += n;
  if (n <= SHORT_STRING) {
    // Each byte read once: a peer rewriting them meanwhile only changes which characters come out. One call with a
    // character per argument makes the string in one allocation (adding one character at a time made one a step).
    if (n === 0) return '';
    const from = src;
    const a = from[at]!;
    const b = n > 1 ? from[at + 1]! : 0;
    const c = n > 2 ? from[at + 2]! : 0;
    const d = n > 3 ? from[at + 3]! : 0;
    const e = n > 4 ? from[at + 4]! : 0;
    const f = n > 5 ? from[at + 5]! : 0;
    const g = n > 6 ? from[at + 6]! : 0;
    const h = n > 7 ? from[at + 7]! : 0;
    if ((a | b | c | d | e | f | g | h) >= 0x80) return utf8(at, n);
    switch (n) {
      case 1: return String.fromCharCode(a);
      case 2: return String.fromCharCode(a, b);
      case 3: return String.fromCharCode(a, b, c);
      case 4: return String.fromCharCode(a, b, c, d);
      case 5: return String.fromCharCode(a, b, c, d, e);
      case 6: return String.fromCharCode(a, b, c, d, e, f);
      case 7: return String.fromCharCode(a, b, c, d, e, f, g);
      default: return String.fromCharCode(a, b, c, d, e, f, g, h);
    }
  }
  return utf8(at, n);
}

/** Strings up to this many bytes are copied into one reused buffer before they are decoded; longer ones into a
 * buffer of their own. */
const STRING_SCRATCH = 4096;
/** Strings up to this many bytes are copied by a JS loop. */
const COPY_LOOP = 128;
let stringScratch: SliceBuffer | undefined;

/**
 * `n` bytes at `at` decoded as UTF-8 from a private copy. Never from the shared bytes themselves: V8's UTF-8
 * decoder measures the string in one pass and writes it in a second, and bytes rewritten between the two could
 * make it write more than it measured (outside the string it allocated). A copy is a plain memcpy whatever the
 * bytes say.
 */
function utf8(at: number, n: number): string {
  const copy = n <= STRING_SCRATCH ? (stringScratch ??= Buffer.allocUnsafeSlow(STRING_SCRATCH) as SliceBuffer) : Buffer.allocUnsafeSlow(n) as SliceBuffer;
  if (n <= COPY_LOOP) {
    // A loop is cheaper than a call into Buffer's copy for a few dozen bytes; it also tells ASCII, which the
    // latin1 reader (one pass) makes faster.
    const from = src;
    let high = 0;
    for (let i = 0; i < n; i++) high |= copy[i] = from[at + i]!;
    return high < 0x80 ? copy.latin1Slice(0, n) : copy.utf8Slice(0, n);
  }
  copy.set(bytesOf.subarray(at, at + n));
  return copy.utf8Slice(0, n);
}

function readBinary(n: number): Uint8Array {
  cost += HEAP_BINARY + n;
  need(n);
  const at = pos;
  pos += n;
  // A copy, as msgpackr's copyBuffers makes (host/large.ts: from a shared slab for 65 B … 2 KiB).
  return binariesAsBuffers ? copyOutBuffer(src, at, n) : copyOut(bytesOf, at, n);
}

/**
 * The in-place reader of plain msgpack records (no record structures) for a channel: it keeps no state between
 * records, so one serves every channel with the same limits.
 */
export function plainRecordDecoder(limits: DecodeLimits): RecordDecoder {
  if (limits === plainDefault.limits) return plainDefault.decoder;
  return new RecordDecoder([], new RecordStructures(), limits, true);
}
const plainDefault = { limits: DEFAULT_DECODE_LIMITS, decoder: new RecordDecoder([], new RecordStructures(), DEFAULT_DECODE_LIMITS, true) };
