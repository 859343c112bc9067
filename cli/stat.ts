/**
 * `shmbus stat <endpoint|bus>`: live counters refreshed like `top`, all read from shared memory (ring positions,
 * parked and closed flags, topic sequence numbers, subscriber cursors and drop counters): watching costs the
 * watched processes nothing, not even a system call.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { defineCommand, human, milliseconds, table, toJson, UsageError } from './command.js';
import { findEndpoint, readBus, type BusInfo, type EndpointInfo, type RingState } from './inspect.js';
import { ErrorCode, ShmbusError } from '../host/errors.js';

/** One direction of a connection between two samples. */
export interface RingRate extends RingState { bytesPerSec: number; messagesPerSec: number }

export interface EndpointStat {
  kind: 'endpoint';
  url: string;
  listener: EndpointInfo['listener'];
  intervalMs: number;
  connections: {
    segment: string;
    peers: EndpointInfo['connections'][number]['peers'];
    /** listener → connector, connector → listener. */
    toConnector?: RingRate;
    toListener?: RingRate;
    corrupt?: string;
  }[];
}

export interface BusStat {
  kind: 'bus';
  url: string;
  alive: boolean;
  members: BusInfo['members'];
  intervalMs: number;
  topics: (BusInfo['topics'][number] & { messagesPerSec: number; bytesPerSec: number; droppedPerSec: number })[];
}

function rate(before: RingState | undefined, after: RingState | undefined, seconds: number): RingRate | undefined {
  if (!after) return undefined;
  return {
    ...after,
    bytesPerSec: before ? Math.max(0, after.tail - before.tail) / seconds : 0,
    messagesPerSec: before ? Math.max(0, after.committed - before.committed) / seconds : 0,
  };
}

/** Waits `ms`; false when `signal` (Ctrl-C) ends the wait first. */
async function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  try {
    await sleep(ms, undefined, { signal });
    return true;
  } catch (error) {
    if (signal.aborted) return false;
    throw error;
  }
}

/** Two looks `intervalMs` apart at an endpoint, as rates; undefined when there is none or Ctrl-C came between. */
async function endpointStat(url: string, intervalMs: number, signal: AbortSignal): Promise<EndpointStat | undefined> {
  const a = findEndpoint(url, { rings: true });
  if (!a) return undefined;
  const t0 = performance.now();
  if (!(await pause(intervalMs, signal))) return undefined;
  const b = findEndpoint(url, { rings: true }) ?? { ...a, connections: [] };
  const seconds = (performance.now() - t0) / 1000;
  return {
    kind: 'endpoint', url: b.url, listener: b.listener, intervalMs,
    connections: b.connections.map((c) => {
      const before = a.connections.find((x) => x.segment === c.segment)?.rings;
      return {
        segment: c.segment, peers: c.peers,
        toConnector: rate(before?.toConnector, c.rings?.toConnector, seconds),
        toListener: rate(before?.toListener, c.rings?.toListener, seconds),
        corrupt: c.rings === undefined ? 'not readable' : c.rings.corrupt,
      };
    }),
  };
}

/** Two looks `intervalMs` apart at a bus, as rates; undefined when there is none or Ctrl-C came between. */
async function busStat(url: string, intervalMs: number, signal: AbortSignal): Promise<BusStat | undefined> {
  const a = readBus(url);
  if (!a) return undefined;
  const t0 = performance.now();
  if (!(await pause(intervalMs, signal))) return undefined;
  const b = readBus(url) ?? { ...a, topics: [] };
  const seconds = (performance.now() - t0) / 1000;
  return {
    kind: 'bus', url, alive: b.alive, members: b.members, intervalMs,
    topics: b.topics.map((t) => {
      const before = a.topics.find((x) => x.name === t.name);
      const dropped = (x: typeof t | undefined) => (x?.subscribers ?? []).reduce((n, s) => n + s.dropped, 0);
      return {
        ...t,
        messagesPerSec: before ? Math.max(0, t.published - before.published) / seconds : 0,
        bytesPerSec: before ? Math.max(0, t.bytes - before.bytes) / seconds : 0,
        droppedPerSec: before ? Math.max(0, dropped(t) - dropped(before)) / seconds : 0,
      };
    }),
  };
}

const pct = (x: number) => (Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : '?');
const flags = (r: RingState) => [r.producerParked && 'producer parked', r.consumerParked && 'consumer parked', r.producerClosed && 'producer closed', r.consumerClosed && 'consumer closed'].filter(Boolean).join(', ') || '-';

