/**
 * Reaping: removing what processes that died without cleaning up (SIGKILL, a crash) left in the kernel's
 * namespaces. A live owner removes its own objects at close and at exit; only a dead one leaves them. Every kind
 * of object shmbus names is one `Reaper` here or in host/wake/reap.ts, and `reap()` runs them all the same way;
 * `shmbus clean` (host/clean.ts) and the library's own reaping call it. Channel segments (shm://, sysv://,
 * file://) have no reaper because they never have a name: a memfd or an O_TMPFILE file passed by descriptor, a
 * System V segment removed right after its creator's own attach (transports/shm/).
 *
 * What may be removed (docs/security.md, "shmbus clean"):
 * - Only a name that one exact pattern of a name shmbus creates matches, and whose content proves it (a bus
 *   file's magic, the semaphore set's shape). Everything else is not looked at.
 * - Only what the caller owns; root removes every user's and says so.
 * - Only what is dead: the creator's pid is not running, or runs with another start time (a reused pid). A live
 *   creator or a live bus member always keeps its object.
 * - Nothing read from shared memory ever becomes a path: a topic name in a registry only selects among names
 *   the directory listing returned. Files are looked at and removed relative to the descriptor of the directory
 *   that was listed (openat/unlinkat, host/sys/dir.ts), never following a symlink, after a last look right
 *   before the unlink: still a regular file, the same inode, the same owner, still dead.
 */
import {
  TOPIC_MAGIC, REGISTRY_MAGIC, SEGMENT_HEADER_SIZE, SEG_MAGIC_OFFSET, SEG_VERSION_OFFSET,
  SEG_RING_COUNT_OFFSET, SEG_CREATOR_PID_OFFSET, SEG_CREATOR_START_OFFSET, REGISTRY_MEMBERS,
  REGISTRY_TOPICS, REGISTRY_NAME_OFFSET, REGISTRY_NAME_MAX, ENTRY_READY, MEMBER_CLAIM_OFFSET,
  ENTRY_STATE_OFFSET, ENTRY_NAME_LENGTH_OFFSET, TOPIC_HEADER_OFFSET, TOPIC_HEADER_SIZE, TOPIC_SLOT_SIZE,
  TOPIC_MAX_SUBSCRIBERS, TOPIC_PUBLISHER_CLAIM_OFFSET, SLOT_CLAIM_OFFSET, CLAIM_FREE, registryBytes, topicDataOffset,
  memberOffset, entryOffset,
} from '../assembly/layout.js';
import { DirHandle } from './sys/dir.js';
import { claimAlive, claimPid } from './claim.js';
import { isProcessAlive, taskIdInUse } from './sys/proc.js';
import { ShmbusError } from './errors.js';
import { decodePeer } from './codec.js';
import { trace } from './trace.js';
import { MSG_HEADER, listMsgQueues, msgPeek, msgRemoveIfExists, msgStat, msgType, type MsgQueue } from './sys/msg.js';
import { mqClose, mqGetattr, mqLimits, mqOpen, tryFlock } from './sys/mq.js';
import { LOCK_EX, O_NONBLOCK, O_RDONLY } from './sys/constants.js';
import { readFileSync, type Stats } from 'node:fs';

// ------------------------------------------------------------------------------------------------ the contract

/** One object a reaper found by its exact name pattern. */
export interface Candidate {
  /** The kind of the reaper that found it. */
  readonly kind: string;
  /** What the output shows: a path, or `shmid=… key=…`. */
  readonly name: string;
  /** Its owner. */
  readonly uid: number;
  /** Set when the name matched but the object cannot be shmbus's (a symlink, a directory): kept with this reason. */
  readonly reject?: string;
}

/** Whether a candidate may go, and the reason either way (shown by `shmbus clean -v`). */
export interface Verdict {
  dead: boolean;
  why: string;
}

/** One kind of object shmbus creates. `find` is cheap and exact; `isDead` proves; `remove` re-checks and acts. */
export interface Reaper<C extends Candidate = Candidate> {
  readonly kind: string;
  /** The names this kind matches, for `shmbus clean --help` and the docs. */
  readonly pattern: string;
  find(scope: Scope): C[];
  /** Whether it is shmbus's and dead (kept: alive, not provably shmbus's, changed). Reads the object again. */
  isDead(c: C, scope: Scope): Verdict;
  /** Looks once more right before removing (identity, owner, still dead); `dead: true` means it was removed. */
  remove(c: C, scope: Scope): Verdict;
}

/** What one run may touch, and the directories it opened (closed by reap()). */
export interface Scope {
  /** The caller's effective uid. */
  readonly uid: number;
  /** Root removes dead objects of every user. */
  readonly root: boolean;
  /** Where POSIX shared memory and semaphores live (shm_open's /dev/shm). */
  readonly shmDir: string;
  /** Where the mqueue file system is mounted. */
  readonly mqDir: string;
  /** Directories to scan for the handshake FIFOs of fifo:// endpoints. */
  readonly dirs: readonly string[];
  /** An open handle on `path`, or undefined (with a note) when it cannot be opened. */
  dir(path: string): DirHandle | undefined;
  /** Things the run could not look at, said once each. */
  note(text: string): void;
}

