// What every test file shares: unique names, the scale knob for heavy tests, watchdogs that fail instead of
// hanging, waiting for a condition (never a bare sleep), and child processes that cannot outlive their test.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The test type tap hands to every callback (kept structural so helpers do not depend on tap's internals). */
export interface TestLike {
  teardown(fn: () => unknown): void;
  fail(message: string): unknown;
}

let serial = 0;
/** A name no other test, file or process uses at the same time: `<prefix>-<pid>-<n>`. */
export const unique = (prefix: string): string => `${prefix}-${process.pid}-${++serial}`;

/**
 * How much of the heavy work (million-message runs, fuzz cases, random kills) to do: `SHMBUS_TEST_SCALE`, 1 for
 * `npm test`, larger for `npm run test:stress`. Counts are written at their full (stress) size and scaled down.
 */
export const SCALE = (() => {
  const raw = process.env.SHMBUS_TEST_SCALE;
  const n = raw === undefined ? 1 : Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`SHMBUS_TEST_SCALE must be a positive number, got ${raw}`);
  return n;
})();

/** The stress-size count `full` at the current scale: full × SCALE / STRESS_SCALE, at least `min`. */
export const STRESS_SCALE = 10;
export function scaled(full: number, min = 1): number {
  return Math.max(min, Math.round((full * Math.min(SCALE, STRESS_SCALE)) / STRESS_SCALE));
}

/**
 * How much longer than usual this machine may take: `SHMBUS_TEST_TIMEOUT_FACTOR` (default 1) multiplies every
 * file's timeout (fileTimeout). Watchdogs inside tests are far above need already and do not use it.
 */
export const TIMEOUT_FACTOR = (() => {
  const raw = process.env.SHMBUS_TEST_TIMEOUT_FACTOR;
  const n = raw === undefined ? 1 : Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`SHMBUS_TEST_TIMEOUT_FACTOR must be a positive number, got ${raw}`);
  return n;
})();

/**
 * Sets the timeout of the whole test file (tap reads it from the file's root test): `fixed` seconds plus
 * `perScale` seconds per unit of SCALE, i.e. about 4x what the file takes on an idle 2-core machine, times
 * TIMEOUT_FACTOR. A file that ends past it is a hang, not a slow machine.
 */
export function fileTimeout(root: { setTimeout(ms: number): void }, fixed: number, perScale = 0): void {
  root.setTimeout(Math.round((fixed + perScale * Math.min(SCALE, STRESS_SCALE)) * 1000 * TIMEOUT_FACTOR));
}

/**
 * Fails instead of hanging: rejects when `p` has not settled within `ms`. The bound is a watchdog, not an
 * assertion on speed: pick it far above what the slowest machine needs.
 */
