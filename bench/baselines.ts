// Baselines that the shmbus benchmarks are compared with, measured in the same run:
// one-way throughput from this process to a child process (./baseline-child.ts) over
//
//  1. child_process.fork IPC with the default 'json' serialization, and
//  2. a Unix domain stream socket carrying length-prefixed frames
//     (u32 little-endian length + msgpackr bytes, or raw bytes).
//
// The clock starts when the child reports it is ready and stops when it reports that it
// has received all N messages; producing/encoding (here) and decoding (in the child) are
// inside the measured interval. The child is always stopped before a function returns.

import { fork, spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { pack } from 'msgpackr';

export interface ThroughputResult {
  name: string;
  messages: number;
  seconds: number;
  msgPerSec: number;
}

export type BaselineKind = 'raw' | 'object';

const CHILD_PATH = fileURLToPath(new URL('./baseline-child.js', import.meta.url));

/** Default safety net: a run that takes longer than this is aborted (its child killed). */
const DEFAULT_TIMEOUT_MS = 10 * 60 * 1000;
/** Size of the batches the socket writer hands to socket.write(). */
const SOCKET_BATCH_BYTES = 64 * 1024;
/** fork IPC: one send in this many carries a completion callback (see forkIpcThroughput). */
const IPC_CALLBACK_EVERY = 16;
/** How long a child gets to exit by itself once its channel is closed, before SIGKILL. */
const EXIT_GRACE_MS = 2000;

/**
 * A small trading-style object whose msgpackr encoding (default `pack`, no records) is
 * 63–67 bytes: 67 for i ≥ 65536, 65 for i ≥ 256, 64 for i ≥ 128, 63 below (the id is
 * the only field whose size varies). Its JSON form is about 90 characters.
 */
export function makeObject64(i: number): object {
  return { id: i, sym: 'ACME', px: 12.5, qty: 100, side: 'buy', ts: 1700000000000, mkt: 'XNAS' };
}

/** The raw payload of the fork IPC variant: fork IPC cannot carry bytes, so 64 characters. */
const RAW64_STRING = 'shmbus-baseline-raw-payload-0123456789abcdefghijklmnopqrstuvwxyz'.slice(0, 64);

function checkMessages(messages: number): void {
  if (!Number.isSafeInteger(messages) || messages < 1) {
    throw new RangeError(`messages must be a positive integer, got ${messages}`);
  }
}

function checkKind(kind: string): void {
  if (kind !== 'raw' && kind !== 'object') throw new RangeError(`kind must be 'raw' or 'object', got ${kind}`);
}

/** A promise that rejects on the first failure (child death, socket error, timeout). */
class Failure {
  readonly promise: Promise<never>;
  error: Error | null = null;
  private rejectFn!: (err: Error) => void;
  private timer: NodeJS.Timeout;

  constructor(timeoutMs: number, what: string) {
    this.promise = new Promise<never>((_, reject) => {
      this.rejectFn = reject;
    });
    this.promise.catch(() => {}); // observed through race(); never an unhandled rejection
    this.timer = setTimeout(() => this.fail(new Error(`${what}: timed out after ${timeoutMs} ms`)), timeoutMs);
    this.timer.unref();
  }

  fail(err: Error): void {
    if (this.error) return;
    this.error = err;
    this.rejectFn(err);
  }

  race<T>(p: Promise<T>): Promise<T> {
    return Promise.race([p, this.promise]);
  }

  dispose(): void {
    clearTimeout(this.timer);
  }
}

function exitDescription(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `signal ${signal}` : `code ${code}`;
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (hasExited(child) || child.pid === undefined) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}

/** Lets the child exit by itself (its channel is closed by now), then SIGKILLs it. */
async function stopChild(child: ChildProcess): Promise<void> {
  if (child.pid === undefined) return; // never started
  if (await waitExit(child, EXIT_GRACE_MS)) return;
  child.kill('SIGKILL');
  await waitExit(child, EXIT_GRACE_MS * 5);
}

function elapsed(name: string, messages: number, t0: bigint, t1: bigint): ThroughputResult {
  const seconds = Number(t1 - t0) / 1e9;
  return { name, messages, seconds, msgPerSec: messages / seconds };
}

/**
 * child_process.fork IPC with 'json' serialization: N × child.send(obj) to a child that
 * counts them. kind 'object' sends makeObject64(i); kind 'raw' sends a 64-character string.
 * Back-pressure: when send() returns false (128 KiB or more queued in libuv), the sender
 * waits until the latest send that carries a completion callback (one in 16) has been
 * handed to the kernel before sending more.
 */
export async function forkIpcThroughput(opts: {
  messages: number;
  kind: BaselineKind;
  timeoutMs?: number;
}): Promise<ThroughputResult> {
  const { messages, kind } = opts;
  checkMessages(messages);
  checkKind(kind);
  const name = `fork-ipc json ${kind === 'object' ? 'object64' : 'raw64 (string)'}`;
  const failure = new Failure(opts.timeoutMs ?? DEFAULT_TIMEOUT_MS, name);

  const child = fork(CHILD_PATH, ['ipc', kind, String(messages)], {
    serialization: 'json',
    execArgv: [],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });

  let onReady!: () => void;
  let onDone!: () => void;
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  const done = new Promise<void>((resolve) => (onDone = resolve));
  let finished = false;
  child.on('message', (m: { t?: string; count?: number }) => {
    if (m?.t === 'ready') onReady();
    else if (m?.t === 'done') {
      if (m.count !== messages) failure.fail(new Error(`${name}: child counted ${m.count} of ${messages}`));
      finished = true;
      onDone();
    }
  });
  child.on('error', (err) => failure.fail(new Error(`${name}: child process: ${err.message}`)));
  child.on('exit', (code, signal) => {
    if (!finished) failure.fail(new Error(`${name}: child exited (${exitDescription(code, signal)}) before receiving everything`));
  });

  try {
    await failure.race(ready);
    const t0 = process.hrtime.bigint();

    // Every IPC_CALLBACK_EVERY-th send carries a shared completion callback (one on every
    // send costs ~15% of the throughput). When send() returns false, the sender waits until
    // the latest such send has been handed to the kernel: at most IPC_CALLBACK_EVERY - 1
    // messages are then still queued in libuv, while the kernel buffer keeps the child busy.
    let tagged = 0;
    let completed = 0;
    let target = 0;
    let wake: (() => void) | null = null;
    const onSent = (err: Error | null): void => {
      completed++;
      if (err) failure.fail(new Error(`${name}: send failed: ${err.message}`));
      if (wake !== null && completed >= target) {
        const w = wake;
        wake = null;
        w();
      }
    };
    for (let i = 0; i < messages; i++) {
      const msg = kind === 'object' ? makeObject64(i) : RAW64_STRING;
      let ok: boolean;
      if (i % IPC_CALLBACK_EVERY === IPC_CALLBACK_EVERY - 1 || i === messages - 1) {
        tagged++;
        ok = child.send(msg, onSent);
      } else {
        ok = child.send(msg);
      }
      if (!ok) {
        if (failure.error) throw failure.error;
        if (!child.connected) throw new Error(`${name}: IPC channel closed`);
        target = tagged;
        if (completed < target) await failure.race(new Promise<void>((resolve) => (wake = resolve)));
      }
    }

    await failure.race(done);
    const t1 = process.hrtime.bigint();
    if (failure.error) throw failure.error;
    return elapsed(name, messages, t0, t1);
  } finally {
    failure.dispose();
    if (child.connected) child.disconnect();
    await stopChild(child);
  }
}

let socketSeq = 0;

function listen(server: Server, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(address, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * A Unix domain stream socket (abstract namespace, so no file is created) carrying frames
 * of a u32 little-endian length followed by the payload. kind 'object': msgpackr
 * pack(makeObject64(i)) per message, decoded with msgpackr unpack in the child. kind 'raw':
 * payloadSize raw bytes (default 64; payloadSize applies to 'raw' only). Frames are
 * batched into ~64 KiB buffers per socket.write(); when write() returns false the writer
 * waits for 'drain'. The child parses frames incrementally (frames may span chunks).
 */
export async function unixSocketThroughput(opts: {
  messages: number;
  kind: BaselineKind;
  payloadSize?: number;
  timeoutMs?: number;
}): Promise<ThroughputResult> {
  const { messages, kind } = opts;
  const payloadSize = opts.payloadSize ?? 64;
  checkMessages(messages);
  checkKind(kind);
  if (!Number.isSafeInteger(payloadSize) || payloadSize < 1 || payloadSize > 0x7fffffff) {
    throw new RangeError(`payloadSize must be a positive integer, got ${payloadSize}`);
  }
  const name = kind === 'object' ? 'unix-socket msgpackr object64' : `unix-socket raw${payloadSize}`;
  const failure = new Failure(opts.timeoutMs ?? DEFAULT_TIMEOUT_MS, name);

  const abstractName = `shmbus-bench-${process.pid}-${++socketSeq}`;
  const server = createServer();
  let socket: Socket | null = null;
  let child: ChildProcess | null = null;
  let finished = false;

  try {
    await listen(server, `\0${abstractName}`);
    server.on('error', (err) => failure.fail(new Error(`${name}: server: ${err.message}`)));
    const connection = new Promise<Socket>((resolve) => server.once('connection', resolve));

    child = spawn(process.execPath, [CHILD_PATH, 'socket', kind, String(messages), String(payloadSize), `@${abstractName}`], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    child.on('error', (err) => failure.fail(new Error(`${name}: child process: ${err.message}`)));
    child.on('exit', (code, signal) => {
      if (!finished) failure.fail(new Error(`${name}: child exited (${exitDescription(code, signal)}) before receiving everything`));
    });

    const sock = await failure.race(connection);
    socket = sock;
    server.close(); // one connection is all we take; the accepted socket stays open

    let onReady!: () => void;
    let onDone!: () => void;
    const ready = new Promise<void>((resolve) => (onReady = resolve));
    const done = new Promise<void>((resolve) => (onDone = resolve));
    sock.on('data', (chunk: Buffer) => {
      for (const byte of chunk) {
        if (byte === 0x52 /* 'R' */) onReady();
        else if (byte === 0x44 /* 'D' */) {
          finished = true;
          onDone();
        } else failure.fail(new Error(`${name}: unexpected byte ${byte} from child`));
      }
    });
    sock.on('error', (err) => failure.fail(new Error(`${name}: socket: ${err.message}`)));
    sock.on('close', () => {
      if (!finished) failure.fail(new Error(`${name}: socket closed early`));
    });

    await failure.race(ready);
    const t0 = process.hrtime.bigint();

    const raw = kind === 'raw' ? Buffer.alloc(payloadSize, 0xa5) : null;
    let batch = Buffer.allocUnsafe(SOCKET_BATCH_BYTES);
    let off = 0;
    const flush = async (buf: Buffer): Promise<void> => {
      if (!sock.write(buf)) {
        if (failure.error) throw failure.error;
        await failure.race(new Promise<void>((resolve) => sock.once('drain', resolve)));
      }
    };
    for (let i = 0; i < messages; i++) {
      // pack() returns a view of msgpackr's reusable buffer; it is copied right away.
      const payload = raw ?? pack(makeObject64(i));
      const len = payload.length;
      if (off + 4 + len > SOCKET_BATCH_BYTES) {
        if (off > 0) {
          const full = batch.subarray(0, off);
          batch = Buffer.allocUnsafe(SOCKET_BATCH_BYTES); // the written one stays owned by the socket
          off = 0;
          await flush(full);
        }
        if (4 + len > SOCKET_BATCH_BYTES) {
          const frame = Buffer.allocUnsafe(4 + len);
          frame.writeUInt32LE(len, 0);
          frame.set(payload, 4);
          await flush(frame);
          continue;
        }
      }
      batch.writeUInt32LE(len, off);
      batch.set(payload, off + 4);
      off += 4 + len;
    }
    if (off > 0) await flush(batch.subarray(0, off));

    await failure.race(done);
    const t1 = process.hrtime.bigint();
    if (failure.error) throw failure.error;
    return elapsed(name, messages, t0, t1);
  } finally {
    failure.dispose();
    socket?.destroy(); // the child exits once its connection closes
    if (server.listening) server.close();
    if (child) await stopChild(child);
  }
}

// Runner: npx tsc -p tsconfig.json && node dist/bench/baselines.js [messages]
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const messages = process.argv[2] ? Number(process.argv[2]) : 200_000;
  const results: ThroughputResult[] = [];
  for (const kind of ['raw', 'object'] as const) {
    results.push(await forkIpcThroughput({ messages, kind }));
  }
  for (const kind of ['raw', 'object'] as const) {
    results.push(await unixSocketThroughput({ messages, kind }));
  }
  const width = Math.max(...results.map((r) => r.name.length));
  for (const r of results) {
    console.log(
      `${r.name.padEnd(width)}  ${Math.round(r.msgPerSec).toLocaleString('en-US').padStart(12)} msg/s` +
        `  (${r.messages.toLocaleString('en-US')} msgs in ${r.seconds.toFixed(3)} s)`,
    );
  }
}
