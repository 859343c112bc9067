// The guest SDK: what a plugin's AssemblyScript imports to talk to its host.
//
//   import { onRequest, Incoming, Value, log } from '<shmbus>/assembly/guest';
//   export * from '<shmbus>/assembly/guest/exports';      // the entry points the host calls (required)
//   onRequest((req: Incoming): Value | null => Value.string('hello ' + req.value.text));
//
// Transport: the channel segment the host maps onto a region of this module's own memory (see "Plugin (guest) rings"
// in ../layout.ts), driven by the same ring code the host runs (../ring.ts). This module reads ring IN and writes
// ring OUT; it never blocks and makes no system calls. When ring OUT is full, what the plugin sends waits in a
// private outbox (bounded by GUEST_OUTBOX_MAX) that the next shmbus_poll retries first, so order is kept.
//
// Handlers run inside shmbus_poll, one record at a time, with the record's bytes still in the ring: `Incoming`'s raw
// view (valueStart/valueLength) is valid only until the handler returns.

import {
  RING_OK, ROLE_CONSUMER, ROLE_PRODUCER, HANDLE_SIZE, BATCH_ENTRY_SIZE, SEGMENT_MAGIC, LAYOUT_VERSION_MAJOR,
  SEG_MAGIC_OFFSET, SEG_VERSION_OFFSET, SEG_RING_COUNT_OFFSET, SEG_RING_CAPACITY_OFFSET, CHANNEL_RING_COUNT,
  RING_MIN_CAPACITY, RING_MAX_CAPACITY, RECORD_MSGPACK, RECORD_REQUEST, RECORD_REPLY, RECORD_REPLY_ERROR,
  GUEST_RING_IN, GUEST_RING_OUT, GUEST_REGION_ALIGN, GUEST_BATCH_MAX, GUEST_OUTBOX_MAX, GUEST_RECORD_PUBLISH,
  GUEST_RECORD_LOG, GUEST_RECORD_ENV, GUEST_LOG_INFO, GUEST_LOG_ERROR, GUEST_WAKE_IN, GUEST_WAKE_OUT, GUEST_E_SEGMENT, GUEST_E_NOT_ATTACHED,
  GUEST_E_OUTBOX_FULL, GUEST_E_TOO_LARGE, GUEST_E_STATE, MSGPACK_OK, maxPayload, ringOffset,
} from '../layout';
import {
  ring_open, ring_claim, ring_commit, ring_read, ring_release, ring_needs_wake,
} from '../ring';
import { Reader, Writer } from './msgpack';
import { Value, Kind } from './value';

export { Value, Kind } from './value';
export { Reader, Writer, Format, decode, encode, Decoded } from './msgpack';
export {
  GUEST_LOG_DEBUG, GUEST_LOG_INFO, GUEST_LOG_WARN, GUEST_LOG_ERROR, GUEST_E_OUTBOX_FULL, GUEST_E_TOO_LARGE, GUEST_E_STATE,
} from '../layout';

// --- incoming records --------------------------------------------------------------------------------------------

/** A request or a message from the host, read in place from ring IN. */
export class Incoming {
  /** Address of the value's msgpack bytes (valid until the handler returns). */
  valueStart: usize = 0;
  /** Length of the value's msgpack bytes. */
  valueLength: u32 = 0;
  /** Address and length of a request's id, as the msgpack bytes the host sent (a reply carries them back
   * unchanged); length 0 for a message. In the ring, so valid while the handler runs; see `id`. */
  idStart: usize = 0;
  idLength: u32 = 0;
  /** A copy of the id bytes, made when the handler returns without replying (so a later reply still can). */
  id: Uint8Array | null = null;
  /** True once reply / replyError was called. */
  replied: bool = false;
  private decoded: Value | null = null;
  /** MSGPACK_OK, or why the value could not be decoded (then `value` is nil). */
  error: i32 = MSGPACK_OK;

  get isRequest(): bool { return this.idLength != 0; }

  /** Back to a fresh state, for reuse. */
  clear(): void {
    this.valueStart = 0;
    this.valueLength = 0;
    this.idStart = 0;
    this.idLength = 0;
    this.id = null;
    this.replied = false;
    this.decoded = null;
    this.error = MSGPACK_OK;
  }

  /** The value, decoded on first use (nil with `error` set if its bytes are bad). */
  get value(): Value {
    let v = this.decoded;
    if (v == null) {
      const r = new Reader(this.valueStart, this.valueLength);
      v = r.readValue();
      this.error = r.finish();
      if (this.error != MSGPACK_OK) v = Value.nil();
      this.decoded = v;
    }
    return v;
  }

