/**
 * Region: every kind created, attached, mapped into a shared wasm memory at two addresses (two "processes"
 * worth of windows in one), unmapped, removed; the error codes of each failure; and no segment left behind.
 */
import t, { type Test } from 'tap';
import koffi from 'koffi';
import ts from 'typescript';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Region, type RegionKind } from '../host/region.js';
import { ErrorCode, SystemError, ShmbusError, Errno, type ErrorCodeValue } from '../host/errors.js';
import * as sys from '../host/sys/shm.js';
import { isProcessAlive, processStartTime } from '../host/sys/proc.js';
import { asUnprivileged, eventually, fileTimeout, startChild, within } from './helpers.js';

// Measured on a busy 2-core machine (load 10-20): ~8 s. Timeout: 4x that, at least tap's 60 s.
fileTimeout(t, 60);

const PID = process.pid;
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const KB = 1024;
const SIZE = 64 * KB;

// One shared wasm memory; windows are 64 KiB slots inside its initial 4 MiB (slot 0 is left alone).
const mem = new WebAssembly.Memory({ initial: 64, maximum: 1024, shared: true });
const base = koffi.address(new Uint8Array(mem.buffer, 0, 0));
const SLOTS = 63;
let nextSlot = 0;
/** A fresh window: its address for mapAt and its offset for reading through the wasm memory. */
function window(): { addr: bigint; off: number } {
  const off = (1 + (nextSlot++ % SLOTS)) * SIZE;
  return { addr: base + BigInt(off), off };
}
const view = (off: number, len = SIZE) => new Uint8Array(mem.buffer, off, len);

// Unique names per process and per use.
let seq = 0;
const posixName = () => `/shmbus-test-${PID}-${++seq}`;
const KEY_PREFIX = 0x5b000000 | ((PID & 0xfff) << 12);
const sysvKey = () => KEY_PREFIX | (++seq & 0xfff);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-region-'));
fs.chmodSync(tmp, 0o755); // the unprivileged child must reach files in here
const filePath = () => path.join(tmp, `seg-${++seq}`);
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Segments this process created that still exist: /dev/shm names with our prefix, SysV ids whose creator is us
 * or whose key carries our prefix. */
function leftovers(): string[] {
  const left = fs.readdirSync('/dev/shm').filter((n) => n.startsWith(`shmbus-test-${PID}-`));
  const keyPrefix = sys.formatKey(KEY_PREFIX).slice(0, 7);
  const ipcs = execFileSync('ipcs', ['-m', '-p'], { encoding: 'utf8' }) + execFileSync('ipcs', ['-m'], { encoding: 'utf8' });
  for (const line of ipcs.split('\n')) {
    const cols = line.trim().split(/\s+/);
    // `ipcs -m -p`: shmid owner cpid lpid ; `ipcs -m`: key shmid owner perms bytes nattch status
    if (cols.length === 4 && cols[2] === String(PID)) left.push(`shmid ${cols[0]} (cpid ${PID})`);
    if (cols.length >= 6 && cols[0]!.startsWith(keyPrefix)) left.push(`key ${cols[0]}`);
  }
  return left;
}

/** A subtest that must leave nothing behind. */
function test(name: string, fn: (t: Test) => void | Promise<void>, skip: string | false = false): void {
  t.test(name, { skip }, async (tt) => {
    await fn(tt);
    tt.same(leftovers(), [], 'no segment left behind');
  });
}

function codeOf(fn: () => unknown): ErrorCodeValue | string {
  try {
    fn();
  } catch (err) {
    return err instanceof ShmbusError ? err.code : `not a ShmbusError: ${String(err)}`;
  }
  return 'no error';
}

