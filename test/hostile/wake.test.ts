// A peer chooses what its handshake says about how to wake it. These tests forge those params (another process's
// pid or thread, a foreign signal number, someone else's semaphore set, semaphore or queue) and check that the
// handshake is refused with a typed error and that the victim is untouched: still alive, its semaphore's value
// unchanged. The last test does it end to end, with the attacker running as uid 65534 against our listener.
import t, { type Test } from 'tap';
import net from 'node:net';
import { existsSync, readFileSync, symlinkSync, unlinkSync } from 'node:fs';
import { listen, ErrorCode, type ShmbusError } from '../../index.js';
import { mechanismFor, doorbell, writeDoorbell, WAKE_DATA, WAKE_SPACE, type BellContext, type SleeperContext } from '../../host/wake/index.js';
import { wakeSignal } from '../../host/wake/signal.js';
import { sysvsemKey } from '../../host/wake/sysvsem.js';
import { processStartTime } from '../../host/sys/proc.js';
import { semGet, semGetVal, semOp, semRemove, semOpen, semClose, semUnlink } from '../../host/sys/sem.js';
import { wakeMqOpen, wakeMqClose, wakeMqUnlink } from '../../host/sys/wakemq.js';
import { IPC_CREAT, IPC_EXCL, IPC_PRIVATE, O_CREAT, O_EXCL, O_RDONLY, O_NONBLOCK } from '../../host/sys/constants.js';
import type { PeerCredentials } from '../../host/peer.js';
import { fileTimeout, startChild, startFixture, asUnprivileged, within, unique, mqueueDir, NOBODY } from '../helpers.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 60);

const me: PeerCredentials = { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() };
const alive = (pid: number) => { try { process.kill(pid, 0); return true; } catch { return false; } };
/** A pid nobody has (pid_max is at most 2^22). */
const NO_PID = 4_194_304 + 17;

function startVictim(t: Test) {
  const victim = startChild(t, ['sleep', '1000']);
  return { pid: victim.pid, startTime: String(processStartTime(victim.pid)) };
}

/** Builds a bell for `peer` from `params` the way the channel does, and closes it again if it was built. */
function bell(mode: string, params: Record<string, unknown>, peer: PeerCredentials | undefined): void {
  const socket = new net.Socket();
  mechanismFor(mode).bell({ params, socket, peer } as unknown as BellContext).close();
}

/** Our own params for `mode`, checked against our own credentials, pass; then the object is released again. */
function ownObjectAccepted(t: Test, mode: string): void {
  const mechanism = mechanismFor(mode);
  const mine = mechanism.params();
  t.doesNotThrow(() => mechanism.checkPeer(mine, me), `${mode}: the peer's own object is accepted`);
  // Adopting the reservation and closing it removes the object now instead of when the reservation lapses.
  mechanism.sleeper({ params: mine } as unknown as SleeperContext).close();
}

function refused(t: Test, mode: string, params: Record<string, unknown>, peer: PeerCredentials | undefined, code: string, what: string): void {
  t.throws(() => mechanismFor(mode).checkPeer(params, peer), { code }, `${what} (checkPeer)`);
  t.throws(() => bell(mode, params, peer), { code }, `${what} (bell)`);
}