  /** A reader over the value's bytes, for typed reads without building a Value tree. */
  reader(): Reader {
    return new Reader(this.valueStart, this.valueLength);
  }
}

/** Answers a request: return a Value to reply with it, or null to reply later (reply / replyError) or not at all. */
export type RequestHandler = (req: Incoming) => Value | null;
/** Receives a message (sent by the host with send, no reply expected). */
export type MessageHandler = (msg: Incoming) => void;

let requestHandler: RequestHandler | null = null;
let messageHandler: MessageHandler | null = null;

/** Sets the function that answers requests (one per plugin; a later call replaces it). */
export function onRequest(handler: RequestHandler): void { requestHandler = handler; }

/** Sets the function that receives messages. */
export function onMessage(handler: MessageHandler): void { messageHandler = handler; }

// --- outgoing ------------------------------------------------------------------------------------------------------

const out = new Writer(1024);

/** Writes `[id, ` of a reply to `req` into `out`; false when `req` is not a request or was answered already. */
function startReply(req: Incoming): bool {
  if (!req.isRequest || req.replied) return false;
  req.replied = true;
  out.reset();
  out.writeArrayHeader(2);
  const id = req.id;
  if (id != null) out.writeRaw(id.dataStart, <u32>id.length);
  else out.writeRaw(req.idStart, req.idLength);
  return true;
}

/** Replies to `req` with `value`. Returns RING_OK or a negative code (GUEST_E_TOO_LARGE, GUEST_E_OUTBOX_FULL, …). */
export function reply(req: Incoming, value: Value): i32 {
  if (!startReply(req)) return GUEST_E_STATE; // not a request, or answered already
  out.writeValue(value);
  return emit(RECORD_REPLY);
}

/** Replies to `req` with the msgpack bytes [start, start + length) as the value (they must be one valid value). */
export function replyRaw(req: Incoming, start: usize, length: u32): i32 {
  if (!req.isRequest || req.replied) return GUEST_E_STATE;
  // The common case (echo): the record [id, value] is written straight into ring OUT, without `out`.
  const id = req.id;
  const idStart = id != null ? id.dataStart : req.idStart;
  const idLength = id != null ? <u32>id.length : req.idLength;
  const size: u64 = 1 + <u64>idLength + <u64>length;
  if (attached && outboxHead == outboxPayloads.length && size <= <u64>maxPayload(capacity)) {
    const at = ring_claim(OUT, <u32>size, RECORD_REPLY);
    if (at < 0) return at;
    if (at > 0) {
      req.replied = true;
      store<u8>(<usize>at, 0x92); // msgpack fixarray of 2
      memory.copy(<usize>at + 1, idStart, idLength);
      memory.copy(<usize>at + 1 + idLength, start, length);
      const committed = ring_commit(OUT, <u32>size);
      if (committed != RING_OK) return committed;
      if (ring_needs_wake(OUT)) wakes |= GUEST_WAKE_OUT;
      return RING_OK;
    }
  }
  if (!startReply(req)) return GUEST_E_STATE;
  out.writeRaw(start, length);
  return emit(RECORD_REPLY);
}

/** Fails `req`: the host's request() rejects with an error of this `code` (an ERR_* string) and `message`. */
export function replyError(req: Incoming, code: string, message: string): i32 {
  if (!startReply(req)) return GUEST_E_STATE;
  out.writeMapHeader(2);
  out.writeString('code');
  out.writeString(code);
  out.writeString('message');
  out.writeString(message);
  return emit(RECORD_REPLY_ERROR);
}

/** Sends `value` to the host as a message. */
export function send(value: Value): i32 {
  out.reset();
  out.writeValue(value);
  return emit(RECORD_MSGPACK);
}

/** Sends the msgpack bytes [start, start + length) as a message (they must be one valid value). */
export function sendRaw(start: usize, length: u32): i32 {
  out.reset();
  out.writeRaw(start, length);
  return emit(RECORD_MSGPACK);
}

/** Publishes `value` on `topic`; the host forwards it only if it granted this plugin the topic (`allow`). */
export function publish(topic: string, value: Value): i32 {
  out.reset();
  out.writeArrayHeader(2);
  out.writeString(topic);
  out.writeValue(value);
  return emit(GUEST_RECORD_PUBLISH);
}

/** Writes a line to the host's log at `level` (GUEST_LOG_DEBUG … GUEST_LOG_ERROR). */
export function log(text: string, level: u32 = GUEST_LOG_INFO): i32 {
  out.reset();
  out.writeArrayHeader(2);
  out.writeUint(level);
  out.writeString(text);
  return emit(GUEST_RECORD_LOG);
}

