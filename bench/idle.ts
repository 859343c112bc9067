// What parked channels cost while nothing happens, for every wake mode that parks: 64 channel pairs in one
// process, every end waiting in receive() (128 parked waits), then a quiet window. Prints, per mode, the CPU
// the whole process used as a share of one core, the CPU clock ticks per thread, and how long fs.stat took
// (a wait that held a libuv threadpool thread would make it slow or hang).
//   node dist/bench/idle.js [windowMs]          (npm run bench:idle)
//
// This is a measurement, not a test: test/wake.test.ts checks by events that no thread spins and that fs
// answers; the figures here depend on the machine and on what else runs on it.
import { readdirSync, readFileSync, promises as fsp } from 'node:fs';
import v8 from 'node:v8';
import vm from 'node:vm';
import { listen, connect, type Channel, type ShmUrl } from '../index.js';

const MODES = ['adaptive', 'doorbell', 'futex', 'sem', 'sysvsem', 'signal', 'mq'] as const;
const PAIRS = 64;
const WINDOW_MS = Number(process.argv[2] ?? 2000);

/** A full garbage collection before each window, so earlier work is not billed to the idle channels. */
const collectGarbage: () => void = (() => {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
})();

/** CPU clock ticks (user + system) per thread of this process, by tid. */
function threadTicks(): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'latin1');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(tid, Number(f[11]) + Number(f[12]));
    } catch { /* the thread ended */ }
  }
  return out;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

console.log(`${PAIRS} idle channel pairs per mode (${PAIRS * 2} parked receives), ${WINDOW_MS} ms window`);
console.log('mode        cpu (% of a core)   worst fs.stat   threads   ticks per busy thread');
for (const mode of MODES) {
  const url = `shm://bench-idle-${process.pid}-${mode}?size=4KiB&wake=${mode}` as ShmUrl;
  const listener = await listen(url);
  const pairs: [Channel, Channel][] = [];
  const waits: Promise<unknown>[] = [];
  for (let i = 0; i < PAIRS; i++) {
    const pair = await Promise.all([connect(url), listener.acceptNext()]) as [Channel, Channel];
    pairs.push(pair);
    waits.push(pair[0].receive(), pair[1].receive());
  }
  // Let the wait threads start and settle, then measure a quiet window.
  await sleep(500);
  collectGarbage();
  await sleep(200);
  const cpu = process.cpuUsage();
  const ticks = threadTicks();
  const start = performance.now();
  let worstStat = 0;
  while (performance.now() - start < WINDOW_MS) {
    const t0 = performance.now();
    await fsp.stat('/');
    worstStat = Math.max(worstStat, performance.now() - t0);
    await sleep(100);
  }
  const used = process.cpuUsage(cpu);
  const share = (used.user + used.system) / 1000 / (performance.now() - start);
  const busy = [...threadTicks()].map(([tid, n]) => [tid === String(process.pid) ? 'main' : tid, n - (ticks.get(tid) ?? 0)] as const)
    .filter(([, n]) => n > 0).map(([tid, n]) => `${tid}:${n}`).join(' ');
  console.log(`${mode.padEnd(11)} ${(share * 100).toFixed(2).padStart(8)} %          ${worstStat.toFixed(1).padStart(7)} ms   ${String(readdirSync('/proc/self/task').length).padStart(7)}   ${busy || 'none'}`);
  for (const [a, b] of pairs) { a.send('ping'); b.send('pong'); }
  await Promise.all(waits);
  for (const [a, b] of pairs) { await a.close(); await b.close(); }
  await listener.close();
}
