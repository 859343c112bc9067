/**
 * A faster encoder for the values messages are usually made of, writing the msgpack a `recordPackr()` (msgpackr,
 * `sequential: true`) writes for them, byte for byte: the peer decodes it with the same msgpackr Unpackr and the
 * same scan (host/codec.ts), so peers of older versions read it too.
 *
 * Why: msgpackr's `pack` was ~40 % of a producer's time in the objects row of `bench/everyday.ts`, much of it
 * set-up per call; `npm run bench:encode` puts the two side by side (~230–370 ns against ~200 for that object on
 * the development VM). This encoder handles
 *
 *  - plain objects (`constructor === Object`, prototype `Object.prototype`) as records: a shape (the object's keys
 *    in `for…in` order) is defined inline the first time it is sent (fixext 1 `0x72`, an id byte 0x40–0x5f, the
 *    array of keys, then the values) and named by its id byte alone afterwards; ids are handed out in turn and
 *    reused oldest first once all 32 are taken (the reused id is defined again inline, which the receiver follows);
 *  - arrays (`constructor === Array`), strings, numbers, booleans, `null`, `undefined`, `Buffer` and `Uint8Array`
 *    (as msgpack bin), in the forms msgpackr picks: integers below 0x40 as fixints and 0x40–0xff as uint8 (a fixint
 *    there would read as a record id), other 32-bit integers in the smallest int, any other number as float64;
 *    strings as UTF-8 with lone surrogates as U+FFFD.
 *
 * Anything else anywhere in the value (Date, Map, Set, class instances, typed arrays, bigint, functions, symbols,
 * nesting deeper than 64, shapes past the receiver's bounds, an `Object.prototype` with enumerable properties)
 * makes `encode` return NOT_ENCODED and leaves the encoder as it was: the caller packs that message with msgpackr
 * as plain msgpack, which defines no record, so the structures both sides know stay the same.
 *
 * State: the shapes defined so far, which the peer learns only from the records it reads. Every record encoded
 * must reach the peer, in order; after one that does not (its send failed), `reset()`, and every shape is defined
 * again before its next use. Bounds: at most MAX_RECORD_KEYS keys per shape and MAX_STRUCTURE_BYTES of keys over
 * the ids (what the receiver accepts); the tree of shapes seen is dropped past MAX_KEY_SLOTS keys in all.
 *
 * The same encoder writes plain msgpack too (`{ records: false }`: objects as map 16, integers below 0x80 as
 * fixints, as msgpackr's `new Packr({ useRecords: false })` writes them, byte for byte): `encodePlain`, which every
 * other send path of values uses (shm request/reply and trySend, the framed transports, bus publishers).
 *
 * Getters (and Proxy traps) of a value run once per attempt: a value that falls back to msgpackr, or needs more
 * room than `send` claimed in the ring, is read again from the start. A message sent from inside one (while an
 * encoder runs) goes through msgpackr.
 *
 * All encoders write into one buffer per process (`encoded`): encoding is synchronous and every caller copies the
 * result at once (into a ring or a send queue's private copy). It grows to the largest message encoded, and past
 * 16 MiB it is let go at the first encode after a message of 1 MiB or less.
 */
import { RESET_BUFFER_MODE } from 'msgpackr';
import { MAX_RECORD_KEYS, MAX_STRUCTURE_BYTES, plainPackr, recordKeyBytes } from './codec.js';

/** Record ids: 0x40 … 0x5f, the 32 msgpackr's sequential packer uses (the receiver accepts up to 0x7f). */
const FIRST_ID = 0x40;
const IDS = 32;
/** Nesting this deep (arrays and objects) is left to msgpackr. */
const MAX_DEPTH = 64;
/** Keys over all the shapes one encoder remembers; past it the encoder starts again from none. */
const MAX_KEY_SLOTS = 65536;
/** Strings up to this many UTF-16 units are written by a loop; longer ones by Buffer's native UTF-8 writer. */
const SHORT_STRING = 64;
/** What `encode` returns when the value needs msgpackr. */
export const NOT_ENCODED = -1;
/** What `encodeInto` returns when the value needs more room than it was given. */
export const NO_ROOM = -2;

