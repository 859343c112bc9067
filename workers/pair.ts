/**
 * A channel between a parent and a worker it starts, over a segment both already share: no listener, no endpoint
 * name, no handshake. The parent creates a sealed memfd (two rings, formatted) and a Unix socketpair; the worker
 * gets its ends as inherited descriptors (a child process) or by number (a thread: same fd table), checks the
 * segment like any peer's (sealed, ours, of the size announced) and maps it into its own wasm memory.
 *
 * The socketpair is the control connection a Channel expects: its end-of-file is how each side learns the other
 * died, and with the default wake mode (`adaptive`: spin briefly, then park) a parked side is rung with a
 * doorbell byte on it, read through the event loop. Wake modes that need nothing from the peer (`doorbell`,
 * `futex`: the ring's own words) work too; the others (`sem`, `signal`, `mq`, `sysvsem`) name a kernel object the
 * peer makes, which would need the handshake this pair does without.
 *
 * Both sides close their segment descriptor as soon as the segment is mapped (the mapping keeps the memory), so a
 * worker holds no descriptor of it and a grandchild can inherit none.
 */
import net from 'node:net';
import { CHANNEL_RING_COUNT, PAIR_CLAIM_SLOTS, RING_MAX_CAPACITY, RING_MIN_CAPACITY, pairClaimsOffset, segmentBytes } from '../assembly/layout.js';
import { Region } from '../host/region.js';
import { Channel } from '../transports/shm/channel.js';
import { checkPeerSegment, formatChannelSegment, mapRegion, openRings, unmap, type Mapping } from '../transports/shm/handshake.js';
import { parseShmUrl, DEFAULT_RING_SIZE, parseSize } from '../host/url.js';
import { ownIdentity } from '../host/sys/socket.js';
import { mechanismFor } from '../host/wake/index.js';
import { BadArgumentError } from '../host/errors.js';

/** Wake modes a parent/worker pair can use without exchanging anything (see the file comment). */
export const PAIR_WAKE_MODES = ['adaptive', 'spin', 'doorbell', 'futex'] as const;
export type PairWakeMode = (typeof PAIR_WAKE_MODES)[number];

/** The checked geometry of a pair's segment. */
export interface PairGeometry {
  /** Ring data bytes per direction (a power of two). */
  capacity: number;
  /** Bytes of the whole segment. */
  size: number;
  wake: PairWakeMode;
}

/** Checks `ringSize` (bytes or a size text such as '1MiB'; default 4 MiB) and `wake`. */
export function pairGeometry(ringSize: number | string | undefined, wake: string | undefined): PairGeometry {
  const capacity = ringSize === undefined ? DEFAULT_RING_SIZE : typeof ringSize === 'string' ? parseSize(ringSize) : ringSize;
  if (typeof capacity !== 'number' || !Number.isInteger(capacity) || capacity < RING_MIN_CAPACITY || capacity > RING_MAX_CAPACITY || (capacity & (capacity - 1)) !== 0) {
    throw new BadArgumentError('ringSize must be a power of two', { ringSize, min: RING_MIN_CAPACITY, max: RING_MAX_CAPACITY });
  }
  const mode = wake ?? 'adaptive';
  if (!(PAIR_WAKE_MODES as readonly string[]).includes(mode)) {
    throw new BadArgumentError('wake mode not available between a parent and its worker', { wake: mode, supported: PAIR_WAKE_MODES.join(',') });
  }
  return { capacity, size: segmentBytes(CHANNEL_RING_COUNT, capacity), wake: mode as PairWakeMode };
}


/** The parent's half before the worker exists: the segment (formatted, mapped) and the socketpair. */
export interface ParentPair {
  geometry: PairGeometry;
  /** The memfd, open until `release()`: hand it to the worker first. */
  region: Region;
  mapping: Mapping;
  /** Our end of the socketpair and the worker's. */
  parentFd: number;
  workerFd: number;
  /** The task claim table (a Pool's pairs only, see below). */
  claims?: PairClaims;
  /** A sync-idle pair (see syncIdleAvailable). */
  syncIdle?: boolean;
}

/**
 * The task claim table of a Pool's pair (assembly/layout.ts, "Task claims"), through a second mapping of the
 * segment that the channel's close does not take away: the parent still reads the table after its channel to a
 * dead worker has ended (which of its tasks had started). `release()` unmaps it (idempotent).
 */
export interface PairClaims {
  readonly view: Int32Array;
  release(): void;
}

function mapClaims(region: Region, capacity: number): PairClaims {
  // mapRegion closes the region when it fails: a caller's first mapping keeps working (it holds no descriptor).
  const m = mapRegion(region);
  const view = new Int32Array(m.mapped.engine.memory.buffer, m.mapped.at + pairClaimsOffset(capacity), PAIR_CLAIM_SLOTS);
  let released = false;
  return {
    view,
    release: () => {
      if (released) return;
      released = true;
      unmap(m);
    },
  };
}

const workerClaims = new WeakMap<Channel, PairClaims>();

/** The claim table of the worker's channel, when its parent (a Pool) asked for one. */
export function pairClaims(channel: Channel): PairClaims | undefined {
  return workerClaims.get(channel);
}

/**
 * Creates the segment (a sealed memfd, mode 0600, pages reserved) and formats it. The caller passes
 * `region.fd` and `workerFd` to the worker, then calls `openParentChannel`; on any failure before that, `abandon`.
 */
