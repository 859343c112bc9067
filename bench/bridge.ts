// The NATS bridge against the nats client on the same nats-server, 64-byte messages, in one run:
//   direct:  a process publishing with the `nats` client → nats-server → a process subscribing with it;
//   bridged: a process publishing on a bus topic → `shmbus bridge` (export) → nats-server → `shmbus bridge`
//            (import) → a topic on a second bus → a subscriber process (this one).
// Both run over core NATS: the bridge exports with `--export bench:lossy` (a lossless topic would ride JetStream,
// acknowledged, far slower, and is not what the direct client does). The local topic itself is lossless, so the
// exporter holds the bus publisher back to the pace it forwards at rather than being lapped; the importing side's
// topic is lossy. Rounds alternate; medians are reported with the ratio bridged/direct.
//   npm run bench:bridge [-- messages=500000 rounds=3]     (BENCH_PROF=<dir>: CPU profiles of the two bridges there)
// Needs nats-server (apt-get install nats-server); starts its own on 127.0.0.1 with a random port.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { connect } from 'nats';
import { Bus } from '../bus/index.js';

const CHILD = fileURLToPath(new URL('./bridge-child.js', import.meta.url));
const PROF = process.env.BENCH_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROF}`] : [];
const arg = (name: string, fallback: number) => Number(process.argv.find((a) => a.startsWith(`${name}=`))?.slice(name.length + 1) ?? fallback);
const MESSAGES = arg('messages', 500_000);
const ROUNDS = arg('rounds', 3);
/** A run ends when this long passes without a message (what a lossy path dropped never comes). */
const IDLE_MS = 3000;

interface Proc {
  child: ChildProcess;
  /** The first line matching `pattern`, printed already or still to come. */
  line(pattern: RegExp): Promise<string>;
  /** The next line matching `pattern` printed from now on. */
  nextLine(pattern: RegExp): Promise<string>;
  send(line: string): void;
  exit: Promise<unknown>;
}

function start(argv: string[]): Proc {
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  const seen: string[] = [];
  const waiters: { pattern: RegExp; resolve: (l: string) => void }[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => {
    seen.push(l);
    for (const w of [...waiters]) if (w.pattern.test(l)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(l); }
  });
  const exit = new Promise((r) => child.once('exit', r));
  return {
    child,
    exit,
    line: (pattern) => {
      const found = seen.find((l) => pattern.test(l));
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        waiters.push({ pattern, resolve });
        child.once('exit', () => reject(new Error(`${argv.join(' ')} exited before printing ${pattern}`)));
      });
    },
    nextLine: (pattern) => new Promise((resolve) => waiters.push({ pattern, resolve })),
    send: (l) => child.stdin!.write(`${l}\n`),
  };
}

async function stop(...procs: Proc[]): Promise<void> {
  for (const p of procs) { p.child.stdin?.end(); p.child.kill('SIGTERM'); }
  const timer = setTimeout(() => { for (const p of procs) p.child.kill('SIGKILL'); }, 5000);
  await Promise.all(procs.map((p) => p.exit));
  clearTimeout(timer);
}

/** Counts arrivals from `onMessage` calls; resolves with msg/s (first to last arrival) once `count` came or the flow went idle. */
function meter(count: number): { hit(): void; result: Promise<{ received: number; perSec: number }> } {
  let received = 0, first = 0, last = 0;
  let done!: (r: { received: number; perSec: number }) => void;
  const result = new Promise<{ received: number; perSec: number }>((r) => { done = r; });
  const finish = () => { clearInterval(idle); done({ received, perSec: received > 1 ? (received - 1) / ((last - first) / 1000) : 0 }); };
  const idle = setInterval(() => { if (received > 0 && performance.now() - last > IDLE_MS) finish(); }, 100);
  return {
    hit() {
      const now = performance.now();
      if (received === 0) first = now;
      last = now;
      if (++received === count) finish();
    },
    result,
  };
}

async function direct(natsUrl: string): Promise<{ received: number; perSec: number }> {
  const nc = await connect({ servers: natsUrl });
  const m = meter(MESSAGES);
  nc.subscribe('bench.direct', { callback: () => m.hit() });
  await nc.flush();
  const pub = start([process.execPath, CHILD, 'nats-pub', natsUrl, 'bench.direct', String(MESSAGES)]);
  await pub.line(/^ready$/);
  pub.send('go');
  const r = await m.result;
  pub.send('exit');
  await stop(pub);
  await nc.close();
  return r;
}

async function bridged(natsUrl: string, round: number): Promise<{ received: number; perSec: number; dropped: string }> {
  const a = `shm://bench-bridge-a-${process.pid}-${round}`;
  const b = `shm://bench-bridge-b-${process.pid}-${round}`;
  const prefix = `bench${round}`;
  const pub = start([process.execPath, CHILD, 'bus-pub', a, String(MESSAGES)]);
  await pub.line(/^ready$/);
  const exporter = start([process.execPath, ...PROF, CHILD, 'bridge', a, natsUrl, '--export', 'bench:lossy', '--prefix', prefix, '--stats', '500']);
  const importer = start([process.execPath, ...PROF, CHILD, 'bridge', b, natsUrl, '--import', 'bench:lossy', '--prefix', prefix, '--stats', '500']);
  await exporter.line(/^bridge ready/);
  await importer.line(/^bridge ready/);
  const bus = await Bus.open(b);
  const sub = bus.subscribe('bench', { create: false });
  const m = meter(MESSAGES);
  let reading = true;
  const reader = (async () => {
    const hit = () => m.hit();
    while (reading) if (sub.poll(hit) === 0) await Promise.race([sub.readable(), m.result]);
  })();
  pub.send('go');
  const r = await m.result;
  reading = false;
  await reader;
  // A subscriber counts lapped records only when it reads next: read once more, so `dropped` is complete.
  let late = 0;
  while (sub.poll(() => { late++; }) > 0) { /* drain */ }
  // The bridges print their counters every 500 ms: the next line has them all.
  const counters = async (p: Proc) => JSON.parse(await p.nextLine(/^\{/)) as { dropped: number; forwarded: number };
  const [e, i] = await Promise.all([counters(exporter), counters(importer)]);
  pub.send('exit');
  await stop(pub, exporter, importer);
  await bus.close();
  return { ...r, dropped: `exporter forwarded ${e.forwarded} dropped ${e.dropped}, importer forwarded ${i.forwarded}, subscriber lapped ${sub.dropped}, read after the count ${late}` };
}

