/**
 * What a message costs on each side in one process, in ns: the record encoder (host/pack.ts) next to msgpackr,
 * decoding one record per msgpackr call next to RecordBatch (host/codec.ts) and the in-place reader channels use
 * first (host/unpack.ts RecordDecoder; for plain msgpack too), and a channel's `send` and iterator
 * per message with both ends in this process (no second core, no wake-ups: the CPU each side spends), for objects
 * and for 64 B Buffers, and its request/reply per request; a bus subscription's iterator per tick. Also the floor under receiving a 64 B Buffer: its copy
 * out of wasm memory, and `for await` over an iterator that does nothing else.
 * Run: `npm run bench:encode` (or `node dist/bench/encode.js` after a build). Medians of 5 rounds.
 *
 * The object is the one of bench/everyday.ts's objects row, with a flat string (the rope 'x'.repeat(30) adds the
 * same ~100 ns of flattening to every encoder).
 */
import { Packr, RESET_BUFFER_MODE, REUSE_BUFFER_MODE } from 'msgpackr';
import { RecordEncoder, encodePlain } from '../host/pack.js';
import { DEFAULT_DECODE_LIMITS, RecordBatch, decodeMsgpackAt, plainUnpackr, recordPackr, recordUnpackr } from '../host/codec.js';
import { RecordDecoder, plainRecordDecoder, sharedStructures } from '../host/unpack.js';
import { listen, connect, Bus, type Channel } from '../index.js';

const S = 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx';
const makeObject = (i: number) => ({ i, s: S, f: i / 3 });
const N = 1_000_000;
let sink: unknown;

function perCall(fn: (i: number) => void, n = N): number {
  for (let i = 0; i < n / 10; i++) fn(i);
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn(i);
  return Number(process.hrtime.bigint() - start) / n;
}

function median(run: () => number): string {
  const xs = Array.from({ length: 5 }, run).sort((a, b) => a - b);
  return xs[2]!.toFixed(0).padStart(6);
}

// --- encoding ---------------------------------------------------------------------------------------------------
const sequential = recordPackr();
const ours = new RecordEncoder();
const plain = new Packr({ useRecords: false });
console.log('encode, ns per message');
console.log(`  records  msgpackr ${median(() => perCall((i) => { sink = sequential.pack(makeObject(i), RESET_BUFFER_MODE | REUSE_BUFFER_MODE); }))}   RecordEncoder ${median(() => perCall((i) => { sink = ours.encode(makeObject(i)); }))}`);
console.log(`  plain    msgpackr ${median(() => perCall((i) => { sink = plain.pack(makeObject(i), RESET_BUFFER_MODE); }))}   encodePlain   ${median(() => perCall((i) => { sink = encodePlain(makeObject(i)); }))}`);
// What the object's string costs the encoder: the same object with a 1-character string, and with a fresh rope
// 'x'.repeat(30) as bench/everyday.ts makes it (V8 flattens it when the encoder first reads it).
console.log(`  RecordEncoder, s of 1 character ${median(() => perCall((i) => { sink = ours.encode({ i, s: 'x', f: i / 3 }); }))}   s a fresh 'x'.repeat(30) ${median(() => perCall((i) => { sink = ours.encode({ i, s: 'x'.repeat(30), f: i / 3 }); }))}`);

