/**
 * shmbus: message passing between Node.js processes through rings in shared memory.
 *
 *   const server = await listen('shm://orders');
 *   for await (const conn of server) for await (const msg of conn) conn.send({ ok: true });
 *
 *   const conn = await connect('shm://orders?size=4MiB');
 *   if (!conn.send({ id: 1 })) await conn.drained();
 */
export { listen, connect, Listener, type ConnectOptions, type ListenOptions } from './shm.js';
export { Channel, Claim, type RecordHandler } from './channel.js';
export { Region, type RegionKind, type CreateOptions } from './region.js';
export { parseShmUrl, parseSize, type ShmEndpoint, type WakeMode } from './url.js';
export * from './errors.js';
export { RECORD_BYTES, RECORD_MSGPACK, LAYOUT_VERSION } from '../assembly/layout.js';
