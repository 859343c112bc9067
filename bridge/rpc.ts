/**
 * Request/reply across hosts on subject `<prefix>.<name>`: values travel as msgpack, responders form a queue group
 * (each request is handled by one of them), and a handler's failure comes back as the same typed error a local
 * request gives (host/rpc.ts: its shmbus code, else ERR_SHMBUS_REMOTE).
 */
import { Packr } from 'msgpackr';
import { headers, type Msg, type NatsConnection, type Subscription as NatsSubscription } from 'nats';
import { decodePeer } from '../host/codec.js';
import { errorReply, remoteError, type RequestHandler, type RequestOptions } from '../host/rpc.js';
import { BadArgumentError, ClosedError, ErrorCode, ShmbusError, TimeoutError } from '../host/errors.js';
import { checkServiceName, ERROR_HEADER, subjectOf } from './naming.js';

/** Longest timeout a timer takes (ms); a request without `timeout` waits this long at most (~24.8 days). */
const NO_TIMEOUT = 0x7fffffff;
/** The queue group every responder joins: one responder per request, whichever host it is on. */
const QUEUE = 'shmbus';

const packr = new Packr({ useRecords: false });

/** A service answering requests for one name; `close()` stops answering. */
export interface Service {
  readonly name: string;
  readonly subject: string;
  close(): Promise<void>;
}

export interface RpcCounters { served: number; failed: number; requested: number }

export function serve(nc: NatsConnection, prefix: string, name: string, handler: RequestHandler, counters: RpcCounters): Service {
  checkServiceName(name);
  if (typeof handler !== 'function') throw new BadArgumentError('handler must be a function');
  const subject = subjectOf(prefix, name);
  const answer = async (m: Msg) => {
    if (!m.reply) return; // a plain publish on the subject: nobody waits for an answer
    let failed = false;
    let result: unknown;
    try {
      result = await handler(decodePeer(m.data));
    } catch (error) {
      failed = true;
      result = errorReply(error);
    }
    let data: Uint8Array;
    try {
      data = packr.pack(result);
    } catch (error) {
      failed = true;
      data = packr.pack(errorReply(error));
    }
    counters.served++;
    if (failed) counters.failed++;
    const h = failed ? headers() : undefined;
    h?.set(ERROR_HEADER, '1');
    try { m.respond(data, h ? { headers: h } : undefined); } catch { /* connection closing: the requester times out */ }
  };
  const sub: NatsSubscription = nc.subscribe(subject, { queue: QUEUE, callback: (error, m) => { if (!error) void answer(m); } });
  return {
    name, subject,
    // Resolves once nats-server has dropped the interest: no request is routed here any more.
    async close() { sub.unsubscribe(); await nc.flush().catch(() => {}); },
  };
}

/** Waits until the server has registered every subscription made so far (a service is reachable once this resolves). */
export async function settle(nc: NatsConnection): Promise<void> {
  await nc.flush();
}

export async function request(nc: NatsConnection, prefix: string, name: string, value: unknown, options: RequestOptions, counters: RpcCounters): Promise<unknown> {
  checkServiceName(name);
  const { timeout, signal } = options;
  if (timeout !== undefined && (!Number.isFinite(timeout) || timeout < 0)) {
    throw new BadArgumentError('timeout must be a non-negative number of ms', { timeout });
  }
  if (signal?.aborted) throw new ClosedError('request aborted', { reason: String(signal.reason) });
  const subject = subjectOf(prefix, name);
  counters.requested++;
  const reply = nc.request(subject, packr.pack(value), { timeout: Math.min(timeout ?? NO_TIMEOUT, NO_TIMEOUT) });
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    if (!signal) return;
    onAbort = () => reject(new ClosedError('request aborted', { reason: String(signal.reason), name }));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  let m: Msg;
  try {
    m = await Promise.race([reply, aborted]);
  } catch (error) {
    if (error instanceof ShmbusError) throw error;
    const code = (error as { code?: string }).code;
    if (code === 'TIMEOUT') throw new TimeoutError('no reply in time', { timeout, name });
    if (code === '503') throw new ShmbusError(ErrorCode.NOT_FOUND, 'no service answers on this subject', { details: { subject } });
    if (code === 'CONNECTION_CLOSED') throw new ClosedError('bridge is closed', { name });
    throw new ShmbusError(ErrorCode.REMOTE, 'request failed', { cause: error, details: { subject } });
  } finally {
    if (onAbort) signal!.removeEventListener('abort', onAbort);
    reply.catch(() => {}); // settled after an abort: nobody listens
  }
  const decoded = decodePeer(m.data);
  if (m.headers?.get(ERROR_HEADER)) throw remoteError(decoded);
  return decoded;
}
