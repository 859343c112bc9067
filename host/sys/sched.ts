/**
 * The scheduler calls a spinning waiter uses (see transports/shm/channel.ts):
 * - `sched_yield(2)`: gives this thread's CPU to another runnable thread, if any (returns at once otherwise), so
 *   that, on a machine with more runnable threads than cores, the peer it waits for runs instead of queueing
 *   behind the spin.
 * - `sched_getcpu(3)` (vDSO, ~20 ns through koffi): the core this thread runs on. A spinning waiter publishes it in
 *   its ring's header (RING_CONSUMER_CPU_OFFSET) and compares it with the peer's. Two spinners on one core only
 *   take turns at the scheduler's pace: a switch between processes costs microseconds on a VM (~5 µs measured on
 *   the 2-core test VM), so a ping-pong the scheduler left on one core (often after a doorbell woke one side next
 *   to the other) took 10–19 µs a round trip instead of 2 for as long as it lasted.
 * - `moveOffCpu`: asks the kernel to move this thread to another core it may run on, by narrowing the thread's
 *   affinity to exclude the current core (the kernel migrates it at once) and putting the caller's mask back right
 *   after, which leaves the thread where it landed.
 */
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');
const c = {
  sched_yield: lib.func('int sched_yield()') as () => number,
  sched_getcpu: lib.func('int sched_getcpu()') as () => number,
  sched_getaffinity: lib.func('int sched_getaffinity(int pid, size_t size, _Out_ uint8_t *mask)') as (pid: number, size: number, mask: Buffer) => number,
  sched_setaffinity: lib.func('int sched_setaffinity(int pid, size_t size, const uint8_t *mask)') as (pid: number, size: number, mask: Buffer) => number,
};

export function schedYield(): void {
  c.sched_yield();
}

/** The current core, or -1 when unknown. */
export function currentCpu(): number {
  return c.sched_getcpu();
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
  if (cpu < 0 || cpu >= MASK_BYTES * 8) return false;
  if (c.sched_getaffinity(0, MASK_BYTES, mask) !== 0) return false;
  const byte = cpu >> 3;
  const bit = 1 << (cpu & 7);
  if ((mask[byte]! & bit) === 0) return false;
  mask.copy(narrowed);
  narrowed[byte] = narrowed[byte]! & ~bit;
  if (narrowed.every((b) => b === 0)) return false;
  if (c.sched_setaffinity(0, MASK_BYTES, narrowed) !== 0) return false;
  // Whatever happens, the caller's mask goes back.
  c.sched_setaffinity(0, MASK_BYTES, mask);
  return true;
}
