/**
 * Messages over message queues (mq:, sysvmq:): packing small messages into one kernel message, splitting large
 * ones over several, and putting them back together (PacketWriter, Reassembler), and the connection logic both
 * queue transports share on top of that (QueueConnection, at the end). Used by transports/mq.ts and
 * transports/sysvmq.ts.
 *
 * A kernel message ("packet", at most the queue's message size: mq_msgsize, or msgmax for System V) holds one or
 * more records back to back. Each record is a 16-byte header and a chunk of one message:
 *
 *   offset 0  u8   kind    1 WHOLE (a message in one record), 2 FIRST, 3 MIDDLE, 4 LAST (fragments of one
 *                          message, in this order), 5 END (orderly close: nothing follows)
 *          1  u8   flags   0 (reserved)
 *          2  u16  type    the message type (RECORD_BYTES, RECORD_MSGPACK); the same on every fragment
 *          4  u32  seq     fragment index: 0 for WHOLE and FIRST, then 1, 2, … up to the LAST
 *          8  u32  length  bytes of the chunk that follows the header
 *         12  u32  total   bytes of the whole message (equal to length for WHOLE)
 *   all little-endian; records are not padded.
 *
 * Why pack: queues are shallow (msg_max 10 messages, msgmnb 16 KiB by default) and every kernel message costs a
 * system call on both sides and often a thread wakeup. Packing the small messages sent in one turn of the event
 * loop into one packet makes 64-byte messages cost a fraction of a system call each.
 *
 * Why split: a message may be up to the connection's maxMessageSize (16 MiB by default, at least 1 MiB), far
 * beyond any queue's message size. A fragmented message starts in the current packet when at least
 * MIN_SHARED_FIRST bytes of it fit there, fills whole packets, and its LAST chunk may share a packet with the
 * messages after it.
 *
 * Never half-sent. `PacketWriter.write` either takes a whole message or nothing: while earlier packets still wait
 * for room in the kernel (the backlog), it refuses (false). Once it takes a message, every fragment is either in
 * the kernel or in the backlog, which is flushed in order as the queue makes room. So the memory a connection
 * holds beyond the base class's queue is bounded by one message plus one packet.
 *
 * A reader treats packets as untrusted: `Reassembler` checks every header (lengths inside the packet, kinds in
 * order, seq consecutive, type and total the same on every fragment, total within maxMessageSize, chunks adding
 * up exactly) and throws ERR_SHMBUS_CORRUPT on the first violation. It never reads outside the packet.
 */
import { BadArgumentError, ClosedError, CorruptError, ErrorCode, PeerDeadError, type ShmbusError } from '../host/errors.js';
import { watchProcess } from '../host/blocking.js';
import { isProcessAlive } from '../host/sys/proc.js';
import { FramedConnection, asShmbusError } from './base.js';

export const RECORD_HEADER = 16;
export const KIND_WHOLE = 1;
export const KIND_FIRST = 2;
export const KIND_MIDDLE = 3;
export const KIND_LAST = 4;
export const KIND_END = 5;
/** Smallest packet a connection may use: a header and some payload. */
export const MIN_PACKET = 64;
/** A first fragment starts in a partly used packet only if it gets at least this many bytes of it; otherwise
 * the packet goes out as it is and the fragment starts a new one (fewer, fuller packets). */
export const MIN_SHARED_FIRST = 1024;

/** Hands one packet (`buf[headroom … headroom + length)`) to the kernel: true = taken, false = the queue is full. */
export type SendPacket = (buf: Uint8Array, length: number) => boolean;

