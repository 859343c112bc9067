// A lossless topic across restarts: nats-server SIGKILLed and restarted mid-stream, and a bridge process
// SIGKILLed and restarted mid-stream. Either way every message arrives once, in order.
import t from 'tap';
import { readdirSync } from 'node:fs';
import { Bus, type Publisher, type Subscription } from '../../bus/index.js';
import { bridge } from '../../bridge/index.js';
import { eventually, fileTimeout, scaled, startFixture, unique, within, type TestLike } from '../helpers.js';
import { natsMissing, startNats } from './nats.js';

// Measured on a loaded 2-core machine (load ~10): ~15-40 s at scale 1, ~70 s at scale 10. Timeout: about 4x.
fileTimeout(t, 150, 10);
const missing = natsMissing();
if (missing) t.plan(0, missing);

const shmFiles = () => readdirSync('/dev/shm').filter((f) => f.startsWith(`shmbus.bus.bridgek-${process.pid}-`));
t.afterEach((sub) => { t.same(shmFiles(), [], `nothing left in /dev/shm by: ${sub.name}`); });

/** Publishes 64-byte messages numbered from..to-1, waiting whenever the topic holds the publisher back. */
async function publishRange(pub: Publisher, from: number, to: number): Promise<void> {
  const msg = new Uint8Array(64);
  const view = new DataView(msg.buffer);
  for (let i = from; i < to; i++) {
    view.setUint32(0, i, true);
    if (!pub.publishBytes(msg)) await pub.drained();
  }
}

/** Reads numbered messages until `n` arrived; `onCount(k)` after each; returns how many came out of order or twice. */
function receive(sub: Subscription, n: number, onCount: (k: number) => void = () => {}): { done: Promise<number>; count(): number } {
  let k = 0;
  let bad = 0;
  const done = (async () => {
    for await (const v of sub) {
      const b = v as Uint8Array;
      if (new DataView(b.buffer, b.byteOffset).getUint32(0, true) !== k) bad++;
      onCount(++k);
      if (k === n) break;
    }
    return bad;
  })();
  return { done, count: () => k };
}

/** `shmbus bridge args` in a child process; `kill()` SIGKILLs the running one and starts another in its place. */
async function bridgeProcess(t: TestLike, args: string[]) {
  let child = startFixture(t, 'bridge-run', args);
  await child.line(/^bridge ready/);
  let restarting: Promise<void> = Promise.resolve();
  return {
    stderr: () => child.stderr(),
    /** Settles once the replacement started by the last kill() is ready. */
    restarted: () => restarting,
    kill(): void {
      const old = child;
      old.kill('SIGKILL');
      restarting = old.exit.then(async () => {
        child = startFixture(t, 'bridge-run', args);
        await child.line(/^bridge ready/);
      });
    },
  };
}

t.test('a lossless topic loses nothing while nats-server is SIGKILLed and restarted mid-stream', async (t) => {
  const nats = await startNats(t);
  const prefix = unique('k').replace(/-/g, '_');
  const a = await Bus.open(`shm://${unique('bridgek')}`);
  const b = await Bus.open(`shm://${unique('bridgek')}`);
  // A small topic: while NATS is away the exporter stops reading and the publisher is held back.
  const pub = a.publisher('orders', { policy: 'lossless', capacity: '64KiB' });
  const linkA = await bridge(a.url, nats.url, { export: ['orders'], prefix });
  const linkB = await bridge(b.url, nats.url, { import: [{ topic: 'orders', policy: 'lossless' }], prefix });
  t.teardown(async () => { await linkA.close(); await linkB.close(); await a.close(); await b.close(); });
  const N = scaled(50_000);
  const got = receive(b.subscribe('orders'), N);
  await publishRange(pub, 0, N / 2);
  // Mid-stream: messages are on their way (in the topic, in flight, in the stream, in the consumer) right now.
  await nats.kill();
  const more = publishRange(pub, N / 2, N);
  await eventually(() => !linkA.stats().connected && !linkB.stats().connected, 'both bridges to see NATS gone');
  await eventually(() => pub.queued > 0 || linkA.stats().lag > 0, 'the export to hold messages while NATS is away');
  await nats.restart();
  await within(120_000, more, () => `publishing after the restart: ${JSON.stringify(linkA.stats())}`);
  const bad = await within(120_000, got.done, () => `received ${got.count()} of ${N}: ${JSON.stringify([linkA.stats(), linkB.stats()])}`);
  t.equal(bad, 0, `all ${N} messages, once each, in order`);
  t.ok(linkA.stats().reconnects >= 1 && linkB.stats().reconnects >= 1, 'both bridges reconnected');
  // An acknowledgement may reach the exporter after the importer committed its message: wait for the last one.
  await eventually(() => linkA.stats().forwarded >= N, 'the exporter to count every acknowledgement');
  t.equal(linkA.stats().forwarded, N, 'the exporter had every message acknowledged once');
  t.equal(linkB.stats().forwarded, N, 'the importer committed every message once');
});

