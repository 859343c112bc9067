/**
 * loadPlugin: runs an AssemblyScript plugin (docs/plugins.md) in a sandbox the host controls and talks to it
 * through rings in a sealed memfd segment mapped both into this process's engine and over the plugin's own
 * memory. Message bytes never travel through postMessage: the runner's thread only rings a doorbell.
 *
 * Containment. Each instance runs on a runner of its own (plugins/runner-start.ts). A request that outlives its
 * timeout, a trap, memory growth past `memoryLimit` or a corrupt ring ends that instance: its runner is
 * terminated (Worker.terminate interrupts wasm, even an endless loop), every request in flight on it fails with a
 * typed error, and a fresh instance replaces it. The plugin's state in that instance is lost.
 */
import { EventEmitter } from 'node:events';
import { availableParallelism } from 'node:os';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import {
  CHANNEL_RING_COUNT, GUEST_RING_IN, GUEST_RING_OUT, GUEST_RECORD_ENV, GUEST_RECORD_LOG, GUEST_RECORD_PUBLISH, RECORD_MSGPACK,
  RECORD_REPLY, RECORD_REPLY_ERROR, RECORD_REQUEST, RING_TAIL_OFFSET, WASM_PAGE_SIZE, BATCH_ENTRY_SIZE, segmentBytes, ringOffset,
  maxPayload,
} from '../assembly/layout.js';
import { getEngine, type Engine } from '../host/engine.js';
import {
  BadArgumentError, ClosedError, CorruptError, ErrorCode, MessageTooLargeError, PeerDeadError, QueueFullError,
  ShmbusError, TimeoutError, type ErrorCodeValue,
} from '../host/errors.js';
import { DEFAULT_DECODE_LIMITS, decodeMsgpackAt, plainPackr, plainUnpackr } from '../host/codec.js';
import { encodePlain } from '../host/pack.js';
import { NOT_DECODED, plainRecordDecoder } from '../host/unpack.js';
import { Region } from '../host/region.js';
import { COUNTING, RingEnd } from '../host/ring.js';
import { formatSegment } from '../host/segment.js';
import { parseSize } from '../host/url.js';
import { startRunner, type Isolation, type RunnerHandle } from './runner-start.js';
import type { RunnerReport } from './runner.js';
import { memoryImportLimits } from './module.js';

/** Options of `loadPlugin`. */
export interface PluginOptions {
  /** Where each instance runs: a worker thread of this process (default) or a child process. */
  isolation?: Isolation;
  /** The most memory one instance may have (bytes or a size like '64MiB'): its memory's `maximum`. Default 64 MiB. */
  memoryLimit?: number | string;
  /** Default timeout of `request` in ms (0: none). An instance that overruns it is terminated and replaced. Default 5000. */
  timeout?: number;
  /** Topics the plugin may publish to. Anything else is refused ('refused' event, ERR_SHMBUS_FORBIDDEN). */
  allow?: readonly string[];
  /** Configuration handed to each instance: the guest reads it with `env(name)` (the first record on its ring IN). */
  env?: Record<string, string>;
  /** Instances behind this Plugin; requests go to the one with the fewest in flight. Default 1. */
  instances?: number;
  /** Each ring's capacity in bytes (a power of two); the largest message is half of it. Default 4 MiB. */
  ringCapacity?: number;
  /** Messages waiting for room in the instances' rings before `send` throws ERR_SHMBUS_QUEUE_FULL. Default 1024. */
  maxQueued?: number;
  /** The most polls of an idle ring before a runner sleeps (about 5-10 ns each; self-tuned between spin/4 and spin).
   * Default 10000; 0 where this process may use a single core (a spinning runner would only keep the host off it). */
  spin?: number;
  /**
   * How long the host waits on its event loop for the reply to a lone request, instead of
   * waiting for the runner's doorbell (a wakeup of the event loop costs tens of µs, the plugin's echo one or two):
   * 'auto' (default) tunes a budget between 1 and 50 µs per instance: 8 times the average wait of the spins that
   * caught their reply; halved by a miss, and after misses in a row lone requests skip the wait 1, 2, 4, … 256
   * times; a reply that came soon after a miss raises it. A wait that ends (at the budget, or after 8 µs) while the
   * runner has not polled since the request (not on a core) takes the doorbell and leaves the budget alone. Off on a machine with a
   * single core. A number is a fixed budget in µs; 0 never waits.
   */
  hostSpin?: number | 'auto';
  /** ms an instance may take to start (instantiate, run its start function, attach). Default 30000. */
  startTimeout?: number;
}

/** Options of one request. */
export interface PluginRequestOptions {
  /** ms; overrides the plugin's default. */
  timeout?: number;
  signal?: AbortSignal;
}

/** A message the plugin published on a topic it was granted. */
export interface Publication { topic: string; value: unknown }

const DEFAULT_MEMORY_LIMIT = 64 << 20;
const DEFAULT_RING_CAPACITY = 4 << 20;
/** The only imports a plugin gets, and their kinds. */
const GRANTED_IMPORTS = new Map<string, string>([['env.memory', 'memory'], ['env.abort', 'function']]);
const MAX_PAGES = 65536;
/** Messages from the plugin kept for `for await` before the plugin is made to wait. */
const MAX_INBOX = 1024;

/** Plain msgpack (no record structures) both ways: the plugin codec (assembly/guest) reads and writes nothing else. */
const plainReader = plainRecordDecoder(DEFAULT_DECODE_LIMITS);

/** A copy of an encoded record that waits (encodePlain's bytes are overwritten by the next encode). */
function keep(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes);
}

/** Bounds of the self-tuned host spin (hostSpin 'auto'), in µs. */
const HOST_SPIN_MIN_US = 1;
const HOST_SPIN_MAX_US = 50;
const HOST_SPIN_START_US = 20;
/** 'auto': after consecutive misses, lone requests skip the spin 1, 2, 4, … up to this many times before trying again. */
const HOST_SPIN_MAX_SKIP = 256;
/** µs within which an awake runner polls after a request (it does in well under one; a short interruption of its
 * core is waited out), and one the request woke. The wait asks at the budget's end if that comes sooner. */
