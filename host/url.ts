/**
 * Endpoint URLs. Every endpoint is a URL; its query string carries the options.
 *
 *   shm://name            POSIX shared memory (shm_open) segments
 *   sysv://0x1234         System V segments (the key, hex or decimal, names the endpoint; see docs/url.md)
 *   file:///path          file-backed mmap segments next to `path`
 *
 * Options: size (bytes per ring direction, a power of two, with an optional KiB/MiB/GiB suffix), perm (octal
 * mode of the segments, default 0600), maxMessage (the largest message this side takes, in bytes with an
 * optional suffix: larger than a ring record it goes as fragments; default 16 MiB without `size`, one record with
 * it), maxQueued (hard cap of the local send queue), wake (how a side waits:
 * `adaptive`, the default, spins for a self-tuned while then parks on the control socket; `spin` never parks;
 * a mechanism name (`doorbell`, `futex`, `sem`, ...) parks on that mechanism at once), spin (microseconds to
 * busy-poll before parking, or `auto`), allow (listener: who else may connect, `uid:1000,gid:50` or `any`; by
 * default only the listener's own uid and root), expectUid (connector: the uid the listener must run as; by
 * default the connector's own uid or root). See docs/security.md.
 */
import { BadUrlError, UnknownSchemeError } from './errors.js';

/** The largest `maxMessage` a URL may ask for. */
export const MAX_MESSAGE_OPTION = 1 << 30;
import { RING_MIN_CAPACITY, RING_MAX_CAPACITY } from '../assembly/layout.js';
import { mechanismFor } from './wake/index.js';
import { OWNER_ONLY, parseAllow, parseUid, type PeerPolicy } from './control.js';

export type ShmScheme = 'shm' | 'sysv' | 'file';
/** `adaptive` (default), `spin`, or the name of a wake mechanism (`doorbell`, `futex`, ...). */
export type WakeMode = string;

export interface ShmEndpoint {
  scheme: ShmScheme;
  /** The endpoint's name: the shm name, the System V key as 0x…, or the absolute file path. */
  name: string;
  /** The System V key, for sysv:. */
  key?: number;
  /** Ring data bytes per direction. */
  size: number;
  /** Whether the URL gave `size` (otherwise `size` is DEFAULT_RING_SIZE and a listener picks its own default). */
  sizeGiven: boolean;
  /** The largest message this side takes (`maxMessage`), if the URL gave it. */
  maxMessage?: number;
  /** Mode of created segments. */
  perm: number;
  /** Hard cap of messages waiting in the local send queue. */
  maxQueued: number;
  wake: WakeMode;
  /**
   * How long a side busy-polls before it parks, in nanoseconds: 'auto' tunes itself (the default for
   * `wake=adaptive`), 'always' never parks (`wake=spin`), 0 parks at once (the default for a named mechanism).
   */
  spin: number | 'auto' | 'always';
  /** Listener: who may connect besides its own uid and root. */
  allow: PeerPolicy;
  /** Connector: the uid the listener must run as (undefined: our own uid or root). */
  expectUid?: number;
  /** Where the control socket listens (Linux abstract namespace: nothing to clean up on disk). */
  controlPath: string;
  url: string;
}

export const DEFAULT_RING_SIZE = 4 * 1024 * 1024;
export const DEFAULT_MAX_QUEUED = 65536;

const SCHEMES: readonly string[] = ['shm', 'sysv', 'file'];
const OPTIONS = new Set(['size', 'maxMessage', 'perm', 'maxQueued', 'wake', 'spin', 'allow', 'expectUid']);
const UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1024, kib: 1024, m: 1 << 20, mb: 1 << 20, mib: 1 << 20, g: 1 << 30, gb: 1 << 30, gib: 1 << 30 };

/** Parses `4MiB`, `64k`, `1048576` into bytes; undefined when it is not a size. */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+)\s*([a-z]*)$/i.exec(text.trim());
  if (!m) return undefined;
  const unit = UNITS[m[2]!.toLowerCase()];
  if (unit === undefined) return undefined;
  return Number(m[1]) * unit;
}

/** The scheme of a URL string, without validating the rest. */
export function schemeOf(url: string): string {
  const m = /^([a-z][a-z0-9+.-]*):/i.exec(url);
  if (!m) throw new BadUrlError('not a URL', url);
  return m[1]!.toLowerCase();
}

/** Endpoints parsed before, by their URL text: every connect() parses its URL, and a client opening many
 * connections to one URL would parse the same text each time (10–30 µs of a connect). Bounded: emptied when full.
 * The endpoints are frozen, so no caller can change one another caller gets. */
const parsedEndpoints = new Map<string, ShmEndpoint>();
const PARSED_ENDPOINTS_MAX = 256;

/** Parses and validates a shared-memory endpoint URL. The endpoint is frozen (and may be shared with other calls
 * for the same URL text). */
export function parseShmUrl(url: string): ShmEndpoint {
  if (typeof url !== 'string') throw new BadUrlError('URL must be a string', String(url));
  const known = parsedEndpoints.get(url);
  if (known !== undefined) return known;
  const endpoint = Object.freeze(parseFreshShmUrl(url));
  if (parsedEndpoints.size >= PARSED_ENDPOINTS_MAX) parsedEndpoints.clear();
  parsedEndpoints.set(url, endpoint);
  return endpoint;
}

