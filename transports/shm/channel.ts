/**
 * A duplex channel over one shared segment: one SPSC ring each way, plus the control socket for doorbells and
 * peer death. Created by `listen` (the listener's side) and `connect` (see listener.ts and connect.ts here).
 *
 * Sending follows Node's `stream.write` convention: `send` always takes the message; once the ring is full the
 * message waits in a bounded local queue and `send` returns false until `drained()` / 'drain'. Receiving is
 * pull-based: the async iterator (or `poll`) reads the ring only when asked, so a slow reader back-pressures the
 * writer through the ring instead of buffering without bound.
 */
import { dispatchMessages, type MessageSource } from '../dispatch.js';
import { lookWithinTurns } from '../../host/turns.js';
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { setImmediate as nextTurn } from 'node:timers/promises';
// The global `performance` is a lazy accessor on globalThis (a getter call per use); the module binding is not.
import { performance } from 'node:perf_hooks';
import { RECORD_BYTES, RECORD_MSGPACK, RECORD_HEADER_SIZE, RECORD_REQUEST, RECORD_REPLY_ERROR, BATCH_MAX, RECORD_FRAGMENT, FRAGMENT_HEADER_SIZE } from '../../assembly/layout.js';
import { RECORD_MSGPACK_RECORDS, RING_CONSUMER_CPU_OFFSET, maxPayload } from '../../assembly/layout.js';
import { Rpc, type RequestHandler, type RequestOptions } from '../../host/rpc.js';
import { trace, traceError } from '../../host/trace.js';
import type { Engine } from '../../host/engine.js';
import type { Mapped } from '../../host/mapped.js';
import type { PeerCredentials } from '../../host/peer.js';
import { RingEnd, COUNTING, perf } from '../../host/ring.js';
import { decodeLimits, decodeMsgpackAt, recordUnpackr, RecordBatch, BATCH_RECORD, plainUnpackr, type DecodeLimits } from '../../host/codec.js';
import { NOT_DECODED, RecordDecoder, plainRecordDecoder, sharedStructures } from '../../host/unpack.js';
import { RecordEncoder, NOT_ENCODED, NO_ROOM, encoded, encodePlain } from '../../host/pack.js';
import { allocLarge, copyOut, preparingLargeBuffer } from '../../host/large.js';
import { currentCpu, moveOffCpu, schedYield } from '../../host/sys/sched.js';
import { futexWaitv } from '../../host/sys/futex.js';
import { FUTEX2_SIZE_U32 } from '../../host/sys/constants.js';
import { DOORBELL_DATA, DOORBELL_SPACE } from '../../host/control.js';
import { SendQueue, WRITE_QUEUED, WRITE_SEND, WRITE_TRY, type WriteKind } from '../../host/send-queue.js';
import { WAKE_DATA, WAKE_SPACE, type Bell, type Sleeper, type WakeKind, type WakeMechanism } from '../../host/wake/index.js';
import type { ShmEndpoint } from '../../host/url.js';
import {
  BadArgumentError, BadStateError, ClosedError, CorruptError, ErrorCode, HandshakeError, MessageTooLargeError, PeerDeadError, ShmbusError, TimeoutError,
} from '../../host/errors.js';
import { parseLine } from './control.js';

/** How often a writer parked for room looks at the ring's positions on its own (see waitWritable). */
const LOOK_WHILE_PARKED_MS = 1000;
/** Bounds of the self-tuned spin (wake=adaptive), in nanoseconds. */
const SPIN_MIN_NS = 1_000;
const SPIN_MAX_NS = 100_000;
/** wake=spin: busy-poll this long at a time, then let the event loop run once. */
const SPIN_SLICE_NS = 1_000_000;
/** A busy iterator yields to the event loop at least this often (ms), so timers and I/O are never starved. */
export const YIELD_MS = 2;
/** A spin that has lasted this long (ns) yields the core every 32 polls (see spinFor). */
const SPIN_YIELD_AFTER_NS = 5_000;
/** A spin that finds the peer on its core moves to another core at most this often per process (ms). */
const MOVE_EVERY_MS = 5;
/** A spin that began with the peer's last spin on our core and found nothing for this long (ns) acts on it. */
const SPIN_SHARED_NS = 3_000;
/** How many such spins in a row make it move (see spinFor). */
const SHARED_STREAK = 2;
let lastMove = -Infinity;
/** Bounds of the room send() claims to encode a message in place (see encodeIntoRing): a message that needs more
 * than LARGEST_ESTIMATE is encoded aside and copied, which costs little next to encoding that much. */
const SMALLEST_ESTIMATE = 64;
const LARGEST_ESTIMATE = 2048;
/** Reading for request/reply stops buffering other messages past this many unread ones, or past this many bytes
 * of records read since the inbox was last empty (a peer's messages can be as large as maxMessage each). */
const INBOX_LIMIT = 65536;
const INBOX_BYTES_LIMIT = 16 * 1024 * 1024;

/** Handler for `poll`: `memory` is the whole wasm memory; the record is `memory[offset … offset + length)`. */
export type RecordHandler = (memory: Uint8Array, offset: number, length: number, type: number) => void;

/** What a channel is made of; built by listener.ts / connect.ts after the handshake. */
export interface ChannelParts {
  /** The segment in its window of an engine: the channel unmaps it (and closes the region) when it closes. */
  mapped: Mapped;
  tx: RingEnd;
  rx: RingEnd;
  socket: net.Socket;
  endpoint: ShmEndpoint;
  /** Doorbell bytes that arrived together with the last handshake line. */
  pendingBytes: Buffer;
  /** Limits on decoding the peer's msgpack records (defaults: DEFAULT_DECODE_LIMITS). */
  decodeLimits?: Partial<DecodeLimits>;
  /** The largest message both sides agreed on in the handshake; above the ring's maxPayload a message goes as
   * fragments (assembly/layout.ts RECORD_FRAGMENT). Default: the ring's maxPayload. */
  maxMessage?: number;
  /** The peer decodes RECORD_MSGPACK_RECORDS (it said `records: true` in the handshake): `send` packs with record
   * structures. */
  peerRecords?: boolean;
  /** 'listener' or 'connector', for messages. */
  side: string;
  /** Without `peer` and `peerParams` while a `verdict` is awaited. */
  wake: WakeParts;
  /**
   * A connector's channel over its own segment (connect.ts connectWithSegment), made before the listener took it: the
   * first line on the control socket is the listener's verdict. `accept` checks it and says how to ring the
   * listener, or throws the refusal; `failed` runs when the verdict is a refusal, never comes within `timeoutMs`, or
   * the listener goes away first. Until the verdict no ring reaches the listener (they are held and done then).
   */
  verdict?: { timeoutMs: number; accept(reply: Record<string, unknown>): WakeParts; failed(): void };
  /** The peer is this very thread (the same process and worker_threads threadId, from the handshake): it cannot
   * answer while we spin, so the self-tuned spin (wake=adaptive) is off. */
  peerInThisThread?: boolean;
}

/** How we sleep while parked (our mechanism) and how we ring the peer (its mechanism, from the handshake). */
export interface WakeParts {
  mine: WakeMechanism;
  peer?: WakeMechanism;
  peerParams?: Record<string, unknown>;
  /** What we sent the peer for our own mechanism (its `params()`), handed to our sleeper. */
  myParams?: Record<string, unknown>;
  /** Who the peer is, as the kernel says (SO_PEERCRED of the control socket): what `peerParams` must name. */
  peerCred: PeerCredentials;
}

/**
 * Free bytes that guarantee a record of `length` payload bytes can be claimed wherever the tail is: the record
 * (header + payload, 8-aligned) plus, when it does not fit before the end of the data, the padding record that
 * fills the rest (at most the record's size minus 8). Waiting for less can livelock: the ring reports room,
 * the claim still fails, and the writer retries without ever yielding.
 */
function roomFor(length: number): number {
  const record = (length + RECORD_HEADER_SIZE + 7) & ~7;
  return 2 * record - RECORD_HEADER_SIZE;
}

const DATA_BYTE = Buffer.from([DOORBELL_DATA]);
const RESOLVED = Promise.resolve();

/**
 * What both zero-copy claims share: a channel has one open at a time, committed or aborted once.
 *
 * Made once per record, a claim is kept small: its fields are `declare`d and set in the constructors (class fields,
 * defined one by one by the base and then the derived class, cost ~20 ns more a claim), `memory` is read from the
 * channel instead of kept, and the channel knows the open claim by its serial number, not by a reference (storing
 * each new claim into the long-lived channel cost V8's write barrier). Together, claim + memory.set + commit of 64
 * bytes: 34 → 29 ns a record in one process (a scratch loop), and across two processes (`npm run bench:claim-cost`,
 * api rows, nine runs alternated with the previous build) a median of 19.3M → 23.9M records/s.
 */
abstract class OpenClaim {
  protected declare readonly channel: Channel;
  /** Which of the channel's claims this is: the channel keeps the open one's serial, so a claim committed or
   * aborted (or cut off by the channel's close) can never commit or abort a later one. */
  protected declare readonly serial: number;

  constructor(channel: Channel, serial: number) {
    this.channel = channel;
    this.serial = serial;
  }

  /** The whole wasm memory; the claimed bytes are inside it. Valid until commit or abort. */
  get memory(): Uint8Array {
    return this.channel._engine.u8;
  }

