// A market-data style pub/sub app on one machine (npm start): one publisher streams ticks to several subscriber
// processes through a topic of a shared-memory bus and, taking turns with it, the same ticks through Unix sockets
// written the way a Node user would (one socket per subscriber, u32 length prefix + msgpackr); then it prints the
// two side by side.
//
//   node dist/examples/pubsub/main.js [--seconds 3] [--subscribers 3] [--rate <ticks/s>]
//
// 1. Calibrate: each transport streams as fast as the publisher and its slowest subscriber go (best of 2 rounds).
// 2. Choose a rate both sustain with room to spare (or take --rate), and say why.
// 3. Stream at that rate for --seconds over each transport, in rounds taking turns: delivered rate, latency
//    percentiles (from the publisher's timestamp in each tick to its receipt) and CPU per tick of all processes.
// Subscribers leave when the publisher ends or dies; on Ctrl-C, an error or a subscriber crash the publisher
// stops the others and closes the bus, so no process and nothing in /dev/shm stays behind.
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { availableParallelism, loadavg } from 'node:os';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { pack } from 'msgpackr';
import { Bus } from '../../index.js';
import { LatencyHistogram, formatNs, formatQuantile, type Quantile } from './histogram.js';
import type { EndOfPhase, Report, Tick } from './subscriber.js';

const SYMBOLS = ['ACME', 'GLOBX', 'INITECH', 'UMBRL', 'WAYNE', 'STARK', 'TYRELL', 'CYBER'];
/**
 * The transports take turns (shm, unix, shm, unix ...), so that a neighbour who grabs the CPU for a while costs
 * both, not whichever ran at the time: calibration keeps each transport's best round, streaming merges its rounds.
 */
const ROUNDS = 2;
const CALIBRATE_MS = 300;
/** Both ends run their code a while first, so that calibration measures compiled code, not the JIT. */
const WARM_UP_MS = 200;
/** Ticks per burst while calibrating (the stream phase publishes what its schedule says is due). */
const CALIBRATE_BURST = 256;
/** Far above any healthy wait: only there to fail instead of hanging. */
const WATCHDOG_MS = 30_000;

function usage(message: string): never {
  console.error(`${message}\nusage: main.js [--seconds 3] [--subscribers 3] [--rate <ticks/s>]`);
  process.exit(2);
}

function positive(name: string, text: string | undefined, fallback: number | undefined, integer: boolean): number | undefined {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) usage(`--${name} must be a positive ${integer ? 'integer' : 'number'}, got ${text}`);
  return n;
}

let args;
try {
  args = parseArgs({ options: { seconds: { type: 'string' }, subscribers: { type: 'string' }, rate: { type: 'string' } } }).values;
} catch (error) {
  usage((error as Error).message);
}
const seconds = positive('seconds', args.seconds, 3, false)!;
const subscriberCount = positive('subscribers', args.subscribers, 3, true)!;
const givenRate = positive('rate', args.rate, undefined, true);
if (subscriberCount > 32) usage('--subscribers is at most 32');

// --- one run, stopped from anywhere ------------------------------------------------------------------------------

class Interrupted extends Error {}
let stopReason: Error | undefined;
let rejectStopped!: (error: Error) => void;
const stopped = new Promise<never>((_, reject) => { rejectStopped = reject; });
stopped.catch(() => {});
/** Stops the run: every wait in progress rejects with `reason`; cleanup follows in main's finally. */
function stop(reason: Error): void {
  if (stopReason) return;
  stopReason = reason;
  rejectStopped(reason);
}
/** Waits for `p`, unless the run stops or `WATCHDOG_MS` passes first. */
function guard<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const watchdog = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`gave up waiting: ${what}`)), WATCHDOG_MS); });
  return Promise.race([p, stopped, watchdog]).finally(() => clearTimeout(timer));
}
process.on('SIGINT', () => {
  if (stopReason) process.exit(130); // a second Ctrl-C: leave now (subscribers still leave when stdin ends)
  stop(new Interrupted('interrupted'));
});
for (const signal of ['SIGTERM', 'SIGHUP'] as const) process.on(signal, () => stop(new Interrupted(`stopped by ${signal}`)));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const nextTurn = () => new Promise((r) => setImmediate(r));

