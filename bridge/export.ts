/**
 * Exporting one local topic to subject `<prefix>.<topic>`.
 *
 * Lossy: records are copied out of the topic and published on core NATS; while NATS is away they are dropped
 * (and counted), never queued without bound.
 *
 * Lossless: records are published to the topic's JetStream stream with a message id `<origin>.<epoch>.<seq>`
 * (the topic's own sequence number, so the id of a record is the same after a restart of the bridge) and
 * `Nats-Expected-Last-Msg-Id` set to the previous record's id, up to WINDOW at a time. The server therefore
 * stores them in order or not at all: after a failure the unacknowledged ones are sent again in order, and the
 * server's de-duplication answers for those it had stored already. At most WINDOW records are out of the topic
 * and unacknowledged; past that the bridge stops reading, and the topic's back-pressure holds the local
 * publisher while NATS is away. The last acknowledged sequence number is remembered in the KV bucket (and is
 * also read back from the stream's last message), so a restarted bridge resumes after it, reading the topic's
 * retained history (`history`) for what was published meanwhile.
 */
import type { Bus, Subscription } from '../bus/index.js';
import { RECORD_MSGPACK } from '../assembly/layout.js';
import type { Link } from './connection.js';
import { backoff } from './connection.js';
import { messageId, MSG_ID_HEADER, newEpoch, parseMessageId, positionKey, subjectOf } from './naming.js';
import { errorText, localPolicy, publishedCount, retry, Signal, typeHeaders, type TopicSpec, type TopicStats } from './topic.js';

/** Lossless records out of the topic and not yet acknowledged by JetStream. */
export const WINDOW = 256;
/** Records are copied out of the topic into chunks of this size (see copy()). */
const ARENA_BYTES = 256 * 1024;
/** The acknowledged position is written to the KV bucket at most this often. */
const SAVE_MS = 100;
/**
 * How long one JetStream publish waits for its acknowledgement. Long: a busy server answers late, and a resend
 * only adds to its work. A lost connection does not wait for it (every publish in flight is sent again after the
 * reconnect).
 */
const PUBLISH_TIMEOUT_MS = 30_000;

interface Record { seq: number; type: number; bytes: Uint8Array }
interface InFlight extends Record {
  id: string;
  prevId: string | undefined;
  state: 'waiting' | 'sent' | 'acked' | 'failed';
  /** Bumped per send: the outcome of an earlier send (given up on after a reconnect) is ignored. */
  attempt: number;
  error?: unknown;
}
interface ExportPosition { epoch: string; acked: number }

export class Exporter {
  readonly stats: TopicStats;
  private readonly sub: Subscription;
  private readonly subject: string;
  private closed = false;
  private running: Promise<void> | undefined;
  private readonly moved = new Signal();
  // lossless state
  private epoch = '';
  private acked = -1;
  private lastId: string | undefined;
  /** Records read from the topic and not yet acknowledged, in order: sent (at most WINDOW) or waiting. */
  private readonly flight: InFlight[] = [];
  private sent = 0;
  private recovering = false;
  private saving = false;
  private savedAcked = -1;

  constructor(private readonly link: Link, private readonly bus: Bus, private readonly spec: TopicSpec, private readonly origin: string) {
    this.subject = subjectOf(link.prefix, spec.topic);
    const policy = spec.policy ?? localPolicy(bus, spec.topic);
    this.stats = {
      topic: spec.topic, direction: 'export', policy, subject: this.subject,
      forwarded: 0, dropped: 0, redelivered: 0, lag: 0, rejected: 0, error: undefined,
    };
    // Subscribed at once: from here on the topic keeps (lossless) what the bridge has not read.
    this.sub = bus.subscribe(spec.topic, { from: policy === 'lossy' ? 'latest' : 'earliest' });
  }

  /** Starts; resolves once the topic's NATS side is set up (stream and position for a lossless topic). */
  async start(): Promise<void> {
    const ready = new Signal();
    const readyWait = ready.wait();
    this.running = this.run(() => ready.fire()).catch((error) => { this.stats.error = errorText(error); ready.fire(); });
    await readyWait;
  }

