/**
 * Opening the segment of a Mutex or a Semaphore: both are lock segments (assembly/layout.ts, "Lock body"), told
 * apart by the magic; a Mutex is a lock segment of one unit.
 */
import { LOCK_UNITS_OFFSET, SYNC_MAX_UNITS, lockBytes } from '../assembly/layout.js';
import { CorruptError } from '../host/errors.js';
import { SyncSegment, parseTarget, type OpenOptions } from './segment.js';

export async function openLockSegment(url: string, kind: 'mutex' | 'semaphore', magic: number, units: number | undefined, options: OpenOptions): Promise<SyncSegment> {
  const target = parseTarget(url, kind, options.perm);
  const seg = await SyncSegment.open(target, {
    kind, magic, shape: units, param: 0, createShape: units ?? 1, most: lockBytes(units ?? SYNC_MAX_UNITS),
    bytes: (shape) => {
      if (shape < 1 || shape > SYNC_MAX_UNITS) throw new CorruptError('unit count out of range', { units: shape });
      return lockBytes(shape);
    },
  }, options);
  return seg;
}

export { LOCK_UNITS_OFFSET };
