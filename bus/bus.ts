/**
 * The Bus: pub/sub on one machine. A Bus is a namespace of topics, each a broadcast ring in its own segment, plus a
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
import {
  REGISTRY_MEMBERS, REGISTRY_TOPICS, TOPIC_MAX_SUBSCRIBERS, RING_MIN_CAPACITY, RING_MAX_CAPACITY, registryBytes,
  topicBytes,
} from '../assembly/layout.js';
import { getEngine, type Engine } from '../host/engine.js';
import type { Region } from '../host/region.js';
import { claimAlive } from '../host/claim.js';
import { readSegment, writeHeader, publishVersion, REGISTRY_SEGMENT, TOPIC_SEGMENT } from '../host/segment.js';
import { formatTopic, readTopicState, type Policy } from '../host/topic.js';
import { parseSize } from '../host/url.js';
import { processStartTime } from '../host/sys/proc.js';
import { BadArgumentError, ClosedError, CorruptError, ErrorCode, ShmbusError } from '../host/errors.js';
import { attachExisting, checkTopicName, createOrAttach, naming, type BusOptions, type Naming } from './naming.js';
import { Mapped, readyHeader } from '../host/mapped.js';
import { joinMembers, leaveMembers, liveMembers, readEntries, registerTopic } from './registry.js';
import { Publisher, type PublisherOptions } from './publisher.js';
import { Subscription, type SubscribeOptions } from './subscription.js';

const DEFAULT_CAPACITY = 1 << 20;
const DEFAULT_MAX_SUBSCRIBERS = 64;
const DEFAULT_MAX_QUEUED = 65536;
/** Looks, 5 ms apart, at a registry another process created but has not sized yet, before calling it corrupt. */
const UNSIZED_TRIES = 200;

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
    let region = createOrAttach(names, names.registry, size);
    // Another process created the registry and has not sized it yet (shm_open, then ftruncate): wait for that.
    for (let i = 0; !region.created && region.size === 0; i++) {
      region.close();
      if (i === UNSIZED_TRIES) throw new CorruptError('the bus registry stays empty (its creator died while making it?)', { url });
      await new Promise((resolve) => setTimeout(resolve, 5));
      region = createOrAttach(names, names.registry, size);
    }
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
    if (capacity === undefined || !Number.isInteger(capacity) || (capacity & (capacity - 1)) !== 0 || capacity < RING_MIN_CAPACITY || capacity > RING_MAX_CAPACITY) {
      throw new BadArgumentError('capacity must be a power of two from 1 KiB to 256 MiB', { capacity: options.capacity });
    }
    const policy = options.policy ?? 'lossless';
    if (policy !== 'lossless' && policy !== 'lossy') throw new BadArgumentError('policy is lossless or lossy', { policy });
    const history = options.history ?? 0;
    if (!Number.isInteger(history) || history < 0) throw new BadArgumentError('history must be a non-negative integer', { history });
    const maxSubscribers = options.maxSubscribers ?? DEFAULT_MAX_SUBSCRIBERS;
    if (!Number.isInteger(maxSubscribers) || maxSubscribers < 1 || maxSubscribers > TOPIC_MAX_SUBSCRIBERS) throw new BadArgumentError(`maxSubscribers must be 1 to ${TOPIC_MAX_SUBSCRIBERS}`, { maxSubscribers });
    const geometry = { capacity, policy, history, maxSubscribers };
    const size = topicBytes(maxSubscribers, capacity);
    const region = createOrAttach(this.names, this.names.topic(name), size);
    if (!region.created && region.size === 0) {
      // Another publisher created the topic this moment and is sizing it (shm_open, then ftruncate).
      region.close();
      throw new ShmbusError(ErrorCode.EXISTS, 'the topic already has a publisher (it is creating the topic now)', { details: { topic: name } });
    }
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

