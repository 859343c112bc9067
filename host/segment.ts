/**
 * The segment header (layout in assembly/layout.ts): written once by the creator, checked by every opener before
 * it trusts a byte of the segment. The header is read once; geometry is copied into private memory (the ring
 * handles) and never reread, so a peer rewriting it later cannot move our bounds.
 */
import {
  SEGMENT_MAGIC, LAYOUT_VERSION, LAYOUT_VERSION_MAJOR, SEG_MAGIC_OFFSET, SEG_VERSION_OFFSET, SEG_FEATURES_OFFSET,
  SEG_HEADER_SIZE_OFFSET, SEG_SIZE_OFFSET, SEG_RING_COUNT_OFFSET, SEG_RING_CAPACITY_OFFSET, SEG_CREATOR_PID_OFFSET,
  SEG_CREATOR_START_OFFSET, SEGMENT_HEADER_SIZE, FEATURES_KNOWN, RING_MIN_CAPACITY, RING_MAX_CAPACITY,
  TOPIC_MAGIC, TOPIC_MAX_SUBSCRIBERS, REGISTRY_MAGIC, REGISTRY_TOPICS, REGISTRY_MEMBERS, ringOffset, segmentBytes,
  topicBytes, registryBytes,
} from '../assembly/layout.js';
import { Engine } from './engine.js';
import { RingEnd } from './ring.js';
import { CorruptError, VersionMismatchError } from './errors.js';

export interface SegmentInfo {
  ringCount: number;
  capacity: number;
  /** Bytes the header claims. */
  size: number;
  creatorPid: number;
  creatorStart: bigint;
  features: number;
}

const versionText = (v: number) => `${v >>> 16}.${v & 0xffff}`;

/** What distinguishes the kinds of segment that share the header: the magic and how the size follows. */
export interface SegmentKind {
  name: string;
  magic: number;
  /** Largest `ringCount` field (rings of a channel, subscriber slots of a topic). */
  maxCount: number;
  bytes(count: number, capacity: number): number;
  /** Whether the capacity field is plausible (rings: a power of two in range). */
  capacityOk?(capacity: number): boolean;
}

/** A channel: two SPSC rings. */
export const CHANNEL_SEGMENT: SegmentKind = { name: 'channel', magic: SEGMENT_MAGIC, maxCount: 64, bytes: segmentBytes };
/** A topic: a broadcast ring; the count field holds the number of subscriber slots. */
export const TOPIC_SEGMENT: SegmentKind = { name: 'topic', magic: TOPIC_MAGIC, maxCount: TOPIC_MAX_SUBSCRIBERS, bytes: topicBytes };
/** A bus registry: the count field holds topic entries, the capacity field member slots. */
export const REGISTRY_SEGMENT: SegmentKind = {
  name: 'registry', magic: REGISTRY_MAGIC, maxCount: REGISTRY_TOPICS, bytes: registryBytes,
  capacityOk: (members) => members === REGISTRY_MEMBERS,
};

/** Writes the header fields except the version (call publishVersion once the body is formatted too). */
export function writeHeader(engine: Engine, at: number, kind: SegmentKind, count: number, capacity: number, creatorPid: number, creatorStart: bigint): void {
  const view = new DataView(engine.memory.buffer);
  view.setUint32(at + SEG_MAGIC_OFFSET, kind.magic, true);
  view.setUint32(at + SEG_FEATURES_OFFSET, FEATURES_KNOWN, true);
  view.setUint32(at + SEG_HEADER_SIZE_OFFSET, SEGMENT_HEADER_SIZE, true);
  view.setBigUint64(at + SEG_SIZE_OFFSET, BigInt(kind.bytes(count, capacity)), true);
  view.setUint32(at + SEG_RING_COUNT_OFFSET, count, true);
  view.setUint32(at + SEG_RING_CAPACITY_OFFSET, capacity, true);
  view.setUint32(at + SEG_CREATOR_PID_OFFSET, creatorPid, true);
  view.setBigUint64(at + SEG_CREATOR_START_OFFSET, creatorStart, true);
}