// --- decoding ---------------------------------------------------------------------------------------------------
// 100 records of the object, back to back in one buffer as in a ring (without the ring's headers).
const RUN = 100;
const packer = recordPackr();
const records = Array.from({ length: RUN + 1 }, (_, i) => new Uint8Array(packer.pack(makeObject(i))));
const memory = new Uint8Array(records.reduce((n, r) => n + r.length, 0));
const at: number[] = [];
let used = 0;
for (const r of records) { memory.set(r, used); at.push(used); used += r.length; }
/** A receiver that has seen the first record (its definition), so each round reads records 1 … RUN. */
function receiver() {
  const { unpackr, structures } = recordUnpackr();
  decodeMsgpackAt(unpackr, memory, 0, at[1]!, DEFAULT_DECODE_LIMITS, structures);
  return { unpackr, structures };
}
const one = receiver();
const batched = receiver();
const batch = new RecordBatch(batched.unpackr, batched.structures, DEFAULT_DECODE_LIMITS);
const out = (v: unknown) => { sink = v; };
console.log('decode (copied out, checked, decoded), ns per record');
console.log(`  one msgpackr call each ${median(() => perCall(() => {
  for (let k = 1; k <= RUN; k++) sink = decodeMsgpackAt(one.unpackr, memory, at[k]!, k < RUN ? at[k + 1]! : used, DEFAULT_DECODE_LIMITS, one.structures);
}, N / RUN) / RUN)}   RecordBatch of ${RUN} ${median(() => perCall(() => {
  for (let k = 1; k <= RUN; k++) batch.add(memory, at[k]!, k < RUN ? at[k + 1]! : used, out);
  batch.flush(out);
}, N / RUN) / RUN)}`);
const inPlace = receiver();
const reader = new RecordDecoder(sharedStructures(inPlace.unpackr), inPlace.structures, DEFAULT_DECODE_LIMITS);
const shared = Buffer.from(memory.buffer, memory.byteOffset, memory.byteLength);
console.log(`decode in place (checked as it reads), ns per record: RecordDecoder ${median(() => perCall(() => {
  for (let k = 1; k <= RUN; k++) sink = reader.decode(shared, at[k]!, k < RUN ? at[k + 1]! : used);
}, N / RUN) / RUN)}`);

// The same object as plain msgpack (a map: request/reply, trySend, plugins), read in place and the checked way.
const plainRecords = Array.from({ length: RUN }, (_, i) => Buffer.from(encodePlain(makeObject(i))));
const plainMemory = Buffer.concat(plainRecords);
const plainAt: number[] = [];
for (let k = 0, o = 0; k <= RUN; o += plainRecords[k]?.length ?? 0, k++) plainAt.push(o);
const plainReader = plainRecordDecoder(DEFAULT_DECODE_LIMITS);
console.log(`  plain: in place, plainRecordDecoder ${median(() => perCall(() => {
  for (let k = 0; k < RUN; k++) sink = plainReader.decode(plainMemory, plainAt[k]!, plainAt[k + 1]!);
}, N / RUN) / RUN)}   copied, checked, msgpackr ${median(() => perCall(() => {
  for (let k = 0; k < RUN; k++) sink = decodeMsgpackAt(plainUnpackr, plainMemory, plainAt[k]!, plainAt[k + 1]!);
}, N / RUN) / RUN)}`);

// --- what receiving a 64 B Buffer costs at least ----------------------------------------------------------------
// A private copy of 64 bytes of a wasm memory three ways (copyOut in host/large.ts takes `slice`), and `for await`
// over an iterator that only hands out resolved promises, without and with that copy: the floor under a channel's
// iterator per message (compare `for-await` of the channel below, which decodes objects, and bytes64 in bench/everyday).
const wasmBytes = new Uint8Array(new WebAssembly.Memory({ initial: 2 }).buffer);
const at64 = (i: number) => (i & 1023) * 72;
console.log('a 64 B copy out of a wasm memory, ns');
console.log(`  slice ${median(() => perCall((i) => { sink = wasmBytes.slice(at64(i), at64(i) + 64); }))}   new + loop ${median(() => perCall((i) => {
  const o = at64(i), c = new Uint8Array(64);
  for (let k = 0; k < 64; k++) c[k] = wasmBytes[o + k]!;
  sink = c;
}))}   new + set ${median(() => perCall((i) => { const c = new Uint8Array(64); c.set(wasmBytes.subarray(at64(i), at64(i) + 64)); sink = c; }))}`);
async function forAwaitStep(copy: boolean): Promise<number> {
  let i = 0;
  const source: AsyncIterable<unknown> = { [Symbol.asyncIterator]: () => ({
    next: () => Promise.resolve({ value: copy ? wasmBytes.slice(at64(i), at64(i++) + 64) : i++, done: false }),
  }) };
  const steps = N;
  let n = 0;
  const start = process.hrtime.bigint();
  for await (const v of source) { sink = v; if (++n === steps) break; }
  return Number(process.hrtime.bigint() - start) / steps;
}
const awaited = async (copy: boolean) => {
  const xs: number[] = [];
  for (let r = 0; r < 5; r++) xs.push(await forAwaitStep(copy));
  return xs.sort((a, b) => a - b)[2]!.toFixed(0).padStart(6);
};
console.log(`for await over resolved promises, ns per step: ${await awaited(false)}   with a 64 B slice each ${await awaited(true)}`);