function fill(off: number, seed: number, len = SIZE): void {
  const v = view(off, len);
  for (let i = 0; i < len; i += 97) v[i] = (i + seed) & 0xff;
}
function matches(off: number, seed: number, len = SIZE): boolean {
  const v = view(off, len);
  for (let i = 0; i < len; i += 97) if (v[i] !== ((i + seed) & 0xff)) return false;
  return true;
}
const allZero = (off: number, len = SIZE) => view(off, len).every((b) => b === 0);

interface Kind {
  kind: RegionKind;
  create(opts: { size: number; mode?: number; exclusive?: boolean }): Region;
  /** A second, independent handle on the same segment, as another process would get. */
  attach(r: Region): Region;
  exists(r: Region): boolean;
}

const kinds: Kind[] = [
  {
    kind: 'sysv',
    create: (o) => Region.createSysV(sysvKey(), o),
    attach: (r) => Region.attachSysV(parseInt(r.name, 16)),
    exists: (r) => { try { sys.shmStat(r.shmid); return true; } catch { return false; } },
  },
  {
    kind: 'posix',
    create: (o) => Region.createPosix(posixName(), o),
    attach: (r) => Region.attachPosix(r.name),
    exists: (r) => fs.existsSync('/dev/shm' + r.name),
  },
  {
    kind: 'memfd',
    create: (o) => Region.createMemfd(`shmbus-test-${PID}`, o),
    // Another process would get the fd through stdio or SCM_RIGHTS; reopening /proc/self/fd gives a new fd too.
    attach: (r) => Region.fromFd(fs.openSync(`/proc/self/fd/${r.fd}`, 'r+'), 'memfd'),
    exists: () => false,
  },
  {
    kind: 'file',
    create: (o) => Region.createFile(filePath(), o),
    attach: (r) => Region.attachFile(r.name),
    exists: (r) => fs.existsSync(r.name),
  },
];

for (const k of kinds) {
  test(`${k.kind}: create, map, share through a second mapping, unmap`, (t) => {
    const a = k.create({ size: SIZE });
    t.equal(a.kind, k.kind);
    t.equal(a.size, SIZE);
    t.ok(a.created, 'created');
    t.equal(a.owner, k.kind !== 'memfd', 'the creator owns a named segment');
    const b = k.attach(a);
    t.notOk(b.created, 'attached, not created');
    t.notOk(b.owner, 'an attacher does not own');
    t.equal(b.size, SIZE, 'attach reads the real size');

    const wa = window();
    const wb = window();
    a.mapAt(wa.addr);
    b.mapAt(wb.addr);
    t.same(a.mappings, [wa.addr]);
    t.ok(allZero(wb.off), 'a new segment is zero');
    fill(wa.off, 7);
    t.ok(matches(wb.off, 7), 'written through one window, read through the other');
    view(wb.off)[SIZE - 1] = 0xab;
    t.equal(view(wa.off)[SIZE - 1], 0xab, 'and back');
    if (k.kind === 'sysv') t.equal(sys.shmStat(a.shmid).nattch, 2, 'two attaches');

    a.unmapAt(wa.addr);
    t.ok(allZero(wa.off), 'unmap puts zero pages back');
    t.same(a.mappings, []);
    t.ok(matches(wb.off, 7), 'the other window still sees the data');
    if (k.kind === 'sysv') t.equal(sys.shmStat(a.shmid).nattch, 1, 'unmap detached');

    a.mapAt(wa.addr);
    t.ok(matches(wa.off, 7), 'mapped again: the data is still there');
    a.unmapAt(wa.addr);
    b.unmapAt(wb.addr);
    t.ok(allZero(wb.off));

    b.close();
    t.ok(k.kind === 'memfd' || k.exists(a), 'an attacher closing does not remove');
    a.close();
    a.close(); // idempotent
    t.ok(a.closed);
    t.notOk(k.exists(a), 'the owner removed it on close');
  });
}

