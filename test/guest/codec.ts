// Loads build/guest/codec-test.wasm (assembly/guest/codec-test.ts) and wraps its exports for the codec tests.
// The module's only import is the AssemblyScript `abort`: any call of it (an assertion, an out-of-bounds access the
// runtime caught) is recorded and thrown, so a test sees a trap as a failure, never as a result.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface CodecExports {
  memory: WebAssembly.Memory;
  input(length: number): number;
  output(): number;
  roundtrip(length: number, maxDepth: number): number;
  error_offset(length: number, maxDepth: number): number;
  skip(length: number, maxDepth: number): number;
  describe(length: number): number;
  typed(length: number): number;
}

/** A described value: the JSON assembly/guest/codec-test.ts writes for a decoded Value. */
export type Described =
  | null | boolean | Described[]
  | { int: string } | { uint: string } | { f32: string } | { f64: string } | { str: string } | { bin: string }
  | { ext: number; data: string } | { map: [Described, Described][] };

export const CODEC_WASM = fileURLToPath(new URL('../../build/guest/codec-test.wasm', import.meta.url));

export class Codec {
  private constructor(private readonly x: CodecExports, readonly aborts: string[]) {}

  static async load(): Promise<Codec> {
    const aborts: string[] = [];
    let memory: WebAssembly.Memory | undefined;
    const text = (ptr: number): string => {
      if (!memory || ptr === 0) return '';
      const len = new Uint32Array(memory.buffer, ptr - 4, 1)[0]!;
      return Buffer.from(memory.buffer, ptr, len).toString('utf16le');
    };
    const { instance } = await WebAssembly.instantiate(readFileSync(CODEC_WASM), {
      env: {
        abort(msg: number, file: number, line: number, column: number) {
          const what = `abort: ${text(msg)} at ${text(file)}:${line}:${column}`;
          aborts.push(what);
          throw new Error(what);
        },
      },
    });
    const x = instance.exports as unknown as CodecExports;
    memory = x.memory;
    return new Codec(x, aborts);
  }

  private put(bytes: Uint8Array): number {
    const at = this.x.input(bytes.length);
    new Uint8Array(this.x.memory.buffer, at, bytes.length).set(bytes);
    return bytes.length;
  }

  private take(n: number): Uint8Array {
    return new Uint8Array(this.x.memory.buffer, this.x.output(), n).slice();
  }

  /** Decodes and re-encodes: the bytes, or the negative MSGPACK_E_* code. */
  roundtrip(bytes: Uint8Array, maxDepth = 64): Uint8Array | number {
    const n = this.x.roundtrip(this.put(bytes), maxDepth);
    return n < 0 ? n : this.take(n);
  }

  /** Offset of the error decode met in `bytes`. */
  errorOffset(bytes: Uint8Array, maxDepth = 64): number {
    return this.x.error_offset(this.put(bytes), maxDepth);
  }

  /** Skips the value: MSGPACK_OK or the error code. */
  skip(bytes: Uint8Array, maxDepth = 64): number {
    return this.x.skip(this.put(bytes), maxDepth);
  }

  /** The decoded value's description, or the negative MSGPACK_E_* code. */
  describe(bytes: Uint8Array): Described | number {
    const n = this.x.describe(this.put(bytes));
    return n < 0 ? n : (JSON.parse(Buffer.from(this.take(n)).toString('utf8')) as Described);
  }

  /** Reads [i64, u32, f64, string, binary, bool, nil] with the typed readers and writes it back. */
  typed(bytes: Uint8Array): Uint8Array | number {
    const n = this.x.typed(this.put(bytes));
    return n < 0 ? n : this.take(n);
  }
}

/** The JS value a description stands for: integers as BigInt, floats as numbers, maps as arrays of pairs. */
export function toJs(d: Described): unknown {
  if (d === null || typeof d === 'boolean') return d;
  if (Array.isArray(d)) return d.map(toJs);
  if ('int' in d) return BigInt(d.int);
  if ('uint' in d) return BigInt(d.uint);
  if ('f32' in d) return new DataView(Uint32Array.of(parseInt(d.f32, 16)).buffer).getFloat32(0, true);
  if ('f64' in d) {
    const dv = new DataView(new ArrayBuffer(8));
    dv.setBigUint64(0, BigInt(`0x${d.f64}`));
    return dv.getFloat64(0);
  }
  if ('str' in d) return Buffer.from(d.str, 'hex').toString('utf8');
  if ('bin' in d) return Uint8Array.from(Buffer.from(d.bin, 'hex'));
  if ('ext' in d) return { ext: d.ext, data: Uint8Array.from(Buffer.from(d.data, 'hex')) };
  return d.map.map(([k, v]) => [toJs(k), toJs(v)]);
}
