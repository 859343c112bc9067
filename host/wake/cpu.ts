/**
 * `sched_getcpu(3)` (vDSO, ~20 ns through koffi): the core this thread runs on now. A spinning waiter publishes it
 * in its ring's header (RING_CONSUMER_CPU_OFFSET) and compares it with the peer's: two spinners on one core
 * only take turns at the scheduler's pace unless they yield to each other (see Channel.spinFor).
 */
import koffi from 'koffi';

let getcpu: (() => number) | undefined;
try {
  getcpu = koffi.load('libc.so.6').func('int sched_getcpu()') as () => number;
} catch {
  getcpu = undefined;
}

/** The current core, or -1 when unknown. */
export function currentCpu(): number {
  return getcpu === undefined ? -1 : getcpu();
}
