// Crash cleanup: what a SIGKILLed process leaves (wake objects, a bus) is found and removed by the reapers and by
// `shmbus clean`. The reapers remove what ANY dead process left, so a test file running at the same time could
// see its own leftovers vanish before it looks at them: this file runs alone (`serial` in .taprc).
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { pack } from 'msgpackr';
import { reap, reapDeadBuses, sysvmqReapers, type MsgQueueCandidate } from '../host/reap.js';
import { MSG_HEADER, msgExists, msgGet, msgReceive, msgRemoveIfExists, msgSend, setMsgType } from '../host/sys/msg.js';
import { IPC_CREAT, IPC_EXCL, IPC_PRIVATE } from '../host/sys/constants.js';
import { fileTimeout, needsMqueue, startFixture, unique, within } from './helpers.js';

// Measured on a busy 2-core machine (load 10-20): ~8 s. Timeout: 4x that, at least tap's 60 s.
fileTimeout(t, 60);
const CLI = fileURLToPath(new URL('../dist/bin/shmbus.js', import.meta.url));

/** POSIX semaphores, POSIX queues and System V semaphore sets (keys 0xb5<pid>) of the processes `pids`. */
function wakeObjects(pids: number[]): string[] {
  const mine = (name: string) => pids.some((pid) => name.includes(`-${pid}-`) || name.includes(`.${pid}.`));
  const shm = readdirSync('/dev/shm').filter((f) => f.startsWith('sem.shmbus') && mine(f));
  let mq: string[] = [];
  try { mq = readdirSync('/dev/mqueue').filter((f) => f.startsWith('shmbus') && mine(f)); } catch { /* not mounted */ }
  const keys = new Set(pids.map((pid) => '0x' + ((0xb5000000 | (pid & 0xffffff)) >>> 0).toString(16).padStart(8, '0')));
  const ipcs = execFileSync('ipcs', ['-s'], { encoding: 'utf8' }).split('\n').filter((l) => keys.has(l.split(/\s+/)[0]!));
  return [...shm.map((f) => `/dev/shm/${f}`), ...mq.map((f) => `/dev/mqueue/${f}`), ...ipcs.map((l) => `ipcs: ${l.trim()}`)];
}

