/**
 * msgpack for the plugin host's hot path: the requests it writes and the replies it reads, for the small, plain
 * values most calls carry, without msgpackr's per-call overhead (a result view, the [id, value] array, a separate
 * safety scan and a private copy before decoding). Anything else — large records, extension types, 64-bit
 * integers, non-string map keys, deep nesting, values that are not plain — is left to msgpackr and
 * host/codec.ts's checked decoder, so both paths decode every record to the same value.
 *
 * Decoding reads the plugin's record in place, in shared memory the plugin may rewrite meanwhile: every byte is
 * read exactly once (lengths and counts are read, bounded by the record's end, then used; strings longer than a
 * few bytes are copied out before they are made into strings), so a record changing under the decoder yields
 * some value, never a read outside the record or an unbounded allocation. The record is small (SMALL_RECORD),
 * and every value takes at least one of its bytes: what a decode allocates is bounded by a small multiple of it.
 */

/** Records up to this long are decoded here; a decode allocates at most a few dozen bytes per record byte. */
export const SMALL_RECORD = 2048;
/** Values are encoded here while they fit this much; larger ones go to msgpackr. */
const ENCODE_MAX = 65536;
/** Nesting this deep goes to the checked decoder (and msgpackr on the way out), which bound it themselves. */
const MAX_DEPTH = 64;

/** Buffer's unchecked string methods (what Buffer#toString / #write call after checking their arguments; msgpackr
 * uses them too): the arguments here are in range by construction. */
interface NodeBuffer extends Buffer {
  latin1Slice(start: number, end: number): string;
  utf8Write(text: string, offset: number): number;
}

/** Thrown to hand a record or a value to the general path; never escapes this module. */
const BAIL = { bail: true };

// --- decoding ------------------------------------------------------------------------------------------------------

let src: Uint8Array = new Uint8Array(0);
let pos = 0;
let end = 0;
/** Where the record being decoded starts. */
let start0 = 0;

/** A private copy of a string's or a float's bytes (never decoded from shared memory directly). */
let strBytes = Buffer.allocUnsafeSlow(256);
const floatBytes = new Uint8Array(8);
const floatView = new DataView(floatBytes.buffer);

/** Map keys seen before, by their bytes: a key decodes to the same (internalized) string without making a new one. */
const KEY_CACHE = 1024;
const KEY_MAX = 16;
const keyStrings: (string | undefined)[] = new Array<string | undefined>(KEY_CACHE).fill(undefined);
const keyBytes = new Uint8Array(KEY_CACHE * KEY_MAX);
const keyLengths = new Uint8Array(KEY_CACHE);
const keyScratch = new Uint8Array(KEY_MAX);

/** The id and value of the last reply `readReply` decoded. */
export const reply = { id: 0, value: undefined as unknown };

/**
 * Decodes the reply record `u8[start … end)`, msgpack `[id, value]` with a non-negative integer id, into `reply`.
 * False when this path does not take the record (too large, an unusual encoding or value, or not msgpack at all):
 * the caller then decodes it with the checked decoder, which also reports what is wrong with it.
 */
export function readReply(u8: Uint8Array, start: number, stop: number): boolean {
  if (stop - start > SMALL_RECORD || start < 0 || stop > u8.length || stop - start < 2) return false;
  src = u8;
  pos = start0 = start;
  end = stop;
  try {
    if (src[pos++] !== 0x92) return false;
    const t = src[pos++]!;
    let id: number;
    if (t < 0x80) id = t;
    else if (t === 0xcc) id = byte();
    else if (t === 0xcd) id = byte() * 0x100 + byte();
    else if (t === 0xce) id = byte() * 0x1000000 + byte() * 0x10000 + byte() * 0x100 + byte();
    else return false;
    const value = read(0);
    if (pos !== end) return false;
    reply.id = id;
    reply.value = value;
    return true;
  } catch (error) {
    if (error === BAIL) return false;
    throw error;
  } finally {
    src = EMPTY;
  }
}

/** One msgpack value from `u8[start … end)`, or BAIL_VALUE when this path does not take the record (see readReply). */
export function readValue(u8: Uint8Array, start: number, stop: number): unknown {
  if (stop - start > SMALL_RECORD || start < 0 || stop > u8.length || stop <= start) return BAIL_VALUE;
  src = u8;
  pos = start0 = start;
  end = stop;
  try {
    const value = read(0);
    return pos === end ? value : BAIL_VALUE;
  } catch (error) {
    if (error === BAIL) return BAIL_VALUE;
    throw error;
  } finally {
    src = EMPTY;
  }
}

