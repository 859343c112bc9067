/**
 * What a plugin module declares about the memory it imports, read from its import section: the JS API lists
 * imports but not their limits, and the memory the host creates must start at least at the declared minimum and
 * may not exceed a declared maximum (else instantiation fails with a LinkError).
 */
import { CorruptError } from '../host/errors.js';

/** The declared limits of the module's memory import, in pages; undefined when it imports no memory. */
export interface MemoryLimits { initial: number; maximum?: number; shared: boolean }

/** Reads the limits of the first memory import of a valid module's bytes. */
export function memoryImportLimits(bytes: Uint8Array): MemoryLimits | undefined {
  let at = 8; // magic and version
  const fail = (): never => { throw new CorruptError('malformed import section in the plugin module', { at }); };
  const u32 = (): number => {
    let result = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      if (at >= bytes.length) fail();
      const b = bytes[at++]!;
      result += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return result;
    }
    return fail();
  };
  const skipName = (): void => { const n = u32(); at += n; if (at > bytes.length) fail(); };
  while (at < bytes.length) {
    const id = bytes[at++]!;
    const size = u32();
    const end = at + size;
    if (end > bytes.length) fail();
    if (id !== 2) { at = end; continue; }
    const count = u32();
    for (let i = 0; i < count; i++) {
      skipName();
      skipName();
      const kind = bytes[at++];
      if (kind === 0) u32(); // function: type index
      else if (kind === 1) { at++; const f = u32(); u32(); if (f & 1) u32(); } // table: reftype, limits
      else if (kind === 3) at += 2; // global: valtype, mutability
      else if (kind === 2) {
        const flags = u32();
        const initial = u32();
        const maximum = flags & 1 ? u32() : undefined;
        return { initial, maximum, shared: (flags & 2) !== 0 };
      } else fail();
    }
    return undefined;
  }
  return undefined;
}
