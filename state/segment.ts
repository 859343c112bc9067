/**
 * The segment under a SharedState, a Mutex or a Semaphore: named by a URL, created or attached under the
 * project's trust rules, mapped into a window of the process's wasm memory (so that the futex wait thread, which
 * sleeps on words of that memory, can sleep on its words too), its header checked before anything else is read.
 *
 *   shm://name    POSIX shared memory /dev/shm/shmbus.<kind>.<name>, created O_EXCL|O_NOFOLLOW; an existing one is
 *                 attached only after fstat shows our uid as its owner and no group/other write bit beyond `perm`
 *   sysv://0x1234 the System V segment with that key (shmget IPC_CREAT|IPC_EXCL, else attach); an existing one is
 *                 attached only after IPC_STAT shows the same owner and mode rules
 *
 * The URL takes one option, `perm` (octal mode of a created segment, default 0600); `open`'s `perm` option
 * overrides it. Lifetime: the process that created the segment removes its name on `close()` and at normal exit
 * (processes that have it mapped keep using it; a later opener creates a new one). Layout: assembly/layout.ts,
 * "Shared state and lock segments".
 */
import {
  SYNC_MAGIC_OFFSET, SYNC_VERSION_OFFSET, SYNC_SHAPE_OFFSET, SYNC_HEADER_SIZE_OFFSET, SYNC_SIZE_OFFSET,
  SYNC_CREATOR_PID_OFFSET, SYNC_CREATOR_START_OFFSET, SYNC_PARAM_OFFSET, SYNC_HEADER_SIZE, SYNC_LAYOUT_VERSION,
  SYNC_LAYOUT_VERSION_MAJOR,
} from '../assembly/layout.js';
import {
  BadArgumentError, BadUrlError, CorruptError, ErrorCode, ShmbusError, UnknownSchemeError, VersionMismatchError,
} from '../host/errors.js';
import { parseShmUrl } from '../host/url.js';
import { Region, type Trust } from '../host/region.js';
import { getEngine, type Engine } from '../host/engine.js';
import { processStartTime } from '../host/sys/proc.js';
import { onProcessExit } from '../host/exit.js';
import { Mapped } from '../host/mapped.js';

/** What a URL names, once parsed. */
export interface Target {
  scheme: 'shm' | 'sysv';
  /** POSIX: '/shmbus.<kind>.<name>'; System V: the key as 0x…. */
  name: string;
  key?: number;
  /** Mode of a created segment. */
  perm: number;
  url: string;
}

/** Which of the three kinds, and the shape its opener expects. */
export interface Expect {
  kind: 'state' | 'mutex' | 'semaphore';
  magic: number;
  /** Field-list hash, or unit count; undefined: accept the segment's (an opener that does not care). */
  shape: number | undefined;
  /** State: block bytes; else 0. */
  param: number;
  /** Segment bytes the body needs, from shape and param (called with the segment's own shape when undefined). */
  bytes(shape: number, param: number): number;
  /** Shape written by a creator (required when creating). */
  createShape?: number;
  /** Most bytes a segment of this kind can need for this opener: a larger one is refused before it is mapped (its
   * size is a peer's choice, and every byte of it would take a window of this process's memory). */
  most: number;
}

export interface OpenOptions {
  /** Create the segment if it does not exist (default true). false: attach only, ERR_SHMBUS_NOT_FOUND if absent. */
  create?: boolean;
  /** Mode of a created segment (default: the URL's perm, else 0o600). An attached one may be writable by group or
   * others only if this allows it. */
  perm?: number;
}

/** How long an opener waits for a creator that made the segment but has not published its header yet. */
const FORMAT_WAIT_MS = 2000;

