/**
 * What the decode limits (host/codec.ts) cost: msgpackr's decode of typical records with and without the
 * pre-scan, and the scan alone, in ns per record. Run: `npm run build && node dist/bench/decode.js`.
 */
import { Packr, Unpackr } from 'msgpackr';
import { checkMsgpack, decodeMsgpack } from '../host/codec.js';

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, copyBuffers: true });

const cases: [string, Uint8Array][] = [
  ['64 B object', packr.pack({ id: 12345, sym: 'ACME', px: 12.5, qty: 100, side: 'buy', ts: 1733000000000, ok: true })],
  ['1 KiB array of objects', packr.pack(Array.from({ length: 40 }, (_, i) => ({ id: i, px: i + 0.5, s: 'x' })))],
  ['64 KiB of small ints', packr.pack(Array.from({ length: 60000 }, (_, i) => i & 0x7f))],
  ['64 KiB binary', packr.pack({ data: new Uint8Array(65536) })],
].map(([name, bytes]) => [name as string, new Uint8Array(bytes as Uint8Array)]);

function time(fn: () => void, bytes: number): number {
  const n = Math.max(200, Math.floor(50_000_000 / (bytes + 64)));
  for (let i = 0; i < n / 10; i++) fn();
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn();
  return Number(process.hrtime.bigint() - start) / n;
}

let sink: unknown;
for (const [name, bytes] of cases) {
  const rounds: number[][] = [[], [], []];
  for (let r = 0; r < 5; r++) {
    rounds[0]!.push(time(() => { sink = unpackr.unpack(bytes); }, bytes.length));
    rounds[1]!.push(time(() => { sink = decodeMsgpack(unpackr, bytes); }, bytes.length));
    rounds[2]!.push(time(() => { checkMsgpack(bytes); }, bytes.length));
  }
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1]!.toFixed(0);
  console.log(`${name.padEnd(24)} ${String(bytes.length).padStart(6)} B   msgpackr ${median(rounds[0]!).padStart(8)} ns   checked ${median(rounds[1]!).padStart(8)} ns   scan ${median(rounds[2]!).padStart(8)} ns`);
}
void sink;
