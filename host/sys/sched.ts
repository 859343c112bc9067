/**
 * `sched_yield(2)`: gives this thread's CPU to another runnable thread, if any (returns at once otherwise). A
 * spinning waiter calls it so that, on a machine with more runnable threads than cores, the peer it waits for
 * gets to run instead of queueing behind the spin.
 */
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');
const sched_yield = lib.func('int sched_yield()') as () => number;

export function schedYield(): void {
  sched_yield();
}
