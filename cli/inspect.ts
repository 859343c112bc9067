/**
 * What the `shmbus` command reads about the library's objects from outside: the one module that knows where
 * endpoints, channel segments and buses live and how their headers look, so that `ls` and `stat` stay plain
 * formatting. Everything here only reads; nothing is created, joined, signalled or removed.
 *
 * Where things are:
 * - An shm://, sysv:// or file:// endpoint is a listening Unix socket in the abstract namespace,
 *   `@shmbus/<scheme>/<name>` (host/url.ts), so /proc/net/unix lists it, and its accepted connections too (same
 *   name, state connected). The pid behind a socket is the process with `socket:[inode]` among its fds.
 * - Each connection has its own segment, which both ends map (transports/shm.ts): a memfd named
 *   `shmbus.<name>` (shm://), a private System V segment created by the listener (sysv://), an unnamed file in the
 *   endpoint's directory (file://). /proc/<pid>/maps names each mapping and its inode: the processes that map
 *   one inode are the two ends of one connection. Its bytes are read through an fd the process holds
 *   (/proc/<pid>/fd/<n>, memfd and file) or through /proc/<pid>/mem at the mapping (System V).
 * - A shm:// bus is `/dev/shm/shmbus.bus.<bus>` (registry: members and topic list) plus
 *   `/dev/shm/shmbus.bus.<bus>.<topic>` per topic; a file:///dir/bus bus is `/dir/bus.registry` and
 *   `/dir/bus.<topic>.topic` (host/bus.ts).
 * - Every other object shmbus names (wake objects, handshake leftovers, dead buses) is what the reapers find
 *   (host/reap.ts `survey`).
 *
 * Only processes whose /proc entries the caller may read are seen (its own, or all as root). Every byte read from
 * a segment is untrusted: geometry is checked against what was mapped and positions against the capacity, and
 * anything that does not fit is reported as `corrupt`, never followed.
 */
import fs from 'node:fs';
import path from 'node:path';
import {
  SEGMENT_MAGIC, TOPIC_MAGIC, REGISTRY_MAGIC, SEGMENT_HEADER_SIZE, SEG_MAGIC_OFFSET, SEG_VERSION_OFFSET, SEG_RING_COUNT_OFFSET,
  SEG_RING_CAPACITY_OFFSET, SEG_CREATOR_PID_OFFSET, CHANNEL_RING_COUNT, RING_TO_CONNECTOR, RING_TO_LISTENER, RING_MIN_CAPACITY,
  RING_MAX_CAPACITY, RING_HEADER_SIZE, RING_TAIL_OFFSET, RING_HEAD_OFFSET, RING_PRODUCER_CLOSED_OFFSET, RING_PRODUCER_PARK_OFFSET,
  RING_CONSUMER_CLOSED_OFFSET, RING_CONSUMER_PARK_OFFSET, RING_COMMITTED_RECORDS_OFFSET, RING_READ_RECORDS_OFFSET, TOPIC_HEADER_OFFSET, TOPIC_HEADER_SIZE, TOPIC_SLOT_SIZE,
  TOPIC_MAX_SUBSCRIBERS, TOPIC_TAIL_OFFSET, TOPIC_HEAD_OFFSET, TOPIC_HEAD_SEQ_OFFSET, TOPIC_PUBLISHER_PARK_OFFSET,
  TOPIC_PUBLISHER_CLOSED_OFFSET, SLOT_PARKED_OFFSET, REGISTRY_MEMBERS, REGISTRY_TOPICS, MEMBER_CLAIM_OFFSET, CLAIM_FREE,
  ringOffset, segmentBytes, topicDataOffset, registryBytes, memberOffset,
} from '../assembly/layout.js';
import { readTopicState, type Policy } from '../host/topic.js';
import { claimAlive, claimPid } from '../host/claim.js';
import { isProcessAlive } from '../host/sys/proc.js';
import { parseShmUrl, schemeOf } from '../host/url.js';
import { BUS_REGISTRY_NAME, listedTopics, survey, type Sighting } from '../host/reap.js';
import { ALL_REAPERS } from '../host/clean.js';
import { busFiles } from '../bus/naming.js';
export { busFiles };
import type { Engine } from '../host/engine.js';