/** What readValue returns for a record it leaves to the checked decoder. */
export const BAIL_VALUE: unknown = Symbol('shmbus.plugins.codec.bail');
const EMPTY = new Uint8Array(0);

function byte(): number {
  if (pos >= end) throw BAIL;
  return src[pos++]!;
}

/** A length or count of `size` bytes (big-endian) that at least `unit` bytes each must follow. */
function count(size: number, unit: number): number {
  let n = 0;
  for (let i = 0; i < size; i++) n = n * 0x100 + byte();
  if (n * unit > end - pos) throw BAIL;
  return n;
}

function read(depth: number): unknown {
  if (pos >= end) throw BAIL;
  const t = src[pos++]!;
  if (t < 0x80) return t;
  if (t >= 0xe0) return t - 0x100;
  if (t < 0x90) return map(t & 0x0f, depth);
  if (t < 0xa0) return array(t & 0x0f, depth);
  if (t < 0xc0) return string(t & 0x1f);
  switch (t) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return binary(count(1, 1));
    case 0xc5: return binary(count(2, 1));
    case 0xc6: return binary(count(4, 1));
    case 0xca: return float(4);
    case 0xcb: return float(8);
    case 0xcc: return byte();
    case 0xcd: return count(2, 0);
    case 0xce: return count(4, 0);
    case 0xd0: { const v = byte(); return v < 0x80 ? v : v - 0x100; }
    case 0xd1: { const v = count(2, 0); return v < 0x8000 ? v : v - 0x10000; }
    case 0xd2: return count(4, 0) | 0;
    case 0xd9: return string(count(1, 1));
    case 0xda: return string(count(2, 1));
    case 0xdb: return string(count(4, 1));
    case 0xdc: return array(count(2, 1), depth);
    case 0xdd: return array(count(4, 1), depth);
    case 0xde: return map(count(2, 2), depth);
    case 0xdf: return map(count(4, 2), depth);
    // 0xc1 (never used), extensions (dates, undefined, msgpackr's own) and 64-bit integers (BigInt): the checked path.
    default: throw BAIL;
  }
}

function array(n: number, depth: number): unknown[] {
  if (n > end - pos || depth >= MAX_DEPTH) throw BAIL;
  const a = new Array<unknown>(n);
  for (let i = 0; i < n; i++) a[i] = read(depth + 1);
  return a;
}

function map(n: number, depth: number): Record<string, unknown> {
  if (n * 2 > end - pos || depth >= MAX_DEPTH) throw BAIL;
  const o: Record<string, unknown> = {};
  for (let i = 0; i < n; i++) {
    const key = readKey();
    o[key] = read(depth + 1);
  }
  return o;
}

/** A map key: a fixstr (msgpackr's own encoding of keys); anything else goes to the checked path. */
function readKey(): string {
  const t = byte();
  if ((t & 0xe0) !== 0xa0) throw BAIL;
  const n = t & 0x1f;
  if (n > end - pos) throw BAIL;
  if (n > KEY_MAX) return fixKey(string(n));
  let h = n;
  for (let i = 0; i < n; i++) {
    const b = src[pos++]!;
    keyScratch[i] = b;
    h = (Math.imul(h, 31) + b) | 0;
  }
  const slot = (h ^ (h >>> 10)) & (KEY_CACHE - 1);
  const cached = keyStrings[slot];
  if (cached !== undefined && keyLengths[slot] === n) {
    let same = true;
    const at = slot * KEY_MAX;
    for (let i = 0; i < n; i++) if (keyBytes[at + i] !== keyScratch[i]) { same = false; break; }
    if (same) return cached;
  }
  for (let i = 0; i < n; i++) strBytes[i] = keyScratch[i]!;
  const key = fixKey(textOf(n));
  keyStrings[slot] = key;
  keyLengths[slot] = n;
  keyBytes.set(keyScratch.subarray(0, n), slot * KEY_MAX);
  return key;
}

/** msgpackr's guard: a key "__proto__" becomes "__proto_" (never the object's prototype). */
function fixKey(key: string): string {
  return key === '__proto__' ? '__proto_' : key;
}