t.test('signal: only a thread of the peer itself, with the wake signal', async (t) => {
  const victim = startVictim(t);
  const signal = wakeSignal();
  const base = { signal, id: 1 };
  refused(t, 'signal', { ...base, pid: victim.pid, tid: victim.pid, startTime: victim.startTime }, { pid: NO_PID, uid: NOBODY, gid: NOBODY },
    ErrorCode.PERMISSION_DENIED, 'another process (a root sleep) named as the wake target');
  refused(t, 'signal', { ...base, pid: me.pid, tid: victim.pid, startTime: String(processStartTime(me.pid)) }, me,
    ErrorCode.PERMISSION_DENIED, 'our pid, but a tid of another process');
  refused(t, 'signal', { ...base, pid: me.pid, tid: me.pid, startTime: String(processStartTime(me.pid)) }, { ...me, uid: NOBODY },
    ErrorCode.PERMISSION_DENIED, 'a process that runs as another user than the peer');
  refused(t, 'signal', { ...base, pid: me.pid, tid: me.pid, startTime: '1' }, me, ErrorCode.PEER_DEAD, 'another start time (pid reused)');
  for (const bad of [9, 15, signal + 1, signal - 1, 64]) {
    refused(t, 'signal', { ...base, signal: bad, pid: me.pid, tid: me.pid, startTime: String(processStartTime(me.pid)) }, me,
      ErrorCode.HANDSHAKE, `signal ${bad} instead of the wake signal`);
  }
  refused(t, 'signal', { ...base, pid: victim.pid, tid: victim.pid, startTime: victim.startTime }, undefined,
    ErrorCode.PERMISSION_DENIED, 'peer credentials unknown: fail closed');
  t.ok(alive(victim.pid), 'the victim is alive');

  // The peer's own thread passes: our own params, checked against our own credentials.
  ownObjectAccepted(t, 'signal');
});

t.test('sysvsem: only the peer\'s own wake set', async (t) => {
  const foreign = semGet(IPC_PRIVATE, 2, IPC_CREAT | 0o600);
  t.teardown(() => { semRemove(foreign); });
  // An application's set, live in every way our check could look at: #1 held.
  semOp(foreign, [{ num: 1, op: 1, flags: 0 }]);
  const fakePid = NO_PID - 1;
  const keyed = semGet(sysvsemKey(fakePid), 2, IPC_CREAT | IPC_EXCL | 0o600);
  t.teardown(() => { semRemove(keyed); });
  semOp(keyed, [{ num: 1, op: 1, flags: 0 }]);

  refused(t, 'sysvsem', { semid: foreign, id: 1 }, { pid: NO_PID, uid: me.uid, gid: me.gid }, ErrorCode.PERMISSION_DENIED, 'an unrelated set');
  refused(t, 'sysvsem', { semid: keyed, id: 1 }, { pid: fakePid, uid: NOBODY, gid: NOBODY }, ErrorCode.PERMISSION_DENIED,
    'the peer\'s key, but owned by another user (root)');
  refused(t, 'sysvsem', { semid: keyed, id: 1 }, { pid: fakePid, uid: me.uid, gid: me.gid }, ErrorCode.PERMISSION_DENIED,
    'the peer\'s key and uid, but #1 held by another process');
  refused(t, 'sysvsem', { semid: -1, id: 1 }, me, ErrorCode.HANDSHAKE, 'a negative semid');
  refused(t, 'sysvsem', { semid: foreign, id: 1 }, undefined, ErrorCode.PERMISSION_DENIED, 'peer credentials unknown: fail closed');
  t.equal(semGetVal(foreign, 0), 0, 'the unrelated set was never posted');
  t.equal(semGetVal(keyed, 0), 0, 'neither was the squatted one');

  ownObjectAccepted(t, 'sysvsem');
});

/** The value of a POSIX semaphore, read from its file (glibc x86_64: the low 32 bits of the first word). */
const semValue = (name: string) => readFileSync(`/dev/shm/sem.${name.slice(1)}`).readUint32LE(0);

