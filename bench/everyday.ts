// shm:// against a Unix socket through the API people write, in one run:
//   node dist/bench/everyday.js [--rounds 4] [--scale 1] [--warm-up 0.25] [--json] [--save] [--rows object,bytes64,bytes1K,bytes1M,message64,claim64,claimAt64,batch64,rtt,rtt64,rpc,message,bare]  (npm run bench:everyday)
//
// Rows (issue 10): one producer process → one consumer process, counted at the consumer from the first message
// to the last; medians of rotated rounds. Each producer first sends a quarter as many messages again, uncounted
// (`--warm-up`, default 0.25): both sides' hot code is then compiled by V8, as in a program that has run for a
// while (`--warm-up 0` counts from the very first message: 400k objects then measured 36–40% slower on shm and
// 17–20% slower on the socket, `--rows object --rounds 2`, alternated with the default, two pairs).
//   object   64 B msgpack object { i, s: 'x'.repeat(30), f: i / 3 }   shm: send + drained      / for await
//   bytes64  64 B Buffer                                              shm: sendBytes + drained / for await
//   bytes1K  1 KiB Buffer                                             the same (not one of the issue's rows: a size
//                                                                     whose copy out of the ring needs more than V8's heap)
//   bytes1M  1 MiB Buffer                                             the same
//   message64  64 B Buffer, received through conn.on('message')       shm: sendBytes + drained / on('message') (shm
//            only, against the socket's bytes64 row, whose receiver is a 'data' handler too)
//   rtt      round trip of the 64 B object (p50 / p99)                shm: send / for await on both sides
//   rtt64    round trip of a 64 B Buffer (not one of the issue's rows: what the object's encoding and decoding add)
//            shm: sendBytes / for await on both sides; socket: the same frames, echoed as they come
//   rpc      the same through request / handle (shm only; against the socket's round trip)
//   message  the same through conn.on('message') on both sides, the listener settling a promise the sending loop
//            awaits (shm only; against the socket's round trip, whose sides are 'data' handlers)
//   claim64  64 B, zero copy: claim + commit per record / poll          (shm only; against the socket's bytes64 row)
//            (the payload written through claim.bytes, the claim's view)
//   claimAt64  the same, written at claim.offset in claim.memory (no view made)
//   batch64  64 B, zero copy: claimBatch of up to 256 records / poll   (shm only; against the socket's bytes64 row)
//   bare     not shmbus: the same work with no framework (bench/bare.ts), in the same run: a bare ring of 64 B
//            records in a SharedArrayBuffer between two threads, publishing after every record (what a per-record
//            claim is up against) and after every 256 (as claimBatch), and a bare ping-pong of one word (the least
//            any round trip costs). Printed against the socket's bytes64 row and round trip.
// The zero-copy rows write the payload into the claimed bytes as a producer building its message in place would.
// With SHMBUS_COUNTERS=1 in the environment (parent and children), the shm rows also print per-message costs on
// each side: calls into wasm, payload copies, our allocations, iterator promises, doorbells and parks (counted in
// host/ring.ts and transports/shm/channel.ts; see `perf` there). Counting costs a little: measure speed without it.
// The rtt row's counts are per round trip, for this process (`timer`: send, then wait for the echo) and the child
// (`echo`); its wasm calls are mostly the spin's polls of the ring while the other side works.
// shm `send` writes msgpackr record structures per direction (RECORD_MSGPACK_RECORDS; encoded by host/pack.ts, the
// same bytes msgpackr's record packer writes), as the socket rows do with msgpackr itself.
// BENCH_CHILD_PROF=<dir> makes each child write a CPU profile there; `--rows` picks rows (and `rtt`).
// BENCH_FLAT_STRING=1 packs a literal string instead of a fresh 'x'.repeat(30) (see makeObject).
// The Unix socket rows are plain Node, as a user would write them: a 4-byte length prefix, `write` with 'drain'
// for back-pressure, one 'data' handler that cuts frames, msgpackr with sequential record structures for objects.
//
// The same file is the child: `--child <role> <kind> <url> <row> <count>`.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { once } from 'node:events';
import { cpus } from 'node:os';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Packr, Unpackr } from 'msgpackr';
import { listen, connect, type Channel, type Connection } from '../index.js';
import { COUNTING, perf } from '../host/ring.js';
import { mallocTuned } from '../host/large.js';
import { barePingPong, bareRing } from './bare.js';
import { fmtRate, median, rateRow, renderEveryday, withTables, type EverydayReport, type Latency } from './everyday-report.js';

