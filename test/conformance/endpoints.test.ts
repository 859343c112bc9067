// What each byte-stream transport does with its endpoint beyond the shared contract: files in the way, stale
// leftovers, chosen ports, many FIFO connectors at once, hostile or silent FIFO peers, pipes in one process.
import t from 'tap';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pack } from 'msgpackr';
import { listen, connect, spawnWithPipe, ErrorCode, RECORD_MSGPACK, type Connection } from '../../index.js';
import { mkfifo, pipe } from '../../host/sys/fifo.js';
import { encodeFrame } from '../../transports/stream.js';
import { within } from './harness.js';
import { eventually, fileTimeout } from '../helpers.js';

// Measured on a busy 2-core machine (load 10-20): ~13 s. Timeout: 4x that, at least tap's 60 s.
fileTimeout(t, 60);

const dir = fs.mkdtempSync(join(tmpdir(), 'shmbus-endpoints-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
let serial = 0;
const path = (prefix: string) => join(dir, `${prefix}${++serial}`);

/** A pid that surely belongs to no process: one that just exited. */
function deadPid(): number {
  return spawnSync(process.execPath, ['-e', '0']).pid!;
}

/** A subtest's `t` (the last overload of t.test is `(cb: (t) => …)`). */
type Sub = Parameters<Parameters<typeof t.test>[0]>[0];

async function roundTrip(t: Sub, a: Connection, b: Connection, what: string): Promise<void> {
  a.send({ ping: what });
  t.same(await within(5000, b.receive(), `${what}: ping`), { ping: what }, `${what}: a → b`);
  b.sendBytes(new Uint8Array([1, 2, 3]));
  t.same(Array.from(await within(5000, a.receive(), `${what}: pong`) as Uint8Array), [1, 2, 3], `${what}: b → a`);
}

t.test('unix: a file that is not a socket is never replaced; escapes and abstract names', async (t) => {
  const file = path('plain') + '.sock';
  fs.writeFileSync(file, 'keep me');
  await t.rejects(listen(`unix://${file}`), { code: ErrorCode.EXISTS });
  t.equal(fs.readFileSync(file, 'utf8'), 'keep me', 'the file is untouched');

  const spaced = join(dir, `with space ${++serial}.sock`);
  const l = await listen(`unix://${encodeURI(spaced)}`);
  t.ok(fs.statSync(spaced).isSocket(), 'a percent-escaped path names the real file');
  const [a, b] = await Promise.all([connect(l.url), l.acceptNext()]) as [Connection, Connection];
  await roundTrip(t, a, b, 'escaped path');
  await Promise.all([a.close(), b.close()]);
  await l.close();
  t.notOk(fs.existsSync(spaced), 'removed on close');

  const abstract = `unix://@shmbus-endpoints-${process.pid}`;
  const la = await listen(abstract);
  t.equal(la.url, abstract);
  await t.rejects(listen(abstract), { code: ErrorCode.EXISTS }, 'an abstract name in use');
  await la.close();
});

t.test('tcp: port 0 puts the chosen port in the listener URL; IPv6 literals', async (t) => {
  const l = await listen('tcp://127.0.0.1:0?maxQueued=5');
  const m = /^tcp:\/\/127\.0\.0\.1:(\d+)\?maxQueued=5$/.exec(l.url);
  t.ok(m && Number(m[1]) > 0, `listener url ${l.url}`);
  const [a, b] = await Promise.all([connect(l.url), l.acceptNext()]) as [Connection, Connection];
  t.equal(a.maxQueued, 5);
  t.equal(b.maxQueued, 5, 'accepted connections take the options too');
  await roundTrip(t, a, b, 'tcp');
  await Promise.all([a.close(), b.close()]);
  await l.close();
  await t.rejects(connect('tcp://127.0.0.1:0'), { code: ErrorCode.BAD_URL }, 'port 0 is for listening only');

  let l6;
  try {
    l6 = await listen('tcp://[::1]:0');
  } catch (error) {
    t.comment(`no IPv6 loopback here: ${(error as Error).message}`);
    return;
  }
  t.match(l6.url, /^tcp:\/\/\[::1\]:\d+$/);
  const [c, d] = await Promise.all([connect(l6.url), l6.acceptNext()]) as [Connection, Connection];
  await roundTrip(t, c, d, 'ipv6');
  await Promise.all([c.close(), d.close()]);
  await l6.close();
});

t.test('pipe: two pipes in one process make a connection; each pipe carries one; stdio is checked', async (t) => {
  const [r1, w1] = pipe();
  const [r2, w2] = pipe();
  const a = await connect(`pipe:?in=${r1}&out=${w2}`);
  const b = await connect(`pipe:?in=${r2}&out=${w1}`);
  await roundTrip(t, a, b, 'pipes');
  await t.rejects(connect(`pipe:?in=${r1}&out=${w2}`), { code: ErrorCode.BAD_STATE }, 'the fds already carry a connection');
  await a.close();
  t.equal(await within(5000, b.receive(), 'end'), undefined, 'the other end sees the close');
  await b.close();
  t.throws(() => spawnWithPipe('/nonexistent.js', [], { stdio: ['ignore', 'ignore', 'ignore', 'ignore'] }), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => spawnWithPipe('/nonexistent.js', [], { url: 'pipe:?in=5' }), { code: ErrorCode.BAD_URL }, 'the child\'s fds are not the caller\'s to choose');
});

t.test('fifo: five connectors at once, each with its own connection; nothing left afterwards', async (t) => {
  const url = `fifo://${path('many')}`;
  const l = await listen(url);
  const connectors = await Promise.all(Array.from({ length: 5 }, () => connect(url)));
  const accepted: Connection[] = [];
  for (let i = 0; i < 5; i++) accepted.push((await within(5000, l.acceptNext(), 'accept'))!);
  // Each connector names itself; each accepted connection hears exactly one of them.
  connectors.forEach((c, i) => c.send({ from: i }));
  const heard = await Promise.all(accepted.map((a) => within(5000, a.receive(), 'hello') as Promise<{ from: number }>));
  t.same(heard.map((h) => h.from).sort(), [0, 1, 2, 3, 4]);
  // And each answer reaches the connector that asked.
  accepted.forEach((a, i) => a.send({ to: heard[i]!.from }));
  const answers = await Promise.all(connectors.map((c) => within(5000, c.receive(), 'answer') as Promise<{ to: number }>));
  t.same(answers.map((a) => a.to), [0, 1, 2, 3, 4]);
  await Promise.all([...connectors, ...accepted].map((c) => c.close()));
  await l.close();
  t.same(fs.readdirSync(dir).filter((f) => f.startsWith('many')), [], 'no FIFO is left: the endpoint and the connection FIFOs');
});

t.test('fifo: a garbage request or one naming foreign files is refused; the listener goes on', async (t) => {
  const p = path('hostile');
  const l = await listen(`fifo://${p}`);
  const errors: string[] = [];
  l.on('error', (e: { code: string }) => errors.push(e.code));
  const victim = path('victim');
  fs.writeFileSync(victim, 'secret');
  // Next to the endpoint, so it passes the name check, but a regular file: never written to.
  const neighbour = `${p}.1.1.l2c`;
  fs.writeFileSync(neighbour, 'secret');
  mkfifo(`${p}.1.1.c2l`, 0o600);
  // A FIFO elsewhere, reached through `..` from a directory named like a connection FIFO: never removed.
  const victimFifo = path('victimfifo');
  mkfifo(victimFifo, 0o600);
  fs.mkdirSync(`${p}.x`);
  const around = `${p}.x/../${victimFifo.slice(victimFifo.lastIndexOf('/') + 1)}`;
  const fd = fs.openSync(p, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
  fs.writeSync(fd, encodeFrame(RECORD_MSGPACK, pack({ shmbus: 1, c2l: around, l2c: around, pid: 1 })));
  fs.writeSync(fd, encodeFrame(RECORD_MSGPACK, pack({ shmbus: 1, c2l: victim, l2c: victim, pid: 1 })));
  fs.writeSync(fd, encodeFrame(RECORD_MSGPACK, pack({ shmbus: 1, c2l: `${p}.1.1.c2l`, l2c: neighbour, pid: 1 })));
  fs.writeSync(fd, Buffer.from([0xff, 0xff, 0xff, 0xff, 0x02, 0x00]));
  fs.closeSync(fd);
  await eventually(() => errors.length >= 4, 'the listener to report the four bad requests');
  t.same(errors, [ErrorCode.HANDSHAKE, ErrorCode.HANDSHAKE, ErrorCode.HANDSHAKE, ErrorCode.CORRUPT], 'all four were reported to error listeners');
  t.ok(fs.lstatSync(victimFifo).isFIFO(), 'a FIFO reached through .. was not removed');
  fs.rmSync(victimFifo);
  fs.rmdirSync(`${p}.x`);
  t.equal(fs.readFileSync(victim, 'utf8'), 'secret', 'a file elsewhere was not touched');
  t.equal(fs.readFileSync(neighbour, 'utf8'), 'secret', 'a regular file named like a connection FIFO is left alone');
  t.notOk(fs.existsSync(`${p}.1.1.c2l`), 'the FIFO the failed request named is removed');
  fs.rmSync(neighbour);
  const c = await within(5000, connect(`fifo://${p}`), 'a real connector');
  const a = (await within(5000, l.acceptNext(), 'accept'))!;
  await roundTrip(t, c, a, 'after the garbage');
  await Promise.all([c.close(), a.close()]);
  await l.close();
});

t.test('fifo: files in the way, stale leftovers, and a listener that never answers', async (t) => {
  const plain = path('plain');
  fs.writeFileSync(plain, 'keep me');
  await t.rejects(listen(`fifo://${plain}`), { code: ErrorCode.EXISTS }, 'a regular file at the path');
  t.equal(fs.readFileSync(plain, 'utf8'), 'keep me');

  // Connection FIFOs of a connector that was killed mid-handshake are removed by the next listener.
  const p = path('stale');
  const dead = deadPid();
  mkfifo(`${p}.${dead}.1.c2l`, 0o600);
  mkfifo(`${p}.${dead}.1.l2c`, 0o600);
  mkfifo(`${p}.${process.pid}.77.c2l`, 0o600); // ours, alive: kept
  const l = await listen(`fifo://${p}`);
  t.same(fs.readdirSync(dir).filter((f) => f.startsWith(`stale${serial}.`)).sort(), [`stale${serial}.${process.pid}.77.c2l`], 'only the dead connector\'s FIFOs went');
  fs.rmSync(`${p}.${process.pid}.77.c2l`);
  await l.close();

  // Something reads the FIFO but never answers: connect times out and removes its own FIFOs.
  const silent = path('silent');
  mkfifo(silent, 0o600);
  const hold = fs.openSync(silent, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  await t.rejects(connect(`fifo://${silent}`, { timeout: 300 }), { code: ErrorCode.TIMEOUT });
  fs.closeSync(hold);
  t.same(fs.readdirSync(dir).filter((f) => f.startsWith('silent')), [`silent${serial}`], 'the connector removed its FIFOs');
  fs.rmSync(silent);
  await t.rejects(connect(`fifo://${plain}`), { code: ErrorCode.NOT_FOUND }, 'a regular file is not an endpoint');
});