/** What happened to one candidate. */
export interface Outcome {
  kind: string;
  name: string;
  uid: number;
  action: 'removed' | 'would remove' | 'kept';
  why: string;
}

export interface ReapOptions {
  /** Report what would be removed, remove nothing. */
  dryRun?: boolean;
  shmDir?: string;
  mqDir?: string;
  /** Directories to scan for fifo:// handshake FIFOs (fifo:// endpoints can be anywhere, so none by default). */
  dirs?: readonly string[];
  /** Only candidates this accepts are considered (tests, `shmbus clean --match`). */
  select?: (c: Candidate) => boolean;
  /** Whose objects to take (default: the effective uid; root takes every user's). Root can narrow a run to one
   * user with it; it never widens what the kernel lets the process remove. */
  uid?: number;
}

export interface ReapReport {
  /** True when the run removed other users' objects too (it ran as root). */
  root: boolean;
  outcomes: Outcome[];
  notes: string[];
}

/** Runs `reapers` over what they find: every candidate is removed or kept with a reason. */
export function reap(reapers: readonly Reaper[], options: ReapOptions = {}): ReapReport {
  const outcomes: Outcome[] = [];
  const report = visit(reapers, options, (reaper, c, scope) => {
    if (options.select && !options.select(c)) return;
    outcomes.push({ kind: c.kind, name: c.name, uid: c.uid, ...decide(reaper, c, scope, options.dryRun === true) });
  });
  return { ...report, outcomes };
}

/** One object shmbus named, found by a reaper, and whether it is in use (`shmbus ls`). */
export interface Sighting {
  kind: string;
  name: string;
  uid: number;
  /** false: its creator and users are gone (`shmbus clean` would take it, were it the caller's); undefined: cannot tell. */
  alive: boolean | undefined;
  why: string;
}

/** What `reapers` find, each with its liveness, every user's, touching nothing. */
export function survey(reapers: readonly Reaper[], options: Omit<ReapOptions, 'dryRun' | 'uid'> = {}): { sightings: Sighting[]; notes: string[] } {
  const sightings: Sighting[] = [];
  const { notes } = visit(reapers, options, (reaper, c, scope) => {
    if (options.select && !options.select(c)) return;
    if (c.reject !== undefined) { sightings.push({ kind: c.kind, name: c.name, uid: c.uid, alive: undefined, why: c.reject }); return; }
    try {
      const v = reaper.isDead(c, scope);
      sightings.push({ kind: c.kind, name: c.name, uid: c.uid, alive: !v.dead, why: v.why });
    } catch (error) {
      sightings.push({ kind: c.kind, name: c.name, uid: c.uid, alive: undefined, why: error instanceof Error ? error.message : String(error) });
    }
  });
  return { sightings, notes };
}

/** Opens the scope of one run, hands every candidate of every reaper to `each`, and closes what it opened. */
function visit(reapers: readonly Reaper[], options: ReapOptions, each: (reaper: Reaper, c: Candidate, scope: Scope) => void): Omit<ReapReport, 'outcomes'> {
  const uid = options.uid ?? process.geteuid?.() ?? -1;
  const dirs = new Map<string, DirHandle | undefined>();
  const notes: string[] = [];
  const note = (text: string) => { if (!notes.includes(text)) notes.push(text); };
  const scope: Scope = {
    uid, root: uid === 0,
    shmDir: options.shmDir ?? '/dev/shm',
    mqDir: options.mqDir ?? '/dev/mqueue',
    dirs: options.dirs ?? [],
    dir(path) {
      if (!dirs.has(path)) {
        let handle: DirHandle | undefined;
        try {
          handle = DirHandle.open(path);
        } catch (error) {
          note(`cannot scan ${path}: ${error instanceof ShmbusError ? error.message : String(error)}`);
        }
        dirs.set(path, handle);
      }
      return dirs.get(path);
    },
    note,
  };
  try {
    for (const reaper of reapers) {
      let found: Candidate[];
      try {
        found = reaper.find(scope);
      } catch (error) {
        note(`${reaper.kind}: cannot list: ${String(error instanceof Error ? error.message : error)}`);
        continue;
      }
      for (const c of found) each(reaper, c, scope);
    }
  } finally {
    for (const handle of dirs.values()) handle?.close();
  }
  return { root: scope.root, notes };
}

