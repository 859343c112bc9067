// Every registered transport side by side, in one run, through the public API only:
//   node dist/bench/transports.js [scale]          (npm run bench:transports)
// Per transport: one-way throughput of raw messages of 64 B, 4 KiB and 1 MiB (sendBytes + drained, the
// pattern the README recommends; the clock runs from the first send to the child's receipt of the last), and
// round-trip latency of 64 B messages (p50, p99). Prints a table and writes bench/results/transports.json and
// bench/results/transports.svg. `scale` multiplies the message counts (default 1).
//
// The same file is the child (`--child <url>`): it connects, then follows the parent's phases.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { listen, connect, spawnWithPipe, transports, type Connection, type ConnectionListener } from '../index.js';

const SELF = fileURLToPath(import.meta.url);
const RESULTS = fileURLToPath(new URL('../../bench/results/', import.meta.url));
const SIZES = [64, 4096, 1 << 20] as const;
/** Each throughput run is sized from a short probe run (which is also the warm-up) to last about this long,
 * times `scale`, within the probe's count and MAX_COUNTS: fast transports get enough messages to measure, slow
 * ones do not hold up the run. */
const TARGET_SECONDS = 0.5;
const PROBE_COUNTS: Record<number, number> = { 64: 20_000, 4096: 4000, [1 << 20]: 16 };
const MAX_COUNTS: Record<number, number> = { 64: 3_000_000, 4096: 500_000, [1 << 20]: 3000 };
const ROUND_TRIPS = 5000;
const WARMUP_ROUND_TRIPS = 500;

/** Endpoint URLs per transport name; a transport without one is listed as skipped. */
function endpoint(name: string, n: number): string | undefined {
  const tag = `shmbus-bench-${process.pid}-${n}`;
  switch (name) {
    case 'shm': return `shm://${tag}?size=4MiB`;
    case 'unix': return `unix://@${tag}`;
    case 'tcp': return 'tcp://127.0.0.1:0';
    case 'fifo': return `fifo://${join(tmpdir(), tag)}`;
    case 'pipe': return 'pipe:';
    case 'mq': return `mq:///${tag}`;
    case 'sysvmq': return `sysvmq://0x${(0x5d000000 + (process.pid & 0xffff) * 16 + n).toString(16)}`;
    default: return undefined;
  }
}

// --- child -----------------------------------------------------------------------------------------------------

type Phase = { phase: 'sink'; count: number } | { phase: 'echo'; count: number };

async function child(url: string): Promise<void> {
  const conn = await connect(url);
  const it = conn[Symbol.asyncIterator]();
  for (;;) {
    const r = await it.next();
    if (r.done) break;
    const cmd = r.value as Phase;
    if (cmd.phase === 'sink') {
      let bytes = 0;
      for (let i = 0; i < cmd.count; i++) bytes += ((await it.next()).value as Uint8Array).length;
      conn.send({ done: cmd.count, bytes });
    } else {
      for (let i = 0; i < cmd.count; i++) {
        const m = (await it.next()).value as Uint8Array;
        if (!conn.sendBytes(m)) await conn.drained();
      }
    }
  }
  await conn.close();
}

// --- parent ----------------------------------------------------------------------------------------------------

interface Throughput { size: number; messages: number; seconds: number; msgPerSec: number; bytesPerSec: number }
interface Latency { samples: number; p50us: number; p99us: number; meanUs: number }
interface Result { transport: string; url: string; throughput: Throughput[]; latency?: Latency; error?: string }

async function throughput(conn: Connection, size: number, count: number): Promise<Throughput> {
  const payload = new Uint8Array(size).fill(7);
  conn.send({ phase: 'sink', count });
  const start = process.hrtime.bigint();
  for (let i = 0; i < count; i++) if (!conn.sendBytes(payload)) await conn.drained();
  const reply = await conn.receive() as { done: number; bytes: number };
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (reply?.done !== count || reply.bytes !== count * size) throw new Error(`child got ${reply?.done} messages, ${reply?.bytes} bytes`);
  return { size, messages: count, seconds, msgPerSec: count / seconds, bytesPerSec: (count * size) / seconds };
}

