// Spinning stays honest: with the default options (the host's self-tuned spin, the runner's spin before it sleeps)
// an idle plugin burns no core. As in test/wake.test.ts, no CPU or time is measured: the threads are sampled
// many times, and a spinning thread is running or runnable ('R') at every look, however busy the machine is.
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { loadPlugin } from '../../plugins/index.js';
import type { Isolation } from '../../plugins/index.js';
import { childrenOf, eventually } from '../helpers.js';
import { openPluginSegments, pluginPath } from './plugin-helpers.js';

t.teardown(() => eventually(() => openPluginSegments() === 0, 'every plugin segment closed'));

/** The scheduler state ('R', 'S', …) of each thread of process `pid`, keyed `pid/tid`. */
function threadStates(pid: number): Map<string, string> {
  const out = new Map<string, string>();
  let tids: string[] = [];
  try { tids = readdirSync(`/proc/${pid}/task`); } catch { return out; }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'latin1');
      out.set(`${pid}/${tid}`, stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!);
    } catch { /* the thread ended */ }
  }
  return out;
}

const SAMPLES = 50;

for (const isolation of ['thread', 'process'] as Isolation[]) {
  t.test(`isolation ${isolation}: an idle plugin's runner sleeps after its spin`, async (t) => {
    const plugin = await loadPlugin(pluginPath('echo'), { isolation });
    t.teardown(() => plugin.close());
    // Busy first, so both spins are tuned up and the runner is awake when the calls stop.
    for (let i = 0; i < 500; i++) await plugin.request(i);
    await Promise.all(Array.from({ length: 64 }, (_, i) => plugin.request(i)));
    const me = `${process.pid}/${process.pid}`;
    const looks = (): Map<string, string> => {
      const states = threadStates(process.pid);
      for (const child of childrenOf(process.pid)) for (const [k, v] of threadStates(child)) states.set(k, v);
      states.delete(me); // this thread samples
      return states;
    };
    const running = new Map<string, number>();
    for (let i = 0; i < SAMPLES; i++) {
      for (const [k, state] of looks()) if (state === 'R') running.set(k, (running.get(k) ?? 0) + 1);
      await new Promise((r) => setTimeout(r, 10));
    }
    const spinning = [...running].filter(([, n]) => n === SAMPLES).map(([k]) => k);
    t.same(spinning, [], `no thread was running at every one of ${SAMPLES} looks (${[...running].map(([k, n]) => `${k}:${n}`).join(' ') || 'none ran'})`);
    // And the sleeping runner still answers.
    t.equal(await plugin.request('after idle'), 'after idle');
  });
}