function formatEndpoint(s: EndpointStat): string {
  const rows = [['SEGMENT', 'PEERS', 'DIRECTION', 'MSG/S', 'BYTES/S', 'WAITING', 'FILL', 'FLAGS']];
  for (const c of s.connections) {
    const peers = c.peers.map((p) => `${p.pid}${p.alive ? '' : ' (dead)'}`).join('+') || '?';
    if (c.corrupt && !c.toConnector && !c.toListener) rows.push([c.segment, peers, '-', '-', '-', '-', '-', c.corrupt]);
    for (const [dir, r] of [['listener→peer', c.toConnector], ['peer→listener', c.toListener]] as const) {
      if (r) rows.push([c.segment, peers, dir, human(r.messagesPerSec), human(r.bytesPerSec, 'B'), String(r.waiting), pct(r.fill), flags(r)]);
    }
  }
  return [`${s.url}  listener ${s.listener.pid || '?'}  ${s.connections.length} connection(s)`, table(rows)].join('\n');
}

function formatBus(s: BusStat): string {
  const out = [`${s.url}  ${s.alive ? 'alive' : 'dead'}  members: ${s.members.map((m) => `${m.pid}${m.alive ? '' : ' (dead)'}`).join(' ') || '-'}`];
  for (const t of s.topics) {
    const pub = t.publisher ? `${t.publisher.pid}${t.publisher.alive ? '' : ' (dead)'}${t.publisher.parked ? ' parked' : ''}` : '-';
    out.push(`topic ${t.name}  ${t.policy}  ${human(t.messagesPerSec)} msg/s  ${human(t.bytesPerSec, 'B')}/s  fill ${pct(t.fill)}  published ${t.published}  publisher ${pub}${t.corrupt ? `  CORRUPT: ${t.corrupt}` : ''}`);
    if (t.subscribers.length) {
      const rows = [['  SUBSCRIBER', 'ALIVE', 'LAG', 'LAPPED', 'DROPPED', 'PARKED']];
      for (const sub of t.subscribers) rows.push([`  ${sub.pid}`, sub.alive ? 'yes' : 'no', String(sub.lag), String(sub.lapped), String(sub.dropped), sub.parked ? 'yes' : 'no']);
      out.push(table(rows));
    }
  }
  return out.join('\n');
}

export const stat = defineCommand({
  name: 'stat',
  summary: 'live counters of an endpoint or a bus, refreshed like top',
  usage: `usage: shmbus stat <endpoint-url|bus-url> [--once] [--json] [--interval <ms>] [--bus|--endpoint]

  An endpoint (shm://, sysv://, file://): per connection and direction, messages and bytes per second,
  messages waiting in the ring (committed, not yet read), ring fill, parked and closed flags. Messages waiting
  in a sender's local queue (past a full ring) live in that process's memory and are not seen.
  A bus (shm://name, file:///dir/name): per topic, messages and bytes per second, ring fill, publisher (parked?),
  and per subscriber its lag (records published it has not read), how many of those a lossy topic already
  reclaimed (lapped: counted as dropped at its next read), drops, and whether it is parked.
  Everything is read from shared memory: watching costs the watched processes nothing.
  A shm:// URL that names both a listening endpoint and a bus shows the endpoint unless --bus is given.

    --interval <ms>  time between two looks (default 1000)
    --once           one refresh (two looks), then exit
    --json           JSON: with --once one object, otherwise one line per refresh
    --bus, --endpoint  which kind the URL names`,
  options: {
    once: { type: 'boolean' },
    json: { type: 'boolean' },
    interval: { type: 'string' },
    bus: { type: 'boolean' },
    endpoint: { type: 'boolean' },
  },
  positionals: [1, 1],
  async run({ values, positionals }) {
    const url = positionals[0]!;
    const intervalMs = milliseconds(values.interval, 'interval', 1000);
    if (values.bus && values.endpoint) throw new UsageError('--bus and --endpoint exclude each other');
    // Ctrl-C ends the wait between two looks at once, not after the interval.
    const stop = new AbortController();
    const onSigint = () => { stop.abort(); };
    process.once('SIGINT', onSigint);
    try {
      while (!stop.signal.aborted) {
        const s = (!values.bus ? await endpointStat(url, intervalMs, stop.signal) : undefined)
          ?? (!values.endpoint && !stop.signal.aborted ? await busStat(url, intervalMs, stop.signal) : undefined);
        if (stop.signal.aborted) break;
        if (!s) throw new ShmbusError(ErrorCode.NOT_FOUND, `no endpoint listens and no bus exists at ${url}`, { details: { url } });
        if (values.json) console.log(toJson(s, values.once ? 2 : undefined));
        else {
          const text = s.kind === 'endpoint' ? formatEndpoint(s) : formatBus(s);
          if (!values.once && process.stdout.isTTY) process.stdout.write('\x1b[H\x1b[2J');
          console.log(`${text}\n${values.once ? '' : `(every ${intervalMs} ms; Ctrl-C ends)`}`.trimEnd());
        }
        if (values.once) break;
      }
    } finally {
      process.off('SIGINT', onSigint);
    }
    return 0;
  },
});
