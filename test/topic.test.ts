// Byte-level tests of the broadcast ring over plain wasm memory: one publisher, several subscribers.
import t from 'tap';
import { RECORD_BYTES, TOPIC_HEADER_OFFSET, TOPIC_TAIL_OFFSET, TOPIC_RECLAIM_GEN_OFFSET, BC_BATCH_ENTRY_SIZE, topicBytes, topicMaxPayload } from '../assembly/layout.js';
import { formatTopic, readTopicState, TopicReader, TopicWriter, type Policy } from '../host/topic.js';
import { ErrorCode } from '../host/errors.js';
import { fileTimeout } from './helpers.js';
import { engine, makeTopic as makeArenaTopic, publish as publishArena } from './topic-arena.js';

// Measured on a busy 2-core machine (load 10-20): ~10 s, mostly loading. Timeout: 4x that, at least tap's 60 s.
fileTimeout(t, 60);

const CAP = 4096;
const SUBS = 8;
const makeTopic = (policy: Policy, history = 0) => makeArenaTopic(CAP, SUBS, policy, history);
const publish = (pub: TopicWriter, n: number, len = 100) => publishArena(pub, n, len);

/** Reads everything; returns the numbers found in the payloads (lossy batches are validated). */
function drain(r: TopicReader): number[] {
  const got: number[] = [];
  for (;;) {
    const n = r.read();
    if (n === 0) break;
    const view = new DataView(engine.memory.buffer);
    const batch: { value: number; seq: number }[] = [];
    for (let i = 0; i < n; i++) {
      const e = engine.batch + i * BC_BATCH_ENTRY_SIZE;
      const addr = view.getUint32(e, true);
      batch.push({ value: view.getUint32(addr, true), seq: view.getUint32(e + 12, true) });
    }
    const oldest = r.oldestSeq();
    let torn = 0;
    for (const b of batch) {
      if (((b.seq - oldest) | 0) < 0) torn++;
      else got.push(b.value);
    }
    if (torn) r.addDropped(torn);
  }
  r.release();
  return got;
}

t.test('every subscriber of a lossless topic gets every record in order', async (t) => {
  const topic = makeTopic('lossless');
  const readers = [topic.join(), topic.join(), topic.join()];
  const got: number[][] = readers.map(() => []);
  let next = 0;
  for (let round = 0; round < 200; round++) {
    while (publish(topic.pub, next)) next++;
    // A full lossless topic is held by the slowest subscriber.
    t.equal(topic.pub.slowest() >= 0, true);
    readers.forEach((r, i) => got[i]!.push(...drain(r)));
  }
  for (const g of got) t.same(g, Array.from({ length: next }, (_, i) => i));
  t.ok(next > 1000);
  topic.dispose();
});

t.test('a lossless publisher waits for the slowest subscriber, and eviction frees it', async (t) => {
  const topic = makeTopic('lossless');
  const fast = topic.join();
  const slow = topic.join();
  let n = 0;
  while (publish(topic.pub, n)) n++;
  drain(fast);
  t.notOk(publish(topic.pub, n), 'slow subscriber holds the publisher');
  t.equal(topic.pub.slowest(), slow.slot);
  t.ok(topic.pub.evict(slow.slot), 'evicted');
  t.notOk(slow.member(), 'the evicted subscriber knows');
  t.ok(publish(topic.pub, n), 'publisher free again');
  t.same(drain(fast), [n]);
  topic.dispose();
});

t.test('lossy: the publisher never waits; a lapped subscriber skips and counts exactly what it lost', async (t) => {
  const topic = makeTopic('lossy');
  const r = topic.join();
  const perRing = Math.floor(CAP / (100 + 16 + 4)); // ~34 records of 120 bytes
  let n = 0;
  for (; n < perRing * 5; n++) t.ok(publish(topic.pub, n) || true);
  const got = drain(r);
  t.ok(got.length > 0 && got.length < n, `got ${got.length} of ${n}`);
  t.equal(got.length + r.dropped, n, 'received + dropped = published');
  t.same(got, Array.from({ length: got.length }, (_, i) => n - got.length + i), 'the newest records, in order');
  topic.dispose();
});

t.test('history: a late joiner from earliest gets exactly the last K', async (t) => {
  for (const policy of ['lossless', 'lossy'] as Policy[]) {
    const topic = makeTopic(policy, 5);
    for (let i = 0; i < 3; i++) publish(topic.pub, i);
    const first = topic.join(true);
    t.same(drain(first), [0, 1, 2], `${policy}: fewer than K published: all of them`);
    first.dispose(); // leaves its slot: it would hold a lossless publisher otherwise
    const early = topic.join(false);
    for (let i = 3, stuck = 0; i < 500; i++) {
      if (!publish(topic.pub, i)) {
        drain(early);
        i--;
        if (++stuck > 1000) throw new Error('publisher stuck');
      }
    }
    drain(early);
    t.same(drain(topic.join(true)), [495, 496, 497, 498, 499], `${policy}: the last 5`);
    t.same(drain(topic.join(false)), [], `${policy}: from latest: nothing old`);
    topic.dispose();
  }
});

