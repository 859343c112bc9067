// One subscriber process of the pub/sub demo (started by main.ts; not meant to be run by hand).
//
//   node subscriber.js <bus url> <unix socket (@ = abstract)> <id>
//
// It reads the same stream of ticks two ways: from topic 'ticks' of the shm bus, and from a Unix socket written
// the plain way (u32 length prefix + msgpackr). For every tick it records the latency from the timestamp the
// publisher wrote into it (process.hrtime: CLOCK_MONOTONIC, one clock for every process on the machine) to its
// receipt. A tick `{ end: phase }` closes a phase: the subscriber prints one JSON report line on stdout.
// It leaves (closing the bus, so the last one out removes the segments) when its stdin ends — the publisher is
// done or dead — or on SIGTERM/SIGHUP.
import net from 'node:net';
import { unpack } from 'msgpackr';
import { Bus } from '../../index.js';
import { LatencyHistogram, type HistogramData } from './histogram.js';

/** A market-data tick as the publisher sends it; `ts` is its process.hrtime in ns when published. */
export interface Tick { sym: string; px: number; qty: number; seq: number; ts: number }
/** The marker that ends a phase. */
export interface EndOfPhase { end: string }

/** One subscriber's account of one phase. */
export interface Report {
  id: number;
  phase: string;
  received: number;
  /** Ticks whose sequence number was not the one expected (lost, duplicated or reordered). */
  gaps: number;
  latency: HistogramData;
  /** CPU time (user + system) this process used from the phase's first tick to its end marker. */
  cpuUs: number;
}

const [url, socketName, idText] = process.argv.slice(2);
if (!url || !socketName || idText === undefined) {
  console.error('usage: subscriber.js <bus url> <unix socket> <id> (started by main.js)');
  process.exit(2);
}
const id = Number(idText);

class Phase {
  readonly latency = new LatencyHistogram();
  received = 0;
  gaps = 0;
  private expected = 0;
  private cpuAtStart: NodeJS.CpuUsage | undefined;

  onMessage(message: Tick | EndOfPhase): void {
    if ('end' in message) return this.finish(message.end);
    this.cpuAtStart ??= process.cpuUsage();
    this.latency.record(Number(process.hrtime.bigint()) - message.ts);
    if (message.seq !== this.expected) this.gaps++;
    this.expected = message.seq + 1;
    this.received++;
  }

  private finish(phase: string): void {
    const cpu = process.cpuUsage(this.cpuAtStart);
    const report: Report = { id, phase, received: this.received, gaps: this.gaps, latency: this.latency.toJSON(), cpuUs: this.cpuAtStart ? cpu.user + cpu.system : 0 };
    process.stdout.write(`${JSON.stringify(report)}\n`);
    this.latency.reset();
    this.received = this.gaps = this.expected = 0;
    this.cpuAtStart = undefined;
  }
}

const bus = await Bus.open(url);
let socket: net.Socket | undefined;
let leaving = false;
async function leave(code: number): Promise<never> {
  if (!leaving) {
    leaving = true;
    socket?.destroy();
    await bus.close().catch(() => {});
    process.exit(code);
  }
  return new Promise<never>(() => {});
}
// The publisher ends stdin when it is done, and the kernel ends it when the publisher dies: never outlive it.
process.stdin.on('end', () => void leave(0)).on('error', () => void leave(0)).resume();
// Ctrl-C in a terminal signals the whole process group: the publisher handles it and ends our stdin (or dies,
// which ends it too), so it alone decides what the run prints and nobody reports a subscriber "crash".
process.on('SIGINT', () => {});
for (const signal of ['SIGTERM', 'SIGHUP'] as const) process.on(signal, () => void leave(0));

const fromShm = new Phase();
const subscription = bus.subscribe('ticks', { from: 'latest', create: false });
const shmDone = (async () => {
  for await (const message of subscription) fromShm.onMessage(message as Tick | EndOfPhase);
})();

const fromUnix = new Phase();
socket = net.connect({ path: socketName.replace(/^@/, '\0') });
await new Promise<void>((resolve, reject) => socket!.once('connect', resolve).once('error', reject));
// Frames: u32 little-endian length, then the msgpack bytes; a chunk can end anywhere inside a frame.
let pending: Buffer = Buffer.alloc(0);
socket.on('data', (chunk: Buffer) => {
  const buf = pending.length ? Buffer.concat([pending, chunk]) : chunk;
  let at = 0;
  while (buf.length - at >= 4) {
    const length = buf.readUInt32LE(at);
    if (buf.length - at - 4 < length) break;
    fromUnix.onMessage(unpack(buf.subarray(at + 4, at + 4 + length)) as Tick | EndOfPhase);
    at += 4 + length;
  }
  pending = buf.subarray(at);
});
socket.on('error', (error) => { console.error(`subscriber ${id}: ${error.message}`); void leave(1); });

process.stdout.write('ready\n');
try {
  await shmDone;
} catch (error) {
  console.error(`subscriber ${id}: ${(error as Error).message}`);
  await leave(1);
}