const SELF = fileURLToPath(import.meta.url);
/** The committed results the README's tables are made from, and the README (this file runs as dist/bench/everyday.js). */
const RESULTS_JSON = fileURLToPath(new URL('../../bench/results/everyday.json', import.meta.url));
const README = fileURLToPath(new URL('../../README.md', import.meta.url));
type Kind = 'shm' | 'unix';
type Row = 'object' | 'bytes64' | 'bytes1K' | 'bytes1M' | 'message64' | 'claim64' | 'claimAt64' | 'batch64';
const ROWS: Row[] = ['object', 'bytes64', 'bytes1K', 'bytes1M', 'message64', 'claim64', 'claimAt64', 'batch64'];
/** Rows of the zero-copy API: the producer writes in place, the consumer reads with `poll`. */
const ZERO_COPY: ReadonlySet<Row> = new Set<Row>(['claim64', 'claimAt64', 'batch64']);
/** Rows only shm runs; their socket figure is the bytes64 row's of the same run. */
const SHM_ONLY: ReadonlySet<Row> = new Set<Row>([...ZERO_COPY, 'message64']);
const KINDS: Kind[] = ['shm', 'unix'];
/** The other rows `--rows` takes: round trips, and the bare reference (see the header). */
const TRIP_ROWS = ['rtt', 'rtt64', 'rpc', 'message', 'bare'] as const;
const COUNTS: Record<Row, number> = { object: 400_000, bytes64: 1_000_000, bytes1K: 400_000, bytes1M: 2000, message64: 1_000_000, claim64: 2_000_000, claimAt64: 2_000_000, batch64: 4_000_000 };
/** Messages each throughput row sends before the counted ones, as a fraction of its count (see the header). */
let warmUp = 0.25;
/** Records one claimBatch asks for (batch64). */
const BATCH = 256;
const ROUND_TRIPS = 20_000;
const MiB = 1 << 20;

/** BENCH_FLAT_STRING=1 (parent and children): the object's string is one literal instead of a fresh
 * 'x'.repeat(30), a rope (cons string) V8 flattens when msgpackr reads it: about half of msgpackr's pack time for
 * this object, paid by both sides. Shows how much of the objects row is that. */
const FLAT_STRING = process.env.BENCH_FLAT_STRING === '1' ? 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' : undefined;
const makeObject = (i: number) => ({ i, s: FLAT_STRING ?? 'x'.repeat(30), f: i / 3 });
const rowBytes = (row: Row) => (row === 'bytes1M' ? MiB : row === 'bytes1K' ? 1024 : 64);
const payload = (row: Row) => Buffer.alloc(rowBytes(row), 7);

// --- Unix socket, plain Node ------------------------------------------------------------------------------------

/**
 * Frames `u32le length · body` written with stream back-pressure. Writes made in one turn of the event loop are
 * corked and go out together (one writev) on the next tick, as a user who cares about throughput would do: a
 * system call per 64-byte message would make the socket look worse than it is.
 */
class SocketSender {
  private readonly packr = new Packr({ sequential: true });
  private corked = false;
  constructor(private readonly socket: net.Socket) {}
  private batch(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    process.nextTick(() => { this.corked = false; this.socket.uncork(); });
  }
  /** Like socket.write: false means wait for 'drain'. */
  sendObject(value: unknown): boolean {
    const body = this.packr.pack(value);
    const frame = Buffer.allocUnsafe(4 + body.length);
    frame.writeUInt32LE(body.length, 0);
    body.copy(frame, 4);
    this.batch();
    return this.socket.write(frame);
  }
  sendBytes(bytes: Buffer): boolean {
    this.batch();
    if (bytes.length < 4096) {
      const frame = Buffer.allocUnsafe(4 + bytes.length);
      frame.writeUInt32LE(bytes.length, 0);
      bytes.copy(frame, 4);
      return this.socket.write(frame);
    }
    const header = Buffer.allocUnsafe(4);
    header.writeUInt32LE(bytes.length, 0);
    this.socket.write(header);
    return this.socket.write(bytes);
  }
}

