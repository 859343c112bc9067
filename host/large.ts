/**
 * Receiving large messages without a page fault per 4 KiB: one place for every receiver that hands a large record
 * to the user as a new buffer (the shm channel's bytes and fragments).
 *
 * Measured (2 cores, busy): copying 1 MiB out of a ring into a buffer that was allocated for it costs ~450 µs, of
 * which the copy is ~25 µs. The rest is the kernel faulting in and zeroing 256 fresh pages: glibc serves an
 * allocation this large with its own `mmap` and returns it with `munmap` once V8 frees the ArrayBuffer, so every
 * message starts from fresh pages (glibc's own raising of its threshold is undone by trimming the heap's top).
 * With the thresholds below the 1 MiB buffers come from the heap, reusing pages freed by earlier messages: ~50 µs.
 *
 * The tuning is process-wide and done once, only in a process that received a record of at least
 * LARGE_RECORD_BYTES (the others are left alone). Its cost is memory: up to TRIM_BYTES of freed heap stay mapped
 * instead of going back to the kernel. `SHMBUS_MALLOC_TUNE=0` in the environment turns it off.
 */
import { setMallocThresholds } from './sys/malloc.js';

/** A record at least this long (glibc's default mmap threshold) makes a receiver tune malloc. */
export const LARGE_RECORD_BYTES = 128 * 1024;
/** Allocations up to this size (the default largest message, maxMessage) come from the heap. */
const MMAP_BYTES = 16 * 1024 * 1024;
/** Free bytes at the heap's top kept for reuse. */
const TRIM_BYTES = 64 * 1024 * 1024;

let tuned = false;

/** Called before handing out a record of `length` bytes as a new buffer: tunes malloc once (see above). */
export function preparingLargeBuffer(length: number): void {
  if (tuned || length < LARGE_RECORD_BYTES) return;
  tuned = true;
  if (process.env.SHMBUS_MALLOC_TUNE === '0') return;
  try {
    setMallocThresholds(MMAP_BYTES, TRIM_BYTES);
  } catch {
    /* not glibc: receiving stays correct, only slower */
  }
}

/** Copies this short or shorter are `slice`: V8 keeps a typed array of up to 64 bytes in its own heap, the
 * cheapest there is (~60 ns). */
const ON_HEAP_BYTES = 64;
/** Copies shorter than this (and past ON_HEAP_BYTES) are views of a shared slab: a typed array with an ArrayBuffer
 * of its own past 64 bytes costs V8 an allocation outside its heap, several times the copy (the bytes1K row of
 * `npm run bench:everyday`: 1.03–1.12x a Unix socket before the slab, 2.25–2.55x with it). */
export const SLAB_COPY_BYTES = 2048;
/** One slab: at least 8 copies of the largest size that goes there. */
const SLAB_BYTES = 16 * 1024;

let slab: ArrayBuffer | undefined;
let slabUsed = SLAB_BYTES;

/**
 * A private copy of `memory[offset … offset + length)` as a plain Uint8Array; `memory` must be a plain Uint8Array
 * too (a Buffer's `slice` is a view, not a copy: see copyOutBuffer). Up to 64 bytes it is `slice` (its own
 * small ArrayBuffer); below SLAB_COPY_BYTES a view of a 16 KiB slab shared with other copies handed out by this
 * process (like the Buffers of Node's own pool: the view's bytes are the copy's, the slab's others are not, so its
 * `.buffer` must not be passed on whole); up to LARGE_RECORD_BYTES `slice` again; a large one is allocated
 * without zero-filling (Buffer.allocUnsafeSlow's ArrayBuffer: the copy overwrites every byte) and after tuning
 * malloc (see above).
 */
export function copyOut(memory: Uint8Array, offset: number, length: number): Uint8Array {
  if (length > ON_HEAP_BYTES && length < SLAB_COPY_BYTES) return slabCopy(memory, offset, length, false);
  if (length < LARGE_RECORD_BYTES) return memory.slice(offset, offset + length);
  const copy = allocLarge(length);
  copy.set(memory.subarray(offset, offset + length));
  return copy;
}

/** `copyOut` as a Buffer, from a Buffer (a binary field of a decoded value): the same sizes go to the slab. */
export function copyOutBuffer(bytes: Buffer, offset: number, length: number): Buffer {
  if (length > ON_HEAP_BYTES && length < SLAB_COPY_BYTES) return slabCopy(bytes, offset, length, true) as Buffer;
  // The copying slice of Uint8Array (Buffer's own slice is a view): a Buffer of its own.
  return Uint8Array.prototype.slice.call(bytes, offset, offset + length) as Buffer;
}

/** A copy of `bytes[offset … offset + length)` in the slab (a new slab when the current one is full), as a
 * Uint8Array or a Buffer. Each copy starts 8-aligned, for whoever makes wider views of it. */
function slabCopy(bytes: Uint8Array, offset: number, length: number, asBuffer: boolean): Uint8Array {
  if (slab === undefined || slabUsed + length > SLAB_BYTES) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES).buffer as ArrayBuffer;
    slabUsed = 0;
  }
  const copy = asBuffer ? Buffer.from(slab, slabUsed, length) : new Uint8Array(slab, slabUsed, length);
  copy.set(bytes.subarray(offset, offset + length));
  slabUsed += (length + 7) & ~7;
  return copy;
}

/** A plain Uint8Array of `length` bytes whose contents are NOT zeroed, for a caller that overwrites all of them
 * (a message put together from fragments). Tunes malloc first when large (see above). */
export function allocLarge(length: number): Uint8Array {
  preparingLargeBuffer(length);
  return new Uint8Array(Buffer.allocUnsafeSlow(length).buffer, 0, length);
}

/** Whether this process tuned malloc (for tests and benchmarks). */
export function mallocTuned(): boolean {
  return tuned && process.env.SHMBUS_MALLOC_TUNE !== '0';
}
