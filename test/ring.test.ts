// Byte-level tests of the wasm SPSC ring over plain (unmapped) wasm memory: the same code that runs over shared
// segments, with both ends in this process.
import t from 'tap';
import {
  RING_HEADER_SIZE, RING_TAIL_OFFSET, RING_HEAD_OFFSET, RECORD_HEADER_SIZE, RECORD_BYTES, RECORD_PADDING,
  BATCH_END, WINDOW_BASE, PRIVATE_BASE, maxPayload,
} from '../assembly/layout.js';
import { getEngine, REQUIRED_EXPORTS } from '../host/engine.js';
import { RingEnd } from '../host/ring.js';
import { ErrorCode } from '../host/errors.js';
import { fileTimeout } from './helpers.js';

// Measured on a busy 2-core machine (load 10-20): ~10 s, mostly loading. Timeout: 4x that, at least tap's 60 s.
fileTimeout(t, 60);

const engine = getEngine();
const CAP = 4096;

function makeRing(capacity = CAP) {
  const win = engine.allocWindow(RING_HEADER_SIZE + capacity);
  engine.u8.fill(0xee, win, win + RING_HEADER_SIZE + capacity); // garbage a ring must not trust
  RingEnd.format(engine, win, capacity);
  const producer = new RingEnd(engine, win, capacity, 'producer');
  const consumer = new RingEnd(engine, win, capacity, 'consumer');
  const view = new DataView(engine.memory.buffer);
  return {
    win, producer, consumer, view,
    dispose() { producer.dispose(); consumer.dispose(); engine.freeWindow(win, RING_HEADER_SIZE + capacity); },
  };
}

function send(p: RingEnd, bytes: Uint8Array, type = RECORD_BYTES): boolean {
  const at = p.claim(bytes.length, type);
  if (at === 0) return false;
  engine.u8.set(bytes, at);
  p.commit(bytes.length);
  return true;
}

function drain(c: RingEnd): { bytes: Uint8Array; type: number }[] {
  const out: { bytes: Uint8Array; type: number }[] = [];
  for (;;) {
    const n = c.read();
    if (n === 0) break;
    const d = engine.batch / 4;
    for (let i = 0; i < n; i++) {
      const at = engine.u32[d + 3 * i]!, len = engine.u32[d + 3 * i + 1]!, type = engine.u32[d + 3 * i + 2]!;
      out.push({ bytes: engine.u8.slice(at, at + len), type });
    }
  }
  c.release();
  return out;
}

const bytesOf = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

t.test('module exports what the host needs and its memory map holds', async (t) => {
  for (const name of REQUIRED_EXPORTS) t.type((engine.exports as any)[name], 'function', name);
  t.ok(BATCH_END <= WINDOW_BASE, 'batch area ends below the windows');
  t.ok(engine.memory.buffer instanceof SharedArrayBuffer, 'memory is shared');
  t.ok(PRIVATE_BASE >= 1024);
});

t.test('empty ring reads nothing; records come back in order with their types', async (t) => {
  const r = makeRing();
  t.equal(r.consumer.read(), 0);
  t.ok(send(r.producer, bytesOf(10, 1)));
  t.ok(send(r.producer, bytesOf(0, 2), 7));
  t.ok(send(r.producer, bytesOf(100, 3)));
  const got = drain(r.consumer);
  t.same(got.map((g) => g.bytes.length), [10, 0, 100]);
  t.same(got.map((g) => g.type), [RECORD_BYTES, 7, RECORD_BYTES]);
  t.same(got[2]!.bytes, bytesOf(100, 3));
  t.equal(r.consumer.read(), 0);
  r.dispose();
});

t.test('full ring refuses, then accepts after release; wrap inserts padding the reader skips', async (t) => {
  const r = makeRing();
  const rec = bytesOf(1000 - RECORD_HEADER_SIZE, 9); // 1000-byte records → wrap needs padding
  let sent = 0;
  while (send(r.producer, rec)) sent++;
  t.equal(sent, 4, 'four 1000-byte records fit in 4096');
  t.equal(r.producer.claim(rec.length, RECORD_BYTES), 0, 'full is a return value');
  t.equal(drain(r.consumer).length, 4);
  // Position is now 4000: the next 1000-byte record does not fit before the end (96 bytes left): padding.
  t.ok(send(r.producer, rec));
  const tail = r.view.getBigUint64(r.win + RING_TAIL_OFFSET, true);
  t.equal(tail, 4096n + 1000n, 'tail passed a 96-byte padding record');
  t.equal(r.view.getUint32(r.win + RING_HEADER_SIZE + 4000 + 4, true), RECORD_PADDING);
  const got = drain(r.consumer);
  t.equal(got.length, 1);
  t.same(got[0]!.bytes, rec);
  r.dispose();
});

