// SIGKILL of a lossless channel's sender at random points (issue 9), for every transport of the conformance
// suite. The sender (test/fixtures/kill-sender.ts) streams sequence messages and prints its progress; this
// process receives them and kills the sender's process group once the sender has handed a randomly chosen
// number k of them to the transport (k = 0: as soon as the connection exists). Then the receiver must:
//   - have got exactly a prefix 0 … m-1 of the sequence, every message intact (nothing lost in the middle,
//     duplicated, reordered or torn);
//   - never more than the sender had handed over (m <= taken + 1: its progress line may lag by the message in
//     flight when the kill came), and on shared memory, where a taken message is committed to the ring at once,
//     at least what it had handed over (m >= taken; the kernel transports batch in user space first);
//   - end with ERR_SHMBUS_PEER_DEAD, or in order only if the sender got to close (m = n), within a watchdog;
//   - after closing, nothing of the connection is left in the system: what is left (queues the dead sender
//     owned, FIFOs, segments) is counted, reported, and removed so the next kill starts clean.
//
// Kills per transport: 1000 at stress scale (SHMBUS_TEST_SCALE=10, four senders at a time), 2 by default. The
// kill points come from a seeded generator; reproduce with SHMBUS_KILL_SEED=<seed> (printed), KILL=<transport,...>
// to run some only, SHMBUS_KILLS=<n> for another number of kills.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listen, spawnWithPipe, ShmbusError, ErrorCode, type Connection, type ConnectionListener } from '../index.js';
import { orphansSettled } from '../transports/sysvmq.js';
import { checkSeq } from './fixtures/conn-peer.js';
import { fileTimeout, adoptChild, mqueueDir, fixture, SCALE, STRESS_SCALE, startFixture, within, type Child, type TestLike } from './helpers.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 120, 700);

const KILLS = Number(process.env.SHMBUS_KILLS) || (SCALE >= STRESS_SCALE ? 1000 : Math.max(2, Math.round(2 * SCALE)));
/** Messages a sender would send if nobody killed it: several times what any transport here buffers. */
const N = 4000;
const pid = process.pid;
const SEED = process.env.SHMBUS_KILL_SEED !== undefined ? Number(process.env.SHMBUS_KILL_SEED) : (Date.now() ^ (pid << 8)) >>> 0;
const only = process.env.KILL?.split(',').filter(Boolean);
const CHILD_ENV = { ...process.env, NODE_OPTIONS: '' };

t.setTimeout(SCALE >= STRESS_SCALE ? 6 * 3_600_000 : 600_000);
// The transports run side by side: most of a kill's time is a sender starting up (Node, wasm, koffi), and on a
// busy machine that is mostly waiting for a turn on the CPU.
t.jobs = 4;
t.comment(`kill points from SHMBUS_KILL_SEED=${SEED}, ${KILLS} kills per transport, n=${N}`);

/** mulberry32: a small seeded generator, so a run's kill points can be replayed. */
function generator(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const dir = mkdtempSync(join(tmpdir(), 'shmbus-kill-'));
let serial = 0;

// --- what each transport leaves in the system ----------------------------------------------------------------

function unixSockets(needle: string): string[] {
  return readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)
    .map((line) => line.trim().split(/\s+/)[7])
    .filter((p): p is string => p !== undefined && p.includes(needle));
}


/** Keys of this file's System V listeners: 0x5b, the low 16 bits of our pid, a serial. */
const SYSV_PREFIX = ((0x5b << 24) | ((pid & 0xffff) << 8)) >>> 0;
/** Processes whose System V queues count as this test's: us and every sender we started. */
const ourPids = new Set<number>([pid]);

function sysvQueues(): string[] {
  return readFileSync('/proc/sysvipc/msg', 'utf8').split('\n').slice(1)
    .map((l) => l.trim().split(/\s+/))
    // key msqid perms cbytes qnum lspid lrpid …
    .filter((f) => f.length > 6 && /^-?\d+$/.test(f[0]!))
    .filter((f) => ((Number(f[0]) >>> 0) & 0xffffff00) >>> 0 === SYSV_PREFIX || ourPids.has(Number(f[5])) || ourPids.has(Number(f[6])))
    .map((f) => f[1]!);
}

interface KillCase {
  name: string;
  /** A fresh URL to listen on; undefined for pipe: (the sender is spawned with the pipes). */
  url?: () => string;
  /** A taken message is committed where the receiver can read it after the sender dies (shared memory). */
  committedAtOnce: boolean;
  /** What of this transport that this test made exists now. */
  leftovers(): string[];
  /** What exists before a round, mine or not (default: leftovers()); what appears later and is mine is left over. */
  snapshot?(): string[];
  remove(item: string): void;
}

