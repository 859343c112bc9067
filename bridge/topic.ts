/**
 * What exporting and importing topics share: the description of a bridged topic, its counters, retrying NATS
 * calls with back-off, and the NATS headers that carry a record's type.
 */
import { headers, type MsgHdrs } from 'nats';
import { RECORD_MSGPACK } from '../assembly/layout.js';
import type { Bus, PublisherOptions } from '../bus/index.js';
import type { Policy } from '../host/topic.js';
import { BadArgumentError } from '../host/errors.js';
import { backoff } from './connection.js';
import { TYPE_HEADER, TYPE_MSGPACK } from './naming.js';

/** A topic to bridge: its name, and for an import the options of the local topic the bridge creates. */
export interface TopicSpec extends Omit<PublisherOptions, 'policy'> {
  topic: string;
  /**
   * 'lossless' rides a JetStream stream, 'lossy' core NATS. Default: the local topic's policy (an export waits for
   * its topic to appear; an import of a topic that does not exist yet creates it lossless).
   */
  policy?: Policy;
}

/** Counters of one bridged topic. */
export interface TopicStats {
  topic: string;
  direction: 'export' | 'import';
  /** Undefined until an export's topic appears. */
  policy: Policy | undefined;
  subject: string;
  /** Messages delivered: exported and acknowledged by NATS (JetStream: stored), or imported and committed locally. */
  forwarded: number;
  /**
   * Messages lost on the way: lossy exports lapped by the local publisher or published while NATS was away;
   * lossless exports published while no bridge was subscribed that the topic's history no longer held.
   */
  dropped: number;
  /** Messages sent or received again: exports re-published after a failure, imports seen again and skipped. */
  redelivered: number;
  /** Export: messages read from the topic and not yet acknowledged. Import: messages waiting in the stream. */
  lag: number;
  /** Messages refused: an imported msgpack record that does not decode (skipped, never committed). */
  rejected: number;
  /** The last error that stopped or held up this topic, if any. */
  error: string | undefined;
}

export function normalizeSpec(entry: unknown, what: 'export' | 'import'): TopicSpec {
  const spec = typeof entry === 'string' ? { topic: entry } : entry;
  if (typeof spec !== 'object' || spec === null || typeof (spec as TopicSpec).topic !== 'string') {
    throw new BadArgumentError(`each ${what} is a topic name or { topic, policy, … }`, { [what]: String(entry) });
  }
  const policy = (spec as TopicSpec).policy;
  if (policy !== undefined && policy !== 'lossless' && policy !== 'lossy') throw new BadArgumentError('policy is lossless or lossy', { policy });
  return spec as TopicSpec;
}

/** The local topic's policy if the bus lists it. */
export function localPolicy(bus: Bus, topic: string): Policy | undefined {
  return bus.topics().find((t) => t.name === topic)?.policy;
}

/** Records published so far on local topic `topic` (its publisher's sequence number), undefined if not listed. */
export function publishedCount(bus: Bus, topic: string): number | undefined {
  return bus.topics().find((t) => t.name === topic)?.published;
}

const msgpackHeaders = (): MsgHdrs => {
  const h = headers();
  h.set(TYPE_HEADER, TYPE_MSGPACK);
  return h;
};

/** NATS headers saying a record's type: none for bytes (any NATS client sees the payload as is). */
export function typeHeaders(type: number): MsgHdrs | undefined {
  return type === RECORD_MSGPACK ? msgpackHeaders() : undefined;
}

/** Whether a NATS message carries a msgpack record. */
export function isMsgpack(h: MsgHdrs | undefined): boolean {
  return h?.get(TYPE_HEADER) === TYPE_MSGPACK;
}

/** Calls `fn` until it succeeds, waiting with back-off between attempts; undefined once `stopped()`. */
export async function retry<T>(fn: () => Promise<T>, stopped: () => boolean, onError?: (error: unknown) => void): Promise<T | undefined> {
  for (let attempt = 0; !stopped(); attempt++) {
    try {
      return await fn();
    } catch (error) {
      onError?.(error);
      if (stopped()) return undefined;
      await new Promise((r) => setTimeout(r, backoff(attempt)));
    }
  }
  return undefined;
}

/** A promise that something happened, re-armed each time it fires. */
export class Signal {
  private waiters: (() => void)[] = [];

  wait(ms?: number): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => { clearTimeout(timer); resolve(); };
      if (ms !== undefined) timer = setTimeout(() => { this.waiters = this.waiters.filter((w) => w !== done); resolve(); }, ms);
      this.waiters.push(done);
    });
  }

  fire(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

export function errorText(error: unknown): string {
  return error instanceof Error ? `${(error as { code?: string }).code ?? error.name}: ${error.message}` : String(error);
}
