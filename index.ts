/**
 * shmbus: message passing between Node.js processes through rings in shared memory, and over the classic kernel
 * mechanisms behind the same API, chosen by URL.
 *
 *   const server = await listen('shm://orders');
 *   for await (const conn of server) for await (const msg of conn) conn.send({ ok: true });
 *
 *   const conn = await connect('shm://orders?size=4MiB');
 *   if (!conn.send({ id: 1 })) await conn.drained();
 */
import { registerTransport, transportFor, type Connection, type ConnectionListener, type ConnectOptions, type ListenOptions } from './transports/contract.js';
import { shmTransport, type Listener, type Channel } from './transports/shm/index.js';
import { allTransports } from './transports/all.js';
import type { RequestHandler } from './host/rpc.js';
import { trace, traceError } from './host/trace.js';

registerTransport(shmTransport);
for (const transport of allTransports) registerTransport(transport);

/** A shared-memory URL: its connections are `Channel`s, with zero-copy `claim` and `poll`. */
export type ShmUrl = `shm://${string}` | `sysv://${string}` | `file://${string}`;

/** Listens on an endpoint URL (shm://, sysv://, file://, ...): an async iterable of incoming connections. */
export function listen(url: ShmUrl, options?: ListenOptions): Promise<Listener>;
export function listen(url: string, options?: ListenOptions): Promise<ConnectionListener>;
export async function listen(url: string, options?: ListenOptions): Promise<ConnectionListener> {
  return transportFor(url).listen(url, options);
}

/** Connects to an endpoint URL. */
export function connect(url: ShmUrl, options?: ConnectOptions): Promise<Channel>;
export function connect(url: string, options?: ConnectOptions): Promise<Connection>;
export async function connect(url: string, options?: ConnectOptions): Promise<Connection> {
  try {
    return await transportFor(url).connect(url, options);
  } catch (error) {
    if (trace.enabled) trace('connect %s: failed: %s', url, traceError(error));
    throw error;
  }
}

/**
 * Answers every request on every connection of `listener` with `handler` (see Channel.handle). Resolves when the
 * listener closes.
 */
export async function serve(listener: AsyncIterable<Connection>, handler: RequestHandler): Promise<void> {
  for await (const conn of listener) conn.handle(handler);
}

export { Listener, Channel, Claim, ClaimBatch, type RecordHandler } from './transports/shm/index.js';
export { Bus, Publisher, Subscription, type BusOptions, type PublisherOptions, type SubscribeOptions, type PollHandler, type TopicInfo } from './bus/index.js';
export type { RequestHandler, RequestOptions } from './host/rpc.js';
export { spawnWithPipe, type PipeChild, type PipeSpawnOptions } from './transports/pipe.js';
export { registerTransport, transportFor, transports, type Transport, type Connection, type ConnectionListener, type ConnectOptions, type ListenOptions } from './transports/contract.js';
export { Region, type RegionKind, type CreateOptions } from './host/region.js';
export { parseShmUrl, parseSize, type ShmEndpoint, type WakeMode } from './host/url.js';
export * from './host/errors.js';
export { RECORD_BYTES, RECORD_MSGPACK, LAYOUT_VERSION } from './assembly/layout.js';
export * from './state/index.js';
export * from './workers/index.js';
export * from './plugins/index.js';
export type { Bridge, BridgeOptions, BridgeStats, Credentials, TopicSpec, TopicStats, Service } from './bridge/index.js';

/**
 * Bridges the topics and request/reply of the bus at `busUrl` to the NATS server at `natsUrl` (see bridge/index.ts
 * and docs/scale-out.md). The NATS client is loaded on first use, so programs that never bridge do not load it.
 */
export async function bridge(...args: Parameters<typeof import('./bridge/index.js').bridge>): Promise<import('./bridge/index.js').Bridge> {
  return (await import('./bridge/index.js')).bridge(...args);
}
