// Pub/sub benchmarks, in one run:
//   1. publisher cost (CPU ns per message) with 1, 2, 4, 8 subscriber processes on one topic;
//   2. 64-byte fan-out to 4 subscriber processes: shm topic against the same fan-out over Unix sockets.
//   node dist/bench/pubsub.js [messages=2000000]
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Bus } from '../bus/index.js';

const CHILD = fileURLToPath(new URL('./pubsub-child.js', import.meta.url));

interface Peer { child: ChildProcess; ready: Promise<void>; done: Promise<number>; exit: Promise<unknown> }

/** Lets subscribers leave the bus themselves (the last member removes its segments); kills stragglers. */
async function stop(peers: Peer[]): Promise<void> {
  const timer = setTimeout(() => { for (const p of peers) p.child.kill('SIGKILL'); }, 5000);
  await Promise.all(peers.map((p) => p.exit));
  clearTimeout(timer);
}

function startSubscriber(kind: 'shm' | 'unix', address: string, count: number): Peer {
  const child = spawn(process.execPath, [CHILD, kind, address, String(count)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let ready!: () => void, done!: (n: number) => void;
  const exit = new Promise((r) => child.once('exit', r));
  const p: Peer = { child, ready: new Promise((r) => { ready = r; }), done: new Promise((r) => { done = r; }), exit };
  createInterface({ input: child.stdout! }).on('line', (line) => {
    if (line === 'ready') ready();
    else if (line.startsWith('done ')) done(Number(line.slice(5)));
  });
  child.once('exit', (code) => { ready(); done(code === 0 ? count : -1); });
  return p;
}

/** Publishes `messages` raw 64-byte records to `subscribers` processes; returns publisher CPU ns/msg and msg/s. */
export async function shmFanOut(subscribers: number, messages: number): Promise<{ cpuNsPerMsg: number; msgPerSec: number }> {
  const url = `shm://bench-pubsub-${process.pid}-${subscribers}`;
  const bus = await Bus.open(url);
  const pub = bus.publisher('bench', { capacity: '4MiB', policy: 'lossless' });
  const peers = Array.from({ length: subscribers }, () => startSubscriber('shm', url, messages));
  try {
    await Promise.all(peers.map((p) => p.ready));
    const payload = new Uint8Array(64).fill(1);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    let waited = 0;
    for (let i = 0; i < messages; i++) {
      if (!pub.publishBytes(payload)) {
        // Time spent waiting for subscribers is not publishing cost: take it out of the CPU figure.
        const w0 = process.cpuUsage();
        await pub.drained();
        const w = process.cpuUsage(w0);
        waited += w.user + w.system;
      }
    }
    const cpu = process.cpuUsage(cpu0);
    const results = await Promise.all(peers.map((p) => p.done));
    const seconds = (performance.now() - t0) / 1000;
    if (results.some((n) => n !== messages)) throw new Error(`a subscriber got ${results.join(',')} of ${messages}`);
    return { cpuNsPerMsg: ((cpu.user + cpu.system - waited) * 1000) / messages, msgPerSec: messages / seconds };
  } finally {
    await pub.close();
    await stop(peers);
    await bus.close();
  }
}

/** The same fan-out over Unix sockets: each message is framed (u32 length + 64 bytes) and written to each subscriber. */
export async function unixFanOut(subscribers: number, messages: number): Promise<{ msgPerSec: number }> {
  const path = `@shmbus-bench-fanout-${process.pid}`;
  const sockets: net.Socket[] = [];
  const server = net.createServer((s) => { s.setNoDelay(false); sockets.push(s); });
  await new Promise<void>((r) => server.listen({ path: path.replace(/^@/, '\0') }, r));
  const peers = Array.from({ length: subscribers }, () => startSubscriber('unix', path, messages));
  try {
    await Promise.all(peers.map((p) => p.ready));
    while (sockets.length < subscribers) await new Promise((r) => setTimeout(r, 1));
    const frame = Buffer.alloc(68);
    frame.writeUInt32LE(64, 0);
    const BATCH = 1024; // frames per write: 68 KiB, like a corked writer
    const batch = Buffer.concat(Array.from({ length: BATCH }, () => frame));
    const t0 = performance.now();
    for (let i = 0; i < messages; i += BATCH) {
      const n = Math.min(BATCH, messages - i);
      const chunk = n === BATCH ? batch : batch.subarray(0, n * 68);
      let full = false;
      for (const s of sockets) if (!s.write(chunk)) full = true;
      if (full) await Promise.all(sockets.map((s) => (s.writableNeedDrain ? new Promise((r) => s.once('drain', r)) : undefined)));
    }
    const results = await Promise.all(peers.map((p) => p.done));
    if (results.some((n) => n !== messages)) throw new Error(`a subscriber got ${results.join(',')} of ${messages}`);
    return { msgPerSec: messages / ((performance.now() - t0) / 1000) };
  } finally {
    for (const s of sockets) s.destroy();
    server.close();
    await stop(peers);
  }
}

async function main(): Promise<void> {
  const messages = Number(process.argv[2] ?? 2_000_000);
  await shmFanOut(1, Math.min(messages, 200_000)); // warm-up
  console.log(`publisher cost, raw 64 B, lossless topic, ${messages} messages (2 cores: many subscribers share them)`);
  const cost: Record<number, number> = {};
  for (const k of [1, 2, 4, 8]) {
    const r = await shmFanOut(k, messages);
    cost[k] = r.cpuNsPerMsg;
    console.log(`  ${k} subscriber${k > 1 ? 's' : ' '}: ${r.cpuNsPerMsg.toFixed(1)} ns/msg publisher CPU, ${(r.msgPerSec / 1e6).toFixed(2)}M msg/s delivered to each`);
  }
  console.log(`  8 subscribers / 1 subscriber = ${(cost[8]! / cost[1]!).toFixed(2)}x`);
  const shm = await shmFanOut(4, messages);
  const unix = await unixFanOut(4, messages);
  console.log(`fan-out of 64 B to 4 subscriber processes: shm ${(shm.msgPerSec / 1e6).toFixed(2)}M msg/s, unix sockets ${(unix.msgPerSec / 1e6).toFixed(2)}M msg/s: ${(shm.msgPerSec / unix.msgPerSec).toFixed(2)}x`);
}

if (import.meta.url === pathToFileURL(process.argv[1]!).href) await main();
