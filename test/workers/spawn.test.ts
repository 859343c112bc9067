// spawn() and parentChannel(), for both isolations: messages and requests both ways, argv/env, how a worker
// ends (exit code, signal, kill, uncaught exception) and what that does to the channel, bad options, and that
// nothing (descriptor, memfd) is left behind on either side.
import t from 'tap';
import { readdirSync, readlinkSync } from 'node:fs';
import { spawn, spawnTestHooks, type Isolation, type WorkerHandle } from '../../workers/spawn.js';
import { parentChannel } from '../../workers/parent.js';
import { ErrorCode, ShmbusError } from '../../host/errors.js';
import { eventually, fileTimeout, fixture, scaled, startFixture, within, type TestLike } from '../helpers.js';

fileTimeout(t, 120, 10);

const ECHO = fixture('worker-echo');
const MESSAGES = scaled(100_000);

/** What this process's memfd and socket descriptors point to (the others come and go with the test runner). */
function fds(): string[] {
  return readdirSync('/proc/self/fd').map((fd) => { try { return readlinkSync(`/proc/self/fd/${fd}`); } catch { return ''; } })
    .filter((l) => l.startsWith('/memfd:') || l.startsWith('socket:')).sort();
}

/** Starts the echo worker; the test's teardown kills it if it still runs and waits for its end. */
async function start(t: TestLike, isolation: Isolation, options: Parameters<typeof spawn>[1] = {}): Promise<WorkerHandle> {
  const handle = await spawn(ECHO, { isolation, ...options });
  t.teardown(async () => {
    handle.kill('SIGKILL');
    await within(30_000, handle.exited, 'worker to end after kill');
    await handle.channel.close();
  });
  return handle;
}

t.test('parentChannel() outside a worker is ERR_SHMBUS_BAD_STATE', async (t) => {
  await t.rejects(parentChannel(), { code: ErrorCode.BAD_STATE });
  const child = startFixture(t, 'not-a-worker', []);
  t.equal(await child.line(/^code /), `code ${ErrorCode.BAD_STATE}`, 'a process started by hand gets the typed error');
});

