// Stopping a worker thread while it still starts. Node aborts the whole process when a worker is terminated while
// it loads a native addon (koffi, which every thread of ours imports: "FATAL ERROR: napi_throw"), so a user's
// worker thread (workers/spawn.ts) and a plugin's runner thread (plugins/runner-start.ts) are terminated only once
// they have loaded their imports. That moment is not observable from outside, so a plain node process
// (test/fixtures/stop-while-starting.ts) stops threads at a spread of points over their start-up and must live to
// say so. Without the deferral, runs of 60 stops aborted (checked by hand: workers two runs in three, plugins one
// in three). A plugin instance closed before it was ready also left its start timer running (30 s): the fixture
// counts the timers left.
import t from 'tap';
import { fileTimeout, scaled, startFixture, within } from './helpers.js';

fileTimeout(t, 40, 25);

for (const [mode, full, min] of [['worker', 300, 60], ['plugin', 300, 60]] as const) {
  t.test(`${mode}: stopped at any point while its thread starts, the process lives and every stop ends`, async (t) => {
    const count = scaled(full, min);
    const child = startFixture(t, 'stop-while-starting', [mode, String(count)]);
    const exit = await within(300_000, child.exit, 'the stops');
    t.same(exit, { code: 0, signal: null }, `the process lived (stderr: ${child.stderr().slice(0, 300)})`);
    t.match(child.stdout(), new RegExp(`^stopped ${count} `, 'm'), 'every stop ended');
    t.match(child.stdout(), /^stopped \d+ timers 0 /m, 'and left no timer keeping the process alive');
  });
}
