/**
 * Pub/sub on one machine: a Bus is a namespace of topics, each a broadcast ring in its own segment, plus a
 * registry segment that lists the topics and the processes using the bus.
 *
 *   const bus = await Bus.open('shm://market');
 *   const ticks = bus.publisher('ticks', { capacity: '16MiB', policy: 'lossless', history: 1024 });
 *   ticks.publish({ sym: 'ACME', px: 12.5 });
 *   for await (const t of bus.subscribe('ticks', { from: 'latest' })) { … }
 *
 * Naming: `shm://market` keeps the registry in `/shmbus.bus.market` and topic `ticks` in
 * `/shmbus.bus.market.ticks` (POSIX shared memory); the last process to close the bus removes them.
 * `file:///dir/market` keeps them in `/dir/market.registry` and `/dir/market.ticks.topic`: files that persist,
 * so a topic's history survives restarts (remove them with `bus.destroy()`).
 */
import { EventEmitter } from 'node:events';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { Packr, Unpackr } from 'msgpackr';
import {
  RECORD_BYTES, RECORD_MSGPACK, REGISTRY_MEMBERS, REGISTRY_MEMBER_SIZE, REGISTRY_TOPICS, REGISTRY_ENTRY_SIZE,
  REGISTRY_NAME_OFFSET, REGISTRY_NAME_MAX, ENTRY_FREE, ENTRY_WRITING, ENTRY_READY, SEGMENT_HEADER_SIZE,
  TOPIC_HEADER_OFFSET, TOPIC_HEADER_SIZE, TOPIC_SLOT_SIZE, TOPIC_PUBLISHER_CLAIM_OFFSET, TOPIC_PUBLISHER_START_OFFSET,
  SLOT_CLAIM_OFFSET, BC_BATCH_ENTRY_SIZE, REGISTRY_MAGIC, TOPIC_WAKE_OFFSET, TOPIC_SPACE_WAKE_OFFSET,
  MEMBER_CLAIM_OFFSET, MEMBER_START_OFFSET, ENTRY_STATE_OFFSET, ENTRY_NAME_LENGTH_OFFSET, ENTRY_CAPACITY_OFFSET,
  ENTRY_MAX_SUBSCRIBERS_OFFSET, ENTRY_POLICY_OFFSET, ENTRY_HISTORY_OFFSET, ENTRY_CREATOR_PID_OFFSET, SEG_MAGIC_OFFSET,
  SEG_VERSION_OFFSET, POLICY_LOSSY, POLICY_LOSSLESS, CLAIM_FREE, memberOffset, entryOffset, registryBytes, topicBytes,
} from '../assembly/layout.js';
import { getEngine, type Engine } from '../host/engine.js';
import { decodeMsgpack } from '../host/codec.js';
import { Region, type Trust } from '../host/region.js';
import { claimAlive, dropClaim, ownClaim, takeClaim } from '../host/claim.js';
import { readSegment, writeHeader, publishVersion, REGISTRY_SEGMENT, TOPIC_SEGMENT } from '../host/segment.js';
import { formatTopic, readTopicState, TopicReader, TopicWriter, type Policy } from '../host/topic.js';
import { parseSize, schemeOf } from '../host/url.js';
import { isProcessAlive, processStartTime } from '../host/sys/proc.js';
import { futexWake } from '../host/sys/futex.js';
import { futex } from '../host/wake/futex.js';
import { WAKE_DATA, type Sleeper } from '../host/wake/mechanism.js';
import {
  BadArgumentError, BadUrlError, ClosedError, CorruptError, ErrorCode, MessageTooLargeError, QueueFullError,
  ShmbusError, TimeoutError, UnknownSchemeError,
} from '../host/errors.js';

/** A lossless publisher held by a subscriber checks that subscriber's process this often. */
export const LIVENESS_MS = 250;
const YIELD_MS = 2;
const DEFAULT_CAPACITY = 1 << 20;
const DEFAULT_MAX_SUBSCRIBERS = 64;
const DEFAULT_MAX_QUEUED = 65536;
const TOPIC_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

export interface PublisherOptions {
  /** Ring bytes: a power of two, number or '16MiB'. Default 1 MiB. */
  capacity?: number | string;
  /** 'lossless' (default): wait for the slowest live subscriber; 'lossy': never wait, subscribers may lap. */
  policy?: Policy;
  /** The newest `history` messages stay available to late joiners (`from: 'earliest'`). Default 0. */
  history?: number;
  /** Subscriber slots. Default 64. */
  maxSubscribers?: number;
  /** Hard cap of messages waiting locally when the topic is full (lossless). Default 65536. */
  maxQueued?: number;
}

export interface SubscribeOptions {
  /** 'latest' (default): only messages published from now on; 'earliest': the retained history first. */
  from?: 'latest' | 'earliest';
  /** false: fail with ERR_SHMBUS_NOT_FOUND when the topic does not exist yet, instead of waiting for it. */
  create?: boolean;
  /** Give up waiting for the topic to appear after this many ms (ERR_SHMBUS_TIMEOUT). Default: wait forever. */
  timeout?: number;
  signal?: AbortSignal;
}

/** One topic as the registry lists it, with its live state. */
export interface TopicInfo {
  name: string;
  capacity: number;
  policy: Policy;
  history: number;
  maxSubscribers: number;
  published: number;
  publisher: { pid: number; alive: boolean } | null;
  subscribers: { pid: number; alive: boolean; seq: number; dropped: number }[];
}

