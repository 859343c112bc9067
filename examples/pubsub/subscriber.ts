// One subscriber process of the pub/sub demo: reads 'ticks', measures latency from the tick's timestamp
// (CLOCK_MONOTONIC, shared by every process on the machine), and reports every half second on stdout.
import { Bus } from '../../host/index.js';

export interface Report { id: number; received: number; gaps: number; rate: number; p50: number; p99: number; p999: number; max: number; final: boolean }

const [url, idText] = process.argv.slice(2);
const id = Number(idText);
const bus = await Bus.open(url!);
const sub = bus.subscribe('ticks', { from: 'latest', create: false });
console.log('ready');

// Latency histogram in 1 µs buckets up to 100 ms, so percentiles cost no allocation per tick.
const buckets = new Uint32Array(100_001);
let received = 0, gaps = 0, expected = -1, windowCount = 0, max = 0;
let windowStart = performance.now();

function percentile(p: number): number {
  const target = Math.ceil(received * p);
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) if ((seen += buckets[i]!) >= target) return i;
  return buckets.length - 1;
}

function report(final: boolean): void {
  const now = performance.now();
  const rate = (windowCount / (now - windowStart)) * 1000;
  windowStart = now;
  windowCount = 0;
  const r: Report = { id, received, gaps, rate, p50: percentile(0.5), p99: percentile(0.99), p999: percentile(0.999), max, final };
  console.log(JSON.stringify(r));
}

const timer = setInterval(() => report(false), 500);
for await (const tick of sub) {
  const { seq, ts } = tick as { seq: number; ts: number };
  const us = (Number(process.hrtime.bigint()) - ts) / 1000;
  buckets[Math.min(Math.max(0, Math.round(us)), buckets.length - 1)]!++;
  if (us > max) max = us;
  if (expected >= 0 && seq !== expected) gaps++;
  expected = seq + 1;
  received++;
  windowCount++;
}
clearInterval(timer);
report(true);
await bus.close();
