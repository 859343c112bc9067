// What a connection costs, shm:// against unix:// in one run (issue 11):
//   node dist/bench/connections.js [--count 2000] [--rounds 3] [--gap 1] [--busy 300000] [--idle 1000] [--many 10000] [--json]
//   (--busy 0 and --many 0 leave those rows out)
//   (npm run bench:connections)
//
// One process listens and connects to itself, one connection after another, until --count or the first failure:
//   open     median milliseconds from connect() to both ends ready (connect and acceptNext together)
//   shmem    bytes of shared memory per open connection (the Shmem line of /proc/meminfo: /dev/shm and memfds)
//   rss      resident bytes per open connection (both ends: this process holds both)
//   fds      descriptors per open connection (both ends)
//   failed   the count at which an open failed, and its error code and message
//   back     whether closing every connection gave back the shared memory and descriptors
// Then the same opens to a listener in a process of its own (`--listen-child`), as a server is: this process
// connects --count times, one after the other, holding each open, back to back and --gap ms apart (the listener
// idle in between, as a server mostly is), for shm:// and unix:// in turn (--rounds rounds, the order rotated
// each round; medians over every round's opens):
//   connect  median milliseconds from connect() to the connection ready on this side (shm://: after the first
//            connection the process knows the listener, and connect() resolves once its own segment is sent, as a
//            Unix socket's connect resolves once the kernel queued it: transports/shm/connect.ts)
//   first    median milliseconds from connect() to the first message, which the listener sends once it
//            accepted the connection (both ends ready and one message carried)
// Then the throughput of one busy connection (64-byte sendBytes, drained, for await on the other end) with
// --idle idle connections open beside it, against none. Shmem and RSS are machine-wide and process-wide
// counters: other processes' work on a shared machine shows up in them, so compare rows of the same run.
// Last, --many connections held open at once by one listener process, from 4 client processes (`--child`), for
// shm:// (default options: growing rings; and fixed small rings for many connections) and unix://: the listener's engines, descriptors, RSS and shared memory per connection.
import { readdirSync, readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { listen, connect, type Connection, type ConnectionListener } from '../index.js';
import { ShmbusError } from '../host/errors.js';
import { allEngines } from '../host/engine.js';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '2000' },
    busy: { type: 'string', default: '300000' },
    idle: { type: 'string', default: '1000' },
    many: { type: 'string', default: '10000' },
    json: { type: 'boolean', default: false },
    rounds: { type: 'string', default: '3' },
    gap: { type: 'string', default: '1' },
    child: { type: 'string' },
    'listen-child': { type: 'string' },
  },
  allowPositionals: true,
});
const COUNT = Number(values.count);
const BUSY = Number(values.busy);
const IDLE = Number(values.idle);

function shmemBytes(): number {
  const m = /^Shmem:\s+(\d+) kB$/m.exec(readFileSync('/proc/meminfo', 'latin1'));
  return Number(m?.[1] ?? 0) * 1024;
}
const rssBytes = () => process.memoryUsage.rss();
const fdCount = () => readdirSync('/proc/self/fd').length;
const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[s.length >> 1]! : NaN; };

interface OpenResult {
  url: string; opened: number; openMs: number; shmemPer: number; rssPer: number; fdsPer: number;
  failed?: { at: number; code: string; message: string }; back: { shmem: number; fds: number };
}

type Pair = [Connection, Connection];

async function openPair(listener: ConnectionListener, url: string): Promise<Pair> {
  const [c, s] = await Promise.all([connect(url), listener.acceptNext()]);
  if (!s) throw new Error('listener closed');
  return [c, s];
}

async function openMany(url: string, count: number): Promise<OpenResult> {
  const listener = await listen(url, { maxConnections: count + 1 });
  const pairs: Pair[] = [];
  const times: number[] = [];
  const shmem0 = shmemBytes();
  const rss0 = rssBytes();
  const fds0 = fdCount();
  let failed: OpenResult['failed'];
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    try {
      pairs.push(await openPair(listener, url));
    } catch (error) {
      const e = error as ShmbusError;
      failed = { at: i + 1, code: String(e.code ?? 'unknown'), message: e.message };
      break;
    }
    times.push(performance.now() - t0);
  }
  const n = pairs.length;
  const result: OpenResult = {
    url, opened: n, openMs: median(times),
    shmemPer: (shmemBytes() - shmem0) / Math.max(1, n), rssPer: (rssBytes() - rss0) / Math.max(1, n),
    fdsPer: (fdCount() - fds0) / Math.max(1, n), failed, back: { shmem: 0, fds: 0 },
  };
  await Promise.all(pairs.flatMap(([c, s]) => [c.close(), s.close()]));
  await listener.close();
  result.back = { shmem: shmemBytes() - shmem0, fds: fdCount() - fds0 };
  return result;
}

