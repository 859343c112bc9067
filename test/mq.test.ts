// What is particular to the message-queue transports (mq:, sysvmq:) beyond the conformance suite: packing,
// splitting and reassembly (with corrupt sequences), kernel limits as typed errors naming the limit, what is left
// in /dev/mqueue and the System V tables, the receive threads (no threadpool thread held, no hang at exit), and
// untrusted packets on the wire.
import t, { type Test } from 'tap';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { pack } from 'msgpackr';
import { listen, connect, ErrorCode, ShmbusError, type Connection, type ConnectionListener } from '../index.js';
import {
  PacketWriter, Reassembler, RECORD_HEADER, KIND_WHOLE, KIND_FIRST, KIND_MIDDLE, KIND_LAST, KIND_END,
} from '../transports/fragment.js';
import { mqLimits, mqOpen, mqReceive, mqSend, mqClose, mqUnlinkIfExists } from '../host/sys/mq.js';
import { msgGet, msgLimits, msgRemoveIfExists, msgStat } from '../host/sys/msg.js';
import { IPC_CREAT, IPC_PRIVATE } from '../host/sys/constants.js';
import { O_CREAT, O_EXCL, O_NONBLOCK, O_RDONLY, O_WRONLY } from '../host/sys/constants.js';
import { processEuid, processStartTime } from '../host/sys/proc.js';
import { mqueueLeftovers, sysvQueues } from './conformance/cases-queues.js';
import { asUnprivileged, eventually, fileTimeout, NOBODY, startChild, within, type TestLike } from './helpers.js';

/** How a child runs as another user (the ownership test is skipped without it). */
const unprivileged = asUnprivileged();

// Measured on a busy 2-core machine (load 10-20): ~36 s. Timeout: 4x that.
fileTimeout(t, 150);

const INDEX = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const pid = process.pid;
let serial = 0;
const mqUrl = (query = '') => `mq:///mqt-${pid}-${++serial}${query}`;
/** Keys 0x5c<pid low 16 bits><serial>: apart from the conformance suite's 0x5a… */
const KEY_PREFIX = ((0x5c << 24) | ((pid & 0xffff) << 8)) >>> 0;
const sysvUrl = (query = '') => `sysvmq://0x${((KEY_PREFIX | (++serial & 0xff)) >>> 0).toString(16)}${query}`;
const leftovers = () => ({ mq: mqueueLeftovers(`mqt-${pid}-`), sysv: sysvQueues(KEY_PREFIX) });
/** Lets what was just started (a close, a receive) reach its wait before the test goes on. */
const turn = () => new Promise((r) => setImmediate(r));
const MiB = 1024 * 1024;

const before = leftovers();
t.afterEach((sub) => {
  t.same(leftovers(), before, `nothing left in /dev/mqueue or the System V tables by: ${sub.name}`);
});

/**
 * Runs an ES module snippet in a child (compiled code from dist/, as the other two-process tests do) and waits for
 * it to end by itself; a child that never ends fails the test (watchdog), and is killed with the test.
 */
async function runChild(t: TestLike, code: string, opts: { prefix?: string[] } = {}): Promise<{ code: number | null; signal: string | null; out: string; err: string }> {
  const child = startChild(t, [...(opts.prefix ?? []), process.execPath, '--input-type=module', '-e', code], { env: { ...process.env, NODE_OPTIONS: '' } });
  const { code: exitCode, signal } = await within(60_000, child.exit, () => `the child did not end by itself: ${child.stderr()}`);
  return { code: exitCode, signal, out: child.stdout(), err: child.stderr() };
}

async function pair(url: string): Promise<{ l: ConnectionListener; a: Connection; b: Connection }> {
  const l = await listen(url);
  const [a, b] = await Promise.all([connect(url), l.acceptNext()]);
  return { l, a, b: b! };
}

// ------------------------------------------------------------------------------------------- fragmentation

/** A kernel queue in memory: holds at most `depth` packets (their payloads, after `headroom`). */
function fakeQueue(depth: number, headroom = 0) {
  const packets: Uint8Array[] = [];
  return {
    packets,
    send: (buf: Uint8Array, length: number) => {
      if (packets.length >= depth) return false;
      packets.push(buf.slice(headroom, headroom + length));
      return true;
    },
  };
}