// --- the rings -----------------------------------------------------------------------------------------------------

const handles: usize = memory.data(HANDLE_SIZE * 2, 16);
const IN: usize = handles;
const OUT: usize = handles + HANDLE_SIZE;
const batch: usize = memory.data(GUEST_BATCH_MAX * BATCH_ENTRY_SIZE, 16);

let regionAddress: usize = 0;
let regionBytes: usize = 0;
let attached = false;
let capacity: u32 = 0;
let wakes: u32 = 0;

// Records waiting for room in ring OUT, oldest first.
const outboxTypes = new Array<u32>();
const outboxPayloads = new Array<Uint8Array>();
let outboxHead = 0;
let outboxBytes: usize = 0;

/** Puts what `out` holds on ring OUT as a record of `type`, or in the outbox when the ring has no room now. */
function emit(type: u32): i32 {
  const length = out.length;
  if (attached && length > maxPayload(capacity)) return GUEST_E_TOO_LARGE;
  if (outboxHead == outboxPayloads.length && attached) {
    const written = tryWrite(type, out.dataStart, length);
    if (written != 0) return written < 0 ? written : RING_OK;
  }
  if (outboxBytes + length > <usize>GUEST_OUTBOX_MAX) return GUEST_E_OUTBOX_FULL;
  outboxTypes.push(type);
  outboxPayloads.push(out.toBytes());
  outboxBytes += length;
  return RING_OK;
}

/** 1 when written, 0 when the ring has no room, or a negative RING_E_* code. */
function tryWrite(type: u32, start: usize, length: u32): i32 {
  const at = ring_claim(OUT, length, type);
  if (at <= 0) return at;
  memory.copy(<usize>at, start, length);
  const committed = ring_commit(OUT, length);
  if (committed != RING_OK) return committed;
  if (ring_needs_wake(OUT)) wakes |= GUEST_WAKE_OUT;
  return 1;
}

/** Moves what the outbox holds onto ring OUT while it has room; a negative code if the ring is unusable. */
function flushOutbox(): i32 {
  while (outboxHead < outboxPayloads.length) {
    const payload = outboxPayloads[outboxHead];
    if (<u32>payload.length > maxPayload(capacity)) {
      // Queued before the ring's size was known, and too large for it: dropped, as send would have refused it.
      outboxBytes -= payload.length;
      outboxHead++;
      continue;
    }
    const written = tryWrite(outboxTypes[outboxHead], payload.dataStart, <u32>payload.length);
    if (written < 0) return written;
    if (written == 0) break;
    outboxBytes -= payload.length;
    outboxHead++;
  }
  if (outboxHead == outboxPayloads.length && outboxHead > 0) {
    outboxTypes.length = 0;
    outboxPayloads.length = 0;
    outboxHead = 0;
  }
  return RING_OK;
}

/** Reserves the ring region (see ../layout.ts, step 1): its address, or 0. */
export function reserve(bytes: u32): usize {
  if (regionAddress != 0) return <usize>bytes <= regionBytes ? regionAddress : 0;
  if (bytes == 0 || bytes > <u32>RING_MAX_CAPACITY * 2 + <u32>GUEST_REGION_ALIGN) return 0;
  const pages = (bytes + <u32>GUEST_REGION_ALIGN - 1) / <u32>GUEST_REGION_ALIGN;
  const before = memory.grow(<i32>pages);
  if (before < 0) return 0;
  regionAddress = <usize>before * GUEST_REGION_ALIGN;
  regionBytes = <usize>pages * GUEST_REGION_ALIGN;
  return regionAddress;
}

/** Checks the segment the host placed at the region and opens this module's two ends (step 3). */
export function attach(address: usize, bytes: u32): i32 {
  if (attached) return RING_OK;
  if (regionAddress == 0 || address != regionAddress || <usize>bytes > regionBytes) return GUEST_E_SEGMENT;
  if (bytes < 128) return GUEST_E_SEGMENT;
  // SYNC: pairs with the host's atomic store of the version word, made after every other header field.
  const version = atomic.load<u32>(address, SEG_VERSION_OFFSET);
  if (load<u32>(address, SEG_MAGIC_OFFSET) != SEGMENT_MAGIC || (version >>> 16) != <u32>LAYOUT_VERSION_MAJOR) return GUEST_E_SEGMENT;
  if (load<u32>(address, SEG_RING_COUNT_OFFSET) != <u32>CHANNEL_RING_COUNT) return GUEST_E_SEGMENT;
  const cap = load<u32>(address, SEG_RING_CAPACITY_OFFSET);
  if (cap < <u32>RING_MIN_CAPACITY || cap > <u32>RING_MAX_CAPACITY) return GUEST_E_SEGMENT;
  if (<u64>ringOffset(CHANNEL_RING_COUNT, cap) > <u64>bytes) return GUEST_E_SEGMENT;
  let result = ring_open(IN, address + ringOffset(GUEST_RING_IN, cap), cap, ROLE_CONSUMER);
  if (result != RING_OK) return result;
  result = ring_open(OUT, address + ringOffset(GUEST_RING_OUT, cap), cap, ROLE_PRODUCER);
  if (result != RING_OK) return result;
  capacity = cap;
  attached = true;
  return flushOutbox();
}