export interface BusOptions {
  /**
   * Other users whose bus files this process accepts. By default a bus's registry and topic files must belong to
   * this process's effective uid: a file another user planted (even one this process could open) is refused
   * with ERR_SHMBUS_PERMISSION_DENIED, so nobody can read or feed a bus by creating its files first.
   */
  allow?: { uids?: number[] };
  /**
   * Permission bits for the files this process creates (default 0o600). Group or other write bits given here are
   * also accepted on files it attaches; without them a group- or world-writable bus file is refused.
   */
  mode?: number;
}

interface Naming { registry: string; topic(name: string): string; kind: 'posix' | 'file'; trust: Trust; mode: number }

function naming(url: string, options: BusOptions): Naming {
  const mode = options.mode ?? 0o600;
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new BadArgumentError('mode must be permission bits 0..0o777', { mode });
  const uids = options.allow?.uids ?? [];
  if (!Array.isArray(uids) || !uids.every((u) => Number.isInteger(u) && u >= 0)) throw new BadArgumentError('allow.uids must be uids', { uids: String(uids) });
  const trust: Trust = { uids: [process.geteuid?.() ?? 0, ...uids], writableBy: mode & 0o022 };
  const kind = namesOf(url);
  return { ...kind, trust, mode };
}

function namesOf(url: string): Omit<Naming, 'trust' | 'mode'> {
  const scheme = schemeOf(url);
  if (scheme !== 'shm' && scheme !== 'file') throw new UnknownSchemeError(url, scheme);
  let parsed: URL;
  try { parsed = new URL(url); } catch (cause) { throw new BadUrlError('URL does not parse', url, { cause }); }
  if ([...parsed.searchParams.keys()].length) throw new BadUrlError('a bus URL takes no options', url);
  if (scheme === 'shm') {
    const ns = parsed.host + (parsed.pathname === '/' ? '' : parsed.pathname);
    if (!/^[A-Za-z0-9_.-]{1,100}$/.test(ns)) throw new BadUrlError('bus name may hold letters, digits, _ . - (1 to 100)', url);
    return { kind: 'posix', registry: `/shmbus.bus.${ns}`, topic: (t) => `/shmbus.bus.${ns}.${t}` };
  }
  if (parsed.host !== '' || !parsed.pathname.startsWith('/') || parsed.pathname.endsWith('/')) {
    throw new BadUrlError('file: bus URL needs an absolute path (file:///dir/name)', url);
  }
  const base = decodeURIComponent(parsed.pathname);
  return { kind: 'file', registry: `${base}.registry`, topic: (t) => `${base}.${t}.topic` };
}

function checkTopicName(name: unknown): string {
  if (typeof name !== 'string' || !TOPIC_NAME.test(name)) throw new BadArgumentError('topic name may hold letters, digits, _ . - (1 to 64)', { topic: String(name) });
  return name;
}

/** A segment mapped into a window of the engine. */
class Mapped {
  constructor(readonly engine: Engine, readonly region: Region, readonly at: number) {}

  /**
   * Maps `region`, then checks with fstat that the segment still covers the whole mapping: a member that shrank
   * it would otherwise make our first touch past the new end a SIGBUS. (It can still shrink it later: see
   * docs/security.md, "Buses and topics".)
   */
  static map(engine: Engine, region: Region): Mapped {
    const at = engine.allocWindow(region.size);
    try {
      region.mapAt(engine.address(at));
    } catch (error) {
      engine.freeWindow(at, region.size);
      region.close();
      throw error;
    }
    const m = new Mapped(engine, region, at);
    let now: number;
    try {
      now = region.currentSize();
    } catch (error) {
      m.unmap();
      throw error;
    }
    if (now < region.mapLength) {
      m.unmap();
      throw new CorruptError('segment shrank under its mapping', { name: region.name, size: now, mapped: region.mapLength });
    }
    return m;
  }

  unmap(): void {
    try {
      this.region.unmapAt(this.engine.address(this.at));
      this.engine.freeWindow(this.at, this.region.size);
    } finally {
      this.region.close();
    }
  }
}

/**
 * Creates a bus file exclusively (O_EXCL, never through a symlink), or attaches the existing one only if its
 * owner and mode pass `names.trust` (fstat before anything is mapped).
 */
function createOrAttach(names: Naming, name: string, size: number): Region {
  const opts = { size, exclusive: false, mode: names.mode, trust: names.trust };
  return names.kind === 'posix' ? Region.createPosix(name, opts) : Region.createFile(name, opts);
}

function attachExisting(names: Naming, name: string): Region {
  return names.kind === 'posix' ? Region.attachPosix(name, { trust: names.trust }) : Region.attachFile(name, { trust: names.trust });
}

/** Whether the creator of the segment at `m` has not finished formatting it yet (version, or even magic, unset). */
function unformatted(m: Mapped): boolean {
  const words = new Int32Array(m.engine.memory.buffer, m.at, SEGMENT_HEADER_SIZE / 4);
  // SYNC: pairs with the Atomics.store of the version in publishVersion.
  return Atomics.load(words, SEG_VERSION_OFFSET / 4) === 0 || Atomics.load(words, SEG_MAGIC_OFFSET / 4) === 0;
}

/** Waits until a creator has published the segment's version (it formats right after creating). */
async function readyHeader(m: Mapped, kind: typeof TOPIC_SEGMENT): Promise<ReturnType<typeof readSegment>> {
  for (let i = 0; unformatted(m) && i < 200; i++) await new Promise((r) => setTimeout(r, 5));
  return readSegment(m.engine, m.at, m.region.size, kind);
}

/**
 * Sleeps until the 32-bit word at `offset` differs from `value`, or `timeoutMs` passed, by polling with a
 * growing interval (0.25 → 8 ms). The fallback of WordWaiter when futex waits are not available.
 */
