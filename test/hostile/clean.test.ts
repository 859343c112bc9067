// `shmbus clean` against hostile input and live objects: it removes only what it can prove is shmbus's, dead,
// and the caller's (root: every user's), never builds a path from shared data, never follows a symlink.
// Every run here is narrowed (--match, select) to the objects the test made: other processes on the machine may
// have dead objects of their own, which are not this test's to remove.
import t from 'tap';
import { chmodSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  LAYOUT_VERSION, REGISTRY_MAGIC, REGISTRY_MEMBERS, REGISTRY_TOPICS, SEG_MAGIC_OFFSET, SEG_VERSION_OFFSET, SEG_CREATOR_PID_OFFSET,
  registryBytes,
} from '../../assembly/layout.js';
import { clean } from '../../host/clean.js';
import type { Candidate, Outcome } from '../../host/reap.js';
import { listSemSets, semRemove } from '../../host/sys/sem.js';
import { mqClose, mqOpen, mqUnlinkIfExists } from '../../host/sys/mq.js';
import { mkfifo } from '../../host/sys/fifo.js';
import { O_CREAT, O_EXCL, O_RDONLY } from '../../host/sys/constants.js';
import { sysvsemKey } from '../../host/wake/sysvsem.js';
import { fileTimeout, asUnprivileged, needsMqueue, eventually, NOBODY, startChild, startFixture, unique, within, type Child, type TestLike } from '../helpers.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 90);

const CLI = fileURLToPath(new URL('../../dist/bin/shmbus.js', import.meta.url));
const SHM = '/dev/shm';
const MQ = '/dev/mqueue';
const WAKE_MODES = ['sem', 'mq', 'sysvsem'] as const;
const unprivileged = asUnprivileged();
/** tap's Test, as the helpers' structural TestLike (whose `fail` signature tap's overloads do not match). */
const like = (t: unknown): TestLike => t as TestLike;
const asRoot = process.getuid?.() === 0;

/** Runs the shmbus command to its end; `prefix` runs it as another user. */
async function cli(t: TestLike, args: string[], prefix: string[] = []): Promise<{ code: number | null; out: string; err: string }> {
  const child = startChild(t, [...prefix, process.execPath, CLI, ...args], { env: { ...process.env, NODE_OPTIONS: '' } });
  const { code } = await within(60_000, child.exit, () => `shmbus ${args.join(' ')}: ${child.stderr()}`);
  return { code, out: child.stdout(), err: child.stderr() };
}

/** The line the command printed for `name` (exact name, then two spaces and the reason). */
function lineFor(out: string, name: string): string | undefined {
  return out.split('\n').find((l) => l.includes(` ${name}  (`));
}

/** A process that has exited: its pid names nobody (until the kernel hands it out again, far in the future). */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { env: { ...process.env, NODE_OPTIONS: '' } });
  return Number(r.stdout.toString());
}

/** What a SIGKILLed `leaver` left, as the names `shmbus clean` reports (and their kinds). */
interface Left { names: Map<string, string>; semKeys: number[]; files: string[] }

function expectedFor(kids: { bus: Child; wake: Map<string, Child> }, ns: string): Left {
  const names = new Map<string, string>();
  const files: string[] = [];
  const semKeys: number[] = [];
  for (const [kind, path] of [
    ['bus-registry', `${SHM}/shmbus.bus.${ns}-bus`],
    ['bus-topic', `${SHM}/shmbus.bus.${ns}-bus.prices.2024.1`],
    ['wake-sem', `${SHM}/sem.shmbus-wake.${kids.wake.get('sem')!.pid}.1`],
    ['wake-mq', `${MQ}/shmbus-wake.${kids.wake.get('mq')!.pid}.1`],
  ] as const) {
    names.set(path, kind);
    files.push(path);
  }
  const key = sysvsemKey(kids.wake.get('sysvsem')!.pid);
  for (const s of listSemSets()) {
    if (s.key !== key) continue;
    semKeys.push(key);
    names.set(`semid=${s.semid} key=0x${key.toString(16)}`, 'wake-sysvsem');
  }
  return { names, semKeys, files };
}

/** A System V segment as /proc/sysvipc/shm lists it (what `ipcs -m -p` shows). */
interface SysvSegment { key: number; shmid: number; mode: number; cpid: number }