/** Stores the version word last: an opener that sees it sees every store before it. */
export function publishVersion(engine: Engine, at: number): void {
  // SYNC: pairs with the Atomics.load of the version in readSegment; publishes every store before it.
  Atomics.store(new Int32Array(engine.memory.buffer, at, SEGMENT_HEADER_SIZE / 4), SEG_VERSION_OFFSET / 4, LAYOUT_VERSION);
}

/**
 * Formats a segment at linear-memory offset `at`: the header, then each ring, then the version word last, so an
 * opener that sees the version sees everything else.
 */
export function formatSegment(engine: Engine, at: number, ringCount: number, capacity: number, creatorPid: number, creatorStart: bigint): void {
  writeHeader(engine, at, CHANNEL_SEGMENT, ringCount, capacity, creatorPid, creatorStart);
  for (let i = 0; i < ringCount; i++) RingEnd.format(engine, at + ringOffset(i, capacity), capacity);
  publishVersion(engine, at);
}

/**
 * Checks the header at `at` of a segment of which `mapped` bytes are mapped, and returns its geometry.
 * Throws VersionMismatchError for another major version and CorruptError for anything else that is off.
 */
export function readSegment(engine: Engine, at: number, mapped: number, kind: SegmentKind = CHANNEL_SEGMENT): SegmentInfo {
  if (mapped < SEGMENT_HEADER_SIZE) throw new CorruptError('segment smaller than its header', { mapped });
  const view = new DataView(engine.memory.buffer);
  // SYNC: pairs with the Atomics.store of the version in formatSegment.
  const version = Atomics.load(new Int32Array(engine.memory.buffer, at, SEGMENT_HEADER_SIZE / 4), SEG_VERSION_OFFSET / 4) >>> 0;
  const magic = view.getUint32(at + SEG_MAGIC_OFFSET, true);
  if (magic !== kind.magic) throw new CorruptError(`not a shmbus ${kind.name} segment (bad magic)`, { magic: '0x' + magic.toString(16) });
  if (version === 0) throw new CorruptError('segment is not initialised (version word is 0)');
  if (version >>> 16 !== LAYOUT_VERSION_MAJOR) throw new VersionMismatchError('segment layout', versionText(version), versionText(LAYOUT_VERSION));
  const features = view.getUint32(at + SEG_FEATURES_OFFSET, true);
  if ((features & ~FEATURES_KNOWN) !== 0) throw new VersionMismatchError('segment features', '0x' + features.toString(16), '0x' + FEATURES_KNOWN.toString(16));
  const headerSize = view.getUint32(at + SEG_HEADER_SIZE_OFFSET, true);
  const ringCount = view.getUint32(at + SEG_RING_COUNT_OFFSET, true);
  const capacity = view.getUint32(at + SEG_RING_CAPACITY_OFFSET, true);
  const size = Number(view.getBigUint64(at + SEG_SIZE_OFFSET, true));
  if (headerSize !== SEGMENT_HEADER_SIZE) throw new CorruptError('segment header size is wrong', { headerSize });
  const capacityOk = kind.capacityOk
    ? kind.capacityOk(capacity)
    : (capacity & (capacity - 1)) === 0 && capacity >= RING_MIN_CAPACITY && capacity <= RING_MAX_CAPACITY;
  if (!capacityOk) {
    throw new CorruptError('ring capacity is not a valid power of two', { capacity });
  }
  if (ringCount < 1 || ringCount > kind.maxCount) throw new CorruptError('ring count out of range', { ringCount });
  const needed = kind.bytes(ringCount, capacity);
  if (size !== needed || needed > mapped) throw new CorruptError('segment is shorter than its rings', { size, needed, mapped });
  return {
    ringCount, capacity, size, features,
    creatorPid: view.getUint32(at + SEG_CREATOR_PID_OFFSET, true),
    creatorStart: view.getBigUint64(at + SEG_CREATOR_START_OFFSET, true),
  };
}