/** Calls `onFrame` for every whole frame arriving on `socket`. */
function onFrames(socket: net.Socket, onFrame: (body: Buffer) => void): void {
  // Chunks of an unfinished frame wait here and are joined once the whole frame has arrived (joining on every
  // chunk would copy a 1 MiB frame sixteen times).
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let need = 4;
  socket.on('data', (chunk: Buffer) => {
    if (pendingBytes + chunk.length < need) { pending.push(chunk); pendingBytes += chunk.length; return; }
    let buf = pendingBytes ? Buffer.concat([...pending, chunk], pendingBytes + chunk.length) : chunk;
    pending = [];
    pendingBytes = 0;
    let at = 0;
    while (buf.length - at >= 4) {
      const len = buf.readUInt32LE(at);
      if (buf.length - at - 4 < len) break;
      onFrame(buf.subarray(at + 4, at + 4 + len));
      at += 4 + len;
    }
    const rest = buf.subarray(at);
    need = rest.length >= 4 ? 4 + rest.readUInt32LE(0) : 4;
    if (rest.length) { pending.push(rest); pendingBytes = rest.length; }
  });
}

/** The zero-copy producer: each 64-byte payload written straight into claimed ring space. */
async function produceInPlace(conn: Channel, row: Row, count: number): Promise<void> {
  const bytes = payload(row);
  for (let i = 0; i < count;) {
    if (row === 'claim64' || row === 'claimAt64') {
      const claim = conn.claim(64);
      if (claim === null) { await conn.drained(); continue; }
      if (row === 'claim64') claim.bytes.set(bytes);
      else claim.memory.set(bytes, claim.offset);
      claim.commit();
      i++;
    } else {
      const batch = conn.claimBatch(64, Math.min(BATCH, count - i));
      if (batch === null) { await conn.drained(); continue; }
      const memory = batch.memory;
      for (let k = 0, at = batch.first; k < batch.count; k++, at += batch.stride) memory.set(bytes, at);
      batch.commit();
      i += batch.count;
    }
  }
}

// --- child ---------------------------------------------------------------------------------------------------------

async function child(role: string, kind: Kind, url: string, row: Row, count: number): Promise<void> {
  if (kind === 'shm') {
    const conn = await connect(url);
    if (role === 'produce' && ZERO_COPY.has(row)) {
      await produceInPlace(conn as Channel, row, count);
      await conn.receive();
    } else if (role === 'produce') {
      const bytes = payload(row);
      for (let i = 0; i < count; i++) {
        const ok = row === 'object' ? conn.send(makeObject(i)) : conn.sendBytes(bytes);
        if (!ok) await conn.drained();
      }
      await conn.receive(); // the consumer's "done": closing earlier would not lose messages, but keep runs apart
    } else if (role === 'message') {
      // The echo through on('message'); it ends when the parent closes.
      await new Promise<void>((resolve) => {
        conn.on('message', (m) => { conn.send(m); });
        conn.once('close', resolve);
      });
    } else if (role === 'answer') {
      // request/reply: each request answered with its own value; the loop ends when the parent closes.
      conn.handle((value) => value);
      for await (const m of conn) void m;
    } else if (row === 'bytes64') {
      for await (const m of conn) if (!conn.sendBytes(m as Uint8Array)) await conn.drained();
    } else {
      for await (const m of conn) if (!conn.send(m)) await conn.drained();
    }
    await conn.close();
    if (COUNTING) process.stdout.write(`COUNTERS ${JSON.stringify(perf)}\n`);
    return;
  }
  const socket = net.connect(url.startsWith('@') ? `\0${url.slice(1)}` : url);
  await once(socket, 'connect');
  socket.setNoDelay(true);
  const out = new SocketSender(socket);
  if (role === 'produce') {
    const bytes = payload(row);
    let done!: () => void;
    const finished = new Promise<void>((r) => { done = r; });
    onFrames(socket, () => done());
    for (let i = 0; i < count; i++) {
      const ok = row === 'object' ? out.sendObject(makeObject(i)) : out.sendBytes(bytes);
      if (!ok) await once(socket, 'drain');
    }
    await finished;
  } else {
    const unpackr = new Unpackr({ sequential: true });
    let stop!: () => void;
    const closed = new Promise<void>((r) => { stop = r; });
    socket.on('end', () => stop());
    onFrames(socket, row === 'bytes64' ? (body) => { out.sendBytes(body); } : (body) => { out.sendObject(unpackr.unpack(body)); });
    await closed;
  }
  socket.end();
}