/** A string of `n` bytes at `pos` (bounded by the caller). */
function string(n: number): string {
  if (n > end - pos) throw BAIL;
  if (n === 0) return '';
  if (n <= 8) {
    // Short strings (keys mostly, and the like of 'buy'): made from the bytes directly, each read once.
    const a = src[pos]!;
    const b = n > 1 ? src[pos + 1]! : 0;
    const c = n > 2 ? src[pos + 2]! : 0;
    const d = n > 3 ? src[pos + 3]! : 0;
    const e = n > 4 ? src[pos + 4]! : 0;
    const f = n > 5 ? src[pos + 5]! : 0;
    const g = n > 6 ? src[pos + 6]! : 0;
    const h = n > 7 ? src[pos + 7]! : 0;
    if ((a | b | c | d | e | f | g | h) >= 0x80) throw BAIL; // not ASCII (see textOf)
    pos += n;
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
  if (n > strBytes.length) strBytes = Buffer.allocUnsafeSlow(Math.max(n, strBytes.length * 2));
  for (let i = 0; i < n; i++) strBytes[i] = src[pos + i]!;
  pos += n;
  return textOf(n);
}

/** The string strBytes[0 … n) holds: latin1 (fast) when it is ASCII, else UTF-8. */
function textOf(n: number): string {
  let ascii = true;
  for (let i = 0; i < n; i++) if (strBytes[i]! >= 0x80) { ascii = false; break; }
  // Not ASCII: msgpackr's own decoder for records this small. Only its result for valid UTF-8 is certain to match
  // (a string that is not valid UTF-8 decodes to some string either way), so such a string goes to msgpackr.
  if (!ascii) throw BAIL;
  return (strBytes as NodeBuffer).latin1Slice(0, n);
}

/** Records up to this long host/codec.ts decodes from a private Buffer (msgpackr then copies binaries into Buffers),
 * longer ones in place (into Uint8Arrays): binaries here come out the same. */
const CHECKED_SMALL_RECORD = 128;

function binary(n: number): Uint8Array {
  const b = end - start0 <= CHECKED_SMALL_RECORD ? Buffer.allocUnsafeSlow(n) : new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = src[pos + i]!;
  pos += n;
  return b;
}

function float(size: 4 | 8): number {
  if (size > end - pos) throw BAIL;
  for (let i = 0; i < size; i++) floatBytes[i] = src[pos + i]!;
  pos += size;
  return size === 4 ? floatView.getFloat32(0) : floatView.getFloat64(0);
}

// --- encoding ------------------------------------------------------------------------------------------------------

let out = Buffer.allocUnsafeSlow(1024);
let at = 0;

/**
 * msgpack of `[id, value]` (a request) or of `value` alone (id < 0), as msgpackr would write it with
 * `useRecords: false` save map headers (the smallest here, always 16-bit there). A view of a buffer the next call
 * overwrites: copy it to keep it. Undefined when the value is not one this path encodes (see the module comment).
 */
export function encodeValue(value: unknown, id: number): Uint8Array | undefined {
  at = 0;
  try {
    if (id >= 0) {
      room(6);
      out[at++] = 0x92;
      writeNumber(id);
    }
    write(value, 0);
  } catch (error) {
    if (error === BAIL) return undefined;
    throw error;
  }
  return view(at);
}

/** Views of `out` by length, made once each: a request of a size seen before allocates nothing here. */
const VIEW_CACHE = 1024;
let views: (Uint8Array | undefined)[] = new Array<Uint8Array | undefined>(VIEW_CACHE + 1).fill(undefined);

function view(length: number): Uint8Array {
  if (length > VIEW_CACHE) return out.subarray(0, length);
  return views[length] ??= new Uint8Array(out.buffer, out.byteOffset, length);
}

/** `bytes` (an encodeValue result or msgpackr's), as an array of its own that a later encode does not overwrite. */
export function keep(bytes: Uint8Array): Uint8Array {
  return bytes.buffer === out.buffer ? Uint8Array.prototype.slice.call(bytes) : bytes;
}

function room(bytes: number): void {
  if (at + bytes <= out.length) return;
  if (at + bytes > ENCODE_MAX) throw BAIL;
  const bigger = Buffer.allocUnsafeSlow(Math.min(ENCODE_MAX, Math.max(at + bytes, out.length * 2)));
  out.copy(bigger, 0, 0, at);
  out = bigger;
  views = new Array<Uint8Array | undefined>(VIEW_CACHE + 1).fill(undefined);
}

function write(value: unknown, depth: number): void {
  switch (typeof value) {
    case 'string': writeString(value); return;
    case 'number': room(9); writeNumber(value); return;
    case 'boolean': room(1); out[at++] = value ? 0xc3 : 0xc2; return;
    case 'object':
      if (value === null) { room(1); out[at++] = 0xc0; return; }
      if (depth >= MAX_DEPTH) throw BAIL;
      if (value.constructor === Object) { writeObject(value as Record<string, unknown>, depth); return; }
      if (value.constructor === Array) { writeArray(value as unknown[], depth); return; }
      if (value.constructor === Buffer || value.constructor === Uint8Array) { writeBinary(value as Uint8Array); return; }
      throw BAIL;
    default: throw BAIL; // undefined, bigint, functions, symbols: msgpackr's encodings
  }
}

/** msgpackr's number encoding: the smallest integer form for 32-bit integers, else a float64. */
function writeNumber(v: number): void {
  if (v >>> 0 === v) {
    if (v < 0x80) out[at++] = v;
    else if (v < 0x100) { out[at++] = 0xcc; out[at++] = v; }
    else if (v < 0x10000) { out[at++] = 0xcd; out[at++] = v >> 8; out[at++] = v & 0xff; }
    else { out[at++] = 0xce; out.writeUInt32BE(v, at); at += 4; }
  } else if (v >> 0 === v) {
    if (v >= -0x20) out[at++] = 0x100 + v;
    else if (v >= -0x80) { out[at++] = 0xd0; out[at++] = v + 0x100; }
    else if (v >= -0x8000) { out[at++] = 0xd1; out.writeInt16BE(v, at); at += 2; }
    else { out[at++] = 0xd2; out.writeInt32BE(v, at); at += 4; }
  } else {
    out[at++] = 0xcb;
    out.writeDoubleBE(v, at);
    at += 8;
  }
}

function writeString(s: string): void {
  const n = s.length;
  room(n * 3 + 5);
  // The header's size from the length in UTF-16 units, corrected below if the bytes need a larger one.
  const header = n < 0x20 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : 5;
  const start = at + header;
  let length: number;
  if (n < 0x40) {
    let p = start;
    for (let i = 0; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) { p = -1; break; }
      out[p++] = c;
    }
    length = p >= 0 ? p - start : (out as NodeBuffer).utf8Write(s, start);
  } else {
    length = (out as NodeBuffer).utf8Write(s, start);
  }
  const need = length < 0x20 ? 1 : length < 0x100 ? 2 : length < 0x10000 ? 3 : 5;
  if (need > header) out.copyWithin(at + need, start, start + length);
  if (length < 0x20) out[at++] = 0xa0 | length;
  else if (length < 0x100) { out[at++] = 0xd9; out[at++] = length; }
  else if (length < 0x10000) { out[at++] = 0xda; out[at++] = length >> 8; out[at++] = length & 0xff; }
  else { out[at++] = 0xdb; out.writeUInt32BE(length, at); at += 4; }
  // A header smaller than reserved (more UTF-16 units than bytes cannot happen) leaves nothing to move.
  at += length;
}

