// Ping-pong round-trip latency between two processes, for every wake mode, against child_process.fork IPC, in one
// run; then each mode's CPU use while idle (both sides parked, nothing sent).
//   node dist/bench/latency.js [roundTrips]          (npm run bench:latency -- 50000)
//
// A round trip: the parent commits an 8-byte record, the child (same script, role `child`) echoes it as soon as
// it sees it, the parent sees the echo. Both sides use the zero-copy API (trySendBytes / poll) and wait with
// `await conn.readable()`, which spins, parks or both as the mode says:
//   spin       busy-polls, never parks
//   adaptive   spins for a self-tuned while (1–100 µs), then parks on the doorbell: under continuous ping-pong the
//              echo arrives while it spins
//   doorbell, futex, sem, sysvsem, signal, mq
//              park at once (spin=0): every round trip is two parks and two kernel wakeups, which is what these
//              rows measure
// fork IPC: process.send of a small object (json serialization) and the echo back.
//
// Idle CPU: after the round trips, both sides wait for 2 s with nothing to do; the row shows the CPU both
// processes used in that window, as a share of one core (spin is expected to burn a core per process).
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { listen, connect, type Channel, type ShmUrl } from '../index.js';

const SELF = fileURLToPath(import.meta.url);
const MODES = ['spin', 'adaptive', 'doorbell', 'futex', 'sem', 'sysvsem', 'signal', 'mq'] as const;
const IDLE_MS = 2000;

/** Records the echo side understands besides pings (any 8-byte record is a ping). */
const IDLE = Buffer.from('idle');
const REPORT = Buffer.from('report');

interface Row {
  name: string;
  p50: number;
  p99: number;
  p999: number;
  mean: number;
  idleParent?: number;
  idleChild?: number;
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

function summarize(name: string, samples: Float64Array): Row {
  const sorted = samples.slice().sort();
  let sum = 0;
  for (const s of samples) sum += s;
  return { name, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), p999: percentile(sorted, 0.999), mean: sum / samples.length };
}

/** CPU time of this process in ms. */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

// --- the parent side ---------------------------------------------------------------------------------------------

async function waitForRecord(conn: Channel, onRecord: (memory: Uint8Array, offset: number, length: number) => void): Promise<void> {
  while (conn.poll(onRecord) === 0) await conn.readable();
}

async function shmRoundTrips(mode: string, roundTrips: number, warmup: number): Promise<Row> {
  const url = `shm://bench-latency-${process.pid}-${mode}?size=64KiB&wake=${mode}` as ShmUrl;
  const listener = await listen(url);
  const child = spawn(process.execPath, [SELF, 'child', url], { stdio: ['ignore', 'inherit', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    const conn = await Promise.race([listener.acceptNext(), exited.then(() => { throw new Error('child exited before connecting'); })]);
    if (!conn) throw new Error('listener closed');
    const ping = new Uint8Array(8);
    let echoed = 0;
    const onEcho = () => { echoed++; };
    const samples = new Float64Array(roundTrips);
    for (let i = -warmup; i < roundTrips; i++) {
      const t0 = performance.now();
      if (!conn.trySendBytes(ping)) throw new Error('ring full during ping-pong');
      // Inline rather than waitForRecord(): an async helper costs a promise turn per round trip.
      while (conn.poll(onEcho) === 0) await conn.readable();
      if (i >= 0) samples[i] = (performance.now() - t0) * 1000;
    }
    if (echoed !== roundTrips + warmup) throw new Error(`got ${echoed} echoes for ${roundTrips + warmup} pings`);
    const row = summarize(mode, samples);

    // Idle: both sides wait for a record (spinning, parked, or both, as the mode says) and none comes.
    conn.sendBytes(IDLE);
    const parentStart = cpuMs();
    const wallStart = performance.now();
    let report: { idleCpuMs: number; idleWallMs: number } | undefined;
    const reply = waitForRecord(conn, (memory, offset, length) => {
      report = JSON.parse(Buffer.from(memory.subarray(offset, offset + length)).toString('utf8')) as typeof report;
    });
    await new Promise((r) => setTimeout(r, IDLE_MS));
    row.idleParent = (cpuMs() - parentStart) / (performance.now() - wallStart);
    conn.sendBytes(REPORT);
    await reply;
    row.idleChild = report!.idleCpuMs / report!.idleWallMs;
    await conn.close();
    return row;
  } finally {
    await listener.close();
    if ((await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 5000))])) === 'timeout') child.kill('SIGKILL');
  }
}