  /** Gives the claimed room back; nothing is sent. Does nothing once the claim was committed or aborted. */
  abort(): void {
    this.channel._abortClaim(this.serial);
  }
}

/**
 * A zero-copy claim on the outbound ring: write the claimed bytes, then `commit(n)` or `abort()`. They are
 * `bytes` (a view made on first use) or, without a view, `memory[offset … offset + size)`: a typed array view costs
 * V8 a good part of the claim and commit together (bench/everyday claim64 against claimAt64 rows).
 */
export class Claim extends OpenClaim {
  /** Offset in `memory` of the claimed bytes. */
  declare readonly offset: number;
  /** Bytes claimed. */
  declare readonly size: number;
  private declare view: Uint8Array | undefined;

  /** @internal */
  constructor(channel: Channel, serial: number, offset: number, size: number) {
    super(channel, serial);
    this.offset = offset;
    this.size = size;
    this.view = undefined;
  }

  /** The claimed bytes, inside the shared ring (a view of `memory`). Valid until commit or abort. */
  get bytes(): Uint8Array {
    // Over the engine's cached buffer: `memory.buffer` would cost the view ~8 ns more (see Engine.buffer).
    return this.view ??= new Uint8Array(this.channel._engine.buffer, this.offset, this.size);
  }

  /** Publishes the first `length` bytes (default: all) as one record. */
  commit(length = this.size): void {
    this.channel._commitClaim(this.serial, length, this.size);
  }
}

/**
 * A zero-copy claim of several records of one size (Channel.claimBatch): fill record i at
 * `memory[offset(i) … offset(i) + size)`, then `commit(n)` publishes the first n with one store of the ring's tail,
 * or `abort()`. One call into the ring per batch instead of two per record.
 */
export class ClaimBatch extends OpenClaim {
  /** Records claimed (at least 1). */
  declare readonly count: number;
  /** Payload bytes of each record. */
  declare readonly size: number;
  /** Offset in `memory` of the first record's payload. */
  declare readonly first: number;
  /** Bytes from one record's payload to the next (the record header sits in between: write only `size` bytes). */
  declare readonly stride: number;

  /** @internal */
  constructor(channel: Channel, serial: number, first: number, count: number, size: number) {
    super(channel, serial);
    this.first = first;
    this.count = count;
    this.size = size;
    this.stride = (size + RECORD_HEADER_SIZE + 7) & ~7;
  }

  /** Offset in `memory` of record i's payload. */
  offset(i: number): number {
    return this.first + i * this.stride;
  }

  /** Publishes the first `n` records (default: all). */
  commit(n = this.count): void {
    this.channel._commitBatch(this.serial, n, this.count);
  }
}

export class Channel extends EventEmitter implements AsyncIterable<unknown> {
  /** The URL this channel was made from. */
  readonly url: string;
  /** Largest message in bytes (encoded) one send can carry. */
  readonly maxMessageSize: number;
  /** Hard cap of messages waiting in the local queue. */
  readonly maxQueued: number;

  private readonly engine: Engine;
  /** @internal The engine, for the claims (their `memory`). */
  get _engine(): Engine {
    return this.engine;
  }
  private readonly tx: RingEnd;
  private readonly rx: RingEnd;
  private readonly socket: net.Socket;
  private readonly mapped: Mapped;
  private readonly side: string;
  private readonly sleeper: Sleeper;
  /** How to ring the peer: a HeldRings until the listener's verdict when `verdict` is set. */
  private bell: Bell;
  /** Set until the listener's verdict arrived (ChannelParts.verdict); `verdictBytes` holds its line's first part. */
  private verdict: ChannelParts['verdict'];
  private verdictBytes: Buffer | undefined;
  private verdictTimer: NodeJS.Timeout | undefined;
  /** This side sleeps on a futex (its peer rings with FUTEX_WAKE): waitSync can block on the ring word itself. */
  private readonly futexRung: boolean;
  /** Spin budget before parking (ns); tuned when `spinAuto`. 'always' never parks. */
  private spinNs: number;
  private readonly spinAuto: boolean;
  private readonly spinAlways: boolean;
  /** Plain msgpack (no record structures) holds no state between messages: one encoder and one decoder serve every
   * channel of the process (host/codec.ts), which spares each new channel building its own (~20 µs). */
  private readonly unpackr = plainUnpackr;
  /** What decoding one of the peer's records may cost (host/codec.ts). */
  private readonly decodeLimits: DecodeLimits;
  /** `send`'s encoder when the peer takes record structures (host/pack.ts); reset whenever an encoded message does
   * not go out, since the peer must see every definition the encoder wrote. */
  private encoder: RecordEncoder | undefined;
  /** Room send() claims for its next message (encodeIntoRing), and the most it claims: never more than the ring
   * takes at its starting size, so that an estimate never makes a growing ring grow. */
  private sendEstimate = SMALLEST_ESTIMATE * 2;
  private readonly largestEstimate: number;
  /** Decodes the peer's RECORD_MSGPACK_RECORDS (host/codec.ts RecordBatch: its decoder, the scan's table of its
   * structures, and the small records of one read, decoded together). Made with the first such record: an idle
   * connection does not hold it (~1.5 KiB). */
  private recordsIn: RecordBatch | undefined;
  /** Reads the same records in place, sharing recordsIn's structures; made with it. */
  private recordsFast: RecordDecoder | undefined;
  /** Reads plain msgpack records in place (one per process for the default limits). */
  private plainIn: RecordDecoder | undefined;
  /** Whether the peer decodes RECORD_MSGPACK_RECORDS; `encoder` is made with the first send. */
  private readonly peerRecords: boolean;
  private readonly intoInbox = (value: unknown): void => { this.inbox[this.inboxTail++] = value; };

  private state: 'open' | 'closing' | 'closed' = 'open';
  /** Set once the peer's control socket ended; the rings stay mapped until we are done reading. */
  private peerGone = false;
  /** The error that ended the channel (corrupt ring, dead peer), reported to every later caller. */
  private failure: ShmbusError | undefined;
  /** The send queue (host/send-queue.ts); `pump` tells it when the ring has room again. */
  private readonly sendQueue: SendQueue;
  /** Bytes a failed trySend/claim needs; 'drain' fires once the ring has that much room. */
  private wantRoom = 0;
  private pumping = false;
  /** Free bytes the first queued message's refused claim needed (0: unknown). */
  private queueNeed = 0;
  private wakeScheduled = false;
  /** The open claim's serial (0: none; see OpenClaim): a number, not the claim, so that making a claim stores no
   * new object into the channel. */
  private openClaim = 0;
  /** The last claim's serial. */
  private claimSerial = 0;
  private readerWake: (() => void) | undefined;
  private writerWake: (() => void) | undefined;
  /** Decoded messages not handed out yet: inbox[inboxHead … inboxTail). The array keeps its length when it empties
   * (setting length to 0 on every message cost more than the message's own bookkeeping). */
  private readonly inbox: unknown[] = [];
  private inboxHead = 0;
  private inboxTail = 0;
  private closePromise: Promise<void> | undefined;
  /** finish() under way or done: every caller (close, destroy, a failure) waits for the same end. */
  private finished: Promise<void> | undefined;
  private lastYield = performance.now();
  private readablePromise: Promise<void> | undefined;
  private readonly rpc = new Rpc((type, value) => this.sendRecord(type, value), (active) => { if (active) void this.readForRpc(); });
  private rpcReading = false;
  private inboxSpace: (() => void) | undefined;
  /** Bytes of the records read into the inbox since it was last empty (bounds reading ahead for request/reply). */
  private inboxBytes = 0;

