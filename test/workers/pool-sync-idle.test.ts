// Sync-idle pool workers (workers/pair.ts, pool-worker.ts): under wake 'doorbell' an idle worker blocks its thread
// on the ring word and the parent wakes it with FUTEX_WAKE. Tasks still flow in bursts with idle gaps, the task
// module's timers still run while the worker idles (its event loop gets a turn every so often), and the pool
// closes. Also the plain parts: Channel.waitSync on a channel that does not sleep on a futex returns at once.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Pool } from '../../workers/pool.js';
import { spawn } from '../../workers/spawn.js';
import { syncIdleAvailable } from '../../workers/pair.js';
import { fileTimeout, fixture, within } from '../helpers.js';

fileTimeout(t, 60);
// The workers count their blocks in futex_waitv (host/ring.ts perf.syncWaits): the test shows that idle workers
// took that path, not only that tasks flowed. Threads and child processes read this when they load the library.
process.env.SHMBUS_COUNTERS = '1';
const W = 30_000;
const TIMER_TASK = fixture('pool-task-timer');

/** Resolves once `file` exists in `dir` (an inotify event, or it is there already). */
function appears(dir: string, file: string): Promise<void> {
  return new Promise((resolve) => {
    const watcher = fs.watch(dir, () => { if (fs.existsSync(file)) { watcher.close(); resolve(); } });
    if (fs.existsSync(file)) { watcher.close(); resolve(); }
  });
}

for (const isolation of ['process', 'thread'] as const) {
  t.test(`${isolation}: an idle sync-idle worker wakes for tasks and runs its timers`, { skip: syncIdleAvailable() ? false : 'no futex_waitv' }, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-sync-idle-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const pool = new Pool(TIMER_TASK, { size: 2, isolation, wake: 'doorbell', ringSize: '256KiB' });
    t.teardown(() => within(W, pool.destroy(), 'pool to be destroyed'));
    // Bursts separated by idle gaps (each gap: the workers block until the next burst's first commit).
    for (let burst = 0; burst < 5; burst++) {
      const values = Array.from({ length: 50 }, (_, i) => burst * 100 + i);
      t.same(await within(W, Promise.all(values.map((value) => pool.run({ value }))), 'a burst'), values);
      // The gap: a timer in one worker, then nothing sent until it fired, i.e. until that idle worker's event
      // loop ran.
      const file = path.join(dir, `fired-${burst}`);
      const fired = appears(dir, file);
      t.equal(await within(W, pool.run({ file, ms: 25 }), 'arming'), 'armed');
      await within(W, fired, 'the idle worker to run its timer');
    }
    t.equal(pool.stats().failed, 0);
    // Whichever worker takes this task idled between the bursts above: blocked on its ring word at least once.
    const counters = await within(W, pool.run({ counters: true }), 'the counters') as { syncWaits: number };
    t.ok(counters.syncWaits >= 1, `the worker blocked in futex_waitv while idle (${counters.syncWaits} times)`);
    await within(W, pool.close(), 'pool to close');
  });
}

t.test('waitSync on a channel that does not sleep on a futex returns at once', async (t) => {
  const handle = await spawn(fixture('worker-echo'), { isolation: 'thread', wake: 'doorbell' });
  t.teardown(() => { handle.kill(); });
  t.equal(handle.channel.syncWaitable, false);
  t.equal(handle.channel.waitSync(60_000), false);
  await within(W, handle.close(), 'worker to end');
});