/** A node of the tree of shapes: the path of keys from the root names a shape. */
interface Shape {
  /** Shapes with one more key. */
  readonly next: Map<string, Shape>;
  /** Its keys, in order. */
  readonly keys: readonly string[];
  /** What its keys count toward MAX_STRUCTURE_BYTES. */
  readonly keyBytes: number;
  /** Its record id while it has one, else 0. */
  id: number;
}

/** One definition made by the current `encode`, undone if the encode fails. */
interface Defined {
  index: number;
  shape: Shape;
  previous: Shape | undefined;
  total: number;
}

/** Thrown inside the encoder when a value needs msgpackr, or more room than encodeInto was given; never escape. */
const UNSUPPORTED = Symbol('unsupported');
const FULL = Symbol('full');

const OBJECT_PROTOTYPE = Object.prototype;

/** The buffer every encoder writes into; `encode` returns the length of its message, from offset 0. */
export let encoded: Buffer = Buffer.allocUnsafeSlow(8192);
let encodedView = new DataView(encoded.buffer, encoded.byteOffset, encoded.byteLength);
/** `encoded` stays this large at most once messages are back to ordinary sizes (at most a sixteenth of it). */
const KEEP_BYTES = 16 * 1024 * 1024;
/** The length of the last message `encode` wrote. */
let lastLength = 0;

/** Set while any encoder of this process runs (see `run`). */
let encoding = false;

/** True while Object.prototype has no enumerable property (for…in then yields an object's own keys only). */
function prototypeClean(): boolean {
  for (const _ in OBJECT_PROTOTYPE) return false;
  return true;
}

function newShape(keys: readonly string[], keyBytes: number): Shape {
  return { next: new Map(), keys, keyBytes, id: 0 };
}

/**
 * The encoder of one channel direction (`records`: true), or of plain msgpack (false: objects as maps, no state, as
 * msgpackr's `new Packr({ useRecords: false })` writes them, byte for byte; see `encodePlain`).
 */
export class RecordEncoder {
  /** Objects as records (shapes defined inline and named by id), or as maps. */
  readonly records: boolean;
  private b = encoded;
  private view = encodedView;
  private position = 0;
  /** encodeInto's end of the room; -1: `encoded`, which grows. */
  private limit = -1;
  private root = newShape([], 0);
  private keySlots = 0;
  /** Per depth (1 … MAX_DEPTH), the shape of the last object written there (from the current tree). */
  private lastShape: Array<Shape | undefined> = new Array<Shape | undefined>(MAX_DEPTH + 1).fill(undefined);
  /** The shape holding each id (index: id − 0x40). */
  private owners: Array<Shape | undefined> = new Array<Shape | undefined>(IDS).fill(undefined);
  /** The index the next new shape takes. */
  private nextIndex = 0;
  /** MAX_STRUCTURE_BYTES accounting of the shapes that hold ids. */
  private total = 0;
  private readonly defined: Defined[] = [];
  /** Integers below this are fixints: 0x40 with records (0x40–0x7f would read as record ids), 0x80 without. */
  private readonly fixints: number;

  constructor(options: { records?: boolean } = {}) {
    this.records = options.records ?? true;
    this.fixints = this.records ? FIRST_ID : 0x80;
  }

  /**
   * Encodes `value` into `encoded` from offset 0 and returns its length, or NOT_ENCODED (nothing changed) when a
   * part of it needs msgpackr. Errors other than that (a getter that throws) propagate, also with nothing changed.
   */
  encode(value: unknown): number {
    // A buffer grown for a huge message is let go once a message of ordinary size follows.
    if (encoded.length > KEEP_BYTES && lastLength <= KEEP_BYTES >>> 4 && !encoding) {
      encoded = Buffer.allocUnsafeSlow(8192);
      encodedView = new DataView(encoded.buffer, encoded.byteOffset, encoded.byteLength);
    }
    this.b = encoded;
    this.view = encodedView;
    this.limit = -1;
    const length = this.run(value, 0);
    if (length >= 0) lastLength = length;
    return length;
  }