function parseFreshShmUrl(url: string): ShmEndpoint {
  const scheme = schemeOf(url);
  if (!SCHEMES.includes(scheme)) throw new UnknownSchemeError(url, scheme);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (cause) {
    throw new BadUrlError('URL does not parse', url, { cause });
  }
  for (const key of parsed.searchParams.keys()) {
    if (!OPTIONS.has(key)) throw new BadUrlError('unsupported option', url, { details: { option: key } });
  }

  let name: string;
  let key: number | undefined;
  if (scheme === 'file') {
    if (parsed.host !== '' || !parsed.pathname.startsWith('/') || parsed.pathname.endsWith('/')) {
      throw new BadUrlError('file: URL needs an absolute file path (file:///dir/name)', url);
    }
    name = decodeURIComponent(parsed.pathname);
  } else {
    // new URL() lower-cases nothing for non-special schemes: host is the text after '//'.
    const raw = parsed.host + (parsed.pathname === '/' ? '' : parsed.pathname);
    if (raw === '') throw new BadUrlError('URL needs a name', url);
    if (scheme === 'sysv') {
      if (!/^(0x[0-9a-f]{1,8}|\d{1,10})$/i.test(raw)) throw new BadUrlError('sysv: key must be a number (0x1234 or 4660)', url);
      key = Number(raw);
      if (key <= 0 || key > 0xffffffff) throw new BadUrlError('sysv: key out of range (1 … 0xffffffff)', url);
      name = '0x' + key.toString(16);
    } else {
      if (!/^[A-Za-z0-9_.-]{1,200}$/.test(raw)) throw new BadUrlError('shm: name may hold letters, digits, _ . - (1 to 200)', url);
      name = raw;
    }
  }

  const sizeText = parsed.searchParams.get('size');
  let size = DEFAULT_RING_SIZE;
  if (sizeText !== null) {
    const bytes = parseSize(sizeText);
    if (bytes === undefined) throw new BadUrlError('size is not a size', url, { details: { size: sizeText } });
    if ((bytes & (bytes - 1)) !== 0 || bytes < RING_MIN_CAPACITY || bytes > RING_MAX_CAPACITY) {
      throw new BadUrlError('size must be a power of two', url, { details: { size: bytes, min: RING_MIN_CAPACITY, max: RING_MAX_CAPACITY } });
    }
    size = bytes;
  }

  const maxMessageText = parsed.searchParams.get('maxMessage');
  let maxMessage: number | undefined;
  if (maxMessageText !== null) {
    maxMessage = parseSize(maxMessageText);
    if (maxMessage === undefined || maxMessage > MAX_MESSAGE_OPTION) {
      throw new BadUrlError('maxMessage is not a size up to 1 GiB', url, { details: { maxMessage: maxMessageText } });
    }
  }

  const permText = parsed.searchParams.get('perm');
  let perm = 0o600;
  if (permText !== null) {
    if (!/^0?[0-7]{3}$/.test(permText)) throw new BadUrlError('perm must be an octal mode like 0600', url, { details: { perm: permText } });
    perm = parseInt(permText, 8);
  }

  const queuedText = parsed.searchParams.get('maxQueued');
  let maxQueued = DEFAULT_MAX_QUEUED;
  if (queuedText !== null) {
    if (!/^\d{1,9}$/.test(queuedText)) throw new BadUrlError('maxQueued must be a non-negative integer', url, { details: { maxQueued: queuedText } });
    maxQueued = Number(queuedText);
  }

  const wakeText = parsed.searchParams.get('wake') ?? 'adaptive';
  mechanismFor(wakeText, url); // throws for an unknown mode
  const spinText = parsed.searchParams.get('spin');
  let spin: ShmEndpoint['spin'] = wakeText === 'adaptive' ? 'auto' : wakeText === 'spin' ? 'always' : 0;
  if (spinText !== null) {
    if (wakeText === 'spin') throw new BadUrlError('wake=spin always spins; spin= does not apply', url);
    if (spinText === 'auto') spin = 'auto';
    else if (/^\d{1,7}$/.test(spinText)) spin = Number(spinText) * 1000;
    else throw new BadUrlError('spin must be auto or microseconds', url, { details: { spin: spinText } });
  }

  let allow = OWNER_ONLY;
  const allowText = parsed.searchParams.get('allow');
  if (allowText !== null) {
    try {
      allow = parseAllow(allowText);
    } catch (cause) {
      throw new BadUrlError((cause as Error).message, url, { details: { allow: allowText } });
    }
  }
  let expectUid: number | undefined;
  const expectText = parsed.searchParams.get('expectUid');
  if (expectText !== null) {
    try {
      expectUid = parseUid(expectText);
    } catch (cause) {
      throw new BadUrlError((cause as Error).message, url, { details: { expectUid: expectText } });
    }
  }

  return {
    scheme: scheme as ShmScheme, name, key, size, sizeGiven: sizeText !== null, maxMessage, perm, maxQueued, wake: wakeText, spin, url, allow, expectUid,
    controlPath: `\0shmbus/${scheme}/${name}`,
  };
}
