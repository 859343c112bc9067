/**
 * Where a bus keeps its segments: `shm://market` keeps the registry in `/shmbus.bus.market` and topic `ticks` in
 * `/shmbus.bus.market.ticks` (POSIX shared memory); `file:///dir/market` keeps them in `/dir/market.registry` and
 * `/dir/market.ticks.topic`. Also who else may own them (BusOptions) and how they are created or attached.
 */
import { Region, type Trust } from '../host/region.js';
import { schemeOf } from '../host/url.js';
import { BadArgumentError, BadUrlError, UnknownSchemeError } from '../host/errors.js';

/** Topic names: also what a registry entry's name must match before it becomes part of a path. */
export const TOPIC_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

export interface BusOptions {
  /**
   * Other users whose bus files this process accepts. By default a bus's registry and topic files must belong to
   * this process's effective uid: a file another user planted (even one this process could open) is refused
   * with ERR_SHMBUS_PERMISSION_DENIED, so nobody can read or feed a bus by creating its files first.
   */
  allow?: { uids?: number[] };
  /**
   * Permission bits for the files this process creates (default 0o600). Group or other write bits given here are
   * also accepted on files it attaches; without them a group- or world-writable bus file is refused.
   */
  mode?: number;
}

export interface Naming { registry: string; topic(name: string): string; kind: 'posix' | 'file'; trust: Trust; mode: number }

export function naming(url: string, options: BusOptions): Naming {
  const mode = options.mode ?? 0o600;
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new BadArgumentError('mode must be permission bits 0..0o777', { mode });
  const uids = options.allow?.uids ?? [];
  if (!Array.isArray(uids) || !uids.every((u) => Number.isInteger(u) && u >= 0)) throw new BadArgumentError('allow.uids must be uids', { uids: String(uids) });
  const trust: Trust = { uids: [process.geteuid?.() ?? 0, ...uids], writableBy: mode & 0o022 };
  const kind = namesOf(url);
  return { ...kind, trust, mode };
}

/** The files of bus `url` as paths (shm:// names under /dev/shm), or undefined when `url` names no bus. */
export function busFiles(url: string): { registry: string; topic(name: string): string } | undefined {
  let names: Omit<Naming, 'trust' | 'mode'>;
  try { names = namesOf(url); } catch { return undefined; }
  if (names.kind === 'file') return names;
  return { registry: `/dev/shm${names.registry}`, topic: (t) => `/dev/shm${names.topic(t)}` };
}

function namesOf(url: string): Omit<Naming, 'trust' | 'mode'> {
  const scheme = schemeOf(url);
  if (scheme !== 'shm' && scheme !== 'file') throw new UnknownSchemeError(url, scheme);
  let parsed: URL;
  try { parsed = new URL(url); } catch (cause) { throw new BadUrlError('URL does not parse', url, { cause }); }
  if ([...parsed.searchParams.keys()].length) throw new BadUrlError('a bus URL takes no options', url);
  if (scheme === 'shm') {
    const ns = parsed.host + (parsed.pathname === '/' ? '' : parsed.pathname);
    if (!/^[A-Za-z0-9_.-]{1,100}$/.test(ns)) throw new BadUrlError('bus name may hold letters, digits, _ . - (1 to 100)', url);
    return { kind: 'posix', registry: `/shmbus.bus.${ns}`, topic: (t) => `/shmbus.bus.${ns}.${t}` };
  }
  if (parsed.host !== '' || !parsed.pathname.startsWith('/') || parsed.pathname.endsWith('/')) {
    throw new BadUrlError('file: bus URL needs an absolute path (file:///dir/name)', url);
  }
  const base = decodeURIComponent(parsed.pathname);
  return { kind: 'file', registry: `${base}.registry`, topic: (t) => `${base}.${t}.topic` };
}

export function checkTopicName(name: unknown): string {
  if (typeof name !== 'string' || !TOPIC_NAME.test(name)) throw new BadArgumentError('topic name may hold letters, digits, _ . - (1 to 64)', { topic: String(name) });
  return name;
}

/**
 * Creates a bus file exclusively (O_EXCL, never through a symlink), or attaches the existing one only if its
 * owner and mode pass `names.trust` (fstat before anything is mapped).
 */
export function createOrAttach(names: Naming, name: string, size: number): Region {
  const opts = { size, exclusive: false, mode: names.mode, trust: names.trust };
  return names.kind === 'posix' ? Region.createPosix(name, opts) : Region.createFile(name, opts);
}

export function attachExisting(names: Naming, name: string): Region {
  return names.kind === 'posix' ? Region.attachPosix(name, { trust: names.trust }) : Region.attachFile(name, { trust: names.trust });
}