/** Parses `shm://name` or `sysv://key` (option: perm) for a segment of `kind`. */
export function parseTarget(url: string, kind: Expect['kind'], perm?: number): Target {
  if (typeof url !== 'string') throw new BadUrlError('URL must be a string', String(url));
  const endpoint = parseShmUrl(url);
  if (endpoint.scheme === 'file') throw new UnknownSchemeError(url, 'file');
  for (const key of new URL(url).searchParams.keys()) {
    if (key !== 'perm') throw new BadUrlError(`a ${kind} URL takes only the perm option`, url, { details: { option: key } });
  }
  let mode = endpoint.perm;
  if (perm !== undefined) {
    if (!Number.isInteger(perm) || perm < 0 || perm > 0o777) throw new BadArgumentError('perm must be permission bits 0..0o777', { perm });
    mode = perm;
  }
  return endpoint.scheme === 'sysv'
    ? { scheme: 'sysv', name: endpoint.name, key: endpoint.key!, perm: mode, url }
    : { scheme: 'shm', name: `/shmbus.${kind}.${endpoint.name}`, perm: mode, url };
}

/** A segment mapped into a window of the engine, header checked. */
export class SyncSegment {
  readonly engine: Engine;
  readonly region: Region;
  /** Offset of the segment in linear memory. */
  readonly at: number;
  readonly shape: number;
  readonly param: number;
  readonly created: boolean;
  readonly url: string;
  #closed = false;
  readonly #unhook: () => void;