/** The System V segments whose creator is one of `cpids`. */
function sysvSegmentsOf(cpids: readonly number[]): SysvSegment[] {
  // Header: key shmid perms size cpid lpid nattch ...; perms carries SHM_DEST (0o1000) once IPC_RMID was done.
  return readFileSync('/proc/sysvipc/shm', 'latin1').trim().split('\n').slice(1)
    .map((line) => line.trim().split(/\s+/))
    .map((f) => ({ key: Number(f[0]) >>> 0, shmid: Number(f[1]), mode: parseInt(f[2]!, 8), cpid: Number(f[4]) }))
    .filter((s) => cpids.includes(s.cpid));
}

const SHM_DEST = 0o1000;

/**
 * Every name the 'half' leavers (stopped mid-handshake, segment made and handed over, never attached by the
 * connector) could have: /dev/shm entries of their endpoint or pid, System V segments they created that still
 * have a key or are not marked for removal, anything in the file:// directory.
 */
function namedBy(half: ReadonlyMap<string, Child>, ns: string, dir: string): string[] {
  const pids = [...half.values()].map((c) => c.pid);
  const mine = (entry: string) => entry.includes(`${ns}-shm`) || entry.split('.').some((part) => pids.includes(Number(part)));
  return [
    ...readdirSync(SHM).filter(mine).map((e) => `${SHM}/${e}`),
    ...sysvSegmentsOf(pids).filter((s) => s.key !== 0 || (s.mode & SHM_DEST) === 0).map((s) => `shmid=${s.shmid} key=${s.key} mode=0o${s.mode.toString(8)}`),
    ...readdirSync(dir).map((e) => `${dir}/${e}`),
  ];
}

/** Starts one process per kind of object, each holding its objects alive. */
async function startLeavers(t: TestLike, ns: string, dir: string) {
  const sysvKey = 0x5d000000 + ((process.pid & 0xfff) << 8) + (Number(ns.split('-').pop()) & 0xff);
  const half = new Map<string, Child>([
    ['shm', startFixture(like(t), 'leaver', ['half', `shm://${ns}-shm?size=4KiB`])],
    ['sysv', startFixture(like(t), 'leaver', ['half', `sysv://0x${sysvKey.toString(16)}?size=4KiB`])],
    ['file', startFixture(like(t), 'leaver', ['half', `file://${dir}/ep?size=4KiB`])],
  ]);
  const bus = startFixture(like(t), 'leaver', ['bus', `shm://${ns}-bus`, 'prices.2024.1']);
  const wake = new Map<string, Child>(WAKE_MODES.map((m) => [m, startFixture(like(t), 'leaver', ['wake', `shm://${ns}-wake-${m}?size=4KiB&wake=${m}`])]));
  for (const c of [...half.values(), bus, ...wake.values()]) await c.line('ready');
  return { half, bus, wake };
}

/** Root's clean, narrowed to `names`. */
function cleanOnly(names: ReadonlyMap<string, string>): Outcome[] {
  return clean({ select: (c: Candidate) => names.has(c.name) }).report.outcomes;
}

/** Removes whatever of `left` is still there (a failed test must not leak). */
function removeLeft(left: Left | undefined): void {
  if (!left) return;
  for (const f of left.files) rmSync(f, { force: true });
  for (const key of left.semKeys) for (const s of listSemSets()) if (s.key === key) semRemove(s.semid);
}

