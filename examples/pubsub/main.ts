// A market-data style pub/sub app on one machine (npm start):
// one publisher streams ticks on the topic 'ticks' of a shm bus; several subscriber processes read them and
// report their rate and publish-to-receive latency; the terminal shows live rates, then a summary.
//
//   node dist/examples/pubsub/main.js [seconds=4] [subscribers=3] [ticks per second=200000]
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Bus } from '../../host/index.js';
import type { Report } from './subscriber.js';

const seconds = Number(process.argv[2] ?? 4);
const subscriberCount = Number(process.argv[3] ?? 3);
const rate = Number(process.argv[4] ?? 200_000);
const SYMBOLS = ['ACME', 'GLOBX', 'INITECH', 'UMBRL', 'WAYNE', 'STARK', 'TYRELL', 'CYBER'];

const url = `shm://market-${process.pid}`;
const bus = await Bus.open(url);
const ticks = bus.publisher('ticks', { capacity: '4MiB', policy: 'lossless', history: 1024 });

// Subscribers are separate processes; each prints one JSON report per half second on stdout.
const SUBSCRIBER = fileURLToPath(new URL('./subscriber.js', import.meta.url));
const latest = new Map<number, Report>();
const children: ChildProcess[] = [];
const ready: Promise<void>[] = [];
for (let i = 0; i < subscriberCount; i++) {
  const child = spawn(process.execPath, [SUBSCRIBER, url, String(i)], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  ready.push(new Promise((resolve) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line === 'ready') return resolve();
      const report = JSON.parse(line) as Report;
      latest.set(report.id, report);
    });
  }));
}
await Promise.all(ready);
console.log(`shmbus pub/sub demo: ${url}, topic 'ticks', ${subscriberCount} subscriber processes, ${rate} ticks/s for ${seconds} s`);

// Publish at a steady rate: every millisecond, catch up with the schedule.
let published = 0;
const start = performance.now();
const render = setInterval(() => {
  const line = [...latest.values()].sort((a, b) => a.id - b.id)
    .map((r) => `sub${r.id} ${(r.rate / 1000).toFixed(0)}k/s p50 ${r.p50.toFixed(1)}µs p99 ${r.p99.toFixed(1)}µs`).join(' | ');
  console.log(`  published ${published}  ${line}`);
}, 500);
while (performance.now() - start < seconds * 1000) {
  const due = Math.floor(((performance.now() - start) / 1000) * rate);
  while (published < due) {
    const tick = { sym: SYMBOLS[published & 7], px: 100 + (published % 1000) / 100, qty: 100, seq: published, ts: Number(process.hrtime.bigint()) };
    if (!ticks.publish(tick)) await ticks.drained();
    published++;
  }
  await new Promise((r) => setTimeout(r, 1));
}
clearInterval(render);
await ticks.close(); // subscribers read what is left, then their iterators end and they print a final report

const finals = await Promise.all(children.map((child) => new Promise<number | null>((r) => child.once('exit', r))));
console.log(`\nsummary: ${published} ticks published in ${seconds} s (${(published / seconds / 1000).toFixed(0)}k/s)`);
let ok = true;
for (const r of [...latest.values()].sort((a, b) => a.id - b.id)) {
  const complete = r.received === published && r.gaps === 0;
  ok &&= complete;
  console.log(`  subscriber ${r.id}: received ${r.received}${complete ? ' (all, in order)' : ` — ${r.gaps} gaps`}, latency p50 ${r.p50.toFixed(1)} µs, p99 ${r.p99.toFixed(1)} µs, p99.9 ${r.p999.toFixed(1)} µs, max ${r.max.toFixed(0)} µs`);
}
await bus.close();
if (!ok || finals.some((code) => code !== 0)) process.exitCode = 1;