  /** @internal built by listen/connect */
  constructor(parts: ChannelParts) {
    super();
    this.engine = parts.mapped.engine;
    this.tx = parts.tx;
    this.rx = parts.rx;
    this.socket = parts.socket;
    this.mapped = parts.mapped;
    this.side = parts.side;
    this.url = parts.endpoint.url;
    this.maxQueued = parts.endpoint.maxQueued;
    this.decodeLimits = decodeLimits(parts.decodeLimits);
    this.peerRecords = parts.peerRecords === true;
    const { tx, rx, socket } = parts;
    const engine = this.engine;
    if (parts.verdict) {
      this.verdict = parts.verdict;
      this.bell = new HeldRings();
      this.verdictTimer = setTimeout(() => this.verdictFailed(new TimeoutError('the listener did not accept the connection in time', { timeoutMs: parts.verdict!.timeoutMs })), parts.verdict.timeoutMs);
      this.verdictTimer.unref();
    } else {
      this.bell = parts.wake.peer!.bell({ engine, tx, rx, socket, params: parts.wake.peerParams!, peer: parts.wake.peerCred });
    }
    this.sleeper = parts.wake.mine.sleeper({
      engine, tx, rx, socket, onWake: (kind) => (kind === WAKE_DATA ? this.wakeReader() : this.wakeWriter()),
      params: parts.wake.myParams,
    });
    this.futexRung = parts.wake.mine.name === 'futex';
    // A peer in this thread runs only once we stop: waiting for it by spinning would cost the whole budget every time,
    // and the budget then learns from each short park to spin longer (a request/reply in one thread took ~150 µs).
    // A spin the URL asks for (wake=spin, spin=N) is still done.
    const spin = parts.peerInThisThread && parts.endpoint.spin === 'auto' ? 0 : parts.endpoint.spin;
    this.spinAuto = spin === 'auto';
    this.spinAlways = spin === 'always';
    this.spinNs = spin === 'auto' ? 20_000 : spin === 'always' ? SPIN_SLICE_NS : spin;
    this.maxMessageSize = Math.max(this.tx.maxPayload, parts.maxMessage ?? 0);
    this.sendQueue = new SendQueue({
      maxMessageSize: this.maxMessageSize, maxQueued: this.maxQueued, write: this.writeRecord, onDrain: () => this.emit('drain'),
      refusalBlocks: false,
    });
    this.largeRecord = Math.max(4096, this.rx.capacity >>> 4);
    this.largestEstimate = Math.min(LARGEST_ESTIMATE, maxPayload(this.tx.currentCapacity));
    this.sendEstimate = Math.min(this.sendEstimate, this.largestEstimate);
    // Growing rings (RECORD_RESIZE): a committed resize record wakes the reader like any commit; passing one wakes
    // a writer that waits for its ring to empty.
    this.tx.onResize = () => this.afterCommit();
    this.rx.onResize = () => { if (this.rx.needsWake()) this.ring(WAKE_SPACE); };
    // An idle ring shrinks back only while no writer waits for room it sized by the ring as it is.
    this.tx.canShrink = () => !this.pumping && this.sendQueue.length === 0 && this.fragmentSent === 0 && this.openClaim === 0 && this.wantRoom === 0;
    this.socket.setNoDelay(true);
    this.socket.on('data', (bytes: Buffer) => this.onDoorbells(bytes));
    this.socket.on('close', () => this.onPeerGone());
    this.socket.on('error', () => { /* 'close' follows; peer death is reported from there */ });
    if (parts.pendingBytes.length) this.onDoorbells(parts.pendingBytes);
    this.socket.resume();
    this.on('newListener', (event) => { if (event === 'message') queueMicrotask(() => void dispatchMessages(this.messageSource())); });
  }

  // --- sending ---------------------------------------------------------------------------------------------------

  /** Sends a value (msgpack). Always takes it; returns false once messages wait locally (see drained()). */
  send(value: unknown): boolean {
    this.checkSendable();
    if (COUNTING) perf.sends++;
    const encoder = this.encoder ?? (this.peerRecords ? (this.encoder = new RecordEncoder()) : undefined);
    if (encoder === undefined) {
      if (COUNTING) perf.allocs++;
      return this.enqueue(RECORD_MSGPACK, this.pack(value));
    }
    if (this.sendQueue.idle && this.openClaim === 0) {
      const sent = this.encodeIntoRing(encoder, value);
      if (sent !== NO_ROOM) return sent === 1 || this.enqueue(RECORD_MSGPACK, this.pack(value));
    }
    if (COUNTING) perf.allocs++;
    const length = encoder.encode(value);
    // A value the record encoder leaves to msgpackr goes as plain msgpack, which defines no record structure.
    if (length === NOT_ENCODED) return this.enqueue(RECORD_MSGPACK, this.pack(value));
    // With record structures, a message encoded and then not taken would leave the peer without definitions the
    // encoder believes it has: it starts over, defining every shape again before use.
    try {
      return this.enqueue(RECORD_MSGPACK_RECORDS, encoded.subarray(0, length));
    } catch (error) {
      encoder.reset();
      throw error;
    }
  }

  /**
   * send()'s fast path, when nothing waits in the send queue and no claim is open (what the queue would do first):
   * claims the room the last messages needed (twice their size) and encodes the value right there, no copy.
   * Returns 1 (sent), NOT_ENCODED (nothing written: plain msgpack for this one) or NO_ROOM (nothing written: the
   * ring has no room now, or the value needs more than was claimed; the next claim will be larger).
   */
  private encodeIntoRing(encoder: RecordEncoder, value: unknown): number {
    const claim = this.sendEstimate;
    let at: number;
    try {
      at = this.tx.claim(claim, RECORD_MSGPACK_RECORDS);
    } catch (error) {
      this.ringFailed(error);
    }
    if (at === 0) return NO_ROOM;
    const engine = this.engine;
    let end: number;
    try {
      end = encoder.encodeInto(value, engine.bytes, engine.view, at, at + claim);
    } catch (error) {
      this.tx.abort(); // a getter threw: nothing of the value was sent
      throw error;
    }
    if (end < 0) {
      this.tx.abort();
      if (end === NO_ROOM) this.sendEstimate = Math.min(claim * 2, this.largestEstimate);
      return end;
    }
    const length = end - at;
    try {
      this.tx.commit(length, this.wakeScheduled);
    } catch (error) {
      this.ringFailed(error);
    }
    // The next claim: twice this message, within [SMALLEST_ESTIMATE, largestEstimate].
    const next = length * 2;
    this.sendEstimate = next < SMALLEST_ESTIMATE ? SMALLEST_ESTIMATE : next > this.largestEstimate ? this.largestEstimate : next;
    this.afterCommit();
    return 1;
  }

  /**
   * Sends a request and resolves with the peer's reply (see `handle`). Rejects with ERR_SHMBUS_TIMEOUT after
   * `timeout` ms, with ERR_SHMBUS_CLOSED when `signal` aborts, with the handler's error code when it failed, or
   * with the reason the channel ended. Replies are read even when nobody iterates the channel.
   */
  request(value: unknown, options?: RequestOptions): Promise<unknown> {
    return this.rpc.request(value, options);
  }

  /** Answers the peer's requests with `handler` (its return value, or a failed reply if it throws). */
  handle(handler: RequestHandler | undefined): this {
    this.rpc.handle(handler);
    return this;
  }

  private sendRecord(type: number, value: unknown): void {
    this.checkSendable();
    this.enqueue(type, this.pack(value));
  }

  /**
   * Plain msgpack of `value` (host/pack.ts encodePlain): the result is valid only until the next encode in this
   * process, which is enough since every send path copies it at once (into the ring or the queue).
   */
  private pack(value: unknown): Uint8Array {
    return encodePlain(value);
  }

  /** Sends raw bytes. Always takes them (copied); returns false once messages wait locally. */
  sendBytes(bytes: Uint8Array): boolean {
    this.checkSendable();
    if (!(bytes instanceof Uint8Array)) throw new BadArgumentError('sendBytes takes a Uint8Array', { type: typeof bytes });
    if (COUNTING) perf.sends++;
    return this.enqueue(RECORD_BYTES, bytes);
  }

  /** Sends a value only if it fits in the ring now; false means "not taken" (then wait for drained()). */
  trySend(value: unknown): boolean {
    this.checkSendable();
    return this.tryEnqueue(RECORD_MSGPACK, this.pack(value));
  }

  /** Sends raw bytes only if they fit in the ring now; false means "not taken". */
  trySendBytes(bytes: Uint8Array): boolean {
    this.checkSendable();
    if (!(bytes instanceof Uint8Array)) throw new BadArgumentError('trySendBytes takes a Uint8Array', { type: typeof bytes });
    return this.tryEnqueue(RECORD_BYTES, bytes);
  }

  /**
   * Claims `size` bytes in the outbound ring for the caller to fill in place (zero copy). Returns null when the
   * ring has no room now or messages are still queued (they go first); wait for drained() and try again.
   */
  claim(size: number): Claim | null {
    const at = this.claimRoom(size, 0);
    if (at === 0) return null;
    const serial = this.openClaim = this.nextClaimSerial();
    return new Claim(this, serial, at, size);
  }

  /**
   * Claims up to `max` records of `size` bytes each in the outbound ring, back to back, for the caller to fill in
   * place (zero copy; see ClaimBatch). As few as one when the ring has little room or its end is near; null when
   * it has none now or messages are still queued (wait for drained() and try again).
   */
  claimBatch(size: number, max: number): ClaimBatch | null {
    if (!Number.isInteger(max) || max < 1) throw new BadArgumentError('claim count must be a positive integer', { max });
    const at = this.claimRoom(size, max);
    if (at === 0) return null;
    const serial = this.openClaim = this.nextClaimSerial();
    return new ClaimBatch(this, serial, at, this.tx.claimedCount(), size);
  }

  /** A serial for the next claim: 1 … 2^30 - 1, then round again (a small integer to V8; a stale claim would
   * have to be kept across a billion claims to meet its number again). */
  private nextClaimSerial(): number {
    this.claimSerial = this.claimSerial === 0x3fffffff ? 1 : this.claimSerial + 1;
    return this.claimSerial;
  }

  /** What claim and claimBatch share: the checks, then the ring's claim of one record (`max` 0) or of 1 … `max`
   * records of a batch. The first payload's address, or 0 when the ring has no room now (then 'drain' follows) or
   * messages are queued. */
  private claimRoom(size: number, max: number): number {
    this.checkSendable();
    if (!Number.isInteger(size) || size < 0) throw new BadArgumentError('claim size must be a non-negative integer', { size });
    // A claim is whole records: zero copy cannot be fragmented.
    if (size > this.tx.maxPayload) throw new MessageTooLargeError(size, this.tx.maxPayload);
    if (this.openClaim !== 0) throw new BadStateError('a claim is already open on this channel');
    if (this.sendQueue.length > 0) return 0;
    let at: number;
    try {
      at = max === 0 ? this.tx.claim(size, RECORD_BYTES) : this.tx.claimMany(size, RECORD_BYTES, max);
    } catch (error) {
      this.ringFailed(error);
    }
    if (at === 0) {
      this.sendQueue.refused();
      this.waitForRoom(size);
    }
    return at;
  }

