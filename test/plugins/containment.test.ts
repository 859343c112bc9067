// Containment: what a hostile or buggy plugin costs is one typed error on its own requests, and the instance it
// ran in (replaced by a fresh one). The host, other plugins and the next request are unaffected.
// ('restart' is awaited with a listener of its own: events.once would also take the 'error' the plugin emits.)
import t from 'tap';
import { once } from 'node:events';
import { loadPlugin } from '../../plugins/index.js';
import { ErrorCode, type ShmbusError } from '../../host/errors.js';
import type { Isolation } from '../../plugins/index.js';
import { eventually } from '../helpers.js';
import { ENDLESS_START, EVIL_IMPORT, openPluginSegments, pluginPath } from './plugin-helpers.js';

const ISOLATIONS: Isolation[] = ['thread', 'process'];

t.teardown(() => eventually(() => openPluginSegments() === 0, 'every plugin segment closed'));

for (const isolation of ISOLATIONS) t.test(`isolation ${isolation}`, async (t) => {
  t.test('an endless loop times out; the instance is replaced; the next request and a new loadPlugin work', async (t) => {
    const spin = await loadPlugin(pluginPath('spin'), { isolation, timeout: 300 });
    t.teardown(() => spin.close());
    const restarted = new Promise((resolve) => spin.once('restart', (e) => resolve([e])));
    await t.rejects(spin.request('go'), { code: ErrorCode.TIMEOUT });
    const echo = await loadPlugin(pluginPath('echo'), { isolation });
    t.teardown(() => echo.close());
    t.equal(await echo.request('hello'), 'hello', 'a new plugin loads and answers while the old instance is being stopped');
    const [cause] = await restarted as [ShmbusError];
    t.equal(cause.code, ErrorCode.TIMEOUT, 'the replacement says why');
    t.equal(spin.restarts, 1);

    const bad = await loadPlugin(pluginPath('misbehave'), { isolation, timeout: 300 });
    t.teardown(() => bad.close());
    await t.rejects(bad.request('spin'), { code: ErrorCode.TIMEOUT });
    t.equal(await bad.request('after', { timeout: 30_000 }), 'after', 'the next request is answered by a fresh instance');
    t.equal(bad.restarts, 1);
  });

  t.test('timeouts share one timer: a shorter timeout after a longer one still fires at its own deadline', async (t) => {
    const spin = await loadPlugin(pluginPath('spin'), { isolation, timeout: 600_000 });
    t.teardown(() => spin.close());
    const long = spin.request('long').then(() => 'answered', (e: ShmbusError) => e.code);
    // Without re-arming for the earlier deadline this request would wait for the 10-minute one (tap times out).
    await t.rejects(spin.request('short', { timeout: 200 }), { code: ErrorCode.TIMEOUT });
    t.equal(await long, ErrorCode.TIMEOUT, 'the stuck instance was replaced: the other request in it fails the same way');
  });

  t.test('memory growth past memoryLimit is ERR_SHMBUS_LIMIT; the host goes on', async (t) => {
    const hog = await loadPlugin(pluginPath('hog'), { isolation, memoryLimit: '32MiB', timeout: 30_000 });
    t.teardown(() => hog.close());
    const before = process.memoryUsage().rss;
    await t.rejects(hog.request('eat'), { code: ErrorCode.LIMIT });
    await new Promise((resolve) => hog.once('restart', resolve));
    await t.rejects(hog.request('again'), { code: ErrorCode.LIMIT }, 'the fresh instance is contained the same way');
    t.ok(process.memoryUsage().rss - before < 256 << 20, 'the host did not grow past a few limits');
    const echo = await loadPlugin(pluginPath('echo'), { isolation });
    t.teardown(() => echo.close());
    t.equal(await echo.request(1), 1);
  });

  t.test('traps are typed errors carrying the trap message', async (t) => {
    const bad = await loadPlugin(pluginPath('misbehave'), { isolation, timeout: 30_000 });
    t.teardown(() => bad.close());
    const errors: ShmbusError[] = [];
    bad.on('error', (e: ShmbusError) => errors.push(e));
    await t.rejects(bad.request('unreachable'), { code: ErrorCode.TRAP, message: /unreachable/ });
    await t.rejects(bad.request('oob'), { code: ErrorCode.TRAP, message: /out of bounds/ });
    await t.rejects(bad.request('abort'), { code: ErrorCode.TRAP, message: /misbehave was told to abort/ });
    t.equal(await bad.request('fine'), 'fine');
    t.equal(bad.restarts, 3);
    t.same(errors.map((e) => e.code), [ErrorCode.TRAP, ErrorCode.TRAP, ErrorCode.TRAP], "'error' for each failed instance");
  });

  t.test('only granted imports: an unknown import fails loadPlugin', async (t) => {
    await t.rejects(loadPlugin(EVIL_IMPORT), { code: ErrorCode.FORBIDDEN, message: /env\.evil/ });
    const empty = new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
    await t.rejects(loadPlugin(empty, { isolation }), { code: ErrorCode.FORBIDDEN, message: /shared memory/ }, 'no memory import: not a plugin');
  });

  t.test('a start function that never returns fails loadPlugin with ERR_SHMBUS_TIMEOUT', async (t) => {
    await t.rejects(loadPlugin(ENDLESS_START, { isolation, startTimeout: 500 }), { code: ErrorCode.TIMEOUT, message: /did not start/ });
    const echo = await loadPlugin(pluginPath('echo'), { isolation });
    t.teardown(() => echo.close());
    t.equal(await echo.request('next'), 'next');
  });

  t.test('publishing to a topic not in allow is refused', async (t) => {
    const wc = await loadPlugin(pluginPath('wordcount'), { isolation, allow: ['other'] });
    t.teardown(() => wc.close());
    wc.on('publish', () => t.fail('nothing published'));
    const refused = once(wc, 'refused');
    t.same(await wc.request('a b c'), { words: 3, total: 3, texts: 1 }, 'the request itself is answered');
    const [error] = await refused as [ShmbusError];
    t.equal(error.code, ErrorCode.FORBIDDEN);
    t.equal(error.details.topic, 'wordcount.totals');
  });

  t.test('garbage in the ring is ERR_SHMBUS_CORRUPT on the host side', async (t) => {
    // hostSpin 0: the host reads ring OUT only when the runner rings it, after the handler returned, so it never
    // reads the reply in the moment between its commit and the scribble (a spinning host could, and did).
    const bad = await loadPlugin(pluginPath('misbehave'), { isolation, timeout: 30_000, hostSpin: 0 });
    t.teardown(() => bad.close());
    await t.rejects(bad.request('scribble'), { code: ErrorCode.CORRUPT });
    await t.rejects(bad.request('garbage'), { code: ErrorCode.CORRUPT }, 'a record that is not msgpack');
    t.equal(await bad.request('fine'), 'fine', 'a fresh instance answers');
    t.equal(bad.restarts, 2);
  });

  t.test('in a pool, a stuck instance is replaced and the others keep answering', async (t) => {
    const pool = await loadPlugin(pluginPath('misbehave'), { isolation, instances: 2, timeout: 500 });
    t.teardown(() => pool.close());
    const restarted = new Promise((resolve) => pool.once('restart', resolve));
    const stuck = t.rejects(pool.request('spin'), { code: ErrorCode.TIMEOUT });
    // One at a time, so each goes to the instance with nothing in flight: the one that is not stuck.
    for (let i = 0; i < 10; i++) t.equal(await pool.request(i, { timeout: 30_000 }), i);
    await stuck;
    await restarted;
    t.equal(pool.restarts, 1);
    t.same(await Promise.all([pool.request('a'), pool.request('b')]), ['a', 'b'], 'both instances answer again');
  });
});
