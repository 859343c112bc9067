// What only isolation 'process' has: a runner process dies with its host (PR_SET_PDEATHSIG).
import t from 'tap';
import { eventually, startFixture } from '../helpers.js';
import { isProcessAlive } from '../../host/sys/proc.js';

t.test('the runner process dies when its host is killed', async (t) => {
  const host = startFixture(t, 'plugin-host', []);
  const line = await host.line(/^ready/);
  const runners = line.split(' ').slice(1).map(Number);
  t.equal(runners.length, 1, 'one runner process');
  t.ok(isProcessAlive(runners[0]!), 'it runs while the host does');
  process.kill(host.pid, 'SIGKILL'); // the host alone, not its process group
  await eventually(() => !isProcessAlive(runners[0]!), 'the runner to die with its host');
  t.pass('the runner died with its host');
});