  /** @internal ClaimBatch.commit: publishes the first `n` of the `count` records claim `serial` holds. */
  _commitBatch(serial: number, n: number, count: number): void {
    if (this.openClaim !== serial) throw this.claimGone();
    if (!Number.isInteger(n) || n < 0 || n > count) throw new BadArgumentError('commit count out of range', { n, claimed: count });
    this.openClaim = 0;
    if (n === 0) { this.tx.abort(); return; }
    try {
      this.tx.commitMany(n);
    } catch (error) {
      this.ringFailed(error);
    }
    this.afterCommit();
  }

  /** @internal Claim.commit: publishes the first `length` of the `size` bytes claim `serial` holds. */
  _commitClaim(serial: number, length: number, size: number): void {
    if (this.openClaim !== serial) throw this.claimGone();
    if (!Number.isInteger(length) || length < 0 || length > size) throw new BadArgumentError('commit length out of range', { length, claimed: size });
    this.openClaim = 0;
    try {
      this.tx.commit(length, this.wakeScheduled);
    } catch (error) {
      this.ringFailed(error);
    }
    this.afterCommit();
  }

  /** @internal Claim.abort and ClaimBatch.abort: gives back the room claim `serial` holds, if it is still open. */
  _abortClaim(serial: number): void {
    if (this.openClaim !== serial) return;
    this.openClaim = 0;
    this.tx.abort();
  }

  /** Why a claim that is no longer open cannot commit. */
  private claimGone(): ShmbusError {
    return this.state === 'open' ? new BadStateError('claim already committed or aborted') : new ClosedError('the channel closed while the claim was open');
  }

  /** Messages waiting in the local queue. */
  get queued(): number {
    return this.sendQueue.length;
  }

  /**
   * Resolves when the local queue is empty (and a refused trySend/claim would now fit). Rejects if the channel
   * ends before that, with the reason.
   */
  drained(): Promise<void> {
    if (this.sendQueue.idle) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    if (this.state === 'closed') return Promise.reject(new ClosedError());
    return this.sendQueue.drained();
  }

  /**
   * A ring call on the send path threw. CORRUPT means the shared positions are impossible (a broken or hostile
   * peer): the ring cannot be used again, so the channel fails with that error (later calls throw it, the
   * iterator ends with it, 'error' listeners hear it) instead of staying half alive. Anything else (a message
   * too large) is the caller's and leaves the channel as it was.
   */
  private ringFailed(error: unknown): never {
    if (error instanceof ShmbusError && error.code === ErrorCode.CORRUPT) this.fail(error);
    throw error;
  }

  private checkSendable(): void {
    if (this.failure) throw this.failure;
    if (this.state !== 'open') throw new ClosedError('channel is closed', { url: this.url });
    // The peer's closed flag in the ring is checked only when a message cannot go straight into the ring (a
    // wasm call per send otherwise); its control socket ending sets peerGone for every later send.
    if (this.peerGone) throw new ClosedError('peer closed the channel', { url: this.url });
  }

  /** send / sendBytes: into the ring now, or into the send queue (then `pump` moves it once there is room). */
  private enqueue(type: number, bytes: Uint8Array): boolean {
    if (this.sendQueue.send(type, bytes)) return true;
    void this.pump();
    // The ring is growing for this message (the reader has to pass the resize record first): taken as if the ring
    // had it, so that "send, await drained() if false, then read" does not wait on a reader that has not read yet
    // (with a ring that never grows the message would have fit). drained() still waits for it.
    return this.sendQueue.length === 1 && this.tx.resizing;
  }

  /** trySend / trySendBytes: into the ring now or not at all; a refusal starts `pump` waiting for the room. */
  private tryEnqueue(type: number, bytes: Uint8Array): boolean {
    if (this.sendQueue.trySend(type, bytes)) return true;
    void this.pump();
    return false;
  }

  /**
   * Writes one record into the outbound ring now, or nothing (the send queue's `write`). A refusal leaves in
   * `queueNeed` the free bytes the ring needs for it; `pump` waits for those.
   */
  private readonly writeRecord = (type: number, bytes: Uint8Array, kind: WriteKind): boolean => {
    if (kind !== WRITE_QUEUED && this.openClaim !== 0) {
      this.queueNeed = 0;
      return false;
    }
    const length = bytes.length;
    if (length > this.tx.maxPayload) return this.writeFragments(type, bytes, kind);
    let at = 0;
    try {
      at = this.tx.claim(length, type);
      if (at === 0 && kind === WRITE_SEND && length >= this.largeRecord) {
        // A large message that does not fit now: copying it into the queue costs about as long as the reader
        // takes to free its room, so spin for the room instead (within the spin budget) and copy it once.
        this.spinFor(() => (at = this.tx.claim(length, type)) !== 0 || this.peerGone);
      }
      if (at !== 0) {
        if (COUNTING) { perf.copies++; perf.bytesCopied += length; }
        this.engine.u8.set(bytes, at);
        this.tx.commit(length, this.wakeScheduled);
      } else {
        // Nothing else claims while messages are queued (trySend and claim() refuse), so this stays exact.
        this.queueNeed = this.tx.needed();
        if (kind === WRITE_SEND) {
          if (this.tx.peerClosed()) throw new ClosedError('peer closed the channel', { url: this.url });
          // The slow path anyway: look at the ring's positions, so that impossible ones a peer wrote while this
          // side waited for room (nothing rings a parked writer for that) fail the channel now instead of
          // stalling it.
          this.tx.free();
          // The send queue copies the message next: a large copy is a large new buffer.
          preparingLargeBuffer(length);
          if (COUNTING) { perf.queued++; perf.copies++; perf.allocs += 2; perf.bytesCopied += length; }
        } else if (kind === WRITE_TRY) {
          const need = roomFor(length);
          if (need > this.wantRoom) this.wantRoom = need;
        }
        return false;
      }
    } catch (error) {
      this.ringFailed(error);
    }
    this.afterCommit();
    return true;
  };

  /** Bytes of the message being sent as fragments that are in the ring already (0: none started). Nothing else
   * is written until it is all there: the send queue retries the same message first. */
  private fragmentSent = 0;

  /**
   * writeRecord for a message larger than one record: as many fragments as fit now. False (with `queueNeed` set
   * for the next fragment) until the last one is in; the send queue then calls again with the same message.
   */
  private writeFragments(type: number, bytes: Uint8Array, kind: WriteKind): boolean {
    // trySend takes a message whole or not at all, and a message of several records never fits whole at once.
    if (kind === WRITE_TRY) throw new MessageTooLargeError(bytes.length, this.tx.maxPayload);
    const total = bytes.length;
    const room = this.tx.maxPayload - FRAGMENT_HEADER_SIZE;
    const memory = this.engine.u8;
    try {
      while (this.fragmentSent < total) {
        const piece = Math.min(room, total - this.fragmentSent);
        const at = this.tx.claim(FRAGMENT_HEADER_SIZE + piece, RECORD_FRAGMENT);
        if (at === 0) {
          this.queueNeed = this.tx.needed();
          if (this.tx.peerClosed()) throw new ClosedError('peer closed the channel', { url: this.url });
          this.tx.free();
          if (kind === WRITE_SEND) preparingLargeBuffer(total);
          if (this.fragmentSent > 0) this.afterCommit();
          return false;
        }
        putU32(memory, at, type);
        putU32(memory, at + 4, total);
        memory.set(bytes.subarray(this.fragmentSent, this.fragmentSent + piece), at + FRAGMENT_HEADER_SIZE);
        this.tx.commit(FRAGMENT_HEADER_SIZE + piece);
        this.fragmentSent += piece;
        // Let the reader start on the first fragments while we write the rest.
        if (this.tx.needsWake()) this.ring(WAKE_DATA);
      }
    } catch (error) {
      this.ringFailed(error);
    }
    this.fragmentSent = 0;
    this.afterCommit();
    return true;
  }

  /** A message coming in fragments: its type, its bytes so far. */
  private assembly: { type: number; bytes: Uint8Array; filled: number } | undefined;

  /** One RECORD_FRAGMENT record: checked against the first fragment and our maximum, copied into the message. */
  private takeFragment(memory: Uint8Array, offset: number, length: number): void {
    if (length < FRAGMENT_HEADER_SIZE) throw new CorruptError('fragment shorter than its header', { length });
    const type = getU32(memory, offset);
    const total = getU32(memory, offset + 4);
    const piece = length - FRAGMENT_HEADER_SIZE;
    let a = this.assembly;
    if (a === undefined) {
      if ((type < RECORD_BYTES || type > RECORD_REPLY_ERROR) && type !== RECORD_MSGPACK_RECORDS) throw new CorruptError('fragment of a message of an unknown type', { type });
      if (total <= this.rx.maxPayload || total > this.maxMessageSize) {
        throw new CorruptError('fragmented message of an impossible length', { total, min: this.rx.maxPayload + 1, max: this.maxMessageSize });
      }
      a = this.assembly = { type, bytes: allocLarge(total), filled: 0 };
    } else if (type !== a.type || total !== a.bytes.length) {
      throw new CorruptError('fragment of another message', { type, total, expectedType: a.type, expectedTotal: a.bytes.length });
    }
    if (piece === 0 || piece > total - a.filled) throw new CorruptError('fragments longer than their message', { piece, filled: a.filled, total });
    a.bytes.set(memory.subarray(offset + FRAGMENT_HEADER_SIZE, offset + length), a.filled);
    a.filled += piece;
    if (a.filled < total) return;
    this.assembly = undefined;
    if (type === RECORD_BYTES) {
      this.toInbox(a.bytes);
    } else {
      this.decodeRecord(a.bytes, 0, total, type);
    }
  }