for (const k of kinds.filter((k) => k.kind !== 'memfd')) {
  test(`${k.kind}: create-or-attach, EXISTS, NOT_FOUND`, (t) => {
    const a = k.create({ size: SIZE });
    const twin = k.kind === 'sysv' ? () => Region.createSysV(parseInt(a.name, 16), { size: SIZE, exclusive: false })
      : k.kind === 'posix' ? () => Region.createPosix(a.name, { size: SIZE, exclusive: false })
      : () => Region.createFile(a.name, { size: SIZE, exclusive: false });
    const b = twin();
    t.notOk(b.created, 'EEXIST turned into an attach');
    t.notOk(b.owner);
    t.equal(b.name, a.name);
    t.equal(b.size, SIZE);
    const wa = window();
    const wb = window();
    a.mapAt(wa.addr);
    b.mapAt(wb.addr);
    fill(wa.off, 3);
    t.ok(matches(wb.off, 3), 'same memory');
    a.unmapAt(wa.addr);
    b.unmapAt(wb.addr);
    b.close();

    const exclusive = k.kind === 'sysv' ? () => Region.createSysV(parseInt(a.name, 16), { size: SIZE })
      : k.kind === 'posix' ? () => Region.createPosix(a.name, { size: SIZE })
      : () => Region.createFile(a.name, { size: SIZE, exclusive: true });
    t.equal(codeOf(exclusive), ErrorCode.EXISTS, 'exclusive create of an existing one');

    a.close();
    t.equal(codeOf(() => k.attach(a)), ErrorCode.NOT_FOUND, 'attach after the owner closed');
  });
}

test('attach of a missing segment is NOT_FOUND', (t) => {
  t.equal(codeOf(() => Region.attachSysV(sysvKey())), ErrorCode.NOT_FOUND, 'sysv key');
  t.equal(codeOf(() => Region.attachSysV({ shmid: 0x7ffffff0 })), ErrorCode.NOT_FOUND, 'sysv shmid');
  t.equal(codeOf(() => Region.attachSysV({ path: path.join(tmp, 'nope') })), ErrorCode.NOT_FOUND, 'sysv ftok path');
  t.equal(codeOf(() => Region.attachPosix(posixName())), ErrorCode.NOT_FOUND, 'posix');
  t.equal(codeOf(() => Region.attachFile(filePath())), ErrorCode.NOT_FOUND, 'file');
});

test('sizes must be positive multiples of 4096', (t) => {
  const files: string[] = [];
  for (const size of [0, -4096, 1000, 4097, 4096.5, NaN, Infinity, '4096' as unknown as number]) {
    t.equal(codeOf(() => Region.createSysV(sysvKey(), { size })), ErrorCode.BAD_ARGUMENT, `sysv ${String(size)}`);
    t.equal(codeOf(() => Region.createPosix(posixName(), { size })), ErrorCode.BAD_ARGUMENT, `posix ${String(size)}`);
    t.equal(codeOf(() => Region.createMemfd('x', { size })), ErrorCode.BAD_ARGUMENT, `memfd ${String(size)}`);
    const file = filePath();
    files.push(file);
    t.equal(codeOf(() => Region.createFile(file, { size })), ErrorCode.BAD_ARGUMENT, `file ${String(size)}`);
  }
  t.equal(codeOf(() => Region.createPosix(posixName(), { size: 4096, mode: 0o1777 })), ErrorCode.BAD_ARGUMENT, 'mode');
  t.same(files.filter((f) => fs.existsSync(f)), [], 'no file was created');
});

test('POSIX names are validated', (t) => {
  const bad = ['noslash', '/', '/a/b', '//a', '/.', '/..', '/a\0b', '/' + 'x'.repeat(256), '/' + 'é'.repeat(128)];
  for (const name of bad) {
    t.equal(codeOf(() => Region.createPosix(name, { size: 4096 })), ErrorCode.BAD_ARGUMENT, JSON.stringify(name).slice(0, 40));
    t.equal(codeOf(() => Region.attachPosix(name)), ErrorCode.BAD_ARGUMENT);
  }
  // The longest legal name: 255 bytes after the '/'.
  const longest = `/shmbus-test-${PID}-`.padEnd(256, 'x');
  const r = Region.createPosix(longest, { size: 4096 });
  t.ok(fs.existsSync('/dev/shm' + longest));
  r.close();
  t.equal(codeOf(() => Region.createMemfd('m'.repeat(250), { size: 4096 })), ErrorCode.BAD_ARGUMENT, 'memfd name too long');
});

