/**
 * wake=futex: a parked side sleeps on the ring word its peer bumps before ringing (FUTEX_WAIT semantics, shared
 * futex: keyed by the segment's page, so it works across processes), and the peer rings with FUTEX_WAKE on that
 * word. Nothing is exchanged in the handshake: both sides know the words from the ring layout.
 *
 * Who sleeps. Not the event loop and not a libuv pool thread: one wait thread (thread.ts) sleeps in futex_waitv
 * on the words of every channel of the process parked on a futex, up to 127 of them, plus a private control
 * word. The main thread arms a wait by filling a slot of a shared table and bumping the control word (with a
 * FUTEX_WAKE only if the thread is asleep), so the thread re-reads the table; a thread whose table is full gets
 * a sibling (rarely: 128 channels parked at once). Cancelling is lazy: the slot is freed without waking the
 * thread, which forgets the word the next time it wakes for any reason.
 *
 * No lost wakeup: the ring records the word's value BEFORE announcing the park; the peer bumps the word AFTER it
 * saw the park, then wakes. The thread compares each word with that value before it sleeps (and futex_waitv
 * compares them again, atomically with going to sleep), so a ring that lands anywhere in between is seen.
 * FUTEX_WAKE wakes every waiter of the word: a stale entry in another thread's list must not swallow it.
 */
import { futexWake, futexWaitvErrno, addressOf } from '../sys/futex.js';
import { Errno, SystemError, ErrorCode, type ShmbusError } from '../errors.js';
import { WAKE_DATA, type Bell, type BellContext, type Sleeper, type SleeperContext, type WakeKind, type WakeMechanism } from './mechanism.js';
import { WordSleeper, Poller, statsFor, type WordHub } from './common.js';
import {
  WaitThread, CTL_GEN, CTL_SLEEPING, CTL_SLOTS_USED, SLOT_BASE, SLOT_INTS, SLOT_FREE, SLOT_ARMED, SLOT_FIRED, FUTEX_SLOTS,
} from './thread.js';
import type { Engine } from '../engine.js';

const stats = statsFor('futex');

type Owner = { sleeper: WordSleeper; kind: WakeKind };

/**
 * One wait thread and its slot table. A slot stays the home of one (channel, direction) after its wait ends, so
 * the next park of that channel reuses it: the thread keeps sleeping on the word meanwhile (with the value it
 * holds), and arming it again with that value needs no wakeup of the thread at all, only shared-memory stores.
 */
class Shard {
  readonly thread: WaitThread;
  readonly ctl: Int32Array;
  private readonly controlWord: bigint;
  /** Who uses (or last used) each slot. */
  readonly homes: (Owner | undefined)[] = new Array(FUTEX_SLOTS).fill(undefined);
  armed = 0;
  /** The engine whose memory this shard's thread waits in: a sleeper is armed only in a shard of its engine. */
  readonly engine: Engine;

  constructor(hub: FutexHub, engine: Engine) {
    this.engine = engine;
    this.thread = new WaitThread({
      family: 'futex',
      data: { memory: engine.memory },
      ints: FUTEX_SLOTS * SLOT_INTS,
      onMessage: () => this.collect(),
      kick: () => this.kick(),
      onFailure: (error) => hub.failed(this, error),
    });
    this.ctl = this.thread.ctl;
    for (let slot = 0; slot < FUTEX_SLOTS; slot++) {
      Atomics.store(this.ctl, SLOT_BASE + slot * SLOT_INTS + 1, -1);
      Atomics.store(this.ctl, SLOT_BASE + slot * SLOT_INTS + 3, -1);
    }
    this.controlWord = addressOf(this.ctl) + BigInt(CTL_GEN * 4);
    stats.objects++;
  }

  private state(slot: number): number {
    return Atomics.load(this.ctl, SLOT_BASE + slot * SLOT_INTS) & 3;
  }

