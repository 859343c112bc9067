// A msgpack value as a plugin sees it: one small class with a kind tag, so a handler can walk any message without
// knowing its shape in advance. Typed readers in ./msgpack.ts skip this tree entirely when the shape is known.

/** What a Value holds. */
export enum Kind {
  Nil = 0,
  Bool = 1,
  /** A signed integer (every msgpack integer that fits an i64). */
  Int = 2,
  /** An unsigned integer above i64's range (2^63 … 2^64-1). */
  Uint = 3,
  Float32 = 4,
  Float64 = 5,
  String = 6,
  Binary = 7,
  Array = 8,
  Map = 9,
  /** An extension: a type byte (-128 … 127; -1 is the msgpack timestamp) and opaque data. */
  Ext = 10,
}

/**
 * One msgpack value. Fields not used by the kind stay at their zero value. Maps keep their pairs in order, as
 * two parallel arrays (keys may be any value, as msgpack allows).
 */
export class Value {
  kind: Kind = Kind.Nil;
  /** Bool: the truth value. */
  flag: bool = false;
  /** Int: the value; Uint: the bits of the u64. */
  bits: i64 = 0;
  /** Float32 / Float64: the value (a Float32 keeps its f32 value exactly). */
  number: f64 = 0;
  /** String: the text. */
  text: string = '';
  /** Binary and Ext: the bytes. */
  bytes: Uint8Array | null = null;
  /** Ext: the type byte. */
  extType: i8 = 0;
  /** Array: the items; Map: the values. */
  items: Array<Value> | null = null;
  /** Map: the keys (same length as items). */
  keys: Array<Value> | null = null;

  static nil(): Value { return new Value(); }

  static bool(flag: bool): Value {
    const v = new Value();
    v.kind = Kind.Bool;
    v.flag = flag;
    return v;
  }

  static int(n: i64): Value {
    const v = new Value();
    v.kind = Kind.Int;
    v.bits = n;
    return v;
  }

  /** An unsigned integer: stored as Int when it fits an i64, so equal numbers compare equal whatever their source. */
  static uint(n: u64): Value {
    const v = new Value();
    v.kind = n > <u64>i64.MAX_VALUE ? Kind.Uint : Kind.Int;
    v.bits = <i64>n;
    return v;
  }

  static f32(n: f32): Value {
    const v = new Value();
    v.kind = Kind.Float32;
    v.number = <f64>n;
    return v;
  }

  static f64(n: f64): Value {
    const v = new Value();
    v.kind = Kind.Float64;
    v.number = n;
    return v;
  }

  static string(text: string): Value {
    const v = new Value();
    v.kind = Kind.String;
    v.text = text;
    return v;
  }

  static binary(bytes: Uint8Array): Value {
    const v = new Value();
    v.kind = Kind.Binary;
    v.bytes = bytes;
    return v;
  }

  static array(items: Array<Value> = []): Value {
    const v = new Value();
    v.kind = Kind.Array;
    v.items = items;
    return v;
  }

  static map(keys: Array<Value> = [], values: Array<Value> = []): Value {
    const v = new Value();
    v.kind = Kind.Map;
    v.keys = keys;
    v.items = values;
    return v;
  }

  static ext(type: i8, data: Uint8Array): Value {
    const v = new Value();
    v.kind = Kind.Ext;
    v.extType = type;
    v.bytes = data;
    return v;
  }

  get isNil(): bool { return this.kind == Kind.Nil; }

  /** Items of an array, pairs of a map, bytes of a binary or ext, UTF-16 units of a string; 0 otherwise. */
  get length(): i32 {
    switch (this.kind) {
      case Kind.Array:
      case Kind.Map: return this.items!.length;
      case Kind.Binary:
      case Kind.Ext: return this.bytes!.length;
      case Kind.String: return this.text.length;
      default: return 0;
    }
  }

  /** The number as an f64 (integers converted), or NaN when this is not a number. */
  toF64(): f64 {
    switch (this.kind) {
      case Kind.Int: return <f64>this.bits;
      case Kind.Uint: return <f64><u64>this.bits;
      case Kind.Float32:
      case Kind.Float64: return this.number;
      default: return NaN;
    }
  }

  /** Item `index` of an array, or null when out of range or not an array. */
  at(index: i32): Value | null {
    if (this.kind != Kind.Array) return null;
    const items = this.items!;
    return <u32>index < <u32>items.length ? items[index] : null;
  }

  /** The value under the string key `key` in a map (the first match), or null. */
  get(key: string): Value | null {
    if (this.kind != Kind.Map) return null;
    const keys = this.keys!;
    const items = this.items!;
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i];
      if (k.kind == Kind.String && k.text == key) return items[i];
    }
    return null;
  }

  /** Appends `item` to an array. */
  push(item: Value): Value {
    if (this.kind == Kind.Array) this.items!.push(item);
    return this;
  }

  /** Appends the pair (`key`, `value`) to a map. */
  set(key: string, value: Value): Value {
    if (this.kind == Kind.Map) {
      this.keys!.push(Value.string(key));
      this.items!.push(value);
    }
    return this;
  }
}