/** Messages per second over one connection with `idle` idle connections open on the same listener. */
async function busyRate(url: string, idle: number, count: number): Promise<{ rate: number; idleOpened: number }> {
  const listener = await listen(url, { maxConnections: idle + 2 });
  const idlePairs: Pair[] = [];
  try {
    for (let i = 0; i < idle; i++) idlePairs.push(await openPair(listener, url));
  } catch { /* report how many could be opened */ }
  const [producer, consumer] = await openPair(listener, url);
  const bytes = Buffer.alloc(64, 7);
  const t0 = performance.now();
  const received = (async () => {
    let n = 0;
    for await (const _ of consumer) if (++n === count) break;
  })();
  for (let i = 0; i < count; i++) if (!producer.sendBytes(bytes)) await producer.drained();
  await received;
  const seconds = (performance.now() - t0) / 1000;
  await Promise.all([producer.close(), consumer.close(), ...idlePairs.flatMap(([c, s]) => [c.close(), s.close()])]);
  await listener.close();
  return { rate: count / seconds, idleOpened: idlePairs.length };
}

/** A client process of the --many row: opens `count` connections to `url` (8 handshakes at a time), prints
 * "ready" (or "failed <count> <code> <message>"), and closes them all when its stdin ends. */
async function child(url: string, count: number): Promise<void> {
  const conns: Connection[] = [];
  let next = 0;
  let failure: string | undefined;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next < count && failure === undefined) {
      next++;
      try { conns.push(await connect(url)); } catch (error) {
        // A full accept backlog is not the limit measured here: try again (connect waits for room itself, up to its
        // timeout; a busy listener can take longer than that).
        if (/EAGAIN/.test((error as Error).message) || (error as ShmbusError).code === 'ERR_SHMBUS_LIMIT' && /waiting/.test((error as Error).message)) { next--; continue; }
        failure ??= `failed ${conns.length} ${(error as ShmbusError).code} ${(error as Error).message}`;
      }
    }
  }));
  console.log(failure ?? 'ready');
  process.stdin.resume();
  await new Promise((r) => process.stdin.once('end', r));
  await Promise.all(conns.map((c) => c.close()));
}

/** A listener process of the remote open row: listens at `url`, prints "listening", sends each connection it
 * accepts one message, and closes everything when its stdin ends. */
async function listenChild(url: string, count: number): Promise<void> {
  const listener = await listen(url, { maxConnections: count + 1 });
  const held: Connection[] = [];
  const hello = Buffer.of(1);
  const accepting = (async () => { for await (const c of listener) { held.push(c); c.sendBytes(hello); } })();
  console.log('listening');
  process.stdin.resume();
  await new Promise((r) => process.stdin.once('end', r));
  await Promise.all(held.map((c) => c.close()));
  await listener.close();
  await accepting;
}

/** Per-open milliseconds (to connect() resolved, and to the listener's first message) of `count` opens, one after
 * the other (`gapMs` apart: the listener idle in between, as a server mostly is), to a listener in a child
 * process. */
