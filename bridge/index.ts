/**
 * A bridge between a local bus and NATS: the same topics and request/reply reach other hosts.
 *
 *   const link = await bridge('shm://market', 'nats://127.0.0.1:4222', { export: ['ticks'], import: ['orders'] });
 *   await link.serve('quote', (q) => price(q));                 // on one host
 *   const px = await link.request('quote', { sym: 'ACME' }, { timeout: 1000 });   // on another
 *
 * Exported topics are published to `<prefix>.<topic>`, imported subjects into local topics; lossy topics ride core
 * NATS, lossless ones a JetStream stream (bridge/export.ts, bridge/import.ts say how nothing is lost or doubled).
 * See docs/scale-out.md.
 */
import { Bus, type BusOptions } from '../bus/index.js';
import type { RequestHandler, RequestOptions } from '../host/rpc.js';
import { BadArgumentError, ClosedError } from '../host/errors.js';
import { Link, type Credentials } from './connection.js';
import { Exporter } from './export.js';
import { Importer } from './import.js';
import { checkPrefix, DEFAULT_PREFIX, originOf } from './naming.js';
import { request, serve, settle, type RpcCounters, type Service } from './rpc.js';
import { normalizeSpec, type TopicSpec, type TopicStats } from './topic.js';

export type { Credentials } from './connection.js';
export type { TopicSpec, TopicStats } from './topic.js';
export type { Service } from './rpc.js';

export interface BridgeOptions {
  /** Local topics published to NATS (names, or { topic, policy }). */
  export?: (string | TopicSpec)[];
  /** Subjects published into local topics; the bridge becomes each topic's publisher (options as Bus.publisher's). */
  import?: (string | TopicSpec)[];
  /** Subject prefix: topic `t` is subject `<prefix>.t`, service `s` is `<prefix>.s`. Default 'shmbus'. */
  prefix?: string;
  /** How to authenticate to nats-server (see Credentials). */
  credentials?: Credentials;
  /**
   * This bridge's stable identity (letters, digits, _ and -): it names the durable positions a restarted bridge
   * resumes from and tags what it exports. Default: derived from the host name and the bus URL.
   */
  name?: string;
  /** Options for opening the bus (Bus.open). */
  bus?: BusOptions;
  /** Aborts waiting for nats-server during start. */
  signal?: AbortSignal;
}

/** Totals over every bridged topic, the per-topic counters, and the connection's state. */
export interface BridgeStats {
  forwarded: number;
  dropped: number;
  redelivered: number;
  lag: number;
  rejected: number;
  connected: boolean;
  reconnects: number;
  topics: TopicStats[];
  requests: RpcCounters;
}

/**
 * Connects `busUrl` to the NATS server(s) at `natsUrl` (`nats://host:4222`, comma-separated for a cluster).
 * Resolves once every topic is bridged: exports subscribed, imports' subscriptions or consumers in place. Waits for
 * nats-server (reconnecting with back-off) if it is not there yet.
 */
export async function bridge(busUrl: string, natsUrl: string, options: BridgeOptions = {}): Promise<Bridge> {
  const prefix = checkPrefix(options.prefix ?? DEFAULT_PREFIX);
  if (!Array.isArray(options.export ?? []) || !Array.isArray(options.import ?? [])) throw new BadArgumentError('export and import are arrays of topics');
  const exports = (options.export ?? []).map((e) => normalizeSpec(e, 'export'));
  const imports = (options.import ?? []).map((e) => normalizeSpec(e, 'import'));
  const names = [...exports, ...imports].map((s) => s.topic);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice !== undefined) {
    // A topic the bridge imports has the bridge as its publisher: exporting it too would only send imports back.
    throw new BadArgumentError('a topic may be bridged once (exporting a topic the bridge imports would echo it)', { topic: twice });
  }
  const origin = originOf(busUrl, options.name);
  const bus = await Bus.open(busUrl, options.bus);
  let link: Link | undefined;
  const exporters: Exporter[] = [];
  const importers: Importer[] = [];
  try {
    link = await Link.open(natsUrl, prefix, options.credentials, options.signal);
    for (const spec of exports) exporters.push(new Exporter(link, bus, spec, origin));
    for (const spec of imports) importers.push(new Importer(link, bus, spec, origin));
    await Promise.all([...exporters.map((e) => e.start()), ...importers.map((i) => i.start())]);
  } catch (error) {
    await Promise.all([...exporters.map((e) => e.close(0)), ...importers.map((i) => i.close())]).catch(() => {});
    await link?.close();
    await bus.close();
    throw error;
  }
  return new Bridge(bus, link, exporters, importers, origin);
}

/** A running bridge (see bridge()). Its state, errors included, is in stats(). */
export class Bridge {
  /** This bridge's identity (BridgeOptions.name or the derived one). */
  readonly name: string;
  private readonly services = new Set<Service>();
  private readonly rpc: RpcCounters = { served: 0, failed: 0, requested: 0 };
  private closed = false;

  /** @internal use bridge() */
  constructor(
    private readonly bus: Bus,
    private readonly link: Link,
    private readonly exporters: Exporter[],
    private readonly importers: Importer[],
    name: string,
  ) {
    this.name = name;
  }

  /** The prefix subjects start with. */
  get prefix(): string { return this.link.prefix; }

  /**
   * Answers requests for `name` (subject `<prefix>.<name>`) with `handler`, as one of a queue group: with
   * responders on several hosts each request is handled once. Resolves once nats-server routes requests here.
   */
  async serve(name: string, handler: RequestHandler): Promise<Service> {
    this.checkOpen();
    const service = serve(this.link.nc, this.link.prefix, name, handler, this.rpc);
    this.services.add(service);
    await settle(this.link.nc).catch(() => {});
    return { name: service.name, subject: service.subject, close: async () => { this.services.delete(service); await service.close(); } };
  }

  /**
   * Asks whoever serves `name`, on any host. Rejects with ERR_SHMBUS_TIMEOUT after `timeout` ms, ERR_SHMBUS_CLOSED
   * when `signal` aborts, the handler's error (its shmbus code, else ERR_SHMBUS_REMOTE), or ERR_SHMBUS_NOT_FOUND
   * when no service answers on the subject.
   */
  async request(name: string, value: unknown, options: RequestOptions = {}): Promise<unknown> {
    this.checkOpen();
    return request(this.link.nc, this.link.prefix, name, value, options, this.rpc);
  }

  stats(): BridgeStats {
    const topics = [...this.exporters, ...this.importers].map((t) => ({ ...t.stats }));
    const sum = (k: 'forwarded' | 'dropped' | 'redelivered' | 'lag' | 'rejected') => topics.reduce((n, t) => n + t[k], 0);
    return {
      forwarded: sum('forwarded'), dropped: sum('dropped'), redelivered: sum('redelivered'), lag: sum('lag'), rejected: sum('rejected'),
      connected: this.link.up && !this.link.nc.isClosed(), reconnects: this.link.reconnects,
      topics, requests: { ...this.rpc },
    };
  }

  private checkOpen(): void {
    if (this.closed) throw new ClosedError('bridge is closed');
  }

  /**
   * Stops bridging: exports wait briefly for what is in flight to be acknowledged, services stop, the connection
   * drains and the bus is closed.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of [...this.services]) await s.close();
    await Promise.all(this.exporters.map((e) => e.close()));
    await Promise.all(this.importers.map((i) => i.close()));
    await this.link.close();
    await this.bus.close();
  }
}