t.test('many wraps with mixed sizes keep every byte and the order', async (t) => {
  const r = makeRing();
  let seq = 0, expect = 0, bad = 0;
  for (let round = 0; round < 2000; round++) {
    for (;;) {
      const len = (seq * 7919) % 300;
      if (!send(r.producer, bytesOf(len, seq))) break;
      seq++;
    }
    for (const g of drain(r.consumer)) {
      const want = bytesOf((expect * 7919) % 300, expect);
      if (g.bytes.length !== want.length || Buffer.compare(Buffer.from(g.bytes), Buffer.from(want)) !== 0) bad++;
      expect++;
    }
  }
  t.equal(bad, 0);
  t.equal(expect, seq);
  t.ok(seq > 10000);
  r.dispose();
});

t.test('claim / commit shorter / abort', async (t) => {
  const r = makeRing();
  const at = r.producer.claim(100, RECORD_BYTES);
  t.ok(at > 0);
  t.throws(() => r.producer.claim(10, RECORD_BYTES), { code: ErrorCode.BAD_STATE }, 'second claim while one is open');
  engine.u8.set(bytesOf(40, 4), at);
  r.producer.commit(40);
  t.throws(() => r.producer.commit(1), { code: ErrorCode.BAD_STATE }, 'commit without a claim');
  t.throws(() => r.producer.abort(), { code: ErrorCode.BAD_STATE }, 'abort without a claim');
  r.producer.claim(10, RECORD_BYTES);
  t.throws(() => r.producer.commit(11), { code: ErrorCode.BAD_STATE }, 'commit longer than claimed');
  r.producer.abort();
  t.ok(send(r.producer, bytesOf(5, 5)));
  const got = drain(r.consumer);
  t.same(got.map((g) => g.bytes.length), [40, 5], 'aborted claim is invisible');
  t.same(got[0]!.bytes, bytesOf(40, 4));
  t.throws(() => r.producer.claim(1, RECORD_PADDING), { code: ErrorCode.BAD_STATE }, 'type 0 is reserved');
  r.dispose();
});

t.test('quiet commits: the tail moves once per KiB of small records, and always before the consumer could wait', async (t) => {
  const r = makeRing();
  const tail = () => r.view.getBigUint64(r.win + RING_TAIL_OFFSET, true);
  const quiet = (bytes: Uint8Array) => {
    const at = r.producer.claim(bytes.length, RECORD_BYTES);
    if (at === 0) return false;
    engine.u8.set(bytes, at);
    r.producer.commit(bytes.length, true);
    return true;
  };
  // 64 B records (72 with the header): the 15th reaches 1 KiB and publishes the 15 at once.
  for (let i = 0; i < 14; i++) quiet(bytesOf(64, i));
  t.equal(tail(), 0n, 'fourteen quiet commits: nothing published');
  t.equal(r.consumer.pending(), 0, 'the consumer sees none of them');
  quiet(bytesOf(64, 14));
  t.equal(tail(), 15n * 72n, 'the fifteenth publishes all fifteen');
  quiet(bytesOf(64, 15));
  t.equal(tail(), 15n * 72n);
  t.notOk(r.producer.needsWake(), 'a wake check (the consumer is not parked)...');
  t.equal(tail(), 16n * 72n, '...publishes what was quiet');
  const got = drain(r.consumer);
  t.same(got.map((g) => g.bytes), Array.from({ length: 16 }, (_, i) => bytesOf(64, i)), 'every record, in order');
  // The consumer parks while a quiet record is not yet published: the producer's wake check publishes and rings.
  quiet(bytesOf(64, 16));
  t.ok(r.consumer.park(), 'a consumer that looks before the publication parks');
  t.ok(r.producer.needsWake(), 'the wake check that follows the commit rings it');
  t.equal(tail(), 17n * 72n, 'with the record published');
  r.consumer.unpark();
  quiet(bytesOf(64, 17));
  t.ok(send(r.producer, bytesOf(8, 18)));
  t.equal(tail(), 18n * 72n + 16n, 'a commit that is not quiet publishes the quiet ones before it');
  t.same(drain(r.consumer).map((g) => g.bytes), [bytesOf(64, 16), bytesOf(64, 17), bytesOf(8, 18)]);
  // A ring filled by quiet commits publishes them when a claim finds it full: the consumer can always free room.
  let n = 0;
  while (quiet(bytesOf(64, n))) n++;
  t.equal(r.consumer.pending() > 0, true, 'a full ring is published');
  t.equal(drain(r.consumer).length, n, 'all of it');
  // The close publishes too.
  quiet(bytesOf(64, 1));
  r.producer.markClosed();
  t.equal(drain(r.consumer).length, 1, 'the record committed before the close');
  r.dispose();
});

t.test('maximum record fits from any position; max+1 rejected', async (t) => {
  const r = makeRing();
  const max = maxPayload(CAP);
  t.equal(r.producer.maxPayload, max);
  for (let offset = 0; offset < 20; offset++) {
    t.ok(send(r.producer, bytesOf(offset * 8, offset)), 'filler');
    drain(r.consumer);
    t.ok(send(r.producer, bytesOf(max, offset)), `max at offset ${offset}`);
    const got = drain(r.consumer);
    t.same(got[0]!.bytes, bytesOf(max, offset));
  }
  t.throws(() => r.producer.claim(max + 1, RECORD_BYTES), { code: ErrorCode.MESSAGE_TOO_LARGE });
  r.dispose();
});

