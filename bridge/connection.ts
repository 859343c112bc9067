/**
 * The bridge's one NATS connection: connecting and reconnecting with back-off, whether it is up right now, and the
 * JetStream pieces the topics share (streams, the key-value bucket of durable positions).
 */
import { readFileSync } from 'node:fs';
import {
  connect, credsAuthenticator, tokenAuthenticator, usernamePasswordAuthenticator, RetentionPolicy, StorageType,
  type Authenticator, type ConnectionOptions, type JetStreamClient, type JetStreamManager, type KV, type NatsConnection,
} from 'nats';
import { BadArgumentError, BadUrlError, ShmbusError, ErrorCode } from '../host/errors.js';
import { bucketOf, streamOf, subjectOf } from './naming.js';

/**
 * How the bridge proves who it is to nats-server: the path of a `.creds` file (JWT + nkey seed, as `nsc` writes
 * it), a user and password, or a token. A user and password in the URL (`nats://user:pass@host:4222`) work too.
 */
export type Credentials = string | { user: string; pass: string } | { token: string };

/** First wait before reconnecting; doubled per failed attempt up to MAX_BACKOFF_MS, with ±25 % jitter. */
export const MIN_BACKOFF_MS = 50;
export const MAX_BACKOFF_MS = 2000;

/** The next back-off delay after `attempt` failed attempts (0-based). */
export function backoff(attempt: number): number {
  const base = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** Math.min(attempt, 16));
  return Math.round(base * (0.75 + Math.random() * 0.5));
}

function authenticator(credentials: Credentials | undefined): Authenticator | undefined {
  if (credentials === undefined) return undefined;
  if (typeof credentials === 'string') {
    let bytes: Uint8Array;
    try { bytes = readFileSync(credentials); } catch (cause) {
      throw new ShmbusError(ErrorCode.NOT_FOUND, 'cannot read the credentials file', { cause, details: { path: credentials } });
    }
    return credsAuthenticator(bytes);
  }
  if (typeof credentials === 'object' && credentials !== null) {
    if ('token' in credentials && typeof credentials.token === 'string') return tokenAuthenticator(credentials.token);
    if ('user' in credentials && typeof credentials.user === 'string' && typeof credentials.pass === 'string') {
      return usernamePasswordAuthenticator(credentials.user, credentials.pass);
    }
  }
  throw new BadArgumentError('credentials are a .creds file path, { user, pass } or { token }');
}

/** Checks a NATS URL (`nats://host:port`, `tls://…`, or a comma-separated list of them) and returns the servers. */
export function natsServers(url: unknown): string[] {
  if (typeof url !== 'string' || url.length === 0) throw new BadUrlError('NATS URL must be a non-empty string', String(url));
  const servers = url.split(',').map((s) => s.trim());
  for (const s of servers) {
    let parsed: URL;
    try { parsed = new URL(s); } catch (cause) { throw new BadUrlError('NATS URL does not parse', s, { cause }); }
    if (!['nats:', 'tls:', 'ws:', 'wss:'].includes(parsed.protocol) || !parsed.hostname) {
      throw new BadUrlError('NATS URL must be nats://host:port (or tls://)', s);
    }
  }
  return servers;
}

/** How long a JetStream call (stream and KV management, position writes) waits: a busy server answers late. */
const JS_TIMEOUT_MS = 20_000;
/** A stream, KV or position request unanswered this long is given up (and retried by its caller). */
const GUARD_MS = 4000;
/** close() gives a drain this long before it closes the connection anyway. */
const DRAIN_MS = 2000;

/** What the topics and services of one bridge share. */
export class Link {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly prefix: string;
  /** False from a disconnect until the reconnect: lossy topics drop instead of queueing in the client. */
  up = true;
  reconnects = 0;
  private jsmPromise: Promise<JetStreamManager> | undefined;
  private kvPromise: Promise<KV> | undefined;
  private readonly streams = new Map<string, Promise<string>>();
  private readonly upWaiters = new Set<() => void>();
  private readonly inFlight = new Set<() => void>();
  private slow = 0;
  private closed = false;

  private constructor(nc: NatsConnection, prefix: string) {
    this.nc = nc;
    this.js = nc.jetstream({ timeout: JS_TIMEOUT_MS });
    this.prefix = prefix;
    void this.watch();
  }

  /** Connects (retrying with back-off until nats-server answers; abort with `signal`). */
  static async open(natsUrl: string, prefix: string, credentials: Credentials | undefined, signal?: AbortSignal): Promise<Link> {
    const servers = natsServers(natsUrl);
    let attempt = 0;
    const options: ConnectionOptions = {
      servers,
      name: 'shmbus-bridge',
      maxReconnectAttempts: -1,
      reconnectDelayHandler: () => backoff(attempt++),
      pingInterval: 10_000,
      authenticator: authenticator(credentials),
    };
    for (let tries = 0; ; tries++) {
      if (signal?.aborted) throw new ShmbusError(ErrorCode.CLOSED, 'bridge start aborted', { cause: signal.reason });
      try {
        const nc = await connect(options);
        const link = new Link(nc, prefix);
        link.onReconnect(() => { attempt = 0; });
        return link;
      } catch (error) {
        const code = (error as { code?: string }).code;
        // Refused credentials or a bad option do not get better by waiting.
        if (code === 'AUTHORIZATION_VIOLATION' || code === 'BAD_AUTHENTICATION' || code === 'AUTHENTICATION_EXPIRED') {
          throw new ShmbusError(ErrorCode.PERMISSION_DENIED, 'nats-server refused the credentials', { cause: error, details: { url: natsUrl } });
        }
        await new Promise((r) => setTimeout(r, backoff(tries)));
      }
    }
  }