const median = (xs: number[]) => [...xs].sort((p, q) => p - q)[Math.floor(xs.length / 2)]!;

const store = mkdtempSync(join(tmpdir(), 'shmbus-bench-nats-'));
const server = start(['sh', '-c', `exec nats-server -a 127.0.0.1 -p -1 -js -sd '${store}' 2>&1`]);
try {
  const listening = await server.line(/Listening for client connections on/);
  await server.line(/Server is ready/);
  const natsUrl = `nats://127.0.0.1:${/:(\d+)\s*$/.exec(listening)![1]}`;
  console.log(`bench:bridge  ${MESSAGES} messages of 64 B per run, ${ROUNDS} rounds, nats-server ${natsUrl}`);
  const d: number[] = [], br: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const x = await direct(natsUrl);
    d.push(x.perSec);
    console.log(`  round ${round + 1} direct   ${Math.round(x.perSec).toLocaleString('en')} msg/s (received ${x.received})`);
    const y = await bridged(natsUrl, round);
    br.push(y.perSec);
    console.log(`  round ${round + 1} bridged  ${Math.round(y.perSec).toLocaleString('en')} msg/s (received ${y.received}; dropped: ${y.dropped})`);
  }
  const md = median(d), mb = median(br);
  console.log(`median direct  ${Math.round(md).toLocaleString('en')} msg/s`);
  console.log(`median bridged ${Math.round(mb).toLocaleString('en')} msg/s`);
  console.log(`ratio bridged/direct ${(100 * mb / md).toFixed(1)} % (goal >= 90 %)`);
} finally {
  await stop(server);
  rmSync(store, { recursive: true, force: true });
}
