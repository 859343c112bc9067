/**
 * A Region is one shared-memory segment, created or attached, that can be mapped at an address the caller owns
 * (a window of a wasm memory). Four kinds, one API:
 *
 * - `sysv`  shmget/shmat. Named by a key (`0x…`, or `private`). Mapped with shmat(SHM_REMAP).
 * - `posix` shm_open: a file in /dev/shm named `/name`. Mapped with mmap(MAP_SHARED|MAP_FIXED).
 * - `memfd` memfd_create: anonymous, shared only by passing the fd (e.g. a child's stdio). Sealed against
 *   shrinking and growing so a peer holding the fd cannot truncate it under our mapping (that would be SIGBUS).
 * - `file`  a regular file: persistence on demand with `sync()`.
 *
 * Lifetime: the process that created a segment owns it and removes it (IPC_RMID, shm_unlink, unlink) on
 * `close()`, unless it called `releaseOwnership()`. Removing never invalidates a live mapping: the kernel frees
 * the memory with its last mapping. Pages are reserved at creation (fallocate), so a full /dev/shm or file system
 * fails there with ERR_SHMBUS_NO_SPACE, never later with SIGBUS; a failed creation removes what it made.
 *
 * Create-or-attach (the `exclusive: false` option) is the classic pattern: create with O_EXCL / IPC_EXCL, and on
 * EEXIST attach instead (`created` false). An attached segment may still be being set up by its creator (size 0,
 * header unwritten): the caller verifies the header, and `mapAt` refuses a segment that has no size yet.
 */
import * as path from 'node:path';
import { BadArgumentError, BadStateError, CorruptError, ErrorCode, Errno, ShmbusError, SystemError, type ErrorCodeValue } from './errors.js';
import {
  F_SEAL_FUTURE_WRITE, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_WRITE, IPC_CREAT, IPC_EXCL, IPC_PRIVATE,
  MFD_ALLOW_SEALING, MFD_CLOEXEC, MFD_NAME_MAX, O_CLOEXEC, O_CREAT, O_EXCL, O_NOFOLLOW, O_RDWR, O_TMPFILE, PAGE_SIZE,
  SHM_NAME_MAX, SHM_REMAP,
} from './sys/constants.js';
import * as sys from './sys/shm.js';

export type RegionKind = 'sysv' | 'posix' | 'memfd' | 'file';

export interface CreateOptions {
  /** Bytes: a positive multiple of 4096. */
  size: number;
  /** Permission bits, applied exactly (not masked by the umask). Default 0o600. */
  mode?: number;
  /** memfd and anonymous files only: reserve just these [offset, length] ranges now; the rest of `size` stays sparse until the owner
   * populates it (MADV_POPULATE_WRITE, which fails with NO_SPACE instead of a later SIGBUS). Default: all of it. */
  reserve?: ReadonlyArray<readonly [number, number]>;
}

/** What a segment handed over by a peer must be (see `Region.fromPeerFd`, `Region.attachPeerSysV`). */
export interface PeerSegment {
  /** Exact size in bytes the handshake announced. */
  size: number;
  /** The verified uid of the peer that made it (SO_PEERCRED). */
  uid: number;
}

/** The seals a memfd must carry before we map it: nobody can change its size, nobody can add or lift a seal. */
export const SEGMENT_SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

export interface ExclusiveOption {
  /** true (default): fail with ERR_SHMBUS_EXISTS if it exists. false: attach to the existing one instead. */
  exclusive?: boolean;
}

/** Whom an attached POSIX or file segment may belong to (checked with fstat before it is mapped). */
export interface Trust {
  /** Accepted owner uids. Default: this process's effective uid only. */
  uids?: number[];
  /** Write bits for group/others (0o020, 0o002) the segment may carry. Default 0: neither. */
  writableBy?: number;
}

export interface TrustOption {
  /** Check owner and mode before attaching; without it any segment this process can open is attached. */
  trust?: Trust;
}