function decide(reaper: Reaper, c: Candidate, scope: Scope, dryRun: boolean): Pick<Outcome, 'action' | 'why'> {
  if (c.reject !== undefined) return { action: 'kept', why: c.reject };
  if (!scope.root && c.uid !== scope.uid) return { action: 'kept', why: `owned by uid ${c.uid}, not the caller (uid ${scope.uid})` };
  try {
    const verdict = reaper.isDead(c, scope);
    if (!verdict.dead) return { action: 'kept', why: verdict.why };
    if (dryRun) return { action: 'would remove', why: verdict.why };
    const done = reaper.remove(c, scope);
    if (done.dead && trace.enabled) trace('reap: removed %s %s (uid %d): %s', c.kind, c.name, c.uid, done.why);
    return done.dead ? { action: 'removed', why: done.why } : { action: 'kept', why: `changed before removal: ${done.why}` };
  } catch (error) {
    // A kernel refusal (EPERM on someone else's object, EACCES) keeps the object; the run goes on.
    return { action: 'kept', why: error instanceof Error ? error.message : String(error) };
  }
}

/** The names `reap` removed (or would remove), for callers that only want those. */
export function removedNames(report: ReapReport): string[] {
  return report.outcomes.filter((o) => o.action !== 'kept').map((o) => o.name);
}

// ------------------------------------------------------------------------------------------------ liveness

/** Verdict on a process that created or uses an object: alive if the pid runs with the recorded start time. */
/** Whether the process that holds a claim word (host/claim.ts: pid and start time in one word) runs. */
function claimVerdict(role: string, claim: bigint): Verdict {
  const pid = claimPid(claim);
  return claimAlive(claim) ? { dead: false, why: `${role} pid ${pid} is alive` } : { dead: true, why: `${role} pid ${pid} is gone` };
}

export function processVerdict(role: string, pid: number, start?: bigint): Verdict {
  const startTime = start === undefined || start === 0n ? undefined : start;
  if (isProcessAlive(pid, startTime)) return { dead: false, why: `${role} pid ${pid} is alive` };
  return { dead: true, why: `${role} pid ${pid} is gone` };
}

// ------------------------------------------------------------------------------------------------ files

/** A file found in a listed directory; `entry` is only ever used relative to `dir`. */
export interface FileCandidate extends Candidate {
  readonly dir: DirHandle;
  readonly entry: string;
  readonly dev: number;
  readonly ino: number;
  /** The pid the name carries, when the pattern has one. */
  readonly pid: number;
  /** What the entry must be: a regular file (segments, semaphores, queues), or a FIFO (fifo: handshakes). */
  readonly type: FileType;
}

export type FileType = 'file' | 'fifo';

function isType(st: Stats, type: FileType): boolean {
  return type === 'fifo' ? st.isFIFO() : st.isFile();
}

/**
 * Entries of `path` that `pattern` matches in full (its first group, if any, is the creator pid), as candidates
 * with their lstat. A match that is not a regular file (a symlink planted under the name) is a rejected candidate.
 */
export function listFiles(scope: Scope, kind: string, path: string, pattern: RegExp, accept?: (entry: string, dir: DirHandle) => boolean, type: FileType = 'file'): FileCandidate[] {
  const dir = scope.dir(path);
  if (!dir) return [];
  const out: FileCandidate[] = [];
  for (const entry of dir.list()) {
    const m = pattern.exec(entry);
    if (!m || m[0] !== entry) continue;
    let st: Stats | undefined;
    try {
      st = dir.lstat(entry);
    } catch { continue; }
    if (!st) continue;
    const base = { kind, name: `${path}/${entry}`, uid: st.uid, dir, entry, dev: st.dev, ino: st.ino, pid: m[1] === undefined ? 0 : Number(m[1]), type };
    if (!isType(st, type)) {
      out.push({ ...base, reject: st.isSymbolicLink() ? 'a symlink (never followed)' : type === 'fifo' ? 'not a FIFO' : 'not a regular file' });
      continue;
    }
    // Another user's file: the run will keep it as not the caller's, so its content is not even read (nor can
    // it be, mostly: 0600).
    if (accept && (scope.root || st.uid === scope.uid) && !accept(entry, dir)) continue;
    out.push(base);
  }
  return out;
}

/** The last look before unlinking a file candidate: same inode, still a regular file, same owner, still dead. */
export function removeFile<C extends FileCandidate>(c: C, isDead: () => Verdict): Verdict {
  const st = c.dir.lstat(c.entry);
  if (!st) return { dead: false, why: 'already gone' };
  if (!isType(st, c.type)) return { dead: false, why: `no longer a ${c.type === 'fifo' ? 'FIFO' : 'regular file'}` };
  if (st.dev !== c.dev || st.ino !== c.ino) return { dead: false, why: 'replaced by another file' };
  if (st.uid !== c.uid) return { dead: false, why: `owner changed to uid ${st.uid}` };
  const verdict = isDead();
  if (!verdict.dead) return verdict;
  return c.dir.unlink(c.entry) ? verdict : { dead: false, why: 'already gone' };
}

/**
 * A reaper of files whose name carries the pid of the process that made them (`role`): dead exactly when that
 * process is; removed through removeFile's last look. `find` lists the candidates (with listFiles).
 */
