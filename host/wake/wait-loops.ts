/**
 * The loops of the wait threads (see thread.ts), run on a dedicated thread (host/thread.ts): one loop of blocking
 * system calls for one wake mechanism, serving
 * every channel of the process parked on it. It never touches a channel itself: it only tells the main thread
 * that something may have changed, and the main thread checks the rings' wake words.
 * A wakeup is therefore a hint: a spurious one costs a look at a few words, and one that arrives while nobody
 * is parked is harmless.
 *
 * Every loop re-checks CTL_STOP after each return from its system call; the main thread sets it and then makes
 * that call return (futex wake on the control word, sem_post, IPC_RMID). The sem and sysvsem threads serve one
 * object after another (thread.ts WaitThread.detach/attach): they also leave their object when CTL_EPOCH moves,
 * say so (`{ left: epoch }`), and sleep until the next object comes.
 */
import { parentPort, receiveMessageOnPort } from 'node:worker_threads';
import { futexWaitv, addressOf, monotonicDeadline } from '../sys/futex.js';
import { semWaitRaw, semWaitBoundedRaw, semTryWait, semOpRaw, semOpBoundedRaw, encodeSemOps, semGetVal } from '../sys/sem.js';
import { Errno } from '../errors.js';
import { FUTEX2_SIZE_U32, FUTEX2_PRIVATE, IPC_NOWAIT } from '../sys/constants.js';
import {
  CTL_STOP, CTL_EPOCH, CTL_NOTIFY, CTL_GEN, CTL_SLEEPING, CTL_SLOTS_USED, SLOT_BASE, SLOT_INTS, SLOT_ARMED, SLOT_FIRED,
  FUTEX_SLOTS, type WaitFamily,
} from './thread.js';
import type { ThreadMessage } from '../thread.js';

/** What a WaitThread hands its thread; `boundMs` bounds each blocking call (host/thread.ts NESTED_WAIT_MS). */
export interface WaitThreadData { kind: WaitFamily; ctl: Int32Array; boundMs: number; memory?: WebAssembly.Memory; sem?: number; semid?: number }

let data: WaitThreadData;
let ctl: Int32Array;
let post: (message: ThreadMessage) => void;

/** One notification in flight at most: the main thread clears CTL_NOTIFY when it looks. */
function notify(): void {
  if (Atomics.compareExchange(ctl, CTL_NOTIFY, 0, 1) === 0) post(0);
}

const stopping = () => Atomics.load(ctl, CTL_STOP) !== 0;

/** The thread must leave the object of `epoch`: told to stop, or moved off it. */
const leaving = (epoch: number) => stopping() || Atomics.load(ctl, CTL_EPOCH) !== epoch;

type WaitObject = { epoch: number } & Partial<WaitThreadData>;

/** The latest object read from the port and not yet served (see nextObject). */
let pending: WaitObject | undefined;

/**
 * The object of the current epoch, sleeping on the epoch word while there is none (an idle thread holds nothing);
 * undefined once the thread must stop. WaitThread.attach posts the object before it moves the epoch, so a thread
 * that sees the new epoch finds its object in the port.
 */
function nextObject(): WaitObject | undefined {
  for (;;) {
    if (stopping()) return undefined;
    const epoch = Atomics.load(ctl, CTL_EPOCH);
    for (let m = receiveMessageOnPort(parentPort!); m !== undefined; m = receiveMessageOnPort(parentPort!)) {
      pending = m.message as WaitObject;
    }
    if (pending?.epoch === epoch) {
      const object = pending;
      pending = undefined;
      return object;
    }
    Atomics.wait(ctl, CTL_EPOCH, epoch);
  }
}

/** Runs `serve` on the first object (from workerData, epoch 0), then on each next one, until told to stop or
 * `serve` fails (false: it reported why). */
function serveObjects(serve: (object: WaitObject) => boolean): void {
  for (let object: WaitObject | undefined = { ...data, epoch: 0 }; object !== undefined; object = nextObject()) {
    if (!serve(object) || stopping()) return;
    post({ left: object.epoch });
  }
}

/** Reports an error the loop cannot get past, and ends the thread (the main thread falls back, see futex.ts). */
function fatal(what: string, errno: number): void {
  post({ error: `${what}: errno ${errno}`, errno });
}

// --- futex ---------------------------------------------------------------------------------------------------------

