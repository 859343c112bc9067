// System V ids from 0. The kernel numbers each IPC namespace's queues, segments and semaphore sets from 0: on a
// fresh boot, or in a container with its own IPC namespace, the first msgget, shmget and semget each return id 0.
// A 0 taken for "none" anywhere (a zeroed shared word, a falsy check) breaks exactly there, and a machine that has
// run anything before never shows it: the msgrcv thread once read its port from a zeroed word and sysvmq: hung
// on the first connection after boot. The fixture runs in a namespace of its own (`unshare --ipc`), so its first
// queue, segment and semaphore set are the ids 0; everything it creates goes with the namespace when it exits.
// It starts the msgrcv thread before it has a queue (--msgrcv-first), the order that showed the hang.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { startFixture } from './helpers.js';

const probe = spawnSync('unshare', ['--ipc', 'true'], { encoding: 'utf8' });
const skip = probe.error ? `unshare is not available: ${probe.error.message}`
  : probe.status !== 0 ? `unshare --ipc is not permitted here: ${probe.stderr.trim()}` : false;

t.test('in a new IPC namespace (ids from 0) each System V transport and wake carries a message both ways', { skip }, async (t) => {
  // In this order the sysvmq: port is msqid 0, the sysv: listener's segment shmid 0 and the sysvsem wake set semid 0.
  const urls = ['sysvmq://0x5e1f0001', 'sysv://0x5e1f0002?wake=sysvsem', 'mq:///self-echo'];
  const child = startFixture(t, 'self-echo', ['--msgrcv-first', ...urls], { prefix: ['unshare', '--ipc'] });
  for (const url of urls) t.ok(await child.line(`ok ${url}`), url);
  t.same(await child.exit, { code: 0, signal: null }, `exit (stderr: ${child.stderr().slice(-1000)})`);
});