// --- the two ways to fan out -------------------------------------------------------------------------------------

/** One way to deliver every tick to every subscriber. `send` always takes the tick; false = wait for drained(). */
interface Fanout {
  key: 'shm' | 'unix';
  label: string;
  begin(): void;
  send(message: Tick | EndOfPhase): boolean;
  end(): void;
  drained(): Promise<void>;
}

function tick(seq: number): Tick {
  return { sym: SYMBOLS[seq & 7]!, px: 100 + (seq % 1000) / 100, qty: 100 * (1 + (seq & 3)), seq, ts: Number(process.hrtime.bigint()) };
}

// --- subscribers -------------------------------------------------------------------------------------------------

const SUBSCRIBER = fileURLToPath(new URL('./subscriber.js', import.meta.url));
const children: ChildProcess[] = [];
const exits: Promise<unknown>[] = [];
let leaving = false;
/** Reports per phase, and who waits for them. */
const phases = new Map<string, { reports: Report[]; done: (reports: Report[]) => void; all: Promise<Report[]> }>();
function phase(name: string) {
  let entry = phases.get(name);
  if (!entry) {
    let done!: (reports: Report[]) => void;
    const all = new Promise<Report[]>((r) => { done = r; });
    entry = { reports: [], done, all };
    phases.set(name, entry);
  }
  return entry;
}

function startSubscribers(url: string, socketName: string): Promise<unknown> {
  const ready: Promise<void>[] = [];
  for (let i = 0; i < subscriberCount; i++) {
    const child = spawn(process.execPath, [SUBSCRIBER, url, socketName, String(i)], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(child);
    child.stdin!.on('error', () => {}); // a dead subscriber's pipe: its exit is reported below
    exits.push(new Promise((r) => child.once('exit', r).once('error', r))); // 'error' alone: it never started
    child.once('exit', (code, signal) => {
      if (!leaving) stop(new Error(`subscriber ${i} (pid ${child.pid}) exited early (${signal ?? `code ${code}`})`));
    });
    child.once('error', (error) => stop(new Error(`subscriber ${i} could not start: ${error.message}`)));
    ready.push(new Promise((resolve) => {
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (line === 'ready') return resolve();
        let report: Report;
        try {
          report = JSON.parse(line) as Report;
        } catch {
          return stop(new Error(`subscriber ${i} printed: ${line}`));
        }
        const entry = phase(report.phase);
        entry.reports.push(report);
        if (entry.reports.length === subscriberCount) entry.done(entry.reports);
      });
    }));
  }
  return Promise.all(ready);
}

// --- measuring ---------------------------------------------------------------------------------------------------

interface Result {
  /** Ticks published. */
  ticks: number;
  /** Ticks the subscriber that received fewest received. */
  received: number;
  /** From the first publish to the last subscriber's report. */
  seconds: number;
  latency: LatencyHistogram;
  publisherCpuUs: number;
  subscribersCpuUs: number;
  complete: boolean;
}

function checkDelivery(name: string, reports: Report[], ticks: number): boolean {
  const ok = reports.every((r) => r.received === ticks && r.gaps === 0);
  if (!ok) for (const r of reports) if (r.received !== ticks || r.gaps) console.log(`  ${name}: subscriber ${r.id} received ${r.received} of ${ticks}, ${r.gaps} out of sequence`);
  return ok;
}

/**
 * Streams for `ms` as fast as the publisher makes ticks and the slowest subscriber takes them; returns the ticks/s
 * each subscriber received (up to its report: a queue left at the end counts against the rate).
 * `name` is the phase; a warm-up (JIT compilation of both ends) is a calibration whose result is ignored.
 */