async function sleepOnWord(engine: Engine, offset: number, value: number, timeoutMs: number, stop: () => boolean): Promise<void> {
  const words = new Uint32Array(engine.memory.buffer);
  const deadline = performance.now() + timeoutMs;
  for (let delay = 0.25; ; delay = Math.min(delay * 2, 8)) {
    // SYNC: pairs with the atomic.add of the word in topic_commit / topic_release.
    if (Atomics.load(words, offset >>> 2) !== value || stop()) return;
    const left = deadline - performance.now();
    if (left <= 0) return;
    await new Promise((r) => setTimeout(r, Math.min(delay, left)));
  }
}

/**
 * Sleeps on a topic word (a subscriber on wakeSeq, a publisher on spaceWake) through the futex wait thread
 * (host/wake/futex.ts): no event-loop or threadpool thread blocks, and the other side's FUTEX_WAKE ends the
 * sleep in microseconds. Falls back to polling the word where futex_waitv is missing.
 */
class WordWaiter {
  private readonly sleeper: Sleeper | undefined;
  private wake: (() => void) | undefined;

  constructor(private readonly engine: Engine, private readonly word: { waitWord(): { offset: number; value: number } }) {
    let sleeper: Sleeper | undefined;
    try {
      sleeper = futex.sleeper({
        engine, rx: word as never, tx: word as never, socket: undefined as never,
        onWake: () => { const w = this.wake; this.wake = undefined; w?.(); },
      });
    } catch {
      sleeper = undefined;
    }
    this.sleeper = sleeper;
  }

  /** Sleeps until the word moves, `timeoutMs` passes, or `stop()` (checked by the polling fallback). */
  async sleep(timeoutMs: number, stop: () => boolean): Promise<void> {
    const sleeper = this.sleeper;
    if (!sleeper) {
      const { offset, value } = this.word.waitWord();
      return sleepOnWord(this.engine, offset, value, timeoutMs, stop);
    }
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.wake = resolve;
      timer = setTimeout(resolve, timeoutMs);
      sleeper.wait(WAKE_DATA);
    });
    clearTimeout(timer);
    this.wake = undefined;
    sleeper.cancel(WAKE_DATA);
  }

  close(): void {
    this.sleeper?.close();
  }
}

/** Wakes every process sleeping on a topic word (one system call, whatever their number). */
function wakeWord(engine: Engine, offset: number): void {
  try {
    futexWake(engine.address(offset), true);
  } catch { /* no futex: sleepers poll */ }
}

export class Bus {
  readonly url: string;
  private readonly engine: Engine;
  private readonly names: Naming;
  private readonly registry: Mapped;
  private readonly memberSlot: number;
  private readonly endpoints = new Set<Publisher | Subscription>();
  private closed = false;

  private constructor(url: string, engine: Engine, names: Naming, registry: Mapped, memberSlot: number) {
    this.url = url;
    this.engine = engine;
    this.names = names;
    this.registry = registry;
    this.memberSlot = memberSlot;
  }

  /**
   * Opens (creating if needed) the bus named by `url` (`shm://name` or `file:///path/name`). Existing bus files
   * are attached only if they belong to this user (or one `options.allow` names) and are not writable by others.
   */
  static async open(url: string, options: BusOptions = {}): Promise<Bus> {
    const names = naming(url, options);
    const engine = getEngine();
    const size = registryBytes(REGISTRY_TOPICS, REGISTRY_MEMBERS);
    const region = createOrAttach(names, names.registry, size);
    const registry = Mapped.map(engine, region);
    try {
      if (region.created) {
        writeHeader(engine, registry.at, REGISTRY_SEGMENT, REGISTRY_TOPICS, REGISTRY_MEMBERS, process.pid, processStartTime(process.pid) ?? 0n);
        // A file:// registry may reuse a file whose old contents we just overwrote: members start free.
        publishVersion(engine, registry.at);
      } else {
        await readyHeader(registry, REGISTRY_SEGMENT);
      }
      // Whoever removes the bus is decided by membership, not by who created it.
      region.releaseOwnership();
      const slot = joinMembers(engine, registry.at);
      return new Bus(url, engine, names, registry, slot);
    } catch (error) {
      registry.unmap();
      throw error;
    }
  }

  /** A publisher for `topic`, creating the topic if needed. One publisher per topic at a time. */
  publisher(topic: string, options: PublisherOptions = {}): Publisher {
    this.checkOpen();
    const name = checkTopicName(topic);
    const capacity = typeof options.capacity === 'string' ? parseSize(options.capacity) : options.capacity ?? DEFAULT_CAPACITY;
    if (capacity === undefined || !Number.isInteger(capacity) || (capacity & (capacity - 1)) !== 0 || capacity < 1024 || capacity > 1 << 28) {
      throw new BadArgumentError('capacity must be a power of two from 1 KiB to 256 MiB', { capacity: options.capacity });
    }
    const policy = options.policy ?? 'lossless';
    if (policy !== 'lossless' && policy !== 'lossy') throw new BadArgumentError('policy is lossless or lossy', { policy });
    const history = options.history ?? 0;
    if (!Number.isInteger(history) || history < 0) throw new BadArgumentError('history must be a non-negative integer', { history });
    const maxSubscribers = options.maxSubscribers ?? DEFAULT_MAX_SUBSCRIBERS;
    if (!Number.isInteger(maxSubscribers) || maxSubscribers < 1 || maxSubscribers > 256) throw new BadArgumentError('maxSubscribers must be 1 to 256', { maxSubscribers });
    const geometry = { capacity, policy, history, maxSubscribers };
    const size = topicBytes(maxSubscribers, capacity);
    const region = createOrAttach(this.names, this.names.topic(name), size);
    let mapped: Mapped | undefined;
    try {
      mapped = Mapped.map(this.engine, region);
      if (region.created) {
        formatTopic(this.engine, mapped.at, geometry, process.pid, processStartTime(process.pid) ?? 0n);
        registerTopic(this.engine, this.registry.at, name, geometry);
        // Formatted and listed: from now on the bus's last member removes it, not this publisher.
        region.releaseOwnership();
      } else {
        const info = readSegment(this.engine, mapped.at, region.size, TOPIC_SEGMENT);
        const state = readTopicState(this.engine, mapped.at, info.ringCount);
        if (info.capacity !== capacity || info.ringCount !== maxSubscribers || state.policy !== policy || state.history !== history) {
          throw new BadArgumentError('the topic exists with other options', {
            topic: name, capacity: info.capacity, maxSubscribers: info.ringCount, policy: state.policy, history: state.history,
          });
        }
      }
      const publisher = new Publisher(this, name, mapped, capacity, maxSubscribers, options.maxQueued ?? DEFAULT_MAX_QUEUED);
      this.endpoints.add(publisher);
      return publisher;
    } catch (error) {
      if (mapped) mapped.unmap();
      else region.close();
      throw error;
    }
  }