/** Where POSIX shared memory lives (shm_open). */
export const SHM_DIR = '/dev/shm';
const CONTROL_PREFIX = '@shmbus/';
/** __SO_ACCEPTCON in /proc/net/unix's Flags column: a listening socket. */
const SO_ACCEPTCON = 0x10000;
const SS_CONNECTED = 3;
const BUS_PREFIX = 'shmbus.bus.';

// ------------------------------------------------------------------------------------------------ processes

/** A mapping of a segment-like file in some process. */
interface Mapping { pid: number; address: number; length: number; inode: number; path: string }

/** What one scan of /proc saw. */
interface ProcScan {
  /** socket inode → pid holding it. */
  sockets: Map<number, number>;
  /** `<kind>:<inode>` → every mapping of that segment. */
  segments: Map<string, Mapping[]>;
  /** pid → fds whose target is a memfd or a deleted file, with that file's inode. */
  fds: Map<number, { fd: string; inode: number }[]>;
}

type SegmentKind = 'memfd' | 'sysv' | 'file';

/** The kind of segment a /proc/<pid>/maps path names, or undefined for anything that is not one. */
function segmentKind(p: string): SegmentKind | undefined {
  if (p.startsWith('/memfd:shmbus.')) return 'memfd';
  if (p.startsWith('/SYSV') && p.endsWith(' (deleted)')) return 'sysv';
  if (/\/#[0-9]+ \(deleted\)$/.test(p)) return 'file';
  return undefined;
}

function readText(file: string): string | undefined {
  try { return fs.readFileSync(file, 'latin1'); } catch { return undefined; }
}

/** Every readable process's sockets, segment mappings and segment fds. */
function scanProcesses(): ProcScan {
  const scan: ProcScan = { sockets: new Map(), segments: new Map(), fds: new Map() };
  let pids: string[];
  try { pids = fs.readdirSync('/proc').filter((e) => /^[1-9][0-9]*$/.test(e)); } catch { return scan; }
  for (const entry of pids) {
    const pid = Number(entry);
    let fdNames: string[];
    try { fdNames = fs.readdirSync(`/proc/${pid}/fd`); } catch { continue; } // another user's, or gone
    const segFds: { fd: string; inode: number }[] = [];
    for (const fd of fdNames) {
      let target: string;
      try { target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { continue; }
      const m = /^socket:\[([0-9]+)\]$/.exec(target);
      if (m) { scan.sockets.set(Number(m[1]), pid); continue; }
      if (segmentKind(target) === undefined) continue;
      try { segFds.push({ fd, inode: fs.statSync(`/proc/${pid}/fd/${fd}`).ino }); } catch { /* closed meanwhile */ }
    }
    if (segFds.length) scan.fds.set(pid, segFds);
    const maps = readText(`/proc/${pid}/maps`);
    if (!maps) continue;
    for (const line of maps.split('\n')) {
      // address perms offset dev inode path
      const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ ([0-9]+)\s+(\S.*)$/.exec(line);
      if (!m || !/^0+$/.test(m[3]!)) continue; // segments are mapped from their start
      const kind = segmentKind(m[5]!);
      if (!kind) continue;
      const start = parseInt(m[1]!, 16);
      const mapping = { pid, address: start, length: parseInt(m[2]!, 16) - start, inode: Number(m[4]), path: m[5]! };
      const key = `${kind}:${mapping.inode}`;
      const list = scan.segments.get(key);
      if (list) list.push(mapping); else scan.segments.set(key, [mapping]);
    }
  }
  return scan;
}

/** The creator pid of each System V segment (/proc/sysvipc/shm): shmid → cpid. */
function sysvCreators(): Map<number, number> {
  const out = new Map<number, number>();
  const text = readText('/proc/sysvipc/shm');
  if (!text) return out;
  const lines = text.split('\n');
  const head = lines[0]!.trim().split(/\s+/);
  const shmidAt = head.indexOf('shmid');
  const cpidAt = head.indexOf('cpid');
  for (const line of lines.slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length > Math.max(shmidAt, cpidAt)) out.set(Number(f[shmidAt]), Number(f[cpidAt]));
  }
  return out;
}

// ------------------------------------------------------------------------------------------------ sockets

interface ControlSocket { inode: number; scheme: string; name: string; listening: boolean }

/** The shmbus control sockets in /proc/net/unix: listening ones and their accepted connections. */
function controlSockets(): ControlSocket[] {
  const text = readText('/proc/net/unix');
  if (!text) return [];
  const out: ControlSocket[] = [];
  for (const line of text.split('\n').slice(1)) {
    // Num RefCount Protocol Flags Type St Inode Path
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    // Abstract names are shown with '@' for every NUL, the padding included.
    const p = f.slice(7).join(' ').replace(/@+$/, '');
    if (!p.startsWith(CONTROL_PREFIX)) continue;
    // Any local user may bind an abstract socket under our prefix: its name is shown only if it is text without
    // control characters (a planted name must not drive the terminal of whoever runs `shmbus ls`).
    const rest = Buffer.from(p.slice(CONTROL_PREFIX.length), 'latin1').toString('utf8');
    if (/[\u0000-\u001f\u007f-\u009f\ufffd]/u.test(rest)) continue;
    const slash = rest.indexOf('/');
    if (slash < 0) continue;
    const flags = parseInt(f[3]!, 16);
    const state = parseInt(f[5]!, 16);
    const listening = (flags & SO_ACCEPTCON) !== 0;
    if (!listening && state !== SS_CONNECTED) continue;
    out.push({ inode: Number(f[6]), scheme: rest.slice(0, slash), name: rest.slice(slash + 1), listening });
  }
  return out;
}

// ------------------------------------------------------------------------------------------------ segments

/** Reads `length` bytes at `offset` of a segment, through a process that maps it; undefined when none lets us. */
function readSegmentBytes(scan: ProcScan, kind: SegmentKind, holders: readonly Mapping[], offset: number, length: number): Buffer | undefined {
  const buf = Buffer.alloc(length);
  const tryRead = (file: string, position: number): boolean => {
    let fd: number | undefined;
    try {
      fd = fs.openSync(file, fs.constants.O_RDONLY);
      return fs.readSync(fd, buf, 0, length, position) === length;
    } catch {
      return false;
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  };
  for (const h of holders) {
    if (offset + length > h.length) return undefined;
    // An fd on the very segment: reading it is a pread, no access to the process's memory needed.
    if (kind !== 'sysv') {
      for (const f of scan.fds.get(h.pid) ?? []) if (f.inode === h.inode && tryRead(`/proc/${h.pid}/fd/${f.fd}`, offset)) return buf;
    }
    if (tryRead(`/proc/${h.pid}/mem`, h.address + offset)) return buf;
  }
  return undefined;
}

/** One direction of a channel, as its ring header shows it. */
export interface RingState {
  capacity: number;
  /** Bytes ever committed (producer) and released (consumer): free-running positions. */
  tail: number;
  head: number;
  /** Bytes committed and not yet released, over the capacity (0 … 1). */
  fill: number;
  /** Records ever committed, and ever handed to the reader (counters the ring keeps for tools; 0 from builds
   * older than them). */
  committed: number;
  read: number;
  /** Records committed and not yet handed to the reader. */
  waiting: number;
  producerParked: boolean;
  consumerParked: boolean;
  producerClosed: boolean;
  consumerClosed: boolean;
}

/** The two rings of a channel segment; `corrupt` when its header or positions do not fit what was mapped. */
export interface ChannelRings { toConnector?: RingState; toListener?: RingState; corrupt?: string }

function readRings(scan: ProcScan, kind: SegmentKind, holders: readonly Mapping[]): ChannelRings | undefined {
  const header = readSegmentBytes(scan, kind, holders, 0, SEGMENT_HEADER_SIZE);
  if (!header) return undefined;
  if (header.readUInt32LE(SEG_MAGIC_OFFSET) !== SEGMENT_MAGIC || header.readUInt32LE(SEG_VERSION_OFFSET) === 0) return { corrupt: 'no channel header' };
  const count = header.readUInt32LE(SEG_RING_COUNT_OFFSET);
  const capacity = header.readUInt32LE(SEG_RING_CAPACITY_OFFSET);
  if (count !== CHANNEL_RING_COUNT || capacity < RING_MIN_CAPACITY || capacity > RING_MAX_CAPACITY || (capacity & (capacity - 1)) !== 0) {
    return { corrupt: `bad geometry: ${count} rings of ${capacity} bytes` };
  }
  if (holders.some((h) => segmentBytes(count, capacity) > h.length)) return { corrupt: 'rings larger than the mapping' };
  const ring = (index: number): RingState | string => {
    const b = readSegmentBytes(scan, kind, holders, ringOffset(index, capacity), RING_HEADER_SIZE);
    if (!b) return 'unreadable';
    const tail = Number(b.readBigUInt64LE(RING_TAIL_OFFSET));
    const head = Number(b.readBigUInt64LE(RING_HEAD_OFFSET));
    if (!(head <= tail && tail - head <= capacity)) return `positions out of range: head ${head}, tail ${tail}`;
    const committed = Number(b.readBigUInt64LE(RING_COMMITTED_RECORDS_OFFSET));
    const read = Number(b.readBigUInt64LE(RING_READ_RECORDS_OFFSET));
    return {
      capacity, tail, head, fill: (tail - head) / capacity, committed, read, waiting: Math.max(0, committed - read),
      producerParked: (b.readUInt32LE(RING_PRODUCER_PARK_OFFSET) & 1) === 1,
      consumerParked: (b.readUInt32LE(RING_CONSUMER_PARK_OFFSET) & 1) === 1,
      producerClosed: b.readUInt32LE(RING_PRODUCER_CLOSED_OFFSET) !== 0,
      consumerClosed: b.readUInt32LE(RING_CONSUMER_CLOSED_OFFSET) !== 0,
    };
  };
  const out: ChannelRings = {};
  const a = ring(RING_TO_CONNECTOR);
  const b = ring(RING_TO_LISTENER);
  if (typeof a === 'string') out.corrupt = a; else out.toConnector = a;
  if (typeof b === 'string') out.corrupt = b; else out.toListener = b;
  return out;
}

// ------------------------------------------------------------------------------------------------ endpoints

/** A process and whether it runs. */
export interface Proc { pid: number; alive: boolean }

/** One connection of an endpoint: its segment and the processes mapping it. */
export interface ConnectionInfo {
  /** What identifies the segment: `memfd:<inode>`, `sysv:<shmid>` or `file:<inode>`. */
  segment: string;
  /** Bytes mapped. */
  size: number;
  /** The processes mapping it other than the listener (the listener itself when it connected to itself). */
  peers: Proc[];
  rings?: ChannelRings;
}

export interface EndpointInfo {
  url: string;
  transport: 'shm' | 'sysv' | 'file';
  /** Whether a listener still accepts connections (a closed listener's channels live on). */
  listening: boolean;
  /** The process holding the listening socket; pid 0 when it is another user's (not readable) or closed. */
  listener: Proc;
  /** Accepted control connections in /proc/net/unix (seen even when the processes are not readable). */
  sockets: number;
  connections: ConnectionInfo[];
}

function endpointUrl(scheme: string, name: string): string {
  return scheme === 'file' ? `file://${name}` : `${scheme}://${name}`;
}

/** Whether the segment `key` belongs to the endpoint (scheme, name) listened on by `pid`. */
function belongs(scheme: string, name: string, key: string, maps: readonly Mapping[], pid: number, creators: Map<number, number>): boolean {
  const kind = key.slice(0, key.indexOf(':'));
  const first = maps[0]!;
  if (scheme === 'shm') return kind === 'memfd' && first.path === `/memfd:${`shmbus.${name}`.slice(0, 200)} (deleted)`;
  if (!maps.some((m) => m.pid === pid)) return false;
  // A listener's private System V segments: created by it (several sysv:// endpoints in one process cannot be
  // told apart; each lists them all).
  if (scheme === 'sysv') return kind === 'sysv' && creators.get(first.inode) === pid;
  return kind === 'file' && path.dirname(first.path) === path.dirname(name);
}

/**
 * Every shm://, sysv:// and file:// endpoint listening on this machine (in this network namespace), with its
 * connections; `rings: true` also reads each connection's ring headers.
 */
export function listEndpoints(options: { rings?: boolean } = {}): EndpointInfo[] {
  const sockets = controlSockets();
  const scan = scanProcesses();
  const creators = sysvCreators();
  const out: EndpointInfo[] = [];
  for (const s of sockets.filter((x) => x.listening)) {
    if (s.scheme !== 'shm' && s.scheme !== 'sysv' && s.scheme !== 'file') continue;
    const pid = scan.sockets.get(s.inode) ?? 0;
    const accepted = sockets.filter((x) => !x.listening && x.scheme === s.scheme && x.name === s.name);
    const connections: ConnectionInfo[] = [];
    for (const [key, maps] of scan.segments) {
      if (!belongs(s.scheme, s.name, key, maps, pid, creators)) continue;
      // shm:// segments are found by name, so also from the connector's side when the listener is not readable.
      const others = [...new Set(maps.filter((m) => m.pid !== pid).map((m) => m.pid))];
      const peers = others.length ? others : maps.filter((m) => m.pid === pid).length > 1 ? [pid] : [];
      const c: ConnectionInfo = { segment: key, size: maps[0]!.length, peers: peers.map((p) => ({ pid: p, alive: isProcessAlive(p) })) };
      if (options.rings) c.rings = readRings(scan, key.slice(0, key.indexOf(':')) as SegmentKind, maps);
      connections.push(c);
    }
    out.push({
      url: endpointUrl(s.scheme, s.name), transport: s.scheme, listening: true, listener: { pid, alive: pid !== 0 && isProcessAlive(pid) },
      sockets: accepted.length, connections,
    });
  }
  // shm:// channels whose listener was closed (its channels stay open): found by their segments' names.
  const seen = new Set(out.flatMap((e) => e.connections.map((c) => c.segment)));
  const orphans = new Map<string, ConnectionInfo[]>();
  for (const [key, maps] of scan.segments) {
    if (seen.has(key) || !key.startsWith('memfd:')) continue;
    const m = /^\/memfd:shmbus\.([A-Za-z0-9_.-]{1,193}) \(deleted\)$/.exec(maps[0]!.path);
    if (!m) continue;
    const pids = [...new Set(maps.map((x) => x.pid))];
    const c: ConnectionInfo = { segment: key, size: maps[0]!.length, peers: pids.map((p) => ({ pid: p, alive: isProcessAlive(p) })) };
    if (options.rings) c.rings = readRings(scan, 'memfd', maps);
    const list = orphans.get(m[1]!);
    if (list) list.push(c); else orphans.set(m[1]!, [c]);
  }
  for (const [name, connections] of orphans) {
    const url = endpointUrl('shm', name);
    out.push({ url, transport: 'shm', listening: false, listener: { pid: 0, alive: false }, sockets: sockets.filter((x) => !x.listening && x.scheme === 'shm' && x.name === name).length, connections });
  }
  return out.sort((a, b) => a.url.localeCompare(b.url));
}

/** The endpoint a URL names, if one listens (the URL's options are ignored). */
export function findEndpoint(url: string, options: { rings?: boolean } = {}): EndpointInfo | undefined {
  const scheme = schemeOf(url);
  if (scheme !== 'shm' && scheme !== 'sysv' && scheme !== 'file') return undefined;
  const e = parseShmUrl(url);
  const want = endpointUrl(e.scheme, e.name);
  return listEndpoints(options).find((x) => x.url === want);
}

// ------------------------------------------------------------------------------------------------ buses

export interface SubscriberInfo extends Proc {
  slot: number;
  /** Sequence number of the next record it reads. */
  seq: number;
  /** Records published that it has not read. */
  lag: number;
  /** Of those, the ones a lossy topic already reclaimed (older than the oldest kept): it will count them as
   * dropped when it reads next. */
  lapped: number;
  dropped: number;
  parked: boolean;
}

export interface TopicStat {
  name: string;
  capacity: number;
  policy: Policy;
  history: number;
  maxSubscribers: number;
  /** Records ever published (the next record's sequence number). */
  published: number;
  /** Oldest record still in the ring. */
  oldest: number;
  /** Bytes ever published. */
  bytes: number;
  /** Bytes between the oldest record kept and the newest, over the capacity. */
  fill: number;
  publisher: (Proc & { parked: boolean; closed: boolean }) | null;
  subscribers: SubscriberInfo[];
  corrupt?: string;
}

export interface BusInfo {
  url: string;
  registry: string;
  members: Proc[];
  topics: TopicStat[];
  /** false once its creator and every member are gone (what `shmbus clean` removes). */
  alive: boolean;
}

/** Reads the first `length` bytes of a regular file, never through a symlink; undefined when it is not there. */
function readHead(file: string, length: number): Buffer | undefined {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    if (!fs.fstatSync(fd).isFile()) return undefined;
    const buf = Buffer.alloc(length);
    const n = fs.readSync(fd, buf, 0, length, 0);
    return buf.subarray(0, n);
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}


/** A topic's state from its file (header fields through host/topic.ts readTopicState). */
function readTopic(name: string, file: string): TopicStat | undefined {
  const header = readHead(file, SEGMENT_HEADER_SIZE);
  if (!header || header.length < SEGMENT_HEADER_SIZE || header.readUInt32LE(SEG_MAGIC_OFFSET) !== TOPIC_MAGIC) return undefined;
  const maxSubscribers = header.readUInt32LE(SEG_RING_COUNT_OFFSET);
  const capacity = header.readUInt32LE(SEG_RING_CAPACITY_OFFSET);
  const base: TopicStat = {
    name, capacity, policy: 'lossless', history: 0, maxSubscribers, published: 0, oldest: 0, bytes: 0, fill: 0, publisher: null, subscribers: [],
  };
  if (maxSubscribers < 1 || maxSubscribers > TOPIC_MAX_SUBSCRIBERS) return { ...base, corrupt: `bad subscriber count ${maxSubscribers}` };
  const head = readHead(file, topicDataOffset(maxSubscribers));
  if (!head || head.length < topicDataOffset(maxSubscribers)) return { ...base, corrupt: 'cut short' };
  // readTopicState reads through the engine's memory; a plain buffer with the file's head stands in for it.
  const copy = new Uint8Array(head).buffer;
  const state = readTopicState({ memory: { buffer: copy } } as unknown as Engine, 0, maxSubscribers);
  const t = TOPIC_HEADER_OFFSET;
  const tail = Number(head.readBigUInt64LE(t + TOPIC_TAIL_OFFSET));
  const headPos = Number(head.readBigUInt64LE(t + TOPIC_HEAD_OFFSET));
  const oldest = Number(head.readBigUInt64LE(t + TOPIC_HEAD_SEQ_OFFSET));
  const fill = headPos <= tail && tail - headPos <= capacity && capacity > 0 ? (tail - headPos) / capacity : NaN;
  return {
    ...base,
    policy: state.policy,
    history: state.history,
    published: state.published,
    oldest,
    bytes: tail,
    fill,
    corrupt: Number.isNaN(fill) ? `positions out of range: head ${headPos}, tail ${tail}` : undefined,
    publisher: state.publisherClaim === BigInt(CLAIM_FREE) ? null : {
      pid: state.publisherPid, alive: claimAlive(state.publisherClaim),
      parked: head.readUInt32LE(t + TOPIC_PUBLISHER_PARK_OFFSET) !== 0,
      closed: head.readUInt32LE(t + TOPIC_PUBLISHER_CLOSED_OFFSET) !== 0,
    },
    subscribers: state.subscribers.map((s) => ({
      slot: s.slot, pid: s.pid, alive: claimAlive(s.claim), seq: s.seq, lag: Math.max(0, state.published - s.seq),
      lapped: Math.max(0, Math.min(oldest, state.published) - s.seq), dropped: s.dropped,
      parked: head.readUInt32LE(t + TOPIC_HEADER_SIZE + s.slot * TOPIC_SLOT_SIZE + SLOT_PARKED_OFFSET) !== 0,
    })),
  };
}

/** A bus from its registry file, or undefined when there is none. */
export function readBus(url: string): BusInfo | undefined {
  const files = busFiles(url);
  if (!files) return undefined;
  const size = registryBytes(REGISTRY_TOPICS, REGISTRY_MEMBERS);
  const head = readHead(files.registry, size);
  if (!head || head.length < size || head.readUInt32LE(SEG_MAGIC_OFFSET) !== REGISTRY_MAGIC) return undefined;
  const members: Proc[] = [];
  for (let i = 0; i < REGISTRY_MEMBERS; i++) {
    const claim = head.readBigUInt64LE(memberOffset(i) + MEMBER_CLAIM_OFFSET);
    if (claim !== BigInt(CLAIM_FREE)) members.push({ pid: claimPid(claim), alive: claimAlive(claim) });
  }
  const topics: TopicStat[] = [];
  for (const name of listedTopics(head)) {
    const topic = readTopic(name, files.topic(name));
    if (topic) topics.push(topic);
  }
  const creator = head.readUInt32LE(SEG_CREATOR_PID_OFFSET);
  return { url, registry: files.registry, members, topics, alive: members.some((m) => m.alive) || (members.length === 0 && isProcessAlive(creator)) };
}

/** Every shm:// bus in /dev/shm. */
export function listBuses(): BusInfo[] {
  let entries: string[];
  try { entries = fs.readdirSync(SHM_DIR); } catch { return []; }
  const out: BusInfo[] = [];
  for (const e of entries.sort()) {
    if (!BUS_REGISTRY_NAME.test(e)) continue;
    const bus = readBus(`shm://${e.slice(BUS_PREFIX.length)}`);
    if (bus) out.push(bus);
  }
  return out;
}

// ------------------------------------------------------------------------------------------------ kernel objects

/** Every object shmbus named that the reapers find (every user's), each alive or dead, with the reason. */
export function listObjects(): { objects: Sighting[]; notes: string[] } {
  const { sightings, notes } = survey(ALL_REAPERS);
  return { objects: [...sightings, ...stateObjects()], notes };
}

/** Names of the shm:// segments of state/ (SharedState, Mutex, Semaphore) in /dev/shm. */
const STATE_ENTRY = /^shmbus\.(state|mutex|semaphore)\.[A-Za-z0-9_.-]{1,200}$/;

/**
 * The shm:// segments of shared state and locks, each alive while some process maps it. Their creator removes the
 * name when it closes or exits; one that no process maps was left by a killed creator (`shmbus clean` leaves it:
 * its name is the user's, nothing in it proves it abandoned). Over sysv:// they are System V segments, not listed.
 */
function stateObjects(): Sighting[] {
  let entries: string[];
  try { entries = fs.readdirSync(SHM_DIR).filter((e) => STATE_ENTRY.test(e)); } catch { return []; }
  if (entries.length === 0) return [];
  const holders = new Map<string, number[]>();
  let unreadable = false;
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    const maps = readText(`/proc/${pid}/maps`);
    if (maps === undefined) { unreadable = true; continue; }
    for (const e of entries) if (maps.includes(`${SHM_DIR}/${e}\n`)) holders.set(e, [...(holders.get(e) ?? []), Number(pid)]);
  }
  const out: Sighting[] = [];
  for (const e of entries) {
    let uid: number;
    try { uid = fs.lstatSync(`${SHM_DIR}/${e}`).uid; } catch { continue; }
    const pids = holders.get(e) ?? [];
    out.push({
      kind: e.split('.')[1]!,
      name: `${SHM_DIR}/${e}`,
      uid,
      alive: pids.length > 0 ? true : unreadable ? undefined : false,
      why: pids.length > 0 ? `mapped by ${pids.join(', ')}` : unreadable ? 'no process this user can see maps it' : 'no process maps it (its creator was killed); not removed by shmbus clean',
    });
  }
  return out;
}