t.test('live objects are kept (a bus topic named prices.2024.1 too); SIGKILLed processes\' objects are removed; uid 65534 touches none of root\'s; a handshake stopped midway names nothing', { skip: needsMqueue() }, async (t) => {
  const ns = unique('clean');
  const dir = mkdtempSync(join(tmpdir(), 'shmbus-clean-'));
  chmodSync(dir, 0o755); // uid 65534 may list it (and then must keep root's files)
  let left: Left | undefined;
  t.teardown(() => { removeLeft(left); rmSync(dir, { recursive: true, force: true }); });
  const kids = await startLeavers(like(t), ns, dir);
  left = expectedFor(kids, ns);
  t.equal(left.names.size, 5, `every kind was made: ${[...left.names.keys()].join(' ')}`);
  for (const f of left.files) t.ok(existsSync(f), `${f} exists`);
  // Each half leaver's listener made a segment and handed it over; none of them has a name, even now.
  t.same(namedBy(kids.half, ns, dir), [], 'a handshake stopped midway (shm, sysv, file) has no named segment');
  t.ok(sysvSegmentsOf([kids.half.get('sysv')!.pid]).length > 0, 'the sysv listener\'s segment exists, keyless and marked for removal');

  // Alive: nothing goes, each is kept because its process runs.
  const live = cleanOnly(left.names);
  t.same(live.filter((o) => o.action !== 'kept'), [], 'nothing of a live process is removed');
  for (const [name, kind] of left.names) {
    t.match(live.find((x) => x.name === name), { kind, action: 'kept', why: /alive/ }, `${kind} ${name} kept: its process is alive`);
  }
  for (const f of left.files) t.ok(existsSync(f), `${f} still exists`);

  for (const c of [...kids.half.values(), kids.bus, ...kids.wake.values()]) {
    c.kill();
    await within(30_000, c.exit, `leaver ${c.pid} to die`);
  }

  // SIGKILLed mid-handshake: no name anywhere, no System V segment at all (its last attach died with it), so
  // there is nothing for clean to find.
  const halfPids = [...kids.half.values()].map((c) => c.pid);
  t.same(namedBy(kids.half, ns, dir), [], 'the killed half leavers left no name in /dev/shm, the System V tables or the file:// directory');
  await eventually(() => sysvSegmentsOf(halfPids).length === 0, 'the killed sysv listener\'s segment to go with its last detach');
  const theirs = clean({ dirs: [dir], select: (c) => c.name.includes(`${ns}-shm`) || c.name.startsWith(dir) || c.name.split(/[./ =]/).some((p) => halfPids.includes(Number(p))) });
  t.same(theirs.report.outcomes, [], 'clean finds nothing of the killed half leavers');

  if ('prefix' in unprivileged) {
    // An unprivileged user's clean: root's dead objects are not the caller's; kept, and said why.
    const args = ['clean', '-v', ...[...left.names.keys()].flatMap((n) => ['--match', n])];
    const { code, out } = await cli(like(t), args, unprivileged.prefix);
    t.equal(code, 0, 'uid 65534 ran clean');
    t.notMatch(out, /^removed/m, `uid ${NOBODY} removed nothing of root's:\n${out}`);
    for (const name of left.names.keys()) t.match(lineFor(out, name) ?? '', /^kept .*owned by uid 0, not the caller/, `${name} kept: owned by root`);
    for (const f of left.files) t.ok(existsSync(f), `${f} still exists after uid 65534's clean`);
  } else t.comment(`unprivileged part skipped: ${unprivileged.skip}`);

  const dead = cleanOnly(left.names);
  for (const [name, kind] of left.names) {
    t.match(dead.find((x) => x.name === name), { kind, action: 'removed', why: /gone/ }, `${kind} ${name} removed`);
  }
  for (const f of left.files) t.notOk(existsSync(f), `${f} is gone`);
  t.notOk(listSemSets().some((s) => left!.semKeys.includes(s.key)), 'the System V wake set is gone');
});

t.test('a topic name planted in a registry by another user never becomes a path (root\'s clean)', { skip: 'skip' in unprivileged ? unprivileged.skip : false }, async (t) => {
  const prefix = (unprivileged as { prefix: string[] }).prefix;
  const victim = join(tmpdir(), unique('clean-victim'));
  writeFileSync(victim, 'root owns this', { mode: 0o600 });
  const bus = unique('planted');
  const registry = `${SHM}/shmbus.bus.${bus}`;
  t.teardown(() => {
    rmSync(victim, { force: true });
    rmSync(registry, { force: true });
    rmSync(`${registry}.d`, { recursive: true, force: true });
  });
  // `${registry}.d/../../..${victim}` is the victim: the planted directory makes the path resolve.
  const planter = startFixture(like(t), 'leaver', ['plant-registry', SHM, bus, `d/../../..${victim}`], { prefix });
  await planter.line('ready');
  await within(30_000, planter.exit, 'planter to exit');
  t.equal(lstatSync(registry).uid, NOBODY, 'the attacker planted the registry');

  const { code, out } = await cli(like(t), ['clean', '-v', '--match', registry]);
  t.equal(code, 0);
  t.ok(existsSync(victim), `the root-owned file named by the planted topic is still there:\n${out}`);
  t.match(out, /^running as root: dead objects of every user are removed$/m, 'root says it reaps every user\'s');
  t.match(lineFor(out, registry) ?? '', /^removed\s+bus-registry .*uid 65534: creator pid \d+ and all 0 member\(s\) are gone/, 'the dead, planted registry itself goes');
  t.match(lineFor(out, `${registry}.d`) ?? '', /^kept .*not a regular file/, 'the planted directory is left alone');
  t.ok(existsSync(`${registry}.d`));
});