  /**
   * Subscribes to `topic`. If the topic does not exist yet, waits for a publisher to create it (unless
   * `create: false`). The subscription is an async iterable of messages.
   */
  subscribe(topic: string, options: SubscribeOptions = {}): Subscription {
    this.checkOpen();
    const name = checkTopicName(topic);
    const from = options.from ?? 'latest';
    if (from !== 'latest' && from !== 'earliest') throw new BadArgumentError("from is 'latest' or 'earliest'", { from });
    let exists = true;
    try { attachExisting(this.names, this.names.topic(name)).close(); } catch (error) {
      if (!(error instanceof ShmbusError && error.code === ErrorCode.NOT_FOUND)) throw error;
      exists = false;
    }
    if (!exists && options.create === false) {
      throw new ShmbusError(ErrorCode.NOT_FOUND, 'no such topic', { details: { topic: name, bus: this.url } });
    }
    const subscription = new Subscription(this, name, from === 'earliest', options);
    this.endpoints.add(subscription);
    return subscription;
  }

  /** The topics the registry lists, with their publisher and subscribers and whether each is alive. */
  topics(): TopicInfo[] {
    this.checkOpen();
    const out: TopicInfo[] = [];
    for (const entry of readEntries(this.engine, this.registry.at)) {
      const info: TopicInfo = { ...entry, published: 0, publisher: null, subscribers: [] };
      try {
        const m = Mapped.map(this.engine, attachExisting(this.names, this.names.topic(entry.name)));
        try {
          const header = readSegment(this.engine, m.at, m.region.size, TOPIC_SEGMENT);
          const state = readTopicState(this.engine, m.at, header.ringCount);
          info.published = state.published;
          if (state.publisherPid) info.publisher = { pid: state.publisherPid, alive: claimAlive(state.publisherClaim) };
          info.subscribers = state.subscribers.map((s) => ({ pid: s.pid, alive: claimAlive(s.claim), seq: s.seq, dropped: s.dropped }));
        } finally {
          m.unmap();
        }
      } catch { /* listed but gone: report it without live state */ }
      out.push(info);
    }
    return out;
  }

  /** @internal */
  get _engine(): Engine { return this.engine; }
  /** @internal */
  _topicRegion(name: string): Region { return attachExisting(this.names, this.names.topic(name)); }
  /** @internal */
  _forget(endpoint: Publisher | Subscription): void { this.endpoints.delete(endpoint); }

  private checkOpen(): void {
    if (this.closed) throw new ClosedError('bus is closed', { url: this.url });
  }

  /**
   * Closes every publisher and subscription of this bus object and leaves the registry. The last live member of
   * a shm:// bus removes its segments; a file:// bus keeps its files (see destroy()).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const e of [...this.endpoints]) await e.close();
    leaveMembers(this.engine, this.registry.at, this.memberSlot);
    const last = liveMembers(this.engine, this.registry.at) === 0;
    const entries = last && this.names.kind === 'posix' ? readEntries(this.engine, this.registry.at) : [];
    this.registry.unmap();
    if (last && this.names.kind === 'posix') this.removeAll(entries.map((e) => e.name));
  }

  /** Closes, then removes the registry and every listed topic, whoever still uses them (files included). */
  async destroy(): Promise<void> {
    const entries = this.closed ? [] : readEntries(this.engine, this.registry.at);
    await this.close();
    this.removeAll(entries.map((e) => e.name));
  }

  private removeAll(topics: string[]): void {
    for (const name of [...topics.map((t) => this.names.topic(t)), this.names.registry]) {
      try { const r = attachExisting(this.names, name); r.remove(); r.close(); } catch { /* already gone */ }
    }
  }
}

// --- registry ----------------------------------------------------------------------------------------------------

/** The registry's member claim words (as BigUint64Array indexes) and full start times. */
function memberWord(at: number, index: number): number {
  return (at + memberOffset(index) + MEMBER_CLAIM_OFFSET) / 8;
}

