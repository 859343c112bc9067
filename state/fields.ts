/**
 * The field list of a SharedState: parsing the spec, placing each field in the block (assembly/layout.ts, "State
 * body"), the hash that goes into the segment header, and reading/writing one field's bytes. Every length read
 * from the block is bounded by the field's declared size: the block is shared memory, written by peers.
 */
import { STATE_MAX_BLOCK, STATE_MAX_FIELD_BYTES } from '../assembly/layout.js';
import { BadArgumentError } from '../host/errors.js';

/** A field type: fixed-width numbers, a boolean, or a bounded UTF-8 string / byte array (N bytes at most). */
export type FieldType = 'u32' | 'i32' | 'u64' | 'i64' | 'f64' | 'bool' | `string:${number}` | `bytes:${number}`;

/** The field list: name → type. Its order is part of the layout. */
export type FieldSpec = Record<string, FieldType>;

/** The JavaScript value of a field of type T. 64-bit integers: a number when it is a safe integer, else a bigint. */
export type ValueOf<T> = T extends 'bool' ? boolean
  : T extends `string:${number}` ? string
  : T extends `bytes:${number}` ? Uint8Array
  : T extends 'u64' | 'i64' ? number | bigint
  : number;

/** Every field's value. */
export type Snapshot<F extends FieldSpec> = { [K in keyof F]: ValueOf<F[K]> };

/** Integer fields (those add() and compareAndSet() take). */
export type IntegerField<F extends FieldSpec> = { [K in keyof F]: F[K] extends 'u32' | 'i32' | 'u64' | 'i64' ? K : never }[keyof F];

type Kind = 'u32' | 'i32' | 'u64' | 'i64' | 'f64' | 'bool' | 'string' | 'bytes';

export interface Field {
  name: string;
  kind: Kind;
  /** Offset in the block. */
  offset: number;
  /** string/bytes: most bytes. */
  max: number;
}

const NAME = /^[A-Za-z_$][A-Za-z0-9_$]{0,63}$/;
const MAX_FIELDS = 1024;

export interface Layout {
  fields: Field[];
  byName: Map<string, Field>;
  /** Bytes of one copy of the block. */
  block: number;
  /** FNV-1a of the canonical list: what the segment header records. */
  hash: number;
}

/** Parses and places a field spec; ERR_SHMBUS_BAD_ARGUMENT for anything off. */
export function layoutOf(spec: unknown): Layout {
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) throw new BadArgumentError('fields must be an object of name: type');
  const entries = Object.entries(spec as Record<string, unknown>);
  if (entries.length === 0 || entries.length > MAX_FIELDS) throw new BadArgumentError(`fields must name 1 … ${MAX_FIELDS} fields`, { count: entries.length });
  const fields: Field[] = [];
  const byName = new Map<string, Field>();
  let offset = 0;
  let canonical = '';
  for (const [name, type] of entries) {
    if (!NAME.test(name)) throw new BadArgumentError('field name must be an identifier of at most 64 characters', { field: name });
    if (typeof type !== 'string') throw new BadArgumentError('field type must be a string', { field: name, type: String(type) });
    let kind: Kind;
    let max = 0;
    let bytes: number;
    const sized = /^(string|bytes):(\d{1,6})$/.exec(type);
    if (sized) {
      kind = sized[1] as Kind;
      max = Number(sized[2]);
      if (max < 1 || max > STATE_MAX_FIELD_BYTES) throw new BadArgumentError(`${kind}:N needs 1 ≤ N ≤ ${STATE_MAX_FIELD_BYTES}`, { field: name, type });
      bytes = 4 + max;
    } else if (type === 'u32' || type === 'i32' || type === 'bool') {
      kind = type;
      bytes = 4;
    } else if (type === 'u64' || type === 'i64' || type === 'f64') {
      kind = type;
      bytes = 8;
    } else {
      throw new BadArgumentError('unknown field type (u32, i32, u64, i64, f64, bool, string:N, bytes:N)', { field: name, type });
    }
    const field = { name, kind, offset, max };
    fields.push(field);
    byName.set(name, field);
    offset = (offset + bytes + 7) & ~7;
    if (offset > STATE_MAX_BLOCK) throw new BadArgumentError(`fields take more than ${STATE_MAX_BLOCK} bytes`, { bytes: offset });
    canonical += `${name}:${kind === 'string' || kind === 'bytes' ? `${kind}:${max}` : kind}\n`;
  }
  return { fields, byName, block: offset, hash: fnv1a(canonical) };
}

