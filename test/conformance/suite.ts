// The transport contract (transports/contract.ts), checked the same way for every transport: each case opens a
// connection to a child process (test/fixtures/conn-peer.ts) and runs every requirement against it. After each
// test nothing of the transport may be left in the system, and no socket or pipe may stay open here.
//
// The cases run in groups, one test file per group (test/conformance/<group>.test.ts), so that tap runs them in
// parallel and times each on its own. A case missing from GROUPS runs with the 'streams' group: none is skipped.
//   CONFORMANCE=unix,tcp npx tap test/conformance/*.test.ts   runs only the named cases.
import t from 'tap';
import { stat } from 'node:fs/promises';
import { listen, connect, spawnWithPipe, ErrorCode, ShmbusError } from '../../index.js';
import { checkSeq, sendSequence, seqMessage } from '../fixtures/conn-peer.js';
import { eventually, fileTimeout } from '../helpers.js';
import { streamCases, cleanupStreamCases } from './cases-streams.js';
import { queueCases } from './cases-queues.js';
import {
  PEER, killAll, openSocketsAndPipes, reap, startPeer, within, withQuery, type ConformanceCase, type Peer, type Query,
} from './harness.js';

/** Which file runs which case. 'queues' shares the user's RLIMIT_MSGQUEUE with test/mq.test.ts (see .taprc). */
export const GROUPS: Record<string, 'shm' | 'sockets' | 'streams' | 'queues'> = {
  shm: 'shm', unix: 'sockets', 'unix-abstract': 'sockets', tcp: 'sockets', pipe: 'streams', fifo: 'streams',
  mq: 'queues', sysvmq: 'queues',
};

const MiB = 1024 * 1024;
/** A subtest's `t` (the last overload of t.test is `(cb: (t) => …)`). */
type Sub = Parameters<Parameters<typeof t.test>[0]>[0];

/**
 * Runs the suite for the cases of `group` (and, for 'streams', every case no group names). `seconds`: the file's
 * timeout per case (4x what one case takes; see the group files).
 */
export function runConformance(group: string, seconds: number): void {
  const only = process.env.CONFORMANCE?.split(',').filter(Boolean);
  const cases = [...streamCases, ...queueCases]
    .filter((c) => (GROUPS[c.name] ?? 'streams') === group)
    .filter((c) => !only || only.includes(c.name));
  fileTimeout(t, 30 + cases.length * seconds);
  t.teardown(async () => {
    await killAll();
    cleanupStreamCases();
  });
  for (const c of cases) conformance(c);
}

/** Recursively turns binary into plain arrays, so msgpack's Buffer and a Uint8Array compare equal. */
function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return { bin: Array.from(v) };
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

function codeOf(error: unknown): string | undefined {
  return error instanceof ShmbusError ? error.code : undefined;
}

/** The first line the peer prints (listen-wait prints its listener's URL). */
function firstLine(peer: Peer): Promise<string> {
  return peer.handle.line(/\S/);
}

/** Lets what was just started (a pending receive, a drain) reach its wait before the test goes on. */
const turn = () => new Promise((r) => setImmediate(r));

