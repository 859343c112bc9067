// Topics under a hostile peer: scribbled positions give typed CORRUPT errors (never a wasm trap), nested polls
// keep their batches, and handlers that close what they poll touch nothing freed. The full-speed lossy runs are in
// topic-stress.test.ts.
import t from 'tap';
import fc from 'fast-check';
import {
  TOPIC_HEADER_OFFSET, TOPIC_TAIL_OFFSET, TOPIC_TAIL_SEQ_OFFSET, TOPIC_HEAD_OFFSET, TOPIC_HEAD_SEQ_OFFSET,
  TOPIC_RECLAIM_GEN_OFFSET, TOPIC_HEADER_SIZE, TOPIC_SLOT_SIZE, SLOT_CURSOR_OFFSET, BC_BATCH_ENTRY_SIZE,
  topicDataOffset,
} from '../../assembly/layout.js';
import { TopicWriter, type Policy } from '../../host/topic.js';
import { Bus } from '../../bus/index.js';
import { ErrorCode, ShmbusError } from '../../host/errors.js';
import { fileTimeout, scaled, unique, within } from '../helpers.js';
import { engine, makeTopic as makeArenaTopic, publish as publishArena } from '../topic-arena.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 60, 10);

const CAP = 1024;
const SUBS = 4;
const makeTopic = (policy: Policy, history = 0) => makeArenaTopic(CAP, SUBS, policy, history);
const publish = (pub: TopicWriter, n: number, len = 24) => publishArena(pub, n, len);

/** Every outcome of a call on scribbled memory must be a value or a typed shmbus error; anything else fails. */
function typedOnly(fn: () => unknown): void {
  try {
    fn();
  } catch (error) {
    if (!(error instanceof ShmbusError)) throw error;
  }
}

t.test('a misaligned head on a lossy topic is CORRUPT for a lapped subscriber, not a wasm trap', async (t) => {
  const topic = makeTopic('lossy');
  const r = topic.join();
  for (let n = 0; n < 200; n++) publish(topic.pub, n);
  // The finding: head = a position near the end of the data, off the 16-byte grid; the reader used to load a
  // record header straddling the end of the data and trap.
  const tail = new DataView(engine.memory.buffer).getBigUint64(topic.at + TOPIC_HEADER_OFFSET + TOPIC_TAIL_OFFSET, true);
  topic.word64(TOPIC_HEAD_OFFSET, tail - 3n);
  t.throws(() => r.read(), { code: ErrorCode.CORRUPT });
  topic.dispose();
});

t.test('each peer-written position, scribbled, gives a typed error or a valid read: never a trap', async (t) => {
  const offsets = [TOPIC_TAIL_OFFSET, TOPIC_TAIL_SEQ_OFFSET, TOPIC_HEAD_OFFSET, TOPIC_HEAD_SEQ_OFFSET];
  const values = [1n, 3n, 8n, 15n, 0xfffn, 0x7fffffffn, 0xffffffffn, 0xfffffffffffffff0n, 0xffffffffffffffffn, BigInt(CAP) * 4n + 7n];
  let calls = 0;
  for (const policy of ['lossy', 'lossless'] as Policy[]) {
    for (const offset of offsets) {
      for (const value of values) {
        const topic = makeTopic(policy);
        const r = topic.join();
        for (let n = 0; n < 100; n++) if (!publish(topic.pub, n)) { r.read(); r.release(); }
        topic.word64(offset, value);
        typedOnly(() => { r.read(); r.release(); });
        typedOnly(() => topic.join());
        typedOnly(() => topic.join(true));
        typedOnly(() => publish(topic.pub, 1000));
        typedOnly(() => r.pending());
        calls += 5;
        topic.dispose();
      }
    }
  }
  t.ok(calls > 0);
});

