// One contender of bench/locks.ts (compiled to dist/bench/locks-child.js):
//   locks-child.js <kind> <name> <iterations>
// kind: mutex (shmbus Mutex, name a URL), semop (System V semaphore, name its key), flock (name a file path).
// Opens the lock, prints "ready", waits for a line on stdin, then does <iterations> lock+unlock pairs and prints
// "done <milliseconds>". The shmbus loop yields to the event loop every 64 pairs, as a real service would.
import { createInterface } from 'node:readline';
import { openSync, closeSync } from 'node:fs';
import { setImmediate as yieldNow } from 'node:timers/promises';
import { Mutex } from '../state/mutex.js';
import { semGet, encodeSemOps, semOpRaw } from '../host/sys/sem.js';
import { flockRaw } from '../host/sys/mq.js';
import { LOCK_EX, LOCK_UN } from '../host/sys/constants.js';

const [kind, name, countText] = process.argv.slice(2);
const n = Number(countText);
const SEM_UNDO = 0x1000;

let run: () => Promise<void> | void;
let close = () => {};
if (kind === 'mutex') {
  const m = await Mutex.open(name!);
  run = async () => {
    for (let i = 0; i < n; i++) {
      await m.lock();
      m.unlock();
      if ((i & 63) === 63) await yieldNow();
    }
  };
  close = () => m.close();
} else if (kind === 'semop') {
  const semid = semGet(Number(name), 1, 0o600);
  const down = encodeSemOps([{ num: 0, op: -1, flags: SEM_UNDO }]);
  const up = encodeSemOps([{ num: 0, op: 1, flags: SEM_UNDO }]);
  run = () => {
    for (let i = 0; i < n; i++) {
      if (semOpRaw(semid, down, 1) !== 0 || semOpRaw(semid, up, 1) !== 0) throw new Error('semop failed');
    }
  };
} else if (kind === 'flock') {
  const fd = openSync(name!, 'r+');
  run = () => {
    for (let i = 0; i < n; i++) {
      if (flockRaw(fd, LOCK_EX) !== 0 || flockRaw(fd, LOCK_UN) !== 0) throw new Error('flock failed');
    }
  };
  close = () => closeSync(fd);
} else {
  throw new Error(`unknown kind ${kind}`);
}
console.log('ready');
const lines = createInterface({ input: process.stdin });
await new Promise<void>((resolve) => lines.once('line', () => resolve()));
const t0 = performance.now();
await run();
console.log(`done ${(performance.now() - t0).toFixed(3)}`);
lines.close();
close();
