/**
 * The core a spinning waiter runs on, and a way off it.
 *
 * `sched_getcpu(3)` (vDSO, ~20 ns through koffi): a spinning waiter publishes its core in its ring's header
 * (RING_CONSUMER_CPU_OFFSET) and compares it with the peer's. Two spinners on one core only take turns at the
 * scheduler's pace: yielding hands the core over, but a switch between processes costs microseconds on a VM
 * (~5 µs measured on the 2-core test VM), so a ping-pong that the scheduler left on one core (often after a
 * doorbell woke one side next to the other) took 10–19 µs a round trip instead of 2 for as long as it lasted.
 * `moveOffCpu` asks the kernel to move this thread to another core it may run on: it narrows the thread's
 * affinity to exclude the current core (the kernel migrates it at once) and puts the caller's mask back right
 * after, which leaves the thread where it landed.
 */
import koffi from 'koffi';

let getcpu: (() => number) | undefined;
let getAffinity: ((pid: number, size: number, mask: Buffer) => number) | undefined;
let setAffinity: ((pid: number, size: number, mask: Buffer) => number) | undefined;
try {
  const lib = koffi.load('libc.so.6');
  getcpu = lib.func('int sched_getcpu()') as () => number;
  getAffinity = lib.func('int sched_getaffinity(int pid, size_t size, _Out_ uint8_t *mask)') as typeof getAffinity;
  setAffinity = lib.func('int sched_setaffinity(int pid, size_t size, const uint8_t *mask)') as typeof setAffinity;
} catch {
  getcpu = undefined;
}

/** The current core, or -1 when unknown. */
export function currentCpu(): number {
  return getcpu === undefined ? -1 : getcpu();
}

/** cpu_set_t: 1024 cores. */
const MASK_BYTES = 128;
const mask = Buffer.alloc(MASK_BYTES);
const narrowed = Buffer.alloc(MASK_BYTES);

/**
 * Moves the calling thread off core `cpu` to another one its affinity allows, keeping that affinity as it was.
 * False when it cannot (no other core allowed, or the calls failed): then nothing changed.
 */
export function moveOffCpu(cpu: number): boolean {
  if (getAffinity === undefined || setAffinity === undefined || cpu < 0 || cpu >= MASK_BYTES * 8) return false;
  if (getAffinity(0, MASK_BYTES, mask) !== 0) return false;
  const byte = cpu >> 3;
  const bit = 1 << (cpu & 7);
  if ((mask[byte]! & bit) === 0) return false;
  mask.copy(narrowed);
  narrowed[byte] = narrowed[byte]! & ~bit;
  if (narrowed.every((b) => b === 0)) return false;
  if (setAffinity(0, MASK_BYTES, narrowed) !== 0) return false;
  // Whatever happens, the caller's mask goes back.
  setAffinity(0, MASK_BYTES, mask);
  return true;
}