t.test('fuzz: random bytes in the topic header, a cursor and the records give typed errors only', async (t) => {
  const runs = scaled(20_000, 300);
  fc.assert(fc.property(
    fc.constantFrom<Policy>('lossy', 'lossless'),
    fc.array(fc.record({ where: fc.nat(1 << 16), value: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }), { minLength: 1, maxLength: 6 }),
    fc.boolean(),
    (policy, scribbles, stripedRecords) => {
      const topic = makeTopic(policy, policy === 'lossy' ? 2 : 0);
      try {
        const r = topic.join();
        for (let n = 0; n < 60; n++) if (!publish(topic.pub, n, 8 + (n % 40))) { r.read(); r.release(); }
        const view = new DataView(engine.memory.buffer);
        const targets = [TOPIC_TAIL_OFFSET, TOPIC_TAIL_SEQ_OFFSET, TOPIC_HEAD_OFFSET, TOPIC_HEAD_SEQ_OFFSET, TOPIC_RECLAIM_GEN_OFFSET - 4];
        for (const s of scribbles) {
          if (stripedRecords) {
            // Somewhere in the data (8-byte aligned, inside the segment).
            const data = topic.at + topicDataOffset(SUBS);
            view.setBigUint64(data + ((s.where * 8) % CAP), s.value, true);
          } else if (s.where % 7 === 0) {
            const slot = topic.at + TOPIC_HEADER_OFFSET + TOPIC_HEADER_SIZE + (s.where % SUBS) * TOPIC_SLOT_SIZE;
            view.setBigUint64(slot + SLOT_CURSOR_OFFSET, s.value, true);
          } else {
            topic.word64(targets[s.where % targets.length]!, s.value);
          }
        }
        typedOnly(() => { r.read(); r.release(); });
        typedOnly(() => { r.read(); r.release(); });
        typedOnly(() => topic.join());
        typedOnly(() => topic.join(true));
        for (let n = 0; n < 40; n++) typedOnly(() => publish(topic.pub, n, 8 + (n % 40)));
        typedOnly(() => { r.read(); r.release(); });
      } finally {
        topic.dispose();
      }
    },
  ), { numRuns: runs });
  t.pass(`${runs} cases`);
});

t.test('ring_free on an impossible head is CORRUPT, so a waiting writer fails instead of parking forever', async (t) => {
  const { RingEnd } = await import('../../host/ring.js');
  const { RING_HEAD_OFFSET } = await import('../../assembly/layout.js');
  const cap = 4096;
  const at = engine.allocWindow(8192);
  engine.u8.fill(0, at, at + 8192);
  RingEnd.format(engine, at, cap);
  const producer = new RingEnd(engine, at, cap, 'producer');
  t.equal(producer.free(), cap);
  for (const head of [8n, 4n, 0xfffffffffffffff8n, BigInt(cap) * 2n]) {
    new DataView(engine.memory.buffer).setBigUint64(at + RING_HEAD_OFFSET, head, true);
    t.throws(() => producer.free(), { code: ErrorCode.CORRUPT }, `head=${head}`);
    t.equal(producer.park(64), false, 'park does not sleep on a corrupt head');
  }
  producer.dispose();
  engine.freeWindow(at, 8192);
});

t.test('a poll handler that polls another topic (or its own) does not clobber the outer batch', async (t) => {
  const a = makeTopic('lossless');
  const b = makeTopic('lossless');
  const ra = a.join();
  const rb = b.join();
  for (let n = 0; n < 20; n++) { publish(a.pub, n); publish(b.pub, 1000 + n); }
  const outer: number[] = [];
  const inner: number[] = [];
  const n = ra.read();
  t.equal(n, 20);
  const batch = ra.batch;
  for (let i = 0; i < n; i++) {
    // Read the descriptor only now, after the nested reads of earlier iterations.
    const view = new DataView(engine.memory.buffer);
    const addr = view.getUint32(batch + i * BC_BATCH_ENTRY_SIZE, true);
    outer.push(view.getUint32(addr, true));
    if (i === 0) {
      t.equal(ra.read(), 0, 'a nested read of the same reader hands out nothing twice');
      const m = rb.read();
      for (let j = 0; j < m; j++) {
        const e = rb.batch + j * BC_BATCH_ENTRY_SIZE;
        inner.push(view.getUint32(view.getUint32(e, true), true));
      }
      rb.release();
    }
  }
  ra.release();
  t.same(outer, Array.from({ length: 20 }, (_, i) => i));
  t.same(inner, Array.from({ length: 20 }, (_, i) => 1000 + i));
  a.dispose();
  b.dispose();
});