t.test('as uid 65534, clean removes that user\'s own dead objects', { skip: 'skip' in unprivileged ? unprivileged.skip : false }, async (t) => {
  const prefix = (unprivileged as { prefix: string[] }).prefix;
  const bus = unique('own');
  const registry = `${SHM}/shmbus.bus.${bus}`;
  t.teardown(() => { rmSync(registry, { force: true }); rmSync(`${registry}.d`, { recursive: true, force: true }); });
  const planter = startFixture(like(t), 'leaver', ['plant-registry', SHM, bus, 'ticks'], { prefix });
  await planter.line('ready');
  await within(30_000, planter.exit, 'planter to exit');
  const { code, out } = await cli(like(t), ['clean', '-v', '--match', registry], prefix);
  t.equal(code, 0);
  t.notMatch(out, /running as root/);
  t.match(lineFor(out, registry) ?? '', /^removed\s+bus-registry .*uid 65534: creator pid \d+ and all 0 member\(s\) are gone/);
  t.notOk(existsSync(registry));
});

t.test('a dead bus registry is removed; a symlink named like one is not followed; a file without its header is not taken; --dry-run removes nothing', async (t) => {
  const base = unique('dead-bus');
  const victim = join(tmpdir(), unique('registry-victim'));
  const real = `${SHM}/shmbus.bus.${base}-real`;
  const link = `${SHM}/shmbus.bus.${base}-evil`;
  const foreign = `${SHM}/shmbus.bus.${base}-other`;
  t.teardown(() => { for (const f of [real, link, foreign, victim]) rmSync(f, { force: true }); });
  const registry = Buffer.alloc(registryBytes(REGISTRY_TOPICS, REGISTRY_MEMBERS));
  registry.writeUInt32LE(REGISTRY_MAGIC, SEG_MAGIC_OFFSET);
  registry.writeUInt32LE(LAYOUT_VERSION, SEG_VERSION_OFFSET);
  registry.writeUInt32LE(deadPid(), SEG_CREATOR_PID_OFFSET);
  // The victim looks like a dead creator's registry: only the symlink stops the reaper.
  writeFileSync(victim, registry, { mode: 0o600 });
  writeFileSync(real, registry, { mode: 0o600 });
  writeFileSync(foreign, Buffer.alloc(registry.length, 7), { mode: 0o600 });
  symlinkSync(victim, link);

  const dry = await cli(like(t), ['clean', '-v', '--dry-run', '--match', base]);
  t.match(lineFor(dry.out, real) ?? '', /^would remove\s+bus-registry/, 'dry run names the dead registry');
  t.ok(existsSync(real), 'and leaves it');

  const { code, out } = await cli(like(t), ['clean', '-v', '--match', base]);
  t.equal(code, 0);
  t.match(lineFor(out, real) ?? '', /^removed\s+bus-registry .*creator pid \d+ and all 0 member\(s\) are gone/);
  t.notOk(existsSync(real), 'the dead registry is gone');
  t.match(lineFor(out, link) ?? '', /^kept .*a symlink \(never followed\)/);
  t.ok(lstatSync(link).isSymbolicLink(), 'the symlink is still there');
  t.ok(existsSync(victim), 'its target is untouched');
  t.equal(lineFor(out, foreign), undefined, 'a file without a registry header is not even a candidate');
  t.ok(existsSync(foreign));
});

t.test('handshake leftovers: a dead connector\'s mq:// queues and fifo:// FIFOs (in --dir) are removed, a live one\'s kept', { skip: needsMqueue() }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'shmbus-fifo-'));
  const ep = unique('hs');
  const dead = deadPid();
  const queues = [`/${ep}.${dead}.1.u`, `/${ep}.${dead}.1.d`, `/${ep}.${process.pid}.2.u`];
  const fifos = [`${dir}/${ep}.${dead}.1.c2l`, `${dir}/${ep}.${dead}.1.l2c`, `${dir}/${ep}.${process.pid}.2.c2l`];
  t.teardown(() => {
    for (const q of queues) mqUnlinkIfExists(q);
    rmSync(dir, { recursive: true, force: true });
  });
  // The endpoints themselves: handshake names are only taken next to them.
  queues.push(`/${ep}`);
  fifos.push(`${dir}/${ep}`);
  // Named like handshake leftovers of a dead pid, but no endpoint next to them: not provably shmbus's.
  const lone = unique('lone');
  queues.push(`/${lone}.${dead}.1.u`);
  fifos.push(`${dir}/${lone}.${dead}.1.c2l`);
  for (const q of queues) mqClose(mqOpen(q, O_RDONLY | O_CREAT | O_EXCL, 0o600, { maxmsg: 1, msgsize: 64 }));
  for (const f of fifos) mkfifo(f, 0o600);
  const { code, out } = await cli(like(t), ['clean', '-v', '--dir', dir, '--match', ep, '--match', lone]);
  t.equal(code, 0, out);
  for (const name of [...queues.slice(0, 2).map((q) => `${MQ}${q}`), ...fifos.slice(0, 2)]) {
    t.match(lineFor(out, name) ?? '', /^removed .*connector pid \d+ is gone/, `${name} removed`);
    t.notOk(existsSync(name));
  }
  for (const name of [`${MQ}${queues[2]}`, fifos[2]!]) {
    t.match(lineFor(out, name) ?? '', /^kept .*connector pid \d+ is alive/, `${name} kept`);
    t.ok(existsSync(name));
  }
  for (const name of [`${MQ}${queues[4]}`, fifos[4]!, `${MQ}${queues[3]}`, fifos[3]!]) {
    t.equal(lineFor(out, name), undefined, `${name} is not a candidate`);
    t.ok(existsSync(name));
  }
});

