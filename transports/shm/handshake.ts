/**
 * What both sides of the shm handshake share (transports/shm/listener.ts, transports/shm/connect.ts): the one
 * deadline, the test hook that stops at a step, mapping a segment into the engine, and the wake lines.
 */
import fs from 'node:fs';
import { threadId } from 'node:worker_threads';
import { engineFor, type Engine } from '../../host/engine.js';
import {
  BATCH_AREA_SIZE, CHANNEL_RING_COUNT, LAYOUT_VERSION_MAJOR, RING_HEADER_SIZE, RING_MAX_CAPACITY, RING_MIN_CAPACITY, RING_TO_CONNECTOR,
  RING_TO_LISTENER, ringOffset, segmentBytes,
} from '../../assembly/layout.js';
import { formatSegment, readSegment } from '../../host/segment.js';
import { processStartTime } from '../../host/sys/proc.js';
import { populateWrite, removePages } from '../../host/sys/shm.js';
import { RingEnd } from '../../host/ring.js';
import { Mapped } from '../../host/mapped.js';
import { Region } from '../../host/region.js';
import { type ShmEndpoint } from '../../host/url.js';
import type { PeerCredentials } from '../../host/peer.js';
import { mechanismFor } from '../../host/wake/index.js';
import { BadArgumentError, CorruptError, HandshakeError, peerText, TimeoutError } from '../../host/errors.js';
import { MAX_MESSAGE_OPTION } from '../../host/url.js';
import { type WakeParts } from './channel.js';

export const DEFAULT_TIMEOUT = 5000;

/**
 * The largest rings of a connection whose listener URL gives no `size`: 4 MiB each way; a message larger than a
 * record goes as fragments (assembly/layout.ts RECORD_FRAGMENT). Rings start with INITIAL_RING_SIZE data bytes
 * (an idle connection reserves 132 KiB of /dev/shm) and grow to this when a message needs it: 1 MiB messages
 * measured about half as fast over 64 KiB rings that never grow (`npm run bench:everyday -- --query ...`).
 */
export const DEFAULT_CHANNEL_RING_SIZE = 4 * 1024 * 1024;
/** The largest message a side takes by default when its URL gives no `size` (an explicit `size` keeps messages
 * within one record, as before). */
export const DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024;
/** What a side may announce at most as its largest message. */
const MAX_MESSAGE_LIMIT = MAX_MESSAGE_OPTION;

/** The largest message this side takes, as its handshake line says it: its URL's `maxMessage`, else 16 MiB
 * without `size` and one record (0) with it. */
export function ownMaxMessage(endpoint: ShmEndpoint): number {
  return endpoint.maxMessage ?? (endpoint.sizeGiven ? 0 : DEFAULT_MAX_MESSAGE);
}

/** The largest message of a connection: the smaller of both sides' (a bad or missing value from the peer counts
 * as 0), never below what one record of the ring holds. The same on both sides. */
export function agreedMaxMessage(mine: number, theirs: unknown, recordMax: number): number {
  const peer = typeof theirs === 'number' && Number.isSafeInteger(theirs) && theirs >= 0 ? Math.min(theirs, MAX_MESSAGE_LIMIT) : 0;
  return Math.max(recordMax, Math.min(mine, peer));
}

/** The kind of segment each scheme hands over. */
export const KIND = { shm: 'memfd', sysv: 'sysv', file: 'file' } as const;

/**
 * Test hook: with SHMBUS_TEST_STOP_AT=<side>:<step> in the environment, the handshake prints `step <side>:<step>`
 * on stdout when it reaches that step and goes no further, so a test can SIGKILL the process at exactly that
 * point. Read once; without it the hook costs one comparison per step.
 */
export const STOP_AT = process.env.SHMBUS_TEST_STOP_AT;
export function reached(side: 'listener' | 'connector', step: number): Promise<void> | undefined {
  if (STOP_AT === undefined || STOP_AT !== `${side}:${step}`) return undefined;
  fs.writeSync(1, `step ${side}:${step}\n`);
  return new Promise(() => {});
}

/** Milliseconds left until `deadline`, or a TIMEOUT error once it passed: one deadline covers every step. */
export function left(deadline: number, timeoutMs: number): number {
  const ms = deadline - Date.now();
  if (ms <= 0) throw new TimeoutError('handshake timed out', { timeoutMs });
  return ms;
}

/** A segment mapped into a window of an engine (host/mapped.ts: its engine, region and window) and, once opened,
 * this side's ring ends; undone in reverse order on any failure (unmap). */
