/** `shmbus req <url> <json>`: one request to an endpoint, its reply printed as JSON. */
import { connect } from '../index.js';
import { defineCommand, fromJson, milliseconds, toJson } from './command.js';

export const req = defineCommand({
  name: 'req',
  summary: 'send a request to an endpoint and print the reply',
  usage: `usage: shmbus req <url> <json> [--timeout <ms>]

  Connects to <url> (any transport: shm://, unix://, tcp://, ...), sends <json> as a request (conn.request),
  prints the reply as one JSON line and exits. The endpoint must answer requests (listener.handle / serve).
  A reply that is an error exits 1 with its code on stderr.

    --timeout <ms>   how long to wait for the connection and the reply (default 5000)`,
  options: {
    timeout: { type: 'string' },
  },
  positionals: [2, 2],
  async run({ values, positionals }) {
    const [url, text] = positionals as [string, string];
    const value = fromJson(text, 'the request');
    const timeout = milliseconds(values.timeout, 'timeout', 5000);
    const conn = await connect(url, { timeout });
    try {
      console.log(toJson(await conn.request(value, { timeout })));
    } finally {
      await conn.close();
    }
    return 0;
  },
});
