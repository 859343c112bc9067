// The shmbus command, run as a child process (dist/bin/shmbus.js) against endpoints and buses this test makes:
// every command's --json output, --help on each, and usage errors.
import { SharedState, Mutex } from '../../state/index.js';
import t, { type Test } from 'tap';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { listen, serve } from '../../index.js';
import { Bus } from '../../bus/index.js';
import type { Channel } from '../../transports/shm/channel.js';
import { eventually, fileTimeout, scaled, startChild, startFixture, unique, within, type TestLike } from '../helpers.js';

fileTimeout(t, 120);

const CLI = fileURLToPath(new URL('../../dist/bin/shmbus.js', import.meta.url));

/** Runs `shmbus <args>` to its end: exit code and output. */
async function shmbus(tt: TestLike, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = startChild(tt, [process.execPath, CLI, ...args], { env: { ...process.env, NODE_OPTIONS: '' } });
  const { code } = await within(90_000, child.exit, `shmbus ${args.join(' ')} to exit`);
  return { code, stdout: child.stdout(), stderr: child.stderr() };
}

async function json<T>(tt: Test, args: string[]): Promise<T> {
  const r = await shmbus(tt, args);
  tt.equal(r.code, 0, `shmbus ${args.join(' ')} exits 0 (stderr: ${r.stderr.slice(-500)})`);
  return JSON.parse(r.stdout) as T;
}

interface Proc { pid: number; alive: boolean }