test('modes are applied exactly, not masked by the umask', (t) => {
  const old = process.umask(0o077);
  try {
    const p = Region.createPosix(posixName(), { size: 4096, mode: 0o660 });
    t.equal(fs.statSync('/dev/shm' + p.name).mode & 0o777, 0o660, 'posix');
    const f = Region.createFile(filePath(), { size: 4096, mode: 0o644 });
    t.equal(fs.statSync(f.name).mode & 0o777, 0o644, 'file');
    const s = Region.createSysV(sysvKey(), { size: 4096 });
    t.equal(sys.shmStat(s.shmid).mode, 0o600, 'sysv default');
    t.equal(sys.shmStat(s.shmid).cpid, PID, 'sysv creator pid');
    for (const r of [p, f, s]) r.close();
  } finally {
    process.umask(old);
  }
});

test('SysV: ftok path, private segments, attach by shmid', (t) => {
  const keyFile = filePath();
  fs.writeFileSync(keyFile, '');
  const a = Region.createSysV({ path: keyFile, projId: 7 }, { size: SIZE });
  t.equal(a.name, sys.formatKey(sys.ftok(keyFile, 7)), 'named by the ftok key');
  const b = Region.attachSysV({ path: keyFile, projId: 7 });
  t.equal(b.shmid, a.shmid);
  t.equal(codeOf(() => Region.createSysV({ path: keyFile, projId: 0 }, { size: SIZE })), ErrorCode.BAD_ARGUMENT, 'projId 0');
  b.close();
  a.close();

  const p = Region.createSysV('private', { size: SIZE });
  t.equal(p.name, 'private');
  t.equal(codeOf(() => Region.attachSysV(0)), ErrorCode.BAD_ARGUMENT, 'a private segment has no key to attach by');
  const q = Region.attachSysV({ shmid: p.shmid });
  t.equal(q.size, SIZE);
  t.equal(q.name, 'private');
  const w = window();
  q.mapAt(w.addr);
  p.close();
  t.ok(sys.shmStat(q.shmid).removed, 'removed while attached: it lives until the last detach');
  fill(w.off, 9);
  t.ok(matches(w.off, 9), 'the mapping survives IPC_RMID');
  q.unmapAt(w.addr);
  t.equal(codeOf(() => sys.shmStat(q.shmid)), ErrorCode.NOT_FOUND, 'gone with its last detach');
  q.close();
});

test('remove() keeps live mappings and is idempotent; releaseOwnership() keeps the segment', (t) => {
  const r = Region.createPosix(posixName(), { size: SIZE });
  const w = window();
  r.mapAt(w.addr);
  fill(w.off, 5);
  r.remove();
  t.notOk(fs.existsSync('/dev/shm' + r.name), 'name gone now');
  t.ok(matches(w.off, 5), 'mapping still valid');
  r.remove();
  t.equal(codeOf(() => Region.attachPosix(r.name)), ErrorCode.NOT_FOUND);
  r.unmapAt(w.addr);
  r.close();

  for (const k of kinds.filter((k) => k.kind !== 'memfd')) {
    const kept = k.create({ size: 4096 });
    kept.releaseOwnership();
    t.notOk(kept.owner);
    kept.close();
    t.ok(k.exists(kept), `${k.kind}: still there after close`);
    const again = k.attach(kept);
    again.remove(); // by hand, as a reaper would
    again.close();
    t.notOk(k.exists(kept), `${k.kind}: removed by hand`);
  }
});