  /**
   * Encodes `value` into `target[start … limit)` (`view` over the same bytes: a ring's claimed room) and returns
   * where it ends; NO_ROOM when it needs more (nothing changed: encode it again elsewhere), NOT_ENCODED as
   * for `encode`.
   */
  encodeInto(value: unknown, target: Buffer, view: DataView, start: number, limit: number): number {
    this.b = target;
    this.view = view;
    this.limit = limit;
    const end = this.run(value, start);
    this.b = encoded;
    this.view = encodedView;
    return end;
  }

  private run(value: unknown, start: number): number {
    // A getter or a Proxy trap of the value may send another message: that one goes to msgpackr (which handles
    // being re-entered), since every encoder shares `encoded`, and this one may be half-way through its state.
    if (encoding) return NOT_ENCODED;
    if (this.keySlots > MAX_KEY_SLOTS) this.reset();
    this.position = start;
    if (this.defined.length !== 0) this.defined.length = 0;
    encoding = true;
    try {
      if (!prototypeClean()) throw UNSUPPORTED;
      this.write(value, 0);
    } catch (error) {
      this.rollBack();
      if (error === UNSUPPORTED) return NOT_ENCODED;
      if (error === FULL) return NO_ROOM;
      throw error;
    } finally {
      encoding = false;
    }
    return this.position;
  }

  /** Forgets every shape: each is defined again the next time it is sent (after a record that never arrived). */
  reset(): void {
    this.root = newShape([], 0);
    this.lastShape.fill(undefined);
    this.keySlots = 0;
    this.owners = new Array<Shape | undefined>(IDS).fill(undefined);
    this.nextIndex = 0;
    this.total = 0;
    this.defined.length = 0;
  }

  private rollBack(): void {
    for (let i = this.defined.length - 1; i >= 0; i--) {
      const step = this.defined[i]!;
      step.shape.id = 0;
      this.owners[step.index] = step.previous;
      if (step.previous !== undefined) step.previous.id = FIRST_ID + step.index;
      this.nextIndex = step.index;
      this.total = step.total;
    }
    this.defined.length = 0;
  }

  /** Makes room for `n` more bytes. */
  private room(n: number): void {
    const need = this.position + n;
    if (this.limit >= 0) {
      if (need > this.limit) throw FULL;
      return;
    }
    if (need <= this.b.length) return;
    let size = this.b.length * 2;
    while (size < need) size *= 2;
    const bigger = Buffer.allocUnsafeSlow(size);
    // All of it: a string's bytes may be written past `position` before its header.
    this.b.copy(bigger, 0, 0, this.b.length);
    encoded = this.b = bigger;
    encodedView = this.view = new DataView(bigger.buffer, bigger.byteOffset, bigger.byteLength);
  }

  private write(value: unknown, depth: number): void {
    switch (typeof value) {
      case 'string': this.writeString(value); return;
      case 'number': this.writeNumber(value); return;
      case 'boolean': this.room(1); this.b[this.position++] = value ? 0xc3 : 0xc2; return;
      case 'undefined':
        // fixext 1 of type 0: msgpackr's undefined.
        this.room(3);
        this.b[this.position++] = 0xd4;
        this.b[this.position++] = 0;
        this.b[this.position++] = 0;
        return;
      case 'object': {
        if (value === null) { this.room(1); this.b[this.position++] = 0xc0; return; }
        if (depth >= MAX_DEPTH) throw UNSUPPORTED;
        const constructor = (value as object).constructor;
        if (constructor === Object) {
          if (Object.getPrototypeOf(value) !== OBJECT_PROTOTYPE) throw UNSUPPORTED;
          this.writeObject(value as Record<string, unknown>, depth + 1);
        } else if (constructor === Array) this.writeArray(value as unknown[], depth + 1);
        else if (constructor === Buffer || constructor === Uint8Array) this.writeBinary(value as Uint8Array);
        else throw UNSUPPORTED;
        return;
      }
      default: throw UNSUPPORTED;
    }
  }