export function pidFileReaper(kind: string, pattern: string, role: string, find: (scope: Scope, kind: string) => FileCandidate[]): Reaper<FileCandidate> {
  const isDead = (c: FileCandidate) => processVerdict(role, c.pid);
  return { kind, pattern, find: (scope) => find(scope, kind), isDead, remove: (c) => removeFile(c, () => isDead(c)) };
}

/** The first `bytes` of a candidate file, only if it is still the same inode (undefined otherwise). */
function readSame(c: FileCandidate, bytes: number): Buffer | undefined {
  const got = c.dir.readHead(c.entry, bytes);
  if (!got || got.stat.ino !== c.ino || got.stat.dev !== c.dev) return undefined;
  return got.head;
}

// ------------------------------------------------------------------------------------------------ segment headers

interface Header { magic: number; version: number; count: number; creatorPid: number; creatorStart: bigint }

function parseHeader(head: Uint8Array): Header | undefined {
  if (head.length < SEGMENT_HEADER_SIZE) return undefined;
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  return {
    magic: view.getUint32(SEG_MAGIC_OFFSET, true),
    version: view.getUint32(SEG_VERSION_OFFSET, true),
    count: view.getUint32(SEG_RING_COUNT_OFFSET, true),
    creatorPid: view.getUint32(SEG_CREATOR_PID_OFFSET, true),
    creatorStart: view.getBigUint64(SEG_CREATOR_START_OFFSET, true),
  };
}

/** A header nobody has written yet: the creator died (or is still) between creating and formatting. */
function unformatted(head: Uint8Array): boolean {
  return head.subarray(0, SEGMENT_HEADER_SIZE).every((b) => b === 0);
}

// ------------------------------------------------------------------------------------------------ names

/** Names shmbus gives: shm:// endpoints and bus names are letters, digits, `_ . -` (host/url.ts, bus/naming.ts). */
const NAME_CHARS = '[A-Za-z0-9_.-]';
const PID = '([1-9][0-9]{0,9})';
const COUNTER = '[1-9][0-9]{0,15}';
/** `/dev/shm/shmbus.bus.<bus>`: a bus registry (host/bus.ts). */
export const BUS_REGISTRY_NAME = new RegExp(`^shmbus\\.bus\\.${NAME_CHARS}{1,100}$`);
/** `/dev/shm/shmbus.bus.<bus>.<topic>`: a bus topic. Bus and topic names may both hold dots, so the split is found
 * by looking for the registry, never by parsing. */
export const BUS_TOPIC_NAME = new RegExp(`^shmbus\\.bus\\.${NAME_CHARS}{1,100}\\.${NAME_CHARS}{1,64}$`);
const TOPIC_NAME = new RegExp(`^${NAME_CHARS}{1,64}$`);
function magicOf(dir: DirHandle, entry: string): number | 'unformatted' | undefined {
  let got: ReturnType<DirHandle['readHead']>;
  try {
    got = dir.readHead(entry, SEGMENT_HEADER_SIZE);
  } catch {
    return undefined;
  }
  if (!got) return undefined;
  if (got.head.length < SEGMENT_HEADER_SIZE || unformatted(got.head)) return 'unformatted';
  return parseHeader(got.head)!.magic;
}

// ------------------------------------------------------------------------------------------------ buses

const REGISTRY_BYTES = registryBytes(REGISTRY_TOPICS, REGISTRY_MEMBERS);

/** Whether a registry's creator or any of its members runs; read from the file again for every call. */
function registryVerdict(head: Buffer | undefined): Verdict {
  if (!head) return { dead: false, why: 'changed since the scan' };
  const h = parseHeader(head);
  if (!h || h.magic !== REGISTRY_MAGIC || head.length < REGISTRY_BYTES) return { dead: false, why: 'not a shmbus bus registry' };
  // A registry being set up has its creator alive and no member yet.
  const creator = processVerdict('creator', h.creatorPid, h.creatorStart);
  if (!creator.dead) return creator;
  let members = 0;
  for (let i = 0; i < REGISTRY_MEMBERS; i++) {
    const claim = head.readBigUInt64LE(memberOffset(i) + MEMBER_CLAIM_OFFSET);
    if (claim === BigInt(CLAIM_FREE)) continue;
    members++;
    const v = claimVerdict('member', claim);
    if (!v.dead) return v;
  }
  return { dead: true, why: `creator pid ${h.creatorPid} and all ${members} member(s) are gone` };
}

/** Topic names a registry lists as ready, each checked against the topic-name pattern (anything else is ignored). */
export function listedTopics(head: Buffer): string[] {
  const out: string[] = [];
  for (let i = 0; i < REGISTRY_TOPICS; i++) {
    const e = entryOffset(i);
    if (head.readUInt32LE(e + ENTRY_STATE_OFFSET) !== ENTRY_READY) continue;
    const length = head.readUInt32LE(e + ENTRY_NAME_LENGTH_OFFSET);
    if (length > REGISTRY_NAME_MAX) continue;
    const name = head.subarray(e + REGISTRY_NAME_OFFSET, e + REGISTRY_NAME_OFFSET + length).toString('latin1');
    if (TOPIC_NAME.test(name)) out.push(name);
  }
  return out;
}