async function latency(conn: Connection): Promise<Latency> {
  const payload = new Uint8Array(64).fill(1);
  const total = WARMUP_ROUND_TRIPS + ROUND_TRIPS;
  conn.send({ phase: 'echo', count: total });
  const samples: number[] = [];
  for (let i = 0; i < total; i++) {
    const t0 = process.hrtime.bigint();
    conn.sendBytes(payload);
    await conn.receive();
    if (i >= WARMUP_ROUND_TRIPS) samples.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  samples.sort((a, b) => a - b);
  const at = (q: number) => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))]!;
  return { samples: samples.length, p50us: at(0.5), p99us: at(0.99), meanUs: samples.reduce((a, b) => a + b, 0) / samples.length };
}

/** Starts the child and returns our end of its connection, for a listening transport or for pipe:. */
async function open(name: string, url: string): Promise<{ conn: Connection; child: ChildProcess; listener?: ConnectionListener }> {
  if (name === 'pipe') {
    const { child, connection } = spawnWithPipe(SELF, ['--child', url], { stdio: 'inherit' });
    return { conn: connection, child };
  }
  const listener = await listen(url);
  const child = spawn(process.execPath, [SELF, '--child', listener.url], { stdio: 'inherit' });
  const exited = new Promise((_, reject) => child.once('exit', (code) => reject(new Error(`child exited (${code}) before connecting`))));
  const conn = await Promise.race([listener.acceptNext(), exited]) as Connection | undefined;
  if (!conn) throw new Error('listener closed');
  return { conn, child, listener };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

async function bench(name: string, n: number, scale: number): Promise<Result> {
  const url = endpoint(name, n);
  if (!url) return { transport: name, url: '', throughput: [], error: 'no benchmark endpoint for this transport' };
  let session: Awaited<ReturnType<typeof open>> | undefined;
  try {
    session = await open(name, url);
    const { conn } = session;
    const results: Throughput[] = [];
    for (const size of SIZES) {
      // The probe warms up too (JIT, page faults, socket buffer growth) and is not reported.
      const probe = await throughput(conn, size, PROBE_COUNTS[size]!);
      const count = Math.round(Math.min(Math.max(probe.msgPerSec * TARGET_SECONDS, PROBE_COUNTS[size]!), MAX_COUNTS[size]!) * scale);
      results.push(await throughput(conn, size, Math.max(1, count)));
    }
    const lat = await latency(conn);
    await conn.close();
    return { transport: name, url: session.listener?.url ?? url, throughput: results, latency: lat };
  } catch (error) {
    session?.child.kill('SIGKILL');
    return { transport: name, url, throughput: [], error: error instanceof Error ? error.message : String(error) };
  } finally {
    if (session) {
      await session.listener?.close();
      await stop(session.child);
    }
  }
}

// --- output ----------------------------------------------------------------------------------------------------

const rate = (n: number) => n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(0)}k` : n.toFixed(0);
const mbps = (n: number) => `${(n / 1e6).toFixed(0)} MB/s`;
const sizeName = (s: number) => s >= 1 << 20 ? `${s >> 20} MiB` : s >= 1024 ? `${s >> 10} KiB` : `${s} B`;

function table(results: Result[]): string {
  const head = ['transport', ...SIZES.map((s) => `${sizeName(s)} msg/s`), ...SIZES.slice(1).map((s) => `${sizeName(s)} MB/s`), 'RTT p50 µs', 'RTT p99 µs'];
  const rows = results.map((r) => r.error
    ? [r.transport, `skipped: ${r.error}`]
    : [
      r.transport,
      ...r.throughput.map((x) => rate(x.msgPerSec)),
      ...r.throughput.slice(1).map((x) => mbps(x.bytesPerSec)),
      r.latency!.p50us.toFixed(1), r.latency!.p99us.toFixed(1),
    ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => (row.length === head.length ? row[i]!.length : 0))));
  const line = (cells: string[]) => '| ' + (cells.length === head.length ? cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ') : cells.join(' | ')) + ' |';
  return [line(head), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...rows.map(line)].join('\n');
}

/** A hand-written SVG: throughput in MB/s per size (left) and round-trip latency (right), log scales. */
function svg(results: Result[]): string {
  const ok = results.filter((r) => !r.error);
  const colors = ['#4e79a7', '#f28e2b', '#59a14f'];
  const latColors = ['#76b7b2', '#e15759'];
  const groupW = 56, panelW = ok.length * groupW + 20;
  const W = 70 + panelW + 110 + panelW + 30, H = 420, top = 50, bottom = 330;
  const out: string[] = [];
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const logY = (v: number, lo: number, hi: number) => bottom - ((Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * (bottom - top);
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">shmbus transports — ${esc(new Date().toISOString().slice(0, 10))}, ${esc(cpus()[0]?.model ?? '')}, Node ${process.versions.node}</text>`);

  function panel(x0: number, title: string, lo: number, hi: number, unit: string, series: { label: string; color: string; value: (r: Result) => number }[]): void {
    const width = panelW;
    out.push(`<text x="${x0 + width / 2}" y="${top - 12}" text-anchor="middle" font-size="12">${esc(title)}</text>`);
    for (let e = Math.ceil(Math.log10(lo)); e <= Math.floor(Math.log10(hi)); e++) {
      const y = logY(10 ** e, lo, hi);
      out.push(`<line x1="${x0}" x2="${x0 + width}" y1="${y}" y2="${y}" stroke="#ddd"/>`);
      out.push(`<text x="${x0 - 4}" y="${y + 4}" text-anchor="end">${esc(rate(10 ** e))}</text>`);
    }
    out.push(`<text x="${x0 - 40}" y="${(top + bottom) / 2}" transform="rotate(-90 ${x0 - 40} ${(top + bottom) / 2})" text-anchor="middle">${esc(unit)} (log)</text>`);
    ok.forEach((r, i) => {
      const gx = x0 + 10 + i * groupW;
      const barW = (groupW - 10) / series.length;
      series.forEach((s, j) => {
        const v = s.value(r);
        const y = logY(v, lo, hi);
        out.push(`<rect x="${(gx + j * barW).toFixed(1)}" y="${y.toFixed(1)}" width="${(barW - 1).toFixed(1)}" height="${(bottom - y).toFixed(1)}" fill="${s.color}"><title>${esc(`${r.transport} ${s.label}: ${v.toFixed(1)} ${unit}`)}</title></rect>`);
      });
      out.push(`<text x="${gx + (groupW - 10) / 2}" y="${bottom + 14}" text-anchor="middle">${esc(r.transport)}</text>`);
    });
    series.forEach((s, j) => {
      out.push(`<rect x="${x0 + j * 90}" y="${bottom + 30}" width="10" height="10" fill="${s.color}"/>`);
      out.push(`<text x="${x0 + j * 90 + 14}" y="${bottom + 39}">${esc(s.label)}</text>`);
    });
  }

  panel(70, 'one-way throughput, MB/s', 1, 1e4, 'MB/s', SIZES.map((size, j) => ({
    label: sizeName(size), color: colors[j]!, value: (r: Result) => r.throughput[j]!.bytesPerSec / 1e6,
  })));
  panel(70 + panelW + 110, 'round trip, 64 B, µs', 1, 1e4, 'µs', [
    { label: 'p50', color: latColors[0]!, value: (r: Result) => r.latency!.p50us },
    { label: 'p99', color: latColors[1]!, value: (r: Result) => r.latency!.p99us },
  ]);
  out.push('</svg>');
  return out.join('\n') + '\n';
}

async function main(): Promise<void> {
  const scale = Number(process.argv[2] ?? 1);
  if (!(scale > 0)) throw new Error('scale must be a positive number');
  const names = transports().map((t) => t.name);
  const results: Result[] = [];
  let n = 0;
  for (const name of names) {
    process.stdout.write(`${name} … `);
    const r = await bench(name, ++n, scale);
    results.push(r);
    console.log(r.error ? `skipped (${r.error})` : 'done');
  }
  console.log('');
  console.log(table(results));
  mkdirSync(RESULTS, { recursive: true });
  const json = {
    date: new Date().toISOString(), node: process.versions.node, platform: `${process.platform} ${process.arch}`,
    cpu: cpus()[0]?.model, cpus: cpus().length, scale, roundTrips: ROUND_TRIPS, results,
  };
  writeFileSync(join(RESULTS, 'transports.json'), JSON.stringify(json, null, 2) + '\n');
  writeFileSync(join(RESULTS, 'transports.svg'), svg(results));
  console.log(`\nwrote ${join(RESULTS, 'transports.json')} and transports.svg`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (process.argv[2] === '--child') await child(process.argv[3]!);
  else await main();
}