t.test('an importing bridge process SIGKILLed and restarted resumes without loss or duplicates', async (t) => {
  const nats = await startNats(t);
  const prefix = unique('k').replace(/-/g, '_');
  const a = await Bus.open(`shm://${unique('bridgek')}`);
  const bUrl = `shm://${unique('bridgek')}`;
  const b = await Bus.open(bUrl);
  const pub = a.publisher('orders', { policy: 'lossless', capacity: '64KiB' });
  const linkA = await bridge(a.url, nats.url, { export: ['orders'], prefix });
  t.teardown(async () => { await linkA.close(); await a.close(); await b.close(); });
  // The importing host's bridge runs as `shmbus bridge` in a process of its own.
  const args = [bUrl, nats.url, '--import', 'orders:lossless', '--prefix', prefix];
  const child = await bridgeProcess(t, args);
  const N = scaled(50_000);
  const kills = [Math.floor(N / 3), Math.floor((2 * N) / 3)];
  const got = receive(b.subscribe('orders'), N, (k) => {
    if (k !== kills[0]) return;
    kills.shift();
    // SIGKILL mid-stream: batches are between the marker, the local topic and the consumer right now.
    child.kill();
  });
  await within(120_000, publishRange(pub, 0, N), 'publishing');
  const bad = await within(120_000, got.done, () => `received ${got.count()} of ${N}; bridge stderr: ${child.stderr().slice(-1000)}`);
  await child.restarted();
  t.equal(kills.length, 0, 'the importing bridge was killed twice');
  t.equal(bad, 0, `all ${N} messages, once each, in order`);
  await eventually(() => linkA.stats().forwarded >= N, 'the exporter to count every acknowledgement');
  t.equal(linkA.stats().forwarded, N, 'the exporter had every message acknowledged once');
});

t.test('an exporting bridge SIGKILLed and restarted resumes from the topic history without loss or duplicates', async (t) => {
  const nats = await startNats(t);
  const prefix = unique('k').replace(/-/g, '_');
  const aUrl = `shm://${unique('bridgek')}`;
  const a = await Bus.open(aUrl);
  const b = await Bus.open(`shm://${unique('bridgek')}`);
  const N = scaled(50_000);
  // The history holds everything published while no exporter runs (here: all of it, whatever the timing).
  let capacity = 1 << 16;
  while (capacity < N * 80 * 2) capacity *= 2;
  const pub = a.publisher('orders', { policy: 'lossless', capacity, history: N });
  const linkB = await bridge(b.url, nats.url, { import: [{ topic: 'orders', policy: 'lossless' }], prefix });
  t.teardown(async () => { await linkB.close(); await a.close(); await b.close(); });
  const args = [aUrl, nats.url, '--export', 'orders', '--prefix', prefix];
  const child = await bridgeProcess(t, args);
  let killed = false;
  const got = receive(b.subscribe('orders'), N, (k) => {
    if (killed || k !== Math.floor(N / 3)) return;
    killed = true;
    child.kill();
  });
  await within(120_000, publishRange(pub, 0, N), 'publishing');
  const bad = await within(120_000, got.done, () => `received ${got.count()} of ${N}; bridge stderr: ${child.stderr().slice(-1000)}`);
  await child.restarted();
  t.ok(killed, 'the exporting bridge was killed mid-stream');
  t.equal(bad, 0, `all ${N} messages, once each, in order`);
  t.equal(linkB.stats().forwarded, N, 'the importer committed each once');
});
