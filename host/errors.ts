/**
 * Every error shmbus throws or emits is a `ShmbusError` with a stable `code` (`ERR_SHMBUS_*`) that callers can
 * switch on. Expected outcomes (ring full, ring empty, would block) are return values, never errors.
 *
 * Failures of a system call are `SystemError`s: they keep the syscall's name, the errno and its symbolic name,
 * and get a more specific code where a caller can act on it (`ENOSPC` → `ERR_SHMBUS_NO_SPACE`, ...).
 */

/** Every stable error code. Codes never change meaning; new ones are only added. */
export const ErrorCode = {
  /** A URL that cannot be parsed, or an option with a bad value. */
  BAD_URL: 'ERR_SHMBUS_BAD_URL',
  /** A URL scheme no transport handles. */
  UNKNOWN_SCHEME: 'ERR_SHMBUS_UNKNOWN_SCHEME',
  /** An argument of the wrong type or out of range (a size that is not a power of two, ...). */
  BAD_ARGUMENT: 'ERR_SHMBUS_BAD_ARGUMENT',
  /** A message larger than the channel's maximum record. */
  MESSAGE_TOO_LARGE: 'ERR_SHMBUS_MESSAGE_TOO_LARGE',
  /** The local send queue reached its hard cap (`maxQueued`). */
  QUEUE_FULL: 'ERR_SHMBUS_QUEUE_FULL',
  /** An operation on a channel that is closed (by us or by the peer). */
  CLOSED: 'ERR_SHMBUS_CLOSED',
  /** The peer went away without closing (crash, SIGKILL). */
  PEER_DEAD: 'ERR_SHMBUS_PEER_DEAD',
  /** The segment or peer speaks another major layout/protocol version. */
  VERSION_MISMATCH: 'ERR_SHMBUS_VERSION_MISMATCH',
  /** A segment whose header or ring is not what shmbus wrote: bad magic, bad positions, bad record. */
  CORRUPT: 'ERR_SHMBUS_CORRUPT',
  /** Timed out waiting for a peer or a segment. */
  TIMEOUT: 'ERR_SHMBUS_TIMEOUT',
  /** The handshake on the control connection failed. */
  HANDSHAKE: 'ERR_SHMBUS_HANDSHAKE',
  /** Misuse of a claim: committing twice, claiming while another claim is open, ... */
  BAD_STATE: 'ERR_SHMBUS_BAD_STATE',
  /** Any failing system call without a more specific code. */
  SYSCALL: 'ERR_SHMBUS_SYSCALL',
  /** The segment, queue or file does not exist (ENOENT). */
  NOT_FOUND: 'ERR_SHMBUS_NOT_FOUND',
  /** It already exists (EEXIST) where it must not. */
  EXISTS: 'ERR_SHMBUS_EXISTS',
  /** EACCES / EPERM. */
  PERMISSION_DENIED: 'ERR_SHMBUS_PERMISSION_DENIED',
  /** ENOSPC / ENOMEM while reserving pages: `/dev/shm` (or the file system) is full. */
  NO_SPACE: 'ERR_SHMBUS_NO_SPACE',
  /** A kernel limit refused the request (EINVAL on a size, EMFILE, ENFILE, ENOSPC on ids). */
  LIMIT: 'ERR_SHMBUS_LIMIT',
  /** A request handler on the peer failed with an error that has no shmbus code. */
  REMOTE: 'ERR_SHMBUS_REMOTE',
  /** A WebAssembly plugin trapped (unreachable, out-of-bounds access, abort); the message carries the trap's. */
  TRAP: 'ERR_SHMBUS_TRAP',
  /** Something the host did not grant: a plugin import, a topic not in `allow`. */
  FORBIDDEN: 'ERR_SHMBUS_FORBIDDEN',
} as const;