t.test('the shmbus command against live endpoints and buses', async (t) => {
  // --- a live endpoint with a peer process that never reads, and a bus with a subscriber process that never reads

  const endpointUrl = `shm://${unique('cli-ep')}?size=64KiB`;
  const listener = await listen(endpointUrl);
  const peer = startFixture(t, 'conn-peer', [endpointUrl, 'hang']);
  const conn = (await within(30_000, listener.acceptNext(), 'the peer to connect')) as Channel;
  // Every later connection (shmbus req) gets its request answered.
  const serving = serve(listener, async (req: unknown) => ({ echo: req }));
  t.same(await within(30_000, conn.receive(), 'the peer ready message'), { ready: true });
  // Bytes waiting in the ring toward the peer, which never reads them.
  const SENT = scaled(200, 20);
  for (let i = 0; i < SENT; i++) conn.send({ i, pad: 'x'.repeat(20) });

  const busName = unique('cli-bus');
  const busUrl = `shm://${busName}`;
  const bus = await Bus.open(busUrl);
  const ticks = bus.publisher('ticks', { history: 16 });
  const stall = startFixture(t, 'bus-peer', [busUrl, 'ticks', 'stall']);
  await stall.line('ready');
  const PUBLISHED = scaled(500, 50);
  for (let i = 0; i < PUBLISHED; i++) if (!ticks.publish({ n: i })) await ticks.drained();

  t.teardown(async () => {
    await conn.close().catch(() => {});
    await listener.close();
    await serving;
    // The subscriber process is a bus member: once it is gone, the bus and its topics go with destroy().
    stall.kill();
    await stall.exit;
    await bus.destroy();
  });

  t.test('ls --json shows the endpoint with its peer, the bus with its topic and lagging subscriber, and its files', async (tt) => {
    const out = await json<{ endpoints: any[]; buses: any[]; objects: any[] }>(tt, ['ls', '--json']);
    const ep = out.endpoints.find((e) => e.url === endpointUrl.replace(/\?.*/, ''));
    tt.ok(ep, 'the endpoint is listed');
    tt.equal(ep.transport, 'shm');
    tt.same(ep.listener, { pid: process.pid, alive: true });
    tt.equal(ep.listening, true);
    tt.ok(ep.connections.some((c: { peers: Proc[] }) => c.peers.some((p) => p.pid === peer.pid && p.alive)), 'the peer process is a connection');
    const b = out.buses.find((x) => x.url === busUrl);
    tt.ok(b, 'the bus is listed');
    tt.ok(b.alive);
    tt.ok(b.members.some((m: Proc) => m.pid === process.pid && m.alive) && b.members.some((m: Proc) => m.pid === stall.pid), 'both members');
    const topic = b.topics.find((x: { name: string }) => x.name === 'ticks');
    tt.equal(topic.published, PUBLISHED);
    tt.same(topic.publisher.pid, process.pid);
    const sub = topic.subscribers.find((s: Proc) => s.pid === stall.pid);
    tt.equal(sub.alive, true);
    tt.equal(sub.lag, PUBLISHED, 'the subscriber that never reads lags by everything published');
    const names = out.objects.map((o) => o.name);
    tt.ok(names.includes(`/dev/shm/shmbus.bus.${busName}`) && names.includes(`/dev/shm/shmbus.bus.${busName}.ticks`), 'its files are kernel objects');
    tt.ok(out.objects.filter((o) => o.name.includes(busName)).every((o) => o.alive === true), 'alive');
  });

  t.test('stat --once --json of the endpoint reads the rings: the bytes the peer has not read fill its ring', async (tt) => {
    const s = await json<any>(tt, ['stat', endpointUrl, '--once', '--json', '--interval', '100']);
    tt.equal(s.kind, 'endpoint');
    const c = s.connections.find((x: { peers: Proc[] }) => x.peers.some((p) => p.pid === peer.pid));
    tt.ok(c, 'the connection');
    tt.equal(c.toConnector.capacity, 64 * 1024);
    tt.ok(c.toConnector.tail - c.toConnector.head > SENT * 20, 'the unread messages are between head and tail');
    tt.ok(c.toConnector.fill > 0 && c.toConnector.fill <= 1);
    tt.equal(typeof c.toConnector.bytesPerSec, 'number');
    tt.equal(c.toConnector.committed, SENT, 'the ring counts the records committed');
    tt.equal(c.toConnector.waiting, SENT, 'none was read');
    tt.equal(c.toListener.committed, 1, 'the peer sent one message');
    tt.equal(c.toListener.read, 1, 'which was read');
    tt.equal(c.toListener.producerClosed, false);
  });

  t.test('stat --once --json of the bus: published count, lag, rates', async (tt) => {
    const s = await json<any>(tt, ['stat', busUrl, '--bus', '--once', '--json', '--interval', '100']);
    tt.equal(s.kind, 'bus');
    const topic = s.topics.find((x: { name: string }) => x.name === 'ticks');
    tt.equal(topic.published, PUBLISHED);
    tt.equal(topic.policy, 'lossless');
    tt.equal(topic.subscribers.find((x: Proc) => x.pid === stall.pid).lag, PUBLISHED);
    tt.equal(topic.messagesPerSec, 0, 'nothing was published between the two looks');
    const missing = await shmbus(tt, ['stat', `shm://${unique('cli-none')}`, '--once']);
    tt.equal(missing.code, 1, 'a URL with nothing behind it exits 1');
    tt.match(missing.stderr, /ERR_SHMBUS_NOT_FOUND/);
  });

  t.test('stat of a lossy topic shows a stalled subscriber lapped; without --once it refreshes', async (tt) => {
    const lossy = bus.publisher('lossy', { policy: 'lossy', capacity: 1024 });
    const sub = startFixture(tt, 'bus-peer', [busUrl, 'lossy', 'stall']);
    await sub.line('ready');
    const n = scaled(400, 100);
    for (let i = 0; i < n; i++) lossy.publish({ i, pad: 'z'.repeat(40) });
    const s = await json<any>(tt, ['stat', busUrl, '--once', '--json', '--interval', '50']);
    const topic = s.topics.find((x: { name: string }) => x.name === 'lossy');
    tt.equal(topic.policy, 'lossy');
    const me = topic.subscribers.find((x: Proc) => x.pid === sub.pid);
    tt.equal(me.lag, n);
    tt.ok(me.lapped > 0 && me.lapped < n, 'most of what it missed is gone from the 1 KiB ring');
    await lossy.close();
    // The live view: one JSON line per refresh, until it is stopped.
    const live = startChild(tt, [process.execPath, CLI, 'stat', busUrl, '--json', '--interval', '50'], { env: { ...process.env, NODE_OPTIONS: '' } });
    await live.line(/"kind":"bus"/);
    await eventually(() => live.stdout().split('\n').filter((l) => l.includes('"kind":"bus"')).length >= 2, 'a second refresh');
    live.kill('SIGINT');
    tt.equal((await within(30_000, live.exit, 'stat to end on SIGINT')).code, 0, 'Ctrl-C ends it cleanly');
  });

  t.test('stat: Ctrl-C ends the wait between two looks at once; an interval no timer can wait is a usage error', async (tt) => {
    // A preload says on stdout when the command adds its SIGINT listener: from then on Ctrl-C is its to handle.
    const announce = 'data:text/javascript,process.on("newListener",(e)=>{if(e==="SIGINT")process.stdout.write("sigint-listener\\n")})';
    const live = startChild(tt, [process.execPath, '--import', announce, CLI, 'stat', busUrl, '--bus', '--interval', '600000'], { env: { ...process.env, NODE_OPTIONS: '' } });
    await live.line('sigint-listener');
    live.kill('SIGINT');
    tt.equal((await within(30_000, live.exit, 'stat to end on SIGINT within its 10-minute interval')).code, 0, live.stderr());
    const huge = await shmbus(tt, ['stat', busUrl, '--bus', '--once', '--interval', '9999999999']);
    tt.equal(huge.code, 2, 'an interval past 2^31-1 ms is refused');
    tt.match(huge.stderr, /--interval must be at most/);
    const never = `never-${unique('topic')}`;
    const tail = await shmbus(tt, ['tail', busUrl, never, '--timeout', '9999999999']);
    tt.equal(tail.code, 2, 'so is a tail --timeout past it (it would give up at once)');
    tt.match(tail.stderr, /--timeout must be at most/);
    const req = await shmbus(tt, ['req', endpointUrl, '1', '--timeout', '9999999999']);
    tt.equal(req.code, 2, 'and a req --timeout past it');
  });

  t.test('ls shows no endpoint whose socket name holds control characters (any local user can bind one)', async (tt) => {
    const planted = net.createServer();
    await new Promise<void>((resolve, reject) => {
      planted.once('error', reject);
      planted.listen(`\0shmbus/shm/evil-${process.pid}\x1b[2J\x1b]0;owned\x07`, resolve);
    });
    tt.teardown(() => new Promise<void>((resolve) => planted.close(() => resolve())));
    const r = await shmbus(tt, ['ls', '--endpoints']);
    tt.equal(r.code, 0, r.stderr);
    tt.notOk(r.stdout.includes('\x1b'), 'no escape sequence reaches the terminal');
    tt.notOk(r.stdout.includes(`evil-${process.pid}`), 'the planted name is not listed');
    tt.ok(r.stdout.includes(endpointUrl.split('?')[0]!), 'the real endpoint still is');
  });

  t.test('tail --from earliest --count prints the kept history as JSON lines', async (tt) => {
    const count = 5;
    const r = await shmbus(tt, ['tail', busUrl, 'ticks', '--from', 'earliest', '--count', String(count)]);
    tt.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { n: number });
    tt.equal(lines.length, count);
    for (let i = 1; i < count; i++) tt.equal(lines[i]!.n, lines[0]!.n + i, 'in order, none missing');
    tt.ok(lines[0]!.n >= 0 && lines[count - 1]!.n < PUBLISHED);
  });

  t.test('pub creates a topic and publishes; a waiting tail gets the message', async (tt) => {
    const tailer = startChild(tt, [process.execPath, CLI, 'tail', busUrl, 'news', '--from', 'earliest', '--count', '2', '--timeout', '60000'], { env: { ...process.env, NODE_OPTIONS: '' } });
    const r = await shmbus(tt, ['pub', busUrl, 'news', '{"hello":"world"}', '{"$bytes":"AQID"}', '--history', '4']);
    tt.equal(r.code, 0, r.stderr);
    const { code } = await within(60_000, tailer.exit, 'tail to get the messages');
    tt.equal(code, 0, tailer.stderr());
    tt.same(tailer.stdout().trim().split('\n').map((l) => JSON.parse(l)), [{ hello: 'world' }, { $bytes: 'AQID' }]);
    const bad = await shmbus(tt, ['pub', busUrl, 'news', '{not json']);
    tt.equal(bad.code, 2, 'bad JSON is a usage error');
  });

  t.test('tail without --count runs until Ctrl-C, then leaves the topic', async (tt) => {
    const tailer = startChild(tt, [process.execPath, CLI, 'tail', busUrl, 'ticks'], { env: { ...process.env, NODE_OPTIONS: '' } });
    // It subscribed once ls shows it among the subscribers; then a message published reaches it.
    const subscribed = async () => {
      const out = await json<{ buses: { url: string; topics: { name: string; subscribers: Proc[] }[] }[] }>(tt, ['ls', '--json', '--buses']);
      return out.buses.find((b) => b.url === busUrl)?.topics.find((x) => x.name === 'ticks')?.subscribers.some((x) => x.pid === tailer.pid) ?? false;
    };
    for (let i = 0; !(await subscribed()); i++) if (i > 100) throw new Error('tail never subscribed');
    ticks.publish({ n: -1 });
    tt.same(JSON.parse(await tailer.line('{')), { n: -1 });
    tailer.kill('SIGINT');
    tt.equal((await within(30_000, tailer.exit, 'tail to end on SIGINT')).code, 0, tailer.stderr());
    tt.notOk(await subscribed(), 'its subscriber slot is free again');
  });

  t.test('req sends a request and prints the reply', async (tt) => {
    const r = await shmbus(tt, ['req', endpointUrl, '{"x":[1,2]}']);
    tt.equal(r.code, 0, r.stderr);
    tt.same(JSON.parse(r.stdout), { echo: { x: [1, 2] } });
  });

  t.test('doctor --json lists every check with its fix', async (tt) => {
    const r = await shmbus(tt, ['doctor', '--json']);
    const checks = JSON.parse(r.stdout) as { name: string; status: string; detail: string; fix: string }[];
    tt.equal(r.code, checks.some((c) => c.status === 'fail') ? 1 : 0, 'exit code follows the failures');
    for (const name of ['/dev/shm size and free space', '/dev/mqueue mounted', 'msgmni', 'msgmnb', 'SEMMNI', 'RLIMIT_MSGQUEUE', 'mqueue limits', 'futex_waitv', 'koffi', 'segment in wasm memory']) {
      const c = checks.find((x) => x.name === name);
      tt.ok(c && ['ok', 'warn', 'fail'].includes(c.status) && typeof c.detail === 'string', `check ${name}`);
      if (c && c.status !== 'ok') tt.ok(c.fix.length > 0, `${name} says how to fix it`);
    }
    tt.equal(checks.find((x) => x.name === 'koffi')?.status, 'ok');
    tt.equal(checks.find((x) => x.name === 'segment in wasm memory')?.status, 'ok');
  });

  t.test('doctor fails on a /dev/shm too small for a topic and warns on the 64 MiB Docker default', {
    skip: process.getuid?.() !== 0 ? 'needs root: it mounts a small /dev/shm in a mount namespace of its own' : false,
  }, async (tt) => {
    for (const [size, status, code] of [['512k', 'fail', 1], ['64m', 'warn', 0]] as const) {
      // unshare -m: the small tmpfs exists only in the child's own mount namespace.
      const child = startChild(tt, ['unshare', '-m', '--', 'sh', '-c', `mount -t tmpfs -o size=${size} tmpfs /dev/shm && exec "$0" "$1" doctor --json`, process.execPath, CLI],
        { env: { ...process.env, NODE_OPTIONS: '' } });
      const exit = await within(60_000, child.exit, 'doctor in its own mount namespace');
      const shm = (JSON.parse(child.stdout()) as { name: string; status: string; fix: string }[]).find((c) => c.name === '/dev/shm size and free space');
      tt.equal(shm?.status, status, `/dev/shm of ${size}: ${status}`);
      tt.match(shm?.fix, /shm-size/, 'the fix names Docker\'s --shm-size');
      tt.equal(exit.code, code, `exit code ${code}`);
    }
  });

  t.test('clean --dry-run --json keeps a live bus and says why', async (tt) => {
    const report = await json<{ outcomes: { name: string; action: string; why: string }[] }>(tt, ['clean', '--dry-run', '--json', '--match', busName]);
    const mine = report.outcomes.filter((o) => o.name.includes(busName));
    tt.ok(mine.length >= 2, 'registry and topics found');
    tt.ok(mine.every((o) => o.action === 'kept' && /alive/.test(o.why)), 'all kept: alive');
    tt.ok(existsSync(`/dev/shm/shmbus.bus.${busName}`));
  });

  t.test('version --json', async (tt) => {
    const v = await json<{ version: string; layout: string }>(tt, ['version', '--json']);
    tt.equal(v.version, JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version);
    tt.match(v.layout, /^\d+\.\d+$/);
  });

  t.test('bench --json measures every peer and writes the chart', async (tt) => {
    const svg = join(tmpdir(), `${unique('cli-bench')}.svg`);
    tt.teardown(() => rmSync(svg, { force: true }));
    const out = await json<{ rows: { kind: string; peer: string; msgPerSec: number; messages: number }[]; svg: string }>(tt, ['bench', '--json', '--messages', String(scaled(20_000, 2000)), '--svg', svg]);
    tt.equal(out.rows.length, 8);
    for (const peerName of ['shm', 'unix', 'fork', 'worker']) {
      for (const kind of ['raw', 'object']) tt.ok(out.rows.some((r) => r.peer === peerName && r.kind === kind && r.msgPerSec > 0), `${peerName} ${kind}`);
    }
    tt.match(readFileSync(svg, 'utf8'), /^<svg [^]*<\/svg>\n$/);
  });

  for (const scheme of ['sysv', 'file'] as const) {
    t.test(`ls and stat see a ${scheme}:// endpoint and its segment`, async (tt) => {
      const name = scheme === 'sysv' ? `0x${(0x5c000000 + ((process.pid & 0xffff) << 4)).toString(16)}` : join(tmpdir(), unique('cli-file'));
      const url = `${scheme}://${name}?size=16KiB`;
      const l = await listen(url);
      const accepted = l.acceptNext();
      const { connect } = await import('../../index.js');
      const c = await connect(url);
      const a = (await accepted)!;
      tt.teardown(async () => { await c.close(); await a.close(); await l.close(); });
      c.sendBytes(new Uint8Array(100));
      const out = await json<{ endpoints: { url: string; transport: string; connections: { segment: string }[] }[] }>(tt, ['ls', '--json', '--endpoints']);
      const ep = out.endpoints.find((e) => e.url === url.replace(/\?.*/, ''));
      tt.equal(ep?.transport, scheme);
      tt.match(ep?.connections[0]?.segment, new RegExp(`^${scheme}:[0-9]+$`));
      const s = await json<{ connections: { toListener: { tail: number; capacity: number; committed: number } }[] }>(tt, ['stat', url, '--once', '--json', '--interval', '50']);
      tt.equal(s.connections[0]?.toListener.capacity, 16 * 1024);
      tt.ok(s.connections[0]!.toListener.tail >= 100, 'the record sent is counted in the tail position');
      tt.equal(s.connections[0]!.toListener.committed, 1);
    });
  }

  t.test('the channels of a closed listener are still listed, by their segments', async (tt) => {
    const url = `shm://${unique('cli-closed')}?size=16KiB`;
    const l = await listen(url);
    const accepted = l.acceptNext();
    const { connect } = await import('../../index.js');
    const c = await connect(url);
    const a = (await accepted)!;
    tt.teardown(async () => { await c.close(); await a.close(); });
    await l.close();
    const out = await json<{ endpoints: { url: string; listening: boolean; connections: { peers: Proc[] }[] }[] }>(tt, ['ls', '--json', '--endpoints']);
    const ep = out.endpoints.find((e) => e.url === url.replace(/\?.*/, ''));
    tt.equal(ep?.listening, false, 'not listening');
    tt.equal(ep?.connections.length, 1, 'its one channel');
    tt.same(ep?.connections[0]?.peers, [{ pid: process.pid, alive: true }]);
  });

  t.test('a bus left by a killed process is listed dead, and clean removes it', async (tt) => {
    const dead = `shm://${unique('cli-deadbus')}`;
    const child = startFixture(tt, 'bus-peer', [dead, 'orphan', 'pubstall']);
    await child.line('ready');
    child.kill();
    await child.exit;
    const out = await json<{ buses: { url: string; alive: boolean }[]; objects: { name: string; alive: boolean }[] }>(tt, ['ls', '--json']);
    tt.equal(out.buses.find((b) => b.url === dead)?.alive, false, 'the bus is dead');
    const mine = out.objects.filter((o) => o.name.includes(dead.slice('shm://'.length)));
    tt.equal(mine.length, 2, 'registry and topic');
    tt.ok(mine.every((o) => o.alive === false), 'both dead');
    const report = await json<{ outcomes: { action: string }[] }>(tt, ['clean', '--json', '--match', dead.slice('shm://'.length)]);
    tt.same(report.outcomes.map((o) => o.action), ['removed', 'removed']);
    tt.notOk(existsSync(`/dev/shm/shmbus.bus.${dead.slice('shm://'.length)}`));
  });

  t.test('ls lists shared state and lock segments with the processes that map them', async (tt) => {
    const name = unique('cli-state');
    const state = await SharedState.open(`shm://${name}`, { fields: { n: 'u32' } });
    const mutex = await Mutex.open(`shm://${name}-m`);
    tt.teardown(() => { state.close(); mutex.close(); });
    const out = await json<{ objects: { kind: string; name: string; alive: boolean; why: string }[] }>(tt, ['ls', '--json', '--objects']);
    const mine = out.objects.filter((o) => o.name.includes(name));
    tt.same(mine.map((o) => [o.kind, o.name, o.alive]).sort(), [
      ['mutex', `/dev/shm/shmbus.mutex.${name}-m`, true],
      ['state', `/dev/shm/shmbus.state.${name}`, true],
    ]);
    tt.ok(mine.every((o) => o.why.includes(String(process.pid))), 'mapped by this process');
  });

  t.test('--help on every command, usage errors exit 2', async (tt) => {
    const names = ['ls', 'stat', 'tail', 'pub', 'req', 'doctor', 'bench', 'clean', 'version'];
    const helps = await Promise.all(names.map((name) => shmbus(tt, [name, '--help'])));
    names.forEach((name, i) => {
      tt.equal(helps[i]!.code, 0);
      tt.match(helps[i]!.stdout, new RegExp(`^usage: shmbus ${name}`), `${name} --help`);
    });
    tt.equal((await shmbus(tt, ['ls', '--bogus'])).code, 2, 'unknown option');
    tt.equal((await shmbus(tt, ['stat'])).code, 2, 'missing argument');
    tt.equal((await shmbus(tt, ['nope'])).code, 2, 'unknown command');
    const help = await shmbus(tt, ['help']);
    tt.match(help.stdout, /ls .*\n.*stat/);
  });
});