async function calibrate(f: Fanout, name: string, ms: number): Promise<number> {
  const reports = phase(name).all;
  const t0 = performance.now();
  let seq = 0;
  while (performance.now() - t0 < ms) {
    f.begin();
    let ok = true;
    for (let i = 0; i < CALIBRATE_BURST; i++) ok = f.send(tick(seq++)) && ok;
    f.end();
    if (!ok) await guard(f.drained(), `${f.label} to drain`);
    await guard(nextTurn(), name);
  }
  f.begin();
  f.send({ end: name });
  f.end();
  const rs = await guard(reports, `${name} reports`);
  const elapsed = (performance.now() - t0) / 1000;
  if (!checkDelivery(name, rs, seq)) throw new Error(`${f.label} lost ticks while calibrating`);
  return seq / elapsed;
}

/** Streams `rate` ticks/s for `roundSeconds`, publishing every millisecond what the schedule says is due. */
async function stream(f: Fanout, name: string, rate: number, roundSeconds: number): Promise<Result> {
  const reports = phase(name).all;
  const ticks = Math.max(1, Math.round(rate * roundSeconds));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let seq = 0;
  while (seq < ticks) {
    const due = Math.min(ticks, Math.floor(((performance.now() - t0) / 1000) * rate));
    if (due > seq) {
      f.begin();
      let ok = true;
      while (seq < due) ok = f.send(tick(seq++)) && ok;
      f.end();
      if (!ok) await guard(f.drained(), `${f.label} to drain`);
    }
    // Not guard(): a watchdog timer per millisecond would be most of the publisher's CPU at low rates.
    await sleep(1);
    if (stopReason) throw stopReason;
  }
  f.begin();
  f.send({ end: name });
  f.end();
  const rs = await guard(reports, `${name} reports`);
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const latency = new LatencyHistogram();
  for (const r of rs) latency.merge(r.latency);
  return {
    ticks,
    received: Math.min(...rs.map((r) => r.received)),
    seconds,
    latency,
    publisherCpuUs: cpu.user + cpu.system,
    subscribersCpuUs: rs.reduce((sum, r) => sum + r.cpuUs, 0),
    complete: checkDelivery(name, rs, ticks),
  };
}

function add(a: Result, b: Result): Result {
  a.latency.merge(b.latency.toJSON());
  return {
    ticks: a.ticks + b.ticks,
    received: a.received + b.received,
    seconds: a.seconds + b.seconds,
    latency: a.latency,
    publisherCpuUs: a.publisherCpuUs + b.publisherCpuUs,
    subscribersCpuUs: a.subscribersCpuUs + b.subscribersCpuUs,
    complete: a.complete && b.complete,
  };
}

// --- printing ----------------------------------------------------------------------------------------------------

function rateText(perSecond: number): string {
  if (perSecond >= 1e6) return `${(perSecond / 1e6).toFixed(2)}M`;
  if (perSecond >= 1e4) return `${Math.round(perSecond / 1e3)}k`;
  if (perSecond >= 1e3) return `${(perSecond / 1e3).toFixed(1)}k`;
  return `${Math.round(perSecond)}`;
}

/** The largest 1, 2 or 5 × 10^k not above `x`: a rate that reads as chosen, not as measured. */
function roundDown(x: number): number {
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [5, 2, 1]) if (m * p <= x) return m * p;
  return p;
}

const us = (v: number) => (v < 10 ? v.toFixed(2) : v.toFixed(1));

/** "8.2x lower" / "1.3x higher" comparing shm to unix; nothing when either side lies above the histogram's cap. */
function compare(what: string, shm: number | Quantile | undefined, unix: number | Quantile | undefined): string | undefined {
  const value = (q: number | Quantile | undefined) => (typeof q === 'number' ? q : q && 'ns' in q ? q.ns : undefined);
  const a = value(shm), b = value(unix);
  if (a === undefined || b === undefined || a <= 0 || b <= 0) return undefined;
  return a <= b ? `${what} ${(b / a).toFixed(1)}x lower` : `${what} ${(a / b).toFixed(1)}x higher`;
}

