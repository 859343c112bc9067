// The msgpack codec of the guest SDK (https://github.com/msgpack/msgpack/blob/master/spec.md).
//
// Reader: typed reads over a byte range [start, start + length) of linear memory, plus readValue for any shape.
// Every read is bounds-checked against that range before it loads a byte; a failure sets a sticky error code
// (MSGPACK_E_* in ../layout.ts) and every later read returns a zero value, so a handler may read a whole message
// and check `reader.error` once. Nothing here traps on bad input: no `unreachable`, no load outside the range, no
// recursion deeper than the depth limit, no allocation larger than the input (a container cannot declare more
// items than there are bytes left) or than the size limit.
//
// Writer: appends the smallest encoding of each value to a growable private buffer.

import {
  MSGPACK_OK, MSGPACK_E_TRUNCATED, MSGPACK_E_TYPE, MSGPACK_E_LENGTH, MSGPACK_E_DEPTH, MSGPACK_E_LIMIT,
  MSGPACK_E_UTF8, MSGPACK_E_RANGE, MSGPACK_E_TRAILING, MSGPACK_MAX_DEPTH, MSGPACK_MAX_SIZE,
} from '../layout';
import { Kind, Value } from './value';

export { Kind, Value };

/** The family a msgpack value belongs to, read from its first byte without consuming it. */
export enum Format {
  /** No byte left, an error already set, or 0xc1. */
  Invalid = 0,
  Nil = 1,
  Bool = 2,
  Int = 3,
  Float = 4,
  String = 5,
  Binary = 6,
  Array = 7,
  Map = 8,
  Ext = 9,
}

/** The Format of a first byte. */
export function formatOf(b: u32): Format {
  if (b <= 0x7f || b >= 0xe0) return Format.Int;
  if (b <= 0x8f) return Format.Map;
  if (b <= 0x9f) return Format.Array;
  if (b <= 0xbf) return Format.String;
  switch (b) {
    case 0xc0: return Format.Nil;
    case 0xc2: case 0xc3: return Format.Bool;
    case 0xc4: case 0xc5: case 0xc6: return Format.Binary;
    case 0xc7: case 0xc8: case 0xc9: case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: return Format.Ext;
    case 0xca: case 0xcb: return Format.Float;
    case 0xd9: case 0xda: case 0xdb: return Format.String;
    case 0xdc: case 0xdd: return Format.Array;
    case 0xde: case 0xdf: return Format.Map;
    case 0xc1: return Format.Invalid;
    default: return Format.Int; // 0xcc … 0xd3
  }
}

