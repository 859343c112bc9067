// The same work with no framework at all, measured beside the everyday rows (bench/everyday.ts `--rows …,bare`): a
// bare ring of 64-byte records in a SharedArrayBuffer between two worker threads, and a bare ping-pong of one word.
// The everyday table prints them as "bare" rows, so that a miss can be read against what this machine does without
// shmbus in the same run: how many records a second cross between two cores when each is published on its own
// (what a per-record `claim` is up against) or 256 at a time, and how long a word takes to go there and back (the
// least any round trip costs). No checks, no hostile-peer handling, no waiting but spinning: a reference, not an
// alternative.
//
// The ring: the producer copies a 64-byte record into each 72-byte slot (a record header's worth of room, as
// shm:// lays records out) and publishes its position with Atomics.store after every record (`every` 1), or after
// every 256 (as claimBatch does); the consumer polls the position with Atomics.load, reads each record's last byte
// and publishes its own position after each batch it saw. Capacity is a whole number of slots (no wrap logic).
// Positions count records, so they fit an Int32Array; producer and consumer positions sit 128 bytes apart.
//
// The same file is the worker: it is started with workerData { role, sab, count, every }.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const SLOT = 72;
const SLOTS = 1820; // 131,040 bytes: the 128 KiB rings shm:// starts with
const DATA = 384; // after the words below, each on a 128-byte line pair of its own
const TAIL = 0; // Int32Array index of the producer's position
const HEAD = 32; // ... of the consumer's (byte 128)
const GO = 64; // ... of the start word (byte 256): the ring's sides spin on it until both threads are loaded

interface Job { role: 'produce' | 'consume' | 'ping' | 'pong'; sab: SharedArrayBuffer; count: number; every: number }

function produce(sab: SharedArrayBuffer, count: number, every: number): void {
  const pos = new Int32Array(sab, 0, DATA / 4);
  const data = new Uint8Array(sab, DATA, SLOTS * SLOT);
  const record = new Uint8Array(64).fill(7);
  let head = 0;
  for (let i = 0; i < count; i++) {
    while (i - head >= SLOTS) head = Atomics.load(pos, HEAD);
    data.set(record, (i % SLOTS) * SLOT);
    if ((i + 1) % every === 0) Atomics.store(pos, TAIL, i + 1);
  }
  Atomics.store(pos, TAIL, count);
}

function consume(sab: SharedArrayBuffer, count: number): number {
  const pos = new Int32Array(sab, 0, DATA / 4);
  const data = new Uint8Array(sab, DATA, SLOTS * SLOT);
  let head = 0;
  let sum = 0;
  while (head < count) {
    const tail = Atomics.load(pos, TAIL);
    if (tail === head) continue;
    for (; head < tail; head++) sum += data[(head % SLOTS) * SLOT + 63]!;
    Atomics.store(pos, HEAD, head);
  }
  return sum;
}

/** One side of the ping-pong: `ping` writes i to word 0 and waits for it in word 32; `pong` echoes. */
function pingPong(sab: SharedArrayBuffer, count: number, ping: boolean): Float64Array {
  const words = new Int32Array(sab, 0, DATA / 4);
  const us = new Float64Array(ping ? count : 0);
  for (let i = 1; i <= count; i++) {
    if (ping) {
      const t0 = process.hrtime.bigint();
      Atomics.store(words, 0, i);
      while (Atomics.load(words, 32) !== i);
      us[i - 1] = Number(process.hrtime.bigint() - t0) / 1000;
    } else {
      while (Atomics.load(words, 0) !== i);
      Atomics.store(words, 32, i);
    }
  }
  return us;
}

function start(job: Job): { ready: Promise<unknown>; result: Promise<unknown> } {
  const worker = new Worker(new URL(import.meta.url), { workerData: job });
  const messages: unknown[] = [];
  const waiters: ((m: unknown) => void)[] = [];
  worker.on('message', (m) => { const w = waiters.shift(); if (w) w(m); else messages.push(m); });
  const next = () => new Promise<unknown>((resolve, reject) => {
    if (messages.length) { resolve(messages.shift()); return; }
    waiters.push(resolve);
    worker.once('error', reject);
  });
  const ready = next();
  const result = ready.then(next).finally(() => worker.terminate());
  return { ready, result };
}

/** Records per second through the bare ring, publishing every `every` records. */
export async function bareRing(count: number, every: number): Promise<number> {
  const sab = new SharedArrayBuffer(DATA + SLOTS * SLOT);
  const consumer = start({ role: 'consume', sab, count, every });
  const producer = start({ role: 'produce', sab, count, every });
  await Promise.all([consumer.ready, producer.ready]);
  const t0 = process.hrtime.bigint();
  Atomics.store(new Int32Array(sab, 0, DATA / 4), GO, 1);
  const [sum] = await Promise.all([consumer.result, producer.result]);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (sum !== 7 * count) throw new Error(`bare ring: consumer read ${String(sum)}, expected ${7 * count}`);
  return count / seconds;
}

/** Round-trip times (µs) of the bare ping-pong. */
export async function barePingPong(count: number): Promise<number[]> {
  const sab = new SharedArrayBuffer(DATA + SLOTS * SLOT);
  const pong = start({ role: 'pong', sab, count, every: 1 });
  await pong.ready;
  const ping = start({ role: 'ping', sab, count, every: 1 });
  await ping.ready;
  const [us] = await Promise.all([ping.result, pong.result]);
  return Array.from(us as Float64Array);
}

if (!isMainThread) {
  const { role, sab, count, every } = workerData as Job;
  parentPort!.postMessage('ready');
  if (role === 'produce' || role === 'consume') while (Atomics.load(new Int32Array(sab, 0, DATA / 4), GO) === 0);
  if (role === 'produce') { produce(sab, count, every); parentPort!.postMessage(0); }
  else if (role === 'consume') parentPort!.postMessage(consume(sab, count));
  else { const us = pingPong(sab, count, role === 'ping'); parentPort!.postMessage(us); }
}
