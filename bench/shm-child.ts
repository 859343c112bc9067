// Receiving side of bench/throughput.ts: connects to the URL in argv[2], receives argv[3] messages of kind
// argv[4] ('raw': zero-copy poll; 'object': the async iterator, decoding msgpack), checks them, then replies
// with one 'done' message and closes.
import { connect, type ShmUrl } from '../index.js';

const [url, countText, kind] = process.argv.slice(2) as [ShmUrl, string, string];
const total = Number(countText);
const conn = await connect(url!);
let count = 0;
let bytes = 0;
if (kind === 'raw') {
  const onRecord = (_memory: Uint8Array, _offset: number, length: number) => { count++; bytes += length; };
  while (count < total) {
    if (conn.poll(onRecord) === 0) await conn.readable();
  }
} else {
  for await (const msg of conn) {
    if ((msg as { id: number }).id !== count) throw new Error(`out of order: got ${(msg as { id: number }).id}, want ${count}`);
    if (++count === total) break;
  }
}
conn.send({ done: count, bytes });
await conn.close();