function joinMembers(engine: Engine, at: number): number {
  const words = new BigUint64Array(engine.memory.buffer);
  const view = new DataView(engine.memory.buffer);
  const mine = ownClaim();
  for (let i = 0; i < REGISTRY_MEMBERS; i++) {
    // A free slot, or a dead member's, is taken by one compare-and-swap of the whole claim (host/claim.ts).
    if (takeClaim(words, memberWord(at, i), mine)) {
      view.setBigUint64(at + memberOffset(i) + MEMBER_START_OFFSET, processStartTime(process.pid) ?? 0n, true);
      return i;
    }
  }
  throw new ShmbusError(ErrorCode.LIMIT, 'the bus has no free member slot', { details: { max: REGISTRY_MEMBERS } });
}

function leaveMembers(engine: Engine, at: number, index: number): void {
  dropClaim(new BigUint64Array(engine.memory.buffer), memberWord(at, index), ownClaim());
}

function liveMembers(engine: Engine, at: number): number {
  const words = new BigUint64Array(engine.memory.buffer);
  let n = 0;
  for (let i = 0; i < REGISTRY_MEMBERS; i++) {
    // SYNC: pairs with the compare-and-swap in takeClaim / dropClaim.
    if (claimAlive(Atomics.load(words, memberWord(at, i)))) n++;
  }
  return n;
}

function registerTopic(engine: Engine, at: number, name: string, g: { capacity: number; policy: Policy; history: number; maxSubscribers: number }): void {
  const words = new Int32Array(engine.memory.buffer);
  const view = new DataView(engine.memory.buffer);
  const bytes = Buffer.from(name, 'utf8');
  if (readEntries(engine, at).some((e) => e.name === name)) return;
  for (let i = 0; i < REGISTRY_TOPICS; i++) {
    const e = at + entryOffset(i);
    // SYNC: the claim word; pairs with the loads in readEntries (an entry is read only once READY).
    if (Atomics.compareExchange(words, (e + ENTRY_STATE_OFFSET) >>> 2, ENTRY_FREE, ENTRY_WRITING) !== ENTRY_FREE) continue;
    view.setUint32(e + ENTRY_NAME_LENGTH_OFFSET, bytes.length, true);
    view.setUint32(e + ENTRY_CAPACITY_OFFSET, g.capacity, true);
    view.setUint32(e + ENTRY_MAX_SUBSCRIBERS_OFFSET, g.maxSubscribers, true);
    view.setUint32(e + ENTRY_POLICY_OFFSET, g.policy === 'lossy' ? POLICY_LOSSY : POLICY_LOSSLESS, true);
    view.setUint32(e + ENTRY_HISTORY_OFFSET, g.history, true);
    view.setUint32(e + ENTRY_CREATOR_PID_OFFSET, process.pid, true);
    engine.u8.set(bytes, e + REGISTRY_NAME_OFFSET);
    Atomics.store(words, (e + ENTRY_STATE_OFFSET) >>> 2, ENTRY_READY);
    return;
  }
  throw new ShmbusError(ErrorCode.LIMIT, 'the bus registry is full', { details: { maxTopics: REGISTRY_TOPICS } });
}

/**
 * The READY entries of the registry. Every field is untrusted (any member can write the registry): an entry whose
 * name is too long or is not a valid topic name is skipped, so no path is ever built from it.
 */
function readEntries(engine: Engine, at: number): { name: string; capacity: number; policy: Policy; history: number; maxSubscribers: number }[] {
  const words = new Int32Array(engine.memory.buffer);
  const view = new DataView(engine.memory.buffer);
  const out = [];
  for (let i = 0; i < REGISTRY_TOPICS; i++) {
    const e = at + entryOffset(i);
    // SYNC: pairs with the Atomics.store of ENTRY_READY in registerTopic.
    if (Atomics.load(words, (e + ENTRY_STATE_OFFSET) >>> 2) !== ENTRY_READY) continue;
    const length = view.getUint32(e + ENTRY_NAME_LENGTH_OFFSET, true);
    if (length > REGISTRY_NAME_MAX) continue; // a corrupt entry is skipped, never read past
    const name = Buffer.from(engine.u8.subarray(e + REGISTRY_NAME_OFFSET, e + REGISTRY_NAME_OFFSET + length)).toString('utf8');
    if (!TOPIC_NAME.test(name)) continue;
    out.push({
      name,
      capacity: view.getUint32(e + ENTRY_CAPACITY_OFFSET, true),
      maxSubscribers: view.getUint32(e + ENTRY_MAX_SUBSCRIBERS_OFFSET, true),
      policy: (view.getUint32(e + ENTRY_POLICY_OFFSET, true) === POLICY_LOSSY ? 'lossy' : 'lossless') as Policy,
      history: view.getUint32(e + ENTRY_HISTORY_OFFSET, true),
    });
  }
  return out;
}

// --- publisher ---------------------------------------------------------------------------------------------------

interface Queued { type: number; bytes: Uint8Array }

/**
 * The publishing end of a topic. `publish` follows `send`'s conventions: always takes the message, returns
 * false once messages wait locally (a lossless topic held by a slow subscriber); `drained()` says when to go on.
 */
export class Publisher extends EventEmitter {
  readonly topic: string;
  readonly maxMessageSize: number;
  readonly maxQueued: number;
  private readonly bus: Bus;
  private readonly mapped: Mapped;
  private readonly writer: TopicWriter;
  private readonly packr = new Packr({ useRecords: false });
  private readonly queue: Queued[] = [];
  private pumping = false;
  private closed = false;
  private wakeScheduled = false;
  private waiter: WordWaiter | undefined;
  private drainWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  /** Set when the topic turned out corrupt while queued messages were moved in: every later call throws it. */
  private failure: Error | undefined;

