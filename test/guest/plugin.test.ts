// Plugins built by `npm run build` (build/plugins/<name>.wasm), instantiated directly with WebAssembly.instantiate
// and driven through their rings from JS (test/guest/plugin-rings.ts): the guest SDK's side of the handshake in
// assembly/layout.ts, request/reply, messages, publish, log, the outbox, wakeups, and the checks on the segment.
import t from 'tap';
import {
  RECORD_REQUEST, RECORD_REPLY, RECORD_REPLY_ERROR, RECORD_MSGPACK, GUEST_RECORD_PUBLISH, GUEST_RECORD_LOG,
  GUEST_E_NOT_ATTACHED, GUEST_E_SEGMENT, GUEST_RING_CAPACITY, GUEST_RING_OUT, GUEST_WAKE_OUT, GUEST_WAKE_IN,
  GUEST_REGION_ALIGN, CHANNEL_RING_COUNT, SEG_MAGIC_OFFSET, SEG_RING_CAPACITY_OFFSET, RING_CONSUMER_PARK_OFFSET, RING_PRODUCER_PARK_OFFSET,
  GUEST_RING_IN, GUEST_LOG_ERROR, RING_HEADER_SIZE, RING_TAIL_OFFSET, RING_HEAD_OFFSET, RING_E_RECORD, RING_E_POSITIONS,
  segmentBytes, maxPayload,
} from '../../assembly/layout.js';
import { scaled } from '../helpers.js';
import { attachPlugin, HostRings, instantiatePlugin, packr } from './plugin-rings.js';

t.test('echo: one request, one reply, through the rings in the plugin\'s own memory', async (t) => {
  const { x, memory, aborts } = await instantiatePlugin('echo');
  const rings = attachPlugin(x, memory, 4096);
  t.equal(rings.base % GUEST_REGION_ALIGN, 0, 'the region is aligned to whole wasm pages');
  t.ok(rings.base + rings.bytes <= memory.buffer.byteLength, 'the region lies inside the memory');
  t.ok(rings.write(RECORD_REQUEST, packr.pack([7, { hello: 'world', n: [1, 2.5, null] }])));
  t.equal(x.shmbus_poll(16), 1, 'poll handled one record');
  const out = rings.read();
  t.equal(out.length, 1);
  t.equal(out[0]!.type, RECORD_REPLY);
  t.same(packr.unpack(out[0]!.payload), [7, { hello: 'world', n: [1, 2.5, null] }], 'the reply carries the id and the value');
  t.same(aborts, []);
});

t.test('echo: many requests and messages around a small ring, replies in order', async (t) => {
  const { x, memory, aborts } = await instantiatePlugin('echo');
  const rings = attachPlugin(x, memory, 1024);
  const total = scaled(20_000);
  let sent = 0;
  let received = 0;
  while (received < total) {
    // Write until the ring is full, then let the plugin work and collect what it wrote.
    while (sent < total && rings.write(sent % 3 === 0 ? RECORD_MSGPACK : RECORD_REQUEST, packr.pack(sent % 3 === 0 ? `m${sent}`.repeat(sent % 7) : [sent, 'x'.repeat(sent % 50)]))) sent++;
    const handled = x.shmbus_poll(256);
    if (handled < 0) throw new Error(`poll failed ${handled}`);
    for (const rec of rings.read()) {
      const i = received++;
      if (i % 3 === 0) {
        if (rec.type !== RECORD_MSGPACK || packr.unpack(rec.payload) !== `m${i}`.repeat(i % 7)) throw new Error(`message ${i} wrong`);
      } else {
        const [id, value] = packr.unpack(rec.payload) as [number, string];
        if (rec.type !== RECORD_REPLY || id !== i || value !== 'x'.repeat(i % 50)) throw new Error(`reply ${i} wrong`);
      }
    }
  }
  t.equal(received, total, `${total} records echoed in order through a 1 KiB ring (wrapping, padding)`);
  t.same(aborts, []);
});

t.test('echo: a 1 MiB request with the default ring capacity', async (t) => {
  const { x, memory, aborts } = await instantiatePlugin('echo');
  const rings = attachPlugin(x, memory, GUEST_RING_CAPACITY);
  const big = Buffer.alloc(maxPayload(GUEST_RING_CAPACITY) - 16, 0x5a);
  t.ok(rings.write(RECORD_REQUEST, packr.pack([1, big])));
  t.equal(x.shmbus_poll(1), 1);
  const [rec] = rings.read();
  t.equal(rec?.type, RECORD_REPLY);
  const [id, value] = packr.unpack(rec!.payload) as [number, Uint8Array];
  t.equal(id, 1);
  t.equal(Buffer.compare(Buffer.from(value), big), 0, `${big.length} bytes came back`);
  t.same(aborts, []);
});