const removeFile = (path: string) => { try { unlinkSync(path); } catch { /* gone */ } };
const filesIn = (prefix: string) => () => readdirSync(dir).filter((f) => f.startsWith(prefix)).map((f) => join(dir, f));

const cases: KillCase[] = [
  {
    name: 'shm',
    url: () => `shm://kill-${pid}-${++serial}?size=64KiB`,
    committedAtOnce: true,
    leftovers: () => [
      ...readdirSync('/dev/shm').filter((f) => f.startsWith(`shmbus.kill-${pid}-`)).map((f) => `/dev/shm/${f}`),
      ...unixSockets(`@shmbus/shm/kill-${pid}-`),
    ],
    remove: (item) => { if (item.startsWith('/dev/shm/')) removeFile(item); },
  },
  { name: 'unix', url: () => `unix://${dir}/u${++serial}.sock`, committedAtOnce: false, leftovers: filesIn('u'), remove: removeFile },
  {
    name: 'unix-abstract', url: () => `unix://@shmbus-kill-${pid}-${++serial}`, committedAtOnce: false,
    leftovers: () => unixSockets(`@shmbus-kill-${pid}-`), remove: () => {},
  },
  { name: 'tcp', url: () => 'tcp://127.0.0.1:0', committedAtOnce: false, leftovers: () => [], remove: () => {} },
  { name: 'pipe', committedAtOnce: false, leftovers: () => [], remove: () => {} },
  { name: 'fifo', url: () => `fifo://${dir}/f${++serial}`, committedAtOnce: false, leftovers: filesIn('f'), remove: removeFile },
  {
    name: 'mq', url: () => `mq:///kill-${pid}-${++serial}`, committedAtOnce: false,
    leftovers: () => { const d = mqueueDir(); return d ? readdirSync(d).filter((f) => f.startsWith(`kill-${pid}-`)).map((f) => `${d}/${f}`) : []; },
    remove: removeFile,
  },
  {
    name: 'sysvmq', url: () => `sysvmq://0x${((SYSV_PREFIX | (++serial & 0xff)) >>> 0).toString(16)}`, committedAtOnce: false,
    leftovers: sysvQueues,
    // Every queue: ours may not carry our pid yet (a port nobody has used).
    snapshot: () => readFileSync('/proc/sysvipc/msg', 'utf8').split('\n').slice(1).map((l) => l.trim().split(/\s+/)[1]!).filter(Boolean),
    remove: (msqid) => { try { execFileSync('ipcrm', ['-q', msqid], { stdio: 'ignore' }); } catch { /* gone */ } },
  },
];

/** A TestLike whose teardowns run when one kill is done, not when the whole transport's test ends. */
function killScope(t: { fail(m: string, e: Record<string, unknown>): unknown }) {
  const fns: (() => unknown)[] = [];
  return {
    like: { teardown: (fn: () => unknown) => { fns.push(fn); }, fail: (m: string, e?: Record<string, unknown>) => t.fail(m, e ?? {}) } as TestLike,
    async end() { for (const fn of fns.reverse()) await fn(); },
  };
}

interface Outcome { k: number; received: number; taken: number; ending: string; firstBad: number }

/**
 * One kill: starts a sender, receives from it, SIGKILLs its process group once it has handed over k messages
 * (k = 0: as soon as the connection exists), then drains the receiver to its end and closes it.
 */
