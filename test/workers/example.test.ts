// npm run demo:workers (examples/workers): runs to the end over processes and over threads, and both compute the
// same digest of all results (the work is deterministic). No assertion on speed.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { fileTimeout, startChild, within } from '../helpers.js';

fileTimeout(t, 90);

const MAIN = fileURLToPath(new URL('../../dist/examples/workers/main.js', import.meta.url));

t.test('the hashing example gives the same digest over processes and threads', async (t) => {
  const digests: string[] = [];
  for (const isolation of ['process', 'thread']) {
    const child = startChild(t, [process.execPath, MAIN, '--jobs', '24', '--rounds', '500', '--size', '2', '--isolation', isolation], {
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    const exit = await within(60_000, child.exit, `the ${isolation} example to end`);
    t.same(exit, { code: 0, signal: null }, `${isolation}: exits cleanly; stderr: ${child.stderr().slice(-500)}`);
    t.match(child.stdout(), /completed 24, failed 0/, `${isolation}: every job completed`);
    digests.push(/digest of all results: (\w+)/.exec(child.stdout())?.[1] ?? 'none');
  }
  t.equal(digests[0], digests[1], 'same digest');
  t.not(digests[0], 'none');
});