/** Handles up to `max` records from ring IN (step 4): how many, or a negative code. */
export function poll(max: u32): i32 {
  if (!attached) return GUEST_E_NOT_ATTACHED;
  const flushed = flushOutbox();
  if (flushed < 0) return flushed;
  const n = ring_read(IN, batch, max < <u32>GUEST_BATCH_MAX ? max : GUEST_BATCH_MAX);
  if (n <= 0) return n;
  for (let i = 0; i < n; i++) {
    const entry = batch + <usize>i * BATCH_ENTRY_SIZE;
    dispatch(<usize>load<u32>(entry, 0), load<u32>(entry, 4), load<u32>(entry, 8));
  }
  ring_release(IN);
  if (ring_needs_wake(IN)) wakes |= GUEST_WAKE_IN;
  return n;
}

/** Bytes waiting in the outbox for room in ring OUT. */
export function outboxSize(): u32 { return <u32>outboxBytes; }

/** GUEST_WAKE_* bits gathered since the last call (then cleared). */
export function takeWakes(): u32 {
  const w = wakes;
  wakes = 0;
  return w;
}

// --- configuration -------------------------------------------------------------------------------------------------

let envMap: Value | null = null;

/**
 * The configuration value `name` the host gave (`loadPlugin(…, { env })`), or null. The host sends its env as the
 * first record on ring IN, so it is there from the first handler on (not yet in the plugin's top-level code).
 */
export function env(name: string): string | null {
  const map = envMap;
  if (map == null) return null;
  const v = map.get(name);
  return v != null && v.kind == Kind.String ? v.text : null;
}

function dispatch(payload: usize, length: u32, type: u32): void {
  if (type == GUEST_RECORD_ENV) {
    const r = new Reader(payload, length);
    const v = r.readValue();
    if (r.finish() == MSGPACK_OK && v.kind == Kind.Map) envMap = v;
    return;
  }
  if (type == RECORD_MSGPACK) {
    const handler = messageHandler;
    if (handler == null) return;
    const msg = new Incoming();
    msg.valueStart = payload;
    msg.valueLength = length;
    handler(msg);
    return;
  }
  if (type != RECORD_REQUEST) return; // nothing else is meant for a plugin
  // msgpack [id, value]: the id is kept as bytes, so the reply carries back exactly what the host sent.
  const r = scratch;
  r.reset(payload, length);
  const count = r.readArrayHeader();
  const idStart = r.position;
  r.skip();
  if (!r.ok || count != 2) {
    log('shmbus guest: a request record that is not [id, value] was dropped', GUEST_LOG_ERROR);
    return;
  }
  // An Incoming answered inside its handler is reused for the next request (one allocation fewer per call);
  // one left open (to reply later) belongs to the plugin from then on.
  let req = spare;
  if (req != null) { spare = null; req.clear(); } else req = new Incoming();
  req.idStart = idStart;
  req.idLength = <u32>(r.position - idStart);
  req.valueStart = r.position;
  req.valueLength = <u32>(payload + length - r.position);
  const handler = requestHandler;
  if (handler == null) {
    replyError(req, 'ERR_SHMBUS_BAD_STATE', 'the plugin has no request handler');
    return;
  }
  const result = handler(req);
  if (result != null && !req.replied) reply(req, result);
  if (req.replied) { spare = req; return; }
  {
    // The handler may reply later, after the record is released: keep the id.
    const id = new Uint8Array(<i32>req.idLength);
    memory.copy(id.dataStart, req.idStart, req.idLength);
    req.id = id;
  }
}

/** A request's Incoming that was answered inside its handler, for the next request. */
let spare: Incoming | null = null;

/** The reader dispatch reuses for every request's envelope. */
const scratch = new Reader(0, 0);