test('misuse of mapAt / unmapAt / sync', (t) => {
  const r = Region.createMemfd('misuse', { size: SIZE });
  const w = window();
  t.equal(codeOf(() => r.mapAt(w.addr + 100n)), ErrorCode.BAD_ARGUMENT, 'unaligned');
  t.equal(codeOf(() => r.mapAt(0n)), ErrorCode.BAD_ARGUMENT, 'null');
  t.equal(codeOf(() => r.unmapAt(w.addr)), ErrorCode.BAD_ARGUMENT, 'not mapped there');
  t.equal(codeOf(() => r.sync(w.addr)), ErrorCode.BAD_ARGUMENT, 'sync where not mapped');
  r.mapAt(w.addr);
  r.close();
  t.equal(codeOf(() => r.mapAt(w.addr)), ErrorCode.BAD_STATE, 'map after close');
  r.unmapAt(w.addr); // still allowed: the window is ours to clean up
  t.ok(allZero(w.off));
});

test('memfd is sealed against resizing', (t) => {
  const r = Region.createMemfd('sealed', { size: SIZE });
  const e = (() => { try { sys.ftruncate(r.fd, 0); } catch (err) { return err; } return undefined; })();
  t.ok(e instanceof SystemError && e.errno === Errno.EPERM, 'ftruncate refused by F_SEAL_SHRINK');
  t.equal(sys.fdSize(r.fd), SIZE);
  r.close();

  const dir = fs.openSync('/proc/self', 'r');
  t.equal(codeOf(() => Region.fromFd(dir)), ErrorCode.BAD_ARGUMENT, 'fromFd of a directory');
  fs.closeSync(dir);
  t.equal(codeOf(() => Region.fromFd(-1)), ErrorCode.BAD_ARGUMENT, 'fromFd(-1)');
});

test('fromFd names and ownership', (t) => {
  const m = Region.createMemfd('named-one', { size: 4096 });
  const mm = Region.fromFd(fs.openSync(`/proc/self/fd/${m.fd}`, 'r+'));
  t.equal(mm.name, 'named-one');
  const p = Region.createPosix(posixName(), { size: 4096 });
  const pp = Region.fromFd(fs.openSync('/dev/shm' + p.name, 'r+'), 'posix');
  t.equal(pp.name, p.name);
  pp.remove(); // no-op: fromFd never removes by name
  t.ok(fs.existsSync('/dev/shm' + p.name));
  for (const r of [mm, m, pp, p]) r.close();
});

test('file: sync writes through to the file', (t) => {
  const r = Region.createFile(filePath(), { size: SIZE });
  const w = window();
  r.mapAt(w.addr);
  fill(w.off, 11);
  r.sync(w.addr);
  const onDisk = fs.readFileSync(r.name);
  t.equal(onDisk.length, SIZE);
  t.equal(onDisk[97], (97 + 11) & 0xff);
  r.unmapAt(w.addr);
  r.close();
  t.notOk(fs.existsSync(r.name));
});

// A 1 MiB tmpfs to fill up. Mounting needs CAP_SYS_ADMIN; without it the test is skipped.
const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-tmpfs-'));
const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'none', mnt]).status === 0;
t.teardown(() => {
  // Lazily (-l): a failed test may still hold a file in it open; the mount must not outlive the test either way.
  if (mounted) spawnSync('umount', ['-l', mnt]);
  fs.rmSync(mnt, { recursive: true, force: true });
});