async function killOnce(t: { fail(m: string, e: Record<string, unknown>): unknown }, listener: ConnectionListener | undefined, k: number): Promise<Outcome> {
  const scope = killScope(t);
  try {
    let child: Child;
    let conn: Connection | undefined;
    if (listener) {
      child = startFixture(scope.like, 'kill-sender', [listener.url, String(N)]);
    } else {
      const argv = [process.execPath, fixture('kill-sender'), 'pipe:', String(N)];
      const spawned = spawnWithPipe(argv[1]!, argv.slice(2), { url: 'pipe:', detached: true, env: CHILD_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
      child = adoptChild(scope.like, spawned.child, argv.join(" "));
      conn = spawned.connection;
    }
    ourPids.add(child.pid);
    // The sender's progress: the last whole line it printed.
    let taken = 0;
    let partial = '';
    child.process.stdout!.on('data', (d: string) => {
      const lines = (partial + d).split('\n');
      partial = lines.pop()!;
      if (lines.length) taken = Number(lines[lines.length - 1]);
      if (k > 0 && taken >= k) child.kill();
    });
    const stdoutClosed = new Promise<void>((r) => child.process.stdout!.once('close', r));
    if (listener) {
      // A sender that took a message had connected: the listener must hand out that connection, killed or not.
      conn = await within(30_000, Promise.race([
        listener.acceptNext(),
        child.exit.then(({ code }) => {
          if (code !== null) throw new Error(`sender exited (${code}) before connecting: ${child.stderr()}`);
          return new Promise<never>(() => {});
        }),
      ]), () => `accept (sender had taken ${taken})`);
      if (!conn) throw new Error('listener closed');
    }
    const c = conn!;
    c.on('error', () => { /* read from the iterator */ });
    if (k === 0) child.kill();
    let received = 0, firstBad = -1;
    let ending = 'end';
    try {
      await within(60_000, (async () => {
        for await (const m of c) {
          if (firstBad < 0 && !checkSeq(m, received)) firstBad = received;
          received++;
        }
      })(), () => `receiver did not end (k=${k}, received ${received}, sender had taken ${taken})`);
    } catch (error) {
      ending = error instanceof ShmbusError ? error.code : `${(error as Error)?.constructor?.name}: ${(error as Error)?.message}`;
    }
    child.kill();
    await within(30_000, child.exit, 'sender did not die');
    await within(30_000, stdoutClosed, 'sender stdout did not close');
    await within(30_000, c.close(), 'close');
    return { k, received, taken, ending, firstBad };
  } finally {
    await scope.end();
  }
}

/** Senders killed at the same time, each on its own listener (a connection must be matched to its sender). */
const SLOTS = SCALE >= STRESS_SCALE ? 4 : 1;

for (const c of cases.filter((c) => !only || only.includes(c.name))) {
  t.test(`${c.name}: SIGKILL of the sender at ${KILLS} random points`, async (t) => {
    const random = generator(SEED ^ [...c.name].reduce((h, ch) => Math.imul(h, 31) + ch.charCodeAt(0), 7));
    const listeners = c.url ? await Promise.all(Array.from({ length: SLOTS }, () => listen(c.url!()))) : [];
    const problems: (Outcome & { why: string })[] = [];
    const endings = new Map<string, number>();
    let leftTotal = 0;
    const leftKinds = new Set<string>();
    const started = performance.now();
    try {
      for (let done = 0; done < KILLS;) {
        const round = Math.min(SLOTS, KILLS - done);
        const before = new Set((c.snapshot ?? c.leftovers)());
        // A quarter of the kills come within the first few messages, where the connection is youngest.
        const ks = Array.from({ length: round }, () => (random() < 0.25 ? Math.floor(random() * 8) : Math.floor(random() * (N + 1))));
        const outcomes = await Promise.all(ks.map((k, slot) => killOnce(t, listeners[slot], k)));
        done += round;
        if (c.name === 'sysvmq') await orphansSettled();
        const left = c.leftovers().filter((x) => !before.has(x));
        for (const x of left) c.remove(x);
        leftTotal += left.length;
        for (const x of left) leftKinds.add(x.replace(/\d+/g, '#'));
        for (const o of outcomes) {
          endings.set(o.ending, (endings.get(o.ending) ?? 0) + 1);
          const why = [
            o.firstBad >= 0 ? `message ${o.firstBad} is not sequence message ${o.firstBad} (reordered, duplicated, lost before it, or torn)` : '',
            o.received > o.taken + 1 ? `received ${o.received} but the sender had handed over only ${o.taken}` : '',
            c.committedAtOnce && o.received < o.taken ? `received ${o.received} of ${o.taken} committed` : '',
            o.ending === 'end' && o.received !== N ? `ended in order after ${o.received} of ${N}` : '',
            o.ending !== 'end' && o.ending !== ErrorCode.PEER_DEAD ? `ended with ${o.ending}` : '',
          ].filter(Boolean).join('; ');
          if (why) problems.push({ ...o, why });
        }
      }
    } finally {
      for (const l of listeners) await l.close();
    }
    const ms = performance.now() - started;
    t.comment(`${c.name}: ${KILLS} kills in ${Math.round(ms)} ms (${Math.round((ms * SLOTS) / KILLS)} ms each, ${SLOTS} at a time); endings ${JSON.stringify(Object.fromEntries(endings))}; left behind and removed: ${leftTotal}${leftKinds.size ? ` (${[...leftKinds].join(', ')})` : ''}`);
    t.same(problems.slice(0, 5), [], `every receiver got an intact prefix and ended with PEER_DEAD or in order (${problems.length} of ${KILLS} did not)`);
    t.equal(leftTotal, 0, 'a killed sender leaves nothing of its connection once the receiver closed');
  });
}

t.teardown(() => {
  rmSync(dir, { recursive: true, force: true });
  if (existsSync(dir)) throw new Error(`could not remove ${dir}`);
});