const AWAKE_PROBE_US = 8;
const WOKE_PROBE_US = 30;
/** Polls of ring OUT's tail between clock reads in a lone request's spin (a power of two; a poll takes ~10 ns). */
const CLOCK_POLLS = 32;
/** Polls of an idle ring before a runner sleeps: tens of µs, longer than the host takes between two calls. */
const DEFAULT_RUNNER_SPIN = 10_000;

/**
 * What the host's wait for replies did, counted only with SHMBUS_COUNTERS=1 (see host/ring.ts): `spins` (lone
 * requests it waited for), `hits` (replies it caught), `skipped` (lone requests that did not wait after misses),
 * `bells` (runner doorbells this event loop took), `wakes` (requests that had to wake a sleeping runner),
 * `away` (spins that gave up because the runner had not polled since the request), `waitedNs` and `polls` (the time the caught replies took, and the polls of ring OUT it took to see them).
 */
export const pluginPerf = { spins: 0, hits: 0, skipped: 0, bells: 0, wakes: 0, waitedNs: 0, polls: 0, away: 0 };

/** A promise's resolving functions, taken by one executor shared by every request (no closure per request). */
const captured = { resolve: undefined as unknown as (value: unknown) => void, reject: undefined as unknown as (error: Error) => void };
function capture(resolve: (value: unknown) => void, reject: (error: Error) => void): void {
  captured.resolve = resolve;
  captured.reject = reject;
}
/** What spinSoon's task hangs on (a reaction on a settled promise runs as a microtask). */
const SETTLED = Promise.resolve();

/** One request in flight. A class, not closures: it is made once per request on the hot path. */
class Pending {
  instance: Instance | undefined = undefined;
  resolve!: (value: unknown) => void;
  reject!: (error: Error) => void;
  /** performance.now() past which the request times out (Infinity: never); see Plugin.armTimer. */
  deadline = Infinity;
  timeout = 0;
  signal: AbortSignal | undefined = undefined;
  onAbort: (() => void) | undefined = undefined;
  /** Settled (replied, failed, timed out, aborted). */
  done = false;
  constructor(readonly id: number) {}
}

/**
 * An instance's requests in flight by id: open addressing (linear probing, deletion by backward shift) in an array
 * at most half full. A Map here allocated on nearly every request (a table of one entry being set and deleted is
 * rehashed: measured 152 of the 1041 bytes a lone echo request allocated). @internal exported for its test.
 */
export class PendingTable {
  private slots: (Pending | undefined)[] = new Array<Pending | undefined>(16).fill(undefined);
  private mask = 15;
  size = 0;

  /** `id` comes from the plugin's reply: any number (probing ends at an empty slot, which there always is). */
  get(id: number): Pending | undefined {
    const slots = this.slots;
    for (let i = id & this.mask; ; i = (i + 1) & this.mask) {
      const p = slots[i];
      if (p === undefined || p.id === id) return p;
    }
  }

  /** Adds `p` (its id is not in the table: ids are unique among requests in flight). */
  set(p: Pending): void {
    if ((this.size + 1) * 2 > this.slots.length) this.grow();
    this.insert(p);
    this.size++;
  }

  delete(id: number): void {
    const slots = this.slots;
    const mask = this.mask;
    let i = id & mask;
    for (; ; i = (i + 1) & mask) {
      const p = slots[i];
      if (p === undefined) return;
      if (p.id === id) break;
    }
    slots[i] = undefined;
    this.size--;
    // Backward shift: a later entry of the same run moves into the hole unless its home slot lies after the hole.
    for (let j = (i + 1) & mask; ; j = (j + 1) & mask) {
      const q = slots[j];
      if (q === undefined) return;
      const home = q.id & mask;
      if (i <= j ? home > i && home <= j : home > i || home <= j) continue;
      slots[i] = q;
      slots[j] = undefined;
      i = j;
    }
  }

  values(): Pending[] {
    const all: Pending[] = [];
    for (const p of this.slots) if (p !== undefined) all.push(p);
    return all;
  }

  private insert(p: Pending): void {
    let i = p.id & this.mask;
    while (this.slots[i] !== undefined) i = (i + 1) & this.mask;
    this.slots[i] = p;
  }

  private grow(): void {
    const old = this.slots;
    this.slots = new Array<Pending | undefined>(old.length * 2).fill(undefined);
    this.mask = this.slots.length - 1;
    for (const p of old) if (p !== undefined) this.insert(p);
  }
}

/** Internal: one running instance and its segment. */
class Instance {
  readonly engine: Engine = getEngine();
  readonly region: Region;
  readonly window: number;
  readonly tx: RingEnd;
  readonly rx: RingEnd;
  /** engine.u32 index of the low word of ring OUT's tail (the lone request's spin polls it). */
  private readonly rxTail: number = 0;
  readonly inFlight = new PendingTable();
  runner: RunnerHandle | undefined;
  ready = false;
  dead = false;
  private parkedRx = false;
  private parkedTx = false;
  private readonly queue: { type: number; bytes: Uint8Array }[] = [];
  private readonly started: Promise<void>;
  private startTimer: NodeJS.Timeout | undefined;
  private startResolve!: () => void;
  private startReject!: (e: Error) => void;

