/**
 * glibc malloc tuning for processes that receive large messages (see host/large.ts for why and when).
 *
 * `mallopt(M_MMAP_THRESHOLD)` and `mallopt(M_TRIM_THRESHOLD)`: allocations below the first come from the heap
 * instead of a fresh `mmap` each; free memory at the top of the heap is given back to the kernel only past the
 * second. Both are process-wide (every allocation of the process, not only ours).
 */
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');
const mallopt = lib.func('int mallopt(int param, int value)') as (param: number, value: number) => number;

/** <malloc.h> */
const M_TRIM_THRESHOLD = -1;
const M_MMAP_THRESHOLD = -3;

/**
 * Sets both thresholds; returns whether glibc took both (mallopt returns 1 on success, 0 on a value it refuses).
 */
export function setMallocThresholds(mmapThreshold: number, trimThreshold: number): boolean {
  return mallopt(M_MMAP_THRESHOLD, mmapThreshold) === 1 && mallopt(M_TRIM_THRESHOLD, trimThreshold) === 1;
}
