// Locks and shared state, side by side in one run (npm run bench:locks):
//   uncontended   lock + unlock in one process: shmbus Mutex (await lock(), and tryLock()), a System V semaphore
//                 (semop -1 / +1 with SEM_UNDO, the seeds' way) and flock(LOCK_EX / LOCK_UN) on a file
//   handoff       one process: an async function releases the lock a microtask after another began waiting for
//                 it through a second handle (ns per handoff: the waiter's wait and the release; see
//                 host/turns.ts — before it, the waiter spun 20 µs the holder could not run in, then slept)
//   contended     two processes (./locks-child.ts) each doing lock + unlock pairs on the same lock, all at once:
//                 pairs per second of the two together
//   state         SharedState read() and add() per second
// Rounds are rotated between the mechanisms; each figure is the median of ROUNDS. Ratios are of medians from this run.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { writeFileSync, rmSync, mkdtempSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Mutex } from '../state/mutex.js';
import { SharedState } from '../state/shared-state.js';
import { semGet, semOp, semRemove, encodeSemOps, semOpRaw } from '../host/sys/sem.js';
import { flockRaw } from '../host/sys/mq.js';
import { IPC_CREAT, IPC_EXCL, LOCK_EX, LOCK_UN } from '../host/sys/constants.js';

const ROUNDS = Number(process.env.ROUNDS ?? 5);
const SCALE = Number(process.env.BENCH_SCALE ?? 1);
const N = Math.round(200_000 * SCALE);
const CONTENDED = Math.round(50_000 * SCALE);
const HANDOFFS = Math.round(20_000 * SCALE);
const SEM_UNDO = 0x1000;
const CHILD = fileURLToPath(new URL('./locks-child.js', import.meta.url));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function timeNs(n: number, body: (n: number) => unknown): Promise<number> {
  const t0 = process.hrtime.bigint();
  await body(n);
  return Number(process.hrtime.bigint() - t0) / n;
}

async function contended(kind: string, name: string, n: number): Promise<number> {
  const children = [0, 1].map(() => spawn(process.execPath, [CHILD, kind, name, String(n)], { stdio: ['pipe', 'pipe', 'inherit'] }));
  const lines = children.map((c) => createInterface({ input: c.stdout! }));
  const next = (i: number, re: RegExp) => new Promise<string>((resolve, reject) => {
    const on = (l: string) => { if (re.test(l)) { lines[i]!.off('line', on); resolve(l); } };
    lines[i]!.on('line', on);
    children[i]!.once('exit', (code) => reject(new Error(`${kind} child exited with ${code}`)));
  });
  await Promise.all([0, 1].map((i) => next(i, /^ready$/)));
  const done = Promise.all([0, 1].map((i) => next(i, /^done /)));
  const t0 = performance.now();
  for (const c of children) c.stdin!.write('go\n');
  await done;
  const ms = performance.now() - t0;
  for (const c of children) c.stdin!.end();
  await Promise.all(children.map((c) => new Promise((r) => c.exitCode !== null ? r(0) : c.once('exit', r))));
  return (2 * n) / (ms / 1000);
}

const id = `bench-locks-${process.pid}`;
const mutexUrl = `shm://${id}`;
const mutex = await Mutex.open(mutexUrl);
const mutex2 = await Mutex.open(mutexUrl);
const key = 0x5b000000 | (process.pid & 0xffffff);
const semid = semGet(key, 1, IPC_CREAT | IPC_EXCL | 0o600);
semOp(semid, [{ num: 0, op: 1, flags: 0 }]);
const dir = mkdtempSync(join(tmpdir(), 'shmbus-locks-'));
const lockFile = join(dir, 'lock');
writeFileSync(lockFile, '');
const fd = openSync(lockFile, 'r+');
const state = await SharedState.open(`shm://${id}-state`, { fields: { bid: 'f64', ask: 'f64', hits: 'u64' } });
state.update({ bid: 1, ask: 2 });