  constructor(readonly plugin: Plugin, readonly bytes: number, readonly capacity: number) {
    this.spinUs = plugin.hostSpin;
    this.region = Region.createMemfd(`shmbus-plugin-${process.pid}`, { size: bytes });
    let window = -1;
    try {
      window = this.engine.allocWindow(bytes);
      this.region.mapAt(this.engine.address(window));
      formatSegment(this.engine, window, CHANNEL_RING_COUNT, capacity, process.pid, 0n);
      this.tx = new RingEnd(this.engine, window + ringOffset(GUEST_RING_IN, capacity), capacity, 'producer');
      this.rx = new RingEnd(this.engine, window + ringOffset(GUEST_RING_OUT, capacity), capacity, 'consumer');
      this.rxTail = (window + ringOffset(GUEST_RING_OUT, capacity) + RING_TAIL_OFFSET) >>> 2;
      // The plugin's configuration goes first: it is read before any request (loadPlugin checked that it fits).
      if (plugin.envBytes && !this.put(GUEST_RECORD_ENV, plugin.envBytes)) throw new BadArgumentError('env does not fit the ring', {});
    } catch (error) {
      if (window >= 0) this.releaseWindow(window);
      this.region.close();
      throw error;
    }
    this.window = window;
    this.started = new Promise((resolve, reject) => { this.startResolve = resolve; this.startReject = reject; });
    this.started.catch(() => {});
  }

  private releaseWindow(window: number): void {
    try { this.region.unmapAt(this.engine.address(window)); } catch { /* never mapped */ }
    this.engine.freeWindow(window, this.bytes);
  }

  start(): Promise<void> {
    const p = this.plugin;
    // A start function that never returns (top-level code in a loop) holds instantiation: bounded here.
    this.startTimer = setTimeout(() => this.fail(new TimeoutError('plugin did not start in time', { startTimeout: p.startTimeout })), p.startTimeout);
    this.runner = startRunner(p.isolation, {
      module: p.module, fd: this.region.fd, bytes: this.bytes, maximumPages: p.maximumPages,
      initialPages: p.initialPages, spin: p.spin,
    }, p.wasm, {
      onBell: () => this.onBell(),
      onReport: (r) => this.onReport(r),
      onExit: (error) => {
        if (!this.dead) this.fail(new PeerDeadError('plugin runner exited', { cause: String(error?.message ?? 'exit') }));
      },
    });
    return this.started;
  }

  private onReport(r: RunnerReport): void {
    clearTimeout(this.startTimer);
    if (r.type === 'ready') {
      this.ready = true;
      this.startResolve();
      this.drain();
      this.plugin.dispatch();
      return;
    }
    this.fail(reportError(r));
  }

  private onBell(): void {
    if (COUNTING) pluginPerf.bells++;
    if (this.dead) return;
    if (this.missedAt !== 0) this.learnFromMiss();
    if (this.parkedRx) { this.parkedRx = false; this.rx.unpark(); }
    if (this.parkedTx) { this.parkedTx = false; this.tx.unpark(); }
    // Room in ring IN is handed out even while the reader of ring OUT lags (drain may stop early for it).
    if (this.queue.length > 0) this.flush();
    this.drain(true);
  }

  /** Whether dispatch may hand this instance a record: ready, and nothing waits for room in its ring IN. */
  get canTake(): boolean {
    return this.ready && !this.dead && this.queue.length === 0;
  }

  /** Appends one record to ring IN; when it has no room the record waits here (at most one: see canTake).
   * True when it went into the ring and the runner was awake. */
  write(type: number, bytes: Uint8Array): boolean {
    if (this.queue.length === 0 && this.put(type, bytes)) {
      if (this.runner!.kick()) return true;
      if (COUNTING) pluginPerf.wakes++;
      this.woke = true;
      return false;
    }
    this.queue.push({ type, bytes: keep(bytes) });
    this.parkTx();
    return false;
  }

  /** Host spin budget in µs (see PluginOptions.hostSpin); tuned when the plugin's hostSpin is 'auto'. */
  spinUs: number;
  /** performance.now() when a lone request's spin gave up (0: none): a reply soon after teaches the budget. */
  private missedAt = 0;
  /** 'auto': lone requests left that do not spin, and how many the next miss makes skip (see HOST_SPIN_MAX_SKIP). */
  private skip = 0;
  private skipNext = 1;
  /** 'auto': the average wait (µs) of the spins that caught their reply. */
  private waitUs = 0;

  private spinQueued = false;
  /** The lone request the queued spin is for, when it has a timeout: its deadline is set only if the spin does not
   * catch its reply (a reply caught at once costs no clock read for it). */
  spinFor: Pending | undefined = undefined;
  private readonly spinTask = (): void => {
    this.spinQueued = false;
    const woke = this.woke;
    this.woke = false;
    const p = this.spinFor;
    this.spinFor = undefined;
    if (this.dead) return;
    if (this.inFlight.size === 1) this.spinForReply(woke);
    else this.drain(); // parks ring OUT again: its replies ring the doorbell
    if (p !== undefined && !p.done) this.plugin.startClock(p);
  };
  /** A request written since spinSoon found the runner asleep (and woke it). */
  private woke = false;

  /**
   * Called before a lone request is written: unless the spin is off or skipped, unparks ring OUT (so the runner's
   * reply, which may come before the spin starts, rings no doorbell: a wasted wakeup of this event loop) and spins
   * for the reply once the current burst of JavaScript is done (a microtask). Code that sends several requests in
   * a row — 16 callers each sending their next one as their reply comes — has sent them all by then, and a request
   * that is no longer alone waits for the doorbell instead of holding the others back.
   */
  spinSoon(): boolean {
    if (this.spinQueued || this.spinUs <= 0) return false;
    if (this.skip > 0) { this.skip--; if (COUNTING) pluginPerf.skipped++; return false; }
    if (this.parkedRx) { this.parkedRx = false; this.rx.unpark(); }
    this.spinQueued = true;
    // A reaction on a settled promise, not queueMicrotask: that one makes an AsyncResource and a bound function
    // per call (measured: the most allocation of a lone request after the request's own promise).
    void SETTLED.then(this.spinTask);
    return true;
  }