t.test('the outbox keeps what does not fit in ring OUT, in order, until the host reads', async (t) => {
  const { x, memory, aborts } = await instantiatePlugin('echo');
  const rings = attachPlugin(x, memory, 1024);
  // 30 messages of ~100 bytes: more than ring OUT holds; the host reads nothing meanwhile.
  let sent = 0;
  for (let round = 0; round < 10; round++) {
    while (sent < 30 && rings.write(RECORD_MSGPACK, packr.pack(`${sent}:`.padEnd(100, '.')))) sent++;
    x.shmbus_poll(256);
  }
  t.equal(sent, 30, 'the plugin consumed every message although ring OUT filled');
  t.ok(x.shmbus_outbox() > 0, 'the rest waits in the outbox');
  const got: string[] = [];
  for (let round = 0; round < 20 && got.length < 30; round++) {
    for (const rec of rings.read()) got.push(packr.unpack(rec.payload) as string);
    x.shmbus_poll(0);
  }
  t.same(got, Array.from({ length: 30 }, (_, i) => `${i}:`.padEnd(100, '.')), 'every message, in order');
  t.equal(x.shmbus_outbox(), 0, 'the outbox is empty');
  t.same(aborts, []);
});

t.test('wakes: the plugin says when the host\'s parked ends must be rung', async (t) => {
  const { x, memory } = await instantiatePlugin('echo');
  const rings = attachPlugin(x, memory, 4096);
  const park = (ring: number, offset: number, value: number) => Atomics.store(new Uint32Array(memory.buffer, rings.ring(ring) + offset, 1), 0, value);
  rings.write(RECORD_REQUEST, packr.pack([1, 'a']));
  x.shmbus_poll(16);
  t.equal(x.shmbus_wakes(), 0, 'nobody parked: no wake');
  rings.read();
  park(GUEST_RING_OUT, RING_CONSUMER_PARK_OFFSET, 1); // the host's consumer of ring OUT sleeps
  park(GUEST_RING_IN, RING_PRODUCER_PARK_OFFSET, 1); // the host's producer of ring IN waits for room
  rings.write(RECORD_REQUEST, packr.pack([2, 'b']));
  x.shmbus_poll(16);
  t.equal(x.shmbus_wakes(), GUEST_WAKE_OUT | GUEST_WAKE_IN, 'both parked ends are reported');
  t.equal(x.shmbus_wakes(), 0, 'and the bits are cleared once read');
});

t.test('the handshake refuses what is wrong, and poll before attach', async (t) => {
  const { x, memory, aborts } = await instantiatePlugin('echo');
  t.equal(x.shmbus_poll(16), GUEST_E_NOT_ATTACHED, 'poll before attach');
  const bytes = segmentBytes(CHANNEL_RING_COUNT, 4096);
  const base = x.shmbus_reserve(bytes);
  t.ok(base > 0);
  t.equal(x.shmbus_reserve(bytes), base, 'asking again gives the same region');
  t.equal(x.shmbus_reserve(bytes * 64), 0, 'a larger region later is refused');
  const rings = new HostRings(memory, base, 4096);
  rings.format();
  t.equal(x.shmbus_attach(base + GUEST_REGION_ALIGN, bytes), GUEST_E_SEGMENT, 'another address than the region');
  t.equal(x.shmbus_attach(base, bytes * 64), GUEST_E_SEGMENT, 'more bytes than the region');
  new DataView(memory.buffer).setUint32(base + SEG_MAGIC_OFFSET, 0xdeadbeef, true);
  t.equal(x.shmbus_attach(base, bytes), GUEST_E_SEGMENT, 'a bad magic');
  rings.format();
  new DataView(memory.buffer).setUint32(base + SEG_RING_CAPACITY_OFFSET, 1 << 16, true);
  t.equal(x.shmbus_attach(base, bytes), GUEST_E_SEGMENT, 'rings that do not fit in the bytes given');
  rings.format();
  t.equal(x.shmbus_attach(base, bytes), 0, 'the right segment attaches');
  t.equal(x.shmbus_poll(16), 0, 'and polls');
  t.same(aborts, []);
});

