// What starting and ending threads, and opening and closing channels, leave behind in this process: memory
// mappings (/proc/self/maps lines; the kernel refuses new ones past vm.max_map_count) and the address space they
// span, per thread or per channel, after WARM_UP uncounted runs and full garbage collections (see settle).
// (Resident memory moves with the heap's and malloc's own choices by more than these leave: not shown.)
//   node dist/bench/thread-churn.js [count]          (npm run bench:thread-churn; count defaults to 200)
//
// Rows: a channel pair opened, parked, woken and closed, for `doorbell` (no thread) and for each wake mode with a
// wait thread (the thread idles between channels: nothing should be left per channel); a bare worker thread
// (Node's own baseline); a thread that loads koffi and opens libc (koffi 3.3.4 never frees its per-thread data,
// so each ended thread leaves its mappings); a `'thread'` worker of `spawn` (shmbus in the thread) asked one
// request, then closed; a plugin instance (isolation 'thread') replaced after a trap (its runner loads no koffi). The process first opens and closes 2 × COUNT doorbell channels uncounted, so that the first
// row does not carry the heap's growth to its working size.
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import v8 from 'node:v8';
import vm from 'node:vm';
import { listen, connect, spawn, loadPlugin, type Channel, type ShmUrl } from '../index.js';

const COUNT = Number(process.argv[2] ?? 200);
const WARM_UP = Math.ceil(COUNT / 4);

const collectGarbage: () => void = (() => {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
})();

/** The lines of /proc/self/maps, and the bytes they span. */
function mappings(): { count: number; bytes: number } {
  const lines = readFileSync('/proc/self/maps', 'latin1').trim().split('\n');
  let bytes = 0;
  for (const line of lines) {
    const [start, end] = line.slice(0, line.indexOf(' ')).split('-');
    bytes += parseInt(end!, 16) - parseInt(start!, 16);
  }
  return { count: lines.length, bytes };
}

/** Full collections, a moment apart: the memory of an ended thread (a plugin's 8 GiB wasm reservation among it)
 * is freed once every isolate that saw it let go, not at once. */
async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    collectGarbage();
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Runs `once` WARM_UP + COUNT times and prints what each of the last COUNT left behind. */
async function row(name: string, unit: string, once: () => Promise<void>): Promise<void> {
  for (let i = 0; i < WARM_UP; i++) await once();
  await settle();
  const before = mappings();
  for (let i = 0; i < COUNT; i++) await once();
  await settle();
  const after = mappings();
  const count = (after.count - before.count) / COUNT;
  const kib = (after.bytes - before.bytes) / COUNT / 1024;
  console.log(`| ${name} | ${count.toFixed(2)} | ${kib.toFixed(0)} KiB | per ${unit} |`);
}

/** A worker thread running `code` until it posts once, then terminated. */
async function bareThread(code: string): Promise<void> {
  const worker = new Worker(code, { eval: true });
  await new Promise((resolve) => worker.once('message', resolve));
  await worker.terminate();
}

const koffiPath = createRequire(import.meta.url).resolve('koffi');
const workerModule = fileURLToPath(new URL('./thread-churn-worker.js', import.meta.url));
const misbehave = fileURLToPath(new URL('../../build/plugins/misbehave.wasm', import.meta.url));

/** A channel pair on `wake=mode`: the receiver parks before the message comes (its wait thread wakes it). */
async function channelPair(mode: string): Promise<void> {
  const url = `shm://bench-churn-${process.pid}-${mode}?size=4KiB&wake=${mode}` as ShmUrl;
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]) as [Channel, Channel];
  const received = b.receive();
  await new Promise((resolve) => setTimeout(resolve, 2));
  a.send(1);
  await received;
  await a.close();
  await b.close();
  await listener.close();
}

for (let i = 0; i < 2 * COUNT; i++) await channelPair('doorbell');
console.log(`${COUNT} of each after ${WARM_UP} uncounted; what is left in this process per channel or thread`);
console.log('');
console.log('| what | mappings | address space | |');
console.log('|---|--:|--:|---|');
for (const mode of ['doorbell', 'futex', 'sem', 'sysvsem']) {
  await row(`channel pair, \`wake=${mode}\`: parked, woken, closed`, 'channel', () => channelPair(mode));
}
await row('bare worker thread (Node)', 'thread', () => bareThread(`require('node:worker_threads').parentPort.postMessage(1)`));
await row('worker thread that opens libc through koffi', 'thread', () =>
  bareThread(`require(${JSON.stringify(koffiPath)}).load('libc.so.6'); require('node:worker_threads').parentPort.postMessage(1)`));
await row('`spawn(module, { isolation: \'thread\' })`, one request, close', 'thread', async () => {
  const worker = await spawn(workerModule, { isolation: 'thread' });
  await worker.channel.request(1);
  await worker.close();
});
const plugin = await loadPlugin(misbehave, { isolation: 'thread' });
await row('plugin instance replaced after a trap (`isolation: \'thread\'`)', 'replacement', async () => {
  await plugin.request('unreachable').catch(() => { /* the trap: the instance is replaced */ });
  await plugin.request('fine');
});
await plugin.close();