  private readonly reconnectHooks: (() => void)[] = [];

  /** Calls `fn` after every reconnect. */
  onReconnect(fn: () => void): void {
    this.reconnectHooks.push(fn);
  }

  private async watch(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type === 'disconnect') {
        this.up = false;
        // Replies to requests sent before the disconnect never come: fail them now, not at their timeout.
        for (const fail of [...this.inFlight]) fail();
      }
      else if (s.type === 'reconnect') {
        this.up = true;
        this.reconnects++;
        for (const fn of this.reconnectHooks) fn();
        for (const w of [...this.upWaiters]) w();
      }
    }
  }

  /** Resolves when the connection is up (at once if it is), or after `ms`. */
  whenUp(ms: number): Promise<void> {
    if (this.up || this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); this.upWaiters.delete(done); resolve(); };
      const timer = setTimeout(done, ms);
      this.upWaiters.add(done);
    });
  }

  /**
   * `request`'s outcome, or a rejection as soon as the connection drops while it is pending, or after `ms` (a
   * request sent around a server restart may never be answered; the callers retry, their requests are idempotent).
   */
  guard<T>(request: Promise<T>): Promise<T> {
    // A server that is merely busy answers late: each timeout in a row doubles the next wait (up to 8x).
    const ms = GUARD_MS << this.slow;
    let fail!: () => void;
    let timer: NodeJS.Timeout | undefined;
    const lost = new Promise<never>((_, reject) => {
      fail = () => reject(new ShmbusError(ErrorCode.CLOSED, 'connection to nats-server lost before the reply'));
      timer = setTimeout(() => {
        this.slow = Math.min(this.slow + 1, 3);
        reject(new ShmbusError(ErrorCode.TIMEOUT, 'nats-server did not answer', { details: { ms } }));
      }, ms);
    });
    this.inFlight.add(fail);
    request.then(() => { this.slow = 0; }, () => {}); // a late rejection (its own timeout) has nobody to tell
    return Promise.race([request, lost]).finally(() => { clearTimeout(timer); this.inFlight.delete(fail); });
  }

  jsm(): Promise<JetStreamManager> {
    this.jsmPromise ??= this.nc.jetstreamManager().catch((error) => { this.jsmPromise = undefined; throw error; });
    return this.jsmPromise;
  }

  /** The bucket of durable positions (created on first use: file storage, one value per key). */
  kv(): Promise<KV> {
    this.kvPromise ??= this.js.views.kv(bucketOf(this.prefix), { history: 1, storage: StorageType.File })
      .catch((error) => { this.kvPromise = undefined; throw error; });
    return this.kvPromise;
  }

  /** Reads a JSON value from the bucket (undefined when absent). */
  async getPosition<T>(key: string): Promise<T | undefined> {
    const entry = await this.guard((await this.kv()).get(key));
    if (!entry || entry.length === 0) return undefined;
    try { return entry.json<T>(); } catch { return undefined; }
  }

  async putPosition(key: string, value: unknown): Promise<void> {
    await this.guard((await this.kv()).put(key, new TextEncoder().encode(JSON.stringify(value))));
  }

  /** Creates the stream of lossless topic `topic` if it does not exist yet; returns its name. */
  ensureStream(topic: string): Promise<string> {
    const name = streamOf(this.prefix, topic);
    let made = this.streams.get(name);
    if (!made) {
      made = (async () => {
        const jsm = await this.jsm();
        try {
          await this.guard(jsm.streams.info(name));
        } catch (error) {
          if ((error as { code?: string }).code !== '404') throw error;
          try {
            await this.guard(jsm.streams.add({ name, subjects: [subjectOf(this.prefix, topic)], storage: StorageType.File, retention: RetentionPolicy.Limits }));
          } catch (again) {
            // Another bridge made it meanwhile: fine if it is there now.
            await this.guard(jsm.streams.info(name)).catch(() => { throw again; });
          }
        }
        return name;
      })();
      made.catch(() => this.streams.delete(name));
      this.streams.set(name, made);
    }
    return made;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const w of [...this.upWaiters]) w();
    // Drain (deliver what is buffered, let handlers answer) only while connected, and not for long: a drain
    // waits for the server, and a connection still reconnecting must stop doing so now.
    if (this.up && !this.nc.isClosed()) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.nc.drain(), new Promise((r) => { timer = setTimeout(r, DRAIN_MS); })]).catch(() => {});
      clearTimeout(timer);
    }
    await this.nc.close().catch(() => {});
  }
}
