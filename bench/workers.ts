// The worker_threads baseline: one-way throughput from this thread to a worker thread through postMessage
// (structured clone), the in-process alternative a user would pick. Counted like ./baselines.ts: the clock runs
// from the worker's "ready" to its "done". postMessage has no back-pressure, so the sender keeps at most WINDOW
// messages unacknowledged (the worker acknowledges every ACK_EVERY).
import { Worker } from 'node:worker_threads';
import { makeObject64, type BaselineKind, type ThroughputResult } from './baselines.js';

const ACK_EVERY = 1024;
const WINDOW = 16 * ACK_EVERY;

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { messages, ackEvery } = workerData;
let count = 0;
parentPort.on('message', () => {
  count++;
  if (count === messages) { parentPort.postMessage({ t: 'done', count }); parentPort.close(); }
  else if (count % ackEvery === 0) parentPort.postMessage({ t: 'ack', count });
});
parentPort.postMessage({ t: 'ready' });
`;

/** Sends `messages` 64-byte payloads (kind 'raw': a Uint8Array; 'object': makeObject64) to a worker thread. */
export async function workerThroughput(opts: { messages: number; kind: BaselineKind }): Promise<ThroughputResult> {
  const { messages, kind } = opts;
  if (!Number.isSafeInteger(messages) || messages < 1) throw new RangeError(`messages must be a positive integer, got ${messages}`);
  const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { messages, ackEvery: ACK_EVERY } });
  try {
    let acked = 0;
    let wake: (() => void) | undefined;
    let onReady!: () => void;
    let onDone!: () => void;
    let fail!: (e: Error) => void;
    const failed = new Promise<never>((_, reject) => { fail = reject; });
    failed.catch(() => {});
    const ready = new Promise<void>((r) => { onReady = r; });
    const done = new Promise<void>((r) => { onDone = r; });
    worker.on('message', (m: { t: string; count?: number }) => {
      if (m.t === 'ready') onReady();
      else if (m.t === 'ack') { acked = m.count!; const w = wake; wake = undefined; w?.(); } else if (m.t === 'done') onDone();
    });
    worker.on('error', (e) => fail(e));
    worker.on('exit', (code) => fail(new Error(`worker exited (${code}) before receiving everything`)));
    await Promise.race([ready, failed]);
    const raw = new Uint8Array(64).fill(0xa5);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < messages; i++) {
      worker.postMessage(kind === 'raw' ? raw : makeObject64(i));
      if (i - acked >= WINDOW) await Promise.race([new Promise<void>((r) => { wake = r; }), failed]);
    }
    await Promise.race([done, failed]);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    return { name: `worker_threads postMessage ${kind === 'raw' ? 'raw64' : 'object64'}`, messages, seconds, msgPerSec: messages / seconds };
  } finally {
    worker.removeAllListeners('exit');
    await worker.terminate();
  }
}