export interface Mapping { mapped: Mapped; tx?: RingEnd; rx?: RingEnd }

/** Ring ends each connection opens on each side (tx and rx). */
const RING_ENDS = 2;

/**
 * Maps `region` into a fresh window of an engine with room for it, its ring ends and one batch area
 * (host/engine.ts engineFor). On failure the region is closed too (removed if we own it), so a caller never has
 * to remember it: nothing made for a failed setup outlives it.
 */
export function mapRegion(region: Region): Mapping {
  let engine: Engine;
  try {
    engine = engineFor(region.size + BATCH_AREA_SIZE, RING_ENDS);
  } catch (error) {
    try { region.close(); } catch { /* the first failure is the one to report */ }
    throw error;
  }
  // Closes the region itself on any failure.
  return { mapped: Mapped.map(engine, region) };
}

/**
 * Opens this side's two ring ends of a formatted channel segment; `unmap` disposes them. With `initial` below
 * `capacity` the rings start with `initial` data bytes and grow in band up to `capacity` (RECORD_RESIZE): only
 * the first `initial` bytes of each ring's data were reserved, the rest is populated when a ring grows.
 */
export function openRings(m: Mapping, capacity: number, side: 'listener' | 'connector', initial = capacity): { tx: RingEnd; rx: RingEnd } {
  const [out, into] = side === 'listener' ? [RING_TO_CONNECTOR, RING_TO_LISTENER] : [RING_TO_LISTENER, RING_TO_CONNECTOR];
  const { engine, at } = m.mapped;
  const growth = initial < capacity ? {
    initial,
    populate: (offset: number, bytes: number) => populateWrite(engine.address(offset), bytes),
    unpopulate: (offset: number, bytes: number) => removePages(engine.address(offset), bytes),
  } : undefined;
  m.tx = new RingEnd(engine, at + ringOffset(out, capacity), capacity, 'producer', growth);
  m.rx = new RingEnd(engine, at + ringOffset(into, capacity), capacity, 'consumer', growth);
  return { tx: m.tx, rx: m.rx };
}

/**
 * Byte ranges of a channel segment that must exist from the start when its rings start with `initial` data bytes:
 * the segment header and, for each ring, its header and first `initial` data bytes (page-aligned outward). The
 * rest stays sparse until a ring grows into it.
 */
export function initialRanges(capacity: number, initial: number): Array<[offset: number, length: number]> {
  const page = 4096;
  const ranges: Array<[number, number]> = [];
  for (let i = 0; i < CHANNEL_RING_COUNT; i++) {
    const start = i === 0 ? 0 : ringOffset(i, capacity) & ~(page - 1);
    const end = (ringOffset(i, capacity) + RING_HEADER_SIZE + initial + page - 1) & ~(page - 1);
    ranges.push([start, end - start]);
  }
  return ranges;
}

/** What a segment of rings that start with `initial` of `capacity` data bytes reserves: initialRanges, or all of it
 * (undefined) when they never grow. */
export function reserveFor(capacity: number, initial: number): Array<[offset: number, length: number]> | undefined {
  return initial < capacity ? initialRanges(capacity, initial) : undefined;
}

/** The data bytes rings start with when a connection may grow them (both sides speak layout 1.2 and the maximum is
 * larger): 64 KiB each way, so an idle connection reserves 132 KiB of /dev/shm. */
export const INITIAL_RING_SIZE = 64 * 1024;

/** Whether a peer announcing layout `version` understands growing rings (RECORD_RESIZE, layout 1.2). */
export function peerGrows(version: number): boolean {
  return version >>> 16 === LAYOUT_VERSION_MAJOR && (version & 0xffff) >= 2;
}

/**
 * The ring geometry a peer announced (the listener's reply, or a connector's hello with its own segment), checked
 * before anything is mapped: `capacity` a power of two within the ring limits, `initialCapacity` (absent: the
 * rings start at `capacity` and never grow, as an older peer's) a power of two from the smallest ring up to it,
 * and the segment size that follows from them (a peer cannot make us map more than that).
 */
export function checkGeometry(capacity: unknown, initialCapacity: unknown, who: 'listener' | 'connector'): { capacity: number; initial: number; size: number } {
  if (typeof capacity !== 'number' || !Number.isInteger(capacity) || capacity < RING_MIN_CAPACITY || capacity > RING_MAX_CAPACITY || (capacity & (capacity - 1)) !== 0) {
    throw new HandshakeError(`${who} announced a bad ring capacity`, { details: { capacity: peerText(capacity) } });
  }
  const initial = initialCapacity ?? capacity;
  if (typeof initial !== 'number' || !Number.isInteger(initial) || initial < RING_MIN_CAPACITY || initial > capacity || (initial & (initial - 1)) !== 0) {
    throw new HandshakeError(`${who} announced a bad initial ring capacity`, { details: { initialCapacity: peerText(initialCapacity) } });
  }
  return { capacity, initial, size: segmentBytes(CHANNEL_RING_COUNT, capacity) };
}

