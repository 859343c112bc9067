// Request/reply over shm channels: concurrency, many clients, timeouts, aborts, remote errors, dead clients.
import t from 'tap';
import { listen, connect, serve, ErrorCode, ShmbusError, type Channel } from '../index.js';
import { Rpc } from '../host/rpc.js';
import { RECORD_REPLY, RECORD_REPLY_ERROR, RECORD_REQUEST } from '../assembly/layout.js';
import { eventually, fileTimeout, startFixture, unique, within } from './helpers.js';

// Measured on a busy 2-core machine (load 10-20): ~19 s. Timeout: 4x that.
fileTimeout(t, 80);
const url = () => `shm://${unique('rpc')}?size=64KiB` as const;

t.test('many clients, many concurrent requests each: every reply reaches its request', async (t) => {
  const u = url();
  const listener = await listen(u);
  const serving = serve(listener, async (v) => {
    const { n, client } = v as { n: number; client: number };
    if (n % 7 === 0) await new Promise((r) => setTimeout(r, 1)); // replies come back out of order
    return { n: n * 2, client };
  });
  const clients = await Promise.all([0, 1, 2].map(() => connect(u)));
  const results = await Promise.all(clients.map((c, client) =>
    Promise.all(Array.from({ length: 2000 }, (_, n) => c.request({ n, client })))));
  results.forEach((replies, client) => {
    t.same(replies, Array.from({ length: 2000 }, (_, n) => ({ n: n * 2, client })), `client ${client}`);
  });
  for (const c of clients) await c.close();
  await listener.close();
  await serving;
});

t.test('plain messages and requests share a channel without mixing', async (t) => {
  const u = url();
  const listener = await listen(u);
  const [client, server] = await Promise.all([connect(u), listener.acceptNext()]) as [Channel, Channel];
  server.handle((v) => ({ echo: v }));
  client.send('hello');
  const reply = await client.request(42);
  t.same(reply, { echo: 42 });
  server.send('plain');
  t.equal(await client.receive(), 'plain', 'the plain message waited in the inbox while the reply was read');
  t.equal(await server.receive(), 'hello');
  await client.close();
  await server.close();
  await listener.close();
});

t.test('timeouts, aborts and remote errors reject with typed errors; a late reply is dropped', async (t) => {
  const u = url();
  const listener = await listen(u);
  const [client, server] = await Promise.all([connect(u), listener.acceptNext()]) as [Channel, Channel];
  let lateDone = 0;
  server.handle(async (v) => {
    const { wait, fail } = v as { wait?: number; fail?: string };
    // Longer than the request's timeout: the reply comes after the caller gave up, however slow the machine.
    if (wait) { await new Promise((r) => setTimeout(r, wait)); lateDone++; }
    if (fail === 'typed') throw new Error('plain failure');
    if (fail === 'shmbus') throw Object.assign(new Error('x'), { code: 'nope' });
    return 'ok';
  });
  await t.rejects(client.request({ wait: 200 }, { timeout: 20 }), { code: ErrorCode.TIMEOUT });
  const ac = new AbortController();
  const aborted = client.request({ wait: 200 }, { signal: ac.signal });
  ac.abort(new Error('user gave up'));
  await t.rejects(aborted, { code: ErrorCode.CLOSED });
  await t.rejects(client.request({ fail: 'typed' }), { code: ErrorCode.REMOTE, message: /plain failure/ });
  t.equal(await client.request({}), 'ok', 'the channel still works');
  // Both late replies were sent before the next reply (one channel, in order): they arrive first and are dropped.
  await eventually(() => lateDone === 2, 'the two slow handlers to finish');
  t.equal(await client.request({}), 'ok');
  await t.rejects(client.request(1, { timeout: -1 }), { code: ErrorCode.BAD_ARGUMENT });
  await client.close();
  await t.rejects(client.request(1), { code: ErrorCode.CLOSED }, 'request after close');
  await server.close();
  await listener.close();
});

t.test('a request waits for a handler to be set; a dead client\'s reply is dropped cleanly', async (t) => {
  const u = url();
  const listener = await listen(u);
  const [client, server] = await Promise.all([connect(u), listener.acceptNext()]) as [Channel, Channel];
  // A plain message sent after the request: once the server's iterator sees it, the request is there too.
  let sawMarker!: () => void;
  const marker = new Promise<void>((r) => { sawMarker = r; });
  const iterating = (async () => { for await (const m of server) if (m === 'after the request') sawMarker(); })().catch(() => {});
  const early = client.request(20, { timeout: 60_000 });
  client.send('after the request');
  await within(30_000, marker, 'the server to receive the request');
  server.handle((v) => (v as number) + 1);
  t.equal(await early, 21, 'answered once a handler was set');
  await client.close();
  await iterating;
  await server.close();

  // A client process that dies with a request pending on the server: the reply is dropped cleanly. The handler
  // answers only once the client is dead (events, not a sleep: the child may take seconds to start on a busy machine).
  let handled = 0;
  let entered!: () => void;
  const handlerEntered = new Promise<void>((r) => { entered = r; });
  let release!: () => void;
  const clientDead = new Promise<void>((r) => { release = r; });
  const serving = serve(listener, async () => { entered(); await clientDead; handled++; return 'late'; });
  const child = startFixture(t, 'peer', [u, 'request']);
  await within(60_000, Promise.race([handlerEntered, child.exit.then(() => { throw new Error(`the client exited: ${child.stderr()}`); })]), 'the client\'s request to reach the handler');
  child.kill('SIGKILL');
  await child.exit;
  release();
  await eventually(() => handled === 1, 'the handler to answer the dead client');
  t.equal(handled, 1, 'the handler ran and its reply went nowhere, without an error');
  const again = await connect(u);
  await t.resolves(again.request(1, { timeout: 30_000 }));
  await again.close();
  await listener.close();
  await serving;
});

