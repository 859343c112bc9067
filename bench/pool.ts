// Task pools through the API users write (pool.run), in one run:
//   node dist/bench/pool.js [--tasks 100000] [--big 2000] [--inflight 64] [--size 2] [--rounds 3] [--json]
//                           [--main DIR] [--only a,b,…] [--rows object,bytes1M] [--shared] [--wake MODE] [--per N]
//                           (--wake, --per: the wake and tasksPerWorker options of the shm-thread/shm-process rows)                                       (npm run bench:pool)
// Pools, all of `--size` workers over the same task module (bench/pool-task.ts, an echo):
//   shm-thread    shmbus Pool, isolation 'thread'    (default options: tasks sent ahead, taken back by idle workers)
//   shm-process   shmbus Pool, isolation 'process'
//   shm-thread1   the same with tasksPerWorker: 1 (a task only to an idle worker, as Piscina)
//   shm-process1
//   main-thread   with --main DIR: the Pool of another build (DIR/dist/workers/pool.js, e.g. main's) with its
//   main-process  defaults, for an A/B in the same run
//   piscina       Piscina 5 (worker threads)
//   fork          a minimal pool over child_process.fork (IPC, 'advanced' serialization), one task per worker
// Rows: `object` (a 64 B msgpack object { i, s, f }, --tasks of them) and `bytes1M` (a 1 MiB Buffer, --big).
// `--inflight` tasks are kept running; tasks/s from the first run() to the last result, latency from run() to its
// result (p50/p99). Each round starts fresh pools (warmed up with a few tasks first), contenders rotate per round,
// and the medians of the rounds are printed, then the ratios the issue asks about.
// Each round of each pool runs in a fresh Node process (this script with --child), so that what one pool leaves
// behind in its process does not count for the next: a grown heap and its garbage, threads still ending, malloc's
// thresholds (shmbus raises them process-wide once it receives a large record, host/large.ts, which made the
// Piscina rounds after a shmbus round faster or slower than Piscina alone). --shared runs everything in this
// process instead (as before).
import { fork, type ChildProcess } from 'node:child_process';
import { createHistogram } from 'node:perf_hooks';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Piscina } from 'piscina';
import { Pool, type PoolOptions } from '../workers/pool.js';