  /**
   * After a commit: once per turn of the event loop, ring the peer's doorbell if it parked. The check runs as a
   * promise reaction (a plain V8 job, cheaper than Node's queueMicrotask wrapper); a spin that starts before it
   * runs does the check itself first (spinFor), and the queued job then finds nothing left to do.
   */
  private afterCommit(): void {
    if (this.wakeScheduled) return;
    if (COUNTING) perf.microtasks++;
    this.wakeScheduled = true;
    void RESOLVED.then(this.wakeCheckJob);
  }

  private readonly wakeCheckJob = (): void => {
    if (this.wakeScheduled) this.checkPeerWake();
  };

  private readonly checkPeerWake = (): void => {
    this.wakeScheduled = false;
    if (this.state !== 'closed' && this.tx.needsWake()) this.ring(WAKE_DATA);
  };

  private ring(kind: WakeKind): void {
    if (COUNTING) perf.doorbells++;
    if (!this.peerGone) this.bell.ring(kind);
  }

  /**
   * Busy-polls `ready` for up to the spin budget. Synchronous on purpose: a round trip through the event loop
   * costs microseconds, a poll of the ring nanoseconds. The budget tunes itself under wake=adaptive: it doubles
   * when data came while spinning and halves when it did not, so an idle channel soon spins ~1 µs per park.
   */
  private spinFor(ready: () => boolean, smallReader = false): boolean {
    // A commit's ring check waits for a microtask (afterCommit); spinning here would hold it back, and a parked
    // peer would only hear of the commit after the spin: ring first.
    if (this.wakeScheduled) this.checkPeerWake();
    const budget = this.spinNs;
    if (budget <= 0) return false;
    // The peer last started a spin on the core we run on: if so, it cannot run while we spin (the scheduler left
    // both on one core, often after a doorbell woke one next to the other). The word can be stale (the peer moved
    // since), so act only once the spin has gone on for SPIN_SHARED_NS without data: move to another core (at
    // most once per MOVE_EVERY_MS in this process), or else give the peer the core after every poll. Without this
    // each half of a round trip waited for SPIN_YIELD_AFTER_NS, ~19 µs a round trip for as long as it lasted.
    // Only a reader of small records (a ping-pong) looks: a stream of large records meets on one core now and then
    // too, and yielding or moving there cost it 10-30% (bytes1M row, A/B).
    let shared = smallReader && this.peerOnMyCore();
    if (!shared) this.sharedStreak = 0;
    let yieldEach = false;
    const start = performance.now();
    for (let i = 1; ; i++) {
      if (ready()) {
        if (this.spinAuto && this.spinNs < SPIN_MAX_NS) this.spinNs *= 2;
        return true;
      }
      if (yieldEach) schedYield();
      if ((i & 31) === 0 || yieldEach) {
        const now = performance.now();
        const spentNs = (now - start) * 1e6;
        if (spentNs > budget) break;
        if (shared && spentNs > SPIN_SHARED_NS) {
          shared = false;
          // Moving costs the caches this thread had: only for a pairing that stays on one core (SHARED_STREAK spins
          // in a row), not for one that meets there now and then (a stream of large records did, ~30 times a second).
          if (++this.sharedStreak >= SHARED_STREAK && now - lastMove >= MOVE_EVERY_MS) {
            this.sharedStreak = 0;
            lastMove = now;
            yieldEach = !moveOffCpu(this.lastCpu - 1) || this.peerOnMyCore();
          } else {
            yieldEach = true;
          }
        }
        // Past a short spin, let another runnable thread have this core now and then: on a machine with more
        // runnable threads than cores that is often the peer we wait for (costs ~1 µs when nobody else runs).
        if (spentNs > SPIN_YIELD_AFTER_NS && !yieldEach) schedYield();
      }
    }
    if (this.spinAuto && this.spinNs > SPIN_MIN_NS) this.spinNs >>= 1;
    return false;
  }

  /**
   * A reader's wait within the spin budget: first lets the microtasks already queued run, looking at `ready` after
   * each of TURNS_BEFORE_SPIN turns (lookWithinTurns), then spins (spinFor). Resolves with `after(found)`, worked
   * out in the turn that saw the record (or spent the budget): the caller resumes one turn later. Awaits of async
   * functions in between would cost a turn each on the way to the record (~0.1 µs apiece; `next()` had two).
   */
  private spinThen<T>(ready: () => boolean, smallReader: boolean, after: (found: boolean) => T | Promise<T>): Promise<T> {
    // One spin at a time: a second waiter (the iterator and request/reply) takes the first one's, then looks.
    if (this.spinning) return new Promise<boolean>((settle) => (this.spinSharers ??= []).push(settle)).then(ready).then(after);
    this.spinning = true;
    const end = (found: boolean): void => {
      this.spinning = false;
      const sharers = this.spinSharers;
      if (sharers === undefined) return;
      this.spinSharers = undefined;
      for (const settle of sharers) settle(found);
    };
    return new Promise<T>((resolve, reject) => {
      const failed = (error: unknown): void => {
        end(false);
        reject(error);
      };
      lookWithinTurns(ready, (found) => {
        // The last turn's look came right before this, in the same turn: the channel is still open (spinFor
        // writes to the ring's header before its first look, and a closed channel has released its memory).
        try {
          if (!found) found = this.spinFor(ready, smallReader);
        } catch (error) {
          failed(error);
          return;
        }
        end(found);
        try {
          resolve(after(found));
        } catch (error) {
          reject(error);
        }
      }, failed);
    });
  }

  /** A spinThen wait is under way. */
  private spinning = false;
  /** Waiters sharing it (rare: the iterator and request/reply at once), told whether it found its record; made only
   * when there is one, so a lone wait allocates no promise for them. */
  private spinSharers: Array<(found: boolean) => void> | undefined;

  /** Spins in a row that began on the peer's core and found nothing for SPIN_SHARED_NS. */
  private sharedStreak = 0;
  /** 1 + the core of the last peerOnMyCore (0: unknown). */
  private lastCpu = 0;

  /**
   * Publishes the core this spin runs on (in the header of the ring we read, RING_CONSUMER_CPU_OFFSET) and
   * whether the peer's last spin started on the same one. The peer's word is a hint it may write anything into:
   * a wrong value costs us yields while spinning, nothing else.
   */
  private peerOnMyCore(): boolean {
    const cpu = currentCpu() + 1;
    this.lastCpu = cpu;
    if (cpu === 0) return false;
    const u32 = this.engine.u32;
    const mine = (this.rx.ring + RING_CONSUMER_CPU_OFFSET) >>> 2;
    if (u32[mine] !== cpu) u32[mine] = cpu;
    return u32[(this.tx.ring + RING_CONSUMER_CPU_OFFSET) >>> 2] === cpu;
  }

  /**
   * wake=adaptive, after a wait that spinning did not cover: if it ended soon enough that spinning a little longer
   * would have caught it (under SPIN_MAX_NS), spin about twice that long next time. Without this the budget only
   * shrinks once both sides of a ping-pong park (each answer then takes a kernel wakeup, longer than the budget),
   * and a busy channel would never get back to answering in microseconds.
   */
  private learnFromPark(parkedAt: number): void {
    if (!this.spinAuto) return;
    const waitedNs = (performance.now() - parkedAt) * 1e6;
    if (waitedNs < SPIN_MAX_NS) this.spinNs = Math.min(SPIN_MAX_NS, Math.max(this.spinNs, 2 * waitedNs));
  }

  /** Sleeps until rung for `kind` (or woken by peer death / close). */
  private park(kind: WakeKind): Promise<void> {
    if (COUNTING) perf.parks++;
    return new Promise<void>((resolve) => {
      if (kind === WAKE_DATA) this.readerWake = resolve;
      else this.writerWake = resolve;
      this.sleeper.wait(kind);
    });
  }

  private waitForRoom(length: number): void {
    const need = roomFor(length);
    if (need > this.wantRoom) this.wantRoom = need;
    void this.pump();
  }

