/**
 * `NODE_DEBUG=shmbus`: a line on stderr for each event someone debugging a connection wants to see and that the API
 * reports only to whoever listens for it (Node's util.debuglog, as `NODE_DEBUG=net` works for sockets):
 *
 *   - a listener refusing a connector or a handshake failing on it (with the connector's pid and uid when known);
 *     without an 'error' listener these are otherwise silent, by design (a bad connector must not disturb the app);
 *   - a connect that failed, and how one succeeded (a full handshake, or a segment of its own to a known listener);
 *   - a connection ended by an error (a corrupt ring or message, a peer that died);
 *   - objects `shmbus clean` or a process's start-up reaper removed for a dead process.
 *
 * Lines look like `SHMBUS 4242: listen shm://jobs: refused pid 77 uid 1000: ERR_SHMBUS_PERMISSION_DENIED ...`.
 * Off, a call costs one property read: callers check `trace.enabled` before they build a message.
 */
import { debuglog } from 'node:util';
import { ShmbusError } from './errors.js';

/** Writes one trace line (printf-style, as util.format) when NODE_DEBUG names shmbus; `trace.enabled` says whether. */
export const trace = debuglog('shmbus');

/** An error as a trace shows it: its code and message. */
export function traceError(error: unknown): string {
  if (error instanceof ShmbusError) return `${error.code} ${error.message}`;
  return error instanceof Error ? error.message : String(error);
}
