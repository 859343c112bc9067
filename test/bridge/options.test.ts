// The bridge's names, its bookkeeping and its argument checks (no nats-server needed).
import t from 'tap';
import { readdirSync } from 'node:fs';
import { bridge } from '../../bridge/index.js';
import { resumePoint } from '../../bridge/import.js';
import { backoff, MAX_BACKOFF_MS, MIN_BACKOFF_MS, natsServers } from '../../bridge/connection.js';
import { checkPrefix, escapeToken, messageId, originOf, parseMessageId, streamOf } from '../../bridge/naming.js';
import { ErrorCode } from '../../host/errors.js';
import { startFixture, unique } from '../helpers.js';

const shmFiles = () => readdirSync('/dev/shm').filter((f) => f.startsWith(`shmbus.bus.bridgeo-${process.pid}-`));
t.afterEach((sub) => { t.same(shmFiles(), [], `nothing left in /dev/shm by: ${sub.name}`); });

t.test('names on NATS are valid tokens and distinct for distinct topics', async (t) => {
  t.equal(escapeToken('ticks'), 'ticks');
  t.not(streamOf('a_b', 'c'), streamOf('a', 'b_c'), 'no two prefix/topic pairs share a stream');
  t.not(streamOf('p', 'a.b'), streamOf('p', 'a_b'));
  t.match(streamOf('app.prod', 'x.y-z'), /^[A-Za-z0-9_=-]+$/, 'a stream name holds no dot, wildcard or space');
  t.same(parseMessageId(messageId('host-1', 'e1', 42)), { origin: 'host-1', epoch: 'e1', seq: 42 });
  t.equal(parseMessageId('someone else'), undefined, 'ids of other publishers are not ours');
  t.equal(parseMessageId(undefined), undefined);
  t.equal(originOf('shm://a'), originOf('shm://a'), 'the default name is stable');
  t.not(originOf('shm://a'), originOf('shm://b'), 'and differs per bus');
  t.equal(originOf('shm://a', 'mine'), 'mine');
  t.throws(() => originOf('shm://a', 'bad.name'), { code: ErrorCode.BAD_ARGUMENT });
  t.equal(checkPrefix('app.prod'), 'app.prod');
  for (const bad of ['', 'a..b', 'a.*', 'a b', '>', 7]) t.throws(() => checkPrefix(bad), { code: ErrorCode.BAD_ARGUMENT }, `prefix ${String(bad)}`);
});

t.test('an import resumes right after the last record committed before a crash', async (t) => {
  const marker = { prev: 10, before: 100, seqs: [11, 12, 14], last: 15 };
  t.equal(resumePoint(undefined, 5), 0, 'no marker: from the stream start');
  t.equal(resumePoint(marker, 100), 10, 'none of the batch committed: after the previous batch');
  t.equal(resumePoint(marker, 101), 11, 'one committed');
  t.equal(resumePoint(marker, 102), 12, 'two committed (the skipped 13 is passed again, and skipped again)');
  t.equal(resumePoint(marker, 103), 15, 'all committed: after the batch, skipped ones included');
  t.equal(resumePoint(marker, 50), 10, 'the topic was made anew: deliver the batch again rather than lose it');
  t.equal(resumePoint({ prev: 'x' } as never, 5), 0, 'a marker that is not ours is ignored');
});

t.test('back-off doubles from 50 ms to 2 s, jittered', async (t) => {
  for (let i = 0; i < 20; i++) {
    const d = backoff(i);
    const base = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** i);
    t.ok(d >= base * 0.75 && d <= base * 1.25, `attempt ${i}: ${d} ms`);
  }
});

t.test('bad arguments are typed errors, and leave nothing behind', async (t) => {
  const url = () => `shm://${unique('bridgeo')}`;
  const nats = 'nats://127.0.0.1:1';
  await t.rejects(bridge(url(), nats, { prefix: 'a b' }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(bridge(url(), nats, { export: ['t'], import: ['t'] }), { code: ErrorCode.BAD_ARGUMENT }, 'exporting what it imports would echo');
  await t.rejects(bridge(url(), nats, { export: [{ topic: 't', policy: 'sometimes' as never }] }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(bridge(url(), nats, { export: [42 as never] }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(bridge(url(), 'http://x:4222'), { code: ErrorCode.BAD_URL }, 'not a NATS URL');
  await t.rejects(bridge(url(), 'nats://127.0.0.1:1', { credentials: '/nonexistent/x.creds' }), { code: ErrorCode.NOT_FOUND });
  await t.rejects(bridge(url(), 'nats://127.0.0.1:1', { credentials: { nope: 1 } as never }), { code: ErrorCode.BAD_ARGUMENT });
  const abort = new AbortController();
  const waiting = bridge(url(), 'nats://127.0.0.1:1', { signal: abort.signal });
  abort.abort();
  await t.rejects(waiting, { code: ErrorCode.CLOSED }, 'waiting for a server that is not there ends with the signal');
  t.same(natsServers('nats://a:1, tls://b:2'), ['nats://a:1', 'tls://b:2']);
  t.throws(() => natsServers(''), { code: ErrorCode.BAD_URL });
});

t.test('shmbus bridge: usage', async (t) => {
  const run = async (args: string[]) => {
    const child = startFixture(t, 'bridge-run', args);
    const { code } = await child.exit;
    return { code, out: child.stdout() + child.stderr() };
  };
  const help = await run(['--help']);
  t.equal(help.code, 0);
  t.match(help.out, /usage: shmbus bridge/);
  t.equal((await run(['shm://x'])).code, 2, 'both URLs are needed');
  t.equal((await run(['--bogus'])).code, 2, 'unknown options are refused');
  t.equal((await run(['shm://x', 'nats://h:1', '--export', 't:sometimes'])).code, 2, 'a bad policy is refused');
  t.equal((await run(['shm://x', 'nats://h:1', '--stats', 'often'])).code, 2);
  const bad = await run([`shm://${unique('bridgeo')}`, 'nats://h:1', '--prefix', 'a b']);
  t.equal(bad.code, 1, 'a bad prefix fails the run');
  t.match(bad.out, /ERR_SHMBUS_BAD_ARGUMENT/);
});
