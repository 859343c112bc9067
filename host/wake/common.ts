/**
 * What the kernel wake mechanisms (futex, sem, sysvsem, signal, mq) share.
 *
 * The rung test. When a side parks, the ring records the value of the word the peer bumps before it rings
 * (`RingEnd.waitWord()`: the peer's wake sequence, read before the park was announced). A parked side has been
 * rung exactly when that word differs from the recorded value. So every mechanism reduces to "something may
 * have changed, look at the words": a wakeup that arrives for nobody, twice, or late costs one load, and a ring
 * can only be missed if the kernel object itself loses it, which each mechanism rules out (see their files).
 *
 * Process-wide objects. sem, sysvsem, mq and signal use ONE kernel object per process (a semaphore, a semaphore
 * set, a queue, a thread that takes signals), which every peer of every channel rings. `ObjectMechanism` owns its
 * life: created at the first handshake that needs it, removed when its last channel closes and at process exit.
 * A handshake reserves it (`params()`), the channel then adopts the reservation (`sleeper()`, which finds it by
 * the id it put in the params), so the object cannot be removed between the two even if every other channel
 * closes meanwhile; a handshake that fails gives its reservation back (`unreserve()`), and one nobody gave back
 * (a bug) lapses after RESERVATION_MS.
 *
 * Falling back. A bell whose kernel object refuses a ring (a full queue, a semaphore at its maximum, a signal
 * queue at RLIMIT_SIGPENDING, the receiver's object already gone) writes a doorbell byte on the control socket
 * instead: the parked side always reads that socket (it is how it learns of peer death), so the wakeup arrives.
 */
import type net from 'node:net';
import { ErrorCode, HandshakeError, ShmbusError } from '../errors.js';
import type { PeerCredentials } from '../peer.js';
import { WAKE_DATA, writeDoorbell, type Bell, type BellContext, type Sleeper, type SleeperContext, type WakeKind, type WakeMechanism } from './mechanism.js';

// --- statistics ----------------------------------------------------------------------------------------------------

/** Counters per mechanism, for tests and diagnostics. */
export interface WakeStats {
  /** Waits armed (a side parked on this mechanism). */
  parks: number;
  /** Waits ended because this mechanism reported the ring (not the socket, not a cancel). */
  wakes: number;
  /** Rings sent through this mechanism to a parked peer. */
  rings: number;
  /** Rings that went to the control socket instead, because the kernel object refused them. */
  fallbacks: number;
  /** Kernel objects (or threads) created. */
  objects: number;
  /** System calls the main thread made to tell a wait thread about a new wait (futex). */
  kicks: number;
  /** Wait threads of this mechanism running now: started, loaded (ready) and not yet exited (host/wake/thread.ts). */
  threads: number;
  /** Wait threads of this mechanism ever started: one per mechanism (futex: per 127 parked words) whatever the
   * number of channels opened and closed, since an idle one is kept for the next (host/wake/thread.ts). */
  started: number;
}

const allStats = new Map<string, WakeStats>();

export function statsFor(name: string): WakeStats {
  let s = allStats.get(name);
  if (!s) allStats.set(name, (s = { parks: 0, wakes: 0, rings: 0, fallbacks: 0, objects: 0, kicks: 0, threads: 0, started: 0 }));
  return s;
}

/** A copy of every mechanism's counters. */
export function wakeStats(): Record<string, WakeStats> {
  return Object.fromEntries([...allStats].map(([k, v]) => [k, { ...v }]));
}

/** Rings through the control socket instead (see "Falling back" above). */
export function ringFallback(socket: net.Socket, kind: WakeKind, stats: WakeStats): void {
  stats.fallbacks++;
  writeDoorbell(socket, kind);
}

// --- a sleeper that watches ring words -----------------------------------------------------------------------------

/** Where a sleeper's waits are armed: the futex threads' slot tables, or a process object's parked set. */
export interface WordHub {
  arm(sleeper: WordSleeper, kind: WakeKind): void;
  disarm(sleeper: WordSleeper, kind: WakeKind): void;
  closed(sleeper: WordSleeper): void;
}

export class WordSleeper implements Sleeper {
  readonly ctx: SleeperContext;
  /** Linear-memory offset and value at park of the word each kind waits on; -1: not armed. */
  readonly offsets = [-1, -1];
  readonly values = [0, 0];
  /** For the hub: where each kind is armed (the futex thread and slot). */
  readonly slots: number[] = [-1, -1];
  readonly places: unknown[] = [undefined, undefined];
  /** The hub's own record of this sleeper. */
  tag: unknown;
  private readonly hub: WordHub;
  private readonly stats: WakeStats;
  private closedFlag = false;

  constructor(ctx: SleeperContext, hub: WordHub, stats: WakeStats) {
    this.ctx = ctx;
    this.hub = hub;
    this.stats = stats;
  }

