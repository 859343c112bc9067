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

/**
 * A private copy of `memory[offset … offset + length)` as a plain Uint8Array (what `slice` returns). A large one
 * is allocated without zero-filling (Buffer.allocUnsafeSlow's ArrayBuffer: the copy overwrites every byte) and
 * after tuning malloc (see above); a small one is `slice`, V8's fastest for a few bytes.
 */
export function copyOut(memory: Uint8Array, offset: number, length: number): Uint8Array {
  if (length < LARGE_RECORD_BYTES) return memory.slice(offset, offset + length);
  const copy = allocLarge(length);
  copy.set(memory.subarray(offset, offset + length));
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