  /**
   * Waits here, on the event loop, for up to the spin budget for records on ring OUT, and reads them: a lone
   * request is answered within microseconds, far sooner than the runner's doorbell (a postMessage or a socket
   * byte) would wake the event loop. Ring OUT is unparked meanwhile (spinSoon), so the runner does not ring for a
   * reply the host is already looking for. Costs the host that much CPU when the plugin is slower.
   */
  spinForReply(woke: boolean): void {
    const budget = this.spinUs;
    if (COUNTING) pluginPerf.spins++;
    if (this.parkedRx) { this.parkedRx = false; this.rx.unpark(); }
    // Polled below is the low word of ring OUT's tail, not ring_pending (a call into the engine per poll): with
    // nothing unread now, any change of it is a commit by the plugin (or garbage, which drain then reports).
    // Nothing here grows the engine's memory, so the view stays valid through the loop.
    const u32 = this.engine.u32;
    const tail = this.rxTail;
    const before = this.rx.pending() > 0 ? -1 : Atomics.load(u32, tail);
    const start = performance.now();
    // By `probe` (the budget's end, or AWAKE_PROBE_US if sooner) the runner must have polled since the request
    // (RunnerHandle.seen), or it is not on a core now (a busy machine, or still waking up): then the doorbell,
    // without a word to the budget, which is about how long a running plugin takes, and without skipping later
    // waits. A runner this request had to wake gets longer, and the budget after that.
    let probe = start + (woke ? WOKE_PROBE_US : Math.min(budget, AWAKE_PROBE_US)) / 1000;
    const deadline = (woke ? probe : start) + budget / 1000;
    let away = false;
    for (let i = 1; ; i++) {
      // SYNC: pairs with the plugin's atomic store of the tail in its commit (drain reads the record after it).
      if (Atomics.load(u32, tail) !== before) {
        const waitedUs = (performance.now() - start) * 1000;
        if (COUNTING) { pluginPerf.hits++; pluginPerf.waitedNs += Math.round(waitedUs * 1000); pluginPerf.polls += i; }
        if (this.plugin.spinAuto && !woke) {
          // A few times the usual wait: a miss then costs little more than a hit takes.
          this.waitUs += (waitedUs - this.waitUs) / 8;
          this.spinUs = Math.min(HOST_SPIN_MAX_US, Math.max(HOST_SPIN_MIN_US * 4, 8 * this.waitUs));
          this.skipNext = 1;
        }
        this.drain();
        return;
      }
      if ((i & (CLOCK_POLLS - 1)) === 0) {
        const now = performance.now();
        if (now > probe) {
          if (!this.runner!.seen()) { away = true; break; }
          probe = Infinity;
        }
        if (now > deadline) break;
      }
    }
    if (COUNTING && away) pluginPerf.away++;
    if (this.plugin.spinAuto && !away && !woke) {
      // Misses in a row mean the runner is not getting a core (a busy machine, or both threads on one core,
      // where spinning only delays the reply): spin ever more rarely until a spin catches a reply again.
      if (this.spinUs > HOST_SPIN_MIN_US) this.spinUs = Math.max(HOST_SPIN_MIN_US, this.spinUs / 2);
      this.skip = this.skipNext;
      this.skipNext = Math.min(HOST_SPIN_MAX_SKIP, this.skipNext * 2);
      this.missedAt = performance.now();
    }
    this.drain(); // parks ring OUT again (or reads what came just now)
  }

  /** 'auto': a reply that came soon after the spin gave up would have been caught by spinning about twice as long. */
  private learnFromMiss(): void {
    const waitedUs = (performance.now() - this.missedAt) * 1000;
    this.missedAt = 0;
    if (waitedUs < HOST_SPIN_MAX_US) this.spinUs = Math.min(HOST_SPIN_MAX_US, Math.max(this.spinUs, 2 * waitedUs));
  }

  private put(type: number, bytes: Uint8Array): boolean {
    const at = this.tx.claim(bytes.length, type);
    if (at === 0) return false;
    this.engine.u8.set(bytes, at);
    this.tx.commit(bytes.length);
    return true;
  }

  private parkTx(): void {
    if (this.parkedTx) return;
    if (this.tx.park(this.tx.needed())) this.parkedTx = true;
    else queueMicrotask(() => this.flush());
  }

  private flush(): void {
    if (this.dead) return;
    let moved = false;
    while (this.queue.length > 0 && this.put(this.queue[0]!.type, this.queue[0]!.bytes)) { this.queue.shift(); moved = true; }
    if (moved) this.runner!.kick();
    if (this.queue.length > 0) this.parkTx();
    else if (moved) this.plugin.dispatch();
  }

  /**
   * Reads every record of ring OUT, then parks the consumer (the runner rings when the plugin commits more).
   * `rung`: the runner rang (its replies waited for this event loop's turn): after reading, an awake runner is
   * nudged to spin anew, so that it is still awake when the caller sends its next requests. A sleeping one is not
   * woken here: that took its SLEEPING flag, the next request's kick then took the runner for awake and the host
   * spun for a reply from a thread still waking up (measured: no spin caught its reply on a busy machine). After
   * the host's own spin the runner is still spinning: it is left alone.
   */
  drain(rung = false): void {
    if (this.dead || !this.ready) return;
    try {
      for (;;) {
        // Back-pressure: while the host's reader lags, the plugin's records wait in its ring and outbox.
        if (this.plugin.inboxFull(this)) return;
        const n = this.rx.read();
        if (n === 0) {
          if (this.queue.length > 0) this.flush();
          if (this.rx.park()) { this.parkedRx = true; return; }
          continue;
        }
        const u32 = this.engine.u32;
        const base = this.rx.batch >>> 2;
        for (let i = 0; i < n; i++) {
          const e = base + i * (BATCH_ENTRY_SIZE >>> 2);
          this.handle(u32[e + 2]!, u32[e]!, u32[e + 1]!);
          if (this.dead) return;
        }
        this.rx.release();
        if (rung) this.runner!.nudge();
        this.runner!.released();
      }
    } catch (error) {
      this.fail(error instanceof ShmbusError ? error : new CorruptError('plugin ring read failed', { cause: String(error) }));
    }
  }

