// Plugin round trips, side by side in one run: an echo of a 64-byte msgpack request through
//   shmbus thread    loadPlugin(echo.wasm, { isolation: 'thread' }).request(value), default options
//   shmbus thread hostSpin 0   the same without the host's wait for a lone reply (each reply by the doorbell)
//   shmbus process   the same with isolation 'process'
//   postMessage      a worker_threads Worker that posts the request's msgpack bytes back (decoded on return)
//   extism           @extism/extism, the same echo in AssemblyScript against Extism's host imports
//                    (bench/extism-echo), called in this thread (Extism's default in Node)
//   extism worker    the same with Extism's runInWorker: true
// Each peer: p50/p99 of sequential calls (1 in flight) and calls/s with 1 and 16 in flight. Rounds rotate the
// order of the peers; the table shows the median of the rounds.
//   npm run bench:plugins [-- calls rounds]
//   SHMBUS_BENCH_BASELINE=<another checkout>/dist adds that build's default thread and process rows (A/B in one run)
//   SHMBUS_BENCH_ONLY='shmbus thread,extism' runs only the rows named; SHMBUS_BENCH_VERBOSE=1 prints every round
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { pack, unpack } from 'msgpackr';
import { loadPlugin } from '../plugins/index.js';

interface Peer {
  name: string;
  call(value: unknown): Promise<unknown>;
  close(): Promise<void>;
}

interface Result { p50: number; p99: number; rate1: number; rate16: number }

const root = fileURLToPath(new URL('../..', import.meta.url));
const calls = Number(process.argv[2] ?? 5000);
const rounds = Number(process.argv[3] ?? 3);

/** A request whose msgpack encoding is 64 bytes. */
function request64(): Record<string, unknown> {
  const value = { id: 12345, sym: 'ACME', px: 12.5, qty: 100, side: 'buy', note: '' };
  value.note = 'x'.repeat(64 - pack(value).length);
  if (pack(value).length !== 64) throw new Error(`request is ${pack(value).length} bytes`);
  return value;
}

/** Default options (a 5 s timeout, the host's self-tuned spin) unless `noHostSpin`; `load` is another build's loadPlugin. */
async function shmbusPeer(isolation: 'thread' | 'process', noHostSpin = false, load = loadPlugin, label = 'shmbus'): Promise<Peer> {
  const options = noHostSpin ? { hostSpin: 0 } : {};
  const plugin = await load(join(root, 'build/plugins/echo.wasm'), { isolation, ...options });
  return { name: `${label} ${isolation}${noHostSpin ? ' hostSpin 0' : ''}`, call: (v) => plugin.request(v), close: () => plugin.close() };
}

async function postMessagePeer(): Promise<Peer> {
  const worker = new Worker(`
    const { parentPort } = require('node:worker_threads');
    parentPort.on('message', (m) => parentPort.postMessage(m));
  `, { eval: true });
  const waiting = new Map<number, (v: unknown) => void>();
  let next = 0;
  worker.on('message', ([id, bytes]: [number, Uint8Array]) => {
    const resolve = waiting.get(id)!;
    waiting.delete(id);
    resolve(unpack(bytes));
  });
  return {
    name: 'postMessage',
    call: (v) => new Promise((resolve) => { const id = next++; waiting.set(id, resolve); worker.postMessage([id, pack(v)]); }),
    close: async () => { await worker.terminate(); },
  };
}