function putHeader(buf: Uint8Array, at: number, kind: number, type: number, seq: number, length: number, total: number): void {
  buf[at] = kind;
  buf[at + 1] = 0;
  buf[at + 2] = type & 0xff;
  buf[at + 3] = (type >>> 8) & 0xff;
  buf[at + 4] = seq & 0xff; buf[at + 5] = (seq >>> 8) & 0xff; buf[at + 6] = (seq >>> 16) & 0xff; buf[at + 7] = (seq >>> 24) & 0xff;
  buf[at + 8] = length & 0xff; buf[at + 9] = (length >>> 8) & 0xff; buf[at + 10] = (length >>> 16) & 0xff; buf[at + 11] = (length >>> 24) & 0xff;
  buf[at + 12] = total & 0xff; buf[at + 13] = (total >>> 8) & 0xff; buf[at + 14] = (total >>> 16) & 0xff; buf[at + 15] = (total >>> 24) & 0xff;
}

const u32 = (b: Uint8Array, at: number) => (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;

interface Pending { buf: Uint8Array; length: number }

/**
 * Turns messages into packets for one direction of a connection and hands them to the kernel in order.
 *
 * Packets carry `headroom` bytes in front of the payload for the caller's use (the 8-byte mtype of a System V
 * message), so a packet is sent from the buffer it was built in.
 */
export class PacketWriter {
  readonly packetSize: number;
  readonly headroom: number;
  private readonly send: SendPacket;
  /** The packet being filled; `used` payload bytes of it are taken. */
  private open: Uint8Array;
  private used = 0;
  /** Sealed packets the kernel has not taken yet, oldest first. */
  private readonly backlog: Pending[] = [];
  private backlogHead = 0;
  /** Packets the kernel took since the last `takeSent()`. */
  private sent = 0;

  constructor(packetSize: number, headroom: number, send: SendPacket) {
    if (!Number.isInteger(packetSize) || packetSize < MIN_PACKET) throw new BadArgumentError('packet size too small', { packetSize, min: MIN_PACKET });
    this.packetSize = packetSize;
    this.headroom = headroom;
    this.send = send;
    this.open = new Uint8Array(headroom + packetSize);
  }

  /** Sealed packets wait for room in the kernel: write() refuses until flush() has sent them. */
  get blocked(): boolean {
    return this.backlogHead < this.backlog.length;
  }

  /** Nothing is waiting: no sealed packet, and the open packet is empty. */
  get idle(): boolean {
    return !this.blocked && this.used === 0;
  }

  /** Bytes waiting here (backlog and the open packet), for tests and diagnostics. */
  get pendingBytes(): number {
    let n = this.used;
    for (let i = this.backlogHead; i < this.backlog.length; i++) n += this.backlog[i]!.length;
    return n;
  }

  /** How many packets the kernel took since the last call (a sender rings the peer's doorbell if any). */
  takeSent(): number {
    const n = this.sent;
    this.sent = 0;
    return n;
  }

  /**
   * Takes one whole message (true), or nothing while the backlog is not empty (false). Full packets are handed to
   * the kernel at once; the last, partly filled one waits for more messages or for flush().
   */
  write(type: number, bytes: Uint8Array): boolean {
    if (this.blocked) return false;
    const length = bytes.length;
    const size = this.packetSize;
    if (RECORD_HEADER + length <= size - this.used) {
      this.put(KIND_WHOLE, type, 0, bytes, 0, length, length);
      return true;
    }
    if (RECORD_HEADER + length <= size) {
      this.seal();
      this.put(KIND_WHOLE, type, 0, bytes, 0, length, length);
      return true;
    }
    if (size - this.used - RECORD_HEADER < MIN_SHARED_FIRST) this.seal();
    let offset = size - this.used - RECORD_HEADER;
    this.put(KIND_FIRST, type, 0, bytes, 0, offset, length);
    this.seal();
    let seq = 1;
    const full = size - RECORD_HEADER;
    while (length - offset > full) {
      this.put(KIND_MIDDLE, type, seq++, bytes, offset, full, length);
      offset += full;
      this.seal();
    }
    this.put(KIND_LAST, type, seq, bytes, offset, length - offset, length);
    return true;
  }

  /** Appends the END record behind everything written so far (also while blocked: the open packet is behind the
   * backlog anyway). */
  writeEnd(): void {
    if (this.packetSize - this.used < RECORD_HEADER) this.seal();
    putHeader(this.open, this.headroom + this.used, KIND_END, 0, 0, 0, 0);
    this.used += RECORD_HEADER;
  }

  /**
   * Hands the backlog and then the open packet to the kernel, as far as it takes them. True when nothing is left
   * here; false when the kernel is full (wait for room, then flush again).
   */
  flush(): boolean {
    while (this.backlogHead < this.backlog.length) {
      const p = this.backlog[this.backlogHead]!;
      if (!this.send(p.buf, p.length)) return false;
      this.sent++;
      this.backlog[this.backlogHead++] = undefined as unknown as Pending;
    }
    this.backlog.length = 0;
    this.backlogHead = 0;
    if (this.used === 0) return true;
    this.seal();
    return !this.blocked;
  }

  /** Forgets everything not yet sent (the connection is over). */
  discard(): void {
    this.backlog.length = 0;
    this.backlogHead = 0;
    this.used = 0;
  }

  private put(kind: number, type: number, seq: number, bytes: Uint8Array, from: number, length: number, total: number): void {
    const at = this.headroom + this.used;
    putHeader(this.open, at, kind, type, seq, length, total);
    if (length > 0) this.open.set(length === bytes.length ? bytes : bytes.subarray(from, from + length), at + RECORD_HEADER);
    this.used += RECORD_HEADER + length;
  }

  /** Ends the open packet: to the kernel if nothing waits before it and it has room, else to the backlog. */
  private seal(): void {
    if (this.used === 0) return;
    if (!this.blocked && this.send(this.open, this.used)) {
      // The kernel copied it: the buffer is free again.
      this.sent++;
      this.used = 0;
      return;
    }
    this.backlog.push({ buf: this.open, length: this.used });
    this.open = new Uint8Array(this.headroom + this.packetSize);
    this.used = 0;
  }
}

export interface ReassemblerSink {
  /** One complete message. `owned`: `bytes` is a fresh buffer; otherwise a view valid during the call. */
  message(type: number, bytes: Uint8Array, owned: boolean): void;
  /** The END record: the peer closed in order. */
  end(): void;
}

/** Puts messages back together from the packets of one direction, in order, checking everything. */
export class Reassembler {
  private readonly maxMessageSize: number;
  private partial: Uint8Array | undefined;
  private have = 0;
  private type = 0;
  private nextSeq = 0;
  /** Set after END: any later record is corrupt. */
  private done = false;

  constructor(maxMessageSize: number) {
    this.maxMessageSize = maxMessageSize;
  }

  /** True while a fragmented message has begun but not completed. */
  get midMessage(): boolean {
    return this.partial !== undefined;
  }

  /** Parses one packet. Throws CorruptError (and stays failed: the caller ends the connection). */
  push(packet: Uint8Array, sink: ReassemblerSink): void {
    const n = packet.length;
    if (n === 0) throw new CorruptError('empty packet');
    let pos = 0;
    while (pos < n) {
      if (this.done) throw new CorruptError('data after the end of the stream', { offset: pos });
      if (n - pos < RECORD_HEADER) throw new CorruptError('record header cut off by the end of the packet', { offset: pos, packet: n });
      const kind = packet[pos]!;
      const flags = packet[pos + 1]!;
      const type = packet[pos + 2]! | (packet[pos + 3]! << 8);
      const seq = u32(packet, pos + 4);
      const length = u32(packet, pos + 8);
      const total = u32(packet, pos + 12);
      const body = pos + RECORD_HEADER;
      if (flags !== 0) throw new CorruptError('record with unknown flags', { flags, offset: pos });
      if (length > n - body) throw new CorruptError('record longer than its packet', { length, room: n - body, offset: pos });
      const chunk = packet.subarray(body, body + length);
      pos = body + length;
      switch (kind) {
        case KIND_WHOLE:
          this.expectNoPartial(kind);
          if (seq !== 0 || total !== length) throw new CorruptError('whole record with a fragment\'s seq or total', { seq, length, total });
          if (total > this.maxMessageSize) throw new CorruptError('message longer than the largest message', { total, max: this.maxMessageSize });
          sink.message(type, chunk, false);
          break;
        case KIND_FIRST:
          this.expectNoPartial(kind);
          if (seq !== 0) throw new CorruptError('first fragment with seq other than 0', { seq });
          if (total > this.maxMessageSize) throw new CorruptError('message longer than the largest message', { total, max: this.maxMessageSize });
          if (length === 0 || length >= total) throw new CorruptError('first fragment is empty or the whole message', { length, total });
          this.partial = new Uint8Array(total);
          this.partial.set(chunk, 0);
          this.have = length;
          this.type = type;
          this.nextSeq = 1;
          break;
        case KIND_MIDDLE:
        case KIND_LAST: {
          const partial = this.partial;
          if (!partial) throw new CorruptError('fragment without a first fragment', { kind, seq });
          if (seq !== this.nextSeq) throw new CorruptError('fragment out of sequence', { expected: this.nextSeq, seq });
          if (type !== this.type || total !== partial.length) {
            throw new CorruptError('fragment of another message', { type, expectedType: this.type, total, expectedTotal: partial.length });
          }
          if (length === 0) throw new CorruptError('empty fragment', { seq });
          if (this.have + length > total) throw new CorruptError('fragments overrun the message', { have: this.have, length, total });
          partial.set(chunk, this.have);
          this.have += length;
          this.nextSeq = (this.nextSeq + 1) >>> 0;
          if (kind === KIND_LAST) {
            if (this.have !== total) throw new CorruptError('last fragment leaves the message short', { have: this.have, total });
            this.partial = undefined;
            this.have = 0;
            sink.message(type, partial, true);
          } else if (this.have === total) {
            throw new CorruptError('middle fragment completes the message', { seq, total });
          }
          break;
        }
        case KIND_END:
          this.expectNoPartial(kind);
          if (length !== 0) throw new CorruptError('end record with a payload', { length });
          this.done = true;
          sink.end();
          break;
        default:
          throw new CorruptError('record of an unknown kind', { kind, offset: pos - length - RECORD_HEADER });
      }
    }
  }

  private expectNoPartial(kind: number): void {
    if (this.partial) {
      throw new CorruptError('fragmented message interrupted', { kind, have: this.have, total: this.partial.length, expectedSeq: this.nextSeq });
    }
  }
}

// ------------------------------------------------------------------------------------------------ connections

/** Packets one read pass takes before it yields to the event loop (timers and I/O must not starve). */
const READ_BUDGET = 64;
/** After a send finds the peer's queue removed, how long the peer's END or death gets to show up. */
const VERDICT_MS = 1000;
/** How long a destroyed (or failed) connection keeps trying to hand the peer its END (QueueConnection.lingerForEnd). */
const END_LINGER_MS = 30_000;

export interface QueueConnectionOptions {
  url: string;
  maxQueued: number;
  maxMessageSize: number;
  /** Payload bytes of one outbound packet (the peer queue's message size). */
  packetSize: number;
  /** Bytes in front of an outbound packet's payload (System V: the mtype). */
  txHeadroom: number;
  /** Longest inbound packet, and the bytes in front of its payload in the receive buffer. */
  receiveSize: number;
  rxHeadroom: number;
  /** The peer process, watched for death (start time against pid reuse). */
  peerPid: number;
  peerStart: bigint | undefined;
  /** 'listener' or 'connector', for messages. */
  side: string;
}

/**
 * What mq: and sysvmq: connections share on top of FramedConnection: packing and splitting (PacketWriter),
 * reassembly, the read loop with back-pressure, peer death by process liveness, and the orderly close (END, then
 * drain until the peer has our messages). A subclass supplies the queue operations and how it waits for them.
 */
export abstract class QueueConnection extends FramedConnection {
  protected readonly side: string;
  private readonly writer: PacketWriter;
  private readonly reassembler: Reassembler;
  private readonly rxBuf: Uint8Array;
  private readonly rxHeadroom: number;
  protected readonly peerPid: number;
  protected readonly peerStart: bigint | undefined;
  private readPaused = false;
  private readScheduled = false;
  private flushScheduled = false;
  /** waitWritable() was called and its answer (onRoom) has not come yet. */
  private waitingRoom = false;
  /** The END record arrived. */
  protected endSeen = false;
  /** The peer process is gone (liveness check). */
  protected peerGone = false;
  /** Sending failed for good (the peer's queue is gone); what it means is decided by END or liveness. */
  private outputBroken = false;
  /** closeTransport has begun: keep reading (and dropping) so a peer flushing to us can make progress. */
  private closing = false;
  private released = false;
  private verdictTimer: NodeJS.Timeout | undefined;
  private roomWaiters: (() => void)[] = [];
  private readonly unwatch: () => void;

  constructor(opts: QueueConnectionOptions) {
    super({ url: opts.url, maxQueued: opts.maxQueued, maxMessageSize: opts.maxMessageSize });
    this.side = opts.side;
    this.writer = new PacketWriter(opts.packetSize, opts.txHeadroom, (buf, length) => this.sendPacket(buf, length));
    this.reassembler = new Reassembler(opts.maxMessageSize);
    this.rxHeadroom = opts.rxHeadroom;
    this.rxBuf = new Uint8Array(opts.rxHeadroom + opts.receiveSize);
    this.peerPid = opts.peerPid;
    this.peerStart = opts.peerStart;
    this.unwatch = watchProcess(opts.peerPid, opts.peerStart, this.onPeerGone);
  }

  // --- what a subclass provides ----------------------------------------------------------------------------------

  /** Hands `buf[txHeadroom … txHeadroom + length)` to the peer's queue: false = full. Throws when it cannot. */
  protected abstract sendPacket(buf: Uint8Array, length: number): boolean;
  /** Takes one packet from our queue into `buf` (payload after rxHeadroom): its length, or -1 when empty. */
  protected abstract receivePacket(buf: Uint8Array): number;
  /** Our queue said empty: call onReadable() once something arrives. */
  protected abstract waitReadable(): void;
  /** The peer's queue said full: call onRoom() once it may have room. */
  protected abstract waitWritable(): void;
  /** `packets` went into the peer's queue since the last call (System V rings the peer's doorbell). */
  protected abstract afterSend(packets: number): void;
  /** A read pass ended having taken `removed` packets; `emptied`: it stopped because the queue was empty. */
  protected abstract afterReceive(removed: number, emptied: boolean): void;
  /** The peer died: remove what it owned and can no longer remove (System V queues). */
  protected abstract reapPeer(): void;
  /** Close descriptors, remove what we own. Called once. */
  protected abstract release(): void;
  /** The connection only lingers for its END now (lingerForEnd): whatever it waits on must not keep the process
   * alive any more (the peer learns of our end from our death anyway). */
  protected abstract letProcessGo(): void;

  // --- what a subclass calls -------------------------------------------------------------------------------------

  /** Our queue has packets (or may have): read them. */
  protected onReadable(): void {
    this.readLoop();
  }

  /**
   * Reads what arrived before the connection existed, on a later turn: the code that made the connection
   * (`await connect()`, a 'connection' listener) runs first and can attach handlers before the first delivery,
   * as with a socket, whose first 'data' event also comes later.
   */
  protected startReading(): void {
    this.scheduleRead();
  }

  /** The peer's queue may have room: send what waits. */
  protected onRoom(): void {
    this.waitingRoom = false;
    this.flushNow();
  }

  /** The receive thread failed, or the queue vanished: nothing more can happen on this connection. */
  protected onTransportError(error: ShmbusError): void {
    this.fail(error);
    this.wakeRoomWaiters();
  }

  // --- FramedConnection hooks ------------------------------------------------------------------------------------

  protected writeFrame(type: number, bytes: Uint8Array): boolean {
    // A dead or gone peer: refuse (the message waits in the base queue, and peerDied/verdict reject it).
    if (this.peerGone || this.outputBroken || this.released) return false;
    let taken: boolean;
    try {
      taken = this.writer.write(type, bytes);
    } catch (error) {
      this.outputFailed(error);
      return false;
    }
    if (!taken || this.writer.blocked) this.blockedOnKernel();
    else this.scheduleFlush();
    return taken;
  }

  protected pauseReading(): void {
    this.readPaused = true;
  }

  protected resumeReading(): void {
    this.readPaused = false;
    this.scheduleRead();
  }

  protected async closeTransport(): Promise<void> {
    this.closing = true;
    clearTimeout(this.verdictTimer);
    // A peer killed a moment ago (its death not reported yet) still has to be reaped: after we are gone, only
    // the orphan watch of the subclass (if any) would.
    if (!this.peerGone && !isProcessAlive(this.peerPid, this.peerStart)) {
      this.peerGone = true;
      try { this.reapPeer(); } catch { /* reaped already */ }
    }
    if (!this.released && !this.peerGone && !this.endSeen && !this.outputBroken) {
      try {
        this.writer.writeEnd();
        // Keep draining our queue while we wait for room: a peer closing at the same time waits for us.
        this.scheduleRead();
        for (;;) {
          const done = this.writer.flush();
          this.kick();
          // A peer that sent its END reads nothing more: what is still here cannot be delivered.
          if (done || this.peerGone || this.outputBroken || this.released || this.endSeen) break;
          // After destroy() or a failure nothing waits for the END: a peer that broke the protocol and never reads
          // would otherwise hold this close until it exits. It is tried on in the background, except for a peer
          // that sent what we could not take (CORRUPT): lingering for it would let it make us hold descriptors for
          // 30 s per connection it breaks, at whatever rate it connects.
          if (this.abandoned || this.failedWith !== undefined) {
            if (this.failedWith?.code !== ErrorCode.CORRUPT) {
              void this.lingerForEnd();
              return;
            }
            break;
          }
          await this.room();
        }
      } catch {
        /* the peer's queue is gone: it closed or died, and there is no one left to tell */
      }
    }
    this.releaseAll();
  }

  /** Waits until the peer's queue may have room (or something else happened: see wakeRoomWaiters). */
  private room(): Promise<void> {
    this.blockedOnKernel();
    return new Promise<void>((resolve) => this.roomWaiters.push(resolve));
  }

  /**
   * destroy() or a failure with our END still waiting for room in the peer's queue. Nothing waits for it; but a
   * queue has no end-of-file, so the END is the only way a living peer learns that this side is gone: it is tried
   * in the background (holding only this connection's descriptors, and not the process: if it exits first, the
   * peer sees it die) until it went, the peer is gone, or END_LINGER_MS.
   */
  private async lingerForEnd(): Promise<void> {
    this.letProcessGo();
    let expired = false;
    const timer = setTimeout(() => { expired = true; this.wakeRoomWaiters(); }, END_LINGER_MS);
    timer.unref();
    try {
      for (;;) {
        await this.room();
        const done = this.writer.flush();
        this.kick();
        if (done || expired || this.peerGone || this.outputBroken || this.released || this.endSeen) break;
      }
    } catch {
      /* the peer's queue is gone */
    }
    clearTimeout(timer);
    this.releaseAll();
  }

  protected abandonTransport(): void {
    this.wakeRoomWaiters();
  }

  // --- reading ---------------------------------------------------------------------------------------------------

  private readonly sink: ReassemblerSink = {
    message: (type, bytes, owned) => this.deliver(type, bytes, owned),
    end: () => {
      this.endSeen = true;
      clearTimeout(this.verdictTimer);
      this.wakeRoomWaiters();
      this.ended();
    },
  };

  private scheduleRead(): void {
    if (this.readScheduled || this.released) return;
    this.readScheduled = true;
    setImmediate(() => {
      this.readScheduled = false;
      this.readLoop();
    });
  }

  /**
   * Takes packets until the queue is empty, the consumer is full (paused), or the budget is spent. A dead peer
   * or a closing connection reads regardless of pause: what the dead peer sent must reach the iterator before
   * PEER_DEAD, and a closing one only drops (the base ignores deliveries once closed).
   */
  private readLoop(): void {
    if (this.released || this.endSeen) return;
    let removed = 0;
    let emptied = false;
    try {
      while (!this.readPaused || this.peerGone || this.closing) {
        const n = this.receivePacket(this.rxBuf);
        if (n < 0) {
          emptied = true;
          break;
        }
        removed++;
        this.reassembler.push(this.rxBuf.subarray(this.rxHeadroom, this.rxHeadroom + n), this.sink);
        if (this.endSeen || this.released) return;
        if (removed >= READ_BUDGET && !this.peerGone) {
          this.scheduleRead();
          break;
        }
      }
    } catch (error) {
      this.fail(asShmbusError(error));
      return;
    }
    if (this.released) return;
    this.afterReceive(removed, emptied);
    if (!emptied) return;
    if (this.peerGone) {
      this.peerDied(new PeerDeadError('peer went away without closing', {
        url: this.url, side: this.side, pid: this.peerPid, midMessage: this.reassembler.midMessage,
      }));
      return;
    }
    this.waitReadable();
  }

  // --- writing ---------------------------------------------------------------------------------------------------

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // setImmediate rather than a microtask: messages sent by one burst of callbacks share packets.
    setImmediate(this.flushNow);
  }

  private readonly flushNow = (): void => {
    this.flushScheduled = false;
    if (this.released || this.outputBroken || this.peerGone) return;
    let done: boolean;
    try {
      done = this.writer.flush();
    } catch (error) {
      this.outputFailed(error);
      return;
    }
    this.kick();
    if (!done) {
      this.blockedOnKernel();
      return;
    }
    this.wakeRoomWaiters();
    // The base flushes its queue into us again (and resolves drained()): harmless when nothing waits.
    if (!this.closing) this.writable();
  };

  private blockedOnKernel(): void {
    this.kick();
    if (this.waitingRoom) return;
    this.waitingRoom = true;
    this.waitWritable();
  }

  /** Tells the subclass how many packets went out since last time (doorbells). */
  private kick(): void {
    const sent = this.writer.takeSent();
    if (sent > 0) this.afterSend(sent);
  }

  /** A send failed for another reason than a full queue. */
  private outputFailed(error: unknown): void {
    const e = asShmbusError(error);
    this.writer.discard();
    this.wakeRoomWaiters();
    if (e.code !== ErrorCode.NOT_FOUND) {
      this.fail(e);
      return;
    }
    // The peer removed its queue: it closed (its END is in our queue, behind what it sent) or died (liveness
    // will say). If neither shows up, it is gone without a word.
    this.outputBroken = true;
    if (this.endSeen || this.closing) return;
    this.scheduleRead();
    this.verdictTimer = setTimeout(() => {
      if (!this.endSeen && !this.peerGone) {
        this.fail(new ClosedError('peer removed its queue without closing', { url: this.url, side: this.side }));
      }
    }, VERDICT_MS);
    this.verdictTimer.unref();
  }

  private wakeRoomWaiters(): void {
    const waiters = this.roomWaiters;
    this.roomWaiters = [];
    for (const w of waiters) w();
  }

  // --- the end ---------------------------------------------------------------------------------------------------

  private readonly onPeerGone = (): void => {
    if (this.released) return;
    this.peerGone = true;
    this.writer.discard();
    try {
      this.reapPeer();
    } catch {
      /* someone else reaped it first */
    }
    this.wakeRoomWaiters();
    // Deliver what the peer left in our queue, then PEER_DEAD (or the end, if its END is there).
    this.readLoop();
  };

  private releaseAll(): void {
    if (this.released) return;
    this.released = true;
    clearTimeout(this.verdictTimer);
    this.unwatch();
    this.writer.discard();
    this.wakeRoomWaiters();
    this.release();
  }
}
