/** `shmbus tail <bus> <topic>`: a topic's messages as JSON lines. */
import { Bus } from '../bus/index.js';
import { ErrorCode, ShmbusError } from '../host/errors.js';
import { defineCommand, milliseconds, positiveInt, toJson, UsageError } from './command.js';
import { readBus } from './inspect.js';

export const tail = defineCommand({
  name: 'tail',
  summary: 'print the messages of a topic as JSON lines',
  usage: `usage: shmbus tail <bus-url> <topic> [--from earliest|latest] [--count <n>] [--timeout <ms>]

  Subscribes to <topic> of the bus and prints every message as one JSON line (bytes as {"$bytes":"<base64>"}).
  The subscriber is a bus member like any other: \`shmbus ls\` shows it, and on a lossless topic a tail that is
  not read holds the publisher back like any slow subscriber.

    --from earliest   start with the history the topic keeps (default: latest, only new messages)
    --count <n>       exit after <n> messages (default: until Ctrl-C)
    --timeout <ms>    give up when the topic does not exist yet after <ms> (default: the topic must exist)`,
  options: {
    from: { type: 'string' },
    count: { type: 'string' },
    timeout: { type: 'string' },
  },
  positionals: [2, 2],
  async run({ values, positionals }) {
    const [url, topic] = positionals as [string, string];
    const from = values.from ?? 'latest';
    if (from !== 'earliest' && from !== 'latest') throw new UsageError(`--from is earliest or latest, got ${from}`);
    const count = positiveInt(values.count, 'count', Infinity);
    const timeout = values.timeout === undefined ? undefined : milliseconds(values.timeout, 'timeout', 0);
    // Opening a bus creates it: a tail of a bus nobody made would leave one behind, so it must exist.
    if (!readBus(url)) throw new ShmbusError(ErrorCode.NOT_FOUND, `no bus at ${url}`, { details: { url } });
    const bus = await Bus.open(url);
    // Ctrl-C closes the bus: the subscription leaves its slot and the loop below ends.
    const abort = new AbortController();
    const onSigint = () => { abort.abort(); void bus.close(); };
    process.once('SIGINT', onSigint);
    try {
      const sub = bus.subscribe(topic, { from, create: timeout !== undefined, timeout, signal: abort.signal });
      let n = 0;
      if (n < count) {
        for await (const msg of sub) {
          console.log(toJson(msg));
          if (++n >= count) break;
        }
      }
    } catch (error) {
      if (!abort.signal.aborted) throw error;
    } finally {
      process.off('SIGINT', onSigint);
      await bus.close();
    }
    return 0;
  },
});