  /** The msgpack value of the plugin's record at `[start, end)` of our memory: read in place (host/unpack.ts), or
   * else copied, checked and decoded by msgpackr, which names what is wrong with it. */
  private decode(start: number, end: number): unknown {
    const value = plainReader.decode(this.engine.bytes, start, end);
    return value !== NOT_DECODED ? value : decodeMsgpackAt(plainUnpackr, this.engine.u8, start, end);
  }

  private handle(type: number, offset: number, length: number): void {
    if (type === RECORD_REPLY || type === RECORD_REPLY_ERROR) {
      const reply = this.decode(offset, offset + length);
      if (!Array.isArray(reply) || reply.length !== 2 || typeof reply[0] !== 'number') {
        throw new CorruptError('plugin reply is not [id, value]', { type });
      }
      const id = reply[0] as number;
      const value: unknown = reply[1];
      const pending = this.inFlight.get(id);
      if (!pending || !this.plugin.settle(pending)) return; // timed out or aborted meanwhile
      if (type === RECORD_REPLY) pending.resolve(value);
      else pending.reject(remoteError(value));
    } else if (type === RECORD_MSGPACK) {
      this.plugin.deliver(this.decode(offset, offset + length));
    } else if (type === GUEST_RECORD_PUBLISH) {
      const pub = this.decode(offset, offset + length);
      if (!Array.isArray(pub) || pub.length !== 2 || typeof pub[0] !== 'string') throw new CorruptError('plugin publication is not [topic, value]');
      this.plugin.published(pub[0], pub[1]);
    } else if (type === GUEST_RECORD_LOG) {
      const log = this.decode(offset, offset + length);
      if (Array.isArray(log) && log.length === 2) this.plugin.emit('log', { level: Number(log[0]), text: String(log[1]) });
    }
    // Other record types are ignored, as the guest ignores unknown records from us.
  }

  /**
   * Ends this instance with `error`: every request in flight on it fails, and the plugin replaces it, unless it
   * never became ready (a plugin that cannot start is not restarted in a loop).
   */
  fail(error: ShmbusError): void {
    if (this.dead) return;
    const wasReady = this.ready;
    clearTimeout(this.startTimer);
    this.startReject(error);
    for (const pending of this.inFlight.values()) {
      if (this.plugin.settle(pending)) pending.reject(error);
    }
    void this.dispose().then(() => this.plugin.replace(this, error, wasReady));
  }

  /** Stops the runner and frees the segment. */
  async dispose(): Promise<void> {
    if (this.dead) return;
    this.dead = true;
    this.ready = false;
    // An instance closed before it was ready (a replacement still starting) would otherwise keep its start timer,
    // and with it the process, alive for startTimeout.
    clearTimeout(this.startTimer);
    this.queue.length = 0;
    await this.runner?.terminate();
    this.tx.dispose();
    this.rx.dispose();
    this.releaseWindow(this.window);
    this.region.close();
  }
}

function reportError(r: Extract<RunnerReport, { type: 'failed' }>): ShmbusError {
  switch (r.code) {
    case 'limit': return new ShmbusError(ErrorCode.LIMIT, 'plugin ran out of memory under its memoryLimit', { details: { trap: r.message } });
    case 'trap': return new ShmbusError(ErrorCode.TRAP, `plugin trapped: ${r.message}`, { details: { trap: r.message } });
    case 'corrupt': return new CorruptError('the plugin found its rings corrupt', { ring: r.ring });
    case 'import': return new ShmbusError(ErrorCode.FORBIDDEN, `plugin failed to instantiate: ${r.message}`);
    default: return new CorruptError('plugin refused its segment', { ring: r.ring });
  }
}

const CODES = new Set<string>(Object.values(ErrorCode));

/** A plugin's replyError: its code when it is a shmbus code, else ERR_SHMBUS_REMOTE. */
function remoteError(value: unknown): ShmbusError {
  const o = (value !== null && typeof value === 'object' ? value : {}) as { code?: unknown; message?: unknown };
  const code = typeof o.code === 'string' && CODES.has(o.code) ? o.code as ErrorCodeValue : ErrorCode.REMOTE;
  const message = typeof o.message === 'string' ? o.message.slice(0, 4096) : 'plugin failed the request';
  return new ShmbusError(code, message, { details: { remoteCode: typeof o.code === 'string' ? o.code.slice(0, 64) : undefined } });
}

/**
 * A loaded plugin: one or more instances behind one handle. Emits 'publish' ({ topic, value }) for publications on
 * granted topics, 'refused' (ERR_SHMBUS_FORBIDDEN) for the others, 'log' ({ level, text }), 'drain' when messages
 * that waited for room are all handed over, 'error' when an instance fails (only if someone listens: the instance is replaced either way),
 * 'restart' (the error) once a replacement is ready, 'exit' after `close()`.
 */
export class Plugin extends EventEmitter {
  readonly isolation: Isolation;
  readonly maximumPages: number;
  readonly initialPages: number;
  readonly timeout: number;
  readonly allow: ReadonlySet<string>;
  readonly maxQueued: number;
  readonly spin: number;
  /** The host spin budget each instance starts with (µs). */
  readonly hostSpin: number;
  /** hostSpin 'auto': each instance tunes its budget. */
  readonly spinAuto: boolean;
  /** The msgpack of `env`, written first into each instance's ring IN; undefined without env. */
  readonly envBytes: Uint8Array | undefined;
  readonly startTimeout: number;
  /** Instances replaced after a failure so far. */
  restarts = 0;
  private readonly instances: Instance[] = [];
  private readonly waiting: { type: number; bytes: Uint8Array; pending?: Pending }[] = [];
  private sendBlocked = false;
  private readonly inbox: unknown[] = [];
  private readonly stalled = new Set<Instance>();
  private readonly readers: ((r: IteratorResult<unknown>) => void)[] = [];
  private nextId = 1;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private closed = false;
  private readonly bytes: number;
  private readonly capacity: number;

