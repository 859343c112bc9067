// Closing a plugin while a replacement instance's runner thread is still starting. A worker terminated while Node
// loads a native addon (koffi, which the runner imports) aborts the whole process ("FATAL ERROR: napi_throw"), so
// the host waits for the thread's RUNNER_LOADED before it terminates it (plugins/runner-start.ts).
//
// That moment is not observable from here, so the closes come at a spread of points within the replacement's
// start-up, measured once first (from the start of the replacement to its 'restart' event: the thread's boot,
// its imports, the plugin's instantiation). Without the wait, one run in three of 24 closes aborted (checked by
// hand): `npm test` makes 40, `npm run test:stress` 200. With it every close resolves and frees the segments.
import t, { type Test } from 'tap';
import { loadPlugin, type Plugin } from '../../plugins/index.js';
import { ErrorCode } from '../../host/errors.js';
import { eventually, scaled } from '../helpers.js';
import { openPluginSegments, pluginPath } from './plugin-helpers.js';

t.teardown(() => eventually(() => openPluginSegments() === 0, 'every plugin segment closed'));

const CLOSES = scaled(200, 40);

/** A hog plugin whose instance has just failed on its memory limit and whose replacement has begun to start. */
async function replacing(t: Test): Promise<Plugin> {
  const hog = await loadPlugin(pluginPath('hog'), { isolation: 'thread', memoryLimit: '32MiB', timeout: 30_000 });
  const failed = await hog.request('eat').then(() => 'answered', (e: { code: string }) => e.code);
  t.equal(failed, ErrorCode.LIMIT, 'the hog was stopped by its limit');
  // The failed instance is disposed first; `restarts` counts the replacement when it starts.
  await eventually(() => hog.restarts === 1, 'the replacement started');
  return hog;
}

t.test('a plugin closed while its replacement runner thread starts: no abort, nothing left', async (t) => {
  const first = await replacing(t);
  const began = performance.now();
  await new Promise((resolve) => first.once('restart', resolve));
  const startUp = performance.now() - began;
  await first.close();
  for (let i = 0; i < CLOSES; i++) {
    const hog = await replacing(t);
    // Not a wait for an event: where in the start-up this close comes, spread evenly over all of it.
    await new Promise((resolve) => setTimeout(resolve, startUp * ((i * 0.618034) % 1)));
    await hog.close();
  }
  t.pass(`${CLOSES} plugins closed while their replacement started (start-up ~${Math.round(startUp)} ms)`);
});