  private writeNumber(value: number): void {
    this.room(9);
    const b = this.b;
    let p = this.position;
    if (value >>> 0 === value) {
      if (value < this.fixints) b[p++] = value;
      else if (value < 0x100) { b[p++] = 0xcc; b[p++] = value; }
      else if (value < 0x10000) { b[p++] = 0xcd; b[p++] = value >> 8; b[p++] = value & 0xff; }
      else { b[p++] = 0xce; this.view.setUint32(p, value); p += 4; }
    } else if (value >> 0 === value) {
      if (value >= -0x20) b[p++] = 0x100 + value;
      else if (value >= -0x80) { b[p++] = 0xd0; b[p++] = value + 0x100; }
      else if (value >= -0x8000) { b[p++] = 0xd1; this.view.setInt16(p, value); p += 2; }
      else { b[p++] = 0xd2; this.view.setInt32(p, value); p += 4; }
    } else {
      b[p++] = 0xcb;
      this.view.setFloat64(p, value);
      p += 8;
    }
    this.position = p;
  }

  private writeString(value: string): void {
    const chars = value.length;
    // The header's size follows the number of UTF-16 units (as msgpackr's does); the bytes move if the UTF-8
    // length needs another.
    const header = chars < 0x20 ? 1 : chars < 0x100 ? 2 : chars < 0x10000 ? 3 : 5;
    const start = this.position + header;
    let length: number;
    if (chars <= SHORT_STRING) {
      // ASCII first, room for one byte a unit; the rest (up to 3 bytes a unit) from the first that is not.
      this.room(header + chars);
      const b = this.b;
      let p = start;
      let i = 0;
      for (; i < chars; i++) {
        const c = value.charCodeAt(i);
        if (c >= 0x80) break;
        b[p++] = c;
      }
      if (i === chars) length = p - start;
      else {
        this.room(header + i + (chars - i) * 3);
        length = p - start + this.b.write(value.slice(i), p, 'utf8');
      }
    } else {
      this.room(header + chars * 3);
      length = this.b.write(value, start, 'utf8');
    }
    const size = length < 0x20 ? 1 : length < 0x100 ? 2 : length < 0x10000 ? 3 : 5;
    if (size !== header) {
      this.room(size + length);
      this.b.copyWithin(this.position + size, start, start + length);
    }
    const b = this.b;
    let p = this.position;
    if (size === 1) b[p++] = 0xa0 | length;
    else if (size === 2) { b[p++] = 0xd9; b[p++] = length; }
    else if (size === 3) { b[p++] = 0xda; b[p++] = length >> 8; b[p++] = length & 0xff; }
    else { b[p++] = 0xdb; this.view.setUint32(p, length); p += 4; }
    this.position = p + length;
  }

  private writeBinary(bytes: Uint8Array): void {
    const length = bytes.length;
    this.room(5 + length);
    const b = this.b;
    let p = this.position;
    if (length < 0x100) { b[p++] = 0xc4; b[p++] = length; }
    else if (length < 0x10000) { b[p++] = 0xc5; b[p++] = length >> 8; b[p++] = length & 0xff; }
    else { b[p++] = 0xc6; this.view.setUint32(p, length); p += 4; }
    b.set(bytes, p);
    this.position = p + length;
  }

  private writeArray(array: unknown[], depth: number): void {
    const length = array.length;
    this.writeHeader(length);
    for (let i = 0; i < length; i++) this.write(array[i], depth);
  }

  /** A fixarray / array 16 / array 32 header. */
  private writeHeader(length: number): void {
    this.room(5);
    const b = this.b;
    if (length < 0x10) b[this.position++] = 0x90 | length;
    else if (length < 0x10000) {
      b[this.position++] = 0xdc;
      b[this.position++] = length >> 8;
      b[this.position++] = length & 0xff;
    } else {
      b[this.position++] = 0xdd;
      this.view.setUint32(this.position, length);
      this.position += 4;
    }
  }

