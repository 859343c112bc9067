/**
 * Every name the bridge puts on NATS, in one place: subjects, JetStream stream names, the key-value bucket and its
 * keys, message ids and the headers the bridge sets. Both ends of a bridge derive them the same way, so an
 * exporter on one host and an importer on another agree without talking.
 */
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { BadArgumentError } from '../host/errors.js';

/** Subject prefix used when the options name none. */
export const DEFAULT_PREFIX = 'shmbus';

/** Header carrying the record type when it is not plain bytes (absent: bytes, as any NATS client publishes). */
export const TYPE_HEADER = 'Shmbus-Type';
/** TYPE_HEADER's value for a msgpack record. */
export const TYPE_MSGPACK = 'msgpack';
/** Header on a reply whose handler failed: the payload is msgpack `{ code, message }`. */
export const ERROR_HEADER = 'Shmbus-Error';
/** JetStream's de-duplication header (set through the client's msgID option; read back on import). */
export const MSG_ID_HEADER = 'Nats-Msg-Id';

const TOKEN = /^[A-Za-z0-9_-]+$/;

/** Checks a subject prefix: one or more dot-separated tokens of letters, digits, _ and -. */
export function checkPrefix(prefix: unknown): string {
  if (typeof prefix !== 'string' || prefix.length === 0 || prefix.length > 128 || !prefix.split('.').every((t) => TOKEN.test(t))) {
    throw new BadArgumentError('prefix must be dot-separated tokens of letters, digits, _ and - (up to 128 characters)', { prefix: String(prefix) });
  }
  return prefix;
}

/** The NATS subject of topic or service `name` (topic names are checked by the bus; service names here). */
export function subjectOf(prefix: string, name: string): string {
  return `${prefix}.${name}`;
}

/** Checks a request/reply service name: the same alphabet as a topic name. */
export function checkServiceName(name: unknown): string {
  if (typeof name !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(name) || name.startsWith('.') || name.endsWith('.') || name.includes('..')) {
    throw new BadArgumentError('service name may hold letters, digits, _ . - (1 to 64), no empty dot-separated part', { name: String(name) });
  }
  return name;
}

/**
 * `text` with every character outside [A-Za-z0-9-] written as `=XX` (its UTF-8 bytes in hex): one token that is a
 * valid stream name, KV key part and message id part, and distinct for distinct inputs.
 */
export function escapeToken(text: string): string {
  return text.replace(/[^A-Za-z0-9-]/g, (c) => [...Buffer.from(c, 'utf8')].map((b) => `=${b.toString(16).padStart(2, '0')}`).join(''));
}

/** The JetStream stream that carries lossless topic `topic` (one stream per topic: order and limits per topic). */
export function streamOf(prefix: string, topic: string): string {
  return `SHMBUS_${escapeToken(prefix)}_${escapeToken(topic)}`;
}

/** The key-value bucket where bridges under `prefix` remember what they exported and imported. */
export function bucketOf(prefix: string): string {
  return `shmbus_${escapeToken(prefix).replace(/=/g, '_')}_${shortHash(prefix)}`;
}

/** KV key of a bridge's export (`direction` 'export') or import position of `topic`. */
export function positionKey(direction: 'export' | 'import', origin: string, topic: string): string {
  return `${direction}.${origin}.${escapeToken(topic)}`;
}

/**
 * A bridge's stable identity: names its durable positions and tags what it exports, so that it never imports its
 * own messages back. Default: host name and bus URL; give `name` to keep it when either changes.
 */
export function originOf(busUrl: string, name?: string): string {
  if (name !== undefined) {
    if (typeof name !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(name)) throw new BadArgumentError('name may hold letters, digits, _ and - (1 to 64)', { name: String(name) });
    return name;
  }
  const host = hostname().replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 32);
  return `${host}-${shortHash(`${hostname()}|${busUrl}`)}`;
}

function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}

/** The id of one exported lossless message: stable across restarts of the bridge and of nats-server. */
export function messageId(origin: string, epoch: string, seq: number): string {
  return `${origin}.${epoch}.${seq}`;
}

/** Parses messageId(); undefined for an id some other publisher gave. */
export function parseMessageId(id: string | undefined): { origin: string; epoch: string; seq: number } | undefined {
  if (!id) return undefined;
  const parts = id.split('.');
  if (parts.length !== 3 || !/^\d{1,16}$/.test(parts[2]!)) return undefined;
  return { origin: parts[0]!, epoch: parts[1]!, seq: Number(parts[2]) };
}

/** A new export epoch: names one incarnation of an exported topic (its sequence numbers restart with it). */
export function newEpoch(): string {
  return `${Date.now().toString(36)}${Math.floor(Math.random() * 0x10000).toString(36)}`;
}