  /** A slot for a new home: one nobody uses, else one whose owner is not parked (it loses its home). */
  claim(): number {
    let spare = -1;
    for (let slot = 0; slot < FUTEX_SLOTS; slot++) {
      if (this.homes[slot] === undefined) return slot;
      if (spare < 0 && this.state(slot) === SLOT_FREE) spare = slot;
    }
    if (spare >= 0) {
      const previous = this.homes[spare]!;
      previous.sleeper.slots[previous.kind] = -1;
      previous.sleeper.places[previous.kind] = undefined;
      this.homes[spare] = undefined;
    }
    return spare;
  }

  arm(slot: number, owner: Owner): void {
    const { sleeper, kind } = owner;
    const at = SLOT_BASE + slot * SLOT_INTS;
    const offset = sleeper.offsets[kind]!;
    const value = sleeper.values[kind]! | 0;
    this.homes[slot] = owner;
    if (slot >= Atomics.load(this.ctl, CTL_SLOTS_USED)) Atomics.store(this.ctl, CTL_SLOTS_USED, slot + 1);
    Atomics.store(this.ctl, at + 1, offset);
    Atomics.store(this.ctl, at + 2, value);
    // A new sequence number in the state word: the thread fires a slot only with a compare-exchange on the exact
    // state it read the word for, so a slot re-armed meanwhile is never fired for its previous word.
    Atomics.store(this.ctl, at, ((Atomics.load(this.ctl, at) >>> 2) + 1) << 2 | SLOT_ARMED);
    if (this.armed++ === 0) this.thread.hold();
    Atomics.add(this.ctl, CTL_GEN, 1);
    // SYNC: Dekker with the thread (wait-loops.ts futexLoop): GEN is bumped before SLEEPING is read. A thread
    // that sleeps already on this word with this value needs no wakeup: a ring wakes it, and it then finds the
    // slot armed.
    if (Atomics.load(this.ctl, CTL_SLEEPING) !== 0 &&
      !(Atomics.load(this.ctl, at + 3) === offset && Atomics.load(this.ctl, at + 4) === value)) {
      stats.kicks++;
      this.kick();
    }
  }

  /** The wait ended (rung or cancelled); the slot stays the owner's home. */
  disarm(slot: number): void {
    const at = SLOT_BASE + slot * SLOT_INTS;
    // Only the main thread frees slots; the thread's compare-exchange to FIRED fails once the state changed.
    Atomics.store(this.ctl, at, (Atomics.load(this.ctl, at) & ~3) | SLOT_FREE);
    if (--this.armed === 0) this.thread.release();
  }

  /** The owner closed: the slot has no word any more (the thread drops it the next time it wakes). */
  vacate(slot: number): void {
    Atomics.store(this.ctl, SLOT_BASE + slot * SLOT_INTS + 1, -1);
    this.homes[slot] = undefined;
  }

  /** The thread fired some slots: end those waits. */
  private collect(): void {
    const used = Atomics.load(this.ctl, CTL_SLOTS_USED);
    for (let slot = 0; slot < used; slot++) {
      const owner = this.homes[slot];
      if (owner && this.state(slot) === SLOT_FIRED) owner.sleeper.fire(owner.kind);
    }
  }

  private kick(): void {
    Atomics.add(this.ctl, CTL_GEN, 1);
    futexWake(this.controlWord, false);
  }

  /** Every armed owner, for a fallback after the thread died. */
  owned(): Owner[] {
    return this.homes.filter((o, slot): o is Owner => o !== undefined && this.state(slot) !== SLOT_FREE);
  }
}

class FutexHub implements WordHub {
  private shards: Shard[] = [];
  private sleepers = 0;
  private readonly poller = new Poller();
  private readonly broken = new Set<WordSleeper>();

  add(): void {
    this.sleepers++;
  }