const { values: opts } = parseArgs({
  options: {
    tasks: { type: 'string', default: '100000' },
    big: { type: 'string', default: '2000' },
    inflight: { type: 'string', default: '64' },
    size: { type: 'string', default: '2' },
    rounds: { type: 'string', default: '3' },
    main: { type: 'string' },
    wake: { type: 'string' },
    per: { type: 'string' },
    only: { type: 'string' },
    rows: { type: 'string' },
    shared: { type: 'boolean', default: false },
    child: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const TASKS = Number(opts.tasks);
const BIG = Number(opts.big);
const INFLIGHT = Number(opts.inflight);
const SIZE = Number(opts.size);
const ROUNDS = Number(opts.rounds);
const TASK_MODULE = fileURLToPath(new URL('./pool-task.js', import.meta.url));
const FORK_WORKER = fileURLToPath(new URL('./fork-worker.js', import.meta.url));
const MiB = 1 << 20;

type Name = 'shm-thread' | 'shm-process' | 'shm-thread1' | 'shm-process1' | 'main-thread' | 'main-process' | 'piscina' | 'fork';
const ALL: Name[] = ['shm-thread', 'shm-process', 'shm-thread1', 'shm-process1', 'main-thread', 'main-process', 'piscina', 'fork'];
const OtherPool = opts.main ? (await import(pathToFileURL(path.resolve(opts.main, 'dist/workers/pool.js')).href) as { Pool: typeof Pool }).Pool : undefined;
const NAMES: Name[] = ALL.filter((n) => (OtherPool || !n.startsWith('main-')) && (!opts.only || opts.only.split(',').includes(n)));
type Row = 'object' | 'bytes1M';

interface Runner { run(task: unknown): Promise<unknown>; close(): Promise<void> }

/** The minimal fork pool: one task at a time per worker, a FIFO queue in the parent. */
class ForkPool implements Runner {
  private readonly idle: ChildProcess[] = [];
  private readonly queue: [number, unknown][] = [];
  private readonly pending = new Map<number, (v: unknown) => void>();
  private readonly children: ChildProcess[] = [];
  private next = 1;
  constructor(size: number) {
    for (let i = 0; i < size; i++) {
      const child = fork(FORK_WORKER, [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      child.on('message', (message) => {
        const [id, result] = message as [number, unknown];
        const resolve = this.pending.get(id)!;
        this.pending.delete(id);
        const queued = this.queue.shift();
        if (queued) child.send(queued); else this.idle.push(child);
        resolve(result);
      });
      this.children.push(child);
      this.idle.push(child);
    }
  }
  run(task: unknown): Promise<unknown> {
    return new Promise((resolve) => {
      const id = this.next++;
      this.pending.set(id, resolve);
      const child = this.idle.pop();
      if (child) child.send([id, task]); else this.queue.push([id, task]);
    });
  }
  async close(): Promise<void> {
    await Promise.all(this.children.map((c) => new Promise((r) => { c.once('exit', r); c.disconnect(); })));
  }
}

function open(name: Name): Runner {
  switch (name) {
    case 'shm-thread':
    case 'shm-process':
    case 'shm-thread1':
    case 'shm-process1': {
      const pool = new Pool(TASK_MODULE, {
        size: SIZE, isolation: name.startsWith('shm-thread') ? 'thread' : 'process', ...(name.endsWith('1') ? { tasksPerWorker: 1 } : opts.per ? { tasksPerWorker: Number(opts.per) } : {}),
        ...(opts.wake ? { wake: opts.wake as PoolOptions['wake'] } : {}),
      });
      return { run: (t) => pool.run(t), close: () => pool.close() };
    }
    case 'main-thread':
    case 'main-process': {
      const pool = new OtherPool!(TASK_MODULE, { size: SIZE, isolation: name === 'main-thread' ? 'thread' : 'process' });
      return { run: (t) => pool.run(t), close: () => pool.close() };
    }
    case 'piscina': {
      const pool = new Piscina({ filename: TASK_MODULE, minThreads: SIZE, maxThreads: SIZE });
      return { run: (t) => pool.run(t), close: () => pool.close() };
    }
    case 'fork': return new ForkPool(SIZE);
  }
}

interface Result { tasksPerSec: number; p50: number; p99: number }

/** Runs `count` tasks keeping INFLIGHT outstanding; latency per task from run() to result (µs). */
async function measure(runner: Runner, count: number, make: (i: number) => unknown): Promise<Result> {
  const latency = createHistogram();
  let issued = 0;
  let done = 0;
  const start = performance.now();
  await new Promise<void>((resolve, reject) => {
    const issue = () => {
      const i = issued++;
      const t0 = performance.now();
      runner.run(make(i)).then(() => {
        latency.record(Math.max(1, Math.round((performance.now() - t0) * 1000)));
        if (++done === count) resolve();
        else if (issued < count) issue();
      }, reject);
    };
    for (let k = 0; k < Math.min(INFLIGHT, count); k++) issue();
  });
  const seconds = (performance.now() - start) / 1000;
  return { tasksPerSec: count / seconds, p50: latency.percentile(50), p99: latency.percentile(99) };
}

const makeObject = (i: number) => ({ i, s: 'x'.repeat(30), f: i / 3 });
const big = Buffer.alloc(MiB, 7);

async function round(name: Name, row: Row): Promise<Result> {
  const runner = open(name);
  try {
    const make = row === 'object' ? makeObject : () => big;
    await measure(runner, Math.min(2000, row === 'object' ? TASKS : BIG), make); // start-up and warm-up
    return await measure(runner, row === 'object' ? TASKS : BIG, make);
  } finally {
    await runner.close();
  }
}

/** One round of `name` in a fresh process (see the file comment); its Result as JSON on the last line. */
function roundApart(name: Name, row: Row): Promise<Result> {
  const args = process.argv.slice(2).filter((a) => a !== '--json');
  return new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(import.meta.url), [...args, '--child', `${name}:${row}`], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      const last = out.trim().split('\n').pop() ?? '';
      if (code === 0) resolve(JSON.parse(last) as Result);
      else reject(new Error(`round ${name} ${row} ended with ${code ?? signal}: ${out}`));
    });
  });
}

if (opts.child) {
  const [name, row] = opts.child.split(':') as [Name, Row];
  console.log(JSON.stringify(await round(name, row)));
  process.exit(0);
}

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]!; };