export function within<T>(ms: number, p: Promise<T>, what: string | (() => string)): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`watchdog (${ms} ms): ${typeof what === 'function' ? what() : what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Waits until `check()` is true, for state the kernel changes without telling us (an object removed by another
 * process, a thread that finished exiting). Looks again with a growing pause; rejects after `ms`.
 */
export async function eventually(check: () => boolean, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (let pause = 1; !check(); pause = Math.min(pause * 2, 100)) {
    if (Date.now() > deadline) throw new Error(`watchdog (${ms} ms): ${what}`);
    await new Promise((r) => setTimeout(r, pause));
  }
}

/** The compiled path of a fixture in test/fixtures (tsc emits them to dist/test/fixtures). */
export function fixture(name: string): string {
  return fileURLToPath(new URL(`../dist/test/fixtures/${name}.js`, import.meta.url));
}

export interface Child {
  readonly process: ChildProcess;
  readonly pid: number;
  /** Settles when the process has exited. */
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout(): string;
  stderr(): string;
  /** Resolves with the first stdout line matching `pattern` (already printed or still to come); rejects if the child exits first. */
  line(pattern: RegExp | string, ms?: number): Promise<string>;
  /** SIGKILLs the child's whole process group. */
  kill(signal?: NodeJS.Signals): void;
}

/** Process ids of living processes (zombies excluded) whose /proc/<pid>/stat fields after the name (state, ppid,
 * pgrp, ...) satisfy `match`. */
function livingProcesses(match: (fields: string[]) => boolean): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (fields[0] !== 'Z' && match(fields)) out.push(Number(entry));
    } catch { /* it exited while we looked */ }
  }
  return out;
}

/** Process ids of the living members of process group `pgid` (zombies excluded). */
export function groupMembers(pgid: number): number[] {
  return livingProcesses((f) => Number(f[2]) === pgid);
}

/** Process ids of the living children of `ppid` (zombies excluded). */
export function childrenOf(ppid: number): number[] {
  return livingProcesses((f) => Number(f[1]) === ppid);
}

/** Process groups of children still running, killed synchronously if this process exits first. */
const liveGroups = new Set<number>();
process.on('exit', () => {
  for (const pgid of liveGroups) { try { process.kill(-pgid, 'SIGKILL'); } catch { /* gone */ } }
});

/**
 * Whether `setpriv --pdeathsig` is there: with it, a child gets SIGKILL when this process dies, even by SIGKILL
 * (a tap timeout ends in one), instead of living on with PPID 1.
 */
const hasPdeathsig = (() => {
  try { return spawnSync('setpriv', ['--pdeathsig', 'KILL', '--', 'true']).status === 0; } catch { return false; }
})();

/** `argv` with the parent-death signal set as late as possible (a change of uid clears it, so after setpriv's). */
function dieWithParent(argv: string[]): string[] {
  if (!hasPdeathsig) return argv;
  if (argv[0] === 'setpriv') return ['setpriv', '--pdeathsig', 'KILL', ...argv.slice(1)];
  return ['setpriv', '--pdeathsig', 'KILL', '--', ...argv];
}

/**
 * Starts a child in a process group of its own. When the test ends (passes, fails or times out) the whole group
 * is SIGKILLed; if any member is still alive after that, the test fails, naming it. If this process dies first
 * the child is killed too (parent-death signal, and an exit hook for the group).
 * `argv` is the command line (a prefix such as `setpriv …` or `prlimit …` may come first: they exec).
 */
export function startChild(t: TestLike, argv: string[], opts: { env?: NodeJS.ProcessEnv; stdin?: 'pipe' | 'ignore'; cwd?: string } = {}): Child {
  // NODE_OPTIONS '' asks for a plain child, but tap's process-info hook puts its loader (and coverage) back into
  // NODE_OPTIONS of every child spawned from a test: `env -u` takes it out again, after the hook.
  const plain = opts.env?.NODE_OPTIONS === '' ? ['env', '-u', 'NODE_OPTIONS'] : [];
  const command = [...plain, ...dieWithParent(argv)];
  const proc = spawn(command[0]!, command.slice(1), {
    stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'],
    detached: true,
    env: opts.env ?? process.env,
    cwd: opts.cwd,
  });
  return adoptChild(t, proc, argv.join(' '));
}

/**
 * Gives a child that something else started (e.g. spawnWithPipe) the same care as startChild: it must have been
 * spawned with `detached: true` (its own process group) and piped stdout/stderr.
 */
export function adoptChild(t: TestLike, proc: ChildProcess, what: string): Child {
  if (proc.pid === undefined) throw new Error(`could not start ${what}`);
  const pid = proc.pid;
  liveGroups.add(pid);
  let out = '';
  let err = '';
  let exited = false;
  const lineWaiters = new Set<() => void>();
  proc.stdout?.setEncoding('utf8').on('data', (d: string) => { out += d; for (const w of lineWaiters) w(); });
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    // 'close', not 'exit': by then everything the child wrote to stdout and stderr has been read.
    proc.once('close', (code, signal) => { exited = true; for (const w of lineWaiters) w(); resolve({ code, signal }); });
  });
  const killGroup = (signal: NodeJS.Signals = 'SIGKILL') => {
    try { process.kill(-pid, signal); } catch { /* the group is gone */ }
  };
  const line = (pattern: RegExp | string, ms = 60_000) => within(ms, new Promise<string>((resolve, reject) => {
    const look = () => {
      const found = out.split('\n').find((l, i, all) => (i < all.length - 1 || exited) && (typeof pattern === 'string' ? l.includes(pattern) : pattern.test(l)));
      if (found !== undefined) { lineWaiters.delete(look); resolve(found); } else if (exited) {
        lineWaiters.delete(look);
        reject(new Error(`child ${pid} exited before printing ${pattern}; stderr: ${err.slice(-2000)}`));
      }
    };
    lineWaiters.add(look);
    look();
  }), () => `child ${pid} did not print ${pattern}; stdout: ${out.slice(-500)} stderr: ${err.slice(-2000)}`);
  t.teardown(async () => {
    killGroup('SIGKILL');
    await within(30_000, exit, `child ${pid} did not die after SIGKILL`);
    let left: number[] = [];
    await eventually(() => (left = groupMembers(pid)).length === 0, 'group members to exit', 5000).catch(() => {});
    liveGroups.delete(pid);
    if (left.length) {
      for (const p of left) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
      t.fail(`processes outlived their test: ${left.join(' ')} (started by ${what})`);
    }
  });
  return { process: proc, pid, exit, stdout: () => out, stderr: () => err, line, kill: killGroup };
}

/** Runs compiled fixture `name` (see fixture()) with plain Node: tap's loader hooks are not passed on. */
export function startFixture(t: TestLike, name: string, args: string[], opts: { prefix?: string[]; env?: NodeJS.ProcessEnv; stdin?: 'pipe' | 'ignore'; execArgv?: string[] } = {}): Child {
  return startChild(t, [...(opts.prefix ?? []), process.execPath, ...(opts.execArgv ?? []), fixture(name), ...args], {
    stdin: opts.stdin,
    env: { ...process.env, ...opts.env, NODE_OPTIONS: '' },
  });
}

let mqueueMounted: boolean | undefined;
/**
 * '/dev/mqueue' once the mqueue file system is mounted there (mounted by this call when it is not and we are root,
 * as on a fresh machine), else undefined: POSIX queues exist without it, but nobody can list them, so neither
 * `shmbus clean` nor a test can see what a killed process left. Tests that look there skip without it.
 */
export function mqueueDir(): string | undefined {
  if (mqueueMounted === undefined) {
    const mounted = () => readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === '/dev/mqueue' && l.split(' ')[2] === 'mqueue');
    if (!mounted()) {
      try {
        mkdirSync('/dev/mqueue', { recursive: true });
        execFileSync('mount', ['-t', 'mqueue', 'none', '/dev/mqueue'], { stdio: 'ignore' });
      } catch { /* not root: queues cannot be listed here */ }
    }
    mqueueMounted = mounted();
  }
  return mqueueMounted ? '/dev/mqueue' : undefined;
}

/** tap's `skip` for a test that must list POSIX queues (see mqueueDir). */
export const needsMqueue = (): string | false => (mqueueDir() === undefined ? '/dev/mqueue is not mounted and cannot be (not root)' : false);

/** The uid/gid an attacker runs as in hostile tests. */
export const NOBODY = 65534;

/**
 * The command prefix that runs a child as an unprivileged user (uid/gid 65534, no groups), or the reason it
 * cannot (skip the test with it): only root can drop to another uid.
 */
export function asUnprivileged(): { prefix: string[] } | { skip: string } {
  if (process.getuid?.() !== 0) return { skip: 'needs root to start a process as another uid' };
  return { prefix: ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--'] };
}