  private async run(ready: () => void): Promise<void> {
    let policy = this.stats.policy;
    if (!policy) {
      // The topic does not exist yet: it is not ours to create. Wait for it (and its policy) to appear.
      ready();
      for (let attempt = 0; !(policy = localPolicy(this.bus, this.spec.topic)); attempt++) {
        if (this.closed) return;
        await new Promise((r) => setTimeout(r, backoff(Math.min(attempt, 3))));
      }
      this.stats.policy = policy;
    }
    if (policy === 'lossy') {
      ready();
      return this.runLossy();
    }
    await this.resume();
    this.link.onReconnect(() => this.reconnected());
    ready();
    if (!this.closed) await this.runLossless();
  }

  // --- lossy ---------------------------------------------------------------------------------------------------

  private async runLossy(): Promise<void> {
    const nc = this.link.nc;
    const batch: Record[] = [];
    let seenDropped = 0;
    let droppedAtRead = 0;
    const take = (memory: Uint8Array, offset: number, length: number, type: number) => {
      // The read is done (its skips counted): what the count gains from here on is records torn while we copied.
      if (batch.length === 0) droppedAtRead = this.sub.dropped;
      batch.push({ seq: 0, type, bytes: this.copy(memory, offset, length) });
    };
    while (!this.closed) {
      const n = this.sub.poll(take);
      if (n === 0) {
        await this.idle();
        continue;
      }
      // Records lapped while we copied them are counted by the subscription, from the batch's start: not sent.
      const torn = Math.min(this.sub.dropped - droppedAtRead, batch.length);
      this.stats.dropped += this.sub.dropped - seenDropped;
      seenDropped = this.sub.dropped;
      for (let i = torn; i < batch.length; i++) {
        const r = batch[i]!;
        if (!this.link.up) { this.stats.dropped++; continue; }
        try {
          nc.publish(this.subject, r.bytes, r.type === RECORD_MSGPACK ? { headers: typeHeaders(r.type) } : undefined);
          this.stats.forwarded++;
        } catch (error) {
          this.stats.dropped++;
          this.stats.error = errorText(error);
        }
      }
      batch.length = 0;
    }
  }

  private arena = new Uint8Array(0);
  private arenaUsed = 0;

  /**
   * A copy of a record that outlives the poll (the client sends it later, from a view): carved out of a shared
   * chunk rather than one allocation per record. A chunk is never reused; the views keep it alive until sent.
   */
  private copy(memory: Uint8Array, offset: number, length: number): Uint8Array {
    if (length > ARENA_BYTES >>> 4) return memory.slice(offset, offset + length);
    if (this.arenaUsed + length > this.arena.length) {
      this.arena = new Uint8Array(ARENA_BYTES);
      this.arenaUsed = 0;
    }
    const at = this.arenaUsed;
    this.arena.set(memory.subarray(offset, offset + length), at);
    this.arenaUsed = at + length;
    return this.arena.subarray(at, at + length);
  }

  /** Waits for records (or, once the topic's publisher closed, for a new one). */
  private async idle(): Promise<void> {
    if (this.sub.ended) await new Promise((r) => setTimeout(r, 50));
    else await this.sub.readable();
  }

  // --- lossless ------------------------------------------------------------------------------------------------