  private writeObject(object: Record<string, unknown>, depth: number): void {
    if (!this.records) { this.writeMap(object, depth); return; }
    // The shape of the last object at this depth, if this one has the same keys (messages of one kind, an array of
    // like objects): string compares instead of a lookup per key in the tree.
    let shape = this.lastShape[depth];
    if (shape !== undefined) {
      const keys = shape.keys;
      let n = 0;
      for (const key in object) {
        if (keys[n] !== key) { n = -1; break; }
        n++;
      }
      if (n !== keys.length) shape = undefined;
    }
    if (shape === undefined) shape = this.shapeOf(object);
    this.lastShape[depth] = shape;
    if (shape.id !== 0) {
      this.room(1);
      this.b[this.position++] = shape.id;
    } else {
      this.define(shape);
    }
    // The keys again, for the values: a getter that changed the object's keys meanwhile would make the values
    // disagree with the shape just written.
    const keys = shape.keys;
    let n = 0;
    for (const key in object) {
      if (keys[n] !== key) throw UNSUPPORTED;
      n++;
      this.write(object[key], depth);
    }
    if (n !== keys.length) throw UNSUPPORTED;
  }

  /** The shape of `object`'s keys, from the tree (grown by it if new). */
  private shapeOf(object: Record<string, unknown>): Shape {
    let shape = this.root;
    for (const key in object) {
      let next = shape.next.get(key);
      if (next === undefined) {
        if (shape.keys.length >= MAX_RECORD_KEYS) throw UNSUPPORTED;
        next = newShape([...shape.keys, key], shape.keyBytes + recordKeyBytes(Buffer.byteLength(key)));
        shape.next.set(key, next);
        this.keySlots += next.keys.length;
      }
      shape = next;
    }
    return shape;
  }

  /** An object as a map: map 16 always (its size is known after the keys), then each key and value. */
  private writeMap(object: Record<string, unknown>, depth: number): void {
    this.room(3);
    const at = this.position;
    this.b[at] = 0xde;
    this.position = at + 3;
    let size = 0;
    for (const key in object) {
      this.writeString(key);
      this.write(object[key], depth);
      size++;
    }
    // msgpackr throws past this; so does `encodePlain`, through it.
    if (size > 0xffff) throw UNSUPPORTED;
    this.b[at + 1] = size >> 8;
    this.b[at + 2] = size & 0xff;
  }

  /** Gives `shape` the next id and writes its definition: fixext 1 "r", the id, the array of its keys. */
  private define(shape: Shape): void {
    const index = this.nextIndex;
    const previous = this.owners[index];
    const total = this.total - (previous === undefined ? 0 : previous.keyBytes) + shape.keyBytes;
    // What the receiver would refuse goes as plain msgpack instead.
    if (total > MAX_STRUCTURE_BYTES) throw UNSUPPORTED;
    this.defined.push({ index, shape, previous, total: this.total });
    if (previous !== undefined) previous.id = 0;
    this.owners[index] = shape;
    shape.id = FIRST_ID + index;
    this.nextIndex = (index + 1) % IDS;
    this.total = total;
    this.room(3);
    this.b[this.position++] = 0xd4;
    this.b[this.position++] = 0x72;
    this.b[this.position++] = shape.id;
    const keys = shape.keys;
    this.writeHeader(keys.length);
    for (let i = 0; i < keys.length; i++) this.writeString(keys[i]!);
  }
}

/** The plain encoder every caller shares (it keeps no state between messages). */
const plain = new RecordEncoder({ records: false });

/**
 * Plain msgpack of `value` (objects as maps): shmbus's encoder for the values it takes, msgpackr for the rest.
 * The bytes are valid until the next encode in this process; every send path copies them at once.
 */
export function encodePlain(value: unknown): Uint8Array {
  const length = plain.encode(value);
  if (length !== NOT_ENCODED) return viewOfEncoded(length);
  return plainPackr().pack(value, RESET_BUFFER_MODE);
}

/** Views of `encoded` by length, made once each while it stays the same buffer: a message of a length seen before
 * costs no view (a typed array view costs V8 about as much as encoding a small object's keys). */
const VIEW_CACHE = 1024;
let views: Array<Uint8Array | undefined> = [];
let viewsOf: Buffer | undefined;

function viewOfEncoded(length: number): Uint8Array {
  if (length > VIEW_CACHE) return encoded.subarray(0, length);
  if (viewsOf !== encoded) {
    views = new Array<Uint8Array | undefined>(VIEW_CACHE + 1).fill(undefined);
    viewsOf = encoded;
  }
  return views[length] ??= new Uint8Array(encoded.buffer, encoded.byteOffset, length);
}