export function createParentPair(geometry: PairGeometry, fds: [number, number], claims = false, syncIdle = false): ParentPair {
  const region = Region.createMemfd('shmbus.worker', { size: geometry.size, mode: 0o600 });
  // mapRegion picks an engine with room; on failure it closes the region too.
  const mapping = mapRegion(region);
  try {
    formatChannelSegment(mapping, geometry.capacity);
    return { geometry, region, mapping, parentFd: fds[0], workerFd: fds[1], claims: claims ? mapClaims(region, geometry.capacity) : undefined, syncIdle };
  } catch (error) {
    unmap(mapping);
    throw error;
  }
}

/** Undoes createParentPair when the worker could not be started. */
export function abandonParentPair(pair: ParentPair, closeFd: (fd: number) => void): void {
  try { pair.claims?.release(); } catch { /* report the first failure */ }
  try { unmap(pair.mapping); } catch { /* idem */ }
  for (const fd of [pair.parentFd, pair.workerFd]) { try { closeFd(fd); } catch { /* idem */ } }
}

function endpointFor(geometry: PairGeometry, label: string) {
  return parseShmUrl(`shm://${label}?size=${geometry.capacity}&wake=${geometry.wake}`);
}

/**
 * A sync-idle pair (a Pool's worker under wake=doorbell, see pool-worker.ts): the worker sleeps on a futex and
 * the parent rings it with FUTEX_WAKE, so that an idle worker can block its own thread on the ring word
 * (Channel.waitSync) and be woken by the parent's commit with one system call, instead of a doorbell byte read
 * through its event loop. The parent still parks on the doorbell (its event loop must run) and the worker rings
 * it so. Needs futex_waitv (Linux ≥ 5.16): `syncIdleAvailable()` says whether this kernel has it.
 */
export function syncIdleAvailable(): boolean {
  try {
    mechanismFor('futex', 'shm://sync-idle').params();
    return true;
  } catch {
    return false;
  }
}

function makeChannel(m: Mapping, geometry: PairGeometry, socketFd: number, side: 'parent' | 'worker', peerPid: number, label: string, syncIdle = false): Channel {
  // The parent's end is the listener's of a shm:// connection, the worker's the connector's (rings that never grow).
  const { tx, rx } = openRings(m, geometry.capacity, side === 'parent' ? 'listener' : 'connector');
  const endpoint = endpointFor(geometry, label);
  const mechanism = mechanismFor(geometry.wake, endpoint.url);
  // Sync-idle: the worker's end sleeps on the futex (and the parent's rings it so); the parent's sleeps as asked.
  const futex = syncIdle ? mechanismFor('futex', endpoint.url) : mechanism;
  const mine = side === 'worker' ? futex : mechanism;
  const peer = side === 'worker' ? mechanism : futex;
  const { uid, gid } = ownIdentity();
  const socket = new net.Socket({ fd: socketFd, readable: true, writable: true, allowHalfOpen: false });
  socket.pause();
  return new Channel({
    ...m, tx, rx, socket, endpoint, pendingBytes: Buffer.alloc(0), side,
    // Both ends run this same code (spawn started the worker from this package), so objects go with msgpackr
    // record structures, as a shm:// peer that says `records: true` in its handshake gets them.
    peerRecords: true,
    wake: { mine, peer, peerParams: {}, myParams: mine.params(), peerCred: { pid: peerPid, uid, gid } },
  });
}

/** The parent's channel. It works at once (the worker's side may not exist yet: what is sent waits in the
 * ring); the segment's fd and the worker's socket end stay open until `releaseWorkerEnds`. */
export function openParentChannel(pair: ParentPair, peerPid: number, label: string): Channel {
  return makeChannel(pair.mapping, pair.geometry, pair.parentFd, 'parent', peerPid, label, pair.syncIdle === true);
}

/** Closes the parent's copies of what the worker took (its socket end, the segment's fd): once the worker holds
 * its own, or once it is gone. Idempotent. Until then the worker's death would not show as end-of-file. */
export function releaseWorkerEnds(pair: ParentPair, closeFd: (fd: number) => void): void {
  pair.region.close();
  if (pair.workerFd >= 0) {
    const fd = pair.workerFd;
    pair.workerFd = -1;
    closeFd(fd);
  }
}

/**
 * The worker's channel: checks the segment descriptor like any peer's (a memfd of our uid, sealed against
 * resizing, of the announced size; Region.fromPeerFd takes it over), maps it, reads its header, closes the fd.
 */
export function openWorkerChannel(geometry: PairGeometry, segmentFd: number, socketFd: number, parentPid: number, label: string, claims = false, syncIdle = false): Channel {
  const region = Region.fromPeerFd(segmentFd, 'memfd', { size: geometry.size, uid: ownIdentity().uid });
  // mapRegion picks an engine with room; on failure it closes the region too.
  const mapping = mapRegion(region);
  let table: PairClaims | undefined;
  try {
    // The worker keeps its claim table mapped for its whole life (the table outlives the channel on purpose).
    if (claims) table = mapClaims(region, geometry.capacity);
    region.close();
    checkPeerSegment(mapping, geometry.capacity);
    const channel = makeChannel(mapping, geometry, socketFd, 'worker', parentPid, label, syncIdle);
    if (table) workerClaims.set(channel, table);
    return channel;
  } catch (error) {
    table?.release();
    unmap(mapping);
    throw error;
  }
}