  private constructor(engine: Engine, region: Region, at: number, shape: number, param: number, url: string) {
    this.engine = engine;
    this.region = region;
    this.at = at;
    this.shape = shape;
    this.param = param;
    this.created = region.created;
    this.url = url;
    // A creator removes the name at normal exit too (the mapping of every other process stays valid).
    this.#unhook = onProcessExit(() => { try { region.close(); } catch { /* exiting */ } });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The process address of byte `offset` of the segment (for FUTEX_WAKE). */
  address(offset: number): bigint {
    return this.engine.address(this.at + offset);
  }

  /** Unmaps, and removes the name if this process created the segment. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#unhook();
    new Mapped(this.engine, this.region, this.at).unmap();
  }

  /** Creates or attaches the segment `target` names, checks it and maps it. */
  static async open(target: Target, expect: Expect, options: OpenOptions): Promise<SyncSegment> {
    const create = options.create ?? true;
    if (typeof create !== 'boolean') throw new BadArgumentError('create must be a boolean', { create: String(create) });
    const trust: Trust = { uids: [process.geteuid?.() ?? 0], writableBy: target.perm & 0o022 };
    let region: Region;
    if (create) {
      if (expect.createShape === undefined) throw new BadArgumentError(`creating a ${expect.kind} needs its shape`, { url: target.url });
      const size = expect.bytes(expect.createShape, expect.param);
      region = target.scheme === 'shm'
        ? Region.createPosix(target.name, { size, exclusive: false, mode: target.perm, trust })
        : Region.createSysV(target.key!, { size, exclusive: false, mode: target.perm, trust });
    } else {
      region = target.scheme === 'shm' ? Region.attachPosix(target.name, { trust }) : Region.attachSysV(target.key!, { trust });
    }
    // A creator sizes its POSIX segment right after creating it: an opener may see it empty for a moment.
    for (const deadline = Date.now() + FORMAT_WAIT_MS; !region.created && region.size < SYNC_HEADER_SIZE;) {
      region.close();
      if (Date.now() > deadline) throw new CorruptError(`${expect.kind} segment is smaller than its header`, { url: target.url, size: region.size });
      await new Promise((resolve) => setTimeout(resolve, 5));
      region = target.scheme === 'shm' ? Region.attachPosix(target.name, { trust }) : Region.attachSysV(target.key!, { trust });
    }
    // Maps, and refuses a segment already shorter than its mapping (touching past its end would be SIGBUS).
    let mapped: Mapped;
    try {
      if (region.size > expect.most) {
        throw new CorruptError(`${expect.kind} segment is larger than its body can be`, { url: target.url, size: region.size, most: expect.most });
      }
      mapped = Mapped.map(getEngine(), region);
    } catch (error) {
      region.close(); // Mapped.map closes it on some failures, not all (no window, no engine); closing twice is fine
      throw error;
    }
    const { engine, at } = mapped;
    try {
      let shape: number;
      if (region.created) {
        shape = expect.createShape!;
        format(engine, at, expect, shape, region.size);
      } else {
        shape = await checkHeader(engine, at, region.size, expect, target.url);
      }
      return new SyncSegment(engine, region, at, shape, expect.param, target.url);
    } catch (error) {
      mapped.unmap();
      throw error;
    }
  }
}

function words(engine: Engine, at: number): Int32Array {
  return new Int32Array(engine.memory.buffer, at, SYNC_HEADER_SIZE / 4);
}

function format(engine: Engine, at: number, expect: Expect, shape: number, size: number): void {
  const view = new DataView(engine.memory.buffer, at, SYNC_HEADER_SIZE);
  view.setUint32(SYNC_MAGIC_OFFSET, expect.magic, true);
  view.setUint32(SYNC_SHAPE_OFFSET, shape >>> 0, true);
  view.setUint32(SYNC_HEADER_SIZE_OFFSET, SYNC_HEADER_SIZE, true);
  view.setBigUint64(SYNC_SIZE_OFFSET, BigInt(size), true);
  view.setUint32(SYNC_CREATOR_PID_OFFSET, process.pid, true);
  view.setBigUint64(SYNC_CREATOR_START_OFFSET, processStartTime(process.pid) ?? 0n, true);
  view.setUint32(SYNC_PARAM_OFFSET, expect.param >>> 0, true);
  // SYNC: pairs with the Atomics.load of the version in checkHeader; publishes every store above.
  Atomics.store(words(engine, at), SYNC_VERSION_OFFSET / 4, SYNC_LAYOUT_VERSION);
}

const versionText = (v: number) => `${v >>> 16}.${v & 0xffff}`;

/** Waits for the creator's version word, then checks every header field against `expect`. Returns the shape. */
async function checkHeader(engine: Engine, at: number, mapped: number, expect: Expect, url: string): Promise<number> {
  const w = words(engine, at);
  // SYNC: pairs with the Atomics.store of the version in format().
  const deadline = Date.now() + FORMAT_WAIT_MS;
  while (Atomics.load(w, SYNC_VERSION_OFFSET / 4) === 0) {
    if (Date.now() > deadline) throw new CorruptError(`${expect.kind} segment was never initialised (version word is 0)`, { url });
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const view = new DataView(engine.memory.buffer, at, SYNC_HEADER_SIZE);
  const version = Atomics.load(w, SYNC_VERSION_OFFSET / 4) >>> 0;
  const magic = view.getUint32(SYNC_MAGIC_OFFSET, true);
  if (magic !== expect.magic) throw new CorruptError(`not a shmbus ${expect.kind} segment (bad magic)`, { url, magic: '0x' + magic.toString(16) });
  if (version >>> 16 !== SYNC_LAYOUT_VERSION_MAJOR) throw new VersionMismatchError(`${expect.kind} segment layout`, versionText(version), versionText(SYNC_LAYOUT_VERSION));
  if (view.getUint32(SYNC_HEADER_SIZE_OFFSET, true) !== SYNC_HEADER_SIZE) throw new CorruptError('segment header size is wrong', { url });
  const shape = view.getUint32(SYNC_SHAPE_OFFSET, true);
  const param = view.getUint32(SYNC_PARAM_OFFSET, true);
  if ((expect.shape !== undefined && shape !== expect.shape >>> 0) || param !== expect.param >>> 0) {
    throw new ShmbusError(ErrorCode.VERSION_MISMATCH, `the ${expect.kind} segment was created with another shape`, {
      details: { url, shape: '0x' + shape.toString(16), expected: expect.shape === undefined ? 'any' : '0x' + (expect.shape >>> 0).toString(16), param, expectedParam: expect.param },
    });
  }
  let needed: number;
  try {
    needed = expect.bytes(shape, param);
  } catch (cause) {
    throw new CorruptError(`${expect.kind} segment header holds an impossible shape`, { url, shape });
  }
  const size = Number(view.getBigUint64(SYNC_SIZE_OFFSET, true));
  if (size !== needed || needed > mapped) throw new CorruptError(`${expect.kind} segment is shorter than its body`, { url, size, needed, mapped });
  return shape;
}