t.test('a request that is not [id, value] is dropped with a log record; no handler → a failed reply', async (t) => {
  const { x, memory, aborts } = await instantiatePlugin('echo');
  const rings = attachPlugin(x, memory, 4096);
  rings.write(RECORD_REQUEST, packr.pack('not an array'));
  rings.write(RECORD_REQUEST, Uint8Array.of(0x92, 0xc1, 0x01));
  rings.write(RECORD_REQUEST, packr.pack([3, 'fine']));
  t.equal(x.shmbus_poll(16), 3);
  const out = rings.read();
  t.same(out.map((r) => r.type), [GUEST_RECORD_LOG, GUEST_RECORD_LOG, RECORD_REPLY]);
  t.equal((packr.unpack(out[0]!.payload) as [number, string])[0], GUEST_LOG_ERROR);
  t.same(packr.unpack(out[2]!.payload), [3, 'fine']);

  const spin = await instantiatePlugin('spin');
  const spinRings = attachPlugin(spin.x, spin.memory, 4096);
  spinRings.write(RECORD_MSGPACK, packr.pack('spin ignores messages'));
  t.equal(spin.x.shmbus_poll(16), 1, 'a message to a plugin without a message handler is dropped');
  t.same(spinRings.read(), []);
  t.same(aborts, []);
});

t.test('wordcount: replies with the counts and publishes running totals', async (t) => {
  const { x, memory, aborts } = await instantiatePlugin('wordcount');
  const rings = attachPlugin(x, memory, 4096);
  rings.write(RECORD_REQUEST, packr.pack([1, 'the quick  brown\tfox\n']));
  rings.write(RECORD_MSGPACK, packr.pack('jumps over'));
  rings.write(RECORD_REQUEST, packr.pack([2, { text: '  the lazy dog ' }]));
  rings.write(RECORD_REQUEST, packr.pack([3, 42]));
  t.equal(x.shmbus_poll(16), 4);
  const out = rings.read().map((r) => [r.type, packr.unpack(r.payload)]);
  t.same(out, [
    [GUEST_RECORD_PUBLISH, ['wordcount.totals', { total: 4, texts: 1 }]],
    [RECORD_REPLY, [1, { words: 4, total: 4, texts: 1 }]],
    [GUEST_RECORD_PUBLISH, ['wordcount.totals', { total: 6, texts: 2 }]],
    [GUEST_RECORD_PUBLISH, ['wordcount.totals', { total: 9, texts: 3 }]],
    [RECORD_REPLY, [2, { words: 3, total: 9, texts: 3 }]],
    [RECORD_REPLY, [3, { error: 'expected a string or { text: string }' }]],
  ]);
  t.same(aborts, []);
});

t.test('template: greets by name, acknowledges messages, logs', async (t) => {
  const { x, memory, aborts } = await instantiatePlugin('template');
  const rings = attachPlugin(x, memory, 4096);
  rings.write(RECORD_REQUEST, packr.pack([1, { name: 'ann' }]));
  rings.write(RECORD_MSGPACK, packr.pack({ any: 'thing' }));
  t.equal(x.shmbus_poll(16), 2);
  const out = rings.read().map((r) => [r.type, packr.unpack(r.payload)]);
  t.same(out[0], [RECORD_REPLY, [1, { greeting: 'hello ann', count: 1 }]]);
  t.equal(out[1]![0], GUEST_RECORD_LOG);
  t.same(out[2], [RECORD_MSGPACK, { ack: true }]);

  // A reply after the request's record was released: the id was kept.
  rings.write(RECORD_REQUEST, packr.pack([0x1234567, { name: 'bob', wait: true }]));
  t.equal(x.shmbus_poll(16), 1);
  t.same(rings.read(), [], 'no reply yet');
  // The record was released: the host may overwrite its bytes (all of ring IN's data is released now).
  new Uint8Array(memory.buffer, rings.ring(GUEST_RING_IN) + RING_HEADER_SIZE, 4096).fill(0xc1);
  rings.write(RECORD_REQUEST, Uint8Array.from(packr.pack(['filler', 'x'.repeat(300)])));
  rings.write(RECORD_MSGPACK, packr.pack('now'));
  t.equal(x.shmbus_poll(16), 2);
  const later = rings.read().map((r) => [r.type, packr.unpack(r.payload)]);
  t.same(later.filter(([type]) => type !== GUEST_RECORD_LOG), [
    [RECORD_REPLY, ['filler', { greeting: 'hello stranger', count: 2 }]],
    [RECORD_REPLY, [0x1234567, { greeting: 'hello bob', count: 3 }]],
    [RECORD_MSGPACK, { ack: true }],
  ], 'the waiting request is answered with its own id');
  t.same(aborts, []);
});