/** A System V key: a number, a fresh private segment, or ftok(path, projId ?? 1). */
export type SysVKey = number | 'private' | { path: string; projId?: number };

interface RegionInit {
  kind: RegionKind;
  name: string;
  size: number;
  fd: number;
  shmid: number;
  created: boolean;
  /** Whether `name` reliably names the object, so that remove() may act on it. */
  removable: boolean;
}

const DEFAULT_MODE = 0o600;
/** How often create-or-attach retries when the segment vanishes between the EEXIST and the attach. */
const CREATE_OR_ATTACH_ATTEMPTS = 4;

function hasCode(err: unknown, code: ErrorCodeValue): boolean {
  return err instanceof ShmbusError && err.code === code;
}

function checkSize(size: unknown): number {
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
    throw new BadArgumentError('region size must be a positive multiple of 4096', { size });
  }
  return size;
}

function checkMode(mode: unknown): number {
  if (mode === undefined) return DEFAULT_MODE;
  if (typeof mode !== 'number' || !Number.isInteger(mode) || mode < 0 || mode > 0o777) {
    throw new BadArgumentError('region mode must be permission bits 0..0o777', { mode });
  }
  return mode;
}

/** '/name': one leading '/', no other, not '.' or '..', at most NAME_MAX bytes after the '/'. glibc would strip
 * extra leading slashes and accept names we then could not round-trip, so they are refused here. */
export function checkPosixName(name: unknown): string {
  const fail = (why: string) => new BadArgumentError(`bad POSIX shm name: ${why}`, { name });
  if (typeof name !== 'string') throw fail('not a string');
  if (!name.startsWith('/')) throw fail("must start with '/'");
  const rest = name.slice(1);
  if (rest.length === 0 || rest === '.' || rest === '..') throw fail('empty');
  if (rest.includes('/')) throw fail("no '/' after the first");
  if (rest.includes('\0')) throw fail('contains NUL');
  if (Buffer.byteLength(rest) > SHM_NAME_MAX) throw fail(`longer than ${SHM_NAME_MAX} bytes`);
  return name;
}

function checkMemfdName(name: unknown): string {
  if (typeof name !== 'string' || name.includes('\0') || Buffer.byteLength(name) > MFD_NAME_MAX) {
    throw new BadArgumentError(`bad memfd name: a string of at most ${MFD_NAME_MAX} bytes without NUL`, { name });
  }
  return name;
}

function resolveKey(key: SysVKey): number {
  if (key === 'private') return IPC_PRIVATE;
  if (typeof key === 'number') {
    // Accept both the signed key_t and the unsigned form people write (0xdeadbeef).
    if (!Number.isInteger(key) || key < -0x80000000 || key > 0xffffffff) throw new BadArgumentError('bad System V key', { key });
    return key | 0;
  }
  if (key && typeof key === 'object' && typeof key.path === 'string') return sys.ftok(key.path, key.projId ?? 1);
  throw new BadArgumentError('bad System V key', { key: String(key) });
}

function keyName(key: number): string {
  return key === IPC_PRIVATE ? 'private' : sys.formatKey(key);
}

/** Runs `fn`; if it throws, runs `cleanup` (whose own errors are dropped: the first failure is the one to report). */
function undoOnError<T>(fn: () => T, cleanup: () => void): T {
  try {
    return fn();
  } catch (err) {
    try { cleanup(); } catch { /* keep the original error */ }
    throw err;
  }
}

/** fallocate reserves the pages (tmpfs supports it); ftruncate sets the size where fallocate is not supported
 * by the file system, which then cannot promise the space up front. */
function reserve(fd: number, size: number, ranges: CreateOptions['reserve'] = [[0, size]]): void {
  try {
    for (const [offset, length] of ranges) if (offset < size) sys.fallocate(fd, offset, Math.min(length, size - offset));
  } catch (err) {
    if (!(err instanceof SystemError && err.errno === Errno.ENOTSUP)) throw err;
  }
  sys.ftruncate(fd, size);
}