// --- parent ----------------------------------------------------------------------------------------------------------

interface Server { url: string; accept(): Promise<Peer>; close(): Promise<void> }
interface Peer {
  /** Resolves after `count` messages, with seconds from message `from` (0-based, the first counted) to the last. */
  consume(row: Row, count: number, from: number): Promise<number>;
  /** Round trips of the 64 B object (`row` 'object') or a 64 B Buffer ('bytes64'); microseconds per trip. */
  roundTrips(count: number, row: 'object' | 'bytes64'): Promise<number[]>;
  /** The same through `request` (shm only; the child answers with `handle`). */
  requests?(count: number): Promise<number[]>;
  /** The same through `on('message')` on both sides (shm only). */
  messageTrips?(count: number): Promise<number[]>;
  close(): Promise<void>;
}

let endpointSerial = 0;
/** URL options of the shm:// endpoint (`--query 'size=64KiB&maxMessage=16MiB'`: small rings, large messages as
 * fragments); empty: the defaults. */
let shmQuery = '';
async function server(kind: Kind): Promise<Server> {
  const tag = `shmbus-everyday-${process.pid}-${++endpointSerial}`;
  if (kind === 'shm') {
    const url = `shm://${tag}${shmQuery ? `?${shmQuery}` : ''}`;
    const l = await listen(url);
    return {
      url,
      async accept() { const conn = (await l.acceptNext())!; return shmPeer(conn); },
      close: () => l.close(),
    };
  }
  const path = `\0${tag}`; // abstract namespace; the child gets it as '@name'
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(path, r));
  const sockets: net.Socket[] = [];
  srv.on('connection', (s) => sockets.push(s));
  return {
    url: `@${tag}`,
    async accept() {
      while (!sockets.length) await once(srv, 'connection');
      return socketPeer(sockets.shift()!);
    },
    close: () => new Promise<void>((r) => srv.close(() => r())),
  };
}

function shmPeer(conn: Connection): Peer {
  const it = conn[Symbol.asyncIterator]();
  return {
    async consume(row, count, from) {
      if (ZERO_COPY.has(row)) return consumeInPlace(conn as Channel, count, from);
      if (row === 'message64') return consumeMessages(conn, count, from);
      // What `for await (const m of conn)` does per message (next()), without its `break` closing the channel.
      let first = 0n;
      for (let received = 0; received < count; received++) {
        await it.next();
        if (received === from) first = process.hrtime.bigint();
      }
      const seconds = Number(process.hrtime.bigint() - first) / 1e9;
      conn.send('done');
      return seconds;
    },
    async roundTrips(count, row) {
      const us: number[] = [];
      const bytes = payload('bytes64');
      for (let i = 0; i < count; i++) {
        const t0 = process.hrtime.bigint();
        if (row === 'bytes64') conn.sendBytes(bytes);
        else conn.send(makeObject(i));
        await it.next();
        us.push(Number(process.hrtime.bigint() - t0) / 1000);
      }
      return us;
    },
    async requests(count) {
      const us: number[] = [];
      for (let i = 0; i < count; i++) {
        const t0 = process.hrtime.bigint();
        await conn.request(makeObject(i));
        us.push(Number(process.hrtime.bigint() - t0) / 1000);
      }
      return us;
    },
    async messageTrips(count) {
      let answer = () => {};
      const listener = () => answer();
      conn.on('message', listener);
      const us: number[] = [];
      for (let i = 0; i < count; i++) {
        const t0 = process.hrtime.bigint();
        const reply = new Promise<void>((resolve) => { answer = resolve; });
        conn.send(makeObject(i));
        await reply;
        us.push(Number(process.hrtime.bigint() - t0) / 1000);
      }
      conn.off('message', listener);
      return us;
    },
    close: () => conn.close(),
  };
}