function conformance(c: ConformanceCase): void {
  /** A test that also checks nothing is left behind: the case's kernel objects, and our sockets and pipes. */
  const check = (name: string, body: (t: Sub, c: ConformanceCase) => Promise<void>) => t.test(`${c.name}: ${name}`, async (t) => {
    const before = c.leftovers();
    const fds = openSocketsAndPipes();
    // Every child this test starts is killed when it ends, passed or failed.
    const owned: ConformanceCase = { ...c, open: (mode, args, query) => c.open(mode, args, query, t) };
    await body(t, owned);
    t.same(c.leftovers(), before, 'nothing of the transport is left behind');
    t.equal(openSocketsAndPipes(), fds, 'no socket or pipe is left open here');
  });

  // One connection before anything is counted: process-wide resources a transport starts on first use (a
  // receive thread, a wakeup thread and their fds) belong to the process, not to a test.
  t.test(`${c.name}: warm-up`, async (t) => {
    const s = await c.open('echo', {}, {}, t);
    s.conn.send('warm');
    t.equal(await within(60_000, s.conn.receive(), () => `echo ${c.diagnose?.() ?? ''}`), 'warm');
    await s.close();
  });

  check('ordering: 100,000 messages arrive in order, none lost or duplicated', async (t, c) => {
    const N = 100_000;
    const s = await c.open('sequence', { count: N, back: 0 });
    await within(120_000, sendSequence(s.conn, N), () => `send ${c.diagnose?.() ?? ''}`);
    t.same(await within(120_000, s.conn.receive(), () => `verdict ${c.diagnose?.() ?? ''}`), { verdict: { received: N, bad: 0, firstBad: -1 } }, 'the peer got every message once, in order, intact');
    await s.close();
    t.equal(await s.peer.exit, 0, s.peer.stderr());
  });

  check('request/reply: concurrent requests, a timeout, a remote error', async (t, c) => {
    const s = await c.open('serve');
    const replies = await within(60_000, Promise.all(Array.from({ length: 1000 }, (_, n) => s.conn.request({ n }))), 'replies');
    t.same(replies, Array.from({ length: 1000 }, (_, n) => ({ doubled: n * 2 })), 'each reply reached its request');
    // The peer answers 300 ms after it got the request: the 20 ms timeout has fired by then, however slow.
    await t.rejects(s.conn.request({ n: 1, wait: 300 }, { timeout: 20 }), { code: ErrorCode.TIMEOUT });
    await t.rejects(s.conn.request({ n: 1, fail: true }), { code: ErrorCode.REMOTE });
    t.same(await s.conn.request({ n: 21 }), { doubled: 42 }, 'still working while a late reply is pending');
    // The peer's timers fire in order: once this 600 ms reply is here, the late one came before it and was dropped.
    t.same(await within(60_000, s.conn.request({ n: 4, wait: 600 }), 'a reply after the late one'), { doubled: 8 }, 'still working after a late reply was dropped');
    await s.close();
    t.equal(await s.peer.exit, 0, s.peer.stderr());
  });

  check('duplex: 100,000 messages each way at the same time', async (t, c) => {
    const N = 100_000;
    const s = await c.open('sequence', { count: N, back: N });
    const sending = sendSequence(s.conn, N);
    let received = 0, bad = 0;
    let verdict: unknown;
    await within(120_000, (async () => {
      for await (const m of s.conn) {
        if (received < N) {
          if (!checkSeq(m, received)) bad++;
          received++;
        } else {
          verdict = m;
          break;
        }
      }
    })(), 'receive');
    await sending;
    t.equal(received, N, 'every message the peer sent arrived');
    t.equal(bad, 0, 'in order and intact');
    t.same(verdict, { verdict: { received: N, bad: 0, firstBad: -1 } }, 'the peer got ours the same way');
    await s.close();
    t.equal(await s.peer.exit, 0, s.peer.stderr());
  });

  check('payloads from 0 bytes to the maximum, raw and msgpack, come back intact; max+1 is refused', async (t, c) => {
    const s = await c.open('echo');
    const conn = s.conn;
    const max = conn.maxMessageSize;
    t.ok(max >= MiB, `maxMessageSize ${max} is at least 1 MiB`);
    const sizes = [...new Set([0, 1, 7, 255, 4096, 65535, 65536 + 7, MiB, max])].filter((n) => n <= max);
    const fill = (n: number) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = (i * 31 + n) & 0xff; return b; };
    const values: unknown[] = [
      null, true, false, 0, -1, 2 ** 31, Number.MAX_SAFE_INTEGER, -(2 ** 40), 1.5, '', 'héllo wörld ✓', 'x'.repeat(100_000),
      [], [1, 'a', null, [2]], {}, { a: 1, nested: { b: [1, 2, { c: 'd' }] }, bin: new Uint8Array([0, 1, 2, 255]) },
      { big: 'y'.repeat(MiB - 64) },
    ];

    // max + 1: refused by every send flavour, nothing taken, the connection goes on.
    t.throws(() => conn.sendBytes(new Uint8Array(max + 1)), { code: ErrorCode.MESSAGE_TOO_LARGE }, 'sendBytes(max + 1)');
    t.throws(() => conn.trySendBytes(new Uint8Array(max + 1)), { code: ErrorCode.MESSAGE_TOO_LARGE }, 'trySendBytes(max + 1)');
    t.throws(() => conn.send({ b: new Uint8Array(max) }), { code: ErrorCode.MESSAGE_TOO_LARGE }, 'send(a value encoding to more than max)');
    t.equal(conn.queued, 0, 'nothing was taken');

    // Values first, raw sizes after: the values are checked once all the rest arrived, so a value that
    // still points into the transport's buffers (a ring, a reused read buffer) shows up overwritten.
    const sending = (async () => {
      for (const v of values) if (!conn.send(v)) await conn.drained();
      for (const n of sizes) if (!conn.sendBytes(fill(n))) await conn.drained();
    })();
    const got: unknown[] = [];
    for (const _ of values) got.push(await within(60_000, conn.receive(), 'echo of a value'));
    for (const n of sizes) {
      const m = await within(60_000, conn.receive(), `echo of ${n} bytes`);
      t.ok(m instanceof Uint8Array && m.length === n && Buffer.compare(m, fill(n)) === 0, `${n} raw bytes came back intact`);
    }
    values.forEach((v, i) => {
      const label = `msgpack ${JSON.stringify(v)?.slice(0, 40)}`;
      if (v && typeof v === 'object' && 'bin' in v) t.same(plain(got[i]), plain(v), `${label}: binary inside a value stays intact after later traffic`);
      else t.same(plain(got[i]), plain(v), label);
    });
    await sending;
    await s.close();
    t.equal(await s.peer.exit, 0, s.peer.stderr());
  });

  check("conn.on('message') hands over every message in order; removing the listener stops it", async (t, c) => {
    const N = 5000;
    const s = await c.open('echo');
    const got: number[] = [];
    let resolveAll!: () => void;
    const all = new Promise<void>((resolve) => { resolveAll = resolve; });
    const onMessage = (m: unknown) => {
      got.push((m as { n: number }).n);
      if (got.length === N) {
        // Removed from inside a dispatch: nothing more is emitted, the next message waits for receive().
        s.conn.off('message', onMessage);
        resolveAll();
      }
    };
    s.conn.on('message', onMessage);
    const sending = (async () => {
      for (let n = 0; n < N; n++) if (!s.conn.send({ n })) await s.conn.drained();
    })();
    await within(60_000, all, "every echo through 'message'");
    await sending;
    t.same(got, Array.from({ length: N }, (_, n) => n), 'every message once, in order');
    s.conn.send({ n: -1 });
    t.same(await within(60_000, s.conn.receive(), 'receive after off'), { n: -1 }, 'after off() the iterator gets the next message');
    t.equal(got.length, N, 'nothing went to the removed listener');
    await s.close();
    t.equal(await s.peer.exit, 0, s.peer.stderr());
  });

  check('back-pressure: a slow reader keeps memory bounded and the queue within maxQueued', async (t, c) => {
    const maxQueued = 32, size = 16 * 1024, count = 4000; // 64 MiB through a reader that sleeps 10 ms per 100
    const s = await c.open('slow', { count, every: 100, ms: 10, size }, { maxQueued });
    t.equal(s.conn.maxQueued, maxQueued, 'maxQueued from the URL');
    const payload = new Uint8Array(size);
    let falseReturns = 0, maxSeen = 0;
    await within(120_000, (async () => {
      for (let i = 0; i < count; i++) {
        payload[0] = i & 0xff;
        if (!s.conn.sendBytes(payload)) {
          falseReturns++;
          maxSeen = Math.max(maxSeen, s.conn.queued);
          await s.conn.drained();
        }
      }
    })(), 'send');
    const { verdict } = await within(120_000, s.conn.receive(), 'verdict') as { verdict: { received: number; bad: number; maxLive: number } };
    t.equal(verdict.received, count, 'the slow reader got every message');
    t.equal(verdict.bad, 0);
    t.ok(verdict.maxLive < 16 * MiB, `the reader held at most ${(verdict.maxLive / MiB).toFixed(1)} MiB of the 64 MiB sent`);
    t.ok(falseReturns > 0, `send said wait ${falseReturns} times`);
    t.ok(maxSeen <= maxQueued, `the local queue stayed within maxQueued (max ${maxSeen})`);
    await s.close();
    t.equal(await s.peer.exit, 0, s.peer.stderr());
  });

  check('orderly close is seen by the peer, both ways, after every message', async (t, c) => {
    const a = await c.open('send-close', { count: 1000 });
    let received = 0, bad = 0;
    await within(60_000, (async () => {
      for await (const m of a.conn) { if (!checkSeq(m, received)) bad++; received++; }
    })(), 'the iterator ends');
    t.equal(received, 1000, 'our iterator ended after the peer\'s last message');
    t.equal(bad, 0);
    t.throws(() => a.conn.send(1), { code: ErrorCode.CLOSED }, 'sending to a closed peer is CLOSED');
    await a.close();
    t.equal(await a.peer.exit, 0, a.peer.stderr());

    // 100,000 messages (~16 MiB: more than a default shm ring or a loopback socket's buffers) taken at once, most of them waiting in the local
    // queue: close() must deliver every one before it closes.
    // The peer reads nothing until told (a line on its stdin), so whatever the kernel cannot buffer has to wait here. (A peer
    // that started reading after a fixed delay drained a TCP connection as fast as a busy machine filled it.)
    const b = await c.open('expect-close', { count: 100_000 }, { maxQueued: 200_000 });
    await within(60_000, b.peer.handle.line('waiting'), 'the peer to wait');
    for (let seq = 0; seq < 100_000; seq++) {
      const m = seqMessage(seq);
      if (m.bytes) b.conn.sendBytes(m.bytes); else b.conn.send(m.value);
    }
    t.ok(b.conn.queued > 0, `${b.conn.queued} messages wait in the local queue`);
    b.peer.child.stdin!.write('go\n');
    await within(120_000, b.conn.close(), 'close');
    t.equal(await within(60_000, reap(b.peer), 'peer exit'), 0, `the peer saw all 100,000 messages, then the end: ${b.peer.stderr()}`);
    await b.close();
  });

  check('destroy() ends at once toward a peer that reads nothing; what waited locally is given up with CLOSED', async (t, c) => {
    // The same peer as the orderly close above: it reads nothing until told, so close() would wait for it.
    const count = 100_000;
    const before = c.leftovers();
    const s = await c.open('expect-close', { count }, { maxQueued: 200_000 });
    await within(60_000, s.peer.handle.line('waiting'), 'the peer to wait');
    for (let seq = 0; seq < count; seq++) {
      const m = seqMessage(seq);
      if (m.bytes) s.conn.sendBytes(m.bytes); else s.conn.send(m.value);
    }
    t.ok(s.conn.queued > 0, `${s.conn.queued} messages wait in the local queue`);
    const drained = s.conn.drained().then(() => 'drained', (e: unknown) => codeOf(e));
    const closing = s.conn.close().then(() => 'closed');
    await turn();
    await within(30_000, s.conn.destroy(), 'destroy() while the peer reads nothing');
    t.equal(await within(30_000, closing, 'the close() under way'), 'closed', 'a close() under way ends with it');
    t.equal(await drained, ErrorCode.CLOSED, 'drained() rejects with CLOSED');
    t.throws(() => s.conn.send(1), { code: ErrorCode.CLOSED }, 'a later send is CLOSED');
    // The peer gets what the transport had taken, then the end (or a typed error where the end marker did not fit).
    s.peer.child.stdin!.write('go\n');
    const exit = await within(60_000, reap(s.peer), 'peer exit');
    const said = s.peer.stderr();
    const got = /received (\d+) of \d+, 0 bad/.exec(said);
    t.ok((exit === 2 && got && Number(got[1]) < count) || (exit === 3 && /^ERR_SHMBUS_(CLOSED|PEER_DEAD) /.test(said)),
      `the peer read what had been taken, in order, then the end or a typed error (exit ${exit}: ${said.trim()})`);
    await s.close();
    // A queue connection whose END did not fit let go of its queues once the END went or the peer died, on its own
    // time after destroy() resolved: the check that nothing is left waits for that.
    await eventually(() => JSON.stringify(c.leftovers()) === JSON.stringify(before), 'the destroyed connection to let go of its queues');
  });

  check('peer killed with SIGKILL: the reader gets PEER_DEAD (or the end)', async (t, c) => {
    const s = await c.open('hang');
    t.same(await within(60_000, s.conn.receive(), 'ready'), { ready: true });
    const pending = s.conn.receive().then((value) => ({ value }), (error: unknown) => ({ error }));
    await turn();
    s.peer.child.kill('SIGKILL');
    // Any delay is fine; never noticing is the failure (the watchdog turns that hang into one).
    const r = await within(30_000, pending, 'the reader after the kill');
    if ('error' in r) t.equal(codeOf(r.error), ErrorCode.PEER_DEAD, 'PEER_DEAD');
    else t.equal(r.value, undefined, 'end of stream');
    let sendError: unknown;
    try { s.conn.send(1); } catch (error) { sendError = error; }
    t.ok([ErrorCode.PEER_DEAD, ErrorCode.CLOSED].includes(codeOf(sendError) as never), `a later send throws (${codeOf(sendError)})`);
    await s.close();
  });

  check('peer killed while we wait to send: QUEUE_FULL past maxQueued, then drained() rejects', async (t, c) => {
    const maxQueued = 8;
    const s = await c.open('hang', {}, { maxQueued });
    t.same(await within(60_000, s.conn.receive(), 'ready'), { ready: true });
    const chunk = new Uint8Array(64 * 1024);
    // Fill until the kernel takes nothing more: its buffers may grow (TCP autotuning), so a queue that drains
    // within 200 ms is filled again.
    let drained: Promise<unknown> | undefined;
    for (let round = 0; round < 200 && !drained; round++) {
      let full: unknown;
      for (let i = 0; i < 100_000 && !full; i++) {
        try { s.conn.sendBytes(chunk); } catch (error) { full = error; }
      }
      if (round === 0) {
        t.equal(codeOf(full), ErrorCode.QUEUE_FULL, 'send throws QUEUE_FULL once maxQueued messages wait');
        t.equal(s.conn.queued, maxQueued, 'the queue holds exactly maxQueued');
      }
      const waiting = s.conn.drained().then(() => 'drained', (error: unknown) => error);
      // A guess only (the queue may drain later on a slow machine): what follows holds either way.
      if (await Promise.race([waiting, new Promise((r) => setTimeout(r, 200)).then(() => 'stuck')]) === 'stuck') drained = waiting;
    }
    if (!drained) throw new Error('the kernel never stopped taking messages from a peer that does not read');
    s.peer.child.kill('SIGKILL');
    // If the queue still drained before the peer died, fill it again: the dead peer must turn that into an error.
    const r = await within(60_000, (async () => {
      let outcome = await drained;
      while (outcome === 'drained') {
        try {
          while (s.conn.sendBytes(chunk)) { /* the kernel still takes */ }
        } catch (error) {
          if (codeOf(error) !== ErrorCode.QUEUE_FULL) return error;
        }
        outcome = await s.conn.drained().then(() => 'drained', (error: unknown) => error);
      }
      return outcome;
    })(), 'drained() after the kill');
    t.ok([ErrorCode.PEER_DEAD, ErrorCode.CLOSED].includes(codeOf(r) as never), `drained() rejects with a typed error (${codeOf(r) ?? String(r)})`);
    await s.close();
  });

  check('receiving never starves the event loop: a timer fires while messages stream in', async (t, c) => {
    const s = await c.open('flood', { count: 20_000_000 });
    // The peer says when the kernel's (or the ring's) buffer is full: from then on the reader never finds it empty.
    await s.peer.handle.line('full');
    let timerFired = false;
    let received = 0;
    setTimeout(() => { timerFired = true; }, 5);
    await within(60_000, (async () => {
      for await (const _ of s.conn) {
        received++;
        if (timerFired) break;
      }
    })(), 'the timer');
    t.ok(timerFired, `a 5 ms timer fired while ${received} messages streamed in`);
    t.ok(received < 20_000_000, 'before the stream ended');
    s.peer.child.kill('SIGKILL');
    await s.close();
  });

  check('waiting to receive holds no libuv threadpool thread: fs answers with 5 idle connections open', async (t, c) => {
    // The pool has 4 threads (UV_THREADPOOL_SIZE); a transport that parks one per waiting receive starves fs.
    const opened = await Promise.allSettled(Array.from({ length: 5 }, () => c.open('hang')));
    const sessions = opened.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
    const failed = opened.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failed) {
      for (const s of sessions) s.peer.child.kill('SIGKILL');
      await Promise.all(sessions.map((s) => s.close()));
      throw failed.reason;
    }
    for (const s of sessions) t.same(await within(60_000, s.conn.receive(), 'ready'), { ready: true });
    const waits = sessions.map((s) => s.conn.receive().catch(() => undefined));
    await turn();
    // A waiting receive that held a pool thread would hold it until its message came: fs would never answer.
    await within(30_000, Promise.all(Array.from({ length: 8 }, () => stat('/'))), 'fs.stat while 5 receives wait');
    t.pass('8 fs.stat calls answered while 5 receives wait');
    for (const s of sessions) s.peer.child.kill('SIGKILL');
    await Promise.all(waits);
    await Promise.all(sessions.map((s) => s.close()));
  });

  check('bad URLs, unsupported options and missing endpoints are typed errors', async (t, c) => {
    for (const url of c.badUrls) {
      await t.rejects(listen(url), { code: ErrorCode.BAD_URL }, `listen ${url}`);
      await t.rejects(connect(url), { code: ErrorCode.BAD_URL }, `connect ${url}`);
    }
    for (const query of [{ bogus: 1 }, { maxQueued: 'lots' }, { maxQueued: -1 }] as Query[]) {
      const url = c.url(query);
      await t.rejects(listen(url), { code: ErrorCode.BAD_URL }, `listen ${url}`);
      await t.rejects(connect(url), { code: ErrorCode.BAD_URL }, `connect ${url}`);
    }
    if (c.listens) {
      const idle = await c.idleUrl();
      await t.rejects(connect(idle), { code: ErrorCode.NOT_FOUND }, `connect to ${idle}, where nobody listens`);
      const l = await listen(c.url());
      await t.rejects(listen(l.url), { code: ErrorCode.EXISTS }, 'a second listener on the same endpoint');
      await l.close();
    } else {
      t.throws(() => spawnWithPipe(PEER, [], { url: withQuery(c.url(), { bogus: 1 }) }), { code: ErrorCode.BAD_URL }, 'spawnWithPipe with an unsupported option');
      await t.rejects(connect(withQuery(c.url(), { in: 900, out: 901 })), { code: ErrorCode.NOT_FOUND }, 'connect without inherited pipes');
    }
  });

  if (c.listens) {
    check('closing the listener leaves handed-out connections open and working', async (t, c) => {
      const s = await c.open('echo');
      const closed = await within(30_000, s.listener!.close(), 'listener.close()').then(() => 'closed', () => 'still waiting');
      t.equal(closed, 'closed', 'listener.close() returned while a connection is open');
      s.conn.send({ after: 'listener closed' });
      t.same(await within(60_000, s.conn.receive(), 'echo'), { after: 'listener closed' }, 'the connection still works');
      await s.close();
      t.equal(await s.peer.exit, 0, s.peer.stderr());
    });

    check('two acceptNext() waiting at once each get a connection, in the order they were made', async (t, c) => {
      // Both wait before anyone connects: a listener that kept one waiter would leave the first one hanging.
      // One process connects twice, the second once the first connect() resolved: accepted in that order, as a Unix
      // socket's accept queue has them (a listener that offers a connection when it reads the connector's last
      // handshake message could read the second's first one before it).
      const l = await listen(c.url());
      const opened: { close(): Promise<void> }[] = [];
      // Closed whatever happens, so a failure here does not keep the file waiting on open connections.
      t.teardown(() => Promise.all(opened.map((x) => x.close().catch(() => {}))).then(() => l.close()));
      const first = l.acceptNext();
      const second = l.acceptNext();
      const a = await within(60_000, connect(l.url), 'first connect');
      opened.push(a);
      const b = await within(60_000, connect(l.url), 'second connect');
      opened.push(b);
      void first.then((x) => x && opened.push(x));
      void second.then((x) => x && opened.push(x));
      const accepted = await within(30_000, Promise.all([first, second]), 'both acceptNext()');
      t.ok(accepted[0] && accepted[1] && accepted[0] !== accepted[1], 'two different connections');
      a.send('to the first');
      b.send('to the second');
      const got = await Promise.all(accepted.map((conn) => within(30_000, conn!.receive(), 'receive')));
      t.same(got, ['to the first', 'to the second'], 'the first accepted is the first made');
      await Promise.all(opened.map((x) => x.close()));
      await l.close();
    });

    check('maxConnections: a connector past it is refused, and a connection that closed frees its place', async (t, c) => {
      const l = await listen(c.url(), { maxConnections: 1 });
      const opened: { close(): Promise<void> }[] = [];
      t.teardown(() => Promise.all(opened.map((x) => x.close().catch(() => {}))).then(() => l.close()));
      const a = await within(60_000, connect(l.url), 'first connect');
      opened.push(a);
      const taken = (await within(30_000, l.acceptNext(), 'the first connection'))!;
      opened.push(taken);
      // shm, fifo, mq, sysvmq: connect() fails with LIMIT; unix, tcp: the kernel queued the connection, and the
      // listener closes it before reading a byte, so it ends at once.
      const second = await within(60_000, connect(l.url).then(async (conn) => {
        opened.push(conn);
        return conn.receive().then(() => 'ended', (e: unknown) => (codeOf(e) === ErrorCode.PEER_DEAD ? 'ended' : codeOf(e)));
      }, (e: unknown) => codeOf(e)), 'the second connect');
      t.ok(second === ErrorCode.LIMIT || ((c.name.startsWith('unix') || c.name.startsWith('tcp')) && second === 'ended'), `the second is refused (${second})`);
      a.send('still here');
      t.equal(await within(30_000, taken.receive(), 'the first connection\'s message'), 'still here', 'the first connection goes on');
      await a.close();
      await taken.close();
      const b = await within(60_000, connect(l.url), 'a connect once the first closed');
      opened.push(b);
      const next = (await within(30_000, l.acceptNext(), 'the next connection'))!;
      opened.push(next);
      b.send('in its place');
      t.equal(await within(30_000, next.receive(), 'its message'), 'in its place', 'a connection in the freed place works');
      await Promise.all(opened.map((x) => x.close()));
      await l.close();
    });

    check('the endpoint is removed at normal exit; one left by a killed listener does not block the next', async (t, c) => {
      const before = c.leftovers();
      const url = c.url();
      const p = startPeer(url, 'listen-wait', {}, 'pipe', t);
      await firstLine(p);
      if (c.endpointVisible) t.not(c.leftovers().length, before.length, 'the endpoint exists while the child listens');
      p.child.stdin!.end();
      t.equal(await reap(p), 0, p.stderr());
      t.same(c.leftovers(), before, 'the child removed its endpoint when it exited without closing');

      const k = startPeer(url, 'listen-wait', {}, 'pipe', t);
      const listenedAt = await firstLine(k);
      k.child.kill('SIGKILL');
      await k.exit;
      const l = await within(60_000, listen(listenedAt), 'listen where a killed listener was');
      const conn = await within(60_000, connect(l.url), 'connect to the new listener');
      const accepted = await l.acceptNext();
      conn.send('hi');
      t.equal(await accepted!.receive(), 'hi', 'the new listener works');
      await conn.close();
      await accepted!.close();
      await l.close();
    });
  }
}
