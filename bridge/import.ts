/**
 * Importing subject `<prefix>.<topic>` into a local topic, whose publisher the bridge becomes.
 *
 * Lossy: a core NATS subscription; each message is published into the (lossy) local topic.
 *
 * Lossless: an ordered consumer of the topic's JetStream stream, started after the last stream sequence number
 * committed locally. JetStream's own acknowledgements cannot give order and exactly-once here (an unacknowledged
 * message is redelivered after later ones), so the bridge keeps its acknowledgement itself, in the KV bucket, and
 * writes it BEFORE committing a batch: `{ prev, before, seqs, last }` = the position before the batch, the local
 * topic's published count before it, the stream sequence numbers it commits, and the batch's last one. The batch
 * is then committed to the local topic (and awaited until it is in the ring, not in the publisher's queue). A
 * bridge that restarts reads the marker and the topic's published count: `published - before` records of the
 * batch made it, so it resumes right after the last of them: nothing lost, nothing twice. This rests on the bridge
 * being the local topic's only publisher (it holds the topic's publisher claim).
 */
import { DeliverPolicy, type ConsumerMessages, type JsMsg, type Msg, type Subscription as NatsSubscription } from 'nats';
import type { Bus, Publisher } from '../bus/index.js';
import { decodePeer } from '../host/codec.js';
import type { Link } from './connection.js';
import { MSG_ID_HEADER, parseMessageId, positionKey, subjectOf } from './naming.js';
import { errorText, isMsgpack, localPolicy, publishedCount, retry, Signal, type TopicSpec, type TopicStats } from './topic.js';
import { backoff } from './connection.js';

/** Messages committed to the local topic per acknowledgement marker, at most. */
const BATCH = 256;
/** Messages the consumer fetches ahead. */
const FETCH_AHEAD = 1024;

interface Marker { prev: number; before: number; seqs: number[]; last: number }
interface Incoming { seq: number; skip: boolean; value?: unknown; bytes?: Uint8Array; msgpack: boolean }

/** Where a restarted import resumes: the last stream sequence number committed to the local topic. */
export function resumePoint(marker: Marker | undefined, published: number): number {
  if (!marker || !Number.isSafeInteger(marker.prev) || !Number.isSafeInteger(marker.before) || !Array.isArray(marker.seqs) || !Number.isSafeInteger(marker.last)) return 0;
  const made = published - marker.before;
  // The topic was made anew (fewer records than before the batch): deliver the batch again rather than lose it.
  if (made <= 0) return marker.prev;
  if (made >= marker.seqs.length) return marker.last;
  return marker.seqs[made - 1]!;
}

export class Importer {
  readonly stats: TopicStats;
  private readonly subject: string;
  private readonly publisher: Publisher;
  private closed = false;
  /** The local topic failed under the import: it stops (the error is in stats). */
  private failed = false;
  private running: Promise<void> | undefined;
  private core: NatsSubscription | undefined;
  private messages: ConsumerMessages | undefined;
  /** Stream sequence number of the last message committed locally (or skipped). */
  private position = 0;
  /** Stream sequence number of the last message taken from the consumer (committed or queued). */
  private received = 0;
  private published = 0;
  private readonly queue: Incoming[] = [];
  private readonly arrived = new Signal();
  private readonly room = new Signal();

  constructor(private readonly link: Link, private readonly bus: Bus, private readonly spec: TopicSpec, private readonly origin: string) {
    this.subject = subjectOf(link.prefix, spec.topic);
    const policy = spec.policy ?? localPolicy(bus, spec.topic) ?? 'lossless';
    const { topic, ...options } = spec;
    this.publisher = bus.publisher(topic, { ...options, policy });
    this.stats = {
      topic, direction: 'import', policy, subject: this.subject,
      forwarded: 0, dropped: 0, redelivered: 0, lag: 0, rejected: 0, error: undefined,
    };
  }

  /** Starts; resolves once NATS delivers to this topic (subscription made, or consumer created). */
  async start(): Promise<void> {
    if (this.stats.policy === 'lossy') {
      this.core = this.link.nc.subscribe(this.subject, { callback: (error, m) => { if (!error) this.lossy(m); } });
      await this.link.nc.flush().catch(() => {});
      return;
    }
    let ready!: () => void;
    const readyWait = new Promise<void>((r) => { ready = r; });
    this.running = this.runLossless(ready).catch((error) => { this.stats.error = errorText(error); }).finally(() => ready());
    await readyWait;
  }

  private lossy(m: Msg): void {
    if (this.closed) return;
    try {
      if (isMsgpack(m.headers)) this.publisher.publish(decodePeer(m.data));
      else this.publisher.publishBytes(m.data);
      this.stats.forwarded++;
    } catch (error) {
      this.stats.rejected++;
      this.stats.error = errorText(error);
    }
  }