t.test('bad options are ERR_SHMBUS_BAD_ARGUMENT', async (t) => {
  const before = fds();
  await t.rejects(spawn(ECHO, { isolation: 'fiber' as Isolation }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(spawn(ECHO, null as unknown as {}), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(spawn(ECHO, { ringSize: 1000 }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(spawn(ECHO, { ringSize: '3MiB' }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(spawn(ECHO, { wake: 'sem' as 'futex' }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(spawn(ECHO, { args: [1 as unknown as string] }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(spawn(''), { code: ErrorCode.BAD_ARGUMENT });
  t.same(fds(), before, 'a refused spawn leaves no descriptor');
});

for (const isolation of ['process', 'thread'] as const) {
  t.test(`${isolation}: messages both ways, in order`, async (t) => {
    const w = await start(t, isolation, { ringSize: '64KiB' });
    t.equal(typeof (isolation === 'process' ? w.pid : w.threadId), 'number', 'pid or threadId');
    const reader = (async () => {
      let n = 0;
      for await (const msg of w.channel) {
        if ((msg as { i: number }).i !== n) throw new Error(`message ${n} came as ${JSON.stringify(msg)}`);
        if (++n === MESSAGES) return n;
      }
      return n;
    })();
    // Awaited below; if sending fails first, the failure reported is that one, not an unhandled rejection.
    reader.catch(() => {});
    for (let i = 0; i < MESSAGES; i++) if (!w.channel.send({ i, pad: 'x'.repeat(i % 100) })) await w.channel.drained();
    t.equal(await within(60_000, reader, 'echoes'), MESSAGES, 'every message came back, in order');
    const exit = await within(30_000, w.close(), 'worker to end after close');
    t.same(exit, { code: 0, signal: null }, 'closing the channel ends the worker cleanly');
  });

  t.test(`${isolation}: request/handle both ways, argv, env`, async (t) => {
    const w = await start(t, isolation, { args: ['one', 'two'], env: { ...process.env, WORKER_TEST_ENV: 'seen' } });
    t.same(await w.channel.request({ n: 1 }, { timeout: 30_000 }), { echo: { n: 1 } }, 'request answered');
    w.channel.handle((v) => `parent got ${String(v)}`);
    t.equal(await w.channel.request({ cmd: 'ask', value: 'ping' }, { timeout: 30_000 }), 'parent got ping', 'the worker asks the parent');
    const info = await w.channel.request({ cmd: 'argv' }, { timeout: 30_000 }) as { argv: string[]; env: string | null; ctx: string | null };
    t.same(info.argv, [ECHO, 'one', 'two'], 'argv[1] is the module, then the args');
    t.equal(info.env, 'seen', 'env reaches the worker');
    t.equal(info.ctx, null, 'the worker context is not left in the environment');
    t.equal(await w.channel.request({ cmd: 'again' }, { timeout: 30_000 }), true, 'parentChannel() gives the same channel twice');
    if (isolation === 'process') t.equal(await w.channel.request({ cmd: 'pdeathsig' }, { timeout: 30_000 }), 9, 'the worker process has PR_SET_PDEATHSIG = SIGKILL');
    await t.rejects(w.channel.request({ cmd: 'fail' }, { timeout: 30_000 }), { code: ErrorCode.REMOTE }, 'a failed handler is a failed reply');
    await within(30_000, w.close(), 'worker to end');
  });

  t.test(`${isolation}: exit code, 'exit' event, peer death on the channel`, async (t) => {
    const w = await start(t, isolation);
    const event = new Promise((resolve) => w.once('exit', resolve));
    const reading = (async () => { for await (const _ of w.channel) { /* nothing comes */ } })();
    reading.catch(() => {});
    w.channel.send({ noise: true });
    void w.channel.request({ cmd: 'exit', code: 3 }).catch(() => {});
    const exit = await within(30_000, w.exited, 'worker to exit');
    t.same(exit, { code: 3, signal: null }, 'exit code');
    t.same(await event, exit, "'exit' event");
    t.same(w.exitStatus, exit, 'exitStatus');
    await t.rejects(within(30_000, reading, 'iterator to end'), { code: ErrorCode.PEER_DEAD }, 'the iterator ends with PEER_DEAD');
  });

  t.test(`${isolation}: kill`, async (t) => {
    const w = await start(t, isolation);
    t.same(await w.channel.request('alive', { timeout: 30_000 }), { echo: 'alive' });
    // A request the worker never answers (an echo could come back before the kill lands: it takes microseconds).
    const pending = w.channel.request({ cmd: 'hang' });
    pending.catch(() => {});
    w.kill('SIGKILL');
    const exit = await within(30_000, w.exited, 'worker to die');
    t.same(exit, isolation === 'process' ? { code: null, signal: 'SIGKILL' } : { code: 1, signal: null }, 'how it ended');
    await t.rejects(within(30_000, pending, 'request to fail'), { code: ErrorCode.PEER_DEAD }, 'a pending request fails with PEER_DEAD');
    w.kill('SIGKILL');
    t.pass('kill after the end is a no-op');
  });

  t.test(`${isolation}: kill ends a worker whose channel sleeps on a futex`, async (t) => {
    // A thread's own threads are terminated and joined with it; a wait thread inside futex_waitv would never come
    // back to JavaScript to be terminated without the bound on its calls (host/thread.ts NESTED_WAIT_MS).
    const w = await start(t, isolation, { wake: 'futex' });
    // The worker's futex wait thread is up once its channel has parked waiting for our next request.
    for (let tries = 0; ; tries++) {
      const futex = await w.channel.request({ cmd: 'futex' }, { timeout: 30_000 }) as { threads: number; parks: number } | null;
      if (futex !== null && futex.threads >= 1 && futex.parks >= 1) break;
      if (tries >= 3000) throw new Error(`the worker's channel never parked on its futex: ${JSON.stringify(futex)}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    w.kill('SIGKILL');
    const exit = await within(30_000, w.exited, 'the worker to end after kill');
    t.same(exit, isolation === 'process' ? { code: null, signal: 'SIGKILL' } : { code: 1, signal: null }, 'how it ended');
  });

  t.test(`${isolation}: uncaught exception`, async (t) => {
    const w = await start(t, isolation);
    const errors: Error[] = [];
    w.on('error', (e) => errors.push(e));
    t.equal(await w.channel.request({ cmd: 'throw' }, { timeout: 30_000 }), 'soon');
    const exit = await within(30_000, w.exited, 'worker to die');
    t.equal(exit.code, 1, 'exit code 1');
    if (isolation === 'thread') t.match(errors[0]?.message, /uncaught in the worker/, "a thread's exception comes as 'error'");
  });

  t.test(`${isolation}: nothing left behind`, async (t) => {
    const before = fds();
    const w = await spawn(ECHO, { isolation });
    const theirs = await w.channel.request({ cmd: 'fds' }, { timeout: 30_000 }) as string[];
    if (isolation === 'process') {
      t.notOk(theirs.some((l) => l.startsWith('/memfd:')), 'the worker holds no descriptor of the segment once mapped');
    }
    t.ok(fds().some((l) => l.startsWith('/memfd:')) === false, 'the parent closed its memfd once the worker held it');
    await within(30_000, w.close(), 'worker to end');
    t.same(fds(), before, 'every descriptor is closed after close()');
    for (let i = 0; i < 3; i++) {
      const idle = await spawn(fixture('worker-idle'), { isolation });
      idle.kill('SIGKILL');
      await within(30_000, idle.exited, 'idle worker to die');
      await idle.channel.close();
    }
    t.same(fds(), before, 'nor when workers that never asked for their channel are killed');
  });
}

for (const isolation of ['process', 'thread'] as const) {
  t.test(`${isolation}: a worker started when the parent's channel cannot be opened is not left running`, async (t) => {
    const before = fds();
    let started: { pid?: number; threadId?: number } | undefined;
    spawnTestHooks.beforeParentChannel = (worker) => { started = worker; throw new Error('no channel for you'); };
    t.teardown(() => { spawnTestHooks.beforeParentChannel = undefined; });
    await t.rejects(spawn(fixture('worker-idle'), { isolation }), { message: 'no channel for you' });
    spawnTestHooks.beforeParentChannel = undefined;
    t.ok(started, 'the worker had started');
    if (isolation === 'process') {
      const alive = () => { try { process.kill(started!.pid!, 0); return true; } catch { return false; } };
      await eventually(() => !alive(), 'the child to be gone');
      t.notOk(alive(), 'the child is gone');
    }
    await eventually(() => fds().join() === before.join(), 'descriptors to be closed');
    t.same(fds(), before, 'nothing is left open');
  });
}

t.test('typed errors are ShmbusErrors', async (t) => {
  const error = await parentChannel().catch((e: unknown) => e);
  t.ok(error instanceof ShmbusError);
});