t.test('Subscription.poll nested in a poll handler (another topic and the same one) keeps both batches', async (t) => {
  const url = `shm://${unique('nest')}`;
  const bus = await Bus.open(url);
  t.teardown(() => bus.destroy());
  const pa = bus.publisher('a', { capacity: 4096 });
  const pb = bus.publisher('b', { capacity: 4096 });
  const sa = bus.subscribe('a');
  const sb = bus.subscribe('b');
  for (let n = 0; n < 10; n++) { pa.publishBytes(Uint8Array.of(n)); pb.publishBytes(Uint8Array.of(100 + n)); }
  const outer: number[] = [];
  const inner: number[] = [];
  let nestedSame = -1;
  sa.poll((mem, off) => {
    outer.push(mem[off]!);
    if (outer.length === 1) {
      nestedSame = sa.poll(() => { throw new Error('records handed out twice'); });
      sb.poll((m2, o2) => { inner.push(m2[o2]!); });
    }
  });
  t.same(outer, Array.from({ length: 10 }, (_, i) => i));
  t.same(inner, Array.from({ length: 10 }, (_, i) => 100 + i));
  t.equal(nestedSame, 0);
  // The outer batch was released: nothing is left, and later polls work.
  pa.publishBytes(Uint8Array.of(42));
  const later: number[] = [];
  sa.poll((m, o) => later.push(m[o]!));
  t.same(later, [42]);
});

t.test('a poll handler that closes its own subscription or channel leaves no freed handle touched', async (t) => {
  const url = `shm://${unique('closein')}`;
  const bus = await Bus.open(url);
  t.teardown(() => bus.destroy());
  const pub = bus.publisher('a', { capacity: 4096 });
  const victim = bus.subscribe('a');
  const witness = bus.subscribe('a');
  for (let n = 0; n < 5; n++) pub.publishBytes(Uint8Array.of(n));
  let calls = 0;
  t.equal(victim.poll(() => { if (calls++ === 0) void victim.close(); }), 5, 'the batch is still handed over');
  // The witness's handle may be the one the victim's freed handle is reused for: it must be intact.
  const seen: number[] = [];
  witness.poll((m, o) => seen.push(m[o]!));
  t.same(seen, [0, 1, 2, 3, 4]);
  t.equal(witness.dropped, 0);
  const { listen, connect } = await import('../../index.js');
  const chUrl = `shm://${unique('closech')}` as const;
  const listener = await listen(chUrl);
  t.teardown(() => listener.close());
  const accepted = (async () => { for await (const c of listener) return c; return undefined; })();
  const client = await connect(chUrl);
  const server = (await accepted)!;
  t.teardown(async () => { await client.close().catch(() => {}); await server.close().catch(() => {}); });
  for (let n = 0; n < 3; n++) client.sendBytes(Uint8Array.of(n));
  await within(10_000, server.readable(), 'records to arrive');
  let got = 0;
  server.poll(() => { if (got++ === 0) void server.close(); });
  t.equal(got, 3, 'every record of the batch handed over after the close');
});

t.test('a lossless publisher whose queued messages meet a scribbled record fails drained() with CORRUPT (no unhandled rejection)', async (t) => {
  const url = `shm://${unique('pubfail')}`;
  const bus = await Bus.open(url);
  t.teardown(() => bus.destroy());
  const pub = bus.publisher('a', { capacity: 4096, maxSubscribers: SUBS });
  const sub = bus.subscribe('a'); // never reads: holds the lossless publisher
  let n = 0;
  while (pub.publishBytes(new Uint8Array(100))) n++;
  t.ok(n > 0 && pub.queued === 1, `${n} published, then one queued`);
  const at = (pub as unknown as { mapped: { at: number } }).mapped.at;
  // The oldest record (at head, data index 0) gets an impossible length: reclaiming past it cannot be right.
  new DataView(engine.memory.buffer).setInt32(at + topicDataOffset(SUBS), 0x7fffffff, true);
  await sub.close(); // the publisher may now reclaim, and meets the scribbled record
  const result = await within(30_000, pub.drained().then(() => 'drained', (e: unknown) => e), 'drained() to settle');
  t.match(result, { code: ErrorCode.CORRUPT });
  t.throws(() => pub.publishBytes(Uint8Array.of(1)), { code: ErrorCode.CORRUPT }, 'later publishes fail the same way');
});