  private async runLossless(ready: () => void): Promise<void> {
    const stopped = () => this.closed;
    const onError = (error: unknown) => { this.stats.error = errorText(error); };
    const stream = await retry(() => this.link.ensureStream(this.spec.topic), stopped, onError);
    if (stream === undefined) return;
    const key = positionKey('import', this.origin, this.spec.topic);
    const marker = await retry(() => this.link.getPosition<Marker>(key), stopped, onError);
    if (this.closed) return;
    this.published = publishedCount(this.bus, this.spec.topic) ?? 0;
    this.position = resumePoint(marker, this.published);
    this.received = this.position;
    // A failure here (the local topic turned corrupt) stops the import; it is reported in stats().
    const committing = this.committer(key).catch((error) => { this.stats.error = errorText(error); this.failed = true; this.messages?.stop(); });
    for (let attempt = 0; !this.closed && !this.failed; attempt++) {
      try {
        // Resume after what we hold already (committed, or queued to be): the consumer delivers in stream order.
        const consumer = await this.link.js.consumers.get(stream, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: this.received + 1 });
        const messages = await consumer.consume({ max_messages: FETCH_AHEAD });
        this.messages = messages;
        this.stats.error = undefined;
        ready();
        attempt = 0;
        await this.consume(messages);
      } catch (error) {
        onError(error);
      } finally {
        this.messages = undefined;
      }
      if (!this.closed && !this.failed) await new Promise((r) => setTimeout(r, backoff(attempt)));
    }
    this.arrived.fire();
    await committing;
  }

  /** Queues what the consumer delivers (skipping what was seen already); holds the consumer while the queue is full. */
  private async consume(messages: ConsumerMessages): Promise<void> {
    for await (const m of messages) {
      if (this.closed || this.failed) break;
      // Delivered again (a consumer recreated after a reconnect starts where we asked; this covers the rest).
      if (m.seq <= this.received) { this.stats.redelivered++; continue; }
      this.received = m.seq;
      this.stats.lag = m.info.pending + this.queue.length;
      this.queue.push(this.incoming(m));
      this.arrived.fire();
      while (this.queue.length >= FETCH_AHEAD && !this.closed) await this.room.wait(1000);
    }
  }

  /**
   * Commits what is queued, a batch at a time. Messages keep arriving while a batch's marker is written, so under
   * load the batches grow (to BATCH) and the marker costs little per message.
   */
  private async committer(key: string): Promise<void> {
    while (!this.closed && !this.failed) {
      if (this.queue.length === 0) { await this.arrived.wait(1000); continue; }
      const batch = this.queue.splice(0, BATCH);
      this.room.fire();
      await this.commit(batch, key);
    }
  }

  /** Decodes what must be decoded up front: a message that does not decode is refused before the marker names it. */
  private incoming(m: JsMsg): Incoming {
    const id = parseMessageId(m.headers?.get(MSG_ID_HEADER));
    // Our own export coming back (this bridge exports and imports the subject through one stream): not again.
    if (id && id.origin === this.origin) return { seq: m.seq, skip: true, msgpack: false };
    if (m.data.length > this.publisher.maxMessageSize) {
      this.stats.rejected++;
      this.stats.error = `message of ${m.data.length} bytes is larger than the local topic takes (${this.publisher.maxMessageSize})`;
      return { seq: m.seq, skip: true, msgpack: false };
    }
    if (!isMsgpack(m.headers)) return { seq: m.seq, skip: false, bytes: m.data, msgpack: false };
    try {
      return { seq: m.seq, skip: false, value: decodePeer(m.data), msgpack: true };
    } catch (error) {
      this.stats.rejected++;
      this.stats.error = errorText(error);
      return { seq: m.seq, skip: true, msgpack: true };
    }
  }

  /** Marker first, then the batch into the local topic, then the position moves on (see the file comment). */
  private async commit(batch: Incoming[], key: string): Promise<void> {
    const targets = batch.filter((b) => !b.skip);
    const marker: Marker = { prev: this.position, before: this.published, seqs: targets.map((t) => t.seq), last: batch[batch.length - 1]!.seq };
    const written = await retry(() => this.link.putPosition(key, marker), () => this.closed, (error) => { this.stats.error = errorText(error); });
    if (written === undefined && this.closed) return;
    for (const t of targets) {
      if (t.msgpack) this.publisher.publish(t.value);
      else this.publisher.publishBytes(t.bytes!);
    }
    await this.publisher.drained();
    this.published += targets.length;
    this.position = marker.last;
    this.stats.forwarded += targets.length;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.core?.unsubscribe();
    this.messages?.stop();
    this.arrived.fire();
    this.room.fire();
    await this.running;
    await this.publisher.close();
  }
}