/** A registry file read fresh (only a regular file, never through a symlink), or undefined. */
function readRegistry(dir: DirHandle, entry: string): Buffer | undefined {
  try {
    const got = dir.readHead(entry, REGISTRY_BYTES);
    const h = got && parseHeader(got.head);
    return h && h.magic === REGISTRY_MAGIC ? got!.head : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The registries a topic file name could belong to: `shmbus.bus.<bus>.<topic>` splits at any dot, so every split
 * whose left side is a registry in the same listing is a possible owner.
 */
function possibleOwners(dir: DirHandle, entry: string, listing: ReadonlySet<string>): { registry: string; topic: string }[] {
  const out: { registry: string; topic: string }[] = [];
  for (let i = entry.indexOf('.', 'shmbus.bus.'.length); i > 0; i = entry.indexOf('.', i + 1)) {
    const registry = entry.slice(0, i);
    const topic = entry.slice(i + 1);
    if (BUS_REGISTRY_NAME.test(registry) && TOPIC_NAME.test(topic) && listing.has(registry) && readRegistry(dir, registry)) out.push({ registry, topic });
  }
  return out;
}

/** A bus registry in /dev/shm: dead once its creator and every member are. */
export const busRegistries: Reaper<FileCandidate> = {
  kind: 'bus-registry',
  pattern: '/dev/shm/shmbus.bus.<bus>',
  find(scope) {
    return listFiles(scope, this.kind, scope.shmDir, BUS_REGISTRY_NAME, (entry, dir) => magicOf(dir, entry) === REGISTRY_MAGIC);
  },
  isDead(c) {
    return registryVerdict(readSame(c, REGISTRY_BYTES));
  },
  remove(c, scope) {
    return removeFile(c, () => this.isDead(c, scope));
  },
};

export interface TopicCandidate extends FileCandidate {
  /** The header is not written yet; only a dead registry that lists this very name proves it a topic. */
  readonly unformatted: boolean;
}

/**
 * A bus topic in /dev/shm: dead when every registry it could belong to is dead (or gone) and its own publisher,
 * subscribers and creator are gone. A topic whose header was never written is taken only when a dead registry
 * lists it: the registry's topic name is compared with names the listing returned, never joined into a path.
 */
export const busTopics: Reaper<TopicCandidate> = {
  kind: 'bus-topic',
  pattern: '/dev/shm/shmbus.bus.<bus>.<topic>',
  find(scope) {
    const dir = scope.dir(scope.shmDir);
    if (!dir) return [];
    const listing = new Set(dir.list());
    // Names that a dead-or-alive registry lists: the only way an unformatted file counts as a topic.
    const listed = new Set<string>();
    for (const entry of listing) {
      if (!BUS_REGISTRY_NAME.test(entry)) continue;
      const head = readRegistry(dir, entry);
      if (head) for (const topic of listedTopics(head)) listed.add(`${entry}.${topic}`);
    }
    return listFiles(scope, this.kind, scope.shmDir, BUS_TOPIC_NAME, (entry) => {
      const magic = magicOf(dir, entry);
      return magic === TOPIC_MAGIC || (magic === 'unformatted' && listed.has(entry));
    }).map((c) => ({ ...c, unformatted: magicOf(dir, c.entry) !== TOPIC_MAGIC }));
  },
  isDead(c) {
    const listing = new Set(c.dir.list());
    for (const owner of possibleOwners(c.dir, c.entry, listing)) {
      const v = registryVerdict(readRegistry(c.dir, owner.registry));
      if (!v.dead) return { dead: false, why: `its bus ${owner.registry}: ${v.why}` };
    }
    const head = readSame(c, topicDataOffset(TOPIC_MAX_SUBSCRIBERS));
    if (!head) return { dead: false, why: 'changed since the scan' };
    if (c.unformatted) {
      const listedBy = possibleOwners(c.dir, c.entry, listing).filter((o) => listedTopics(readRegistry(c.dir, o.registry)!).includes(o.topic));
      if (!unformatted(head) || listedBy.length === 0) return { dead: false, why: 'header not written and no dead bus lists it' };
      return { dead: true, why: `an unwritten topic of the dead bus ${listedBy[0]!.registry}` };
    }
    return topicVerdict(head);
  },
  remove(c, scope) {
    return removeFile(c, () => this.isDead(c, scope));
  },
};

/** Whether a topic's creator, publisher or any active subscriber runs. */
function topicVerdict(head: Buffer): Verdict {
  const h = parseHeader(head);
  if (!h || h.magic !== TOPIC_MAGIC) return { dead: false, why: 'not a shmbus topic' };
  const creator = processVerdict('creator', h.creatorPid, h.creatorStart);
  if (!creator.dead) return creator;
  const topic = TOPIC_HEADER_OFFSET;
  if (head.length < topic + TOPIC_HEADER_SIZE) return { dead: false, why: 'topic header is cut short' };
  const publisher = head.readBigUInt64LE(topic + TOPIC_PUBLISHER_CLAIM_OFFSET);
  if (publisher !== BigInt(CLAIM_FREE)) {
    const v = claimVerdict('publisher', publisher);
    if (!v.dead) return v;
  }
  const slots = Math.min(h.count, TOPIC_MAX_SUBSCRIBERS);
  for (let i = 0; i < slots; i++) {
    const slot = topic + TOPIC_HEADER_SIZE + i * TOPIC_SLOT_SIZE;
    if (slot + TOPIC_SLOT_SIZE > head.length) return { dead: false, why: 'subscriber table is cut short' };
    const claim = head.readBigUInt64LE(slot + SLOT_CLAIM_OFFSET);
    if (claim === BigInt(CLAIM_FREE)) continue;
    const v = claimVerdict('subscriber', claim);
    if (!v.dead) return v;
  }
  return { dead: true, why: `creator pid ${h.creatorPid}, its publisher and subscribers are gone` };
}

// ------------------------------------------------------------------------------------------------ handshake leftovers

const MQ_HANDSHAKE_NAME = new RegExp(`^${NAME_CHARS}{1,200}\\.${PID}\\.${COUNTER}\\.[ud]$`);
const FIFO_HANDSHAKE_NAME = new RegExp(`^.{1,240}\\.${PID}\\.${COUNTER}\\.(?:c2l|l2c)$`);

/** `<endpoint>` of `<endpoint>.<pid>.<n>.<suffix>`. */
function endpointOf(entry: string): string {
  return entry.replace(/\.[0-9]+\.[0-9]+\.[a-z0-9]+$/, '');
}

/**
 * The two queues a mq:// connector creates for its connection, `/dev/mqueue/<endpoint>.<pid>.<n>.u|d`
 * (transports/mq.ts). Both sides remove the names once the handshake is over, so only a connector killed
 * mid-handshake leaves them; its listener removes them at its next start, `shmbus clean` in the meantime. The
 * names are the application's, so a pair is taken only next to its endpoint: the listener's queue `<endpoint>`
 * (live, or left by a killed listener) is in the same listing.
 */
export const mqHandshakeQueues = pidFileReaper('mq-handshake', '/dev/mqueue/<endpoint>.<pid>.<n>.u|d next to the queue <endpoint>', 'connector',
  (scope, kind) => listFiles(scope, kind, scope.mqDir, MQ_HANDSHAKE_NAME, (entry, dir) => dir.lstat(endpointOf(entry))?.isFile() === true));

/**
 * The two FIFOs a fifo:// connector creates next to the endpoint, `<endpoint>.<pid>.<n>.c2l|l2c`
 * (transports/fifo.ts); left only by a connector killed mid-handshake. `shmbus clean` looks in --dir only,
 * and only next to the endpoint's own FIFO `<endpoint>`.
 */
export const fifoHandshakeFiles = pidFileReaper('fifo-handshake', '<dir>/<endpoint>.<pid>.<n>.c2l|l2c FIFOs next to the FIFO <endpoint> (only with --dir <dir>)', 'connector',
  (scope, kind) => scope.dirs.flatMap((path) => listFiles(scope, kind, path, FIFO_HANDSHAKE_NAME, (entry, dir) => dir.lstat(endpointOf(entry))?.isFIFO() === true, 'fifo')));

/** The reapers of shm:// buses (the wake objects' are in host/wake/reap.ts). Topics before registries: an
 * unwritten topic counts only while the dead registry that lists it is still there. */
export const busReapers: readonly Reaper[] = [busTopics as Reaper, busRegistries as Reaper];

/** The reapers of what transports' handshakes leave (a connector killed before it removed its names). */
export const handshakeReapers: readonly Reaper[] = [mqHandshakeQueues as Reaper, fifoHandshakeFiles as Reaper];

// ------------------------------------------------------------------------------------------------ queue endpoints

/**
 * The geometry of a mq:// listener's queue (transports/mq.ts creates it with these, capped by the system's
 * msgsize_max and msg_max): hellos are small, and the reaper recognises the queue by it.
 */
export const MQ_ENDPOINT_MSGSIZE = 1024;
export const MQ_ENDPOINT_MAXMSG = 10;
const MQ_ENDPOINT_NAME = new RegExp(`^${NAME_CHARS}{1,200}$`);
const WAKE_MQ_NAME = /^shmbus-wake\.[0-9]+\.[0-9]+$/;

/**
 * The queue a mq:// listener meets connectors at, `/dev/mqueue/<endpoint>` (transports/mq.ts). The listener holds
 * an exclusive flock on it for its whole life, so a queue whose lock is free was left by a killed listener. A
 * POSIX queue cannot be read without taking its messages, so what proves it shmbus's is the name, the exact
 * hello geometry and the lock protocol: a queue of another program with that geometry and no lock would be
 * taken too, which is why the caller's own queues only, and `--dry-run` first, are the rule for `shmbus clean`.
 */
export const mqEndpointQueues: Reaper<FileCandidate> = {
  kind: 'mq-endpoint',
  pattern: `/dev/mqueue/<endpoint> with msgsize ${MQ_ENDPOINT_MSGSIZE}, maxmsg ${MQ_ENDPOINT_MAXMSG} and no listener's lock`,
  find(scope) {
    return listFiles(scope, this.kind, scope.mqDir, MQ_ENDPOINT_NAME,
      (entry) => !MQ_HANDSHAKE_NAME.test(entry) && !WAKE_MQ_NAME.test(entry) && mqEndpointLook(entry) !== 'not an endpoint');
  },
  isDead(c) {
    const look = mqEndpointLook(c.entry);
    if (look === 'free') return { dead: true, why: 'no listener holds its lock (the listener was killed)' };
    return { dead: false, why: look === 'locked' ? 'its listener holds its lock: alive' : look === 'not an endpoint' ? 'not a mq:// endpoint any more' : look };
  },
  remove(c, scope) {
    return removeFile(c, () => this.isDead(c, scope));
  },
};

/** Whether queue `entry` has a mq:// endpoint's geometry, and whether a listener holds its lock (or why unknown). */
function mqEndpointLook(entry: string): 'free' | 'locked' | 'not an endpoint' | string {
  let fd: number;
  try {
    // `entry` comes from the directory listing, never from anything a queue holds.
    fd = mqOpen(`/${entry}`, O_RDONLY | O_NONBLOCK);
  } catch (error) {
    return `cannot open it: ${error instanceof Error ? error.message : String(error)}`;
  }
  try {
    const limits = mqLimits();
    const attr = mqGetattr(fd);
    if (attr.msgsize !== Math.min(MQ_ENDPOINT_MSGSIZE, limits.msgsizeMax) || attr.maxmsg !== Math.min(MQ_ENDPOINT_MAXMSG, limits.msgMax)) return 'not an endpoint';
    // Taken: nobody holds it (closing our descriptor below gives it back at once).
    return tryFlock(fd, LOCK_EX) ? 'free' : 'locked';
  } finally {
    mqClose(fd);
  }
}


/** What a sysvmq:// listener's card says (transports/sysvmq.ts: mtype 1, msgpack {shmbus: 1, pid, start, port, …}). */
interface ListenerCard { pid: number; start: bigint | undefined; port: number }

/** The card in queue `msqid`, read without taking it (MSG_COPY), or why there is none. Bounded: at most 512 bytes. */
function readListenerCard(msqid: number): ListenerCard | string {
  const buf = new Uint8Array(MSG_HEADER + 512);
  let n: number | undefined;
  try {
    n = msgPeek(msqid, buf, 0);
  } catch (error) {
    return `cannot read it: ${error instanceof Error ? error.message : String(error)}`;
  }
  if (n === undefined) return 'this kernel cannot read a message without taking it (no MSG_COPY)';
  if (n < 0) return 'holds no listener card: not provably shmbus\'s';
  if (msgType(buf) !== 1) return 'its first message is not a listener card';
  let card: unknown;
  try { card = decodePeer(buf.subarray(MSG_HEADER, MSG_HEADER + n)); } catch { return 'its first message is not a listener card'; }
  const c = card as { shmbus?: unknown; pid?: unknown; start?: unknown; port?: unknown };
  if (typeof card !== 'object' || card === null || c.shmbus !== 1 || !Number.isInteger(c.pid) || (c.pid as number) <= 0 || !Number.isInteger(c.port)) {
    return 'its first message is not a listener card';
  }
  const start = typeof c.start === 'string' && /^[0-9]{1,20}$/.test(c.start) ? BigInt(c.start) : undefined;
  return { pid: c.pid as number, start, port: c.port as number };
}

export interface MsgQueueCandidate extends Candidate {
  readonly msqid: number;
  readonly key: number;
  /** The key of the sysvmq:// endpoint it belongs to (a port: the key whose dead card names it). */
  readonly endpointKey: number;
}

const msgName = (q: { msqid: number; key: number }) => `msqid=${q.msqid} key=0x${q.key.toString(16).padStart(8, '0')}`;

/** The queue still has the key and owner it was found with. */
function sameQueue(c: MsgQueueCandidate): boolean {
  try {
    const st = msgStat(c.msqid);
    return st.key >>> 0 === c.key && st.uid === c.uid;
  } catch {
    return false;
  }
}

function removeQueue(c: MsgQueueCandidate, verdict: Verdict): Verdict {
  if (!verdict.dead) return verdict;
  return msgRemoveIfExists(c.msqid) ? verdict : { dead: false, why: 'already gone' };
}

/**
 * The queue a sysvmq:// listener keeps under its key, holding its card (transports/sysvmq.ts): dead when the
 * process the card names no longer runs (with the start time the card gives, against pid reuse).
 */
export const sysvmqEndpoints: Reaper<MsgQueueCandidate> = {
  kind: 'sysvmq-key',
  pattern: 'System V message queues with a key, holding a sysvmq:// listener card',
  find(scope) {
    // Only queues whose first message is a listener card; another user's is not read (nor listed).
    return listMsgQueues().filter((q) => q.key !== 0 && (scope.root || q.uid === scope.uid) && typeof readListenerCard(q.msqid) !== 'string')
      .map((q) => ({ kind: this.kind, name: msgName(q), uid: q.uid, msqid: q.msqid, key: q.key, endpointKey: q.key }));
  },
  isDead(c) {
    if (!sameQueue(c)) return { dead: false, why: 'changed since the scan' };
    const card = readListenerCard(c.msqid);
    if (typeof card === 'string') return { dead: false, why: card };
    return processVerdict('listener', card.pid, card.start);
  },
  remove(c, scope) {
    return removeQueue(c, this.isDead(c, scope));
  },
};

/**
 * The card of a dead listener that names private queue `q` as its port, or whose process last received from `q`.
 * The kernel records the last receiver as a thread id (lrpid), from the same pool of numbers as process ids: once
 * any task has the dead listener's pid again (a thread of a live process, say its msgrcv thread), `q` may be
 * that task's, so a number in use never ties a queue to a dead listener.
 */
function deadListenerOf(q: MsgQueue, queues: MsgQueue[]): { card: ListenerCard; endpoint: MsgQueue } | undefined {
  const lastReceiverGone = q.lrpid > 0 && !taskIdInUse(q.lrpid);
  for (const endpoint of queues) {
    if (endpoint.key === 0 || endpoint.uid !== q.uid) continue;
    const card = readListenerCard(endpoint.msqid);
    if (typeof card === 'string' || !(card.port === q.msqid || (lastReceiverGone && q.lrpid === card.pid))) continue;
    if (processVerdict('listener', card.pid, card.start).dead) return { card, endpoint };
  }
  return undefined;
}

/**
 * The private queues of a killed sysvmq:// listener: its port (named by its card, which must still be there:
 * this reaper runs before the endpoints') and the inbound queues it was the last to receive from. A private
 * queue it never received from cannot be told from any other program's and stays (`ipcrm`).
 */
export const sysvmqPorts: Reaper<MsgQueueCandidate> = {
  kind: 'sysvmq-port',
  pattern: 'System V private queues of a dead sysvmq:// listener (its port, the queues it received from)',
  find() {
    const queues = listMsgQueues();
    return queues.flatMap((q) => {
      const owner = q.key === 0 ? deadListenerOf(q, queues) : undefined;
      return owner ? [{ kind: this.kind, name: msgName(q), uid: q.uid, msqid: q.msqid, key: q.key, endpointKey: owner.endpoint.key }] : [];
    });
  },
  isDead(c) {
    if (!sameQueue(c)) return { dead: false, why: 'changed since the scan' };
    const queues = listMsgQueues();
    const q = queues.find((x) => x.msqid === c.msqid);
    const owner = q && deadListenerOf(q, queues);
    if (!owner) return { dead: false, why: 'no dead listener\'s card names it any more' };
    const role = owner.card.port === c.msqid ? 'port' : 'inbound queue';
    return { dead: true, why: `the ${role} of listener pid ${owner.card.pid} (${msgName(owner.endpoint)}), which is gone` };
  },
  remove(c, scope) {
    return removeQueue(c, this.isDead(c, scope));
  },
};

/**
 * The reapers of what a killed listener of a message-queue transport leaves under its endpoint's name. Private
 * queues before the endpoints: only a dead listener's card ties them to shmbus.
 */
export const endpointReapers: readonly Reaper[] = [sysvmqPorts as Reaper, sysvmqEndpoints as Reaper, mqEndpointQueues as Reaper];

/** The reapers of a killed sysvmq:// listener, ports first (a sysvmq:// listener runs them for its key). */
export const sysvmqReapers: readonly Reaper[] = [sysvmqPorts as Reaper, sysvmqEndpoints as Reaper];

/**
 * Removes the shm:// buses nobody uses any more: registries in `dir` whose creator and members are all dead, and
 * the topics that only dead processes used. Returns the removed file names (without the directory).
 */
export function reapDeadBuses(dir = '/dev/shm', options: Omit<ReapOptions, 'shmDir'> = {}): string[] {
  const report = reap(busReapers, { ...options, shmDir: dir });
  return removedNames(report).map((name) => name.slice(dir.length + 1));
}