test('a full file system fails at creation with NO_SPACE and leaves nothing', (t) => {
  const big = path.join(mnt, 'big');
  t.equal(codeOf(() => Region.createFile(big, { size: 4 * 1024 * KB })), ErrorCode.NO_SPACE, '4 MiB on a 1 MiB tmpfs');
  t.notOk(fs.existsSync(big), 'the failed segment was removed');
  // Pages are reserved at creation: 512 KiB taken means 768 KiB no longer fits, before anything is touched.
  const half = Region.createFile(path.join(mnt, 'half'), { size: 512 * KB });
  t.equal(codeOf(() => Region.createFile(path.join(mnt, 'more'), { size: 768 * KB })), ErrorCode.NO_SPACE, 'space is reserved up front');
  t.same(fs.readdirSync(mnt), ['half']);
  half.close();
  t.same(fs.readdirSync(mnt), []);
}, !mounted && 'cannot mount a tmpfs here (needs CAP_SYS_ADMIN)');

/**
 * Permission: we run as root, which bypasses every mode check, so the check runs in a child as nobody. The child
 * runs the real Region code: the sources are transpiled (no type check) into a temp dir that sees node_modules.
 */
test('attaching a 0600 segment of another user is PERMISSION_DENIED', async (t) => {
  const out = path.join(tmp, 'js');
  const sources = ['host/errors.ts', 'host/region.ts', ...fs.readdirSync(path.join(ROOT, 'host/sys')).filter((f) => f.endsWith('.ts')).map((f) => `host/sys/${f}`)];
  for (const src of sources) {
    const js = ts.transpileModule(fs.readFileSync(path.join(ROOT, src), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
    }).outputText;
    fs.mkdirSync(path.dirname(path.join(out, src)), { recursive: true });
    fs.writeFileSync(path.join(out, src.replace(/\.ts$/, '.js')), js);
  }
  fs.writeFileSync(path.join(out, 'package.json'), '{"type":"module"}');
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(out, 'node_modules'));
  fs.writeFileSync(path.join(out, 'child.mjs'), `
    import { Region } from './host/region.js';
    const cases = JSON.parse(process.argv[2]);
    const results = {};
    for (const [label, kind, arg] of cases) {
      try {
        const r = kind === 'sysv' ? Region.attachSysV(arg) : kind === 'posix' ? Region.attachPosix(arg) : Region.attachFile(arg);
        r.close();
        results[label] = 'ok';
      } catch (err) {
        results[label] = err.code + ' ' + (err.errnoName ?? err.message);
      }
    }
    console.log(JSON.stringify(results));
  `);

  const mine = [
    Region.createSysV(sysvKey(), { size: 4096 }),
    Region.createPosix(posixName(), { size: 4096 }),
    Region.createFile(filePath(), { size: 4096 }),
  ];
  const open = [
    Region.createSysV(sysvKey(), { size: 4096, mode: 0o666 }),
    Region.createPosix(posixName(), { size: 4096, mode: 0o666 }),
    Region.createFile(filePath(), { size: 4096, mode: 0o666 }),
  ];
  const arg = (r: Region) => (r.kind === 'sysv' ? parseInt(r.name, 16) : r.name);
  const cases = [
    ...mine.map((r) => [`${r.kind} 0600`, r.kind, arg(r)]),
    ...open.map((r) => [`${r.kind} 0666`, r.kind, arg(r)]),
  ];
  // `env -i`: tap's process-info hook adds its loader to NODE_OPTIONS of every child it sees spawned, and that
  // loader (which writes under .tap/ as root's files) has no business in a child running as nobody.
  const nobody = asUnprivileged();
  if ('skip' in nobody) throw new Error(nobody.skip);
  const child = startChild(t, [...nobody.prefix, 'env', '-i', `PATH=${process.env.PATH ?? '/usr/bin:/bin'}`, process.execPath, path.join(out, 'child.mjs'), JSON.stringify(cases)], { cwd: out });
  const { code: status } = await within(60_000, child.exit, () => `the unprivileged child did not end: ${child.stderr()}`);
  const stdout = child.stdout();
  const stderr = child.stderr();
  for (const r of [...mine, ...open]) r.close();
  t.equal(status, 0, `child ran (${stderr.trim().slice(0, 500)})`);
  const results = JSON.parse(stdout) as Record<string, string>;
  for (const kind of ['sysv', 'posix', 'file']) {
    t.equal(results[`${kind} 0600`], `${ErrorCode.PERMISSION_DENIED} EACCES`, `${kind}: another user's 0600 segment`);
    t.equal(results[`${kind} 0666`], 'ok', `${kind}: a 0666 segment attaches (the child itself works)`);
  }
  // And the mapping itself, independent of the kernel: both EACCES and EPERM are permission errors.
  t.equal(new SystemError('shm_open', Errno.EACCES).code, ErrorCode.PERMISSION_DENIED);
  t.equal(new SystemError('shmget', Errno.EPERM).code, ErrorCode.PERMISSION_DENIED);
}, process.getuid?.() !== 0 && 'needs root to start a child as another user');