  /** @internal use loadPlugin */
  constructor(readonly module: WebAssembly.Module, readonly wasm: Uint8Array, options: Required<Pick<PluginOptions, 'isolation' | 'timeout' | 'maxQueued' | 'spin' | 'startTimeout'>> & {
    hostSpin: number; spinAuto: boolean; envBytes?: Uint8Array; memoryLimit: number; maximumPages: number; ringCapacity: number; allow: readonly string[]; initialPages: number;
  }) {
    super();
    this.isolation = options.isolation;
    this.timeout = options.timeout;
    this.maxQueued = options.maxQueued;
    this.spin = options.spin;
    this.hostSpin = options.hostSpin;
    this.spinAuto = options.spinAuto;
    this.envBytes = options.envBytes;
    this.startTimeout = options.startTimeout;
    this.allow = new Set(options.allow);
    this.maximumPages = options.maximumPages;
    this.initialPages = options.initialPages;
    this.bytes = segmentBytes(CHANNEL_RING_COUNT, options.ringCapacity);
    this.capacity = options.ringCapacity;
  }

  /** @internal */
  async startInstances(count: number): Promise<void> {
    const started: Promise<void>[] = [];
    for (let i = 0; i < count; i++) {
      const instance = new Instance(this, this.bytes, this.capacity);
      this.instances.push(instance);
      started.push(instance.start());
    }
    await Promise.all(started);
  }

  /** @internal a failed instance is replaced by a fresh one (unless the plugin is closed, or it never started). */
  replace(instance: Instance, error: ShmbusError, wasReady: boolean): void {
    const i = this.instances.indexOf(instance);
    if (i < 0 || this.closed) return;
    if (this.listenerCount('error') > 0) this.emit('error', error);
    if (!wasReady) {
      this.instances.splice(i, 1);
      if (this.instances.length === 0) this.failWaiting(error);
      return;
    }
    let fresh: Instance;
    try {
      fresh = new Instance(this, this.bytes, this.capacity);
    } catch (e) {
      this.instances.splice(i, 1);
      if (this.listenerCount('error') > 0) this.emit('error', e);
      if (this.instances.length === 0) this.failWaiting(e as Error);
      return;
    }
    this.instances[i] = fresh;
    this.restarts++;
    fresh.start().then(() => this.emit('restart', error), () => { /* fail() already replaced it again */ });
  }

  /** Sends `value` to an instance's request handler; resolves with its reply. */
  request(value: unknown, options?: PluginRequestOptions): Promise<unknown> {
    if (this.closed) return Promise.reject(new ClosedError('plugin is closed'));
    const timeout = options?.timeout ?? this.timeout;
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(signal.reason ?? new ShmbusError(ErrorCode.CLOSED, 'request aborted'));
    let bytes: Uint8Array;
    try {
      bytes = this.encode(value, this.nextId);
    } catch (error) {
      return Promise.reject(error);
    }
    const pending = new Pending(this.nextId);
    this.nextId = this.nextId === 0x7fffffff ? 1 : this.nextId + 1;
    const promise = new Promise<unknown>(capture);
    pending.resolve = captured.resolve;
    pending.reject = captured.reject;
    const best = this.waiting.length === 0 ? this.pick() : undefined;
    let spun = false;
    if (best) spun = this.handOver(best, RECORD_REQUEST, bytes, pending);
    else {
      this.waiting.push({ type: RECORD_REQUEST, bytes: keep(bytes), pending });
      this.dispatch();
    }
    if (pending.done) return promise;
    if (timeout > 0) {
      pending.timeout = timeout;
      // A lone request the host spins for: its clock starts after the spin (microseconds from now), only if the
      // spin did not catch the reply. Until then no timer can fire: the spin runs before the event loop does.
      if (spun) best!.spinFor = pending;
      else this.startClock(pending);
    }
    if (signal) {
      pending.signal = signal;
      pending.onAbort = () => { if (this.settle(pending)) pending.reject(signal.reason ?? new ShmbusError(ErrorCode.CLOSED, 'request aborted')); };
      signal.addEventListener('abort', pending.onAbort, { once: true });
    }
    return promise;
  }

  /**
   * One timer for every request's timeout, armed for the earliest deadline: a request answered at once costs no
   * timer, and the rest share one (a setTimeout per request cost more than the echo's round trip).
   */
  /** @internal starts `p`'s timeout (p.timeout ms from now). */
  startClock(p: Pending): void {
    p.deadline = performance.now() + p.timeout;
    this.armTimer(p.deadline);
  }

  private armTimer(deadline: number): void {
    if (this.timer !== undefined && this.timerAt <= deadline) return;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timerAt = deadline;
    this.timer = setTimeout(() => this.expire(), Math.max(0, Math.ceil(deadline - performance.now())));
  }

  /** The timer fired: fails every request past its deadline (replacing its instance), re-arms for the next.
   * It stays armed when the requests it was armed for settle (one late, empty firing is cheaper than clearing
   * and re-arming a timer around every request that waits); close() clears it. */
  private expire(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    const now = performance.now();
    let next = Infinity;
    for (const pending of this.unsettled()) {
      if (pending.deadline > now) { if (pending.deadline < next) next = pending.deadline; continue; }
      const instance = pending.instance;
      if (!this.settle(pending)) continue;
      const error = new TimeoutError('plugin did not reply in time; its instance is replaced', { timeout: pending.timeout });
      pending.reject(error);
      // A request still waiting for an instance has held none up; one in a ring may be stuck in the plugin.
      if (instance) instance.fail(error);
    }
    if (next !== Infinity) this.armTimer(next);
  }