/** The UTF-8 rules of RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF. */
export function validUtf8(start: usize, length: usize): bool {
  let p = start;
  const end = start + length;
  while (p < end) {
    const b0 = <u32>load<u8>(p);
    if (b0 < 0x80) { p++; continue; }
    let need: usize;
    let min: u32;
    let cp: u32;
    if ((b0 & 0xe0) == 0xc0) { need = 1; min = 0x80; cp = b0 & 0x1f; }
    else if ((b0 & 0xf0) == 0xe0) { need = 2; min = 0x800; cp = b0 & 0x0f; }
    else if ((b0 & 0xf8) == 0xf0) { need = 3; min = 0x10000; cp = b0 & 0x07; }
    else return false;
    if (end - p - 1 < need) return false;
    for (let i: usize = 1; i <= need; i++) {
      const b = <u32>load<u8>(p + i);
      if ((b & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    p += need + 1;
  }
  return true;
}

/** maxDepth is clamped to this: deeper recursion could exhaust the wasm stack, a trap no caller can handle. */
export const DEPTH_CAP: i32 = 512;

/** Typed reads over [start, start + length) of linear memory. See the file comment for the error contract. */
export class Reader {
  /** Address of the next byte to read. */
  position: usize;
  /** Address one past the last byte. */
  end: usize;
  /** MSGPACK_OK, or the first error met (sticky). */
  error: i32 = MSGPACK_OK;
  /** Address where the first error was met. */
  errorAt: usize = 0;
  /** Type byte of the last ext header read. */
  extType: i8 = 0;
  private depthLimit: i32 = MSGPACK_MAX_DEPTH;
  /** Deepest nesting of arrays and maps readValue and skip accept (at most DEPTH_CAP). */
  get maxDepth(): i32 { return this.depthLimit; }
  set maxDepth(depth: i32) { this.depthLimit = depth < 0 ? 0 : depth > DEPTH_CAP ? DEPTH_CAP : depth; }
  /** Most bytes of one string, binary or ext, and most items of one array or map. */
  maxSize: u32 = MSGPACK_MAX_SIZE;

  constructor(start: usize, length: usize) {
    this.position = start;
    // A range that would wrap the address space is empty: every read fails with TRUNCATED.
    this.end = start + length >= start ? start + length : start;
  }

  /** Starts over on another range, keeping the limits (a reader reused saves an allocation per message). */
  reset(start: usize, length: usize): void {
    this.position = start;
    this.end = start + length >= start ? start + length : start;
    this.error = MSGPACK_OK;
    this.errorAt = 0;
    this.extType = 0;
  }

  /** A reader over the bytes of `bytes` (they must stay alive while it reads). */
  static of(bytes: Uint8Array): Reader {
    return new Reader(bytes.dataStart, <usize>bytes.length);
  }

  get ok(): bool { return this.error == MSGPACK_OK; }

  /** Bytes not read yet. */
  get remaining(): usize { return this.end - this.position; }

  /** Records `code` unless an earlier error is already recorded; returns false for `return this.fail(..)`. */
  fail(code: i32): bool {
    if (this.error == MSGPACK_OK) {
      this.error = code;
      this.errorAt = this.position;
    }
    return false;
  }

  /** Sets MSGPACK_E_TRAILING if bytes remain (call after reading the one value a message holds); returns error. */
  finish(): i32 {
    if (this.error == MSGPACK_OK && this.position != this.end) this.fail(MSGPACK_E_TRAILING);
    return this.error;
  }

  /** The format of the next value, without consuming it. */
  peek(): Format {
    if (this.error != MSGPACK_OK || this.position >= this.end) return Format.Invalid;
    return formatOf(load<u8>(this.position));
  }

  // --- raw big-endian loads, each checked against the end -----------------------------------------------------

  @inline private has(n: usize): bool {
    if (this.error != MSGPACK_OK) return false;
    if (this.end - this.position < n) return this.fail(MSGPACK_E_TRUNCATED);
    return true;
  }

  private u8(): u32 {
    if (!this.has(1)) return 0;
    const v = <u32>load<u8>(this.position);
    this.position += 1;
    return v;
  }

  private u16(): u32 {
    if (!this.has(2)) return 0;
    const v = <u32>bswap<u16>(load<u16>(this.position));
    this.position += 2;
    return v;
  }

  private u32(): u32 {
    if (!this.has(4)) return 0;
    const v = bswap<u32>(load<u32>(this.position));
    this.position += 4;
    return v;
  }

  private u64(): u64 {
    if (!this.has(8)) return 0;
    const v = bswap<u64>(load<u64>(this.position));
    this.position += 8;
    return v;
  }

  /** Consumes the first byte of a value (TRUNCATED at the end; TYPE for 0xc1). */
  private head(): u32 {
    if (!this.has(1)) return 0xc1;
    const b = <u32>load<u8>(this.position);
    this.position += 1;
    if (b == 0xc1) {
      this.position -= 1;
      this.fail(MSGPACK_E_TYPE);
    }
    return b;
  }

  /** Puts back a first byte the typed reader did not want, then fails with TYPE (the position names the value). */
  private wrongType(): void {
    this.position -= 1;
    this.fail(MSGPACK_E_TYPE);
  }

  /** Checks a declared byte length against the limit and what is left; false (error set) when it is too long. */
  private fits(length: u32): bool {
    if (this.error != MSGPACK_OK) return false;
    if (length > this.maxSize) return this.fail(MSGPACK_E_LIMIT);
    if (<usize>length > this.end - this.position) return this.fail(MSGPACK_E_LENGTH);
    return true;
  }

  // --- scalars -------------------------------------------------------------------------------------------------

  /** Reads nil; TYPE if the next value is something else. */
  readNil(): void {
    const b = this.head();
    if (this.error == MSGPACK_OK && b != 0xc0) this.wrongType();
  }

  /** Consumes a nil and returns true, or returns false and leaves anything else in place. */
  tryNil(): bool {
    if (this.error != MSGPACK_OK || this.position >= this.end || load<u8>(this.position) != 0xc0) return false;
    this.position += 1;
    return true;
  }

  readBool(): bool {
    const b = this.head();
    if (this.error != MSGPACK_OK) return false;
    if (b == 0xc2) return false;
    if (b == 0xc3) return true;
    this.wrongType();
    return false;
  }

  /**
   * Reads any integer format. Returns the bits; `negative` in the result of `intSign` says how to read them:
   * a value >= 0 comes back as its u64, a value < 0 as its i64 (two's complement).
   */
  private integer(): u64 {
    const b = this.head();
    if (this.error != MSGPACK_OK) return 0;
    this.negative = false;
    if (b <= 0x7f) return <u64>b;
    if (b >= 0xe0) { this.negative = true; return <u64><i64><i8>b; }
    switch (b) {
      case 0xcc: return <u64>this.u8();
      case 0xcd: return <u64>this.u16();
      case 0xce: return <u64>this.u32();
      case 0xcf: return this.u64();
      case 0xd0: { const v = <i64><i8>this.u8(); this.negative = v < 0; return <u64>v; }
      case 0xd1: { const v = <i64><i16>this.u16(); this.negative = v < 0; return <u64>v; }
      case 0xd2: { const v = <i64><i32>this.u32(); this.negative = v < 0; return <u64>v; }
      case 0xd3: { const v = <i64>this.u64(); this.negative = v < 0; return <u64>v; }
    }
    this.wrongType();
    return 0;
  }
  /** Sign of the last integer read (set by integer()). */
  private negative: bool = false;

  /**
   * A float where an integer was asked for: msgpackr (the host's codec) writes integers beyond 32 bits as float64.
   * Accepted when it holds an integer in [lo, hi); RANGE otherwise. Returns the value; sets `negative`.
   */
  private integralFloat(lo: f64, hi: f64): f64 {
    const v = this.readF64();
    if (this.error != MSGPACK_OK) return 0;
    if (!(v >= lo && v < hi) || Math.trunc(v) != v) { this.fail(MSGPACK_E_RANGE); return 0; }
    this.negative = v < 0;
    return v;
  }

  /** Reads an integer that fits an i64 (RANGE for 2^63 and above). */
  readI64(): i64 {
    if (this.peek() == Format.Float) return <i64>this.integralFloat(-9223372036854775808.0, 9223372036854775808.0);
    const bits = this.integer();
    if (this.error != MSGPACK_OK) return 0;
    if (!this.negative && bits > <u64>i64.MAX_VALUE) { this.fail(MSGPACK_E_RANGE); return 0; }
    return <i64>bits;
  }

  /** Reads a non-negative integer (RANGE for negatives). */
  readU64(): u64 {
    if (this.peek() == Format.Float) return <u64>this.integralFloat(0, 18446744073709551616.0);
    const bits = this.integer();
    if (this.error != MSGPACK_OK) return 0;
    if (this.negative) { this.fail(MSGPACK_E_RANGE); return 0; }
    return bits;
  }

  readI32(): i32 {
    const v = this.readI64();
    if (v < <i64>i32.MIN_VALUE || v > <i64>i32.MAX_VALUE) { this.fail(MSGPACK_E_RANGE); return 0; }
    return <i32>v;
  }

  readU32(): u32 {
    const v = this.readU64();
    if (v > <u64>u32.MAX_VALUE) { this.fail(MSGPACK_E_RANGE); return 0; }
    return <u32>v;
  }

  /** Reads a float of either width, or an integer converted to f64. */
  readF64(): f64 {
    if (this.error != MSGPACK_OK) return 0;
    if (this.position < this.end) {
      const b = <u32>load<u8>(this.position);
      if (b == 0xca) { this.position += 1; return <f64>reinterpret<f32>(this.u32()); }
      if (b == 0xcb) { this.position += 1; return reinterpret<f64>(this.u64()); }
    }
    const bits = this.integer();
    if (this.error != MSGPACK_OK) return 0;
    return this.negative ? <f64><i64>bits : <f64>bits;
  }

  readF32(): f32 {
    return <f32>this.readF64();
  }

  // --- strings and bytes ---------------------------------------------------------------------------------------

  /** Reads a string header and returns its byte length; the bytes start at `position` (checked to be there). */
  readStringHeader(): u32 {
    const b = this.head();
    if (this.error != MSGPACK_OK) return 0;
    let length: u32;
    if (b >= 0xa0 && b <= 0xbf) length = b & 0x1f;
    else if (b == 0xd9) length = this.u8();
    else if (b == 0xda) length = this.u16();
    else if (b == 0xdb) length = this.u32();
    else { this.wrongType(); return 0; }
    return this.fits(length) ? length : 0;
  }

  /** Reads a string (its UTF-8 must be valid: UTF8 otherwise). */
  readString(): string {
    const length = this.readStringHeader();
    if (this.error != MSGPACK_OK) return '';
    const at = this.position;
    if (!validUtf8(at, length)) { this.fail(MSGPACK_E_UTF8); return ''; }
    this.position += length;
    return String.UTF8.decodeUnsafe(at, length);
  }

  /** Reads a binary header and returns its byte length; the bytes start at `position` (checked to be there). */
  readBinaryHeader(): u32 {
    const b = this.head();
    if (this.error != MSGPACK_OK) return 0;
    let length: u32;
    if (b == 0xc4) length = this.u8();
    else if (b == 0xc5) length = this.u16();
    else if (b == 0xc6) length = this.u32();
    else { this.wrongType(); return 0; }
    return this.fits(length) ? length : 0;
  }

  /** Reads a binary into a new Uint8Array. */
  readBinary(): Uint8Array {
    const length = this.readBinaryHeader();
    if (this.error != MSGPACK_OK) return new Uint8Array(0);
    return this.take(length);
  }

  /** Copies `length` bytes (already checked by fits) into a new array. */
  private take(length: u32): Uint8Array {
    const out = new Uint8Array(<i32>length);
    memory.copy(out.dataStart, this.position, length);
    this.position += length;
    return out;
  }

  /** Reads an ext header: returns the data length and sets `extType`; the data starts at `position`. */
  readExtHeader(): u32 {
    const b = this.head();
    if (this.error != MSGPACK_OK) return 0;
    let length: u32;
    switch (b) {
      case 0xd4: length = 1; break;
      case 0xd5: length = 2; break;
      case 0xd6: length = 4; break;
      case 0xd7: length = 8; break;
      case 0xd8: length = 16; break;
      case 0xc7: length = this.u8(); break;
      case 0xc8: length = this.u16(); break;
      case 0xc9: length = this.u32(); break;
      default: this.wrongType(); return 0;
    }
    this.extType = <i8>this.u8();
    return this.fits(length) ? length : 0;
  }

  /** Skips `length` bytes after a string, binary or ext header (the header checked they are there). */
  skipBytes(length: u32): void {
    if (this.error == MSGPACK_OK && <usize>length <= this.end - this.position) this.position += length;
  }

  // --- containers ----------------------------------------------------------------------------------------------

  /** Reads an array header: the item count (each item takes at least one byte, so at most `remaining`). */
  readArrayHeader(): u32 {
    const b = this.head();
    if (this.error != MSGPACK_OK) return 0;
    let count: u32;
    if (b >= 0x90 && b <= 0x9f) count = b & 0x0f;
    else if (b == 0xdc) count = this.u16();
    else if (b == 0xdd) count = this.u32();
    else { this.wrongType(); return 0; }
    return this.fits(count) ? count : 0;
  }

  /** Reads a map header: the pair count (each pair takes at least two bytes). */
  readMapHeader(): u32 {
    const b = this.head();
    if (this.error != MSGPACK_OK) return 0;
    let count: u32;
    if (b >= 0x80 && b <= 0x8f) count = b & 0x0f;
    else if (b == 0xde) count = this.u16();
    else if (b == 0xdf) count = this.u32();
    else { this.wrongType(); return 0; }
    if (count > this.maxSize) { this.fail(MSGPACK_E_LIMIT); return 0; }
    if (<u64>count * 2 > <u64>(this.end - this.position)) { this.fail(MSGPACK_E_LENGTH); return 0; }
    return count;
  }

  // --- any value -----------------------------------------------------------------------------------------------

  /** Reads one value of any shape into a Value tree (nil on error). */
  readValue(): Value {
    return this.value(0);
  }

  private value(depth: i32): Value {
    const f = this.peek();
    switch (f) {
      case Format.Nil: this.position += 1; return Value.nil();
      case Format.Bool: return Value.bool(this.readBool());
      case Format.Int: {
        const bits = this.integer();
        return this.negative ? Value.int(<i64>bits) : Value.uint(bits);
      }
      case Format.Float: {
        const b = load<u8>(this.position);
        this.position += 1;
        return b == 0xca ? Value.f32(reinterpret<f32>(this.u32())) : Value.f64(reinterpret<f64>(this.u64()));
      }
      case Format.String: return Value.string(this.readString());
      case Format.Binary: return Value.binary(this.readBinary());
      case Format.Ext: {
        const length = this.readExtHeader();
        const type = this.extType;
        if (this.error != MSGPACK_OK) return Value.nil();
        return Value.ext(type, this.take(length));
      }
      case Format.Array: {
        if (depth >= this.maxDepth) { this.fail(MSGPACK_E_DEPTH); return Value.nil(); }
        const count = this.readArrayHeader();
        const items = new Array<Value>();
        for (let i: u32 = 0; i < count && this.error == MSGPACK_OK; i++) items.push(this.value(depth + 1));
        return this.error == MSGPACK_OK ? Value.array(items) : Value.nil();
      }
      case Format.Map: {
        if (depth >= this.maxDepth) { this.fail(MSGPACK_E_DEPTH); return Value.nil(); }
        const count = this.readMapHeader();
        const keys = new Array<Value>();
        const values = new Array<Value>();
        for (let i: u32 = 0; i < count && this.error == MSGPACK_OK; i++) {
          keys.push(this.value(depth + 1));
          values.push(this.value(depth + 1));
        }
        return this.error == MSGPACK_OK ? Value.map(keys, values) : Value.nil();
      }
      default:
        // Invalid: the end of input, 0xc1, or an earlier error.
        if (this.error == MSGPACK_OK) {
          if (this.position >= this.end) this.fail(MSGPACK_E_TRUNCATED);
          else this.fail(MSGPACK_E_TYPE);
        }
        return Value.nil();
    }
  }

  /** Skips one value of any shape without building it (same checks as readValue, no allocation). */
  skip(): void {
    // Iterative: `pending` counts values still to skip at the current level; depth via a small stack of counts.
    this.skipAt(0);
  }

  private skipAt(depth: i32): void {
    const f = this.peek();
    switch (f) {
      case Format.Nil: this.position += 1; return;
      case Format.Bool: this.readBool(); return;
      case Format.Int: this.integer(); return;
      case Format.Float: this.readF64(); return;
      case Format.String: this.skipBytes(this.readStringHeader()); return;
      case Format.Binary: this.skipBytes(this.readBinaryHeader()); return;
      case Format.Ext: this.skipBytes(this.readExtHeader()); return;
      case Format.Array: {
        if (depth >= this.maxDepth) { this.fail(MSGPACK_E_DEPTH); return; }
        const count = this.readArrayHeader();
        for (let i: u32 = 0; i < count && this.error == MSGPACK_OK; i++) this.skipAt(depth + 1);
        return;
      }
      case Format.Map: {
        if (depth >= this.maxDepth) { this.fail(MSGPACK_E_DEPTH); return; }
        const count = this.readMapHeader();
        for (let i: u32 = 0; i < count && this.error == MSGPACK_OK; i++) {
          this.skipAt(depth + 1);
          this.skipAt(depth + 1);
        }
        return;
      }
      default:
        if (this.error == MSGPACK_OK) this.fail(this.position >= this.end ? MSGPACK_E_TRUNCATED : MSGPACK_E_TYPE);
    }
  }
}

/** Appends msgpack to a private buffer that grows as needed (doubling). */
export class Writer {
  private buffer: Uint8Array;
  /** Bytes written so far. */
  length: u32 = 0;

  constructor(initial: i32 = 256) {
    this.buffer = new Uint8Array(initial > 16 ? initial : 16);
  }

  /** Address of the first byte written (valid until the next write, which may move the buffer). */
  get dataStart(): usize { return this.buffer.dataStart; }

  /** A copy of the bytes written. */
  toBytes(): Uint8Array {
    return this.buffer.slice(0, <i32>this.length);
  }

  /** Forgets what was written, keeping the buffer. */
  reset(): void { this.length = 0; }

  /** Makes room for `n` more bytes and returns the address to write them at. */
  private reserve(n: u32): usize {
    const need = <u64>this.length + n;
    let size = <u64>this.buffer.length;
    if (need > size) {
      while (size < need) size <<= 1;
      const grown = new Uint8Array(<i32>size);
      memory.copy(grown.dataStart, this.buffer.dataStart, this.length);
      this.buffer = grown;
    }
    const at = this.buffer.dataStart + this.length;
    this.length += n;
    return at;
  }

  private byte(b: u32): void { store<u8>(this.reserve(1), <u8>b); }
  private byte8(b: u32, v: u32): void { const p = this.reserve(2); store<u8>(p, <u8>b); store<u8>(p, <u8>v, 1); }
  private byte16(b: u32, v: u32): void { const p = this.reserve(3); store<u8>(p, <u8>b); store<u16>(p, bswap<u16>(<u16>v), 1); }
  private byte32(b: u32, v: u32): void { const p = this.reserve(5); store<u8>(p, <u8>b); store<u32>(p, bswap<u32>(v), 1); }
  private byte64(b: u32, v: u64): void { const p = this.reserve(9); store<u8>(p, <u8>b); store<u64>(p, bswap<u64>(v), 1); }

  writeNil(): void { this.byte(0xc0); }

  writeBool(v: bool): void { this.byte(v ? 0xc3 : 0xc2); }

  /** Writes a signed integer in the smallest format (the unsigned formats for values >= 0, as msgpack prefers). */
  writeInt(v: i64): void {
    if (v >= 0) { this.writeUint(<u64>v); return; }
    if (v >= -32) this.byte(<u32>(<u8><i8>v));
    else if (v >= <i64>i8.MIN_VALUE) this.byte8(0xd0, <u32><u8><i8>v);
    else if (v >= <i64>i16.MIN_VALUE) this.byte16(0xd1, <u32><u16><i16>v);
    else if (v >= <i64>i32.MIN_VALUE) this.byte32(0xd2, <u32><i32>v);
    else this.byte64(0xd3, <u64>v);
  }

  writeUint(v: u64): void {
    if (v <= 0x7f) this.byte(<u32>v);
    else if (v <= 0xff) this.byte8(0xcc, <u32>v);
    else if (v <= 0xffff) this.byte16(0xcd, <u32>v);
    else if (v <= 0xffffffff) this.byte32(0xce, <u32>v);
    else this.byte64(0xcf, v);
  }

  writeF32(v: f32): void { this.byte32(0xca, reinterpret<u32>(v)); }

  writeF64(v: f64): void { this.byte64(0xcb, reinterpret<u64>(v)); }

  writeStringHeader(length: u32): void {
    if (length < 32) this.byte(0xa0 | length);
    else if (length <= 0xff) this.byte8(0xd9, length);
    else if (length <= 0xffff) this.byte16(0xda, length);
    else this.byte32(0xdb, length);
  }

  writeString(s: string): void {
    const length = <u32>String.UTF8.byteLength(s);
    this.writeStringHeader(length);
    const at = this.reserve(length);
    String.UTF8.encodeUnsafe(changetype<usize>(s), s.length, at);
  }

  /** Writes a string from `length` bytes of UTF-8 at `start` (not checked: the caller vouches for them). */
  writeStringBytes(start: usize, length: u32): void {
    this.writeStringHeader(length);
    memory.copy(this.reserve(length), start, length);
  }

  writeBinaryHeader(length: u32): void {
    if (length <= 0xff) this.byte8(0xc4, length);
    else if (length <= 0xffff) this.byte16(0xc5, length);
    else this.byte32(0xc6, length);
  }

  writeBinary(bytes: Uint8Array): void {
    this.writeBinaryHeader(<u32>bytes.length);
    this.writeRaw(bytes.dataStart, <u32>bytes.length);
  }

  /** Copies `length` bytes at `start` as they are (already msgpack, or the body after a header). */
  writeRaw(start: usize, length: u32): void {
    memory.copy(this.reserve(length), start, length);
  }

  writeArrayHeader(count: u32): void {
    if (count < 16) this.byte(0x90 | count);
    else if (count <= 0xffff) this.byte16(0xdc, count);
    else this.byte32(0xdd, count);
  }

  writeMapHeader(count: u32): void {
    if (count < 16) this.byte(0x80 | count);
    else if (count <= 0xffff) this.byte16(0xde, count);
    else this.byte32(0xdf, count);
  }

  writeExtHeader(type: i8, length: u32): void {
    switch (length) {
      case 1: this.byte8(0xd4, <u32><u8>type); return;
      case 2: this.byte8(0xd5, <u32><u8>type); return;
      case 4: this.byte8(0xd6, <u32><u8>type); return;
      case 8: this.byte8(0xd7, <u32><u8>type); return;
      case 16: this.byte8(0xd8, <u32><u8>type); return;
    }
    if (length <= 0xff) this.byte8(0xc7, length);
    else if (length <= 0xffff) this.byte16(0xc8, length);
    else this.byte32(0xc9, length);
    this.byte(<u32><u8>type);
  }

  writeExt(type: i8, data: Uint8Array): void {
    this.writeExtHeader(type, <u32>data.length);
    this.writeRaw(data.dataStart, <u32>data.length);
  }

  /** Writes a Value tree. */
  writeValue(v: Value): void {
    switch (v.kind) {
      case Kind.Nil: this.writeNil(); break;
      case Kind.Bool: this.writeBool(v.flag); break;
      case Kind.Int: this.writeInt(v.bits); break;
      case Kind.Uint: this.writeUint(<u64>v.bits); break;
      case Kind.Float32: this.writeF32(<f32>v.number); break;
      case Kind.Float64: this.writeF64(v.number); break;
      case Kind.String: this.writeString(v.text); break;
      case Kind.Binary: this.writeBinary(v.bytes!); break;
      case Kind.Ext: this.writeExt(v.extType, v.bytes!); break;
      case Kind.Array: {
        const items = v.items!;
        this.writeArrayHeader(<u32>items.length);
        for (let i = 0; i < items.length; i++) this.writeValue(items[i]);
        break;
      }
      case Kind.Map: {
        const keys = v.keys!;
        const items = v.items!;
        const n = min(keys.length, items.length);
        this.writeMapHeader(<u32>n);
        for (let i = 0; i < n; i++) {
          this.writeValue(keys[i]);
          this.writeValue(items[i]);
        }
        break;
      }
    }
  }
}

/** Result of decode(): the value, or nil with the error code and where it was met. */
export class Decoded {
  constructor(public value: Value, public error: i32, public errorOffset: u32) {}
  get ok(): bool { return this.error == MSGPACK_OK; }
}

/** Decodes the one value `length` bytes at `start` hold (TRAILING when bytes are left over). */
export function decode(start: usize, length: usize, maxDepth: i32 = MSGPACK_MAX_DEPTH): Decoded {
  const r = new Reader(start, length);
  r.maxDepth = maxDepth;
  const v = r.readValue();
  const error = r.finish();
  return new Decoded(error == MSGPACK_OK ? v : Value.nil(), error, error == MSGPACK_OK ? 0 : <u32>(r.errorAt - start));
}

/** Encodes a Value tree into a new byte array. */
export function encode(v: Value): Uint8Array {
  const w = new Writer();
  w.writeValue(v);
  return w.toBytes();
}