async function forkRoundTrips(roundTrips: number, warmup: number): Promise<Row> {
  const child: ChildProcess = fork(SELF, ['fork-child'], { serialization: 'json', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  try {
    await new Promise<void>((resolve) => child.once('message', () => resolve()));
    const samples = new Float64Array(roundTrips);
    const message = { seq: 0, sym: 'ACME' };
    let resolveEcho: () => void = () => {};
    child.on('message', () => resolveEcho());
    for (let i = -warmup; i < roundTrips; i++) {
      const echo = new Promise<void>((resolve) => { resolveEcho = resolve; });
      const t0 = performance.now();
      message.seq = i;
      child.send(message);
      await echo;
      if (i >= 0) samples[i] = (performance.now() - t0) * 1000;
    }
    const row = summarize('fork IPC (json)', samples);
    const parentStart = cpuMs();
    const wallStart = performance.now();
    child.send('idle');
    await new Promise((r) => setTimeout(r, IDLE_MS));
    row.idleParent = (cpuMs() - parentStart) / (performance.now() - wallStart);
    const report = await new Promise<{ idleCpuMs: number; idleWallMs: number }>((resolve) => {
      child.removeAllListeners('message');
      child.once('message', (m) => resolve(m as { idleCpuMs: number; idleWallMs: number }));
      child.send('report');
    });
    row.idleChild = report.idleCpuMs / report.idleWallMs;
    return row;
  } finally {
    child.disconnect();
  }
}

// --- the child side ----------------------------------------------------------------------------------------------

async function echoChild(url: ShmUrl): Promise<void> {
  const conn = await connect(url);
  const reply = new Uint8Array(8);
  let pings = 0;
  let idleAt: { cpu: number; wall: number } | undefined;
  let report = false;
  const onRecord = (memory: Uint8Array, offset: number, length: number) => {
    if (length === 8) pings++;
    else if (length === IDLE.length && memory[offset] === IDLE[0]) idleAt = { cpu: cpuMs(), wall: performance.now() };
    else report = true;
  };
  let empty = 0;
  for (;;) {
    if (conn.poll(onRecord) === 0) {
      // readable() also resolves when the channel can deliver nothing more (the parent went away): then poll
      // keeps finding nothing.
      if (++empty > 1000) return;
      await conn.readable();
      continue;
    }
    empty = 0;
    while (pings > 0) {
      if (!conn.trySendBytes(reply)) throw new Error('ring full during ping-pong');
      pings--;
    }
    if (report) {
      const idleCpuMs = cpuMs() - idleAt!.cpu;
      conn.sendBytes(Buffer.from(JSON.stringify({ idleCpuMs, idleWallMs: performance.now() - idleAt!.wall })));
      await conn.close();
      return;
    }
  }
}

function forkChild(): void {
  let idleAt: { cpu: number; wall: number } | undefined;
  process.on('message', (m) => {
    if (m === 'idle') idleAt = { cpu: cpuMs(), wall: performance.now() };
    else if (m === 'report') process.send!({ idleCpuMs: cpuMs() - idleAt!.cpu, idleWallMs: performance.now() - idleAt!.wall });
    else process.send!(m);
  });
  process.on('disconnect', () => process.exit(0));
  process.send!('ready');
}

// --- report ------------------------------------------------------------------------------------------------------

const us = (n: number) => (n < 10 ? n.toFixed(2) : n.toFixed(1)).padStart(8);
const pct = (n: number | undefined) => (n === undefined ? '' : `${(n * 100).toFixed(1)}%`).padStart(8);

async function main(): Promise<void> {
  const roundTrips = Number(process.argv[2] ?? 50_000);
  const warmup = Math.min(10_000, Math.ceil(roundTrips / 5));
  const rows: Row[] = [];
  const print = (r: Row) => console.log(
    `| ${r.name.padEnd(16)} | ${us(r.p50)} | ${us(r.p99)} | ${us(r.p999)} | ${us(r.mean)} | ${pct(r.idleParent)} | ${pct(r.idleChild)} |`);
  console.log(`round trips per mode: ${roundTrips} (after ${warmup} warm-up), 8-byte records; idle window ${IDLE_MS} ms`);
  console.log('');
  console.log(`| ${'mode'.padEnd(16)} | ${'p50 µs'.padStart(8)} | ${'p99 µs'.padStart(8)} | ${'p99.9 µs'.padStart(8)} | ${'mean µs'.padStart(8)} | ${'idle A'.padStart(8)} | ${'idle B'.padStart(8)} |`);
  console.log(`|${'-'.repeat(18)}|${'-'.repeat(10)}|${'-'.repeat(10)}|${'-'.repeat(10)}|${'-'.repeat(10)}|${'-'.repeat(10)}|${'-'.repeat(10)}|`);
  const fork = await forkRoundTrips(Math.min(roundTrips, 50_000), Math.min(warmup, 5000));
  rows.push(fork);
  print(fork);
  for (const mode of MODES) {
    const row = await shmRoundTrips(mode, roundTrips, warmup);
    rows.push(row);
    print(row);
  }
  console.log('');
  console.log('idle A / idle B: CPU of the parent / the child while the channel sits idle, as a share of one core.');
  const by = (name: string) => rows.find((r) => r.name === name)!;
  const check = (ok: boolean, text: string) => console.log(`${ok ? 'met   ' : 'MISSED'}  ${text}`);
  check(by('spin').p50 <= 0.5, `spin p50 ${by('spin').p50.toFixed(2)} µs <= 0.5 µs`);
  check(by('adaptive').p50 <= 2, `adaptive p50 under continuous ping-pong ${by('adaptive').p50.toFixed(2)} µs <= 2 µs`);
  for (const mode of ['doorbell', 'futex', 'sem', 'sysvsem', 'signal', 'mq']) {
    check(by(mode).p50 <= fork.p50, `${mode} parked round trip p50 ${by(mode).p50.toFixed(1)} µs <= fork IPC p50 ${fork.p50.toFixed(1)} µs`);
  }
}

const role = process.argv[2];
if (import.meta.url === pathToFileURL(process.argv[1]!).href) {
  if (role === 'child') await echoChild(process.argv[3] as ShmUrl);
  else if (role === 'fork-child') forkChild();
  else await main();
}