  /**
   * Sends a message to an instance's message handler (no reply). Like stream.write, the message is taken either
   * way; false means it waits for room ('drain' follows). Throws ERR_SHMBUS_QUEUE_FULL past `maxQueued` waiting,
   * ERR_SHMBUS_MESSAGE_TOO_LARGE past half the ring.
   */
  send(value: unknown): boolean {
    if (this.closed) throw new ClosedError('plugin is closed');
    if (this.waiting.length >= this.maxQueued) throw new QueueFullError(this.maxQueued);
    this.waiting.push({ type: RECORD_MSGPACK, bytes: keep(this.encode(value)) });
    this.dispatch();
    if (this.waiting.length === 0) return true;
    this.sendBlocked = true;
    return false;
  }

  /** msgpack of `value`, or of the request `[id, value]` when `id` is given (host/pack.ts encodePlain): valid until
   * the next encode in this process (see keep). */
  private encode(value: unknown, id?: number): Uint8Array {
    const bytes = encodePlain(id === undefined ? value : [id, value]);
    const max = maxPayload(this.capacity);
    if (bytes.length > max) throw new MessageTooLargeError(bytes.length, max);
    return bytes;
  }

  /** Requests that wait for an instance fail when none is left to take them. */
  private failWaiting(error: Error): void {
    for (const item of this.waiting.splice(0)) {
      if (item.pending && this.settle(item.pending)) item.pending.reject(error);
    }
  }

  /** @internal hands waiting requests and messages to ready instances, the least busy first. */
  dispatch(): void {
    if (this.instances.length === 0 && !this.closed) this.failWaiting(new PeerDeadError('no instance of the plugin is left (each failed to start)'));
    while (this.waiting.length > 0) {
      const best = this.pick();
      if (!best) return;
      const item = this.waiting.shift()!;
      if (item.pending?.done) continue; // timed out or aborted while waiting
      this.handOver(best, item.type, item.bytes, item.pending);
    }
    if (this.sendBlocked) {
      this.sendBlocked = false;
      this.emit('drain');
    }
  }

  /** The ready instance with the fewest requests in flight, if any can take a record now. */
  private pick(): Instance | undefined {
    let best: Instance | undefined;
    for (const i of this.instances) if (i.canTake && (!best || i.inFlight.size < best.inFlight.size)) best = i;
    return best;
  }

  /** Writes one record to `best`'s ring IN; a lone request to an awake runner then waits for its reply (hostSpin).
   * True when a spin was queued for `p`. */
  private handOver(best: Instance, type: number, bytes: Uint8Array, p: Pending | undefined): boolean {
    if (p) { p.instance = best; best.inFlight.set(p); }
    let spun = false;
    try {
      if (p && best.inFlight.size === 1 && this.waiting.length === 0) spun = best.spinSoon();
      best.write(type, bytes);
    } catch (error) {
      // The ring itself refused (corrupt): that instance is done.
      best.fail(error instanceof ShmbusError ? error : new CorruptError('plugin ring write failed', { cause: String(error) }));
    }
    return spun;
  }

  /** Every request not settled yet: in flight on an instance (an instance that fails settles its own), or waiting
   * for one. Kept nowhere else: one map fewer to update per request. */
  private unsettled(): Pending[] {
    const all: Pending[] = [];
    for (const instance of this.instances) for (const p of instance.inFlight.values()) all.push(p);
    for (const item of this.waiting) if (item.pending && !item.pending.done) all.push(item.pending);
    return all;
  }

  /** @internal a request is over (replied, failed, timed out, aborted): false when it was already. */
  settle(p: Pending): boolean {
    if (p.done) return false;
    p.done = true;
    p.instance?.inFlight.delete(p.id);
    if (p.onAbort) p.signal!.removeEventListener('abort', p.onAbort);
    return true;
  }

  /** @internal */
  deliver(value: unknown): void {
    const reader = this.readers.shift();
    if (reader) reader({ value, done: false });
    else this.inbox.push(value);
  }

  /** @internal whether `instance` must stop reading its ring until the reader catches up (it is then resumed). */
  inboxFull(instance: Instance): boolean {
    if (this.inbox.length < MAX_INBOX) return false;
    this.stalled.add(instance);
    return true;
  }

  private resumeStalled(): void {
    if (this.stalled.size === 0 || this.inbox.length >= MAX_INBOX / 2) return;
    const stalled = [...this.stalled];
    this.stalled.clear();
    for (const instance of stalled) instance.drain();
  }

  /** @internal */
  published(topic: string, value: unknown): void {
    if (!this.allow.has(topic)) {
      this.emit('refused', new ShmbusError(ErrorCode.FORBIDDEN, 'plugin published to a topic it was not granted', { details: { topic: topic.slice(0, 256) } }));
      return;
    }
    this.emit('publish', { topic, value } satisfies Publication);
  }

  /** What the plugin sends (its `send`), in order, until `close()`. */
  async *[Symbol.asyncIterator](): AsyncIterator<unknown> {
    for (;;) {
      if (this.inbox.length > 0) {
        const value = this.inbox.shift();
        this.resumeStalled();
        yield value;
        continue;
      }
      if (this.closed) return;
      const r = await new Promise<IteratorResult<unknown>>((resolve) => this.readers.push(resolve));
      if (r.done) return;
      yield r.value;
    }
  }

  /** Stops every instance, fails what is in flight with ERR_SHMBUS_CLOSED and frees every segment. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const error = new ClosedError('plugin is closed');
    if (this.timer !== undefined) { clearTimeout(this.timer); this.timer = undefined; this.timerAt = Infinity; }
    for (const p of this.unsettled()) { if (this.settle(p)) p.reject(error); }
    this.waiting.length = 0;
    await Promise.all(this.instances.map((i) => i.dispose()));
    this.instances.length = 0;
    for (const r of this.readers.splice(0)) r({ value: undefined, done: true });
    this.emit('exit');
  }

  /** @internal for tests: how many instances wait for the reader to catch up. */
  stalledForTest(): number {
    return this.stalled.size;
  }

  /** @internal for tests: the host's view of instance `i`'s rings. */
  instanceForTest(i = 0): { engine: Engine; window: number; capacity: number } | undefined {
    const inst = this.instances[i];
    return inst && { engine: inst.engine, window: inst.window, capacity: inst.capacity };
  }
}