/** The consumer of the message64 row: a 'message' listener, as a user of `process.on('message')` writes it. */
function consumeMessages(conn: Connection, count: number, from: number): Promise<number> {
  return new Promise((resolve) => {
    let first = 0n;
    let received = 0;
    const listener = () => {
      if (received++ === from) first = process.hrtime.bigint();
      if (received < count) return;
      const seconds = Number(process.hrtime.bigint() - first) / 1e9;
      conn.off('message', listener);
      conn.send('done');
      resolve(seconds);
    };
    conn.on('message', listener);
  });
}

/** The zero-copy consumer: `poll` hands each record over in place; `readable()` waits when there is none. */
async function consumeInPlace(conn: Channel, count: number, from: number): Promise<number> {
  let first = 0n;
  let received = 0;
  let sum = 0;
  const onRecord = (memory: Uint8Array, offset: number, length: number) => {
    if (received++ === from) first = process.hrtime.bigint();
    sum += memory[offset + length - 1]!; // read the record, as a consumer would
  };
  while (received < count) {
    if (conn.poll(onRecord) === 0) await conn.readable();
  }
  const seconds = Number(process.hrtime.bigint() - first) / 1e9;
  if (sum !== 7 * count) throw new Error(`zero-copy consumer read ${sum}, expected ${7 * count}`);
  conn.send('done');
  return seconds;
}

function socketPeer(socket: net.Socket): Peer {
  socket.setNoDelay(true);
  const out = new SocketSender(socket);
  const unpackr = new Unpackr({ sequential: true });
  let handler: (body: Buffer) => void = () => {};
  onFrames(socket, (body) => handler(body));
  return {
    consume(row, count, from) {
      return new Promise((resolve) => {
        let first = 0n;
        let received = 0;
        handler = (body) => {
          if (row === 'object') unpackr.unpack(body);
          if (received++ === from) first = process.hrtime.bigint();
          if (received === count) {
            resolve(Number(process.hrtime.bigint() - first) / 1e9);
            out.sendBytes(Buffer.from('done'));
          }
        };
      });
    },
    async roundTrips(count, row) {
      const us: number[] = [];
      const bytes = payload('bytes64');
      for (let i = 0; i < count; i++) {
        const t0 = process.hrtime.bigint();
        const reply = new Promise<void>((r) => { handler = (body) => { if (row === 'object') unpackr.unpack(body); r(); }; });
        if (row === 'bytes64') out.sendBytes(bytes);
        else out.sendObject(makeObject(i));
        await reply;
        us.push(Number(process.hrtime.bigint() - t0) / 1000);
      }
      return us;
    },
    close: async () => { socket.end(); },
  };
}

/** The last producer's counters (SHMBUS_COUNTERS=1), from its COUNTERS line. */
let childCounters: typeof perf | undefined;