t.test('shmbus clean removes the wake objects of a process that was killed', { skip: needsMqueue() }, async (t) => {
  const dead: number[] = [];
  for (const mode of ['sem', 'sysvsem', 'mq']) {
    const url = `shm://${unique(`leak-${mode}`)}?wake=${mode}`;
    // The peer listens and connects to itself (so its wake objects exist), prints "ready", then SIGKILLs itself.
    const peer = startFixture(t, 'wake-peer', [url, 'leak']);
    await within(60_000, peer.exit, () => `leaking peer (${peer.stderr()})`);
    t.match(peer.stdout(), /ready/, `${mode}: the peer made its wake object, then was killed`);
    dead.push(peer.pid);
  }
  const left = wakeObjects(dead);
  t.ok(left.some((l) => l.includes('sem.shmbus-wake.')), 'a POSIX semaphore was left behind');
  t.ok(left.some((l) => l.includes('/dev/mqueue/shmbus-wake.')), 'a queue was left behind');
  t.ok(left.some((l) => l.startsWith('ipcs: 0xb5')), 'a System V semaphore set was left behind');
  const out = execFileSync(process.execPath, [CLI, 'clean'], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
  t.match(out, /removed/, out.trim());
  t.same(wakeObjects(dead), [], 'all of them were removed');
});

t.test('the bus reaper removes a bus whose members were all killed, and keeps one with a live member', async (t) => {
  const ns = unique('bustest');
  const url = `shm://${ns}`;
  const files = () => readdirSync('/dev/shm').filter((f) => f === `shmbus.bus.${ns}` || f.startsWith(`shmbus.bus.${ns}.`)).sort();
  // Only this bus's names count: other processes may leave dead buses of their own meanwhile.
  const ours = (names: string[]) => names.filter((n) => n === `shmbus.bus.${ns}` || n.startsWith(`shmbus.bus.${ns}.`)).sort();
  // The peer creates a publisher on the topic, publishes once, prints "ready" and waits to be killed.
  const killed = startFixture(t, 'bus-peer', [url, 'orphan', 'pubstall']);
  await killed.line(/^ready$/);
  t.same(ours(reapDeadBuses()), [], 'a bus with a live member is kept');
  killed.kill('SIGKILL');
  await killed.exit;
  t.same(files(), [`shmbus.bus.${ns}`, `shmbus.bus.${ns}.orphan`], 'left behind by the killed process');
  t.same(ours(reapDeadBuses()), [`shmbus.bus.${ns}`, `shmbus.bus.${ns}.orphan`]);
  t.same(files(), [], 'removed');
});

/** System V queues as /proc/sysvipc/msg lists them: msqid → key. */
function msgQueues(): Map<number, number> {
  const lines = readFileSync('/proc/sysvipc/msg', 'latin1').trim().split('\n').slice(1);
  return new Map(lines.map((l) => l.trim().split(/\s+/)).map((f) => [Number(f[1]), Number(f[0]) >>> 0]));
}

t.test('shmbus clean --dry-run lists what a killed listener of mq:// and sysvmq:// leaves; clean removes it', { skip: needsMqueue() }, async (t) => {
  const mqName = unique('leakmq');
  const key = (0x5b000000 | (process.pid & 0xffffff)) >>> 0;
  const keyText = `0x${key.toString(16).padStart(8, '0')}`;
  const before = msgQueues();
  // This file runs alone: every queue that appears from here on is the peers'.
  const ours = () => [...msgQueues().keys()].filter((id) => !before.has(id));
  t.teardown(() => {
    for (const id of ours()) { try { execFileSync('ipcrm', ['-q', String(id)]); } catch { /* gone */ } }
    try { rmSync(`/dev/mqueue/${mqName}`); } catch { /* gone */ }
  });
  for (const url of [`mq:///${mqName}`, `sysvmq://${keyText}`]) {
    // The peer listens, connects to itself, prints "ready", then SIGKILLs itself.
    const peer = startFixture(t, 'wake-peer', [url, 'leak']);
    await within(60_000, peer.exit, () => `leaking peer (${peer.stderr()})`);
    t.match(peer.stdout(), /ready/, `${url}: the listener was killed`);
  }
  t.ok(existsSync(`/dev/mqueue/${mqName}`), 'the mq:// listener\'s queue was left behind');
  const keyQueue = ours().find((id) => msgQueues().get(id) === key);
  t.ok(keyQueue !== undefined, 'the sysvmq:// listener\'s key queue was left behind');
  const env = { ...process.env, NODE_OPTIONS: '' };
  const dry = execFileSync(process.execPath, [CLI, 'clean', '--dry-run'], { encoding: 'utf8', env });
  t.match(dry, new RegExp(`would remove mq-endpoint +/dev/mqueue/${mqName} `), 'the mq:// endpoint queue is listed');
  t.match(dry, new RegExp(`would remove sysvmq-key +msqid=${keyQueue} key=${keyText} `), 'the sysvmq:// key queue is listed');
  t.match(dry, new RegExp(`would remove sysvmq-port +msqid=[0-9]+ key=0x00000000 .*\\(msqid=${keyQueue} key=${keyText}\\)`), 'the dead listener\'s port is listed');
  t.ok(existsSync(`/dev/mqueue/${mqName}`) && msgQueues().has(keyQueue!), '--dry-run removed nothing');
  const port = Number(/sysvmq-port +msqid=([0-9]+) /.exec(dry.split('\n').find((l) => l.includes(`(msqid=${keyQueue} `)) ?? '')?.[1]);
  // Only ours: other worktrees' tests may be looking at what their own killed peers left.
  const match = [`/dev/mqueue/${mqName}`, `msqid=${keyQueue} `, `msqid=${port} `].flatMap((m) => ['--match', m]);
  const out = execFileSync(process.execPath, [CLI, 'clean', ...match], { encoding: 'utf8', env });
  t.match(out, /^3 removed/m, out.trim());
  t.notOk(existsSync(`/dev/mqueue/${mqName}`), 'the mq:// endpoint queue was removed');
  t.notOk(msgQueues().has(keyQueue!), 'the sysvmq:// key queue was removed');
  t.notOk(msgQueues().has(port), 'the port was removed');
});

t.test('a queue last read by a live task is never a dead sysvmq:// listener\'s, though the task has that listener\'s pid', async (t) => {
  // Our private queue, last read by this process's main thread: the kernel records our pid as its lrpid (for a
  // queue read on another thread, that thread's id, from the same pool of numbers).
  const mine = msgGet(IPC_PRIVATE, IPC_CREAT | 0o600);
  t.teardown(() => { msgRemoveIfExists(mine); });
  const buf = new Uint8Array(MSG_HEADER + 8);
  setMsgType(buf, 1);
  t.ok(msgSend(mine, buf, 8), 'a message into our queue');
  t.equal(msgReceive(mine, buf, 0, false), 8, 'and read back by this process');
  // The card of a killed listener that had our pid before us: its start time is not ours, so it is dead.
  const key = (0x5e000000 | (process.pid & 0xffffff)) >>> 0;
  const cardQueue = msgGet(key, IPC_CREAT | IPC_EXCL | 0o600);
  t.teardown(() => { msgRemoveIfExists(cardQueue); });
  const card = pack({ shmbus: 1, proto: 1, pid: process.pid, start: '1', port: -1, id: 1 });
  const message = new Uint8Array(MSG_HEADER + card.length);
  setMsgType(message, 1);
  message.set(card, MSG_HEADER);
  t.ok(msgSend(cardQueue, message, card.length), 'the card planted');
  const report = reap(sysvmqReapers, { select: (c) => [mine, cardQueue].includes((c as MsgQueueCandidate).msqid) });
  t.ok(msgExists(mine), `our queue is still there: ${JSON.stringify(report.outcomes)}`);
  t.notOk(msgExists(cardQueue), 'the dead listener\'s key queue was removed');
});