const down = encodeSemOps([{ num: 0, op: -1, flags: SEM_UNDO }]);
const up = encodeSemOps([{ num: 0, op: 1, flags: SEM_UNDO }]);
const cases: Record<string, () => Promise<number>> = {
  'mutex lock()+unlock()': () => timeNs(N, async (n) => { for (let i = 0; i < n; i++) { await mutex.lock(); mutex.unlock(); } }),
  'mutex tryLock()+unlock()': () => timeNs(N, (n) => { for (let i = 0; i < n; i++) { mutex.tryLock(); mutex.unlock(); } }),
  'semop -1/+1': () => timeNs(N, (n) => { for (let i = 0; i < n; i++) { semOpRaw(semid, down, 1); semOpRaw(semid, up, 1); } }),
  'mutex handoff, one process': () => timeNs(HANDOFFS, async (n) => {
    for (let i = 0; i < n; i++) {
      await mutex.lock();
      void Promise.resolve().then(() => mutex.unlock());
      await mutex2.lock();
      mutex2.unlock();
    }
  }),
  'flock EX/UN': () => timeNs(N, (n) => { for (let i = 0; i < n; i++) { flockRaw(fd, LOCK_EX); flockRaw(fd, LOCK_UN); } }),
  'state read()': () => timeNs(N, (n) => { for (let i = 0; i < n; i++) state.read(); }),
  'state get()': () => timeNs(N, (n) => { for (let i = 0; i < n; i++) state.get('bid'); }),
  'state add()': () => timeNs(N, (n) => { for (let i = 0; i < n; i++) state.add('hits', 1); }),
  'state update({bid,ask})': () => timeNs(N, (n) => { for (let i = 0; i < n; i++) state.update({ bid: i, ask: i + 1 }); }),
};
const contendedCases: Record<string, () => Promise<number>> = {
  'mutex, 2 processes': () => contended('mutex', mutexUrl, CONTENDED),
  'semop, 2 processes': () => contended('semop', String(key), CONTENDED),
  'flock, 2 processes': () => contended('flock', lockFile, CONTENDED),
};

const results: Record<string, number[]> = {};
try {
  for (let round = 0; round < ROUNDS; round++) {
    const names = Object.keys(cases);
    const rotated = [...names.slice(round % names.length), ...names.slice(0, round % names.length)];
    for (const name of rotated) (results[name] ??= []).push(await cases[name]!());
    const cnames = Object.keys(contendedCases);
    const crot = [...cnames.slice(round % cnames.length), ...cnames.slice(0, round % cnames.length)];
    for (const name of crot) (results[name] ??= []).push(await contendedCases[name]!());
  }
} finally {
  mutex2.close();
  mutex.close();
  state.close();
  semRemove(semid);
  closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
}

const m = (name: string) => median(results[name]!);
console.log(`shmbus locks and state: ${ROUNDS} rounds (medians), N=${N}, contended ${CONTENDED} pairs per process`);
console.log('\nuncontended, one process (ns per lock+unlock pair; per call for state; per handoff):');
for (const name of Object.keys(cases)) console.log(`  ${name.padEnd(28)} ${m(name).toFixed(1).padStart(9)} ns   ${(1e9 / m(name) / 1e6).toFixed(2).padStart(7)} M/s`);
console.log('\ncontended, two processes (lock+unlock pairs per second, both together):');
for (const name of Object.keys(contendedCases)) console.log(`  ${name.padEnd(28)} ${(m(name) / 1e3).toFixed(1).padStart(9)} k/s`);
console.log('\nratios:');
console.log(`  uncontended: semop / mutex lock()      ${(m('semop -1/+1') / m('mutex lock()+unlock()')).toFixed(1)}x   (goal ≥ 10x)`);
console.log(`  uncontended: semop / mutex tryLock()   ${(m('semop -1/+1') / m('mutex tryLock()+unlock()')).toFixed(1)}x`);
console.log(`  uncontended: flock / mutex lock()      ${(m('flock EX/UN') / m('mutex lock()+unlock()')).toFixed(1)}x`);
console.log(`  contended:   mutex / semop throughput  ${(m('mutex, 2 processes') / m('semop, 2 processes')).toFixed(2)}x   (goal ≥ 1x)`);
console.log(`  contended:   mutex / flock throughput  ${(m('mutex, 2 processes') / m('flock, 2 processes')).toFixed(2)}x`);