export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Formats details as `name=value` pairs, the convention for every message. */
function details(fields: Record<string, unknown> | undefined): string {
  if (!fields) return '';
  const parts = Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${textOf(v)}`);
  return parts.length ? ` (${parts.join(' ')})` : '';
}

/** Whether `error` says the connection ended (closed, or the peer died): nobody is left to send to. */
export function isConnectionEnd(error: unknown): boolean {
  return error instanceof ShmbusError && (error.code === ErrorCode.CLOSED || error.code === ErrorCode.PEER_DEAD);
}

/**
 * A value a peer sent, as text for an error's details: bounded, and never throwing (`String()` throws on an object
 * whose `toString` is not a function, JSON.stringify on a bigint; a peer's JSON or msgpack can hold either).
 */
export function peerText(value: unknown, max = 64): string {
  const text = textOf(value);
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

const CODES = new Set<string>(Object.values(ErrorCode));

/**
 * The error a peer's refusal or failed reply describes (`{ code, message }` as it sent them): its code when that is
 * one of ours (`fallback` otherwise: a peer cannot make up codes), and its message, bounded (`otherwise` when it
 * sent none), after `prefix`.
 */
export function peerError(sent: unknown, fallback: ErrorCodeValue, prefix: string, otherwise: string, detailFields?: Record<string, unknown>): ShmbusError {
  const { code, message } = (typeof sent === 'object' && sent !== null ? sent : {}) as { code?: unknown; message?: unknown };
  const known = typeof code === 'string' && CODES.has(code) ? (code as ErrorCodeValue) : fallback;
  return new ShmbusError(known, prefix + (typeof message === 'string' ? peerText(message, 1000) : otherwise), { details: detailFields });
}

/** A detail's text: a string as it is, anything else as JSON (its type where JSON cannot say it). */
function textOf(value: unknown): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'bigint') return value.toString();
  try {
    return JSON.stringify(value) ?? typeof value;
  } catch {
    return typeof value;
  }
}

export interface ShmbusErrorOptions {
  cause?: unknown;
  /** Context shown as `name=value` in the message and kept on `error.details`. */
  details?: Record<string, unknown>;
}

/** The base of every error shmbus raises. */
export class ShmbusError extends Error {
  readonly code: ErrorCodeValue;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCodeValue, message: string, options: ShmbusErrorOptions = {}) {
    super(message + details(options.details), options.cause !== undefined ? { cause: options.cause } : undefined);
    this.code = code;
    this.details = options.details ?? {};
  }

  override get name(): string {
    return this.constructor.name;
  }
}

export class BadUrlError extends ShmbusError {
  constructor(message: string, url: string, options: ShmbusErrorOptions = {}) {
    super(ErrorCode.BAD_URL, message, { ...options, details: { url, ...options.details } });
  }
}

export class UnknownSchemeError extends ShmbusError {
  constructor(url: string, scheme: string) {
    super(ErrorCode.UNKNOWN_SCHEME, 'no transport handles this URL scheme', { details: { url, scheme } });
  }
}

export class BadArgumentError extends ShmbusError {
  constructor(message: string, detailFields?: Record<string, unknown>) {
    super(ErrorCode.BAD_ARGUMENT, message, { details: detailFields });
  }
}

export class MessageTooLargeError extends ShmbusError {
  constructor(size: number, max: number) {
    super(ErrorCode.MESSAGE_TOO_LARGE, 'message larger than the channel allows', { details: { size, max } });
  }
}

export class QueueFullError extends ShmbusError {
  constructor(maxQueued: number) {
    super(ErrorCode.QUEUE_FULL, 'send queue is at its hard cap; wait for drained()', { details: { maxQueued } });
  }
}

export class ClosedError extends ShmbusError {
  constructor(message = 'channel is closed', detailFields?: Record<string, unknown>) {
    super(ErrorCode.CLOSED, message, { details: detailFields });
  }
}

export class PeerDeadError extends ShmbusError {
  constructor(message = 'peer went away without closing', detailFields?: Record<string, unknown>) {
    super(ErrorCode.PEER_DEAD, message, { details: detailFields });
  }
}

export class VersionMismatchError extends ShmbusError {
  constructor(what: string, found: string, expected: string) {
    super(ErrorCode.VERSION_MISMATCH, `${what} has an incompatible version`, { details: { found, expected } });
  }
}

export class CorruptError extends ShmbusError {
  constructor(message: string, detailFields?: Record<string, unknown>) {
    super(ErrorCode.CORRUPT, message, { details: detailFields });
  }
}

export class TimeoutError extends ShmbusError {
  constructor(message: string, detailFields?: Record<string, unknown>) {
    super(ErrorCode.TIMEOUT, message, { details: detailFields });
  }
}

export class HandshakeError extends ShmbusError {
  constructor(message: string, options: ShmbusErrorOptions = {}) {
    super(ErrorCode.HANDSHAKE, message, options);
  }
}

export class BadStateError extends ShmbusError {
  constructor(message: string, detailFields?: Record<string, unknown>) {
    super(ErrorCode.BAD_STATE, message, { details: detailFields });
  }
}

/** errno values this project maps to specific codes (x86_64 Linux). */
export const Errno = {
  EPERM: 1, ENOENT: 2, ESRCH: 3, EINTR: 4, EIO: 5, E2BIG: 7, EBADF: 9, EAGAIN: 11, ENOMEM: 12, EACCES: 13, EFAULT: 14,
  EBUSY: 16, EEXIST: 17, ENODEV: 19, EISDIR: 21, EINVAL: 22, ENFILE: 23, EMFILE: 24, EFBIG: 27, ENOSPC: 28, ESPIPE: 29,
  ERANGE: 34, ENAMETOOLONG: 36, ENOSYS: 38, ENOMSG: 42, EIDRM: 43, EMSGSIZE: 90, ENOTSUP: 95, ETIMEDOUT: 110,
  ECONNREFUSED: 111,
} as const;

const errnoNames = new Map<number, string>(Object.entries(Errno).map(([name, value]) => [value, name]));

/** The symbolic name of an errno value (`'ENOENT'`), or `'E<number>'` for one this table does not name. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

function codeForErrno(errno: number): ErrorCodeValue {
  switch (errno) {
    case Errno.ENOENT: case Errno.EIDRM: return ErrorCode.NOT_FOUND;
    case Errno.EEXIST: return ErrorCode.EXISTS;
    case Errno.EACCES: case Errno.EPERM: return ErrorCode.PERMISSION_DENIED;
    case Errno.ENOSPC: case Errno.ENOMEM: case Errno.EFBIG: return ErrorCode.NO_SPACE;
    case Errno.EMFILE: case Errno.ENFILE: return ErrorCode.LIMIT;
    default: return ErrorCode.SYSCALL;
  }
}

/** A failed system call: `syscall`, `errno` and `errnoName` say which and why. */
export class SystemError extends ShmbusError {
  readonly syscall: string;
  readonly errno: number;
  readonly errnoName: string;

  constructor(syscall: string, errno: number, detailFields?: Record<string, unknown>, code?: ErrorCodeValue) {
    const name = errnoName(errno);
    super(code ?? codeForErrno(errno), `${syscall} failed: ${name}`, { details: { syscall, errno: name, ...detailFields } });
    this.syscall = syscall;
    this.errno = errno;
    this.errnoName = name;
  }
}
