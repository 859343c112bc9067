// A CPU-bound job over a worker pool, with a progress bar (npm run demo:workers):
//
//   node dist/examples/workers/main.js [--jobs 400] [--rounds 20000] [--size <cores>] [--isolation process|thread]
//
// Each job hashes a seed `--rounds` times with SHA-256 (examples/workers/hash-task.ts) on one of `--size`
// workers; the bar shows jobs done and the rate. At the end: a digest over all results (the same for every pool
// size and isolation: the work is deterministic) and what the pool says about itself (run and wait times,
// utilisation). Ctrl-C destroys the pool: every worker ends, nothing is left behind.
import { availableParallelism } from 'node:os';
import { createHash } from 'node:crypto';
import { parseArgs } from 'node:util';
import { SingleBar, Presets } from 'cli-progress';
import { Pool, type PoolStats } from '../../workers/index.js';

const { values } = parseArgs({
  options: {
    jobs: { type: 'string', default: '400' },
    rounds: { type: 'string', default: '20000' },
    size: { type: 'string', default: String(availableParallelism()) },
    isolation: { type: 'string', default: 'process' },
  },
});
const jobs = Number(values.jobs);
const rounds = Number(values.rounds);
const size = Number(values.size);
const isolation = values.isolation as 'process' | 'thread';
if (!(jobs > 0 && rounds > 0 && size > 0) || (isolation !== 'process' && isolation !== 'thread')) {
  console.error('usage: main.js [--jobs N] [--rounds N] [--size N] [--isolation process|thread]');
  process.exit(2);
}

const pool = new Pool(new URL('./hash-task.js', import.meta.url), { size, isolation });
process.once('SIGINT', () => { void pool.destroy().then(() => process.exit(130)); });

const bar = new SingleBar({
  format: `hashing |{bar}| {value}/{total} jobs · {rate} jobs/s · {duration_formatted}`,
  hideCursor: true,
}, Presets.shades_classic);
bar.start(jobs, 0, { rate: '0' });
const started = performance.now();
let done = 0;
const results = await Promise.all(Array.from({ length: jobs }, async (_, i) => {
  const digest = await pool.run({ seed: `job-${i}`, rounds }) as string;
  done++;
  bar.update(done, { rate: (done / ((performance.now() - started) / 1000)).toFixed(1) });
  return digest;
}));
bar.stop();
const seconds = (performance.now() - started) / 1000;
const stats: PoolStats = pool.stats();
await pool.close();

const all = createHash('sha256');
for (const r of results) all.update(r);
const f = (x: number) => x.toFixed(2);
console.log(`${jobs} jobs × ${rounds} rounds on ${size} ${isolation} workers in ${seconds.toFixed(2)} s (${(jobs / seconds).toFixed(1)} jobs/s)`);
console.log(`digest of all results: ${all.digest('hex').slice(0, 16)}`);
console.log(`run time ms  p50 ${f(stats.runTime.p50)}  p99 ${f(stats.runTime.p99)}  max ${f(stats.runTime.max)}`);
console.log(`wait time ms p50 ${f(stats.waitTime.p50)}  p99 ${f(stats.waitTime.p99)}  max ${f(stats.waitTime.max)}`);
console.log(`utilisation ${(stats.utilization * 100).toFixed(0)}%, completed ${stats.completed}, failed ${stats.failed}`);