test('syscall error codes and details', (t) => {
  const e = (() => { try { Region.attachPosix('/shmbus-test-missing'); } catch (err) { return err; } return undefined; })();
  t.ok(e instanceof SystemError);
  if (e instanceof SystemError) {
    t.equal(e.syscall, 'shm_open');
    t.equal(e.errnoName, 'ENOENT');
    t.match(e.message, /name=\/shmbus-test-missing/);
  }
  // shmget charges the whole size to the commit limit at creation: too much memory fails now, as NO_SPACE.
  t.equal(codeOf(() => Region.createSysV(sysvKey(), { size: 2 ** 52 })), ErrorCode.NO_SPACE, 'shmget ENOMEM: 4 PiB');
  // A size the kernel refuses (here: larger than the existing segment) is a LIMIT.
  const r = Region.createSysV(sysvKey(), { size: 4096 });
  t.equal(codeOf(() => sys.shmGet(parseInt(r.name, 16), 8192, 0)), ErrorCode.LIMIT, 'shmget EINVAL on a size');
  r.close();
  t.equal(codeOf(() => sys.closeFd(1 << 20)), ErrorCode.SYSCALL, 'close EBADF');
  t.equal(codeOf(() => sys.fdSize(1 << 20)), ErrorCode.SYSCALL, 'fstat EBADF');
});

test('process identity', async (t) => {
  const start = processStartTime(PID);
  t.type(start, 'bigint');
  // Our comm ('node') has no spaces, so a plain split finds field 22 too.
  t.equal(start, BigInt(fs.readFileSync('/proc/self/stat', 'latin1').split(' ')[21]!), 'field 22');
  t.ok(isProcessAlive(PID));
  t.ok(isProcessAlive(PID, start));
  t.notOk(isProcessAlive(PID, start! + 1n), 'same pid, other start time: reused pid');
  t.notOk(isProcessAlive(0), 'pid 0 is a process group, never alive');
  t.notOk(isProcessAlive(-1));
  t.ok(isProcessAlive(1), 'pid 1 (EPERM would count as alive too)');

  // A comm with ') ' in it must not shift the fields.
  const odd = path.join(tmp, 'a) b c');
  fs.copyFileSync('/bin/sleep', odd);
  fs.chmodSync(odd, 0o755);
  const child = startChild(t, [odd, '30']);
  // A prefix (setpriv) may run first in the child's pid: wait until the odd name is the one in /proc.
  await eventually(() => { try { return fs.readFileSync(`/proc/${child.pid}/comm`, 'utf8').trim() === 'a) b c'; } catch { return false; } }, 'the child to run under its odd name');
  const childStart = processStartTime(child.pid);
  t.type(childStart, 'bigint');
  t.ok(childStart! >= start!, 'started after us');
  t.ok(isProcessAlive(child.pid, childStart));
  child.kill('SIGKILL');
  await child.exit;
  t.notOk(isProcessAlive(child.pid, childStart), 'dead after SIGKILL');
  t.equal(processStartTime(0x7ffffff), undefined);
});
