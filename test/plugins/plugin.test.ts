// loadPlugin in both isolations: requests, messages both ways, large messages, topics, pools, closing.
import t from 'tap';
import { once } from 'node:events';
import { loadPlugin, type Publication } from '../../plugins/index.js';
import { ErrorCode } from '../../host/errors.js';
import type { Isolation } from '../../plugins/index.js';
import { eventually, scaled, within } from '../helpers.js';
import { openPluginSegments, pluginPath } from './plugin-helpers.js';

const ISOLATIONS: Isolation[] = ['thread', 'process'];

t.teardown(() => eventually(() => openPluginSegments() === 0, 'every plugin segment closed'));

for (const isolation of ISOLATIONS) t.test(`isolation ${isolation}`, async (t) => {
  t.test('echo: request, send, for await, close', async (t) => {
    const plugin = await loadPlugin(pluginPath('echo'), { isolation });
    t.teardown(() => plugin.close());
    t.same(await plugin.request({ hello: 'world', n: [1, 2.5, null, true] }), { hello: 'world', n: [1, 2.5, null, true] });
    const many = await Promise.all(Array.from({ length: 100 }, (_, i) => plugin.request(i)));
    t.same(many, Array.from({ length: 100 }, (_, i) => i), 'many in flight, each answered with its own reply');

    for (let i = 0; i < 5; i++) plugin.send({ i });
    const got: unknown[] = [];
    for await (const m of plugin) { got.push(m); if (got.length === 5) break; }
    t.same(got, [0, 1, 2, 3, 4].map((i) => ({ i })), 'echo sends messages back, in order');

    const exit = once(plugin, 'exit');
    const pending = plugin.request('x', { timeout: 0 }).then(() => 'answered', (e) => e.code);
    await plugin.close();
    await exit;
    t.ok(['answered', ErrorCode.CLOSED].includes(await pending), 'in flight at close: answered or ERR_SHMBUS_CLOSED');
    await t.rejects(plugin.request(1), { code: ErrorCode.CLOSED }, 'a closed plugin refuses requests');
    t.throws(() => plugin.send(1), { code: ErrorCode.CLOSED });
  });

  t.test('messages of 1 MiB each way; larger than the ring allows is refused', async (t) => {
    const plugin = await loadPlugin(pluginPath('echo'), { isolation });
    t.teardown(() => plugin.close());
    const big = Buffer.alloc(1 << 20);
    for (let i = 0; i < big.length; i += 4096) big[i] = i & 0xff;
    for (let round = 0; round < 3; round++) {
      const back = await plugin.request(big) as Uint8Array;
      t.equal(back.length, big.length);
      t.ok(Buffer.from(back).equals(big), `round ${round}: the same 1 MiB came back`);
    }
    plugin.send(big);
    const it = plugin[Symbol.asyncIterator]();
    const m = await it.next();
    t.ok(Buffer.from(m.value as Uint8Array).equals(big), 'a 1 MiB message sent back');
    await t.rejects(plugin.request(Buffer.alloc(4 << 20)), { code: ErrorCode.MESSAGE_TOO_LARGE });
    t.same(await plugin.request('still fine'), 'still fine');
  });

  t.test('back-pressure: a reader that lags stalls the plugin instead of the host buffering, nothing is lost', async (t) => {
    const plugin = await loadPlugin(pluginPath('echo'), { isolation, maxQueued: 100_000 });
    t.teardown(() => plugin.close());
    // 3000 x 4 KiB = 12 MiB: more than the host keeps for a reader (1024 messages) and more than ring OUT holds,
    // less than ring OUT plus the plugin's outbox (16 MiB), where echo keeps what it cannot send yet.
    const count = 3000;
    const pad = 'p'.repeat(4096);
    let waited = false;
    for (let i = 0; i < count; i++) {
      if (!plugin.send({ i, pad })) { waited = true; await new Promise((resolve) => plugin.once('drain', resolve)); }
    }
    t.comment(waited ? 'send had to wait for room' : 'the plugin kept up with send');
    await eventually(() => plugin.stalledForTest() > 0, 'the host stopped reading ring OUT once 1024 messages waited');
    let next = 0;
    for await (const m of plugin) {
      if ((m as { i: number }).i !== next) break;
      if (++next === count) break;
    }
    t.equal(next, count, 'every message came back, in order');
    t.equal(await plugin.request('after'), 'after');
  });

  t.test('send: false once the ring is full, ERR_SHMBUS_QUEUE_FULL past maxQueued', async (t) => {
    const plugin = await loadPlugin(pluginPath('misbehave'), { isolation, maxQueued: 10, timeout: 0 });
    t.teardown(() => plugin.close());
    plugin.request('spin').catch(() => {}); // the instance never reads ring IN again
    const pad = 'p'.repeat(4096);
    let sent = 0;
    while (plugin.send({ pad }) && sent < 10_000) sent++;
    t.ok(sent < 10_000, `send returned false once the ring was full (after ${sent})`);
    for (let i = 1; i < 10; i++) plugin.send({ pad });
    t.throws(() => plugin.send({ pad }), { code: ErrorCode.QUEUE_FULL });
  });

  t.test('a host that waits for lone replies on its event loop (hostSpin) gets the same answers', async (t) => {
    const plugin = await loadPlugin(pluginPath('echo'), { isolation, spin: 100_000, hostSpin: 2000 });
    t.teardown(() => plugin.close());
    const got: unknown[] = [];
    for (let i = 0; i < 200; i++) got.push(await plugin.request({ i }));
    t.same(got, Array.from({ length: 200 }, (_, i) => ({ i })));
    t.same(await Promise.all([plugin.request('a'), plugin.request('b')]), ['a', 'b']);
  });

  t.test('no lost wakeup: a runner that sleeps at once (spin 0), bursts of 1 to 32 requests and messages', async (t) => {
    const plugin = await loadPlugin(pluginPath('echo'), { isolation, spin: 0 });
    t.teardown(() => plugin.close());
    const rounds = scaled(300);
    let bad = 0;
    let next = 0;
    const reader = (async () => {
      for await (const m of plugin) if (m !== next++) bad++; else if (next === rounds) break;
    })();
    for (let round = 0; round < rounds; round++) {
      const n = 1 + ((round * 7919) % 32);
      const replies = await Promise.all(Array.from({ length: n }, (_, i) => plugin.request(i)));
      if (replies.some((r, i) => r !== i)) bad++;
      plugin.send(round);
    }
    await within(60_000, reader, 'every message came back');
    t.equal(bad, 0, `${rounds} bursts answered right, every message back in order`);
  });

  t.test("the plugin's replyError and log", async (t) => {
    const bad = await loadPlugin(pluginPath('misbehave'), { isolation });
    t.teardown(() => bad.close());
    await t.rejects(bad.request('fail'), { code: ErrorCode.LIMIT, message: /told to fail/ }, 'a shmbus code is kept');
    await t.rejects(bad.request('fail-custom'), { code: ErrorCode.REMOTE, message: /its own way/, details: { remoteCode: 'E_MINE' } });
    t.equal(await bad.request('fine'), 'fine', 'a replyError does not end the instance');
    t.equal(bad.restarts, 0);
    const wc = await loadPlugin(pluginPath('wordcount'), { isolation });
    t.teardown(() => wc.close());
    const logged = new Promise((resolve) => wc.once('log', resolve));
    wc.send(42);
    t.match(await logged, { level: 2, text: /without text/ });
  });

  t.test('aborted requests', async (t) => {
    const plugin = await loadPlugin(pluginPath('echo'), { isolation });
    t.teardown(() => plugin.close());
    const ac = new AbortController();
    ac.abort(new Error('not wanted'));
    await t.rejects(plugin.request(1, { signal: ac.signal }), { message: 'not wanted' });
    const ac2 = new AbortController();
    const p = plugin.request(2, { signal: ac2.signal });
    ac2.abort(new Error('changed my mind'));
    await p.then((v) => t.equal(v, 2, 'replied before the abort'), (e) => t.equal(e.message, 'changed my mind'));
    t.equal(await plugin.request(3), 3);
  });

  t.test('wordcount: replies and publishes on a granted topic', async (t) => {
    const plugin = await loadPlugin(pluginPath('wordcount'), { isolation, allow: ['wordcount.totals'] });
    t.teardown(() => plugin.close());
    const pubs: Publication[] = [];
    plugin.on('publish', (p: Publication) => pubs.push(p));
    plugin.on('refused', () => t.fail('nothing refused'));
    t.same(await plugin.request('one two three'), { words: 3, total: 3, texts: 1 });
    t.same(await plugin.request({ text: 'four five' }), { words: 2, total: 5, texts: 2 });
    await eventually(() => pubs.length === 2, 'both publications arrived');
    t.same(pubs, [
      { topic: 'wordcount.totals', value: { total: 3, texts: 1 } },
      { topic: 'wordcount.totals', value: { total: 5, texts: 2 } },
    ]);
  });

  t.test('instances: requests spread over a pool', async (t) => {
    const plugin = await loadPlugin(pluginPath('wordcount'), { isolation, instances: 3, allow: ['wordcount.totals'] });
    t.teardown(() => plugin.close());
    const replies = await Promise.all(Array.from({ length: 30 }, () => plugin.request('a b')));
    const texts = replies.map((r) => (r as { texts: number }).texts);
    t.equal(Math.max(...texts), 10, 'each of the 3 instances (counting its own texts) took 10 of 30');
    t.equal(texts.filter((n) => n === 1).length, 3, 'three instances started from zero');
  });

  t.test('env reaches the guest: env(name) in its handlers', async (t) => {
    const plain = await loadPlugin(pluginPath('template'), { isolation });
    t.teardown(() => plain.close());
    t.match(await plain.request({ name: 'ann' }), { greeting: 'hello ann' }, 'without env the template says hello');
    const configured = await loadPlugin(pluginPath('template'), { isolation, env: { GREETING: 'hi', OTHER: 'x' }, instances: 2 });
    t.teardown(() => configured.close());
    const replies = await Promise.all([configured.request({ name: 'ann' }), configured.request({ name: 'bob' })]);
    t.match(replies, [{ greeting: 'hi ann' }, { greeting: 'hi bob' }], 'every instance got the env');
    await t.rejects(loadPlugin(pluginPath('template'), { isolation, ringCapacity: 4096, env: { BIG: 'x'.repeat(4096) } }), { code: ErrorCode.BAD_ARGUMENT }, 'an env larger than a message is refused');
  });

  t.test('bad options and modules are typed errors', async (t) => {
    await t.rejects(loadPlugin(pluginPath('echo'), { isolation: 'fiber' as 'thread' }), { code: ErrorCode.BAD_ARGUMENT });
    await t.rejects(loadPlugin(pluginPath('echo'), { isolation, memoryLimit: 'lots' }), { code: ErrorCode.BAD_ARGUMENT });
    await t.rejects(loadPlugin(pluginPath('echo'), { isolation, memoryLimit: '1MiB' }), { code: ErrorCode.LIMIT }, 'no room for the rings');
    await t.rejects(loadPlugin(pluginPath('echo'), { isolation, instances: 0 }), { code: ErrorCode.BAD_ARGUMENT });
    await t.rejects(loadPlugin(pluginPath('echo'), { isolation, spin: -1 }), { code: ErrorCode.BAD_ARGUMENT });
    await t.rejects(loadPlugin(pluginPath('echo'), { isolation, ringCapacity: 5000 }), { code: ErrorCode.BAD_ARGUMENT });
    await t.rejects(loadPlugin(new Uint8Array([1, 2, 3])), { code: ErrorCode.BAD_ARGUMENT });
    await t.rejects(loadPlugin(pluginPath('echo'), { isolation, env: { a: 1 } as unknown as Record<string, string> }), { code: ErrorCode.BAD_ARGUMENT });
    await within(10_000, t.rejects(loadPlugin('/nonexistent/x.wasm'), { code: 'ENOENT' }), 'missing file');
  });
});