  /** @internal use Bus.publisher */
  constructor(bus: Bus, topic: string, mapped: Mapped, capacity: number, maxSubscribers: number, maxQueued: number) {
    super();
    this.bus = bus;
    this.topic = topic;
    this.mapped = mapped;
    this.maxQueued = maxQueued;
    const engine = mapped.engine;
    // Claim the topic: one publisher at a time; a dead one's claim is taken over, by one compare-and-swap of the
    // whole claim word (host/claim.ts), so two would-be publishers can never both win.
    const words = new BigUint64Array(engine.memory.buffer);
    const claimWord = (mapped.at + TOPIC_HEADER_OFFSET + TOPIC_PUBLISHER_CLAIM_OFFSET) / 8;
    if (!takeClaim(words, claimWord, ownClaim())) {
      const holder = Atomics.load(words, claimWord);
      throw new ShmbusError(ErrorCode.EXISTS, 'the topic already has a publisher', { details: { topic, pid: Number(holder & 0xffffffffn) } });
    }
    new DataView(engine.memory.buffer).setBigUint64(mapped.at + TOPIC_HEADER_OFFSET + TOPIC_PUBLISHER_START_OFFSET, processStartTime(process.pid) ?? 0n, true);
    try {
      this.writer = new TopicWriter(engine, mapped.at, capacity, maxSubscribers);
    } catch (error) {
      dropClaim(words, claimWord, ownClaim());
      throw error;
    }
    this.maxMessageSize = this.writer.maxPayload;
  }

  /** Messages waiting locally. */
  get queued(): number { return this.queue.length; }

  /** Publishes a value (msgpack). */
  publish(value: unknown): boolean {
    this.checkOpen();
    return this.enqueue(RECORD_MSGPACK, this.packr.pack(value));
  }

  /** Publishes raw bytes (copied). */
  publishBytes(bytes: Uint8Array): boolean {
    this.checkOpen();
    if (!(bytes instanceof Uint8Array)) throw new BadArgumentError('publishBytes takes a Uint8Array');
    return this.enqueue(RECORD_BYTES, bytes);
  }

  /** Publishes only if the topic takes it now; false = not taken. */
  tryPublish(value: unknown): boolean {
    this.checkOpen();
    const bytes = this.packr.pack(value);
    if (bytes.length > this.maxMessageSize) throw new MessageTooLargeError(bytes.length, this.maxMessageSize);
    return this.queue.length === 0 && this.write(RECORD_MSGPACK, bytes);
  }

  /** Resolves when no message waits locally. */
  drained(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.queue.length === 0) return Promise.resolve();
    if (this.closed) return Promise.reject(new ClosedError('publisher is closed'));
    return new Promise((resolve, reject) => this.drainWaiters.push({ resolve, reject }));
  }

  private checkOpen(): void {
    if (this.failure) throw this.failure;
    if (this.closed) throw new ClosedError('publisher is closed', { topic: this.topic });
  }

  private enqueue(type: number, bytes: Uint8Array): boolean {
    if (bytes.length > this.maxMessageSize) throw new MessageTooLargeError(bytes.length, this.maxMessageSize);
    if (this.queue.length === 0 && this.write(type, bytes)) return true;
    if (this.queue.length >= this.maxQueued) throw new QueueFullError(this.maxQueued);
    this.queue.push({ type, bytes: new Uint8Array(bytes) });
    void this.pump();
    return false;
  }

  private write(type: number, bytes: Uint8Array): boolean {
    const at = this.writer.claim(bytes.length, type);
    if (at === 0) return false;
    this.mapped.engine.u8.set(bytes, at);
    if (this.writer.commit(bytes.length)) this.scheduleWake();
    return true;
  }

  /**
   * A commit saw sleeping subscribers (and bumped the wake word): wake them once per turn of the event loop,
   * after this turn's burst of publishes.
   */
  private scheduleWake(): void {
    if (this.wakeScheduled) return;
    this.wakeScheduled = true;
    queueMicrotask(() => {
      this.wakeScheduled = false;
      if (!this.closed) wakeWord(this.mapped.engine, this.mapped.at + TOPIC_HEADER_OFFSET + TOPIC_WAKE_OFFSET);
    });
  }

  /** Moves queued messages into the topic; while held, evicts subscribers whose process died. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length && !this.closed) {
        const next = this.queue[0]!;
        if (this.write(next.type, next.bytes)) { this.queue.shift(); continue; }
        if (this.evictDead()) continue;
        if (this.writer.park(next.bytes.length)) {
          // Woken by a subscriber's release, or after LIVENESS_MS to check the slowest one is still alive.
          this.waiter ??= new WordWaiter(this.mapped.engine, this.writer);
          await this.waiter.sleep(LIVENESS_MS, () => this.closed);
          this.writer.unpark();
        }
      }
    } catch (error) {
      // A corrupt topic (a member scribbled it): the publisher is unusable. Nobody awaits pump(), so the error
      // goes to drained() and to every later publish, never to an unhandled rejection.
      this.failure = error instanceof Error ? error : new CorruptError('publisher failed', { cause: String(error) });
      this.queue.length = 0;
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w.reject(this.failure);
      return;
    } finally {
      this.pumping = false;
    }
    if (this.queue.length === 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w.resolve();
      this.emit('drain');
    }
  }

  /** If the subscriber holding us back is dead, evicts it. */
  private evictDead(): boolean {
    const slot = this.writer.slowest();
    if (slot < 0) return false;
    const words = new BigUint64Array(this.mapped.engine.memory.buffer);
    const s = this.mapped.at + TOPIC_HEADER_OFFSET + TOPIC_HEADER_SIZE + slot * TOPIC_SLOT_SIZE;
    // SYNC: pairs with the compare-and-swap in topic_join; evict only succeeds if the slot still holds this claim.
    const claim = Atomics.load(words, (s + SLOT_CLAIM_OFFSET) / 8);
    if (claim === BigInt(CLAIM_FREE) || claimAlive(claim)) return false;
    return this.writer.evict(slot, claim);
  }

  /** Stops publishing: queued messages are delivered first (as long as subscribers read), then subscribers end. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.queue.length) await this.drained().catch(() => {});
    this.closed = true;
    this.waiter?.close();
    this.writer.close();
    // Sleeping subscribers must see the close now, not at their next timeout.
    wakeWord(this.mapped.engine, this.mapped.at + TOPIC_HEADER_OFFSET + TOPIC_WAKE_OFFSET);
    dropClaim(new BigUint64Array(this.mapped.engine.memory.buffer), (this.mapped.at + TOPIC_HEADER_OFFSET + TOPIC_PUBLISHER_CLAIM_OFFSET) / 8, ownClaim());
    this.writer.dispose();
    this.mapped.unmap();
    this.bus._forget(this);
  }
}

// --- subscription ------------------------------------------------------------------------------------------------

/** One subscriber of a topic: an async iterable of messages. `dropped` counts messages lost to lapping (lossy). */
export class Subscription implements AsyncIterable<unknown> {
  readonly topic: string;
  private readonly bus: Bus;
  private readonly fromEarliest: boolean;
  private readonly options: SubscribeOptions;
  // copyBuffers: binary fields of a decoded value must not stay views into the ring, which the publisher reuses.
  private readonly unpackr = new Unpackr({ useRecords: false, copyBuffers: true });
  private reader: TopicReader | undefined;
  private mapped: Mapped | undefined;
  private readonly inbox: unknown[] = [];
  private inboxHead = 0;
  private closed = false;
  private ending = false;
  private lastYield = performance.now();
  private joining: Promise<void> | undefined;
  private spinNs = 20_000;
  private waiter: WordWaiter | undefined;

