// Request/reply across the bridge: values both ways, the handler's errors typed as locally, timeouts, aborts, no
// responder, and responders on several hosts sharing the load as a queue group (each request handled once).
import t from 'tap';
import { readdirSync } from 'node:fs';
import { bridge, type Bridge } from '../../bridge/index.js';
import { ErrorCode, ShmbusError } from '../../host/errors.js';
import { fileTimeout, unique } from '../helpers.js';
import { natsMissing, startNats } from './nats.js';

// Measured on a loaded 2-core machine: ~5 s. Timeout: about 4x.
fileTimeout(t, 30);
const missing = natsMissing();
if (missing) t.plan(0, missing);

const shmFiles = () => readdirSync('/dev/shm').filter((f) => f.startsWith(`shmbus.bus.bridger-${process.pid}-`));
t.afterEach((sub) => { t.same(shmFiles(), [], `nothing left in /dev/shm by: ${sub.name}`); });

const nats = missing ? undefined : await startNats(t);

/** `n` bridges, each on a bus of its own (hosts), sharing one prefix. */
async function hosts(t: { teardown(fn: () => unknown): void }, n: number): Promise<Bridge[]> {
  const prefix = unique('r').replace(/-/g, '_');
  const out: Bridge[] = [];
  for (let i = 0; i < n; i++) out.push(await bridge(`shm://${unique('bridger')}`, nats!.url, { prefix }));
  t.teardown(async () => { for (const b of out) await b.close(); });
  return out;
}

t.test('a request is answered by a handler on another host', async (t) => {
  const [a, b] = await hosts(t, 2);
  await a!.serve('add', (v) => { const { x, y } = v as { x: number; y: number }; return { sum: x + y, bytes: new Uint8Array([x, y]) }; });
  t.same(await b!.request('add', { x: 2, y: 3 }, { timeout: 10_000 }), { sum: 5, bytes: new Uint8Array([2, 3]) });
  t.same(await a!.request('add', { x: 1, y: 1 }, { timeout: 10_000 }), { sum: 2, bytes: new Uint8Array([1, 1]) }, 'its own host reaches it too');
  await a!.serve('slow', async (v) => { await new Promise((r) => setTimeout(r, 5)); return v; });
  t.equal(await b!.request('slow', 'later'), 'later', 'without a timeout: waits for the answer');
  t.equal(a!.stats().requests.served, 3);
});

t.test("a handler's error comes back typed, like a local request's", async (t) => {
  const [a, b] = await hosts(t, 2);
  await a!.serve('fail', () => { throw new Error('no such order'); });
  await a!.serve('typed', () => { throw new ShmbusError(ErrorCode.BAD_ARGUMENT, 'qty must be positive'); });
  await t.rejects(b!.request('fail', 1, { timeout: 10_000 }), { code: ErrorCode.REMOTE, message: /no such order/ });
  await t.rejects(b!.request('typed', 1, { timeout: 10_000 }), { code: ErrorCode.BAD_ARGUMENT, message: /qty must be positive/ });
  t.equal(a!.stats().requests.failed, 2);
});

t.test('timeouts, aborts, and nobody serving', async (t) => {
  const [a, b] = await hosts(t, 2);
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  await a!.serve('stuck', () => held);
  await t.rejects(b!.request('stuck', 1, { timeout: 50 }), { code: ErrorCode.TIMEOUT }, 'ERR_SHMBUS_TIMEOUT after the timeout');
  const abort = new AbortController();
  const asked = b!.request('stuck', 2, { signal: abort.signal });
  abort.abort(new Error('user gave up'));
  await t.rejects(asked, { code: ErrorCode.CLOSED }, 'an abort rejects with ERR_SHMBUS_CLOSED');
  await t.rejects(b!.request('stuck', 3, { signal: abort.signal }), { code: ErrorCode.CLOSED }, 'an aborted signal refuses at once');
  release();
  await t.rejects(b!.request('nobody', 1, { timeout: 10_000 }), { code: ErrorCode.NOT_FOUND }, 'no service on the subject: ERR_SHMBUS_NOT_FOUND');
  await t.rejects(b!.request('bad name!', 1), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(b!.request('stuck', 1, { timeout: -1 }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(a!.serve('x', 'not a function' as never), { code: ErrorCode.BAD_ARGUMENT });
  const service = await a!.serve('gone', () => 1);
  await service.close();
  await t.rejects(b!.request('gone', 1, { timeout: 10_000 }), { code: ErrorCode.NOT_FOUND }, 'a closed service answers no more');
});

t.test('responders on several hosts share the requests: each handled once', async (t) => {
  const [a, b, c] = await hosts(t, 3);
  const seen = new Map<number, string[]>();
  const handler = (host: string) => (v: unknown) => { const id = v as number; seen.set(id, [...(seen.get(id) ?? []), host]); return host; };
  await a!.serve('work', handler('a'));
  await c!.serve('work', handler('c'));
  const N = 200;
  const answers = await Promise.all(Array.from({ length: N }, (_, i) => b!.request('work', i, { timeout: 20_000 })));
  t.equal(seen.size, N, 'every request handled');
  t.ok([...seen.values()].every((hosts) => hosts.length === 1), 'none handled twice');
  t.ok(answers.every((h) => h === 'a' || h === 'c'));
  t.equal(a!.stats().requests.served + c!.stats().requests.served, N);
});

t.test('a closed bridge refuses requests', async (t) => {
  const [a] = await hosts(t, 1);
  await a!.close();
  await t.rejects(a!.request('x', 1), { code: ErrorCode.CLOSED });
  await t.rejects(a!.serve('x', () => 1), { code: ErrorCode.CLOSED });
});