t.test('sem: only a semaphore named for the peer\'s pid, owned by its uid, never through a symlink, never created', async (t) => {
  const victimName = `/shmbus-wake.${NO_PID - 2}.1`;
  const peerPid = NO_PID - 3;
  const squatted = `/shmbus-wake.${peerPid}.7`;
  const linked = `/shmbus-wake.${peerPid}.8`;
  const missing = `/shmbus-wake.${peerPid}.9`;
  for (const name of [victimName, squatted]) {
    semClose(semOpen(name, O_CREAT | O_EXCL, 0o600, 0));
    t.teardown(() => { semUnlink(name); });
  }
  symlinkSync(`/dev/shm/sem.${victimName.slice(1)}`, `/dev/shm/sem.${linked.slice(1)}`);
  t.teardown(() => unlinkSync(`/dev/shm/sem.${linked.slice(1)}`));

  refused(t, 'sem', { name: victimName, id: 1 }, { pid: peerPid, uid: me.uid, gid: me.gid }, ErrorCode.PERMISSION_DENIED, 'a semaphore of another pid');
  refused(t, 'sem', { name: squatted, id: 1 }, { pid: peerPid, uid: NOBODY, gid: NOBODY }, ErrorCode.PERMISSION_DENIED, 'named for the peer, owned by root');
  refused(t, 'sem', { name: linked, id: 1 }, { pid: peerPid, uid: me.uid, gid: me.gid }, ErrorCode.PERMISSION_DENIED, 'a symlink to another semaphore');
  refused(t, 'sem', { name: missing, id: 1 }, { pid: peerPid, uid: me.uid, gid: me.gid }, ErrorCode.NOT_FOUND, 'a semaphore that does not exist');
  refused(t, 'sem', { name: '/shmbus-wake.1.1/../x', id: 1 }, { pid: 1, uid: me.uid, gid: me.gid }, ErrorCode.HANDSHAKE, 'not a wake semaphore name');
  refused(t, 'sem', { name: victimName, id: 1 }, undefined, ErrorCode.PERMISSION_DENIED, 'peer credentials unknown: fail closed');
  t.notOk(existsSync(`/dev/shm/sem.${missing.slice(1)}`), 'the missing one was not created');
  t.equal(semValue(victimName), 0, 'the victim semaphore was never posted');
  t.equal(semValue(squatted), 0, 'neither was the squatted one');

  ownObjectAccepted(t, 'sem');
});

t.test('mq: only a queue named for the peer\'s pid, owned by its uid, never created', async (t) => {
  const peerPid = NO_PID - 4;
  const victimName = `/shmbus-wake.${NO_PID - 5}.1`;
  const squatted = `/shmbus-wake.${peerPid}.3`;
  const missing = `/shmbus-wake.${peerPid}.4`;
  for (const name of [victimName, squatted]) {
    wakeMqClose(wakeMqOpen(name, O_RDONLY | O_CREAT | O_EXCL | O_NONBLOCK, 0o600, { maxmsg: 4, msgsize: 4 }));
    t.teardown(() => { wakeMqUnlink(name); });
  }
  refused(t, 'mq', { name: victimName, id: 1 }, { pid: peerPid, uid: me.uid, gid: me.gid }, ErrorCode.PERMISSION_DENIED, 'a queue of another pid');
  refused(t, 'mq', { name: squatted, id: 1 }, { pid: peerPid, uid: NOBODY, gid: NOBODY }, ErrorCode.PERMISSION_DENIED, 'named for the peer, owned by root');
  refused(t, 'mq', { name: missing, id: 1 }, { pid: peerPid, uid: me.uid, gid: me.gid }, ErrorCode.NOT_FOUND, 'a queue that does not exist');
  refused(t, 'mq', { name: victimName, id: 1 }, undefined, ErrorCode.PERMISSION_DENIED, 'peer credentials unknown: fail closed');
  const mq = mqueueDir();
  if (mq !== undefined) {
    t.notOk(existsSync(`${mq}${missing}`), 'the missing one was not created');
    for (const name of [victimName, squatted]) t.match(readFileSync(`${mq}${name}`, 'latin1'), /QSIZE:0 /, `${name} got no message`);
  }
  ownObjectAccepted(t, 'mq');
});

