// A topic formatted in private window memory of this process's engine (no segment, no bus): the byte-level
// topic tests drive its writer and readers directly and may scribble its words.
import { RECORD_BYTES, TOPIC_HEADER_OFFSET, topicBytes } from '../assembly/layout.js';
import { getEngine } from '../host/engine.js';
import { formatTopic, TopicReader, TopicWriter, type Policy } from '../host/topic.js';

export const engine = getEngine();

export function makeTopic(capacity: number, subscribers: number, policy: Policy, history = 0) {
  const size = topicBytes(subscribers, capacity);
  const at = engine.allocWindow(size);
  engine.u8.fill(0, at, at + size);
  formatTopic(engine, at, { capacity, maxSubscribers: subscribers, policy, history }, process.pid, 1n);
  const pub = new TopicWriter(engine, at, capacity, subscribers);
  const readers: TopicReader[] = [];
  const view = () => new DataView(engine.memory.buffer);
  return {
    at, pub, size,
    join(fromEarliest = false) {
      const r = new TopicReader(engine, at, capacity, subscribers, fromEarliest, process.pid, 1n);
      readers.push(r);
      return r;
    },
    /** Scribbles a word of the topic header (offsets from assembly/layout.ts, relative to the header). */
    word64(offset: number, value: bigint) { view().setBigUint64(at + TOPIC_HEADER_OFFSET + offset, value, true); },
    word32(offset: number, value: number) { view().setUint32(at + TOPIC_HEADER_OFFSET + offset, value, true); },
    dispose() { for (const r of readers) r.dispose(); pub.dispose(); engine.freeWindow(at, size); },
  };
}

/** Publishes a `len`-byte record whose first word is `n`; false when the topic has no room. */
export function publish(pub: TopicWriter, n: number, len: number): boolean {
  const at = pub.claim(len, RECORD_BYTES);
  if (at === 0) return false;
  new DataView(engine.memory.buffer).setUint32(at, n, true);
  pub.commit(len);
  return true;
}