/** The name a shm:// connection's memfd shows in /proc (it has no name anywhere else). */
const memfdName = (endpoint: ShmEndpoint) => `shmbus.${endpoint.name}`.slice(0, 200);

/**
 * A fresh, sealed memfd for one shm:// connection whose rings hold `capacity` bytes and start with `initial`: only
 * the pages those first bytes need are reserved (fallocate: a full /dev/shm fails here, never a later access).
 */
export function createMemfdSegment(endpoint: ShmEndpoint, capacity: number, initial: number): Region {
  return Region.createMemfd(memfdName(endpoint), {
    size: segmentBytes(CHANNEL_RING_COUNT, capacity), mode: endpoint.perm, reserve: reserveFor(capacity, initial),
  });
}

let startTime: bigint | undefined;
/** Formats a mapped channel segment as its creator: the header (with this process as creator) and both rings. */
export function formatChannelSegment(m: Mapping, capacity: number): void {
  // The start time never changes: read from /proc once.
  formatSegment(m.mapped.engine, m.mapped.at, CHANNEL_RING_COUNT, capacity, process.pid, (startTime ??= processStartTime(process.pid) ?? 0n));
}

/** Checks a channel segment the peer made and formatted, once mapped: its header must describe the geometry the
 * handshake announced (host/segment.ts readSegment checks the header itself). */
export function checkPeerSegment(m: Mapping, capacity: number): void {
  const info = readSegment(m.mapped.engine, m.mapped.at, m.mapped.region.size);
  if (info.ringCount !== CHANNEL_RING_COUNT || info.capacity !== capacity) {
    throw new CorruptError('segment geometry differs from the handshake', { ringCount: info.ringCount, capacity: info.capacity });
  }
}

export function unmap(m: Mapping): void {
  try {
    m.tx?.dispose();
    m.rx?.dispose();
  } finally {
    m.mapped.unmap();
  }
}

/** Whether the peer is this very thread: the pid the kernel reported for it (SO_PEERCRED) is ours and its handshake
 * line names our worker_threads threadId (a peer of another process cannot pass, whatever it writes). */
export function peerInThisThread(cred: PeerCredentials, line: Record<string, unknown>): boolean {
  return cred.pid === process.pid && line.thread === threadId;
}

/** What a side says about how it sleeps: its mechanism's name and what a peer needs to ring it. */
export function wakeLine(endpoint: ShmEndpoint): Record<string, unknown> {
  const mechanism = mechanismFor(endpoint.wake, endpoint.url);
  return { mode: mechanism.name, params: mechanism.params() };
}

/** Gives back what `wakeLine` reserved (a process-wide wake object's user: host/wake/common.ts) for a connection
 * that got no channel; nothing once a channel took it. */
export function unreserveWake(endpoint: ShmEndpoint, line: Record<string, unknown>): void {
  mechanismFor(endpoint.wake, endpoint.url).unreserve(line.params as Record<string, unknown>);
}

/**
 * How to ring the peer, from its handshake line: its mechanism and that mechanism's parameters, with the
 * peer's verified credentials, which those parameters must name (checked by the mechanism).
 */
export function peerWake(endpoint: ShmEndpoint, line: unknown, cred: PeerCredentials): WakeParts {
  if (typeof line !== 'object' || line === null || typeof (line as { mode?: unknown }).mode !== 'string') {
    throw new HandshakeError('peer did not say how to wake it');
  }
  const { mode, params } = line as { mode: string; params?: unknown };
  const peer = mechanismFor(mode, endpoint.url);
  const peerParams = typeof params === 'object' && params !== null ? params as Record<string, unknown> : {};
  // Whatever the peer names for us to ring (a pid, a semaphore, a queue) must be its own: refused here, before
  // anything is allocated for it.
  peer.checkPeer(peerParams, cred);
  return { mine: mechanismFor(endpoint.wake, endpoint.url), peer, peerParams, peerCred: cred };
}

export function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) throw new BadArgumentError(`${name} must be a positive integer`, { [name]: value });
  return value;
}

export const versionText = (v: number) => `${v >>> 16}.${v & 0xffff}`;