// --- a channel, both ends here ----------------------------------------------------------------------------------
const url = `shm://bench-encode-${process.pid}?size=4MiB`;
const listener = await listen(url);
const [a, b] = await Promise.all([connect(url), listener.acceptNext()]);
await listener.close();
const sender = a as Channel;
const it = (b as Channel)[Symbol.asyncIterator]();
const BURST = 20_000;
/** Median ns per message [sending, taking with the iterator] of bursts sent by `send` and read back. */
async function channelCosts(send: (i: number) => void): Promise<[string, string]> {
  const rounds: [number, number][] = [];
  for (let r = 0; r < 6; r++) {
    let produce = 0n;
    let consume = 0n;
    for (let burst = 0; burst < 10; burst++) {
      let t = process.hrtime.bigint();
      for (let i = 0; i < BURST; i++) send(i);
      produce += process.hrtime.bigint() - t;
      t = process.hrtime.bigint();
      for (let i = 0; i < BURST; i++) sink = (await it.next()).value;
      consume += process.hrtime.bigint() - t;
    }
    if (r > 0) rounds.push([Number(produce) / (10 * BURST), Number(consume) / (10 * BURST)]);
  }
  const mid = (k: 0 | 1) => rounds.map((x) => x[k]).sort((x, y) => x - y)[rounds.length >> 1]!.toFixed(0);
  return [mid(0), mid(1)];
}
const [sendObject, takeObject] = await channelCosts((i) => sender.send(makeObject(i)));
console.log(`channel in one process, ns per message: send ${sendObject}   for-await ${takeObject}`);
const bytes64 = new Uint8Array(64).fill(7);
const [sendBytes, takeBytes] = await channelCosts(() => sender.sendBytes(bytes64));
console.log(`  the same with 64 B Buffers: sendBytes ${sendBytes}   for-await ${takeBytes}`);

await Promise.all([a.close(), b!.close()]);

// request/reply with both ends here, on a connection of its own: each request waits for its reply (the wait's
// microtask turns included, the spin mostly not: the reply is there within a few turns).
const rpcUrl = `shm://bench-encode-rpc-${process.pid}`;
const rpcListener = await listen(rpcUrl);
const [requester, answerer] = await Promise.all([connect(rpcUrl), rpcListener.acceptNext()]);
await rpcListener.close();
answerer!.handle((value) => value);
const requestRounds: number[] = [];
const REQUESTS = 20_000;
for (let r = 0; r < 6; r++) {
  const t = process.hrtime.bigint();
  for (let i = 0; i < REQUESTS; i++) sink = await requester.request(makeObject(i));
  if (r > 0) requestRounds.push(Number(process.hrtime.bigint() - t) / REQUESTS);
}
console.log(`request/reply in one process, ns per request: ${requestRounds.sort((x, y) => x - y)[requestRounds.length >> 1]!.toFixed(0)}`);
await Promise.all([requester.close(), answerer!.close()]);

// A bus subscription with its publisher here: ticks of the demo's shape (npm start) published in bursts of 20k,
// then taken with the subscription's iterator, ns per tick received (the subscriber's side only).
const bus = await Bus.open(`shm://bench-encode-bus-${process.pid}`);
const publisher = bus.publisher('ticks', { capacity: '4MiB', policy: 'lossless' });
const ticks = bus.subscribe('ticks')[Symbol.asyncIterator]();
const tickRounds: number[] = [];
for (let r = 0; r < 6; r++) {
  for (let i = 0; i < BURST; i++) publisher.publish({ sym: 'ACME', px: 101.25 + i, qty: 300, seq: i, ts: 123456789 + i });
  const t = process.hrtime.bigint();
  for (let i = 0; i < BURST; i++) sink = await ticks.next();
  if (r > 0) tickRounds.push(Number(process.hrtime.bigint() - t) / BURST);
}
console.log(`bus subscription in one process, for-await ns per tick: ${tickRounds.sort((x, y) => x - y)[tickRounds.length >> 1]!.toFixed(0)}`);
await bus.close();
void sink;
