// SPSC rings against a hostile peer: a scribbled consumer head makes the writer fail with CORRUPT instead of
// waiting for room it will never get (ring_free used to say "0 bytes free"), and random words in a ring header or
// its records give typed errors only, never a wasm trap.
import t from 'tap';
import fc from 'fast-check';
import { RING_HEAD_OFFSET, RING_TAIL_OFFSET, RING_HEADER_SIZE, RECORD_BYTES, H_RING_OFFSET } from '../../assembly/layout.js';
import { listen, connect, ErrorCode, ShmbusError, type Channel } from '../../index.js';
import { getEngine } from '../../host/engine.js';
import { RingEnd } from '../../host/ring.js';
import { fileTimeout, scaled, unique } from '../helpers.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 60, 10);

t.test('a scribbled head makes the writer fail with CORRUPT (send, free, park), not wait for room', async (t) => {
  const url = `shm://${unique('scribble')}` as const;
  const listener = await listen(url);
  t.teardown(() => listener.close());
  const accepted = (async () => { for await (const c of listener) return c; return undefined; })();
  const client: Channel = await connect(url);
  const server = (await accepted)!;
  t.teardown(async () => { await client.close().catch(() => {}); await server.close().catch(() => {}); });
  // Fill the client's outbound ring (nobody reads on the server side) without queueing anything locally.
  const payload = new Uint8Array(1000);
  let sent = 0;
  while (client.trySendBytes(payload)) sent++;
  t.ok(sent > 0, `${sent} messages fit`);
  const tx = (client as unknown as { tx: RingEnd }).tx;
  const engine = tx.engine;
  const ring = engine.u32[(tx.handle + H_RING_OFFSET) >>> 2]!;
  // The peer owns the head; a hostile one writes an impossible value: past our tail, off the 8-byte grid.
  new DataView(engine.memory.buffer).setBigUint64(ring + RING_HEAD_OFFSET, 0xfffffffffffff003n, true);
  t.throws(() => tx.free(), { code: ErrorCode.CORRUPT }, 'free() is CORRUPT, not 0');
  t.equal(tx.park(64), false, 'the writer does not park on it');
  t.throws(() => client.sendBytes(payload), { code: ErrorCode.CORRUPT }, 'send() is CORRUPT');
});

t.test('fuzz: random words in an SPSC ring header and records give typed errors only, never a trap', async (t) => {
  const engine = getEngine();
  const cap = 4096;
  const size = RING_HEADER_SIZE + cap;
  const runs = scaled(20_000, 300);
  fc.assert(fc.property(
    fc.array(fc.record({ where: fc.nat(1 << 16), value: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }), { minLength: 1, maxLength: 6 }),
    fc.boolean(),
    (scribbles, inRecords) => {
      const win = engine.allocWindow(size);
      engine.u8.fill(0, win, win + size);
      RingEnd.format(engine, win, cap);
      const producer = new RingEnd(engine, win, cap, 'producer');
      const consumer = new RingEnd(engine, win, cap, 'consumer');
      const typedOnly = (fn: () => unknown) => { try { fn(); } catch (error) { if (!(error instanceof ShmbusError)) throw error; } };
      try {
        for (let i = 0; i < 30; i++) typedOnly(() => { const at = producer.claim(8 + (i * 37) % 200, RECORD_BYTES); if (at) producer.commit(8 + (i * 37) % 200); });
        const view = new DataView(engine.memory.buffer);
        for (const s of scribbles) {
          const offset = inRecords ? RING_HEADER_SIZE + ((s.where * 8) % cap) : [RING_TAIL_OFFSET, RING_HEAD_OFFSET][s.where % 2]!;
          view.setBigUint64(win + offset, s.value, true);
        }
        typedOnly(() => { consumer.read(); consumer.release(); });
        typedOnly(() => consumer.pending());
        typedOnly(() => producer.free());
        typedOnly(() => { const at = producer.claim(100, RECORD_BYTES); if (at) producer.commit(100); });
        typedOnly(() => { consumer.read(); consumer.release(); });
        typedOnly(() => new RingEnd(engine, win, cap, 'consumer').dispose());
      } finally {
        producer.dispose();
        consumer.dispose();
        engine.freeWindow(win, size);
      }
    },
  ), { numRuns: runs });
  t.pass(`${runs} cases`);
});