t.test('corrupt positions and records give errors, never out-of-range reads or hangs', async (t) => {
  const corruptions: [string, (r: ReturnType<typeof makeRing>) => void][] = [
    ['tail beyond capacity', (r) => r.view.setBigUint64(r.win + RING_TAIL_OFFSET, 1n << 40n, true)],
    ['tail behind head', (r) => { r.view.setBigUint64(r.win + RING_HEAD_OFFSET, 64n, true); r.view.setBigUint64(r.win + RING_TAIL_OFFSET, 8n, true); }],
    ['tail misaligned', (r) => r.view.setBigUint64(r.win + RING_TAIL_OFFSET, 13n, true)],
    ['negative length (uncommitted)', (r) => { r.view.setInt32(r.win + RING_HEADER_SIZE, -8, true); r.view.setBigUint64(r.win + RING_TAIL_OFFSET, 16n, true); }],
    ['length past maximum', (r) => { r.view.setInt32(r.win + RING_HEADER_SIZE, 1 << 30, true); r.view.setBigUint64(r.win + RING_TAIL_OFFSET, 16n, true); }],
    ['truncated record (crosses the tail)', (r) => { r.view.setInt32(r.win + RING_HEADER_SIZE, 100, true); r.view.setUint32(r.win + RING_HEADER_SIZE + 4, 1, true); r.view.setBigUint64(r.win + RING_TAIL_OFFSET, 16n, true); }],
    ['padding not reaching the end', (r) => { r.view.setInt32(r.win + RING_HEADER_SIZE, 8, true); r.view.setUint32(r.win + RING_HEADER_SIZE + 4, 0, true); r.view.setBigUint64(r.win + RING_TAIL_OFFSET, 16n, true); }],
  ];
  for (const [name, corrupt] of corruptions) {
    const r = makeRing();
    corrupt(r);
    t.throws(() => r.consumer.read(), { code: ErrorCode.CORRUPT }, name);
    r.dispose();
  }
  // A hostile consumer moves head beyond the tail: the producer's claim refuses instead of overwriting.
  const r = makeRing();
  while (send(r.producer, bytesOf(500, 1)));
  r.view.setBigUint64(r.win + RING_HEAD_OFFSET, 1n << 50n, true);
  t.throws(() => r.producer.claim(500, RECORD_BYTES), { code: ErrorCode.CORRUPT }, 'head past tail');
  r.dispose();
});

t.test('ring header must agree with the segment geometry', async (t) => {
  const win = engine.allocWindow(RING_HEADER_SIZE + CAP);
  RingEnd.format(engine, win, CAP);
  t.throws(() => new RingEnd(engine, win, CAP * 2, 'consumer'), { code: ErrorCode.CORRUPT }, 'capacity mismatch');
  t.throws(() => RingEnd.format(engine, win, 3000), { code: ErrorCode.CORRUPT }, 'not a power of two');
  engine.freeWindow(win, RING_HEADER_SIZE + CAP);
});

t.test('park flags: a wake is asked for exactly once per park, and never when progress raced in', async (t) => {
  const r = makeRing();
  t.notOk(r.producer.needsWake(), 'consumer awake');
  t.ok(r.consumer.park(), 'empty ring: consumer parks');
  t.ok(r.producer.needsWake(), 'producer must ring');
  t.notOk(r.producer.needsWake(), 'only once per park');
  send(r.producer, bytesOf(8, 1));
  t.notOk(r.consumer.park(), 'data present: no park');
  t.notOk(r.producer.needsWake());
  drain(r.consumer);
  t.ok(r.consumer.park());
  t.ok(r.producer.needsWake(), 'a new park is rung again');
  r.consumer.unpark();
  // Producer side: full ring, producer parks; release asks for a wake.
  while (send(r.producer, bytesOf(1000, 1)));
  t.ok(r.producer.park(1008));
  t.ok(r.consumer.needsWake(), 'the consumer sees the parked producer');
  t.notOk(r.consumer.needsWake(), 'once');
  r.dispose();
});

t.test('wake words: a park records the peer wake sequence; a ring bumps it', async (t) => {
  const r = makeRing();
  t.ok(r.consumer.park());
  const before = r.consumer.waitWord();
  t.equal(before.offset, r.producer.wakeWordOffset(), 'consumer sleeps on the word the producer bumps');
  t.equal(r.view.getUint32(before.offset, true), before.value, 'expected value is the current one');
  t.ok(r.producer.needsWake());
  t.equal(r.view.getUint32(before.offset, true), before.value + 1, 'ringing bumped the word: a futex wait would not sleep');
  r.consumer.unpark();
  r.dispose();
});

t.test('closed flags are seen by the peer', async (t) => {
  const r = makeRing();
  t.notOk(r.consumer.peerClosed());
  r.producer.markClosed();
  t.ok(r.consumer.peerClosed());
  t.notOk(r.producer.peerClosed());
  r.consumer.markClosed();
  t.ok(r.producer.peerClosed());
  r.dispose();
});