function startChild(args: string[]): Promise<number | null> {
  // BENCH_CHILD_PROF=<dir>: each child writes a CPU profile there (node --cpu-prof is not allowed in NODE_OPTIONS).
  const prof = process.env.BENCH_CHILD_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CHILD_PROF}`] : [];
  const c = spawn(process.execPath, [...prof, SELF, '--child', ...args], { stdio: ['ignore', COUNTING ? 'pipe' : 'inherit', 'inherit'] });
  let out = '';
  c.stdout?.on('data', (b: Buffer) => { out += b.toString(); });
  return new Promise((resolve) => c.once('exit', (code) => {
    const line = out.split('\n').find((l) => l.startsWith('COUNTERS '));
    if (line) childCounters = JSON.parse(line.slice(9)) as typeof perf;
    resolve(code);
  }));
}

type Counts = typeof perf;
const snapshot = (): Counts => ({ ...perf });
const minus = (a: Counts, b: Counts): Counts => Object.fromEntries(Object.entries(a).map(([k, v]) => [k, v - b[k as keyof Counts]])) as Counts;
/** Per-message counters of the last shm run of each row: [producer, consumer]. */
const costs = new Map<Row | 'rtt', [Counts, Counts, number]>();

/** The processor's family and model from /proc/cpuinfo ('family 26, model 2'), or undefined. */
function cpuId(): string | undefined {
  let info: string;
  try { info = readFileSync('/proc/cpuinfo', 'utf8'); } catch { return undefined; }
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(\\d+)`, 'm').exec(info)?.[1];
  const family = field('cpu family');
  const model = field('model');
  return family === undefined || model === undefined ? undefined : `family ${family}, model ${model}`;
}

/** Messages per second of `count` counted messages, after Math.round(count × warmUp) uncounted ones. */
async function throughputOnce(kind: Kind, row: Row, count: number): Promise<number> {
  const s = await server(kind);
  const before = snapshot();
  const warm = Math.round(count * warmUp);
  const total = warm + count;
  const exited = startChild(['produce', kind, s.url, row, String(total)]);
  const peer = await s.accept();
  const seconds = await peer.consume(row, total, warm);
  if ((await exited) !== 0) throw new Error(`${kind} ${row}: producer failed`);
  if (COUNTING && kind === 'shm' && childCounters) costs.set(row, [childCounters, minus(snapshot(), before), total]);
  await peer.close();
  await s.close();
  return (count - 1) / seconds;
}

/** Round trips: `rtt` send / for await, `rtt64` the same with a 64 B Buffer (sendBytes), `rpc` request / handle,
 * `message` on('message') on both sides. */