t.test('requests before a handler is set wait up to 1024 of them and 16 MiB of records; later ones fail at once', async (t) => {
  // The building block on its own (host/rpc.ts): what a connection hands it, and what it sends back.
  const sent: [number, [number, unknown]][] = [];
  const rpc = new Rpc((type, value) => { sent.push([type, value as [number, unknown]]); }, () => {});
  const MiB = 1 << 20;
  // The first is kept whatever its size: nothing after it while it is over 16 MiB.
  const alone = new Rpc((type, value) => { sent.push([type, value as [number, unknown]]); }, () => {});
  alone.incoming(RECORD_REQUEST, [1, 'large'], 20 * MiB);
  alone.incoming(RECORD_REQUEST, [2, 'small'], 1);
  t.same(sent.map(([type, [id]]) => [type, id]), [[RECORD_REPLY_ERROR, 2]], 'a large first request waits; the next is refused');
  sent.length = 0;
  // Then as many as fit in 16 MiB.
  rpc.incoming(RECORD_REQUEST, [1, 'first'], 10 * MiB);
  rpc.incoming(RECORD_REQUEST, [2, 'second'], 5 * MiB);
  rpc.incoming(RECORD_REQUEST, [3, 'third'], 1 * MiB);
  rpc.incoming(RECORD_REQUEST, [4, 'fourth'], 1);
  t.same(sent.map(([type, [id]]) => [type, id]), [[RECORD_REPLY_ERROR, 4]], 'the one past 16 MiB is refused at once');
  t.equal((sent[0]![1][1] as { code: string }).code, ErrorCode.BAD_STATE, 'with BAD_STATE');
  sent.length = 0;
  for (let id = 10; id < 10 + 1030; id++) rpc.incoming(RECORD_REQUEST, [id, id], 0);
  t.equal(sent.length, 1030 - (1024 - 3), 'past 1024 waiting, the rest are refused');
  sent.length = 0;
  rpc.handle((v) => v);
  t.same(sent.slice(0, 3).map(([type, [id, value]]) => [type, id, value]), [[RECORD_REPLY, 1, 'first'], [RECORD_REPLY, 2, 'second'], [RECORD_REPLY, 3, 'third']], 'the waiting ones are answered once a handler is set');
  t.equal(sent.length, 1024, 'all 1024 of them');
});

t.test('handlers in progress are bounded: past 65,536 of them or 64 MiB of their requests, a request fails at once with LIMIT', async (t) => {
  const sent: [number, [number, unknown]][] = [];
  const rpc = new Rpc((type, value) => { sent.push([type, value as [number, unknown]]); }, () => {});
  const MiB = 1 << 20;
  // A handler that answers only when told: every request stays in progress.
  const release: (() => void)[] = [];
  rpc.handle((v) => new Promise((resolve) => release.push(() => resolve(v))));
  const MAX = 65536;
  for (let id = 1; id <= MAX + 6; id++) rpc.incoming(RECORD_REQUEST, [id, id], 0);
  t.equal(release.length, MAX, '65,536 handlers run at once');
  t.same(sent.map(([type, [id]]) => [type, id]), [1, 2, 3, 4, 5, 6].map((k) => [RECORD_REPLY_ERROR, MAX + k]), 'the rest are refused at once');
  t.equal((sent[0]![1][1] as { code: string }).code, ErrorCode.LIMIT, 'with LIMIT');
  sent.length = 0;
  // Once they settle, requests run again; and by bytes: the first whatever its size, nothing past 64 MiB.
  for (const r of release.splice(0)) r();
  await eventually(() => sent.length === MAX, 'the replies');
  t.ok(sent.every(([type]) => type === RECORD_REPLY), 'each answered');
  sent.length = 0;
  rpc.incoming(RECORD_REQUEST, [2000, 'large'], 100 * MiB);
  rpc.incoming(RECORD_REQUEST, [2001, 'small'], 1);
  t.same(sent.map(([type, [id]]) => [type, id]), [[RECORD_REPLY_ERROR, 2001]], 'a large request runs alone');
  sent.length = 0;
  for (const r of release.splice(0)) r();
  await eventually(() => sent.length === 1, 'its reply');
  rpc.incoming(RECORD_REQUEST, [3000, 'a'], 40 * MiB);
  rpc.incoming(RECORD_REQUEST, [3001, 'b'], 20 * MiB);
  rpc.incoming(RECORD_REQUEST, [3002, 'c'], 5 * MiB);
  t.same(sent.slice(1).map(([type, [id]]) => [type, id]), [[RECORD_REPLY_ERROR, 3002]], 'the one past 64 MiB is refused');
  for (const r of release.splice(0)) r();
});