function memoryLimitOf(value: number | string | undefined): number {
  if (value === undefined) return DEFAULT_MEMORY_LIMIT;
  const bytes = typeof value === 'number' ? value : parseSize(value);
  if (bytes === undefined || !Number.isInteger(bytes) || bytes < WASM_PAGE_SIZE || bytes > MAX_PAGES * WASM_PAGE_SIZE) {
    throw new BadArgumentError('memoryLimit must be a size between 64KiB and 4GiB', { memoryLimit: value });
  }
  return bytes;
}

/**
 * Loads a plugin and starts its instances. `wasm` is a path, a file URL or the module's bytes. Rejects with
 * ERR_SHMBUS_FORBIDDEN when the module imports anything but `env.memory` and `env.abort`, ERR_SHMBUS_LIMIT when
 * `memoryLimit` cannot hold the plugin and its rings, ERR_SHMBUS_BAD_ARGUMENT for bad options.
 */
export async function loadPlugin(wasm: string | URL | Uint8Array, options: PluginOptions = {}): Promise<Plugin> {
  const isolation = options.isolation ?? 'thread';
  if (isolation !== 'thread' && isolation !== 'process') throw new BadArgumentError('isolation must be thread or process', { isolation });
  const memoryLimit = memoryLimitOf(options.memoryLimit);
  const timeout = options.timeout ?? 5000;
  if (!Number.isFinite(timeout) || timeout < 0) throw new BadArgumentError('timeout must be a number of ms >= 0', { timeout });
  const instances = options.instances ?? 1;
  if (!Number.isInteger(instances) || instances < 1 || instances > 256) throw new BadArgumentError('instances must be an integer from 1 to 256', { instances });
  const ringCapacity = options.ringCapacity ?? DEFAULT_RING_CAPACITY;
  if (!Number.isInteger(ringCapacity) || ringCapacity < 4096 || (ringCapacity & (ringCapacity - 1)) !== 0) {
    throw new BadArgumentError('ringCapacity must be a power of two of at least 4096', { ringCapacity });
  }
  if (options.env !== undefined && (options.env === null || typeof options.env !== 'object' || Object.values(options.env).some((v) => typeof v !== 'string'))) {
    throw new BadArgumentError('env must be an object of strings', {});
  }
  const hostSpinOption = options.hostSpin ?? 'auto';
  for (const [name, value] of [['maxQueued', options.maxQueued], ['spin', options.spin], ['hostSpin', hostSpinOption === 'auto' ? undefined : hostSpinOption], ['startTimeout', options.startTimeout]] as const) {
    if (value !== undefined && (!Number.isInteger(value) || value < 0)) throw new BadArgumentError(`${name} must be an integer >= 0`, { [name]: value });
  }
  let envBytes: Uint8Array | undefined;
  if (options.env !== undefined && Object.keys(options.env).length > 0) {
    envBytes = Uint8Array.from(plainPackr().pack({ ...options.env }));
    if (envBytes.length > maxPayload(ringCapacity)) throw new BadArgumentError('env is larger than a message may be', { bytes: envBytes.length });
  }
  const allow = options.allow ?? [];
  if (!Array.isArray(allow) || allow.some((t) => typeof t !== 'string')) throw new BadArgumentError('allow must be an array of topic names', {});
  const bytes = typeof wasm === 'string' || wasm instanceof URL ? await readFile(wasm instanceof URL ? fileURLToPath(wasm) : wasm) : wasm;
  let module: WebAssembly.Module;
  try {
    module = new WebAssembly.Module(bytes as Uint8Array<ArrayBuffer>);
  } catch (cause) {
    throw new BadArgumentError('not a WebAssembly module', { cause: String(cause) });
  }
  for (const imp of WebAssembly.Module.imports(module)) {
    const name = `${imp.module}.${imp.name}`;
    if (GRANTED_IMPORTS.get(name) !== imp.kind) {
      throw new ShmbusError(ErrorCode.FORBIDDEN, 'plugin imports something the host does not grant', { details: { import: name, kind: imp.kind, granted: [...GRANTED_IMPORTS.keys()].join(',') } });
    }
  }
  const declared = memoryImportLimits(bytes);
  if (!declared?.shared) throw new ShmbusError(ErrorCode.FORBIDDEN, 'a plugin must import a shared memory (env.memory): see docs/plugins.md', {});
  const initialPages = Math.max(1, declared.initial);
  let maximumPages = Math.floor(memoryLimit / WASM_PAGE_SIZE);
  if (declared.maximum !== undefined && declared.maximum < maximumPages) maximumPages = declared.maximum;
  const ringPages = Math.ceil(segmentBytes(CHANNEL_RING_COUNT, ringCapacity) / WASM_PAGE_SIZE);
  if (maximumPages < initialPages + ringPages + 1) {
    throw new ShmbusError(ErrorCode.LIMIT, 'memoryLimit cannot hold the plugin and its rings', { details: { memoryLimit, rings: ringPages * WASM_PAGE_SIZE } });
  }
  const plugin = new Plugin(module, bytes, {
    isolation, timeout, maxQueued: options.maxQueued ?? 1024, maximumPages, spin: options.spin ?? (availableParallelism() > 1 ? DEFAULT_RUNNER_SPIN : 0),
    // 'auto' waits only where the machine has a core for the runner besides this thread.
    hostSpin: hostSpinOption === 'auto' ? (availableParallelism() > 1 ? HOST_SPIN_START_US : 0) : hostSpinOption,
    spinAuto: hostSpinOption === 'auto' && availableParallelism() > 1, envBytes, startTimeout: options.startTimeout ?? 30_000, memoryLimit, ringCapacity, allow, initialPages,
  });
  try {
    await plugin.startInstances(instances);
  } catch (error) {
    await plugin.close();
    throw error;
  }
  return plugin;
}