/** Compiles bench/extism-echo with asc into a temporary file. */
async function extismWasm(): Promise<Uint8Array> {
  const { default: asc } = await import('assemblyscript/asc');
  const dir = mkdtempSync(join(tmpdir(), 'shmbus-bench-'));
  try {
    const out = join(dir, 'echo.wasm');
    const { error } = await asc.main([join(root, 'bench/extism-echo/index.ts'), '--runtime', 'stub', '--use', 'abort=', '-O3', '--outFile', out]);
    if (error) throw error;
    return readFileSync(out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function extismPeer(wasm: Uint8Array, runInWorker: boolean): Promise<Peer> {
  const { default: createPlugin } = await import('@extism/extism');
  const plugin = await createPlugin({ wasm: [{ data: wasm }] }, { useWasi: false, runInWorker });
  // The input is an exact-size copy: Extism's in-thread call reads a view's whole underlying buffer (msgpackr's
  // pack returns a view into its 8 KiB pool), so the plugin would get 8192 bytes instead of 64.
  // An Extism plugin is not reentrant ("plugin is not reentrant" with a second call in flight): calls queue.
  let last: Promise<unknown> = Promise.resolve();
  const once = async (v: unknown) => unpack((await plugin.call('echo', new Uint8Array(pack(v))))!.bytes());
  return {
    name: runInWorker ? 'extism worker' : 'extism',
    call: (v) => (last = last.then(() => once(v), () => once(v))),
    close: () => plugin.close(),
  };
}

async function measure(peer: Peer, value: unknown): Promise<Result> {
  for (let i = 0; i < Math.min(1000, calls); i++) await peer.call(value); // warm up
  const samples = new Float64Array(calls);
  const start = performance.now();
  for (let i = 0; i < calls; i++) {
    const t0 = performance.now();
    await peer.call(value);
    samples[i] = performance.now() - t0;
  }
  const rate1 = calls / ((performance.now() - start) / 1000);
  samples.sort();
  let done = 0;
  const start16 = performance.now();
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (done < calls) { done++; await peer.call(value); }
  }));
  const rate16 = calls / ((performance.now() - start16) / 1000);
  return { p50: samples[Math.floor(calls * 0.5)]! * 1000, p99: samples[Math.floor(calls * 0.99)]! * 1000, rate1, rate16 };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const value = request64();
  const wasm = await extismWasm();
  let makers: [string, () => Promise<Peer>][] = [
    ['shmbus thread', () => shmbusPeer('thread')], ['shmbus thread hostSpin 0', () => shmbusPeer('thread', true)],
    ['shmbus process', () => shmbusPeer('process')], ['postMessage', postMessagePeer],
    ['extism', () => extismPeer(wasm, false)], ['extism worker', () => extismPeer(wasm, true)],
  ];
  // A/B against another build in the same run: SHMBUS_BENCH_BASELINE=<its dist folder> adds its default rows.
  const baseline = process.env.SHMBUS_BENCH_BASELINE;
  if (baseline) {
    const { loadPlugin: baseLoad } = await import(join(baseline, 'plugins/index.js')) as { loadPlugin: typeof loadPlugin };
    makers.push(['baseline thread', () => shmbusPeer('thread', false, baseLoad, 'baseline')], ['baseline process', () => shmbusPeer('process', false, baseLoad, 'baseline')]);
  }
  // SHMBUS_BENCH_ONLY='shmbus thread,extism' runs only those rows (more rounds in the same time).
  const only = process.env.SHMBUS_BENCH_ONLY?.split(',').map((n) => n.trim());
  if (only) makers = makers.filter(([name]) => only.includes(name));
  const results = new Map<string, Result[]>();
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < makers.length; k++) {
      const peer = await makers[(k + round) % makers.length]![1]();
      try {
        const r = await measure(peer, value);
        if (!results.has(peer.name)) results.set(peer.name, []);
        results.get(peer.name)!.push(r);
        if (process.env.SHMBUS_BENCH_VERBOSE) {
          console.error(`round ${round} ${peer.name}: p50 ${(r.p50).toFixed(1)} µs, ${Math.round(r.rate1)}/s, ${Math.round(r.rate16)}/s with 16`);
        }
      } finally {
        await peer.close();
      }
    }
  }
  const rows = [...results].map(([name, rs]) => ({
    name, p50: median(rs.map((r) => r.p50)), p99: median(rs.map((r) => r.p99)),
    rate1: median(rs.map((r) => r.rate1)), rate16: median(rs.map((r) => r.rate16)),
  }));
  const order = ['shmbus thread', 'shmbus thread hostSpin 0', 'shmbus process', 'baseline thread', 'baseline process', 'postMessage', 'extism', 'extism worker'];
  rows.sort((a, b) => order.indexOf(a.name) - order.indexOf(b.name));
  const lines = [
    `echo round trip, 64 B msgpack request, ${calls} calls x ${rounds} rounds (median of rounds)`,
    '| peer | p50 µs | p99 µs | calls/s (1 in flight) | calls/s (16 in flight) |',
    '|---|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.name} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${Math.round(r.rate1)} | ${Math.round(r.rate16)} |`),
  ];
  const thread = rows.find((r) => r.name === 'shmbus thread');
  const extism = rows.find((r) => r.name === 'extism');
  if (thread && extism) {
    lines.push('', `shmbus thread vs extism: p50 ${(thread.p50 / extism.p50).toFixed(2)}x (goal <= 0.5x), ` +
      `calls/s ${(thread.rate1 / extism.rate1).toFixed(2)}x with 1 in flight, ${(thread.rate16 / extism.rate16).toFixed(2)}x with 16 (goal >= 2x)`);
  }
  console.log(lines.join('\n'));
  if (process.env.SHMBUS_BENCH_OUT) writeFileSync(process.env.SHMBUS_BENCH_OUT, lines.join('\n') + '\n');
}

await main();