t.test('a client that only requests does not read ahead without bound: past 16 MiB of other messages, its reply waits for the iterator', async (t) => {
  const l = await listen(`shm://${unique('rpc-ahead')}?size=1MiB`);
  t.teardown(() => l.close());
  const [client, server] = await Promise.all([connect(l.url), l.acceptNext()]) as [Channel, Channel];
  t.teardown(() => Promise.all([client.close(), server.close()]));
  // The server sends 48 MiB of plain messages (192 of 256 KiB), then answers: a client reading everything ahead
  // to reach the reply would hold all of it.
  const reply = client.request('ping', { timeout: 2000 }).then((v) => v, (e: { code?: string }) => e.code);
  const size = 256 * 1024;
  const chunk = new Uint8Array(size);
  // All taken before the handler is set, so that the reply is queued behind every one of them.
  for (let i = 0; i < 192; i++) server.sendBytes(chunk);
  const sending = server.drained();
  server.handle((v) => v);
  t.equal(await reply, ErrorCode.TIMEOUT, 'the reply waits behind what the client did not take');
  let taken = 0;
  for await (const m of client) {
    t.equal((m as Uint8Array).length, size);
    if (++taken === 192) break;
  }
  await within(30_000, sending, 'the server\'s sends');
  t.equal(await within(30_000, client.request('again'), 'a request once the iterator caught up'), 'again');
});

t.test('requests and replies do not count toward that bound: a server holding one untaken message serves on', async (t) => {
  const l = await listen(`shm://${unique('rpc-stray')}?size=1MiB`);
  t.teardown(() => l.close());
  const [client, server] = await Promise.all([connect(l.url), l.acceptNext()]) as [Channel, Channel];
  t.teardown(() => Promise.all([client.close(), server.close()]));
  server.handle((v) => (v as Uint8Array).length);
  // A message the server never takes, then 24 MiB of requests (and of the client's replies' worth of reading).
  client.send('stray');
  const body = new Uint8Array(4096);
  let answered = 0;
  for (let round = 0; round < 60; round++) {
    const replies = await within(30_000, Promise.all(Array.from({ length: 100 }, () => client.request(body))), `round ${round}`);
    answered += replies.filter((n) => n === 4096).length;
  }
  t.equal(answered, 6000, 'every request answered');
  t.equal(await within(30_000, server.receive(), 'the stray message'), 'stray', 'and the stray message still waits for the server');
});

t.test('a client parked behind untaken messages hears of the peer\'s end: its request rejects instead of hanging', async (t) => {
  const l = await listen(`shm://${unique('rpc-parked')}?size=1MiB`);
  t.teardown(() => l.close());
  const [client, server] = await Promise.all([connect(l.url), l.acceptNext()]) as [Channel, Channel];
  t.teardown(() => client.close());
  const outcome = client.request('ping').then(() => 'replied', (e: { code?: string }) => e.code);
  const chunk = new Uint8Array(256 * 1024);
  for (let i = 0; i < 192; i++) server.sendBytes(chunk);
  // 65 chunks out of the server's queue: more than 16 MiB reached the client (the ring holds 3), which stops there.
  await eventually(() => server.queued <= 192 - 65 - 3, 'the client to read 16 MiB ahead');
  await server.destroy();
  t.equal(await within(30_000, outcome, 'the request'), ErrorCode.CLOSED, 'CLOSED once the server is gone');
});

t.test('a reply that cannot be sent reaches the requester as an error; a handler whose result throws on `then` too', async (t) => {
  const sent: [number, [number, unknown]][] = [];
  const rpc = new Rpc((type, value) => {
    const [, body] = value as [number, unknown];
    if (body === 'too large') throw new ShmbusError(ErrorCode.MESSAGE_TOO_LARGE, 'message larger than the channel allows');
    sent.push([type, value as [number, unknown]]);
  }, () => {});
  rpc.handle((v) => (v === 'trap' ? { get then() { throw new Error('then trap'); } } : v));
  rpc.incoming(RECORD_REQUEST, [1, 'too large'], 1);
  rpc.incoming(RECORD_REQUEST, [2, 'trap'], 1);
  rpc.incoming(RECORD_REQUEST, [3, 'fine'], 1);
  t.same(sent.map(([type, [id, body]]) => [type, id, (body as { code?: string }).code ?? body]), [
    [RECORD_REPLY_ERROR, 1, ErrorCode.MESSAGE_TOO_LARGE],
    [RECORD_REPLY_ERROR, 2, ErrorCode.REMOTE],
    [RECORD_REPLY, 3, 'fine'],
  ]);
});