t.test('records of every size wrap correctly (regression: an 8-byte gap at the end could not hold a padding header)', async (t) => {
  const topic = makeTopic('lossless');
  const readers = [topic.join(), topic.join()];
  let next = 0;
  const got: number[][] = [[], []];
  for (let round = 0; round < 3000; round++) {
    for (;;) {
      const len = 4 + ((next * 13) % 41);
      const at = topic.pub.claim(len, RECORD_BYTES);
      if (at === 0) break;
      new DataView(engine.memory.buffer).setUint32(at, next, true);
      topic.pub.commit(len);
      next++;
    }
    readers.forEach((r, i) => got[i]!.push(...drain(r)));
  }
  for (const g of got) t.same(g, Array.from({ length: next }, (_, i) => i));
  topic.dispose();
});

t.test('a record that cannot fit beside the retained history is refused, not waited for forever', async (t) => {
  const topic = makeTopic('lossless', 60);
  let n = 0;
  t.throws(() => { for (; n < 1000; n++) publish(topic.pub, n); }, { code: ErrorCode.BAD_ARGUMENT });
  t.ok(n >= 20, `${n} records fitted first`);
  topic.dispose();
});

t.test('history larger than capacity is refused', async (t) => {
  const at = engine.allocWindow(topicBytes(SUBS, CAP));
  t.throws(() => formatTopic(engine, at, { capacity: CAP, maxSubscribers: SUBS, policy: 'lossless', history: CAP }, 1, 1n), { code: ErrorCode.BAD_ARGUMENT });
  engine.freeWindow(at, topicBytes(SUBS, CAP));
});

t.test('every slot taken: a further subscriber is refused; max+1 payload is refused', async (t) => {
  const topic = makeTopic('lossy');
  for (let i = 0; i < SUBS; i++) topic.join();
  t.equal(readTopicState(engine, topic.at, SUBS).subscribers.length, SUBS);
  t.throws(() => topic.join(), { code: ErrorCode.BAD_ARGUMENT }, 'every slot taken');
  t.throws(() => topic.pub.claim(topicMaxPayload(CAP) + 1, RECORD_BYTES), { code: ErrorCode.MESSAGE_TOO_LARGE });
  topic.dispose();
});

t.test('a corrupt tail is an error for a subscriber, not a crash', async (t) => {
  const topic = makeTopic('lossless');
  const r = topic.join();
  publish(topic.pub, 1);
  new DataView(engine.memory.buffer).setBigUint64(topic.at + TOPIC_HEADER_OFFSET + TOPIC_TAIL_OFFSET, 13n, true);
  t.throws(() => r.read(), { code: ErrorCode.CORRUPT });
  topic.dispose();
});

t.test('parking: a subscriber sleeps only when caught up; a commit then asks for a wake', async (t) => {
  const topic = makeTopic('lossless');
  const r = topic.join();
  t.ok(r.park(), 'caught up: sleeps');
  const before = r.waitWord();
  const at = topic.pub.claim(4, RECORD_BYTES);
  t.ok(at > 0);
  t.equal(topic.pub.commit(4), true, 'a sleeper exists: wake it');
  t.not(new DataView(engine.memory.buffer).getUint32(before.offset, true), before.value, 'wake word moved');
  r.unpark();
  publish(topic.pub, 2);
  t.notOk(r.park(), 'records pending: no sleep');
  topic.dispose();
});

t.test('a full topic reclaims ahead: not one reclaim per publish while a subscriber keeps up', async (t) => {
  for (const policy of ['lossless', 'lossy'] as const) {
    const topic = makeArenaTopic(64 * 1024, SUBS, policy);
    const reader = topic.join();
    // Each reclaim moves the reclaim seqlock's generation on by two.
    const generation = () => new DataView(engine.memory.buffer).getUint32(topic.at + TOPIC_HEADER_OFFSET + TOPIC_RECLAIM_GEN_OFFSET, true);
    const N = 5000; // 5000 records of 100 bytes (112 with the header): the 64 KiB topic fills about 8 times
    let got = 0;
    let refused = 0;
    for (let n = 0; n < N; n++) {
      // Read every 16 records, and whenever a lossless topic is full (the reader frees the room).
      if (!publish(topic.pub, n, 100)) {
        got += drain(reader).length;
        if (!publish(topic.pub, n, 100)) refused++;
      }
      if (n % 16 === 15) got += drain(reader).length;
    }
    got += drain(reader).length;
    t.equal(refused, 0, `${policy}: every record published`);
    t.equal(got, N, `${policy}: every record read`);
    const reclaims = generation() / 2;
    // Past the first fill each reclaim frees a sixteenth of the topic ahead: ~8 fills x 16, not one per record.
    t.ok(reclaims > 0 && reclaims < 200, `${policy}: ${reclaims} reclaims for ${N} records`);
    topic.dispose();
  }
});