/** Create, and on EEXIST (when allowed) attach; retried if the segment is removed in between. */
function createOrAttach(exclusive: boolean, create: () => Region, attach: () => Region): Region {
  for (let attempt = 1; ; attempt++) {
    try {
      return create();
    } catch (err) {
      if (exclusive || !hasCode(err, ErrorCode.EXISTS)) throw err;
    }
    try {
      return attach();
    } catch (err) {
      if (!hasCode(err, ErrorCode.NOT_FOUND) || attempt >= CREATE_OR_ATTACH_ATTEMPTS) throw err;
    }
  }
}

export class Region {
  readonly kind: RegionKind;
  /** posix '/name', absolute file path, SysV key as '0x…' (or 'private'), memfd name. */
  readonly name: string;
  /** Bytes; for an attached segment, its real size. */
  readonly size: number;
  /** -1 for sysv. Closed by `close()`. */
  readonly fd: number;
  /** -1 unless sysv. */
  readonly shmid: number;
  /** Whether this call created the segment (false: it attached to an existing one). */
  readonly created: boolean;

  #owner: boolean;
  readonly #removable: boolean;
  #removed = false;
  #closed = false;
  /** Addresses where this region is mapped now, so unmap/sync act only on our own windows. */
  readonly #mapped = new Set<bigint>();

  private constructor(init: RegionInit) {
    this.kind = init.kind;
    this.name = init.name;
    this.size = init.size;
    this.fd = init.fd;
    this.shmid = init.shmid;
    this.created = init.created;
    this.#owner = init.created && init.removable;
    this.#removable = init.removable;
  }