const results: Record<string, Record<string, Result>> = {};
for (const row of (['object', 'bytes1M'] as Row[]).filter((r) => !opts.rows || opts.rows.split(',').includes(r))) {
  const samples = new Map<Name, Result[]>(NAMES.map((n) => [n, []]));
  for (let r = 0; r < ROUNDS; r++) {
    const order = NAMES.map((_, k) => NAMES[(k + r) % NAMES.length]!);
    for (const name of order) samples.get(name)!.push(await (opts.shared ? round(name, row) : roundApart(name, row)));
  }
  results[row] = {};
  for (const [name, s] of samples) {
    results[row][name] = { tasksPerSec: median(s.map((x) => x.tasksPerSec)), p50: median(s.map((x) => x.p50)), p99: median(s.map((x) => x.p99)) };
  }
}

const ratio = (row: string, a: Name, b: Name, f: keyof Result) => (results[row]?.[a] && results[row]?.[b] ? results[row]![a]![f] / results[row]![b]![f] : NaN);
const ratios = {
  'object: shm-thread / piscina tasks/s (goal ≥ 2)': ratio('object', 'shm-thread', 'piscina', 'tasksPerSec'),
  'object: shm-thread / piscina p50 (goal ≤ 0.5)': ratio('object', 'shm-thread', 'piscina', 'p50'),
  'object: shm-process / fork tasks/s (goal ≥ 5)': ratio('object', 'shm-process', 'fork', 'tasksPerSec'),
  'object: shm-process / piscina tasks/s (goal ≥ 1)': ratio('object', 'shm-process', 'piscina', 'tasksPerSec'),
  'bytes1M: shm-thread / piscina tasks/s (goal ≥ 2)': ratio('bytes1M', 'shm-thread', 'piscina', 'tasksPerSec'),
  'bytes1M: shm-thread / fork tasks/s (goal ≥ 2)': ratio('bytes1M', 'shm-thread', 'fork', 'tasksPerSec'),
  'bytes1M: shm-process / piscina tasks/s (goal ≥ 2)': ratio('bytes1M', 'shm-process', 'piscina', 'tasksPerSec'),
  'bytes1M: shm-process / fork tasks/s (goal ≥ 2)': ratio('bytes1M', 'shm-process', 'fork', 'tasksPerSec'),
  'object: shm-thread / main-thread tasks/s': ratio('object', 'shm-thread', 'main-thread', 'tasksPerSec'),
  'object: shm-process / main-process tasks/s': ratio('object', 'shm-process', 'main-process', 'tasksPerSec'),
  'bytes1M: shm-thread / main-thread tasks/s': ratio('bytes1M', 'shm-thread', 'main-thread', 'tasksPerSec'),
  'bytes1M: shm-process / main-process tasks/s': ratio('bytes1M', 'shm-process', 'main-process', 'tasksPerSec'),
};

if (opts.json) {
  console.log(JSON.stringify({ tasks: TASKS, big: BIG, inflight: INFLIGHT, size: SIZE, rounds: ROUNDS, results, ratios }, null, 2));
} else {
  console.log(`pool of ${SIZE}, ${INFLIGHT} in flight, medians of ${ROUNDS} rounds; object: ${TASKS} tasks, bytes1M: ${BIG} tasks`);
  for (const [row, byName] of Object.entries(results)) {
    console.log(`\n${row}`);
    console.log('pool'.padEnd(14) + 'tasks/s'.padStart(12) + 'p50 µs'.padStart(10) + 'p99 µs'.padStart(10));
    for (const [name, r] of Object.entries(byName)) {
      console.log(name.padEnd(14) + Math.round(r.tasksPerSec).toLocaleString('en').padStart(12) + r.p50.toFixed(0).padStart(10) + r.p99.toFixed(0).padStart(10));
    }
  }
  console.log('\nratios');
  for (const [k, v] of Object.entries(ratios)) if (!Number.isNaN(v)) console.log(`  ${k}: ${v.toFixed(2)}`);
}