t.test('doorbells: a peer that never reads costs at most one queued byte per kind', async (t) => {
  const path = `\0${unique('shmbus-test/doorbell')}`;
  const accepted: net.Socket[] = [];
  const server = net.createServer({ pauseOnConnect: true }, (s) => accepted.push(s));
  await new Promise<void>((resolve) => server.listen({ path }, resolve));
  const socket = net.connect({ path });
  await new Promise<void>((resolve) => socket.once('connect', resolve));
  t.teardown(() => { socket.destroy(); for (const s of accepted) s.destroy(); server.close(); });
  // Fill the kernel's buffers so that further writes wait in Node's queue, as with a peer that stopped reading.
  socket.write(Buffer.alloc(8 << 20, 0x44));
  const backlog = socket.writableLength;
  t.ok(backlog > 0, `the kernel took only part of the block (${backlog} bytes wait in user space)`);
  const ring = doorbell.bell({ socket } as unknown as BellContext);
  for (let turn = 0; turn < 100; turn++) {
    for (let i = 0; i < 1000; i++) ring.ring(i & 1 ? WAKE_SPACE : WAKE_DATA);
    await new Promise((resolve) => setImmediate(resolve));
  }
  t.ok(socket.writableLength <= backlog + 2, `100,000 rings queued ${socket.writableLength - backlog} bytes (at most one per kind)`);
});

t.test('doorbells: a ring after the previous byte reached the kernel is never skipped', async (t) => {
  const path = `\0${unique('shmbus-test/doorbell')}`;
  let received = 0;
  let server!: net.Server;
  const got = new Promise<void>((resolve) => {
    server = net.createServer((s) => s.on('data', (d: Buffer) => { received += d.length; if (received === 3) resolve(); }));
  });
  await new Promise<void>((resolve) => server.listen({ path }, resolve));
  const socket = net.connect({ path });
  await new Promise<void>((resolve) => socket.once('connect', resolve));
  t.teardown(() => { socket.destroy(); server.close(); });
  // Same tick: the first byte's write callback has not run yet, but the byte is in the kernel (the peer may have
  // read it and parked again), so each of these must be written.
  writeDoorbell(socket, WAKE_DATA);
  t.equal(socket.writableLength, 0, 'the byte went straight to the kernel');
  writeDoorbell(socket, WAKE_DATA);
  writeDoorbell(socket, WAKE_DATA);
  await within(10_000, got, 'three doorbell bytes');
  t.equal(received, 3);
});

const unprivileged = asUnprivileged();
t.test('end to end: an attacker (uid 65534) naming root\'s processes and semaphores as its wake objects is refused', { skip: 'skip' in unprivileged ? unprivileged.skip : false }, async (t) => {
  if ('skip' in unprivileged) return;
  const victim = startVictim(t);
  const foreign = semGet(IPC_PRIVATE, 2, IPC_CREAT | 0o600);
  t.teardown(() => { semRemove(foreign); });
  semOp(foreign, [{ num: 1, op: 1, flags: 0 }]);
  const cases: [string, Record<string, unknown>][] = [
    ['signal', { pid: victim.pid, tid: victim.pid, startTime: victim.startTime, signal: wakeSignal(), id: 1 }],
    ['sysvsem', { semid: foreign, id: 1 }],
  ];
  for (const [mode, params] of cases) {
    const name = unique(`attack-${mode}`);
    const listener = await listen(`shm://${name}`);
    const errors: ShmbusError[] = [];
    let connections = 0;
    listener.on('error', (e: ShmbusError) => errors.push(e));
    listener.on('connection', () => { connections++; });
    const attacker = startFixture(t, 'wake-attacker', [name, mode, JSON.stringify(params)], { prefix: unprivileged.prefix });
    const verdict = await attacker.line(/^\{"lines"/);
    await listener.close();
    const lines = (JSON.parse(verdict) as { lines: { ok?: boolean; code?: string }[] }).lines;
    t.equal(lines.at(-1)?.code, ErrorCode.PERMISSION_DENIED, `${mode}: the attacker was told PERMISSION_DENIED (${JSON.stringify(lines.at(-1))})`);
    t.same(errors.map((e) => e.code), [ErrorCode.PERMISSION_DENIED], `${mode}: the listener reported it`);
    t.equal(connections, 0, `${mode}: no channel was handed out`);
  }
  t.ok(alive(victim.pid), 'the root-owned victim process is alive');
  t.equal(semGetVal(foreign, 0), 0, 'the root-owned semaphore set was never posted');
});