  arm(sleeper: WordSleeper, kind: WakeKind): void {
    if (this.broken.has(sleeper)) {
      this.poller.add(sleeper);
      return;
    }
    let shard = sleeper.places[kind] as Shard | undefined;
    let slot = sleeper.slots[kind]!;
    const engine = sleeper.ctx.engine;
    if (!shard || slot < 0 || !this.shards.includes(shard)) {
      slot = -1;
      for (const s of this.shards) {
        if (s.engine !== engine) continue;
        slot = s.claim();
        if (slot >= 0) { shard = s; break; }
      }
      if (slot < 0) {
        shard = new Shard(this, engine);
        this.shards.push(shard);
        slot = shard.claim();
      }
      sleeper.places[kind] = shard;
      sleeper.slots[kind] = slot;
    }
    shard!.arm(slot, { sleeper, kind });
  }

  disarm(sleeper: WordSleeper, kind: WakeKind): void {
    const shard = sleeper.places[kind] as Shard | undefined;
    if (this.broken.has(sleeper) || !shard || !this.shards.includes(shard)) {
      if (!sleeper.armed) this.poller.remove(sleeper);
      return;
    }
    shard.disarm(sleeper.slots[kind]!);
  }

  closed(sleeper: WordSleeper): void {
    for (const kind of [0, 1] as const) {
      const shard = sleeper.places[kind] as Shard | undefined;
      if (shard && sleeper.slots[kind]! >= 0 && this.shards.includes(shard)) shard.vacate(sleeper.slots[kind]!);
      sleeper.places[kind] = undefined;
      sleeper.slots[kind] = -1;
    }
    this.broken.delete(sleeper);
    if (--this.sleepers > 0) return;
    // No channel left on a futex: the first thread idles for the next channel, asleep on its control word with
    // every slot empty and not holding the process (starting threads over and over costs each time, and leaks
    // koffi's memory: thread.ts `idle`); the others, taken past 127 words, stop.
    const extra = this.shards.splice(1);
    for (const s of extra) void s.thread.stop();
  }

  /** A thread died: its channels are polled from now on (and told to look now). */
  failed(shard: Shard, error: ShmbusError): void {
    process.emitWarning(`shmbus: ${error.message}; channels parked on it are now polled`, { code: 'SHMBUS_WAKE_THREAD' });
    const owners = shard.owned();
    const index = this.shards.indexOf(shard);
    if (index >= 0) this.shards.splice(index, 1);
    for (const { sleeper, kind } of owners) {
      sleeper.slots[kind] = -1;
      sleeper.places[kind] = undefined;
      this.broken.add(sleeper);
      this.poller.add(sleeper);
    }
    for (const { sleeper } of owners) sleeper.checkAll();
  }
}

const hub = new FutexHub();

let checked = false;

/** futex_waitv exists (Linux ≥ 5.16, not refused by a seccomp filter): else the mode is a typed error. */
function checkKernel(): void {
  if (checked) return;
  const errno = futexWaitvErrno();
  if (errno === Errno.ENOSYS || errno === Errno.EPERM) {
    throw new SystemError('futex_waitv', errno, { limit: 'futex_waitv needs Linux 5.16 or later (or is refused by seccomp)' }, ErrorCode.LIMIT);
  }
  checked = true;
}

class FutexBell implements Bell {
  private readonly ctx: BellContext;

  constructor(ctx: BellContext) {
    this.ctx = ctx;
  }

  ring(kind: WakeKind): void {
    // The ring already bumped the word the peer sleeps on (RingEnd.needsWake); wake whoever sleeps on it.
    const end = kind === WAKE_DATA ? this.ctx.tx : this.ctx.rx;
    futexWake(this.ctx.engine.address(end.wakeWordOffset()), true);
    stats.rings++;
  }

  close(): void {}
}

export const futex: WakeMechanism = {
  name: 'futex',
  params() {
    checkKernel();
    return {};
  },
  unreserve() {},
  sleeper(ctx: SleeperContext): Sleeper {
    checkKernel();
    hub.add();
    return new WordSleeper(ctx, hub, stats);
  },
  bell: (ctx) => new FutexBell(ctx),
  // A futex bell wakes words of this channel's own rings; the peer's params name nothing.
  checkPeer() {},
};