  /** Finds where the last run stopped: the KV position, or further, the stream's last message if it is ours. */
  private async resume(): Promise<void> {
    const stopped = () => this.closed;
    const onError = (error: unknown) => { this.stats.error = errorText(error); };
    const stream = await retry(() => this.link.ensureStream(this.spec.topic), stopped, onError);
    if (stream === undefined) return;
    const key = positionKey('export', this.origin, this.spec.topic);
    const saved = await retry(() => this.link.getPosition<ExportPosition>(key), stopped, onError);
    const published = publishedCount(this.bus, this.spec.topic);
    if (saved && typeof saved.epoch === 'string' && Number.isSafeInteger(saved.acked) && !(published !== undefined && published < saved.acked + 1)) {
      this.epoch = saved.epoch;
      this.acked = saved.acked;
    } else {
      // First run, or the topic was made anew (its sequence numbers started again): a new epoch.
      this.epoch = newEpoch();
      this.acked = -1;
    }
    const last = await retry(async () => {
      const jsm = await this.link.jsm();
      try {
        const m = await this.link.guard(jsm.streams.getMessage(stream, { last_by_subj: this.subject }));
        return m.header.get(MSG_ID_HEADER) || '';
      } catch (error) {
        if ((error as { code?: string }).code === '404') return '';
        throw error;
      }
    }, stopped, onError);
    if (last === undefined) return;
    this.lastId = last || undefined;
    const id = parseMessageId(last);
    if (id && id.origin === this.origin && id.epoch === this.epoch && id.seq > this.acked) this.acked = id.seq;
    this.savedAcked = this.acked;
    this.stats.error = undefined;
  }

  private async runLossless(): Promise<void> {
    const fresh: Record[] = [];
    const take = (memory: Uint8Array, offset: number, length: number, type: number, seq: number) => {
      fresh.push({ seq, type, bytes: this.copy(memory, offset, length) });
    };
    let expected = this.acked + 1;
    let first = true;
    while (!this.closed) {
      // One poll hands over a whole batch of records: read again only once they are all sent.
      if (this.sent < this.flight.length || this.recovering) {
        await this.moved.wait(1000);
        continue;
      }
      const n = this.sub.poll(take);
      if (n === 0) {
        await this.idle();
        continue;
      }
      for (const r of fresh) {
        if (r.seq < expected) continue; // exported before a restart: the history read again
        // Published while no bridge read the topic and gone from its history before we came back.
        if (r.seq > expected && (!first || this.acked >= 0)) this.stats.dropped += r.seq - expected;
        expected = r.seq + 1;
        const id = messageId(this.origin, this.epoch, r.seq);
        const entry: InFlight = { ...r, id, prevId: this.lastId, state: 'waiting', attempt: 0 };
        this.lastId = id;
        this.flight.push(entry);
      }
      first = false;
      fresh.length = 0;
      this.pump();
      this.stats.lag = this.flight.length;
    }
  }

  /** Sends waiting records while fewer than WINDOW are unacknowledged. */
  private pump(): void {
    if (this.recovering || this.closed) return;
    for (let i = 0; i < this.flight.length && i < WINDOW; i++) {
      const e = this.flight[i]!;
      if (e.state === 'waiting') this.send(e);
    }
    this.sent = 0;
    for (const e of this.flight) if (e.state !== 'waiting') this.sent++; else break;
  }

  private send(entry: InFlight): void {
    entry.state = 'sent';
    const attempt = ++entry.attempt;
    this.link.js.publish(this.subject, entry.bytes, {
      msgID: entry.id,
      expect: entry.prevId !== undefined ? { lastMsgID: entry.prevId } : undefined,
      headers: typeHeaders(entry.type),
      timeout: PUBLISH_TIMEOUT_MS,
    }).then(() => {
      if (entry.attempt !== attempt) return;
      entry.state = 'acked';
      this.advance();
    }, (error: unknown) => {
      if (entry.attempt !== attempt) return;
      entry.state = 'failed';
      entry.error = error;
      this.advance();
    });
  }

  /** After a reconnect, acknowledgements of what was in flight may never come: send it all again. */
  private reconnected(): void {
    if (this.closed) return;
    let any = false;
    for (const e of this.flight) {
      if (e.state !== 'sent') continue;
      e.state = 'failed';
      e.attempt++;
      e.error ??= new Error('connection lost before the acknowledgement');
      any = true;
    }
    if (any) this.advance();
  }