  wait(kind: WakeKind): void {
    if (this.closedFlag) return;
    const { offset, value } = (kind === WAKE_DATA ? this.ctx.rx : this.ctx.tx).waitWord();
    if (this.offsets[kind]! >= 0) this.hub.disarm(this, kind);
    this.offsets[kind] = offset;
    this.values[kind] = value;
    this.stats.parks++;
    this.hub.arm(this, kind);
    // Rung between the park and now? The hub would notice too, one thread hop later.
    this.check(kind);
  }

  cancel(kind: WakeKind): void {
    if (this.offsets[kind]! < 0) return;
    this.offsets[kind] = -1;
    this.hub.disarm(this, kind);
  }

  get armed(): boolean {
    return this.offsets[0]! >= 0 || this.offsets[1]! >= 0;
  }

  /** Whether the word `kind` waits on has moved since the park. */
  rung(kind: WakeKind): boolean {
    const offset = this.offsets[kind]!;
    return offset >= 0 && this.ctx.engine.u32[offset >>> 2] !== this.values[kind];
  }

  /** Ends the wait for `kind` if its word moved. */
  check(kind: WakeKind): boolean {
    if (!this.rung(kind)) return false;
    this.fire(kind);
    return true;
  }

  checkAll(): void {
    this.check(WAKE_DATA);
    this.check(1);
  }

  /** Ends the wait for `kind` (when the hub knows it was rung). */
  fire(kind: WakeKind): void {
    if (this.offsets[kind]! < 0) return;
    this.offsets[kind] = -1;
    this.hub.disarm(this, kind);
    this.stats.wakes++;
    this.ctx.onWake(kind);
  }

  close(): void {
    if (this.closedFlag) return;
    this.cancel(0);
    this.cancel(1);
    this.closedFlag = true;
    this.hub.closed(this);
  }
}

// --- polling, the last resort --------------------------------------------------------------------------------------

/**
 * Checks a set of sleepers every millisecond while any is armed. Used only when a mechanism's thread died
 * unexpectedly: slower and not free, but a parked channel still wakes up instead of hanging.
 */
export class Poller {
  private readonly sleepers = new Set<WordSleeper>();
  private timer: NodeJS.Timeout | undefined;

  add(s: WordSleeper): void {
    this.sleepers.add(s);
    this.timer ??= setInterval(() => {
      for (const x of [...this.sleepers]) x.checkAll();
    }, 1);
  }

  remove(s: WordSleeper): void {
    this.sleepers.delete(s);
    if (this.sleepers.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }
}

// --- process-wide kernel objects -----------------------------------------------------------------------------------

/** How long a handshake's reservation of the process object lasts if no channel adopts it. */
const RESERVATION_MS = 60_000;

/** One incarnation of a mechanism's process-wide object (semaphore, set, queue, signal thread). */
export interface ProcessObject {
  /** What a peer needs to ring it. */
  params(): Record<string, unknown>;
  /** Some channel is parked on it (first one): keep the process alive. */
  hold(): void;
  /** No channel is parked on it any more. */
  release(): void;
  /** Removes it (no channel uses it any more). May finish asynchronously (a thread to stop first). */
  destroy(): void;
}

/** A process object with its users: reservations plus adopted sleepers. */
export class Incarnation implements WordHub {
  readonly gen: number;
  /** Set right after construction (the object's callbacks need the incarnation). */
  object!: ProcessObject;
  readonly sleepers = new Map<number, WordSleeper>();
  readonly parked = new Set<WordSleeper>();
  users = 0;
  /** Set when its thread died: waits are then polled (see Poller). */
  broken = false;
  private readonly poller = new Poller();
  private readonly owner: ObjectMechanism;

  constructor(owner: ObjectMechanism, gen: number) {
    this.owner = owner;
    this.gen = gen;
  }

  arm(s: WordSleeper): void {
    if (this.parked.has(s)) return;
    this.parked.add(s);
    if (this.broken) this.poller.add(s);
    else if (this.parked.size === 1) this.object.hold();
  }

  disarm(s: WordSleeper): void {
    if (s.armed || !this.parked.delete(s)) return;
    this.poller.remove(s);
    if (this.parked.size === 0 && !this.broken) this.object.release();
  }

  closed(s: WordSleeper): void {
    this.sleepers.delete(s.tag as number);
    this.owner.unuse(this);
  }

  /** The object was rung: look at every parked channel. */
  checkAll(): void {
    for (const s of [...this.parked]) s.checkAll();
  }

  /** A ring that names its channel (id) and direction (kind); unknown ids make everyone look. */
  checkOne(id: number, kind: WakeKind): void {
    const s = this.sleepers.get(id);
    if (s) s.check(kind);
    else this.checkAll();
  }

  /** The object's thread died: wake everyone (they re-check and re-park), and poll from now on. */
  fail(error: ShmbusError): void {
    if (this.broken) return;
    this.broken = true;
    process.emitWarning(`shmbus: ${error.message}; channels parked on it are now polled`, { code: 'SHMBUS_WAKE_THREAD' });
    if (this.parked.size > 0) this.object.release();
    for (const s of this.parked) this.poller.add(s);
    this.owner.retire(this);
    this.checkAll();
  }
}

let nextId = 1;

/** A mechanism built on one process-wide kernel object (see the top of this file). */
export abstract class ObjectMechanism implements WakeMechanism {
  abstract readonly name: string;
  readonly stats: WakeStats;
  private current: Incarnation | undefined;
  private gens = 0;
  private readonly reservations = new Map<number, { incarnation: Incarnation; timer: NodeJS.Timeout }>();

