/**
 * What a dedicated thread (host/thread.ts) costs: the thread → main-thread wake both users of the runtime rely on,
 * and starting one. `node dist/bench/thread-wake.js` (after `npm run build`).
 *
 * Wake: the main thread bumps a word the thread sleeps on (Atomics.wait), and the thread answers either with
 * worker.postMessage (host/wake/: one coalesced message) or with Atomics.notify on a word the main thread awaits
 * with Atomics.waitAsync (host/blocking.ts: a ring of entries). ROUNDS round trips each, rotated 4 times; p50/p99
 * of the round trip, in µs. Start: the process's epoll thread (the real worker script, through host/thread.ts)
 * from construction to 'ready', and the RSS it adds.
 *
 * Measured 2026-12-02, 2-core VM, Node 20.20, two runs while other test suites kept both cores busy (load
 * average 10-12):
 *   wake via postMessage      p50 11.4 / 11.6 µs, p99 30.7 / 23.8 µs
 *   wake via Atomics.waitAsync p50 12.7 / 12.4 µs, p99 24.7 / 30.5 µs
 *   start to 'ready' 147 / 89 ms; RSS added 8.5 MiB
 * So the two ways cost the same within the noise; rerun on a quiet machine before quoting finer numbers.
 */
import { Worker } from 'node:worker_threads';
import { EpollThread } from '../host/blocking.js';

const ROUNDS = Number(process.env.ROUNDS ?? 20000);

const THREAD = `
const { workerData, parentPort } = require('node:worker_threads');
const ctl = new Int32Array(workerData.sab);
const viaPost = workerData.via === 'post';
parentPort.postMessage('ready');
for (let seen = 0;;) {
  Atomics.wait(ctl, 0, seen);
  seen = Atomics.load(ctl, 0);
  if (seen < 0) break;
  if (viaPost) parentPort.postMessage(seen);
  else { Atomics.store(ctl, 1, seen); Atomics.notify(ctl, 1); }
}`;

const waitAsync = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number): { async: boolean; value: Promise<string> | string } }).waitAsync;

async function run(via: 'post' | 'atomics'): Promise<number[]> {
  const sab = new SharedArrayBuffer(8);
  const ctl = new Int32Array(sab);
  const worker = new Worker(THREAD, { eval: true, workerData: { sab, via } });
  await new Promise((r) => worker.once('message', r));
  const times: number[] = [];
  let answered: (() => void) | undefined;
  worker.on('message', () => answered?.());
  for (let i = 1; i <= ROUNDS; i++) {
    const start = process.hrtime.bigint();
    Atomics.store(ctl, 0, i);
    Atomics.notify(ctl, 0);
    if (via === 'post') await new Promise<void>((r) => { answered = r; });
    else {
      for (;;) {
        const w = waitAsync(ctl, 1, i - 1);
        if (w.async) await w.value;
        if (Atomics.load(ctl, 1) === i) break;
      }
    }
    times.push(Number(process.hrtime.bigint() - start) / 1000);
  }
  Atomics.store(ctl, 0, -1);
  Atomics.notify(ctl, 0);
  await worker.terminate();
  return times;
}

const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(s.length * p))]!; };
const median = (xs: number[]) => pct(xs, 0.5);

const results: Record<string, { p50: number[]; p99: number[] }> = { post: { p50: [], p99: [] }, atomics: { p50: [], p99: [] } };
for (let round = 0; round < 4; round++) {
  for (const via of (round % 2 ? ['atomics', 'post'] : ['post', 'atomics']) as ('post' | 'atomics')[]) {
    const t = await run(via);
    results[via]!.p50.push(pct(t, 0.5));
    results[via]!.p99.push(pct(t, 0.99));
  }
}
for (const [via, r] of Object.entries(results)) {
  console.log(`wake via ${via.padEnd(8)} round trip p50 ${median(r.p50).toFixed(1)} µs, p99 ${median(r.p99).toFixed(1)} µs (medians of 4 rounds)`);
}

const rss0 = process.memoryUsage().rss;
const t0 = performance.now();
await EpollThread.get().start();
const t1 = performance.now();
const rss1 = process.memoryUsage().rss;
console.log(`dedicated thread start to 'ready': ${(t1 - t0).toFixed(1)} ms; RSS added ${((rss1 - rss0) / 1048576).toFixed(1)} MiB`);