  /** Takes acknowledged records off the window's head; starts a recovery once every send has settled after a failure. */
  private advance(): void {
    // A record stored means every one before it was stored (each expected its predecessor as the last).
    let lastAcked = -1;
    for (let i = this.flight.length - 1; i >= 0; i--) if (this.flight[i]!.state === 'acked') { lastAcked = i; break; }
    if (lastAcked >= 0) {
      const done = this.flight.splice(0, lastAcked + 1);
      this.acked = done[done.length - 1]!.seq;
      this.stats.forwarded += done.length;
      this.scheduleSave();
    }
    this.stats.lag = this.flight.length;
    const failed = this.flight.some((e) => e.state === 'failed');
    const sent = this.flight.some((e) => e.state === 'sent');
    if (failed && !sent && !this.recovering && !this.closed) {
      this.recovering = true;
      void this.recover();
    }
    this.pump();
    this.moved.fire();
  }

  /** Sends the unacknowledged records again, in order, after a back-off. */
  private async recover(): Promise<void> {
    for (let attempt = 0; !this.closed; attempt++) {
      const head = this.flight[0];
      if (!head) break;
      this.stats.error = errorText(head.error);
      await new Promise((r) => setTimeout(r, backoff(attempt)));
      await this.link.whenUp(5000);
      if (this.closed) return;
      if (isWrongLast(head.error)) {
        // Someone else's message came last in the stream (another exporter of this subject): chain onto it.
        const last = await this.lastStoredId().catch(() => undefined);
        if (last !== undefined) head.prevId = last || undefined;
      }
      // Only the head goes first: once it is stored, the rest follow pipelined.
      this.stats.redelivered++;
      const stored = await this.sendOne(head);
      if (!stored) continue;
      head.state = 'acked';
      for (const e of this.flight) if (e.state === 'failed') { this.stats.redelivered++; e.state = 'waiting'; }
      break;
    }
    this.recovering = false;
    this.advance();
  }

  private async sendOne(entry: InFlight): Promise<boolean> {
    entry.attempt++;
    try {
      await this.link.js.publish(this.subject, entry.bytes, {
        msgID: entry.id,
        expect: entry.prevId !== undefined ? { lastMsgID: entry.prevId } : undefined,
        headers: typeHeaders(entry.type),
        timeout: PUBLISH_TIMEOUT_MS,
      });
      return true;
    } catch (error) {
      entry.error = error;
      return false;
    }
  }

  private async lastStoredId(): Promise<string> {
    const jsm = await this.link.jsm();
    const stream = await this.link.ensureStream(this.spec.topic);
    try {
      return (await this.link.guard(jsm.streams.getMessage(stream, { last_by_subj: this.subject }))).header.get(MSG_ID_HEADER) || '';
    } catch (error) {
      if ((error as { code?: string }).code === '404') return '';
      throw error;
    }
  }

  private scheduleSave(): void {
    if (this.saving || this.acked === this.savedAcked) return;
    this.saving = true;
    setTimeout(() => void this.save(), SAVE_MS);
  }

  private async save(): Promise<void> {
    const acked = this.acked;
    try {
      await this.link.putPosition(positionKey('export', this.origin, this.spec.topic), { epoch: this.epoch, acked } satisfies ExportPosition);
      this.savedAcked = acked;
    } catch { /* NATS away: saved on a later acknowledgement (the stream's last message covers the gap) */ }
    this.saving = false;
    if (!this.closed) this.scheduleSave();
  }

  /** Stops reading; waits (up to `graceMs`) for records in flight to be acknowledged, then saves the position. */
  async close(graceMs = 2000): Promise<void> {
    if (this.closed) return;
    const deadline = Date.now() + graceMs;
    while (this.flight.length && !this.recovering && Date.now() < deadline) await this.moved.wait(deadline - Date.now());
    this.closed = true;
    this.moved.fire();
    await this.sub.close();
    await this.running;
    if (this.epoch && this.acked !== this.savedAcked) {
      await this.link.putPosition(positionKey('export', this.origin, this.spec.topic), { epoch: this.epoch, acked: this.acked }).catch(() => {});
    }
  }
}

function isWrongLast(error: unknown): boolean {
  return (error as { api_error?: { err_code?: number } } | undefined)?.api_error?.err_code === 10070;
}