type TripKind = 'rtt' | 'rtt64' | 'rpc' | 'message';
async function latencyOnce(kind: Kind, count: number, how: TripKind = 'rtt'): Promise<number[]> {
  const s = await server(kind);
  const exited = startChild([how === 'rpc' ? 'answer' : how === 'message' ? 'message' : 'echo', kind, s.url, how === 'rtt64' ? 'bytes64' : 'object', '0']);
  const peer = await s.accept();
  const trips = how === 'rpc' ? (n: number) => peer.requests!(n) : how === 'message' ? (n: number) => peer.messageTrips!(n)
    : (n: number) => peer.roundTrips(n, how === 'rtt64' ? 'bytes64' : 'object');
  const warmUp = Math.min(2000, count);
  await trips(warmUp);
  const before = snapshot();
  const us = await trips(count);
  const mine = minus(snapshot(), before);
  await peer.close();
  if ((await exited) !== 0) throw new Error(`${kind} rtt: echo child failed`);
  // The echo side's counters cover the warm-up too: per trip over all of its trips.
  if (COUNTING && kind === 'shm' && how === 'rtt' && childCounters) {
    const echo = Object.fromEntries(Object.entries(childCounters).map(([k, v]) => [k, (v * count) / (count + warmUp)])) as Counts;
    costs.set('rtt', [mine, echo, count]);
  }
  await s.close();
  return us;
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
const latencyOf = (samples: number[]): Latency => {
  const s = [...samples].sort((a, b) => a - b);
  return { p50: pct(s, 0.5), p99: pct(s, 0.99), samples: s.length };
};

async function main(): Promise<void> {
  const all = [...ROWS, ...TRIP_ROWS];
  const usage = `usage: node dist/bench/everyday.js [--rounds 4] [--scale 1] [--warm-up 0.25] [--json] [--save] [--query 'size=64KiB'] [--rows ${all.join(',')}]\n`
    + '  --warm-up  uncounted messages each throughput row sends first, as a fraction of its counted ones\n'
    + '  --json  print the report as JSON instead of tables\n'
    + `  --save  also write it to ${RESULTS_JSON} and its tables into README.md (npm run bench:readme)`;
  let values;
  try {
    ({ values } = parseArgs({ options: {
      rounds: { type: 'string', default: '4' }, scale: { type: 'string', default: '1' }, 'warm-up': { type: 'string', default: '0.25' }, json: { type: 'boolean', default: false },
      save: { type: 'boolean', default: false }, query: { type: 'string', default: '' }, rows: { type: 'string', default: all.join(',') }, help: { type: 'boolean', short: 'h', default: false },
    } }));
  } catch (error) {
    console.error(`${(error as Error).message}\n${usage}`);
    process.exit(2);
  }
  const wanted = new Set(values.rows.split(','));
  const unknown = [...wanted].filter((row) => !(all as string[]).includes(row));
  const rounds = Number(values.rounds);
  const scale = Number(values.scale);
  warmUp = Number(values['warm-up']);
  if (values.help) {
    console.log(usage);
    return;
  }
  if (unknown.length > 0 || !(rounds >= 1) || !(scale > 0) || !(warmUp >= 0)) {
    console.error(`${unknown.length > 0 ? `unknown rows: ${unknown.join(', ')}` : '--rounds must be 1 or more, --scale above 0, --warm-up 0 or more'}\n${usage}`);
    process.exit(2);
  }
  if (values.save && (values.rows !== all.join(',') || scale !== 1 || rounds < 4 || values.query !== '' || warmUp !== 0.25)) {
    console.error(`--save writes the README's tables: it takes every row, scale 1, 4 rounds or more, the default warm-up and no --query\n${usage}`);
    process.exit(2);
  }
  shmQuery = values.query;
  const rates = new Map<string, number[]>();
  const trips = new Map<Kind, number[]>();
  const bufferTrips = new Map<Kind, number[]>();
  const requests: number[] = [];
  const messageTrips: number[] = [];
  const bare = { each: [] as number[], batched: [] as number[], trips: [] as number[] };
  if (wanted.has('bare')) { wanted.add('bytes64'); wanted.add('rtt'); }
  // Every (row, kind) pair once per round; the order rotates so neither side always runs first or warm.
  // A row only shm runs (zero copy, on('message')) is compared with the socket's bytes64 row of the same run: run that too.
  if (ROWS.some((row) => SHM_ONLY.has(row) && wanted.has(row))) wanted.add('bytes64');
  const rows = ROWS.filter((row) => wanted.has(row));
  const jobs = rows.flatMap((row) => KINDS.filter((kind) => kind === 'shm' || !SHM_ONLY.has(row)).map((kind) => ({ row, kind })));
  for (let r = 0; r < rounds; r++) {
    const order = [...jobs.slice(r % jobs.length), ...jobs.slice(0, r % jobs.length)];
    for (const { row, kind } of order) {
      const rate = await throughputOnce(kind, row, Math.max(10, Math.round(COUNTS[row] * scale)));
      const key = `${row}/${kind}`;
      rates.set(key, [...(rates.get(key) ?? []), rate]);
      process.stderr.write(`round ${r + 1}/${rounds} ${key}: ${fmtRate(rowBytes(row), rate)}\n`);
    }
    // The request/reply row is compared with the socket's round trip: run that row too.
    for (const kind of !wanted.has('rtt') && !wanted.has('rpc') && !wanted.has('message') ? [] : r % 2 ? [...KINDS].reverse() : KINDS) {
      trips.set(kind, [...(trips.get(kind) ?? []), ...(await latencyOnce(kind, Math.max(100, Math.round(ROUND_TRIPS * scale))))]);
    }
    for (const kind of !wanted.has('rtt64') ? [] : r % 2 ? KINDS : [...KINDS].reverse()) {
      bufferTrips.set(kind, [...(bufferTrips.get(kind) ?? []), ...(await latencyOnce(kind, Math.max(100, Math.round(ROUND_TRIPS * scale)), 'rtt64'))]);
    }
    if (wanted.has('rpc')) requests.push(...(await latencyOnce('shm', Math.max(100, Math.round(ROUND_TRIPS * scale)), 'rpc')));
    if (wanted.has('message')) messageTrips.push(...(await latencyOnce('shm', Math.max(100, Math.round(ROUND_TRIPS * scale)), 'message')));
    if (wanted.has('bare')) {
      const n = Math.max(10, Math.round(COUNTS.claimAt64 * scale));
      bare.each.push(await bareRing(n, 1));
      bare.batched.push(await bareRing(n, BATCH));
      bare.trips.push(...(await barePingPong(Math.max(100, Math.round(ROUND_TRIPS * scale)))));
      process.stderr.write(`round ${r + 1}/${rounds} bare: ${fmtRate(64, bare.each.at(-1)!)} each, ${fmtRate(64, bare.batched.at(-1)!)} batched\n`);
    }
  }
  const table = rows.map((row) => rateRow(row, rowBytes(row), rates.get(`${row}/shm`)!, rates.get(`${SHM_ONLY.has(row) ? 'bytes64' : row}/unix`)!));
  const pair = (m: Map<Kind, number[]>) => (m.size === 0 ? undefined : { shm: latencyOf(m.get('shm')!), unix: latencyOf(m.get('unix')!) });
  const report: EverydayReport = {
    date: new Date().toISOString(), node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model, cpuId: cpuId(), rounds, scale, warmUp, query: shmQuery,
    table, latency: pair(trips), latencyBuffer64: pair(bufferTrips),
    requests: requests.length ? latencyOf(requests) : undefined,
    onMessage: messageTrips.length ? latencyOf(messageTrips) : undefined,
    bare: bare.each.length === 0 ? undefined : {
      eachRounds: bare.each, batchedRounds: bare.batched, batch: BATCH, trip: latencyOf(bare.trips),
      each: median(bare.each), batched: median(bare.batched),
    },
  };
  if (values.save) save(report);
  if (values.json) {
    console.log(JSON.stringify(report, null, 2));
    return;
  }
  console.log(renderEveryday(report));
  if (COUNTING) {
    const per = (c: Counts, n: number, k: keyof Counts) => (c[k] / n).toFixed(k === 'doorbells' || k === 'parks' || k === 'batches' ? 4 : k === 'wasmCalls' ? 3 : 2);
    console.log(`\nPer message (SHMBUS_COUNTERS=1; allocations are ours, not msgpackr's decode or iterator results):`);
    console.log(`| row | side | wasm calls | copies | bytes copied | allocs | queued | promises | decodes | batches | doorbells | parks |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|`);
    for (const [row, [producer, consumer, n]] of costs) {
      const sides = row === 'rtt' ? ['timer', 'echo'] : ['producer', 'consumer'];
      for (const [side, c] of [[sides[0], producer], [sides[1], consumer]] as const) {
        console.log(`| ${row} | ${side} | ${per(c, n, 'wasmCalls')} | ${per(c, n, 'copies')} | ${(c.bytesCopied / n).toFixed(0)} | ${per(c, n, 'allocs')} | ${per(c, n, 'queued')} | ${per(c, n, 'promises')} | ${per(c, n, 'decodes')} | ${per(c, n, 'batches')} | ${per(c, n, 'doorbells')} | ${per(c, n, 'parks')} |`);
      }
    }
  }
  // The consumer (this process) tunes glibc malloc once it receives a large record (host/large.ts); the tuning is
  // process-wide, so the socket rows measured after it run with it too.
  if (mallocTuned()) console.log('malloc tuned by shmbus in this process (host/large.ts): socket rows after the first shm 1 MiB row share it');
}

/** Writes the report to bench/results/everyday.json and its tables into README.md (both found from this file). */
function save(report: EverydayReport): void {
  writeFileSync(RESULTS_JSON, `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(README, withTables(readFileSync(README, 'utf8'), renderEveryday(report)));
  process.stderr.write(`wrote ${RESULTS_JSON} and the tables in ${README}\n`);
}

if (process.argv[2] === '--child') {
  const [, , , role, kind, url, row, count] = process.argv;
  child(role!, kind as Kind, url!, row as Row, Number(count)).catch((e) => { console.error(e); process.exit(1); });
} else {
  main().catch((e) => { console.error(e); process.exit(1); });
}
