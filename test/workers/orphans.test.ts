// No orphans: workers started by spawn() and by a Pool die when their parent is SIGKILLed (PR_SET_PDEATHSIG),
// even while they spin without ever looking at their channel.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { childrenOf, eventually, fileTimeout, startFixture } from '../helpers.js';

fileTimeout(t, 60);

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

t.test('workers die with a SIGKILLed parent', async (t) => {
  const parent = startFixture(t, 'worker-parent', []);
  await parent.line('ready');
  const workers = childrenOf(parent.pid);
  t.equal(workers.length, 3, 'a spawned worker and two pool workers run');
  for (const pid of workers) {
    const status = readFileSync(`/proc/${pid}/status`, 'latin1');
    t.match(status, /State:\s+R/, `worker ${pid} is busy spinning`);
  }
  process.kill(parent.pid, 'SIGKILL');
  await parent.exit;
  await eventually(() => workers.every((pid) => !alive(pid)), 'every worker to die with its parent');
  t.pass('no worker outlived its parent');
});