async function openRemote(url: string, count: number, gapMs: number): Promise<{ connect: number[]; first: number[]; failed?: string }> {
  const listener = spawn(process.execPath, [fileURLToPath(import.meta.url), '--listen-child', url, String(count)],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((res) => listener.once('close', res));
  const line = await new Promise<string>((resolve) => {
    createInterface({ input: listener.stdout! }).once('line', resolve);
    listener.once('close', () => resolve('exited'));
  });
  const conns: Connection[] = [];
  const connectMs: number[] = [];
  const firstMs: number[] = [];
  let failed: string | undefined = line === 'listening' ? undefined : `listener: ${line}`;
  for (let i = 0; i < count && failed === undefined; i++) {
    if (gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
    const t0 = performance.now();
    try {
      const c = await connect(url);
      const t1 = performance.now();
      conns.push(c);
      await c.receive();
      const t2 = performance.now();
      connectMs.push(t1 - t0);
      firstMs.push(t2 - t0);
    } catch (error) {
      failed = `#${i + 1} ${(error as ShmbusError).code}: ${(error as Error).message}`;
    }
  }
  await Promise.all(conns.map((c) => c.close()));
  listener.stdin!.end();
  await exited;
  return { connect: connectMs, first: firstMs, failed };
}

const CLIENT_PROCESSES = 4;

/** --many: one listener, `total` connections held open by CLIENT_PROCESSES processes. */
async function many(url: string, total: number) {
  const listener = await listen(url, { maxConnections: total + 1, maxPending: 256 });
  const accepted: Connection[] = [];
  const accepting = (async () => { for await (const c of listener) accepted.push(c); })();
  const shmem0 = shmemBytes();
  const rss0 = rssBytes();
  const fds0 = fdCount();
  // Engines are kept once made (an earlier row's stay): count those this row's connections took handles in.
  const handles0 = allEngines().map((e) => e.freeHandleCount);
  const t0 = performance.now();
  const per = Math.ceil(total / CLIENT_PROCESSES);
  const counts = Array.from({ length: CLIENT_PROCESSES }, (_, i) => Math.min(per, total - i * per));
  const children = counts.map((count) => spawn(process.execPath,
    [fileURLToPath(import.meta.url), '--child', url, String(count)], { stdio: ['pipe', 'pipe', 'inherit'] }));
  const lines = await Promise.all(children.map((c) => new Promise<string>((resolve) => {
    createInterface({ input: c.stdout! }).once('line', resolve);
  })));
  // A unix:// connect completes in the kernel before the listener's accept runs here: count once every
  // connection the clients hold has been accepted (a failed client says how many it holds).
  const held = lines.reduce((sum, line, i) => sum + (line === 'ready' ? counts[i]! : Number(line.split(' ')[1]) || 0), 0);
  const acceptBy = performance.now() + 60_000; // a listener that stopped accepting is reported by the count, not a hang
  while (accepted.length < held && performance.now() < acceptBy) await new Promise((r) => setImmediate(r));
  const seconds = (performance.now() - t0) / 1000;
  const n = accepted.length;
  const r = {
    url, opened: n, seconds, engines: allEngines().filter((e, i) => e.freeHandleCount < (handles0[i] ?? Infinity)).length, failures: lines.filter((l) => l !== 'ready'),
    shmemPer: (shmemBytes() - shmem0) / Math.max(1, n), rssPer: (rssBytes() - rss0) / Math.max(1, n), fdsPer: (fdCount() - fds0) / Math.max(1, n),
  };
  for (const c of children) c.stdin!.end();
  await Promise.all(children.map((c) => new Promise((res) => c.once('close', res))));
  await Promise.all(accepted.map((c) => c.close()));
  await listener.close();
  await accepting;
  return { ...r, back: { shmem: shmemBytes() - shmem0, fds: fdCount() - fds0 } };
}

if (values['listen-child'] !== undefined) {
  await listenChild(values['listen-child'], Number(positionalCount()));
  process.exit(0);
}
if (values.child !== undefined) {
  await child(values.child, Number(positionalCount()));
  process.exit(0);
}
function positionalCount(): string {
  return process.argv[process.argv.length - 1]!;
}

const tag = `${process.pid}`;
const urls = {
  // Small rings for many connections; messages up to 16 MiB still pass, as fragments.
  'shm 64KiB': `shm://bench-conn-${tag}?size=64KiB&maxMessage=16MiB`,
  // The default: rings start with 64 KiB and grow to 4 MiB when a message needs it (an 8 MiB window each).
  shm: `shm://bench-conn-big-${tag}`,
  unix: `unix://@shmbus-bench-conn-${tag}`,
};
const LIMITS: Record<string, number> = {};

const kib = (b: number) => `${(b / 1024).toFixed(1)} KiB`;
const opens: Record<string, OpenResult> = {};
for (const [name, url] of Object.entries(urls)) opens[name] = await openMany(url, Math.min(COUNT, LIMITS[name] ?? COUNT));
// The listener in a process of its own, shm:// (default options) and unix:// alternating, the order rotated.
const REMOTE: Array<[string, string]> = [['shm', `shm://bench-conn-remote-${tag}`], ['unix', `unix://@shmbus-bench-conn-remote-${tag}`]];
// Back to back, and --gap ms apart.
const GAPS = [0, Number(values.gap)];
const remote: Record<string, { connect: number[]; first: number[]; failed: string[] }> = {};
for (let round = 0; round < Number(values.rounds); round++) {
  for (let k = 0; k < REMOTE.length * GAPS.length; k++) {
    const [name, url] = REMOTE[(k + round) % REMOTE.length]!;
    const gap = GAPS[Math.floor(k / REMOTE.length)]!;
    const r = await openRemote(url, COUNT, gap);
    const into = (remote[`${name} ${gap ? `${gap} ms apart` : 'back to back'}`] ??= { connect: [], first: [], failed: [] });
    into.connect.push(...r.connect);
    into.first.push(...r.first);
    if (r.failed) into.failed.push(r.failed);
  }
}
const remoteRows = Object.fromEntries(Object.entries(remote).map(([name, r]) =>
  [name, { opened: r.connect.length, connectMs: median(r.connect), firstMs: median(r.first), failed: r.failed }]));
const busy: Record<string, { none: number; idle: number; idleOpened: number }> = {};
for (const [name, url] of BUSY > 0 ? Object.entries(urls) : []) {
  const none = await busyRate(url, 0, BUSY);
  const withIdle = await busyRate(url, Math.min(IDLE, LIMITS[name] ?? IDLE), BUSY);
  busy[name] = { none: none.rate, idle: withIdle.rate, idleOpened: withIdle.idleOpened };
}

const MANY = Number(values.many);
const manyRows = MANY > 0
  ? [await many(`shm://bench-many-${tag}`, MANY), await many(`shm://bench-many-small-${tag}?size=64KiB&maxMessage=16MiB`, MANY),
    await many(`unix://@shmbus-bench-many-${tag}`, MANY)]
  : [];

if (values.json) {
  console.log(JSON.stringify({ opens, remoteOpens: remoteRows, busy, many: manyRows }, null, 2));
} else {
  console.log(`opening up to ${COUNT} connections to our own listener, in this process (machine shared: compare rows of this run)`);
  console.log('url          opened  open ms (median)  vs unix  shmem/conn    rss/conn     fds/conn  back (shmem, fds)  failed');
  const unixMs = opens.unix!.openMs;
  for (const [name, r] of Object.entries(opens)) {
    console.log([
      name.padEnd(12), String(r.opened).padStart(6), r.openMs.toFixed(3).padStart(17), `${(r.openMs / unixMs).toFixed(1)}x`.padStart(8),
      kib(r.shmemPer).padStart(12), kib(r.rssPer).padStart(12), r.fdsPer.toFixed(1).padStart(10),
      `${kib(r.back.shmem)}, ${r.back.fds}`.padStart(18), r.failed ? ` #${r.failed.at} ${r.failed.code}: ${r.failed.message}` : '  -',
    ].join(' '));
  }
  console.log(`\nopening ${COUNT} connections one after the other to a listener in another process, ${values.rounds} rounds (medians of all)`);
  console.log('url                    opened  connect ms  vs unix  first msg ms  vs unix  failed');
  for (const [name, r] of Object.entries(remoteRows).sort(([a], [b]) => a.slice(a.indexOf(' ')).localeCompare(b.slice(b.indexOf(' '))))) {
    const u = remoteRows[`unix${name.slice(name.indexOf(' '))}`]!;
    console.log([
      name.padEnd(22), String(r.opened).padStart(6), r.connectMs.toFixed(3).padStart(11), `${(r.connectMs / u.connectMs).toFixed(1)}x`.padStart(8),
      r.firstMs.toFixed(3).padStart(13), `${(r.firstMs / u.firstMs).toFixed(1)}x`.padStart(8), r.failed.length ? `  ${r.failed.join('; ')}` : '  -',
    ].join(' '));
  }
  if (BUSY > 0) console.log(`\none busy connection, ${BUSY} × 64 B sendBytes → for await, alone and beside ${IDLE} idle ones`);
  for (const [name, b] of Object.entries(busy)) {
    console.log(`${name.padEnd(12)} alone ${(b.none / 1e6).toFixed(2)} M msg/s   beside ${b.idleOpened} idle ${(b.idle / 1e6).toFixed(2)} M msg/s   ratio ${(b.idle / b.none).toFixed(2)}`);
  }
  if (manyRows.length) {
    console.log(`\n${MANY} connections held open at once: this process listens, ${CLIENT_PROCESSES} processes connect`);
    for (const m of manyRows) {
      console.log(`${(m.url.startsWith('shm') ? (m.url.includes('?') ? 'shm 64KiB' : 'shm') : 'unix').padEnd(10)} opened ${m.opened} in ${m.seconds.toFixed(1)} s   engines ${m.url.startsWith('shm') ? m.engines : '-'}   shmem/conn ${kib(m.shmemPer)}   rss/conn ${kib(m.rssPer)}   fds/conn ${m.fdsPer.toFixed(2)}   back ${kib(m.back.shmem)}, ${m.back.fds} fds${m.failures.length ? `   ${m.failures.join('; ')}` : ''}`);
    }
  }
}