  /** @internal use Bus.subscribe */
  constructor(bus: Bus, topic: string, fromEarliest: boolean, options: SubscribeOptions) {
    this.bus = bus;
    this.topic = topic;
    this.fromEarliest = fromEarliest;
    this.options = options;
    // Join at once when the topic exists, so 'latest' means "from the subscribe call".
    try { this.tryJoin(); } catch { /* not there yet: next() waits for it */ }
  }

  /** Messages lost to lapping on a lossy topic. */
  get dropped(): number {
    return this.reader?.dropped ?? 0;
  }

  private tryJoin(): boolean {
    if (this.reader) return true;
    let region: Region;
    try {
      region = this.bus._topicRegion(this.topic);
    } catch (error) {
      if (error instanceof ShmbusError && error.code === ErrorCode.NOT_FOUND) return false;
      throw error;
    }
    const engine = this.bus._engine;
    const mapped = Mapped.map(engine, region);
    try {
      // Its creator has not formatted it yet: join on a later try.
      if (unformatted(mapped)) { mapped.unmap(); return false; }
      const info = readSegment(engine, mapped.at, region.size, TOPIC_SEGMENT);
      this.reader = new TopicReader(engine, mapped.at, info.capacity, info.ringCount, this.fromEarliest, process.pid, processStartTime(process.pid) ?? 0n);
      this.mapped = mapped;
      return true;
    } catch (error) {
      mapped.unmap();
      throw error;
    }
  }

