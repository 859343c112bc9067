// One-way throughput between two processes, shmbus against the baselines, in one run.
//   node dist/bench/throughput.js [messages]
// Prints msg/s per variant and the ratios the targets are stated in.
import { spawn } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { listen, type Channel } from '../index.js';
import { forkIpcThroughput, unixSocketThroughput, makeObject64, type ThroughputResult } from './baselines.js';

const CHILD = fileURLToPath(new URL('./shm-child.js', import.meta.url));
/** Records one claimBatch asks for. */
const BATCH = 256;

/** Sends `messages` to a child over a shm channel; the clock runs from the connection to the child's reply. */
export async function shmThroughput(opts: { messages: number; kind: 'raw' | 'object' | 'batch'; payloadSize?: number; url?: string }): Promise<ThroughputResult> {
  const size = opts.payloadSize ?? 64;
  const url = opts.url ?? `shm://bench-${process.pid}?size=4MiB`;
  const listener = await listen(url);
  // 'batch' is the zero-copy pair: claimBatch here, poll in the child (as for 'raw').
  const childKind = opts.kind === 'batch' ? 'raw' : opts.kind;
  const child = spawn(process.execPath, [CHILD, url, String(opts.messages), childKind], { stdio: ['ignore', 'inherit', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    const conn = await Promise.race([listener.acceptNext(), exited.then(() => { throw new Error('child exited before connecting'); })]);
    if (!conn) throw new Error('listener closed');
    const start = process.hrtime.bigint();
    if (opts.kind === 'raw') {
      const payload = new Uint8Array(size).fill(7);
      for (let i = 0; i < opts.messages;) {
        if (conn.trySendBytes(payload)) i++;
        else await conn.drained();
      }
    } else if (opts.kind === 'batch') {
      // Zero copy both ways: up to BATCH records claimed at once and written in place (the payload copied in as a
      // producer would write its message), published with one store of the tail; the child reads them in place.
      const payload = new Uint8Array(size).fill(7);
      for (let i = 0; i < opts.messages;) {
        const batch = (conn as unknown as Channel).claimBatch(size, Math.min(BATCH, opts.messages - i));
        if (batch === null) { await conn.drained(); continue; }
        const memory = batch.memory;
        for (let k = 0, at = batch.first; k < batch.count; k++, at += batch.stride) memory.set(payload, at);
        batch.commit();
        i += batch.count;
      }
    } else {
      for (let i = 0; i < opts.messages; i++) {
        if (!conn.send(makeObject64(i))) await conn.drained();
      }
    }
    const reply = (await conn.receive()) as { done: number };
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    if (reply?.done !== opts.messages) throw new Error(`child received ${reply?.done} of ${opts.messages}`);
    await conn.close();
    const name = opts.kind === 'batch' ? `shmbus raw${size} zero-copy (claimBatch/poll)` : `shmbus ${opts.kind}${opts.kind === 'raw' ? size : '64'}`;
    return { name, messages: opts.messages, seconds, msgPerSec: opts.messages / seconds };
  } finally {
    await listener.close();
    if ((await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 5000))])) === 'timeout') child.kill('SIGKILL');
  }
}

function fmt(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : `${(n / 1e3).toFixed(0)}k`;
}

async function main(): Promise<void> {
  const messages = Number(process.argv[2] ?? 2_000_000);
  const ipcMessages = Math.min(messages, 500_000);
  const results: Record<string, ThroughputResult> = {};
  const run = async (key: string, f: () => Promise<ThroughputResult>) => {
    const r = await f();
    results[key] = r;
    console.log(`${r.name.padEnd(34)} ${fmt(r.msgPerSec).padStart(8)} msg/s  (${r.messages} in ${r.seconds.toFixed(3)} s)`);
  };
  // Warm-up, not reported: the first run pays for JIT and page faults.
  await shmThroughput({ messages: Math.min(messages, 200_000), kind: 'raw' });
  await shmThroughput({ messages: Math.min(messages, 200_000), kind: 'batch' });
  await run('shmRaw', () => shmThroughput({ messages, kind: 'raw' }));
  await run('shmBatch', () => shmThroughput({ messages, kind: 'batch' }));
  await run('shmObject', () => shmThroughput({ messages: Math.min(messages, 1_000_000), kind: 'object' }));
  await run('forkRaw', () => forkIpcThroughput({ messages: ipcMessages, kind: 'raw' }));
  await run('forkObject', () => forkIpcThroughput({ messages: ipcMessages, kind: 'object' }));
  await run('unixRaw', () => unixSocketThroughput({ messages, kind: 'raw' }));
  await run('unixObject', () => unixSocketThroughput({ messages: Math.min(messages, 1_000_000), kind: 'object' }));
  // 1 MiB records: the shm receiver reads them in place (poll), the socket receiver gets them copied out.
  const big = Math.max(200, Math.floor(messages / 1000));
  await run('shmBig', async () => ({ ...(await shmThroughput({ messages: big, kind: 'raw', payloadSize: 1 << 20, url: `shm://bench-big-${process.pid}?size=8MiB` })), name: 'shmbus raw 1 MiB (zero-copy poll)' }));
  await run('unixBig', () => unixSocketThroughput({ messages: big, kind: 'raw', payloadSize: 1 << 20 }));
  const ratio = (a: string, b: string) => (results[a]!.msgPerSec / results[b]!.msgPerSec).toFixed(2);
  console.log('');
  console.log(`raw 64 B:    shm / fork IPC = ${ratio('shmRaw', 'forkRaw')}x   shm / unix socket = ${ratio('shmRaw', 'unixRaw')}x   (trySendBytes / poll)`);
  console.log(`raw 64 B zero-copy (claimBatch / poll): shm / unix socket = ${ratio('shmBatch', 'unixRaw')}x`);
  console.log(`object 64 B: shm / fork IPC = ${ratio('shmObject', 'forkObject')}x   shm / unix socket = ${ratio('shmObject', 'unixObject')}x`);
  console.log(`raw 1 MiB:   shm / unix socket = ${ratio('shmBig', 'unixBig')}x   (${(results.shmBig!.msgPerSec / 1024).toFixed(1)} GB/s vs ${(results.unixBig!.msgPerSec / 1024).toFixed(1)} GB/s)`);
}

if (import.meta.url === pathToFileURL(process.argv[1]!).href) await main();