  constructor(name: string) {
    this.stats = statsFor(name);
  }

  /** Creates the object; `gen` tells incarnations apart (names include it). */
  protected abstract create(gen: number, incarnation: Incarnation): ProcessObject;
  abstract bell(ctx: BellContext): Bell;
  abstract checkPeer(params: Record<string, unknown>, peer: PeerCredentials | undefined): void;

  params(): Record<string, unknown> {
    const incarnation = this.current ?? this.open();
    const id = nextId++ & 0x3fffffff;
    incarnation.users++;
    const timer = setTimeout(() => {
      this.reservations.delete(id);
      this.unuse(incarnation);
    }, RESERVATION_MS);
    timer.unref();
    this.reservations.set(id, { incarnation, timer });
    return { ...incarnation.object.params(), gen: incarnation.gen, id };
  }

  unreserve(params: Record<string, unknown>): void {
    const id = Number(params.id);
    const reserved = this.reservations.get(id);
    if (reserved === undefined) return;
    clearTimeout(reserved.timer);
    this.reservations.delete(id);
    this.unuse(reserved.incarnation);
  }

  sleeper(ctx: SleeperContext): Sleeper {
    const params = ctx.params ?? {};
    const id = Number(params.id);
    const reserved = this.reservations.get(id);
    let incarnation: Incarnation;
    if (reserved) {
      clearTimeout(reserved.timer);
      this.reservations.delete(id);
      incarnation = reserved.incarnation;
    } else if (this.current && this.current.gen === params.gen) {
      // The reservation lapsed (a very slow handshake) but the object it named is still there.
      incarnation = this.current;
      incarnation.users++;
    } else {
      throw new HandshakeError(`the ${this.name} wake object this channel was opened with no longer exists`, { details: { id, gen: params.gen } });
    }
    const s = new WordSleeper(ctx, incarnation, this.stats);
    s.tag = id;
    incarnation.sleepers.set(id, s);
    return s;
  }

  private open(): Incarnation {
    const gen = ++this.gens;
    const incarnation = new Incarnation(this, gen);
    incarnation.object = this.create(gen, incarnation);
    this.stats.objects++;
    this.current = incarnation;
    return incarnation;
  }

  /** @internal a user (reservation or sleeper) is done with `incarnation`. */
  unuse(incarnation: Incarnation): void {
    if (--incarnation.users > 0) return;
    this.retire(incarnation);
    incarnation.object.destroy();
  }

  /** @internal no new channel may use `incarnation` (it is going away, or broken). */
  retire(incarnation: Incarnation): void {
    if (this.current === incarnation) this.current = undefined;
  }
}

/** Reads a field of a peer's params, or fails the handshake with a typed error. */
export function param<T>(params: Record<string, unknown>, key: string, check: (v: unknown) => v is T, mechanism: string): T {
  const v = params[key];
  if (!check(v)) throw new HandshakeError(`the peer's ${mechanism} wake parameters are invalid`, { details: { [key]: JSON.stringify(v) ?? 'undefined' } });
  return v;
}

export const isInt = (v: unknown): v is number => Number.isSafeInteger(v);

/**
 * The peer's kernel-verified credentials, or a refusal: a mechanism that acts on an object the peer names must
 * know who the peer is (fail closed).
 */
export function requirePeer(peer: PeerCredentials | undefined, mechanism: string): PeerCredentials {
  if (peer === undefined) {
    throw new ShmbusError(ErrorCode.PERMISSION_DENIED, `the peer's credentials are unknown, so its ${mechanism} wake object cannot be verified`, { details: { wake: mechanism } });
  }
  return peer;
}

/** Names the sem and mq mechanisms create: /shmbus-wake.<pid>.<n>. */
export const WAKE_OBJECT_NAME = /^\/shmbus-wake\.([1-9]\d{0,9})\.(\d{1,10})$/;

/**
 * The peer's `key` param when it is a name this project creates for the peer's own pid
 * (`/shmbus-wake.<peer pid>.<n>`); a name of another form is a bad handshake, one of another pid is refused.
 */
export function peerObjectName(params: Record<string, unknown>, key: string, mechanism: string, peer: PeerCredentials): string {
  const name = param(params, key, isString, mechanism);
  const m = WAKE_OBJECT_NAME.exec(name);
  if (!m) throw new HandshakeError(`the peer named a ${mechanism} wake object that is not a shmbus one`, { details: { [key]: name } });
  if (Number(m[1]) !== peer.pid) {
    throw new ShmbusError(ErrorCode.PERMISSION_DENIED, `the peer named a ${mechanism} wake object of another process`, { details: { [key]: name, peerPid: peer.pid } });
  }
  return name;
}
export const isString = (v: unknown): v is string => typeof v === 'string';

export { ErrorCode, ShmbusError };