  /** Whether `close()` removes the segment. */
  get owner(): boolean {
    return this.#owner;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Addresses where this region is currently mapped. */
  get mappings(): bigint[] {
    return [...this.#mapped];
  }

  // ------------------------------------------------------------------------------------------ System V

  static createSysV(key: SysVKey, opts: CreateOptions & ExclusiveOption & TrustOption): Region {
    const size = checkSize(opts.size);
    const mode = checkMode(opts.mode);
    const k = resolveKey(key);
    const create = () => {
      const shmid = sys.shmGet(k, size, IPC_CREAT | IPC_EXCL | mode);
      // shmget needs no reservation step: the kernel charges the whole size to the commit limit here (ENOMEM →
      // NO_SPACE), and SysV segments live on the kernel's internal tmpfs, which has no size limit to hit later.
      return new Region({ kind: 'sysv', name: keyName(k), size, fd: -1, shmid, created: true, removable: true });
    };
    return createOrAttach(opts.exclusive ?? true, create, () => Region.attachSysV(k, opts));
  }

  /**
   * Attaches an existing System V segment by key (or id). With `trust`, refuses (ERR_SHMBUS_PERMISSION_DENIED) one
   * whose owner or creator `trust` does not accept, or that group or others may write, before it is mapped.
   */
  static attachSysV(keyOrId: number | { shmid: number } | { path: string; projId?: number }, opts: TrustOption = {}): Region {
    let shmid: number;
    if (typeof keyOrId === 'object' && keyOrId !== null && 'shmid' in keyOrId) {
      if (!Number.isInteger(keyOrId.shmid) || keyOrId.shmid < 0) throw new BadArgumentError('bad shmid', { shmid: keyOrId.shmid });
      shmid = keyOrId.shmid;
    } else {
      const k = resolveKey(keyOrId);
      if (k === IPC_PRIVATE) throw new BadArgumentError('a private segment cannot be attached by key; pass { shmid }');
      // Asking for rw access (0o600 in the low bits) makes shmget check permissions now; with 0 it would not,
      // and a foreign 0600 segment would only fail later at shmat.
      shmid = sys.shmGet(k, 0, 0o600);
    }
    const st = sys.shmStat(shmid);
    if (opts.trust) {
      Region.checkOwner(keyName(st.key), st.uid, st.mode, opts.trust);
      Region.checkOwner(keyName(st.key), st.cuid, st.mode, opts.trust);
    }
    return new Region({ kind: 'sysv', name: keyName(st.key), size: st.size, fd: -1, shmid, created: false, removable: true });
  }

  /**
   * Attaches a private System V segment a peer made for us, by id, after checking with IPC_STAT that it is the
   * one the verified peer created (creator uid and pid), already marked for removal (IPC_RMID: it dies with its
   * last detach, whatever happens to either side) and of the announced size. A failed check is
   * ERR_SHMBUS_PERMISSION_DENIED (somebody else's segment) or ERR_SHMBUS_CORRUPT (a wrong size).
   */
  static attachPeerSysV(shmid: number, expect: PeerSegment & { pid: number }): Region {
    if (!Number.isInteger(shmid) || shmid < 0) throw new BadArgumentError('bad shmid', { shmid });
    const st = sys.shmStat(shmid);
    if (st.cuid !== expect.uid || st.cpid !== expect.pid) {
      throw new ShmbusError(ErrorCode.PERMISSION_DENIED, 'System V segment was not created by the peer', {
        details: { shmid, creatorUid: st.cuid, creatorPid: st.cpid, peerUid: expect.uid, peerPid: expect.pid },
      });
    }
    if (!st.removed) throw new ShmbusError(ErrorCode.PERMISSION_DENIED, 'System V segment is not marked for removal', { details: { shmid } });
    if (st.size !== expect.size) throw new CorruptError('System V segment size differs from the handshake', { shmid, size: st.size, expected: expect.size });
    return new Region({ kind: 'sysv', name: keyName(st.key), size: st.size, fd: -1, shmid, created: false, removable: false });
  }

  /** Makes the verified peer `uid` the owner of this System V segment we created (we stay its creator), so a
   * 0600 segment admits that one other user and nobody else. A no-op when the uid is already the owner. */
  grantTo(uid: number, gid: number): void {
    if (this.kind !== 'sysv' || !this.created) throw new BadStateError('only a System V segment this process created can be granted', { kind: this.kind });
    const st = sys.shmStat(this.shmid);
    if (st.uid !== uid) sys.shmSetOwner(this.shmid, uid, gid);
  }

  // ------------------------------------------------------------------------------------------ POSIX

  static createPosix(name: string, opts: CreateOptions & ExclusiveOption & TrustOption): Region {
    checkPosixName(name);
    const size = checkSize(opts.size);
    const mode = checkMode(opts.mode);
    const create = () => {
      // O_EXCL: never adopt an object someone else made; O_NOFOLLOW (glibc adds it too): never a planted symlink.
      const fd = sys.shmOpen(name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
      undoOnError(() => { sys.fchmod(fd, mode); reserve(fd, size); }, () => { sys.closeFd(fd); sys.shmUnlink(name); });
      return new Region({ kind: 'posix', name, size, fd, shmid: -1, created: true, removable: true });
    };
    return createOrAttach(opts.exclusive ?? true, create, () => Region.attachPosix(name, opts));
  }

  /**
   * Opens an existing POSIX segment. With `trust`, refuses (ERR_SHMBUS_PERMISSION_DENIED, naming the owner) one
   * whose owner or mode `trust` does not accept, before anything is mapped or read.
   */
  static attachPosix(name: string, opts: TrustOption = {}): Region {
    checkPosixName(name);
    const fd = sys.shmOpen(name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0);
    const size = undoOnError(() => Region.checkTrust(fd, name, opts.trust), () => sys.closeFd(fd));
    return new Region({ kind: 'posix', name, size, fd, shmid: -1, created: false, removable: true });
  }

  /**
   * fstat of a segment we are about to attach: a regular file (or shm object), owned by a uid `trust` accepts,
   * writable by group or others only where `trust` says so. Returns its size. Without `trust`, only the size.
   */
  private static checkTrust(fd: number, name: string, trust: Trust | undefined): number {
    const st = sys.fdStat(fd);
    if (!st.isFile()) throw new BadArgumentError('not a regular file or shared memory object', { name });
    if (!trust) return st.size;
    Region.checkOwner(name, st.uid, st.mode, trust);
    return st.size;
  }

  /** The one trust rule for every kind: owned by a uid `trust` accepts, writable by group or others only where
   * `trust` says so. ERR_SHMBUS_PERMISSION_DENIED otherwise. */
  private static checkOwner(name: string, uid: number, mode: number, trust: Trust): void {
    const uids = trust.uids ?? [process.geteuid?.() ?? 0];
    if (!uids.includes(uid)) {
      throw new ShmbusError(ErrorCode.PERMISSION_DENIED, 'segment is owned by a user this process does not trust', {
        details: { name, owner: uid, expected: uids.join(',') },
      });
    }
    const loose = mode & 0o022 & ~(trust.writableBy ?? 0);
    if (loose !== 0) {
      throw new ShmbusError(ErrorCode.PERMISSION_DENIED, 'segment is writable by group or others', {
        details: { name, owner: uid, mode: '0o' + (mode & 0o777).toString(8) },
      });
    }
  }

  // ------------------------------------------------------------------------------------------ memfd

  /** An anonymous segment: share it by passing `fd` (a child's stdio, SCM_RIGHTS). Nothing to remove. */
  static createMemfd(name: string, opts: CreateOptions): Region {
    checkMemfdName(name);
    const size = checkSize(opts.size);
    const mode = checkMode(opts.mode);
    const fd = sys.memfdCreate(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    undoOnError(() => {
      // The mode guards /proc/<pid>/fd/<n> opens by other users.
      sys.fchmod(fd, mode);
      reserve(fd, size, opts.reserve);
      sys.addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    }, () => sys.closeFd(fd));
    return new Region({ kind: 'memfd', name, size, fd, shmid: -1, created: true, removable: false });
  }

  /**
   * Wraps an fd this process received (an inherited stdio fd, SCM_RIGHTS). The Region takes the fd over: `close()`
   * closes it. It never removes anything: the name the fd had may since point to another object.
   */
  static fromFd(fd: number, kind: 'memfd' | 'posix' | 'file' = 'memfd'): Region {
    if (!Number.isInteger(fd) || fd < 0) throw new BadArgumentError('bad fd', { fd });
    const st = sys.fdStat(fd);
    if (!st.isFile()) throw new BadArgumentError('fd is not a regular file or shared memory object', { fd, kind });
    const link = sys.fdPath(fd) ?? `fd:${fd}`;
    const name = kind === 'memfd' ? link.replace(/^\/memfd:(.*?)(?: \(deleted\))?$/, '$1')
      : kind === 'posix' ? link.replace(/^\/dev\/shm(?=\/)/, '') : link;
    return new Region({ kind, name, size: st.size, fd, shmid: -1, created: false, removable: false });
  }

  /**
   * Wraps a segment descriptor a peer passed us (SCM_RIGHTS) after checking that it is safe to map: a regular
   * file of the verified peer's uid and of the announced size; a memfd must carry SEGMENT_SEALS (and no write
   * seal), a file must have no name left anywhere (no link: nobody can open it and shrink it). Takes the fd
   * over: on success `close()` closes it, on failure it is closed here. A wrong owner or missing seals is
   * ERR_SHMBUS_PERMISSION_DENIED, a wrong size ERR_SHMBUS_CORRUPT.
   */
  static fromPeerFd(fd: number, kind: 'memfd' | 'file', expect: PeerSegment): Region {
    if (!Number.isInteger(fd) || fd < 0) throw new BadArgumentError('bad fd', { fd });
    return undoOnError(() => {
      const st = sys.fdStat(fd);
      const denied = (why: string, extra: Record<string, unknown> = {}) =>
        new ShmbusError(ErrorCode.PERMISSION_DENIED, `segment from the peer refused: ${why}`, { details: { kind, ...extra } });
      if (!st.isFile()) throw denied('not a regular file or memfd');
      if (st.uid !== expect.uid) throw denied('owned by another user', { owner: st.uid, peerUid: expect.uid });
      let name: string;
      if (kind === 'memfd') {
        // The seals are proof enough that this is a memfd: every other shmem file is born with F_SEAL_SEAL, so
        // it can never carry the seals against resizing, and files elsewhere cannot be sealed at all (EINVAL).
        // Its name (readlink of /proc/self/fd) would cost a syscall per connection and says nothing we trust.
        let seals: number;
        try {
          seals = sys.getSeals(fd);
        } catch (err) {
          if (err instanceof SystemError && err.errno === Errno.EINVAL) throw denied('not a memfd (it cannot be sealed)');
          throw err;
        }
        if ((seals & SEGMENT_SEALS) !== SEGMENT_SEALS || (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) !== 0) {
          throw denied('memfd is not sealed against resizing', { seals, required: SEGMENT_SEALS });
        }
        name = `memfd from peer ${expect.uid}`;
      } else {
        const link = sys.fdPath(fd) ?? '';
        if (st.nlink !== 0) throw denied('file still has a name', { path: link, links: st.nlink });
        name = link.replace(/ \(deleted\)$/, '');
      }
      if (st.size !== expect.size) throw new CorruptError('segment size differs from the handshake', { size: st.size, expected: expect.size });
      return new Region({ kind, name, size: st.size, fd, shmid: -1, created: false, removable: false });
    }, () => sys.closeFd(fd));
  }

  // ------------------------------------------------------------------------------------------ files

  /**
   * A file segment without a name: O_TMPFILE in `dir` (the file system chooses where the pages live: disk,
   * hugetlbfs, a DAX mount), shared only by passing the fd. Where the file system has no O_TMPFILE the file is
   * created O_EXCL|O_NOFOLLOW under a random name and unlinked at once. Nothing is left behind even by SIGKILL
   * (but a file cannot be sealed: whoever holds the fd can shrink it).
   */
  static createAnonymousFile(dir: string, opts: CreateOptions): Region {
    if (typeof dir !== 'string' || dir.length === 0) throw new BadArgumentError('bad directory', { dir });
    const size = checkSize(opts.size);
    const mode = checkMode(opts.mode);
    const abs = path.resolve(dir);
    let fd: number;
    try {
      fd = sys.openFile(abs, O_RDWR | O_TMPFILE | O_CLOEXEC, mode);
    } catch (err) {
      if (!(err instanceof SystemError && (err.errno === Errno.ENOTSUP || err.errno === Errno.EISDIR))) throw err;
      const name = path.join(abs, `.shmbus.${process.pid}.${Math.random().toString(36).slice(2)}.ring`);
      fd = sys.openFile(name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
      undoOnError(() => sys.unlinkFile(name), () => sys.closeFd(fd));
    }
    undoOnError(() => { sys.fchmod(fd, mode); reserve(fd, size, opts.reserve); }, () => sys.closeFd(fd));
    return new Region({ kind: 'file', name: `${abs}/(anonymous)`, size, fd, shmid: -1, created: true, removable: false });
  }

  static createFile(filePath: string, opts: CreateOptions & ExclusiveOption & TrustOption): Region {
    if (typeof filePath !== 'string' || filePath.length === 0) throw new BadArgumentError('bad file path', { path: filePath });
    const size = checkSize(opts.size);
    const mode = checkMode(opts.mode);
    // Absolute, so remove() still finds it after a chdir.
    const abs = path.resolve(filePath);
    const create = () => {
      // O_EXCL also refuses to follow a symlink planted at the path; O_NOFOLLOW says so explicitly.
      const fd = sys.openFile(abs, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
      undoOnError(() => { sys.fchmod(fd, mode); reserve(fd, size); }, () => { sys.closeFd(fd); sys.unlinkFile(abs); });
      return new Region({ kind: 'file', name: abs, size, fd, shmid: -1, created: true, removable: true });
    };
    return createOrAttach(opts.exclusive ?? true, create, () => Region.attachFile(abs, opts));
  }

  /** Opens an existing file segment (never through a symlink). `trust` as for attachPosix. */
  static attachFile(filePath: string, opts: TrustOption = {}): Region {
    if (typeof filePath !== 'string' || filePath.length === 0) throw new BadArgumentError('bad file path', { path: filePath });
    const abs = path.resolve(filePath);
    const fd = sys.openFile(abs, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    const size = undoOnError(() => Region.checkTrust(fd, abs, opts.trust), () => sys.closeFd(fd));
    return new Region({ kind: 'file', name: abs, size, fd, shmid: -1, created: false, removable: true });
  }

  /**
   * fstat now: the segment's size may have changed since it was opened (a peer with write access can ftruncate a
   * POSIX or file segment; touching a page past the end is SIGBUS). A caller checks this right after mapping.
   */
  currentSize(): number {
    if (this.fd < 0) return this.size;
    return sys.fdStat(this.fd).size;
  }

  // ------------------------------------------------------------------------------------------ mapping

  /** Bytes a mapping covers: the kernel maps whole pages (an attached segment may have an odd size). */
  get mapLength(): number {
    return Math.ceil(this.size / PAGE_SIZE) * PAGE_SIZE;
  }

  /**
   * Maps the whole segment read-write at `addr`, replacing what was there (MAP_FIXED / SHM_REMAP). The caller
   * guarantees that `addr` is 4 KiB aligned and that [addr, addr + mapLength) is its own (a wasm memory window).
   */
  mapAt(addr: bigint): void {
    if (this.#closed) throw new BadStateError('region is closed', { kind: this.kind, name: this.name });
    if (typeof addr !== 'bigint' || addr <= 0n || addr % BigInt(PAGE_SIZE) !== 0n) {
      throw new BadArgumentError('map address must be a positive multiple of 4096', { addr: String(addr) });
    }
    if (this.size === 0) {
      throw new BadStateError('segment has no size yet (its creator may still be setting it up)', { kind: this.kind, name: this.name });
    }
    if (this.kind === 'sysv') sys.shmAttach(this.shmid, addr, SHM_REMAP);
    else sys.mmapFixed(addr, this.mapLength, this.fd, 0);
    this.#mapped.add(addr);
  }

  /** Puts anonymous zero pages back over the window (never a hole: the wasm memory still owns the range). For
   * SysV this is the detach. Works after close(). */
  unmapAt(addr: bigint): void {
    this.#checkMapped(addr);
    sys.mmapAnonymousFixed(addr, this.mapLength);
    this.#mapped.delete(addr);
  }

  /** msync(MS_SYNC) of the window at `addr`: writes a file-backed segment through to disk now. */
  sync(addr: bigint): void {
    this.#checkMapped(addr);
    sys.msync(addr, this.mapLength);
  }

  #checkMapped(addr: bigint): void {
    if (!this.#mapped.has(addr)) {
      throw new BadArgumentError('region is not mapped at this address', { kind: this.kind, name: this.name, addr: String(addr) });
    }
  }

  // ------------------------------------------------------------------------------------------ lifetime

  /** Removes the name (or SysV id) now; live mappings stay valid. Idempotent; already gone is fine. A no-op for
   * memfd and fromFd regions, which have no name to remove. */
  remove(): void {
    if (this.#removed || !this.#removable) return;
    try {
      if (this.kind === 'sysv') sys.shmRemove(this.shmid);
      else if (this.kind === 'posix') sys.shmUnlink(this.name);
      else sys.unlinkFile(this.name);
    } catch (err) {
      if (!hasCode(err, ErrorCode.NOT_FOUND)) throw err;
    }
    this.#removed = true;
  }

  /** This process will not remove the segment on close (it outlives us, or another process takes it over). */
  releaseOwnership(): void {
    this.#owner = false;
  }

  /** Closes the fd and, if this process owns the segment, removes it. Mappings stay valid. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      if (this.#owner) this.remove();
    } finally {
      if (this.fd >= 0) sys.closeFd(this.fd);
    }
  }
}