  /**
   * Moves queued messages into the ring as room appears; tells the send queue once nothing waits and a refused
   * trySend/claim would fit (drained() resolves, 'drain' fires).
   */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    let idle = false;
    try {
      for (;;) {
        const empty = this.sendQueue.flush();
        if (this.failure || this.state === 'closed') break;
        // A queued message waits for exactly its room (from the refused claim), not roomFor's worst case: a
        // large record then goes in after one reader release instead of parking again for room it does not need.
        const needBytes = !empty ? this.queueNeed || roomFor(this.sendQueue.peek()!.bytes.length) : this.wantRoom;
        if (needBytes === 0 || (empty && this.roomReached(needBytes))) {
          this.wantRoom = 0;
          idle = true;
          break;
        }
        if (this.peerGone || this.tx.peerClosed()) {
          // A peer that died (no closed flag) is PEER_DEAD for every waiter, not a close: this failure is the one
          // the reader sees too.
          this.fail(this.peerGone && !this.rx.peerClosed()
            ? new PeerDeadError('peer went away without closing', { url: this.url, side: this.side, queued: this.sendQueue.length })
            : new ClosedError('peer closed the channel before queued messages were delivered', { queued: this.sendQueue.length }));
          break;
        }
        await this.waitWritable(needBytes);
      }
    } catch (error) {
      this.fail(asShmbusError(error));
    } finally {
      this.pumping = false;
    }
    if (idle) this.sendQueue.writable();
  }

  /**
   * Whether the outbound ring has `need` free bytes, or can only get them by growing (a growing ring that shrank
   * back while a refused trySend/claim waited): a retry then starts the growth.
   */
  private roomReached(need: number): boolean {
    return this.tx.free() >= need || (need > this.tx.currentCapacity && !this.tx.resizing && this.tx.currentCapacity < this.tx.capacity);
  }

  /** Waits until the outbound ring has `need` free bytes (spin a little, then park on the doorbell). */
  private async waitWritable(need: number): Promise<void> {
    const room = () => this.roomReached(need) || this.isOver() || this.peerGone;
    if (this.spinFor(room)) return;
    while (this.spinAlways) {
      await nextTurn();
      if (this.spinFor(room)) return;
    }
    const parkedAt = performance.now();
    for (;;) {
      if (this.isOver() || this.peerGone || this.tx.peerClosed()) return;
      if (this.roomReached(need) || !this.tx.park(need)) return this.learnFromPark(parkedAt);
      // Also wake now and then without a ring: a reader that wrote impossible positions and went quiet would
      // otherwise keep this writer parked forever; the look at free() below turns that into CORRUPT.
      const look = setTimeout(() => this.wakeWriter(), LOOK_WHILE_PARKED_MS);
      look.unref();
      await this.park(WAKE_SPACE);
      clearTimeout(look);
      this.sleeper.cancel(WAKE_SPACE);
      this.tx.unpark();
      if (this.roomReached(need)) return this.learnFromPark(parkedAt);
    }
  }

  // --- receiving -------------------------------------------------------------------------------------------------

  /**
   * Hands every committed inbound record to `handler` synchronously, without copying: the bytes are
   * `memory[offset … offset + length)` and valid only during the call. Returns how many records were handled
   * (0 when none are waiting). If the handler throws, the rest of the batch is still handed over, then the
   * first error is rethrown.
   */
  poll(handler: RecordHandler, max = BATCH_MAX): number {
    if (this.state === 'closed') return 0;
    let n: number;
    try {
      n = this.rx.read(max);
    } catch (error) {
      this.fail(asShmbusError(error));
      throw error;
    }
    if (n === 0) return 0;
    if (COUNTING) { perf.received += n; perf.batches++; }
    const memory = this.engine.u8;
    const u32 = this.engine.u32;
    const d = this.engine.batch >>> 2;
    let thrown: unknown;
    for (let i = 0, e = d; i < n; i++, e += 3) {
      try {
        handler(memory, u32[e]!, u32[e + 1]!, u32[e + 2]!);
      } catch (error) {
        thrown ??= error;
      }
    }
    this.rx.release();
    if (this.rx.needsWake()) this.ring(WAKE_SPACE);
    if (thrown !== undefined) throw thrown;
    return n;
  }

  /**
   * Resolves once inbound records are waiting, or when the channel can deliver no more (peer closed or gone,
   * channel closed or failed): then `poll` returns 0 and the iterator ends.
   */
  readable(): Promise<void> {
    // One waiter at a time parks; everyone else shares its promise (the iterator and request/reply may both wait).
    if (this.readablePromise) return this.readablePromise;
    // Records already there: no promise of our own. Else spin (spinThen), then park: only the parking
    // waiter keeps a shared promise, as its finally() costs several promise turns (about a round trip's worth).
    const spun = this.spun;
    this.spun = false;
    if (this.isReady()) return RESOLVED;
    return spun ? this.parkReadable() : this.spinThen(this.isReady, this.readMax !== 1, this.afterReadableSpin);
  }

  /** readable() after its wait within the spin budget: done, or park (sharing a park under way). */
  private readonly afterReadableSpin = (found: boolean): void | Promise<void> => {
    if (!found) return this.readablePromise ?? this.parkReadable();
  };

  private parkReadable(): Promise<void> {
    return (this.readablePromise = this.waitReadable().finally(() => { this.readablePromise = undefined; }));
  }

  private readonly isReady = (): boolean => this.hasInbound() || this.isOver() || this.peerGone;

  /** readable() after its first spin found nothing. */
  private async waitReadable(): Promise<void> {
    const ready = this.isReady;
    while (this.spinAlways) {
      await nextTurn();
      if (this.spinFor(ready)) return;
    }
    const parkedAt = performance.now();
    for (;;) {
      if (ready()) return this.learnFromPark(parkedAt);
      if (!this.rx.park()) return this.learnFromPark(parkedAt);
      await this.park(WAKE_DATA);
      this.sleeper.cancel(WAKE_DATA);
      this.rx.unpark();
    }
  }

  /**
   * Blocks this thread (its event loop does not run meanwhile) until a message can be taken without waiting, the
   * peer rings, or `timeoutMs` pass; true when the next next()/receive() will not park (a message is there, or
   * the channel is over or the peer closed it). For a worker with nothing else to do until its next message:
   * its wakeup is the peer's FUTEX_WAKE straight into this thread, with no event-loop turn, no wait thread and no
   * doorbell read. Only on a channel that sleeps on a futex (wake=futex, or workers/pair.ts's sync-idle worker
   * end); any other returns false at once, and so does one with messages still queued to send (they need the
   * event loop: await drained()) or with an async wait for messages under way. A peer that dies is noticed by
   * the event loop, so after `timeoutMs`.
   */
  waitSync(timeoutMs: number): boolean {
    if (this.inboxHead < this.inboxTail || this.isReady()) return true;
    // Messages waiting to be sent move only through the event loop (pump): blocking would hold them back.
    // An async wait (readable(), the iterator) is spinning or parked already: one park of the ring at a time.
    if (!this.futexRung || this.sendQueue.length > 0 || this.readablePromise !== undefined || this.spinning) return false;
    // A commit's check whether the peer must be rung waits for a microtask (afterCommit); blocking now would
    // hold it back, and a parked peer would not hear of what we just sent: ring first.
    if (this.wakeScheduled) this.checkPeerWake();
    if (!this.rx.park()) return this.isReady() || this.rx.peerClosed();
    try {
      const { offset, value } = this.rx.waitWord();
      const entry = this.syncWaiter;
      entry[0] = BigInt(value);
      entry[1] = this.engine.address(offset);
      entry[2] = BigInt(FUTEX2_SIZE_U32);
      const at = process.hrtime.bigint() + BigInt(Math.max(0, Math.round(timeoutMs * 1e6)));
      this.syncDeadline[0] = at / 1_000_000_000n;
      this.syncDeadline[1] = at % 1_000_000_000n;
      // EAGAIN (rung between the park and now), ETIMEDOUT, EINTR: all mean "look again" below.
      if (COUNTING) { perf.parks++; perf.syncWaits++; }
      futexWaitv(entry, 1, this.syncDeadline);
    } finally {
      this.rx.unpark();
    }
    return this.isReady() || this.rx.peerClosed();
  }

  /** Whether waitSync can block on this channel (it sleeps on a futex); false: waitSync returns at once. */
  get syncWaitable(): boolean {
    return this.futexRung;
  }

  /** waitSync's futex_waitv entry (value, address, flags) and absolute CLOCK_MONOTONIC deadline. */
  private readonly syncWaiter = new BigUint64Array(3);
  private readonly syncDeadline = new BigInt64Array(2);

  /** Receives the next message: a decoded value, or a Uint8Array for raw bytes. Undefined at the end. */
  async receive(): Promise<unknown> {
    const r = await this.next();
    return r.done ? undefined : r.value;
  }

  private hasInbound(): boolean {
    if (this.state === 'closed') return false;
    try {
      return this.rx.pending() !== 0;
    } catch (error) {
      this.fail(asShmbusError(error));
      return false;
    }
  }

  private isOver(): boolean {
    return this.state === 'closed' || this.failure !== undefined;
  }

  /** Set once a record of the peer's failed to decode: the rest of that batch is not handed out either (the
   * channel fails right after the batch). */
  private decodeFailed = false;

  private readonly decodeInto: RecordHandler = (memory, offset, length, type) => {
    if (this.decodeFailed) return;
    try {
      this.decodeRecord(memory, offset, length, type);
    } catch (error) {
      this.decodeFailed = true;
      throw error;
    }
  };

  private decodeRecord(memory: Uint8Array, offset: number, length: number, type: number): void {
    // Requests and replies go to Rpc, not to the inbox.
    if (type < RECORD_REQUEST || type > RECORD_REPLY_ERROR) this.inboxBytes += length;
    // Large records: read the next one alone, so each is released (and the writer may refill its room) as soon as
    // it is copied out, instead of after the whole batch: the two sides then copy at the same time.
    this.readMax = length >= this.largeRecord ? 1 : BATCH_MAX;
    if (type === RECORD_MSGPACK_RECORDS && this.assembly === undefined) {
      const batch = this.recordsBatch();
      // Read in place when the reader takes the record (host/unpack.ts) and no record before it waits for the
      // batch (a large one flushes the batch first). A small record it leaves is decoded with the records around
      // it, at the end of this read (readInbox); a large one alone, below.
      if (batch.pending === 0 || length > BATCH_RECORD) {
        if (batch.pending !== 0) batch.flush(this.intoInbox);
        const value = this.recordsFast!.decode(this.engine.bytes, offset, offset + length);
        if (value !== NOT_DECODED) {
          if (COUNTING) perf.decodes++;
          this.toInbox(value);
          return;
        }
      }
      if (length <= BATCH_RECORD) {
        if (COUNTING) perf.decodes++;
        batch.add(memory, offset, offset + length, this.intoInbox);
        return;
      }
    }
    // Anything else comes after the records before it.
    if (this.recordsIn !== undefined && this.recordsIn.pending !== 0) this.recordsIn.flush(this.intoInbox);
    if (this.assembly !== undefined && type !== RECORD_FRAGMENT) throw new CorruptError('a record inside a fragmented message', { type });
    if (type === RECORD_FRAGMENT) {
      this.takeFragment(memory, offset, length);
    } else if (type >= RECORD_REQUEST && type <= RECORD_REPLY_ERROR) {
      this.rpc.incoming(type, this.decodePlain(memory, offset, length), length);
    } else if (type === RECORD_MSGPACK_RECORDS) {
      if (COUNTING) perf.decodes++;
      this.toInbox(this.recordsBatch().decodeAlone(memory, offset, offset + length));
    } else if (type === RECORD_MSGPACK) {
      if (COUNTING) perf.decodes++;
      this.toInbox(this.decodePlain(memory, offset, length));
    } else if (type === RECORD_BYTES) {
      if (COUNTING) { perf.copies++; perf.allocs++; perf.bytesCopied += length; }
      this.toInbox(copyOut(memory, offset, length));
    } else {
      throw new CorruptError('record of an unknown type', { type });
    }
  }

  /** A plain msgpack record: read in place (host/unpack.ts), or the checked way when the reader leaves it. */
  private decodePlain(memory: Uint8Array, offset: number, length: number): unknown {
    const value = (this.plainIn ??= plainRecordDecoder(this.decodeLimits)).decode(this.engine.bytes, offset, offset + length);
    return value !== NOT_DECODED ? value : decodeMsgpackAt(this.unpackr, memory, offset, offset + length, this.decodeLimits);
  }

  private recordsBatch(): RecordBatch {
    if (this.recordsIn === undefined) {
      const { unpackr, structures } = recordUnpackr();
      this.recordsIn = new RecordBatch(unpackr, structures, this.decodeLimits);
      this.recordsFast = new RecordDecoder(sharedStructures(unpackr), structures, this.decodeLimits);
    }
    return this.recordsIn;
  }

  /** How many records the iterator reads at a time (see decodeRecord). */
  private readMax = BATCH_MAX;
  /** A record this large (a sixteenth of the ring) is read on its own. */
  private readonly largeRecord: number;

  /**
   * The iterator's next(). Records already decoded into the inbox (a whole batch is decoded per read) are handed
   * out from here without entering an async function: a plain resolved promise is the only cost per record.
   */
  private next(): Promise<IteratorResult<unknown>> {
    if (COUNTING) perf.promises++;
    if (this.inboxHead < this.inboxTail) return Promise.resolve(this.takeInbox());
    // Nothing decoded: read the ring now, and else wait for a record within the spin budget (nextAfterSpin: a
    // few microtask turns, then the spin). Anything unusual goes the slow way.
    if (this.canReadNow() && performance.now() - this.lastYield <= YIELD_MS) {
      if (this.pollInbox()) return Promise.resolve(this.takeInbox());
      return this.nextAfterSpin();
    }
    return this.nextSlow();
  }

  /** Whether next() may read the ring itself (else nextSlow handles what is unusual). */
  private canReadNow(): boolean {
    return this.state === 'open' && this.failure === undefined && this.readablePromise === undefined && !this.peerGone;
  }

  /** next() found nothing: waits for a record within the spin budget (spinThen), then hands it out (or nextSlow). */
  private nextAfterSpin(): Promise<IteratorResult<unknown>> {
    return this.spinThen(this.nextReady, this.readMax !== 1, this.afterNextSpin);
  }

  /** What next() hands out once its wait within the spin budget `found` a record (or not). */
  private readonly afterNextSpin = (found: boolean): IteratorResult<unknown> | Promise<IteratorResult<unknown>> => {
    if (found) {
      if (this.inboxHead < this.inboxTail) return this.takeInbox();
      if (this.canReadNow() && this.pollInbox()) return this.takeInbox();
    } else {
      // The budget is spent: nextSlow's first wait parks instead of spinning a second time.
      this.spun = true;
    }
    return this.nextSlow();
  };

  /** What ends nextAfterSpin's wait: a record (read by us or by request/reply), or something for nextSlow. */
  private readonly nextReady = (): boolean => this.inboxHead < this.inboxTail || !this.canReadNow() || this.isReady();

  /** Set by next() after a spin that found nothing: the readable() right after it skips its own spin. */
  private spun = false;

  /**
   * Reads up to `max` records into the inbox: `poll` with decodeInto, then the batch of small records it collected
   * (also when a record after them failed: what came before a failure is delivered).
   */
  private readInbox(max: number = BATCH_MAX): number {
    if (this.inboxHead === this.inboxTail) this.inboxBytes = 0;
    let n: number;
    try {
      n = this.poll(this.decodeInto, max);
    } finally {
      if (this.recordsIn !== undefined && this.recordsIn.pending !== 0) this.recordsIn.flush(this.intoInbox);
    }
    return n;
  }

  /** next()'s poll: whether a record is now decoded in the inbox. A failure fails the channel (nextSlow reports it
   * after handing out what was decoded before it). */
  private pollInbox(): boolean {
    try {
      this.readInbox(this.readMax);
    } catch (error) {
      this.fail(asShmbusError(error));
    }
    return this.inboxHead < this.inboxTail;
  }

  /** readForRpc waits no longer: the inbox emptied, or the channel ended (it then settles what is pending). */
  private wakeInboxSpace(): void {
    const space = this.inboxSpace;
    this.inboxSpace = undefined;
    space?.();
  }

  private toInbox(value: unknown): void {
    this.inbox[this.inboxTail++] = value;
  }

  private takeInbox(): IteratorResult<unknown> {
    const value = this.inbox[this.inboxHead];
    this.inbox[this.inboxHead++] = undefined;
    if (this.inboxHead === this.inboxTail) {
      // A long backlog (request/reply reads ahead up to INBOX_LIMIT) does not keep its array.
      if (this.inboxTail > BATCH_MAX) this.inbox.length = 0;
      this.inboxHead = this.inboxTail = 0;
      this.wakeInboxSpace();
    }
    return { value, done: false };
  }

  private async nextSlow(): Promise<IteratorResult<unknown>> {
    for (;;) {
      if (this.inboxHead < this.inboxTail) return this.takeInbox();
      if (this.state === 'closed') {
        if (this.failure) throw this.failure;
        return { value: undefined, done: true };
      }
      // Values resolve as microtasks; a channel that never runs dry would starve timers and I/O without this.
      const now = performance.now();
      if (now - this.lastYield > YIELD_MS) {
        await nextTurn();
        this.lastYield = performance.now();
        continue;
      }
      let n: number;
      try {
        n = this.readInbox(this.readMax);
      } catch (error) {
        const failure = asShmbusError(error);
        this.fail(failure);
        if (this.inboxHead < this.inboxTail) continue;
        throw failure;
      }
      if (n > 0) {
        this.spun = false;
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.peerGone || this.rx.peerClosed()) {
        // Everything the peer committed has been read (pending was 0 after its close flag): the end.
        if (this.rx.pending() !== 0) continue;
        const dead = this.peerGone && !this.rx.peerClosed();
        const error = dead ? new PeerDeadError('peer went away without closing', { url: this.url, side: this.side }) : undefined;
        await this.finish(error);
        if (error) throw error;
        return { value: undefined, done: true };
      }
      await this.readable();
    }
  }

  /**
   * Reads while request/reply needs it (replies awaited, or a handler serving), even if nobody iterates: other
   * messages wait in the inbox for the iterator, up to INBOX_LIMIT messages and INBOX_BYTES_LIMIT bytes; past them,
   * replies behind those messages wait until the iterator takes them (as a paused socket's would).
   */
  private async readForRpc(): Promise<void> {
    if (this.rpcReading) return;
    this.rpcReading = true;
    try {
      while (this.rpc.active && this.state !== 'closed' && !this.failure) {
        // A peer that is gone or closed left a finite ring: reading all of it reaches the replies in it.
        const more = !this.peerGone && !this.rx.peerClosed();
        if (more && (this.inboxTail - this.inboxHead >= INBOX_LIMIT || (this.inboxBytes >= INBOX_BYTES_LIMIT && this.inboxHead < this.inboxTail))) {
          await new Promise<void>((resolve) => { this.inboxSpace = resolve; });
          continue;
        }
        if (this.readInbox() > 0) continue;
        if (this.peerGone || this.rx.peerClosed()) {
          if (this.rx.pending() !== 0) continue;
          this.rpc.end(this.peerGone && !this.rx.peerClosed()
            ? new PeerDeadError('peer went away without replying', { url: this.url })
            : new ClosedError('peer closed the channel', { url: this.url }));
          break;
        }
        // A handler's promise still to settle may wait for I/O, which a spin would hold back: park at once (the
        // microtask turns before a spin only cover a reply that settles within a few turns).
        if (this.rpc.answersPending) this.spun = true;
        await this.readable();
      }
    } catch (error) {
      this.fail(asShmbusError(error));
    } finally {
      this.rpcReading = false;
    }
  }

  /** The receive side `on('message')` dispatches from (transports/dispatch.ts). */
  private source: MessageSource | undefined;
  /** What `on('message')` dispatches from (made with the first 'message' listener). */
  private messageSource(): MessageSource {
    return (this.source ??= {
      listenerCount: (event) => this.listenerCount(event),
      emit: (event, value) => this.emit(event, value),
      hasReceived: () => this.inboxHead < this.inboxTail,
      takeReceived: () => this.takeInbox().value,
      next: () => this.next(),
      putBack: (value) => {
        if (this.inboxHead > 0) this.inbox[--this.inboxHead] = value;
        else { this.inbox.unshift(value); this.inboxTail++; }
      },
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<unknown> {
    return {
      next: () => this.next(),
      return: async () => ({ value: undefined, done: true }),
    };
  }

  // --- doorbells, peer death, closing ----------------------------------------------------------------------------

  private onDoorbells(bytes: Buffer): void {
    if (this.verdict !== undefined) {
      const rest = this.readVerdict(bytes);
      if (rest === undefined) return;
      bytes = rest;
    }
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i];
      if (b === DOORBELL_DATA) this.wakeReader();
      else if (b === DOORBELL_SPACE) this.wakeWriter();
      else {
        this.fail(new CorruptError('unexpected byte on the control connection', { byte: b }));
        return;
      }
    }
  }

  /**
   * Takes the listener's verdict line from the first bytes on the control socket (ChannelParts.verdict): returns
   * the bytes after it (doorbells), or undefined while the line is incomplete or when the verdict ended the channel.
   */
  private readVerdict(bytes: Buffer): Buffer | undefined {
    const buffered = this.verdictBytes ? Buffer.concat([this.verdictBytes, bytes]) : bytes;
    let line: { value: Record<string, unknown>; used: number } | undefined;
    try {
      line = parseLine(buffered);
    } catch (error) {
      this.verdictFailed(asShmbusError(error));
      return undefined;
    }
    if (line === undefined) {
      this.verdictBytes = buffered;
      return undefined;
    }
    const verdict = this.verdict!;
    let bell: Bell;
    try {
      const wake = verdict.accept(line.value);
      bell = wake.peer!.bell({ engine: this.engine, tx: this.tx, rx: this.rx, socket: this.socket, params: wake.peerParams!, peer: wake.peerCred });
    } catch (error) {
      this.verdictFailed(asShmbusError(error));
      return undefined;
    }
    this.endVerdict();
    const held = this.bell as HeldRings;
    this.bell = bell;
    if (!this.peerGone && this.state !== 'closed') held.replay(bell);
    return buffered.subarray(line.used);
  }

  private endVerdict(): void {
    this.verdict = undefined;
    this.verdictBytes = undefined;
    clearTimeout(this.verdictTimer);
  }

  /** The listener's verdict is a refusal, or never came: the channel ends with `error`. */
  private verdictFailed(error: ShmbusError): void {
    const verdict = this.verdict;
    if (verdict === undefined) return;
    this.endVerdict();
    verdict.failed();
    this.fail(error);
  }

  private wakeReader(): void {
    const wake = this.readerWake;
    this.readerWake = undefined;
    wake?.();
  }

  private wakeWriter(): void {
    const wake = this.writerWake;
    this.writerWake = undefined;
    wake?.();
  }

  private onPeerGone(): void {
    this.peerGone = true;
    this.wakeInboxSpace();
    if (this.verdict !== undefined) this.verdictFailed(new HandshakeError('the listener closed the connection without accepting it', { details: { url: this.url } }));
    this.wakeReader();
    this.wakeWriter();
    if (this.state === 'closing' || this.state === 'closed') return;
    if (!this.rx.peerClosed()) {
      // Crash or kill: what was committed is still readable through our mapping. Report it to listeners now;
      // the iterator delivers what is left, then throws.
      const error = new PeerDeadError('peer went away without closing', { url: this.url, side: this.side });
      if (trace.enabled) trace('%s (%s): %s', this.url, this.side, traceError(error));
      if (this.sendQueue.length > 0) this.sendQueue.end(error, false);
      if (this.listenerCount('error') > 0) this.emit('error', error);
    }
    if (!this.sendQueue.idle) void this.pump();
  }

  /** Ends the channel with an error: reported to waiters, to 'error' listeners, and to later calls. */
  private fail(error: ShmbusError): void {
    if (this.failure || this.state === 'closed') return;
    if (trace.enabled) trace('%s (%s): ended: %s', this.url, this.side, traceError(error));
    this.failure = error;
    this.sendQueue.end(error, false);
    this.wakeReader();
    this.wakeWriter();
    this.wakeInboxSpace();
    if (this.listenerCount('error') > 0) this.emit('error', error);
    void this.finish(error);
  }

  /**
   * Closes the channel: waits until every queued message is in the ring (the peer can read what is in the ring
   * even after we are gone), marks both rings closed, tells the peer and unmaps. Resolves when done; the peer's
   * iterator ends after it has read everything. Idempotent.
   */
  close(): Promise<void> {
    if (this.closePromise) return this.closePromise;
    this.closePromise = (async () => {
      if (this.state === 'open') this.state = 'closing';
      if (this.openClaim !== 0) { this.openClaim = 0; this.tx.abort(); }
      if (this.sendQueue.length > 0 && !this.failure) {
        try {
          // pump() ends early when the peer is gone; drained() then rejects, and we close anyway.
          void this.pump();
          await this.drained();
        } catch {
          /* the reason was already reported to drain waiters and 'error' listeners */
        }
      }
      await this.finish(undefined);
    })();
    return this.closePromise;
  }

  /**
   * Closes now, delivering nothing more: messages still in the local queue are given up (drained() rejects with
   * ERR_SHMBUS_CLOSED) instead of waiting for the peer to make room; what is in the ring stays readable for the
   * peer, whose iterator then ends. A close() under way ends with it.
   */
  destroy(): Promise<void> {
    const done = this.finish(undefined);
    this.closePromise ??= done;
    return done;
  }

  private finish(error: ShmbusError | undefined): Promise<void> {
    this.finished ??= this.release(error);
    return this.finished;
  }

  private async release(error: ShmbusError | undefined): Promise<void> {
    this.state = 'closed';
    if (error && !this.failure) this.failure = error;
    this.rpc.end(this.failure ?? (() => new ClosedError('channel closed', { url: this.url })));
    const openClaim = this.openClaim;
    this.openClaim = 0;
    if (openClaim !== 0) this.tx.abort();
    this.tx.markClosed();
    this.rx.markClosed();
    this.wakeReader();
    this.wakeWriter();
    this.wakeInboxSpace();
    if (!this.sendQueue.idle) {
      const reason = this.failure ?? new ClosedError('channel closed before queued messages were delivered', { queued: this.sendQueue.length });
      this.sendQueue.end(reason, true);
      this.wantRoom = 0;
    }
    if (!this.socket.destroyed) {
      // A last doorbell so a parked peer wakes up and sees the closed flags, then end-of-file.
      this.socket.end(DATA_BYTE);
      this.socket.destroySoon?.();
    }
    this.endVerdict();
    this.sleeper.close();
    this.bell.close();
    try {
      this.mapped.unmap();
    } finally {
      this.tx.dispose();
      this.rx.dispose();
    }
    await this.socketClosed();
    this.emit('close');
  }

  /**
   * Waits until the control socket is fully closed (the peer answers our end-of-file with its own at once), so
   * that nothing of the channel is open once close() resolves. A peer that does not answer within a second is cut.
   */
  private socketClosed(): Promise<void> {
    const socket = this.socket;
    if (socket.closed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => socket.destroy(), 1000);
      socket.once('close', () => { clearTimeout(timer); resolve(); });
    });
  }
}

/** Rings asked for before the listener's verdict (ChannelParts.verdict), done once it is known how to ring it. A
 * ring only says "look at the ring", so one of each kind stands for all. */
class HeldRings implements Bell {
  private readonly held = [false, false];
  ring(kind: WakeKind): void {
    this.held[kind] = true;
  }
  replay(bell: Bell): void {
    if (this.held[WAKE_DATA]) bell.ring(WAKE_DATA);
    if (this.held[WAKE_SPACE]) bell.ring(WAKE_SPACE);
  }
  close(): void {}
}

function putU32(memory: Uint8Array, at: number, value: number): void {
  memory[at] = value & 0xff; memory[at + 1] = (value >>> 8) & 0xff; memory[at + 2] = (value >>> 16) & 0xff; memory[at + 3] = value >>> 24;
}

function getU32(memory: Uint8Array, at: number): number {
  return (memory[at]! | (memory[at + 1]! << 8) | (memory[at + 2]! << 16) | (memory[at + 3]! << 24)) >>> 0;
}

function asShmbusError(error: unknown): ShmbusError {
  if (error instanceof ShmbusError) return error;
  return new ShmbusError('ERR_SHMBUS_SYSCALL', error instanceof Error ? error.message : String(error), { cause: error });
}