  private async join(): Promise<void> {
    const deadline = this.options.timeout !== undefined ? performance.now() + this.options.timeout : Infinity;
    for (let delay = 1; !this.tryJoin(); delay = Math.min(delay * 2, 50)) {
      if (this.closed) return;
      if (this.options.signal?.aborted) throw new ShmbusError(ErrorCode.CLOSED, 'subscription aborted', { cause: this.options.signal.reason });
      if (performance.now() > deadline) throw new TimeoutError('topic did not appear', { topic: this.topic, timeout: this.options.timeout });
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  private fill(): number {
    const reader = this.reader!;
    const engine = this.bus._engine;
    let n: number;
    try {
      n = reader.read();
    } catch (error) {
      // Evicted (judged dead): the publisher no longer spared our records, so what we read may be gone. Say so.
      if (!reader.member()) throw this.evicted();
      throw error;
    }
    if (n === 0) return 0;
    const view = new DataView(engine.memory.buffer);
    const u8 = engine.u8;
    const start = this.inbox.length;
    const seqs: number[] = [];
    // Lossy: records the publisher reclaimed since the read are not worth decoding (counted as torn below).
    const reclaimed = reader.oldestSeq();
    for (let i = 0; i < n; i++) {
      const e = reader.batch + i * BC_BATCH_ENTRY_SIZE;
      const addr = view.getUint32(e, true), length = view.getUint32(e + 4, true), type = view.getUint32(e + 8, true);
      const seq = view.getUint32(e + 12, true);
      seqs.push(seq);
      if (((seq - reclaimed) | 0) < 0) { this.inbox.push(TORN); continue; }
      try {
        this.inbox.push(type === RECORD_MSGPACK ? decodeMsgpack(this.unpackr, u8.subarray(addr, addr + length)) : u8.slice(addr, addr + length));
      } catch {
        this.inbox.push(TORN); // a lossy record overwritten mid-read decodes as garbage: checked below
      }
    }
    // Lossy: records older than the oldest one still there may have been overwritten while we read them.
    const oldest = reader.oldestSeq();
    let torn = 0;
    let undecodable = -1;
    for (let i = 0; i < n; i++) {
      if (((seqs[i]! - oldest) | 0) < 0) { this.inbox[start + i] = TORN; torn++; }
      else if (this.inbox[start + i] === TORN && undecodable < 0) undecodable = seqs[i]!;
    }
    if (torn) reader.addDropped(torn);
    if (reader.release()) this.wakePublisher();
    // Intact (not overwritten while we read it) and still not msgpack: the publisher wrote garbage.
    if (undecodable >= 0) throw new CorruptError('topic record does not decode', { topic: this.topic, seq: undecodable });
    return n;
  }

  private async next(): Promise<IteratorResult<unknown>> {
    if (!this.reader) {
      this.joining ??= this.join();
      await this.joining;
    }
    for (;;) {
      while (this.inboxHead < this.inbox.length) {
        const value = this.inbox[this.inboxHead];
        this.inbox[this.inboxHead++] = undefined;
        if (this.inboxHead === this.inbox.length) { this.inbox.length = 0; this.inboxHead = 0; }
        if (value !== TORN) return { value, done: false };
      }
      if (this.closed || this.ending) return { value: undefined, done: true };
      const now = performance.now();
      if (now - this.lastYield > YIELD_MS) { await nextTurn(); this.lastYield = performance.now(); continue; }
      const reader = this.reader!;
      if (this.fill() > 0) continue;
      if (!reader.member()) throw this.evicted();
      if (reader.publisherClosed()) {
        if (reader.pending() > 0) continue;
        this.ending = true;
        continue;
      }
      if (this.spin(reader)) continue;
      if (reader.park()) {
        await this.sleep(reader);
        reader.unpark();
      }
    }
  }

  /**
   * Busy-polls briefly before parking, like a channel's adaptive spin: the budget doubles when a record came
   * while spinning and halves when none did, between 1 µs and 100 µs.
   */
  private spin(reader: TopicReader): boolean {
    const start = performance.now();
    for (let i = 1; ; i++) {
      if (reader.pending() > 0 || reader.publisherClosed()) {
        if (this.spinNs < 100_000) this.spinNs *= 2;
        return true;
      }
      if ((i & 31) === 0 && (performance.now() - start) * 1e6 > this.spinNs) break;
    }
    if (this.spinNs > 1000) this.spinNs >>= 1;
    return false;
  }

  /**
   * Zero-copy reading: hands every waiting record to `handler` in place (valid during the call) and returns how
   * many; 0 when none wait or the subscription has not joined yet. On a lossy topic a record may be overwritten
   * while the handler reads it; such records are counted in `dropped` afterwards: use the iterator for
   * validated copies.
   */
  poll(handler: (memory: Uint8Array, offset: number, length: number, type: number) => void): number {
    if (this.closed || (!this.reader && !this.tryJoin())) return 0;
    const reader = this.reader!;
    const engine = this.bus._engine;
    const n = reader.read();
    if (n === 0) return 0;
    const u32 = engine.u32, u8 = engine.u8;
    const batch = reader.batch >>> 2;
    let thrown: unknown;
    let e = batch;
    for (let i = 0; i < n; i++, e += BC_BATCH_ENTRY_SIZE >>> 2) {
      // Every record is handed over (and the batch released) even if a handler throws; the first error is rethrown.
      try {
        handler(u8, u32[e]!, u32[e + 1]!, u32[e + 2]!);
      } catch (error) {
        thrown ??= error;
      }
    }
    // A handler closed the subscription: its reader and mapping are gone, nothing is left to release.
    if (this.closed) {
      if (thrown !== undefined) throw thrown;
      return n;
    }
    const oldest = reader.oldestSeq();
    const first = u32[batch + 3]!;
    if (((first - oldest) | 0) < 0) reader.addDropped(Math.min(n, (oldest - first) >>> 0));
    if (reader.release()) this.wakePublisher();
    if (thrown !== undefined) throw thrown;
    return n;
  }

  private evicted(): ShmbusError {
    return new ShmbusError(ErrorCode.PEER_DEAD, 'evicted from the topic (its publisher judged this process dead)', { details: { topic: this.topic } });
  }

  /** Resolves when records wait (or the publisher closed); spins briefly, then sleeps. */
  async readable(): Promise<void> {
    if (!this.reader) {
      this.joining ??= this.join();
      await this.joining;
    }
    const reader = this.reader;
    if (!reader || this.spin(reader)) return;
    if (reader.park()) {
      await this.sleep(reader);
      reader.unpark();
    }
  }

  /** True once the publisher closed and every record was read. */
  get ended(): boolean {
    return !!this.reader && this.reader.publisherClosed() && this.reader.pending() === 0;
  }

  /** Sleeps until the publisher publishes (or a second passes: then the caller rechecks the topic's state). */
  private sleep(reader: TopicReader): Promise<void> {
    this.waiter ??= new WordWaiter(this.bus._engine, reader);
    return this.waiter.sleep(1000, () => this.closed);
  }

  /** Our release freed room for a parked publisher: wake it. */
  private wakePublisher(): void {
    wakeWord(this.bus._engine, this.mapped!.at + TOPIC_HEADER_OFFSET + TOPIC_SPACE_WAKE_OFFSET);
  }

  /** The next message, or undefined at the end. */
  async receive(): Promise<unknown> {
    const r = await this.next();
    return r.done ? undefined : r.value;
  }

  [Symbol.asyncIterator](): AsyncIterator<unknown> {
    return {
      next: () => this.next(),
      return: async () => { await this.close(); return { value: undefined, done: true }; },
    };
  }

  /** Leaves the topic. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.waiter?.close();
    this.reader?.dispose();
    this.mapped?.unmap();
    this.reader = undefined;
    this.mapped = undefined;
    this.bus._forget(this);
  }
}

const TORN = Symbol('torn');