function table(maxRates: Record<'shm' | 'unix', number>, results: [Fanout, Result][]): void {
  const header = ['', 'max rate', 'delivered', 'p50', 'p99', 'p99.9', 'max', 'CPU/tick = publisher + subscribers'];
  const rows = results.map(([f, r]) => [
    f.label,
    `${rateText(maxRates[f.key])}/s`,
    `${rateText(r.received / r.seconds)}/s`,
    formatQuantile(r.latency.quantile(0.5)),
    formatQuantile(r.latency.quantile(0.99)),
    formatQuantile(r.latency.quantile(0.999)),
    formatQuantile(r.latency.max()),
    `${us((r.publisherCpuUs + r.subscribersCpuUs) / r.ticks)} µs = ${us(r.publisherCpuUs / r.ticks)} + ${us(r.subscribersCpuUs / r.ticks)}`,
  ]);
  const last = header.length - 1;
  const widths = header.map((h, i) => Math.max(i === last ? 0 : h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 || i === last ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  console.log(line(header));
  for (const row of rows) console.log(line(row));
}

// --- the run -----------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const url = `shm://market-${process.pid}`;
  const socketName = `@shmbus-demo-${process.pid}`; // abstract namespace: nothing on disk to clean up
  const cores = availableParallelism();
  const bus = await Bus.open(url);
  const sockets: net.Socket[] = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    // A subscriber's socket breaks only when the subscriber is gone: its exit says so (with its pid and status),
    // and a stream that stops without an exit ends at the watchdog.
    socket.on('error', () => {});
  });
  try {
    const ticks = bus.publisher('ticks', { capacity: '4MiB', policy: 'lossless' });
    await guard(new Promise<void>((resolve, reject) => server.once('error', reject).listen({ path: socketName.replace(/^@/, '\0') }, resolve)), 'the unix socket to listen');
    await guard(startSubscribers(url, socketName), 'subscribers to start');
    for (let i = 0; sockets.length < subscriberCount; i++) await guard(sleep(Math.min(2 ** i, 50)), 'subscribers to connect');

    const shm: Fanout = {
      key: 'shm',
      label: 'shm bus',
      begin() {},
      send: (m) => ticks.publish(m),
      end() {},
      drained: () => ticks.drained(),
    };
    const unix: Fanout = {
      key: 'unix',
      label: 'unix socket',
      // Corked per burst, so a burst leaves in one writev per socket instead of one write per tick.
      begin() { for (const s of sockets) s.cork(); },
      send(m) {
        const body = pack(m);
        const frame = Buffer.allocUnsafe(4 + body.length);
        frame.writeUInt32LE(body.length, 0);
        body.copy(frame, 4);
        let ok = true;
        for (const s of sockets) ok = s.write(frame) && ok;
        return ok;
      },
      end() { for (const s of sockets) s.uncork(); },
      drained: async () => { await Promise.all(sockets.filter((s) => s.writableNeedDrain).map((s) => new Promise((r) => s.once('drain', r)))); },
    };

    const sample = pack(tick(123_456)).length;
    const load = loadavg()[0]!;
    console.log(`shmbus pub/sub demo: 1 publisher, ${subscriberCount} subscriber processes; ${cores} CPU cores, load average ${load.toFixed(1)}`);
    console.log(`  shm bus      topic 'ticks' on ${url}, lossless, 4 MiB ring; idle subscribers spin, then sleep (futex)`);
    console.log(`  unix socket  a socket per subscriber: u32 length + msgpackr, writes corked per burst`);
    console.log(`  tick         { sym, px, qty, seq, ts }: ${sample} bytes of msgpack; ts = publisher's process.hrtime when sent,`);
    console.log(`               latency = subscriber's process.hrtime on receipt − ts (one monotonic clock for all processes)`);

    const both = [shm, unix];
    console.log(`calibrating: each transport streams as fast as the publisher and its slowest subscriber go, best of ${ROUNDS} × ${CALIBRATE_MS / 1000} s`);
    for (const f of both) await calibrate(f, `${f.key} warm-up`, WARM_UP_MS);
    const maxRates = { shm: 0, unix: 0 };
    for (let round = 1; round <= ROUNDS; round++) {
      for (const f of both) maxRates[f.key] = Math.max(maxRates[f.key], await calibrate(f, `${f.key} calibration ${round}`, CALIBRATE_MS));
    }
    for (const f of both) console.log(`  ${f.label.padEnd(11)}  ${rateText(maxRates[f.key])} ticks/s to each subscriber`);
    const slower = maxRates.shm <= maxRates.unix ? shm : unix;
    const rate = givenRate ?? Math.max(1, roundDown(maxRates[slower.key] / 2));
    if (givenRate !== undefined) console.log(`rate ${rateText(rate)} ticks/s, as given by --rate`);
    else console.log(`chose ${rateText(rate)} ticks/s: at most half the slower maximum (${slower.label}), so that neither transport is\n  saturated and latency measures delivery, not a queue that grows for the whole run`);

    console.log(`streaming ${rateText(rate)} ticks/s for ${seconds} s over each (${ROUNDS} rounds each, taking turns), a burst every millisecond ...`);
    const totals = new Map<Fanout, Result>();
    for (let round = 1; round <= ROUNDS; round++) {
      for (const f of both) {
        const r = await stream(f, `${f.key} stream ${round}`, rate, seconds / ROUNDS);
        const before = totals.get(f);
        totals.set(f, before ? add(before, r) : r);
      }
    }
    const results = both.map((f) => [f, totals.get(f)!] as [Fanout, Result]);
    console.log();
    table(maxRates, results);
    console.log();

    const [s, u] = [results[0]![1], results[1]![1]];
    const complete = results.every(([, r]) => r.complete);
    if (complete) console.log(`all ${s.ticks.toLocaleString('en-US')} ticks reached all ${subscriberCount} subscribers in order, over both.`);
    const comparisons = [
      compare('p50', s.latency.quantile(0.5), u.latency.quantile(0.5)),
      compare('p99', s.latency.quantile(0.99), u.latency.quantile(0.99)),
      compare('CPU per tick', s.publisherCpuUs + s.subscribersCpuUs, u.publisherCpuUs + u.subscribersCpuUs),
    ].filter((c) => c !== undefined);
    if (comparisons.length) console.log(`shm bus against unix socket: ${comparisons.join(', ')}.`);
    console.log(`max rate: the calibration (saturated). Latency: all subscribers' ticks in one histogram; a percentile is the`);
    console.log(`  upper edge of its bucket (≤ 6% high), '> ${formatNs(s.latency.capNs)}' would mean beyond the histogram. CPU: user + system µs.`);
    if (Math.max(load, subscriberCount + 1) > cores) {
      // Why the bus can fare worse here: Subscription.sleep parks on a futex in a wait thread, which posts to the event loop.
      console.log(`${subscriberCount + 1} processes${load > cores ? ` among others (load ${load.toFixed(1)})` : ''} share ${cores} cores: a process that lost its core waits milliseconds for it,`);
      console.log(`  so the tails measure the scheduler more than the transport. A sleeping bus subscriber needs the scheduler`);
      console.log(`  twice (its futex wait thread, then its event loop), a socket reader once: contention can cost the bus more.`);
    }
    return complete ? 0 : 1;
  } finally {
    leaving = true;
    for (const s of sockets) s.destroy();
    server.close();
    // Ending stdin tells a subscriber to close the bus and exit; one that does not in time is killed.
    for (const child of children) child.stdin!.end();
    const kill = setTimeout(() => { for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL'); }, 3000);
    await Promise.all(exits);
    clearTimeout(kill);
    // Every subscriber is gone, so this is the bus's last member: closing removes its segments from /dev/shm.
    await bus.close();
  }
}

try {
  process.exitCode = await main();
} catch (error) {
  if (error instanceof Interrupted) {
    console.log(`\n${error.message}: subscribers stopped, bus removed`);
    process.exitCode = 130;
  } else {
    console.error(`\npub/sub demo failed: ${(error as Error).message}`);
    process.exitCode = 1;
  }
}
