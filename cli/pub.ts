/** `shmbus pub <bus> <topic> <json>`: publishes one message (or several) on a topic. */
import { Bus, type PublisherOptions } from '../bus/index.js';
import { defineCommand, fromJson, positiveInt, UsageError } from './command.js';
import { readBus } from './inspect.js';

export const pub = defineCommand({
  name: 'pub',
  summary: 'publish a JSON message on a topic',
  usage: `usage: shmbus pub <bus-url> <topic> <json>... [--capacity <size>] [--policy lossless|lossy] [--history <n>]

  Publishes each <json> argument as one message (msgpack, like publish(value); {"$bytes":"<base64>"} is sent as
  bytes), waits until every one is in the ring, and exits. A topic has one publisher at a time: pub fails while
  another process publishes on it. An existing topic is published on with its own options; a new one is created
  with the options given (defaults as in bus.publisher()). The bus is created if it does not exist, and removed
  again when pub was its only member (so a message nobody subscribed to is gone with it).

    --capacity <size>   ring bytes of a new topic (1MiB by default)
    --policy <p>        lossless (default) or lossy, for a new topic
    --history <n>       messages a new topic keeps for late joiners (default 0)`,
  options: {
    capacity: { type: 'string' },
    policy: { type: 'string' },
    history: { type: 'string' },
  },
  positionals: [3, Infinity],
  async run({ values, positionals }) {
    const [url, topic, ...texts] = positionals as [string, string, ...string[]];
    const messages = texts.map((t, i) => fromJson(t, `message ${i + 1}`));
    const existing = readBus(url)?.topics.find((t) => t.name === topic);
    let options: PublisherOptions;
    if (existing) {
      options = { capacity: existing.capacity, policy: existing.policy, history: existing.history, maxSubscribers: existing.maxSubscribers };
    } else {
      const policy = values.policy ?? 'lossless';
      if (policy !== 'lossless' && policy !== 'lossy') throw new UsageError(`--policy is lossless or lossy, got ${policy}`);
      options = { capacity: values.capacity, policy, history: values.history === undefined ? undefined : positiveInt(values.history, 'history', 0) };
    }
    const bus = await Bus.open(url);
    try {
      const publisher = bus.publisher(topic, options);
      for (const m of messages) {
        const ok = m instanceof Uint8Array ? publisher.publishBytes(m) : publisher.publish(m);
        if (!ok) await publisher.drained();
      }
      await publisher.drained();
    } finally {
      await bus.close();
    }
    return 0;
  },
});
