// Test entry for the codec (compiled to build/guest/codec-test.wasm; never part of a plugin). The test writes
// msgpack into the input buffer and asks for a decode, a re-encode or a description of the decoded value.

import { Reader, Writer, Value, Kind, decode } from './msgpack';
import { MSGPACK_OK } from '../layout';

let inputBuffer = new Uint8Array(1024);
let out = new Writer(1024);

/** Address of an input buffer of at least `length` bytes (valid until the next call of input). */
export function input(length: u32): usize {
  if (<u32>inputBuffer.length < length) inputBuffer = new Uint8Array(<i32>length);
  return inputBuffer.dataStart;
}

/** Address of the output of the last call (length: its result). */
export function output(): usize {
  return out.dataStart;
}

/** Decodes `length` input bytes and re-encodes the value: the output length, or a negative MSGPACK_E_* code. */
export function roundtrip(length: u32, maxDepth: i32): i32 {
  const d = decode(inputBuffer.dataStart, length, maxDepth);
  if (!d.ok) return d.error;
  out.reset();
  out.writeValue(d.value);
  return <i32>out.length;
}

/** Offset of the error of the last failed roundtrip's decode (recomputed). */
export function error_offset(length: u32, maxDepth: i32): u32 {
  return decode(inputBuffer.dataStart, length, maxDepth).errorOffset;
}

/** Skips one value (no tree built) and checks nothing trails: MSGPACK_OK or the error code. */
export function skip(length: u32, maxDepth: i32): i32 {
  const r = new Reader(inputBuffer.dataStart, length);
  r.maxDepth = maxDepth;
  r.skip();
  return r.finish();
}

/** Decodes and writes a JSON description of the value (see test/guest/wasm.ts) as output: its length or an error. */
export function describe(length: u32): i32 {
  const d = decode(inputBuffer.dataStart, length);
  if (!d.ok) return d.error;
  out.reset();
  const text = describeValue(d.value);
  out.writeRaw(changetype<usize>(String.UTF8.encode(text)), <u32>String.UTF8.byteLength(text));
  return <i32>out.length;
}

/**
 * Reads the typed way: the input must hold an array [i64, u32, f64, string, binary, bool, nil]; writes it back with
 * the typed writers. Checks that the typed readers and writers agree with the Value path.
 */
export function typed(length: u32): i32 {
  const r = new Reader(inputBuffer.dataStart, length);
  const n = r.readArrayHeader();
  if (r.ok && n != 7) return -100;
  const a = r.readI64();
  const b = r.readU32();
  const c = r.readF64();
  const s = r.readString();
  const bin = r.readBinary();
  const flag = r.readBool();
  r.readNil();
  const error = r.finish();
  if (error != MSGPACK_OK) return error;
  out.reset();
  out.writeArrayHeader(7);
  out.writeInt(a);
  out.writeUint(b);
  out.writeF64(c);
  out.writeString(s);
  out.writeBinary(bin);
  out.writeBool(flag);
  out.writeNil();
  return <i32>out.length;
}

function hex(bytes: Uint8Array): string {
  const digits = '0123456789abcdef';
  let s = '';
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    s += digits.charAt(b >> 4) + digits.charAt(b & 15);
  }
  return s;
}

function u64Hex(bits: u64): string {
  const digits = '0123456789abcdef';
  let s = '';
  for (let shift = 60; shift >= 0; shift -= 4) s += digits.charAt(<i32>((bits >> <u64>shift) & 15));
  return s;
}

function describeValue(v: Value): string {
  switch (v.kind) {
    case Kind.Nil: return 'null';
    case Kind.Bool: return v.flag ? 'true' : 'false';
    case Kind.Int: return '{"int":"' + v.bits.toString() + '"}';
    case Kind.Uint: return '{"uint":"' + (<u64>v.bits).toString() + '"}';
    case Kind.Float32: return '{"f32":"' + u64Hex(<u64>reinterpret<u32>(<f32>v.number)) + '"}';
    case Kind.Float64: return '{"f64":"' + u64Hex(reinterpret<u64>(v.number)) + '"}';
    case Kind.String: return '{"str":"' + hex(Uint8Array.wrap(String.UTF8.encode(v.text))) + '"}';
    case Kind.Binary: return '{"bin":"' + hex(v.bytes!) + '"}';
    case Kind.Ext: return '{"ext":' + v.extType.toString() + ',"data":"' + hex(v.bytes!) + '"}';
    case Kind.Array: {
      const items = v.items!;
      let s = '[';
      for (let i = 0; i < items.length; i++) s += (i > 0 ? ',' : '') + describeValue(items[i]);
      return s + ']';
    }
    case Kind.Map: {
      const keys = v.keys!;
      const items = v.items!;
      let s = '{"map":[';
      for (let i = 0; i < keys.length; i++) s += (i > 0 ? ',' : '') + '[' + describeValue(keys[i]) + ',' + describeValue(items[i]) + ']';
      return s + ']}';
    }
  }
  return 'null';
}
