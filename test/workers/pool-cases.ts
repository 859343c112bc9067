// The Pool cases, run once per isolation by test/workers/pool-process.test.ts and pool-thread.test.ts (two files so
// that tap runs them side by side): results, stats, task errors, a worker dying mid-task (process.exit, SIGKILL,
// an uncaught exception) while other tasks complete, tasks sent ahead going back to the queue, taskTimeout counted
// from the start of running, abort signals, maxQueue, close and destroy, a module that does not load.
import type { Test } from 'tap';
import { Pool, type PoolOptions } from '../../workers/pool.js';
import { TaskError, WorkerExitError, WorkerStartError } from '../../workers/errors.js';
import { ErrorCode } from '../../host/errors.js';
import { eventually, fixture, scaled, within, type TestLike } from '../helpers.js';

export const TASK = fixture('pool-task');
const TASKS = scaled(30_000);
const W = 60_000;

function pool(t: TestLike, options: PoolOptions): Pool {
  const p = new Pool(TASK, { ringSize: '256KiB', ...options });
  t.teardown(() => within(W, p.destroy(), 'pool to be destroyed'));
  return p;
}

export function poolCases(t: Test, isolation: 'process' | 'thread'): void {
  t.test(`${isolation}: results and stats`, async (t) => {
    const p = pool(t, { size: 2, isolation });
    const results = await within(W, Promise.all(Array.from({ length: TASKS }, (_, i) => p.run({ op: 'echo', value: { i, s: 'x'.repeat(i % 64) } }))), 'tasks');
    t.ok(results.every((r, i) => (r as { i: number }).i === i), 'every task got its own result');
    t.same(await p.run({ op: 'echo', value: Buffer.from([1, 2, 3]) }), Buffer.from([1, 2, 3]), 'binary data in an object');
    const big = Buffer.alloc(100_000, 9);
    const echoed = await p.run(big) as Uint8Array;
    t.ok(echoed instanceof Uint8Array && Buffer.from(echoed).equals(big), 'a buffer task and result, sent raw');
    await t.rejects(p.run(Buffer.alloc(256 * 1024)), { code: ErrorCode.MESSAGE_TOO_LARGE }, 'a buffer too large for the ring');
    const stats = p.stats();
    t.equal(stats.completed, TASKS + 2, 'completed');
    t.equal(stats.failed, 1, 'failed');
    t.equal(stats.queueLength, 0, 'queue empty');
    t.equal(stats.running, 0, 'nothing running');
    t.equal(stats.waitTime.count, TASKS + 2, 'a wait time per task that ran');
    t.equal(stats.runTime.count, TASKS + 2, 'a run time per task that ran');
    t.ok(stats.runTime.p50 > 0 && stats.runTime.p50 <= stats.runTime.p99 && stats.runTime.p99 <= stats.runTime.max, 'run time p50 ≤ p99 ≤ max');
    t.ok(stats.waitTime.p99 <= stats.waitTime.max, 'wait time p99 ≤ max');
    t.ok(stats.utilization > 0 && stats.utilization <= 1, `utilization in (0, 1]: ${stats.utilization}`);
    t.equal(stats.workers, 2, 'two workers');
    const who = new Set<string>();
    for (let i = 0; i < 50; i++) {
      const w = await p.run({ op: 'who' }) as { pid: number; threadId: number };
      who.add(isolation === 'process' ? String(w.pid) : String(w.threadId));
    }
    if (isolation === 'process') t.notOk(who.has(String(process.pid)), 'tasks run in other processes');
    else t.notOk(who.has('0'), 'tasks run in other threads');
  });

  t.test(`${isolation}: a task that throws`, async (t) => {
    const p = pool(t, { size: 1, isolation });
    const error = await p.run({ op: 'throw' }).catch((e: unknown) => e) as TaskError;
    t.ok(error instanceof TaskError, 'TaskError');
    t.equal(error.code, ErrorCode.REMOTE);
    t.equal(error.remoteCode, 'E_TASK', "the task's error code");
    t.equal(error.remoteMessage, 'task failed');
    t.match(error.remoteStack, /pool-task/, "the task's stack");
    t.equal(await p.run({ op: 'echo', value: 1 }), 1, 'the worker goes on');
    t.equal(p.stats().replaced, 0, 'no worker replaced for a thrown error');
    t.equal(p.stats().failed, 1);
  });

  const deaths: [string, object, (e: WorkerExitError) => void][] = [
    ['process.exit', { op: 'exit', code: 7 }, (e) => { t.equal(e.exitCode, 7); t.equal(e.signal, null); }],
    ['an uncaught exception', { op: 'uncaught' }, (e) => { t.equal(e.exitCode, 1); }],
  ];
  if (isolation === 'process') deaths.push(['SIGKILL', { op: 'kill' }, (e) => { t.equal(e.exitCode, null); t.equal(e.signal, 'SIGKILL'); }]);
  for (const [how, task, check] of deaths) {
    t.test(`${isolation}: a worker dies mid-task by ${how}`, async (t) => {
      const p = pool(t, { size: 2, isolation });
      const others = Array.from({ length: 20 }, (_, i) => p.run({ op: 'sleep', ms: 5 }).then(() => i));
      const error = await within(W, p.run(task).catch((e: unknown) => e), 'the task to fail') as WorkerExitError;
      t.ok(error instanceof WorkerExitError, `WorkerExitError: ${String(error)}`);
      t.equal(error.code, ErrorCode.PEER_DEAD);
      check(error);
      t.same(await within(W, Promise.all(others), 'the other tasks'), Array.from({ length: 20 }, (_, i) => i), 'the other tasks complete');
      t.equal(await within(W, p.run({ op: 'echo', value: 'after' }), 'a task after'), 'after', 'the pool runs tasks after');
      t.equal(p.stats().replaced, 1, 'the dead worker was replaced');
      t.equal(p.stats().workers, 2, 'two workers again');
      await within(W, p.close(), 'close');
    });
  }

  t.test(`${isolation}: taskTimeout counts from the start of running`, async (t) => {
    const p = pool(t, { size: 1, isolation, taskTimeout: 3000 });
    // Three tasks of 1 s each on one worker: the last waits ~2 s and runs ~1 s; from run() that is ~3 s or more.
    const queued = await within(W, Promise.all([0, 1, 2].map(() => p.run({ op: 'sleep', ms: 1000 }))), 'sleepers');
    t.same(queued, ['slept', 'slept', 'slept'], 'time spent queued does not count');
    await t.rejects(within(W, p.run({ op: 'spin' }), 'the spinning task'), { code: ErrorCode.TIMEOUT }, 'a task past taskTimeout rejects with TIMEOUT');
    t.equal(await within(W, p.run({ op: 'echo', value: 2 }), 'next task'), 2, 'a replacement worker runs the next task');
    t.equal(p.stats().replaced, 1, 'the worker was replaced');
  });

  t.test(`${isolation}: abort signals`, async (t) => {
    const p = pool(t, { size: 1, isolation });
    const reason = new Error('changed my mind');
    await t.rejects(p.run({ op: 'echo' }, { signal: AbortSignal.abort(reason) }), reason, 'an aborted signal rejects at once with its reason');
    const running = new AbortController();
    const queued = new AbortController();
    const r1 = p.run({ op: 'hang' }, { signal: running.signal });
    r1.catch(() => {});
    await eventually(() => p.stats().running === 1, 'the hanging task to start');
    const r2 = p.run({ op: 'echo', value: 'x' }, { signal: queued.signal });
    queued.abort(reason);
    await t.rejects(r2, reason, 'a queued task rejects with the reason');
    t.equal(p.stats().queueLength, 0, 'and leaves the queue');
    running.abort(reason);
    await t.rejects(r1, reason, 'a running task rejects with the reason');
    t.equal(await within(W, p.run({ op: 'echo', value: 3 }), 'next task'), 3, 'the pool goes on');
    t.equal(p.stats().replaced, 1, 'the aborted task\'s worker was replaced');
  });

  t.test(`${isolation}: maxQueue, close, destroy`, async (t) => {
    const p = pool(t, { size: 1, isolation, maxQueue: 2 });
    const hang = p.run({ op: 'hang' });
    await eventually(() => p.stats().running === 1, 'the hanging task to start');
    const q1 = p.run({ op: 'echo', value: 1 });
    const q2 = p.run({ op: 'echo', value: 2 });
    for (const r of [hang, q1, q2]) r.catch(() => {});
    await t.rejects(p.run({ op: 'echo', value: 3 }), { code: ErrorCode.QUEUE_FULL }, 'past maxQueue: QUEUE_FULL');
    t.equal(p.stats().queueLength, 2);
    await within(W, p.destroy(), 'destroy');
    for (const r of [hang, q1, q2]) await t.rejects(r, { code: ErrorCode.CLOSED }, 'destroy rejects running and queued tasks');
    await t.rejects(p.run({ op: 'echo' }), { code: ErrorCode.CLOSED }, 'run after destroy');

    const c = pool(t, { size: 1, isolation });
    const all = [1, 2, 3].map((i) => c.run({ op: 'sleep', ms: 20 }).then(() => i));
    const closed = c.close();
    await t.rejects(c.run({ op: 'echo' }), { code: ErrorCode.CLOSED }, 'run after close');
    t.same(await within(W, Promise.all(all), 'queued tasks'), [1, 2, 3], 'close finishes queued tasks');
    await within(W, closed, 'close');
    t.equal(c.stats().workers, 0, 'no worker left after close');
  });

  t.test(`${isolation}: a module that does not load`, async (t) => {
    const p = new Pool(fixture('pool-task-broken'), { size: 2, isolation });
    t.teardown(() => p.destroy());
    const error = await within(W, p.run(1).catch((e: unknown) => e), 'the task to fail') as TaskError;
    t.ok(error instanceof TaskError, String(error));
    t.match(error.remoteMessage, /default export/);
    await t.rejects(p.run(2), { code: ErrorCode.REMOTE }, 'later tasks fail the same way');
    await within(W, p.close(), 'close');
  });

  t.test(`${isolation}: tasks sent ahead go back to the queue when their worker dies`, async (t) => {
    const p = pool(t, { size: 2, isolation, tasksPerWorker: 8 });
    const results = await within(W, Promise.all(Array.from({ length: 2000 }, (_, i) => p.run({ op: 'echo', value: i }))), 'tasks');
    t.ok(results.every((r, i) => r === i), 'pipelined tasks all get their own result');
    const sleepers = Array.from({ length: 40 }, (_, i) => p.run({ op: 'sleep', ms: 2 }).then(() => i));
    const dying = p.run({ op: 'exit', code: 9 }).catch((e: unknown) => e);
    const after = Array.from({ length: 40 }, (_, i) => p.run({ op: 'echo', value: i }));
    const error = await within(W, dying, 'the dying task') as WorkerExitError;
    t.ok(error instanceof WorkerExitError && error.exitCode === 9, 'the running task fails with the exit code');
    t.same(await within(W, Promise.all(sleepers), 'sleepers'), Array.from({ length: 40 }, (_, i) => i), 'tasks before it complete');
    t.same(await within(W, Promise.all(after), 'after'), Array.from({ length: 40 }, (_, i) => i), 'tasks sent ahead behind it are run by others');
    t.equal(p.stats().failed, 1, 'only the running task failed');
    const abortable = new AbortController();
    const blocker = p.run({ op: 'sleep', ms: 200 });
    const blocker2 = p.run({ op: 'sleep', ms: 200 });
    const ahead = p.run({ op: 'echo', value: 'ahead' }, { signal: abortable.signal });
    const no = new Error('no');
    abortable.abort(no);
    await t.rejects(ahead, no, 'a task sent ahead can be aborted');
    await within(W, Promise.all([blocker, blocker2]), 'blockers');
    t.equal(p.stats().replaced, 1, 'aborting a task sent ahead replaces no worker');
  });

  t.test(`${isolation}: a long task does not hold up the tasks sent ahead behind it`, async (t) => {
    const p = pool(t, { size: 2, isolation });
    t.equal(await within(W, p.run({ op: 'echo', value: 0 }), 'a first task'), 0);
    const long = new AbortController();
    const hang = p.run({ op: 'hang' }, { signal: long.signal });
    hang.catch(() => {});
    // Tasks go to the worker with the fewest, so about half wait behind the hanging one: the other worker takes
    // them back once it has run its own.
    const short = Array.from({ length: 40 }, (_, i) => p.run({ op: 'echo', value: i }));
    t.same(await within(W, Promise.all(short), 'the short tasks'), Array.from({ length: 40 }, (_, i) => i), 'all ran while the long one runs');
    t.ok(p.stats().stolen > 0, `tasks were taken back: ${p.stats().stolen}`);
    t.equal(p.stats().running, 1, 'the long task still runs');
    long.abort(new Error('enough'));
    await t.rejects(hang, { message: 'enough' });
    t.equal(p.stats().failed, 1, 'only the long task failed');
  });

  t.test(`${isolation}: tasks sent to a worker whose channel just ended go to another`, async (t) => {
    const p = pool(t, { size: 1, isolation });
    t.equal(await within(W, p.run({ op: 'close-channel', ms: 300 }), 'the closing task'), 'closing');
    // Sent into a ring nobody reads any more, or refused by the ended channel: either way not this task's fault.
    const after = Array.from({ length: 10 }, (_, i) => p.run({ op: 'echo', value: i }));
    t.same(await within(W, Promise.all(after), 'the tasks after'), Array.from({ length: 10 }, (_, i) => i), 'they run on the replacement');
    t.equal(p.stats().failed, 0, 'none failed');
    // Some of them may have run on the closing worker before its channel closed (the close comes from a
    // setImmediate, after messages already in its ring): the worker still ends (ms) and is replaced.
    await within(W, eventually(() => p.stats().replaced === 1, 'the worker to be replaced', W), 'the replacement');
    t.equal(p.stats().replaced, 1, 'the worker was replaced');
  });

  t.test(`${isolation}: a module that ends its worker as it loads breaks the pool`, async (t) => {
    const p = new Pool(fixture('pool-task-exits'), { size: 2, isolation });
    t.teardown(() => p.destroy());
    const error = await within(W, p.run(1).catch((e: unknown) => e), 'the task to fail') as WorkerStartError;
    t.ok(error instanceof WorkerStartError, String(error));
    t.equal(error.code, ErrorCode.PEER_DEAD);
    t.equal(error.exitCode, 5, "the last worker's exit code");
    t.ok(p.stats().replaced < 3, `not restarted forever: ${p.stats().replaced} replaced`);
    await t.rejects(p.run(2), WorkerStartError, 'later tasks fail the same way');
    await within(W, p.close(), 'close');
    t.equal(p.stats().workers, 0, 'no worker left');
  });
}