function writeObject(o: Record<string, unknown>, depth: number): void {
  room(3);
  const header = at;
  at += 1;
  let size = 0;
  // msgpackr's writePlainObject: own enumerable string keys, in for…in order.
  for (const key in o) {
    if (typeof o.hasOwnProperty !== 'function' || o.hasOwnProperty(key)) {
      writeString(key);
      write(o[key], depth + 1);
      size++;
    }
  }
  if (size < 0x10) { out[header] = 0x80 | size; return; }
  if (size > 0xffff) throw BAIL;
  room(2);
  out.copyWithin(header + 3, header + 1, at);
  out[header] = 0xde;
  out[header + 1] = size >> 8;
  out[header + 2] = size & 0xff;
  at += 2;
}

function writeArray(a: unknown[], depth: number): void {
  const n = a.length;
  room(5);
  if (n < 0x10) out[at++] = 0x90 | n;
  else if (n < 0x10000) { out[at++] = 0xdc; out[at++] = n >> 8; out[at++] = n & 0xff; }
  else { out[at++] = 0xdd; out.writeUInt32BE(n, at); at += 4; }
  for (let i = 0; i < n; i++) write(a[i], depth + 1);
}

function writeBinary(b: Uint8Array): void {
  const n = b.length;
  room(n + 5);
  if (n < 0x100) { out[at++] = 0xc4; out[at++] = n; }
  else if (n < 0x10000) { out[at++] = 0xc5; out[at++] = n >> 8; out[at++] = n & 0xff; }
  else { out[at++] = 0xc6; out.writeUInt32BE(n, at); at += 4; }
  out.set(b, at);
  at += n;
}