t.test('shmbus clean --help lists every kind; a bad option fails with usage', async (t) => {
  const help = await cli(like(t), ['clean', '--help']);
  t.equal(help.code, 0);
  for (const kind of ['bus-registry', 'bus-topic', 'wake-sem', 'wake-mq', 'wake-sysvsem', 'mq-handshake', 'fifo-handshake']) {
    t.match(help.out, new RegExp(`^\\s+${kind}\\s`, 'm'), `help names ${kind}`);
  }
  // Channel segments never have a name, so there is no kind of them to list.
  t.notMatch(help.out, /shm-segment|sysv-segment|ring-file|\.ring\b/, 'no kind for channel segments');
  t.match(help.out, /never have a name/, 'and help says why');
  const bad = await cli(like(t), ['clean', '--no-such-option']);
  t.equal(bad.code, 2);
  t.match(bad.err, /Unknown option '--no-such-option'/);
});

t.test('as a user other than root, clean says nothing about running as root', { skip: asRoot ? false : 'runs as root only to compare' }, async (t) => {
  const { out } = await cli(like(t), ['clean', '--dry-run', '--match', unique('nothing')], (unprivileged as { prefix: string[] }).prefix ?? []);
  t.notMatch(out, /running as root/);
  t.match(out, /^0 would be removed, 0 kept$/m);
});

t.test('a sysvmq:// card planted by another user never makes root\'s clean remove a queue the card names', { skip: 'skip' in unprivileged ? unprivileged.skip : false }, async (t) => {
  const { msgExists, msgGet, msgRemoveIfExists } = await import('../../host/sys/msg.js');
  const { IPC_CREAT: CREAT, IPC_PRIVATE: PRIVATE } = await import('../../host/sys/constants.js');
  const victim = msgGet(PRIVATE, CREAT | 0o600);
  t.teardown(() => { msgRemoveIfExists(victim); });
  // A pid that ran and is gone: the card's "dead listener".
  const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
  const deadPid = Number(gone.stdout);
  const key = (0x5c000000 | (process.pid & 0xffffff)) >>> 0;
  const msgUrl = new URL('../../dist/host/sys/msg.js', import.meta.url).href;
  const planter = `
    import { msgGet, msgSend, setMsgType, MSG_HEADER } from '${msgUrl}';
    import { pack } from 'msgpackr';
    const kid = msgGet(${key}, 0o1000 | 0o2000 | 0o644);
    const card = pack({ shmbus: 1, proto: 1, pid: ${deadPid}, start: '', port: ${victim}, id: 1 });
    const buf = new Uint8Array(MSG_HEADER + card.length);
    setMsgType(buf, 1);
    buf.set(card, MSG_HEADER);
    msgSend(kid, buf, card.length);
    console.log('planted ' + kid);`;
  const attacker = startChild(like(t), [...(unprivileged as { prefix: string[] }).prefix, process.execPath, '--input-type=module', '-e', planter],
    { env: { ...process.env, NODE_OPTIONS: '' }, cwd: fileURLToPath(new URL('../..', import.meta.url)) });
  const kid = Number((await attacker.line(/^planted /)).split(' ')[1]);
  t.teardown(() => { msgRemoveIfExists(kid); });
  const dry = await cli(like(t), ['clean', '--dry-run', '--match', `msqid=${victim} `, '--match', `msqid=${kid} `]);
  t.match(dry.out, new RegExp(`would remove sysvmq-key +msqid=${kid} `), 'the planted card\'s own queue is a dead listener\'s key queue (nobody\'s, removable by root)');
  t.notMatch(dry.out, new RegExp(`msqid=${victim} `), 'the queue the card names as its port is not even a candidate (another owner)');
  await cli(like(t), ['clean', '--match', `msqid=${victim} `, '--match', `msqid=${kid} `]);
  t.ok(msgExists(victim), 'root\'s queue is still there');
  t.notOk(msgExists(kid), 'the planted key queue was removed');
});