function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(text, 'utf8')) {
    h ^= byte;
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

/** A 64-bit value as the API returns it: a number when safe, else a bigint. */
function big(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

export type Value = number | bigint | boolean | string | Uint8Array;

/** Reads field `f` of the copy at byte `base` of `view`. Lengths are bounded by the field's size. */
export function readField(view: DataView, u8: Uint8Array, base: number, f: Field): Value {
  const at = base + f.offset;
  switch (f.kind) {
    case 'u32': return view.getUint32(at, true);
    case 'i32': return view.getInt32(at, true);
    case 'bool': return view.getUint32(at, true) !== 0;
    case 'f64': return view.getFloat64(at, true);
    case 'u64': return big(view.getBigUint64(at, true));
    case 'i64': return big(view.getBigInt64(at, true));
    case 'string': case 'bytes': {
      const length = Math.min(view.getUint32(at, true), f.max);
      const bytes = u8.slice(at + 4, at + 4 + length);
      return f.kind === 'bytes' ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
    }
  }
}

/** Checks `value` for field `f` and returns what writeField stores (a bigint for 64-bit integers, bytes for text). */
export function checkValue(f: Field, value: unknown): number | bigint | Uint8Array {
  const bad = (why: string) => new BadArgumentError(`bad value for ${f.kind} field: ${why}`, { field: f.name, value: String(value) });
  switch (f.kind) {
    case 'u32':
      if (!Number.isInteger(value) || (value as number) < 0 || (value as number) > 0xffffffff) throw bad('an integer 0 … 2^32-1');
      return value as number;
    case 'i32':
      if (!Number.isInteger(value) || (value as number) < -0x80000000 || (value as number) > 0x7fffffff) throw bad('an integer -2^31 … 2^31-1');
      return value as number;
    case 'bool':
      if (typeof value !== 'boolean') throw bad('a boolean');
      return value ? 1 : 0;
    case 'f64':
      if (typeof value !== 'number') throw bad('a number');
      return value;
    case 'u64': case 'i64': {
      let v: bigint;
      if (typeof value === 'bigint') v = value;
      else if (Number.isSafeInteger(value)) v = BigInt(value as number);
      else throw bad('a bigint or a safe integer');
      if (f.kind === 'u64' ? v < 0n || v > U64_MAX : v < I64_MIN || v > I64_MAX) throw bad('out of range');
      return v;
    }
    case 'string': {
      if (typeof value !== 'string') throw bad('a string');
      const bytes = Buffer.from(value, 'utf8');
      if (bytes.length > f.max) throw bad(`longer than ${f.max} UTF-8 bytes`);
      return bytes;
    }
    case 'bytes': {
      if (!(value instanceof Uint8Array)) throw bad('a Uint8Array');
      if (value.length > f.max) throw bad(`longer than ${f.max} bytes`);
      return value;
    }
  }
}

/** Writes a value checkValue returned into field `f` of the copy at `base`. */
export function writeField(view: DataView, u8: Uint8Array, base: number, f: Field, v: number | bigint | Uint8Array): void {
  const at = base + f.offset;
  switch (f.kind) {
    case 'u32': case 'bool': view.setUint32(at, v as number, true); return;
    case 'i32': view.setInt32(at, v as number, true); return;
    case 'f64': view.setFloat64(at, v as number, true); return;
    case 'u64': view.setBigUint64(at, v as bigint, true); return;
    case 'i64': view.setBigInt64(at, v as bigint, true); return;
    case 'string': case 'bytes': {
      const bytes = v as Uint8Array;
      view.setUint32(at, bytes.length, true);
      u8.set(bytes, at + 4);
    }
  }
}

/** `current + delta` for an integer field, wrapping like the machine word (C atomics do the same). */
export function addInteger(f: Field, current: Value, delta: unknown): number | bigint {
  if (f.kind === 'u32' || f.kind === 'i32') {
    if (!Number.isInteger(delta)) throw new BadArgumentError('delta must be an integer', { field: f.name, delta: String(delta) });
    const sum = (current as number) + (delta as number);
    return f.kind === 'u32' ? sum >>> 0 : sum | 0;
  }
  if (f.kind === 'u64' || f.kind === 'i64') {
    let d: bigint;
    if (typeof delta === 'bigint') d = delta;
    else if (Number.isSafeInteger(delta)) d = BigInt(delta as number);
    else throw new BadArgumentError('delta must be a bigint or a safe integer', { field: f.name, delta: String(delta) });
    const sum = BigInt(current as number | bigint) + d;
    return f.kind === 'u64' ? BigInt.asUintN(64, sum) : BigInt.asIntN(64, sum);
  }
  throw new BadArgumentError('add() and compareAndSet() take integer fields only', { field: f.name, type: f.kind });
}

export { big };
