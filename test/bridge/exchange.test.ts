// Two buses standing in for two hosts, joined through a real nats-server: lossless topics over JetStream and lossy
// topics over core NATS arrive complete (lossless) and in order, with their bytes and values unchanged.
import t from 'tap';
import { readdirSync } from 'node:fs';
import { Bus, type Subscription } from '../../bus/index.js';
import { bridge } from '../../bridge/index.js';
import { eventually, fileTimeout, scaled, unique, within } from '../helpers.js';
import { natsMissing, startNats } from './nats.js';

// Measured on a loaded 2-core machine (load ~10): ~20 s at scale 1, ~80 s at scale 10. Timeout: about 3-4x.
fileTimeout(t, 60, 20);
const missing = natsMissing();
if (missing) t.plan(0, missing);

const shmFiles = () => readdirSync('/dev/shm').filter((f) => f.startsWith(`shmbus.bus.bridgex-${process.pid}-`));
t.afterEach((sub) => { t.same(shmFiles(), [], `nothing left in /dev/shm by: ${sub.name}`); });

const nats = missing ? undefined : await startNats(t);

/** Two hosts: bus A exports `topic`, bus B imports it; each host's bridge is a bridge() of its own. */
async function hosts(t: { teardown(fn: () => unknown): void }, topic: string, policy: 'lossless' | 'lossy') {
  const prefix = unique('x').replace(/-/g, '_');
  const a = await Bus.open(`shm://${unique('bridgex')}`);
  const b = await Bus.open(`shm://${unique('bridgex')}`);
  const pub = a.publisher(topic, { policy, capacity: '1MiB' });
  const linkA = await bridge(a.url, nats!.url, { export: [topic], prefix });
  const linkB = await bridge(b.url, nats!.url, { import: [{ topic, policy }], prefix });
  const sub = b.subscribe(topic);
  t.teardown(async () => {
    await linkA.close();
    await linkB.close();
    await a.close();
    await b.close();
  });
  return { a, b, pub, linkA, linkB, sub };
}

async function take(sub: Subscription, n: number, each: (value: unknown, i: number) => void): Promise<void> {
  let i = 0;
  if (n === 0) return;
  for await (const v of sub) {
    each(v, i);
    if (++i === n) return;
  }
}

t.test('a lossless topic: every message, in order, bytes unchanged', async (t) => {
  // 10,000 at scale 1 (JetStream on a loaded 2-core machine: a few thousand acknowledged publishes a second),
  // 100,000 under test:stress.
  const N = scaled(100_000);
  const { pub, linkA, linkB, sub } = await hosts(t, 'ticks', 'lossless');
  let bad = 0;
  const got = take(sub, N, (v, i) => {
    const b = v as Uint8Array;
    if (!(b instanceof Uint8Array) || b.length !== 64 || new DataView(b.buffer, b.byteOffset).getUint32(0, true) !== i || b[63] !== (i & 0xff)) bad++;
  });
  const msg = new Uint8Array(64);
  const view = new DataView(msg.buffer);
  for (let i = 0; i < N; i++) {
    view.setUint32(0, i, true);
    msg[63] = i & 0xff;
    if (!pub.publishBytes(msg)) await pub.drained();
  }
  await within(120_000, got, () => `lossless: ${JSON.stringify(linkB.stats())}`);
  t.equal(bad, 0, `${N} messages in order with their bytes`);
  // An acknowledgement may reach the exporter after the importer committed its message: wait for the last one.
  await eventually(() => linkA.stats().forwarded >= N, 'the exporter to count every acknowledgement');
  t.equal(linkA.stats().forwarded, N, 'the exporter counts every message acknowledged');
  t.equal(linkB.stats().forwarded, N, 'the importer counts every message committed');
  t.equal(linkA.stats().dropped + linkB.stats().dropped, 0, 'nothing dropped');
});

t.test('msgpack values keep their type and value', async (t) => {
  const { pub, sub } = await hosts(t, 'values', 'lossless');
  const values = [{ sym: 'ACME', px: 12.5, n: 1 }, [1, 'two', null, true], 'text', 42, new Uint8Array([1, 2, 3])];
  const got: unknown[] = [];
  const done = take(sub, values.length + 1, (v) => got.push(v));
  for (const v of values) pub.publish(v);
  pub.publishBytes(new Uint8Array([9, 8, 7]));
  await within(30_000, done, 'values');
  t.same(got.slice(0, values.length), values, 'msgpack records arrive as the same values');
  t.same(got[values.length], new Uint8Array([9, 8, 7]), 'byte records arrive as bytes');
});

t.test('a lossy topic: in order; what is missing is counted', async (t) => {
  const N = scaled(1_000_000);
  const { pub, linkA, linkB, sub } = await hosts(t, 'lossy', 'lossy');
  let last = -1;
  let bad = 0;
  let received = 0;
  const msg = new Uint8Array(64);
  const view = new DataView(msg.buffer);
  const reading = (async () => {
    for await (const v of sub) {
      const b = v as Uint8Array;
      const i = new DataView(b.buffer, b.byteOffset).getUint32(0, true);
      if (i <= last) bad++;
      last = i;
      received++;
      if (i === N) return;
    }
  })();
  let published = 0;
  for (let i = 0; i <= N; i++) {
    view.setUint32(0, i, true);
    pub.publishBytes(msg);
    published++;
    // Give the bridges and NATS the event loop now and then: this process runs all of them.
    if ((i & 1023) === 0) await new Promise((r) => setImmediate(r));
  }
  // The last message (N) ends the reader; if it was dropped, publish it again until it arrives.
  while (await within(30_000, Promise.race([reading.then(() => true), new Promise((r) => setTimeout(r, 200, false))]), 'lossy reader') === false) {
    view.setUint32(0, N, true);
    pub.publishBytes(msg);
    published++;
  }
  t.equal(bad, 0, 'strictly increasing: in order, nothing twice');
  t.ok(received > 0, `received ${received} of ${N + 1}`);
  // The exporter may still be counting the last batch it copied out.
  await eventually(() => linkA.stats().forwarded + linkA.stats().dropped >= published, 'the exporter to count every message');
  t.equal(linkA.stats().forwarded + linkA.stats().dropped, published, `the exporter accounts for every message (forwarded or dropped): ${JSON.stringify(linkA.stats())}`);
  t.ok(linkB.stats().forwarded >= received, 'the importer counted what it committed');
});