function futexLoop(): void {
  const memory = data.memory!;
  let words = new Int32Array(memory.buffer);
  const word = (offset: number) => {
    if ((offset >>> 2) >= words.length) words = new Int32Array(memory.buffer);
    return Atomics.load(words, offset >>> 2);
  };
  // Addresses fit in 47 bits: plain numbers, written as two u32 halves (no BigInt on this path).
  const memoryBase = Number(addressOf(new Uint8Array(memory.buffer, 0, 0)));
  const ctlAddress = Number(addressOf(ctl)) + CTL_GEN * 4;
  const list = new BigUint64Array(3 * (FUTEX_SLOTS + 1));
  // struct futex_waitv as six u32: value low, value high (0), address low, address high, flags, reserved (0).
  const entries = new Uint32Array(list.buffer);
  const put = (n: number, value: number, address: number, flags: number) => {
    const at = 6 * n;
    entries[at] = value;
    entries[at + 2] = address % 0x1_0000_0000;
    entries[at + 3] = Math.floor(address / 0x1_0000_0000);
    entries[at + 4] = flags;
  };
  let failures = 0;
  while (!stopping()) {
    const gen = Atomics.load(ctl, CTL_GEN);
    put(0, gen >>> 0, ctlAddress, FUTEX2_SIZE_U32 | FUTEX2_PRIVATE);
    let n = 1;
    let fired = false;
    // Slots past the highest the main thread ever handed out are unused.
    const slots = Math.min(FUTEX_SLOTS, Atomics.load(ctl, CTL_SLOTS_USED));
    for (let i = 0; i < slots; i++) {
      const at = SLOT_BASE + i * SLOT_INTS;
      const state = Atomics.load(ctl, at);
      const offset = Atomics.load(ctl, at + 1);
      let value: number;
      if ((state & 3) === SLOT_ARMED) {
        value = Atomics.load(ctl, at + 2);
        // Re-armed for another word while we read it: take it on the next round.
        if (Atomics.load(ctl, at) !== state) {
          Atomics.store(ctl, at + 3, -1);
          continue;
        }
        if (word(offset) !== value) {
          // Rung (or rung before we got to sleep on it): hand the slot to the main thread.
          if (Atomics.compareExchange(ctl, at, state, (state & ~3) | SLOT_FIRED) === state) fired = true;
          Atomics.store(ctl, at + 3, -1);
          continue;
        }
      } else if (offset >= 0) {
        // Not armed, but its channel is still open and will most likely park on this word again, with the value
        // it holds now. Sleeping on it already lets the main thread arm it without waking us (see futex.ts).
        // A ring never comes for a channel that is not parked, so this costs no wakeup.
        value = word(offset);
      } else {
        Atomics.store(ctl, at + 3, -1);
        continue;
      }
      put(n++, value >>> 0, memoryBase + offset, FUTEX2_SIZE_U32);
      Atomics.store(ctl, at + 4, value);
      Atomics.store(ctl, at + 3, offset);
    }
    if (fired) {
      notify();
      continue;
    }
    // Dekker with the main thread's arm(): it bumps CTL_GEN then reads CTL_SLEEPING; we set CTL_SLEEPING then read
    // CTL_GEN. Either it sees us asleep (and wakes the control word unless we already sleep on its word with its
    // value), or we see the new generation here (and if it changes after this check, futex_waitv finds the control
    // word changed and returns EAGAIN at once).
    Atomics.store(ctl, CTL_SLEEPING, 1);
    if (Atomics.load(ctl, CTL_GEN) !== gen) {
      Atomics.store(ctl, CTL_SLEEPING, 0);
      continue;
    }
    const r = futexWaitv(list, n, data.boundMs > 0 ? monotonicDeadline(data.boundMs) : null);
    Atomics.store(ctl, CTL_SLEEPING, 0);
    if (r.result >= 0 || r.errno === Errno.EAGAIN || r.errno === Errno.EINTR || r.errno === Errno.ETIMEDOUT) {
      failures = 0;
      continue;
    }
    // EFAULT would be a word outside any mapping (never: closed windows are replaced by private pages); ENOSYS
    // and EINVAL a kernel without futex_waitv. Retry a few times in case it was a window being remapped.
    if (++failures > 3) {
      fatal('futex_waitv', r.errno);
      return;
    }
  }
}

// --- POSIX semaphore -----------------------------------------------------------------------------------------------

function semLoop(object: WaitObject): boolean {
  const { sem, epoch } = object as { sem: number; epoch: number };
  while (!leaving(epoch)) {
    const errno = data.boundMs > 0 ? semWaitBoundedRaw(sem, data.boundMs) : semWaitRaw(sem);
    if (leaving(epoch)) break;
    if (errno === 0) {
      // Every post is "look again"; one look covers all that are pending, so take them all first.
      while (semWaitNonBlocking(sem)) { /* drain */ }
      notify();
    } else if (errno !== Errno.EINTR && errno !== Errno.ETIMEDOUT) {
      fatal('sem_wait', errno);
      return false;
    }
  }
  return true;
}

function semWaitNonBlocking(sem: number): boolean {
  try {
    return semTryWait(sem);
  } catch {
    return false;
  }
}

// --- System V semaphore --------------------------------------------------------------------------------------------

function sysvsemLoop(object: WaitObject): boolean {
  const { semid, epoch } = object as { semid: number; epoch: number };
  const take = encodeSemOps([{ num: 0, op: -1, flags: 0 }]);
  const drain = new Uint8Array(6);
  while (!leaving(epoch)) {
    const errno = data.boundMs > 0 ? semOpBoundedRaw(semid, take, 1, data.boundMs) : semOpRaw(semid, take, 1);
    if (leaving(epoch)) break;
    if (errno === 0) {
      let pending = 0;
      try { pending = semGetVal(semid, 0); } catch { /* removed: the next semop says so */ }
      if (pending > 0) semOpRaw(semid, encodeSemOps([{ num: 0, op: -pending, flags: IPC_NOWAIT }], drain), 1);
      notify();
    } else if (errno === Errno.EIDRM || errno === Errno.EINVAL) {
      // The set was removed: by our own process when it stopped using it (it moves the epoch or sets CTL_STOP
      // first, so we left above), else by someone else (ipcrm), which the main thread must hear about.
      fatal('semop', errno);
      return false;
    } else if (errno !== Errno.EINTR && errno !== Errno.EAGAIN) {
      // EAGAIN: the bound ran out (semtimedop).
      fatal('semop', errno);
      return false;
    }
  }
  return true;
}

/** Runs the loop of `input.kind` until the main thread sets CTL_STOP. */
export function run(input: WaitThreadData, postMessage: (message: ThreadMessage) => void): void {
  data = input;
  ctl = input.ctl;
  post = postMessage;
  switch (data.kind) {
    case 'futex': futexLoop(); break;
    case 'sem': serveObjects(semLoop); break;
    case 'sysvsem': serveObjects(sysvsemLoop); break;
  }
}
