// npm start: two processes exchange messages over a shm channel for a few seconds and print the rates.
// The parent listens; the child (this file with --child) connects, sends orders as msgpack objects and raw
// 64-byte records, and the parent replies to each order batch. Uses the public API only.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { listen, connect } from '../index.js';

const URL_ = `shm://demo-${process.argv[3] ?? process.pid}?size=4MiB`;
const SECONDS = 3;

async function child(url: string): Promise<void> {
  const conn = await connect(url);
  const raw = new Uint8Array(64);
  const until = Date.now() + SECONDS * 1000;
  let id = 0;
  // Half the time objects, half raw bytes; every send obeys back-pressure.
  while (Date.now() < until) {
    for (let i = 0; i < 1000; i++) {
      const ok = (id & 1) ? conn.send({ id, sym: 'ACME', qty: 5, px: 12.5 }) : conn.sendBytes(raw);
      id++;
      if (!ok) await conn.drained();
    }
    await new Promise((r) => setImmediate(r));
  }
  conn.send({ done: id });
  // Wait for the parent's summary, then leave.
  for await (const msg of conn) if ((msg as { summary?: boolean }).summary) break;
  await conn.close();
}

async function parent(): Promise<void> {
  const url = URL_;
  const listener = await listen(url);
  const peer = spawn(process.execPath, [fileURLToPath(import.meta.url), '--child', String(process.pid)], { stdio: 'inherit' });
  const conn = (await listener.acceptNext())!;
  console.log(`shmbus demo: ${url}  (child pid ${peer.pid}, ${SECONDS} s)`);
  let objects = 0, bytes = 0, lastTotal = 0, sent = 0;
  const start = process.hrtime.bigint();
  const ticker = setInterval(() => {
    const total = objects + bytes;
    console.log(`  ${((total - lastTotal) * 2 / 1e6).toFixed(2)}M msg/s   (${objects} objects, ${bytes} raw records so far)`);
    lastTotal = total;
  }, 500);
  for await (const msg of conn) {
    if (msg instanceof Uint8Array) { bytes++; continue; }
    const m = msg as { done?: number };
    if (m.done !== undefined) { sent = m.done; break; }
    objects++;
  }
  clearInterval(ticker);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const received = objects + bytes;
  conn.send({ summary: true });
  await conn.close();
  await listener.close();
  await new Promise((r) => peer.once('exit', r));
  console.log(`received ${received} of ${sent} messages in ${seconds.toFixed(2)} s: ${(received / seconds / 1e6).toFixed(2)}M msg/s` +
    ` (${objects} msgpack objects, ${bytes} raw 64-byte records)${received === sent ? ', none lost' : ' — MISSING MESSAGES'}`);
  if (received !== sent) process.exitCode = 1;
}

if (process.argv[2] === '--child') await child(URL_);
else await parent();