t.test('spin never returns and hog traps when its memory cannot grow: the host sees a trap, not a hang', async (t) => {
  const hog = await instantiatePlugin('hog', 64);
  const rings = attachPlugin(hog.x, hog.memory, 4096);
  rings.write(RECORD_REQUEST, packr.pack([1, 'eat']));
  t.throws(() => hog.x.shmbus_poll(16), 'hog traps once its memory reaches the maximum');
  t.ok(hog.memory.buffer.byteLength > 32 * 65536, `it grew past half the maximum the host set (${hog.memory.buffer.byteLength / 65536} of 64 pages)`);
  t.match(hog.aborts, [], 'the allocator traps with unreachable, it does not call abort');
  // spin is only instantiated here: stopping it needs the host's thread isolation (loadPlugin).
  const spin = await instantiatePlugin('spin');
  t.equal(typeof spin.x.shmbus_poll, 'function');
  t.equal(RECORD_REPLY_ERROR, 5);
});

t.test('garbage on the rings is a negative code from poll, never a trap', async (t) => {
  const { x, memory, aborts } = await instantiatePlugin('echo');
  const rings = attachPlugin(x, memory, 4096);
  const v = new DataView(memory.buffer);
  const dataIn = rings.ring(GUEST_RING_IN) + RING_HEADER_SIZE;
  // A record whose length runs past the ring's end.
  rings.write(RECORD_REQUEST, packr.pack([1, 'a']));
  v.setInt32(dataIn, 1 << 20, true);
  t.equal(x.shmbus_poll(16), RING_E_RECORD, 'a record longer than the ring');
  // A tail the host could never have written.
  const { x: x2, memory: m2 } = await instantiatePlugin('echo');
  const r2 = attachPlugin(x2, m2, 4096);
  Atomics.store(new BigInt64Array(m2.buffer, r2.ring(GUEST_RING_IN) + RING_TAIL_OFFSET, 1), 0, 1n << 40n);
  t.equal(x2.shmbus_poll(16), RING_E_POSITIONS, 'a tail far past the head');
  // A head of ring OUT moved backwards past the plugin's tail: the reply cannot be written.
  const { x: x3, memory: m3 } = await instantiatePlugin('echo');
  const r3 = attachPlugin(x3, m3, 1024);
  for (let i = 0; i < 40; i++) { r3.write(RECORD_REQUEST, packr.pack([i, 'x'.repeat(40)])); x3.shmbus_poll(16); }
  Atomics.store(new BigInt64Array(m3.buffer, r3.ring(GUEST_RING_OUT) + RING_HEAD_OFFSET, 1), 0, 1n << 40n);
  r3.write(RECORD_REQUEST, packr.pack([99, 'y']));
  t.equal(x3.shmbus_poll(16), RING_E_POSITIONS, 'the outbox cannot drain into a ring with an impossible head');
  t.same(aborts, []);
});

t.test('random record payloads to plugins that decode them: records out, never a trap', async (t) => {
  const { default: fc } = await import('fast-check');
  for (const name of ['wordcount', 'template', 'echo']) {
    const { x, memory, aborts } = await instantiatePlugin(name);
    const rings = attachPlugin(x, memory, 1 << 14);
    const payload = fc.oneof(
      fc.uint8Array({ maxLength: 200 }),
      fc.anything({ maxDepth: 3 }).map((v) => Uint8Array.from(packr.pack([1, v]))),
      fc.string({ maxLength: 200 }).map((s) => Uint8Array.from(packr.pack([2, { text: s }]))),
    );
    let records = 0;
    fc.assert(fc.property(fc.array(fc.tuple(fc.constantFrom(RECORD_REQUEST, RECORD_MSGPACK, 99), payload), { maxLength: 8 }), (batch) => {
      for (const [type, bytes] of batch) if (!rings.write(type, bytes)) throw new Error('ring IN full');
      const n = x.shmbus_poll(256);
      if (n !== batch.length) throw new Error(`poll returned ${n} for ${batch.length} records`);
      records += rings.read().length;
      return true;
    }), { numRuns: scaled(2_000) });
    t.same(aborts, [], `${name} never aborted (${records} records came out)`);
  }
});