function fill(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

t.test('fragments: mixed sizes through a shallow queue arrive whole, in order; a message is never half-sent', async (t) => {
  for (const packetSize of [64, 256, 8192]) {
    const q = fakeQueue(3);
    const w = new PacketWriter(packetSize, 0, q.send);
    const r = new Reassembler(MiB);
    const got: { type: number; bytes: Uint8Array }[] = [];
    let ended = false;
    const sink = { message: (type: number, bytes: Uint8Array) => got.push({ type, bytes: bytes.slice() }), end: () => { ended = true; } };
    const drain = () => { for (const p of q.packets.splice(0)) r.push(p, sink); };
    const sizes = [0, 1, packetSize - RECORD_HEADER, packetSize - RECORD_HEADER + 1, 3 * packetSize, 5, 100_000, 7, 64 * 1024 + 3, 0];
    let refusals = 0;
    let tookSomething = 0;
    for (let i = 0; i < sizes.length; i++) {
      const msg = fill(sizes[i]!, i);
      for (;;) {
        const pendingBefore = w.pendingBytes;
        const packetsBefore = q.packets.length;
        if (w.write(1 + (i % 2), msg)) break;
        // Refused means nothing was taken: the writer and the queue hold exactly what they held before.
        if (w.pendingBytes !== pendingBefore || q.packets.length !== packetsBefore) tookSomething++;
        refusals++;
        drain();
        w.flush();
      }
    }
    t.equal(tookSomething, 0, `packet ${packetSize}: a refused write took nothing`);
    w.writeEnd();
    while (!w.flush()) drain();
    drain();
    t.ok(ended, `packet ${packetSize}: END arrives after everything`);
    t.equal(got.length, sizes.length, `packet ${packetSize}: every message arrived`);
    t.ok(got.every((m, i) => m.type === 1 + (i % 2) && Buffer.compare(m.bytes, fill(sizes[i]!, i)) === 0), `packet ${packetSize}: intact and in order`);
    t.ok(refusals > 0, `packet ${packetSize}: the shallow queue refused ${refusals} times`);
    t.notOk(r.midMessage);
  }
});

t.test('fragments: small messages share packets', async (t) => {
  const q = fakeQueue(1e9, 8);
  const w = new PacketWriter(8192, 8, q.send);
  let taken = 0;
  for (let i = 0; i < 1000; i++) if (w.write(1, fill(64, i))) taken++;
  t.equal(taken, 1000);
  t.ok(w.flush());
  const expected = Math.ceil((1000 * (64 + RECORD_HEADER)) / 8192);
  t.ok(q.packets.length <= expected + 1, `1000 messages of 64 B took ${q.packets.length} packets`);
  const r = new Reassembler(MiB);
  let n = 0;
  for (const p of q.packets) r.push(p, { message: () => { n++; }, end: () => {} });
  t.equal(n, 1000);
});

/** A packet of records: [kind, type, seq, length(chunk), total, chunk?]. */
function packet(...records: [number, number, number, number, number, number?][]): Uint8Array {
  const size = records.reduce((n, r) => n + RECORD_HEADER + (r[5] ?? r[3]), 0);
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let at = 0;
  for (const [kind, type, seq, length, total, bodyLength] of records) {
    out[at] = kind;
    v.setUint16(at + 2, type, true);
    v.setUint32(at + 4, seq, true);
    v.setUint32(at + 8, length, true);
    v.setUint32(at + 12, total, true);
    at += RECORD_HEADER + (bodyLength ?? length);
  }
  return out;
}

t.test('fragments: every broken sequence is ERR_SHMBUS_CORRUPT, never a crash or a partial message', async (t) => {
  const cases: [string, Uint8Array[], number?][] = [
    ['an empty packet', [new Uint8Array(0)]],
    ['a header cut off', [new Uint8Array(RECORD_HEADER - 1)]],
    ['a chunk longer than its packet', [packet([KIND_WHOLE, 1, 0, 100, 100, 10])]],
    ['an unknown kind', [packet([9, 1, 0, 4, 4])]],
    ['a middle fragment without a first', [packet([KIND_MIDDLE, 1, 1, 4, 12])]],
    ['a last fragment without a first', [packet([KIND_LAST, 1, 1, 4, 12])]],
    ['a first fragment while another message is incomplete', [packet([KIND_FIRST, 1, 0, 4, 12]), packet([KIND_FIRST, 1, 0, 4, 12])]],
    ['a whole message while another is incomplete', [packet([KIND_FIRST, 1, 0, 4, 12], [KIND_WHOLE, 1, 0, 1, 1])]],
    ['a skipped fragment', [packet([KIND_FIRST, 1, 0, 4, 12]), packet([KIND_LAST, 1, 2, 8, 12])]],
    ['a repeated fragment', [packet([KIND_FIRST, 1, 0, 4, 12]), packet([KIND_MIDDLE, 1, 1, 4, 12]), packet([KIND_MIDDLE, 1, 1, 4, 12])]],
    ['a fragment of another type', [packet([KIND_FIRST, 1, 0, 4, 12]), packet([KIND_LAST, 2, 1, 8, 12])]],
    ['a fragment with another total', [packet([KIND_FIRST, 1, 0, 4, 12]), packet([KIND_LAST, 1, 1, 8, 13])]],
    ['fragments that overrun the total', [packet([KIND_FIRST, 1, 0, 4, 12]), packet([KIND_LAST, 1, 1, 9, 12])]],
    ['a last fragment that leaves the message short', [packet([KIND_FIRST, 1, 0, 4, 12]), packet([KIND_LAST, 1, 1, 7, 12])]],
    ['a middle fragment that completes the message', [packet([KIND_FIRST, 1, 0, 4, 12]), packet([KIND_MIDDLE, 1, 1, 8, 12])]],
    ['an empty fragment', [packet([KIND_FIRST, 1, 0, 4, 12]), packet([KIND_MIDDLE, 1, 1, 0, 12])]],
    ['a first fragment that is the whole message', [packet([KIND_FIRST, 1, 0, 12, 12])]],
    ['a whole record with a fragment\'s total', [packet([KIND_WHOLE, 1, 0, 4, 12])]],
    ['a message above the largest', [packet([KIND_FIRST, 1, 0, 4, MiB + 1])]],
    ['a whole message above the largest', [packet([KIND_WHOLE, 1, 0, 64, 64])], 63],
    ['the end inside a fragmented message', [packet([KIND_FIRST, 1, 0, 4, 12]), packet([KIND_END, 0, 0, 0, 0])]],
    ['data after the end', [packet([KIND_END, 0, 0, 0, 0], [KIND_WHOLE, 1, 0, 1, 1])]],
    ['an end record with a payload', [packet([KIND_END, 0, 0, 3, 0])]],
    ['a record with flags', [(() => { const p = packet([KIND_WHOLE, 1, 0, 1, 1]); p[1] = 0x80; return p; })()]],
  ];
  for (const [name, packets, max] of cases) {
    const r = new Reassembler(max ?? MiB);
    const delivered: number[] = [];
    let error: unknown;
    try {
      for (const p of packets) r.push(p, { message: (_type, bytes) => delivered.push(bytes.length), end: () => {} });
    } catch (e) {
      error = e;
    }
    t.equal((error as ShmbusError | undefined)?.code, ErrorCode.CORRUPT, `${name}: ${(error as Error | undefined)?.message ?? 'no error'}`);
    t.ok(delivered.every((n) => n <= 1), `${name}: no fragment was delivered as a message`);
  }
});

// ------------------------------------------------------------------------------------------------ limits

t.test('mq: geometry above the sysctls is ERR_SHMBUS_LIMIT naming the sysctl', async (t) => {
  const limits = mqLimits();
  const url = mqUrl();
  const l = await listen(url);
  await t.rejects(connect(`${url}?msgsize=${limits.msgsizeMax + 1}`), {
    code: ErrorCode.LIMIT, details: { limit: '/proc/sys/fs/mqueue/msgsize_max', max: limits.msgsizeMax },
  }, 'msgsize');
  await t.rejects(connect(`${url}?maxmsg=${limits.msgMax + 1}`), {
    code: ErrorCode.LIMIT, details: { limit: '/proc/sys/fs/mqueue/msg_max', max: limits.msgMax },
  }, 'maxmsg');
  // The refused connect left nothing behind (its queue names are removed), and the listener still works.
  const c = await connect(url);
  const a = (await l.acceptNext())!;
  c.send('still works');
  t.equal(await a.receive(), 'still works');
  await c.close();
  await a.close();
  await l.close();
});

t.test('mq: a user past RLIMIT_MSGQUEUE gets ERR_SHMBUS_LIMIT naming RLIMIT_MSGQUEUE', async (t) => {
  const url = mqUrl();
  const l = await listen(url);
  // The rlimit is checked against all queues of the user: a child allowed 1 byte cannot create any.
  const r = await runChild(t, `
    import { connect } from ${JSON.stringify(INDEX)};
    try { await connect(${JSON.stringify(url)}); console.log('connected'); }
    catch (e) { console.log(JSON.stringify({ code: e.code, details: e.details })); }
  `, { prefix: ['prlimit', '--msgqueue=1:1', '--'] });
  t.equal(r.code, 0, r.err);
  const result = JSON.parse(r.out.trim().split('\n').pop() ?? '{}');
  t.match(result, { code: ErrorCode.LIMIT, details: { limit: 'RLIMIT_MSGQUEUE', max: 1 } });
  await l.close();
});

const capEff = BigInt('0x' + (/CapEff:\s*([0-9a-f]+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0'));
const CAP_SYS_RESOURCE = 24n;
const hasSysResource = ((capEff >> CAP_SYS_RESOURCE) & 1n) === 1n;

t.test('sysvmq: qbytes above msgmnb without CAP_SYS_RESOURCE is ERR_SHMBUS_LIMIT naming msgmnb', {
  skip: hasSysResource ? 'this process has CAP_SYS_RESOURCE: the kernel allows any qbytes' : false,
}, async (t) => {
  const { msgmnb } = msgLimits();
  const url = sysvUrl();
  const l = await listen(url);
  await t.rejects(connect(`${url}?qbytes=${msgmnb * 2}`), {
    code: ErrorCode.LIMIT, details: { limit: '/proc/sys/kernel/msgmnb', max: msgmnb },
  });
  // A smaller queue is allowed: packets shrink to fit it.
  const small = await connect(`${url}?qbytes=4096`);
  const a = (await l.acceptNext())!;
  a.sendBytes(fill(100_000, 3));
  const got = await within(60_000, small.receive(), '100 kB');
  t.same(Buffer.compare(got as Uint8Array, fill(100_000, 3)), 0, '100 kB through a 4 KiB queue');
  await small.close();
  await a.close();
  await l.close();
});

for (const [name, makeUrl] of [['mq', mqUrl], ['sysvmq', sysvUrl]] as const) {
  t.test(`${name}: maxMessage is the smaller of the two sides', 0 … max pass, max+1 is refused`, async (t) => {
    const url = makeUrl();
    const l = await listen(`${url}?maxMessage=4MiB`);
    const a = await connect(`${url}?maxMessage=2MiB`);
    const b = (await l.acceptNext())!;
    t.equal(a.maxMessageSize, 2 * MiB);
    t.equal(b.maxMessageSize, 2 * MiB, 'the listener uses the connector\'s smaller maximum');
    t.throws(() => b.sendBytes(new Uint8Array(2 * MiB + 1)), { code: ErrorCode.MESSAGE_TOO_LARGE });
    for (const n of [0, 1, 2 * MiB]) b.sendBytes(fill(n, n));
    for (const n of [0, 1, 2 * MiB]) {
      const m = await within(60_000, a.receive(), `${n} bytes`) as Uint8Array;
      t.ok(m.length === n && Buffer.compare(m, fill(n, n)) === 0, `${n} bytes intact`);
    }
    await a.close();
    await b.close();
    await l.close();
  });
}

for (const [name, makeUrl] of [['mq', mqUrl], ['sysvmq', sysvUrl]] as const) {
  t.test(`${name}: a peer that closes first while our queue to it is full: our close ends, the rest is refused`, async (t) => {
    const { l, a, b } = await pair(makeUrl());
    // b does not read: a's messages fill the kernel queue, then a's local queue.
    const chunk = new Uint8Array(4096);
    let waiting = 0;
    while (a.sendBytes(chunk)) waiting++;
    t.ok(a.queued > 0, `the kernel took ${waiting} messages, then a had to queue`);
    const drained = a.drained().then(() => 'drained', (e: ShmbusError) => e.code);
    await b.close();
    await within(60_000, a.close(), 'a.close() after the peer closed');
    t.equal(await drained, ErrorCode.CLOSED, 'what the closed peer will never read is reported, not silently dropped');

    // The peer's END arrives while our close() waits for room for the fragments of a message already taken: the
    // peer's inbox is full (it stopped reading from the kernel), and trySend leaves the base queue empty.
    const second = await pair(makeUrl());
    const mib = new Uint8Array(MiB);
    let taken = 0;
    for (let i = 0; i < 64; i++) {
      if (second.a.trySendBytes(mib)) { taken++; continue; }
      // Refused: room comes back while the peer's transport still reads; once its inbox is full it does not.
      // (A guess, generous for a slow machine: room that comes later only makes `taken` larger.)
      const room = await Promise.race([second.a.drained().then(() => true), new Promise((r) => setTimeout(r, 2000)).then(() => false)]);
      if (!room) break;
    }
    t.ok(taken >= 4 && taken < 64, `${taken} MiB taken before the peer stopped reading`);
    t.equal(second.a.queued, 0, 'nothing waits in the base queue: the rest waits in fragments');
    const closing = second.a.close();
    await turn();
    await second.b.close();
    await within(60_000, closing, 'a.close() waiting for room when the peer closes');
    await second.l.close();
    await l.close();
  });
}

// ------------------------------------------------------------------------------------------------ cleanup

t.test('mq: queue names exist only during the handshake; nothing stays after close', async (t) => {
  const url = mqUrl();
  const { l, a, b } = await pair(url);
  t.same(mqueueLeftovers(`mqt-${pid}-`), [url.slice('mq:///'.length)], 'only the listener\'s queue has a name while connected');
  a.send(1);
  t.equal(await b.receive(), 1);
  await a.close();
  t.equal(await b.receive(), undefined, 'the listener side sees the end');
  await b.close();
  await l.close();
  t.same(mqueueLeftovers(`mqt-${pid}-`), [], 'the listener\'s queue is gone');
});

t.test('sysvmq: every queue (card, ports, connection queues) is removed by close', async (t) => {
  const url = sysvUrl();
  const base = sysvQueues(KEY_PREFIX).length;
  const { l, a, b } = await pair(url);
  // Traffic both ways, so every queue has this process as its last sender (how sysvQueues knows them).
  a.send('x');
  t.equal(await b.receive(), 'x');
  b.send('y');
  t.equal(await a.receive(), 'y');
  t.equal(sysvQueues(KEY_PREFIX).length - base, 4, 'the listener\'s queue, this process\'s port, an inbound queue per side');
  await b.close();
  t.equal(await a.receive(), undefined, 'the connector sees the end');
  await a.close();
  await l.close();
});

for (const [name, makeUrl] of [['mq', mqUrl], ['sysvmq', sysvUrl]] as const) {
  t.test(`${name}: a peer that exits without closing leaves nothing; we see the end of its messages`, async (t) => {
    const url = makeUrl();
    const l = await listen(url);
    const child = runChild(t, `
      import { connect } from ${JSON.stringify(INDEX)};
      const c = await connect(${JSON.stringify(url)});
      for (let i = 0; i < 100; i++) c.send(i);
      // The transport packs messages and flushes them on the next turn of the event loop (setImmediate, queued
      // before ours): after it, all 100 are in the kernel's queue (they fit in one packet).
      await new Promise((r) => setImmediate(r));
      if (c.queued > 0) await c.drained();
      // No close: process.exit runs the exit hooks (queues, ports), nothing else.
      process.exit(0);
    `);
    const conn = (await within(60_000, l.acceptNext(), 'accept'))!;
    const got: unknown[] = [];
    let error: unknown;
    try {
      for await (const m of conn) got.push(m);
    } catch (e) {
      error = e;
    }
    const r = await child;
    t.equal(r.code, 0, r.err);
    t.same(got, Array.from({ length: 100 }, (_, i) => i), 'every message it sent arrived first');
    t.equal((error as ShmbusError).code, ErrorCode.PEER_DEAD, 'then PEER_DEAD (it never sent END)');
    await conn.close();
    await l.close();
  });

  t.test(`${name}: a killed listener's endpoint: connect says NOT_FOUND, the next listener takes it over`, async (t) => {
    const url = makeUrl();
    const r = await runChild(t, `
      import { listen } from ${JSON.stringify(INDEX)};
      await listen(${JSON.stringify(url)});
      process.kill(process.pid, 'SIGKILL');
    `);
    t.equal(r.signal, 'SIGKILL');
    t.notSame(leftovers(), before, 'the killed listener left its queue');
    await t.rejects(connect(url, { timeout: 2000 }), { code: ErrorCode.NOT_FOUND }, 'a stale endpoint is nobody listening');
    const { l, a, b } = await pair(url);
    a.send('hello');
    t.equal(await b.receive(), 'hello');
    await a.close();
    await b.close();
    await l.close();
  });
}

// ------------------------------------------------------------------------------------------------ threads

for (const [name, makeUrl] of [['mq', mqUrl], ['sysvmq', sysvUrl]] as const) {
  t.test(`${name}: 16 idle connections waiting to receive hold no threadpool thread: fs.stat answers`, async (t) => {
    const url = makeUrl();
    const l = await listen(url);
    const conns: Connection[] = [];
    for (let i = 0; i < 16; i++) {
      const [a, b] = await Promise.all([connect(url), l.acceptNext()]);
      conns.push(a, b!);
    }
    // Every end waits in receive(): with one blocked threadpool call per wait, the 4 pool threads would be gone.
    const waits = conns.map((c) => c.receive());
    await turn();
    // A receive that held a pool thread would hold it until its message came: fs would never answer.
    await within(30_000, Promise.all(Array.from({ length: 8 }, () => stat('/'))), 'fs.stat while 32 receives wait');
    t.pass('8 fs.stat calls answered with 32 receives pending');
    // Still alive and well: every pending receive gets its message.
    conns.forEach((c, i) => c.send(i ^ 1));
    t.same(await within(60_000, Promise.all(waits), 'receives'), conns.map((_, i) => i), 'each waiting receive got its peer\'s message');
    await Promise.all(conns.map((c) => c.close()));
    await l.close();
  });

  t.test(`${name}: the receive threads never keep a process alive or hang its exit`, async (t) => {
    const url = makeUrl();
    // 1. Everything closed: the event loop empties and the process ends by itself.
    const closed = await runChild(t, `
      import { listen, connect } from ${JSON.stringify(INDEX)};
      const l = await listen(${JSON.stringify(url)});
      const [a, b] = await Promise.all([connect(${JSON.stringify(url)}), l.acceptNext()]);
      a.send(1); await b.receive();
      await a.close(); await b.close(); await l.close();
      console.log('closed');
    `);
    t.equal(closed.code, 0, `ended by itself after closing ${closed.err}`);
    t.match(closed.out, /closed/);
    // 2. process.exit with open connections and receives pending: the exit hooks wake the blocked threads.
    const exiting = await runChild(t, `
      import { listen, connect } from ${JSON.stringify(INDEX)};
      const l = await listen(${JSON.stringify(url)});
      const [a, b] = await Promise.all([connect(${JSON.stringify(url)}), l.acceptNext()]);
      a.receive(); b.receive();
      setTimeout(() => process.exit(7), 100);
    `);
    t.equal(exiting.code, 7, `exited with its code (a hang would be caught by the watchdog): ${exiting.err}`);
  });
}

// ------------------------------------------------------------------------------------------------ the wire

/**
 * A connector by hand, as transports/mq.ts makes one: its own two queues (maxmsg 2) and a hello to `l`; resolves
 * once the listener answered on our inbound queue (the connection exists on the listener's side then). `fill()`
 * writes our inbound queue full (a peer that reads nothing). Removed when `t` ends.
 */
async function handConnector(t: Test, url: string): Promise<{ tx: number; fill(): void; descriptors(): number; endArrived(): boolean }> {
  const name = url.slice('mq://'.length);
  const up = `${name}.${pid}.${++serial}.u`;
  const down = `${name}.${pid}.${serial}.d`;
  const geo = { maxmsg: 2, msgsize: 1024 };
  const rx = mqOpen(down, O_RDONLY | O_NONBLOCK | O_CREAT | O_EXCL, 0o600, geo);
  const tx = mqOpen(up, O_WRONLY | O_NONBLOCK | O_CREAT | O_EXCL, 0o600, geo);
  // Opened now: the listener removes both names once it answered.
  const into = mqOpen(down, O_WRONLY | O_NONBLOCK);
  t.teardown(() => {
    mqClose(rx);
    mqClose(tx);
    mqClose(into);
    mqUnlinkIfExists(up);
    mqUnlinkIfExists(down);
  });
  const lq = mqOpen(name, O_WRONLY | O_NONBLOCK);
  mqSend(lq, pack({ shmbus: 1, proto: 1, pid, start: String(processStartTime(pid)), up, down, max: MiB }));
  mqClose(lq);
  const reply = new Uint8Array(1024);
  await eventually(() => mqReceive(rx, reply) > 0, 'the listener to answer on our queue');
  t.same(mqueueLeftovers(`mqt-${pid}-`), [name.slice(1)], 'the listener answered, and both connection queue names are removed');
  return {
    tx,
    /** Descriptors of this process on the connection's two queues (ours are three: rx, tx and the filler). */
    descriptors: () => readdirSync('/proc/self/fd').filter((fd) => {
      try { return [`${up} (deleted)`, `${down} (deleted)`].includes(readlinkSync(`/proc/self/fd/${fd}`)); } catch { return false; }
    }).length,
    fill() {
      for (let i = 0; i < 2; i++) mqSend(into, packet([KIND_WHOLE, 1, 0, 1, 1]));
    },
    /** Reads what waits in our inbound queue: true once a packet held an END record. */
    endArrived() {
      const buf = new Uint8Array(1024);
      for (let n = mqReceive(rx, buf); n > 0; n = mqReceive(rx, buf)) {
        const v = new DataView(buf.buffer, 0, n);
        for (let at = 0; at + RECORD_HEADER <= n; at += RECORD_HEADER + v.getUint32(at + 8, true)) {
          if (buf[at] === KIND_END) return true;
        }
      }
      return false;
    },
  };
}

t.test('mq: a hostile connector\'s packets are checked: CORRUPT after what was valid, nothing delivered torn', async (t) => {
  const url = mqUrl();
  const l = await listen(url);
  t.teardown(() => l.close());
  const peer = await handConnector(t, url);
  const conn = (await within(60_000, l.acceptNext(), 'accept'))!;
  // One valid message, then the first fragment of a message, then a fragment out of sequence.
  mqSend(peer.tx, packet([KIND_WHOLE, 1, 0, 3, 3]));
  mqSend(peer.tx, packet([KIND_FIRST, 1, 0, 100, 300]));
  t.same(await within(60_000, conn.receive(), 'the valid message'), new Uint8Array(3));
  // The hostile peer reads nothing either: the connection it breaks does not wait for room for an end marker.
  peer.fill();
  mqSend(peer.tx, packet([KIND_LAST, 1, 5, 200, 300]));
  await t.rejects(within(60_000, conn.receive(), 'the corrupt one'), { code: ErrorCode.CORRUPT }, 'a fragment out of sequence');
  await within(30_000, conn.close(), 'close() after CORRUPT, toward a full queue');
  // And nothing of the connection stays for that peer (no END lingering for it: one try).
  t.equal(peer.descriptors(), 3, 'the listener closed its descriptors on the two queues');
});

t.test('mq: a peer that reads nothing holds neither destroy() nor the close of a listener that holds it untaken', async (t) => {
  const url = mqUrl();
  const l = await listen(url);
  const taken = await handConnector(t, url);
  const conn = (await within(60_000, l.acceptNext(), 'accept'))!;
  taken.fill();
  conn.send({ after: 'full' });
  const closing = conn.close();
  await turn();
  await within(30_000, conn.destroy(), 'destroy() toward a full queue');
  await within(30_000, closing, 'the close() under way');
  // A second connector that reads nothing, never taken: the listener's close destroys it.
  const untaken = await handConnector(t, url);
  untaken.fill();
  await within(30_000, l.close(), 'listener.close() with an untaken connection toward a full queue');
  // Neither waited for the END; once the peers read, it comes (a queue has no end-of-file: it is how they learn).
  await eventually(() => taken.endArrived(), 'the END of the destroyed connection once its peer reads');
  await eventually(() => untaken.endArrived(), 'the END of the untaken one');
});

t.test('mq: a connection lingering for its END does not keep the process alive', async (t) => {
  // In a child: a listener, and a connector by hand (as handConnector) that fills its inbound queue and reads
  // nothing; closing the listener destroys the untaken connection, whose END then lingers. The child's event loop
  // must empty while it lingers: at 'beforeExit' the listener still holds its descriptor on that queue.
  const dist = (path: string) => JSON.stringify(fileURLToPath(new URL(`../dist/${path}`, import.meta.url)));
  const name = `/mqt-${pid}-${++serial}`;
  const r = await runChild(t, `
    import { readdirSync, readlinkSync } from 'node:fs';
    import { pack } from 'msgpackr';
    import { listen } from ${JSON.stringify(INDEX)};
    import { mqOpen, mqReceive, mqSend, mqClose, mqUnlinkIfExists } from ${dist('host/sys/mq.js')};
    import { O_CREAT, O_EXCL, O_NONBLOCK, O_RDONLY, O_WRONLY } from ${dist('host/sys/constants.js')};
    import { processStartTime } from ${dist('host/sys/proc.js')};
    const name = ${JSON.stringify(name)};
    const l = await listen('mq://' + name);
    const up = name + '.' + process.pid + '.1.u', down = name + '.' + process.pid + '.1.d';
    const geo = { maxmsg: 2, msgsize: 1024 };
    const rx = mqOpen(down, O_RDONLY | O_NONBLOCK | O_CREAT | O_EXCL, 0o600, geo);
    const tx = mqOpen(up, O_WRONLY | O_NONBLOCK | O_CREAT | O_EXCL, 0o600, geo);
    const into = mqOpen(down, O_WRONLY | O_NONBLOCK);
    const lq = mqOpen(name, O_WRONLY | O_NONBLOCK);
    mqSend(lq, pack({ shmbus: 1, proto: 1, pid: process.pid, start: String(processStartTime(process.pid)), up, down, max: 1048576 }));
    mqClose(lq);
    const buf = new Uint8Array(1024);
    while (mqReceive(rx, buf) <= 0) await new Promise((r) => setImmediate(r));
    for (let i = 0; i < 2; i++) mqSend(into, new Uint8Array(16));
    await l.close();
    for (const fd of [rx, tx, into]) mqClose(fd);
    mqUnlinkIfExists(up);
    mqUnlinkIfExists(down);
    const held = () => readdirSync('/proc/self/fd').filter((fd) => {
      try { return readlinkSync('/proc/self/fd/' + fd) === down + ' (deleted)'; } catch { return false; }
    }).length;
    process.once('beforeExit', () => console.log('descriptors on the full queue at beforeExit: ' + held()));
  `);
  t.equal(r.code, 0, r.err);
  t.match(r.out, /descriptors on the full queue at beforeExit: 1/, 'the event loop emptied while the END lingered');
});

/** A hello to `listener` as its port hands it over (transports/sysvmq.ts onPortMessage, kind 1 HELLO). */
function helloTo(listener: ConnectionListener, fields: Record<string, unknown>): void {
  (listener as unknown as { onPortMessage(kind: number, payload: Uint8Array): void }).onPortMessage(1, pack({ shmbus: 1, proto: 1, max: MiB, id: 1, ...fields }));
}

/** Two private queues of this process (as a connector's inbound queue and port), removed when `t` ends. */
function ownQueues(t: TestLike): [number, number] {
  const ids = [msgGet(IPC_PRIVATE, IPC_CREAT | 0o600), msgGet(IPC_PRIVATE, IPC_CREAT | 0o600)] as [number, number];
  t.teardown(() => { for (const id of ids) msgRemoveIfExists(id); });
  return ids;
}

t.test('sysvmq: a hello whose packet size no System V message can have is refused', async (t) => {
  const l = await listen(sysvUrl());
  t.teardown(() => l.close());
  const errors: ShmbusError[] = [];
  l.on('error', (e: ShmbusError) => errors.push(e));
  const [q, port] = ownQueues(t);
  // Each packet this side would send that connector is a buffer of `packet` bytes.
  for (const packet of [2 ** 31, msgLimits().msgmax + 1, 1.5, 16]) {
    errors.length = 0;
    helloTo(l, { pid, start: String(processStartTime(pid)), q, port, packet });
    t.equal(errors[0]?.code, ErrorCode.HANDSHAKE, `packet ${packet}: ${errors[0]?.message}`);
  }
});

t.test('sysvmq: a hello naming queues its process did not make is refused, and nothing is sent to them', { skip: 'skip' in unprivileged ? unprivileged.skip : false }, async (t) => {
  const l = await listen(sysvUrl());
  t.teardown(() => l.close());
  const errors: ShmbusError[] = [];
  l.on('error', (e: ShmbusError) => errors.push(e));
  // Queues of ours (root), named by a hello that claims a living process of another user.
  const [q, port] = ownQueues(t);
  const other = startChild(t, [...('prefix' in unprivileged ? unprivileged.prefix : []), 'sleep', '1000']);
  await eventually(() => processEuid(other.pid) === NOBODY, 'the other user\'s process to run as that user');
  helloTo(l, { pid: other.pid, start: String(processStartTime(other.pid)), q, port, packet: 1024 });
  t.equal(errors[0]?.code, ErrorCode.PERMISSION_DENIED, `${errors[0]?.message}`);
  t.equal(msgStat(port).qnum, 0, 'no reply was put into the queue it named as its port');
  t.equal(msgStat(q).qnum, 0, 'nor anything into the one it named as its inbound queue');
});
