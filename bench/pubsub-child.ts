// Subscriber side of bench/pubsub.ts.
//   pubsub-child.js shm <busUrl> <count>     zero-copy poll of topic 'bench' until `count` records, then "done"
//   pubsub-child.js unix <socketPath> <count> read length-prefixed frames from a Unix socket until `count`
// Prints "ready" once subscribed/connected and "done <received>" at the end.
import net from 'node:net';
import { Bus } from '../bus/index.js';

const [kind, address, countText] = process.argv.slice(2);
const count = Number(countText);
let received = 0;

if (kind === 'shm') {
  const bus = await Bus.open(address!);
  const sub = bus.subscribe('bench', { create: false });
  console.log('ready');
  const onRecord = () => { received++; };
  while (received < count) {
    if (sub.poll(onRecord) === 0) await sub.readable();
  }
  console.log(`done ${received}`);
  await bus.close();
} else {
  const socket = net.connect({ path: address!.replace(/^@/, '\0') });
  await new Promise((r) => socket.once('connect', r));
  console.log('ready');
  let pending: Buffer | undefined;
  socket.on('data', (chunk: Buffer) => {
    let buf = pending ? Buffer.concat([pending, chunk]) : chunk;
    let at = 0;
    while (buf.length - at >= 4) {
      const len = buf.readUInt32LE(at);
      if (buf.length - at - 4 < len) break;
      at += 4 + len;
      received++;
    }
    pending = at < buf.length ? buf.subarray(at) : undefined;
    if (received >= count) {
      console.log(`done ${received}`);
      socket.destroy();
    }
  });
}
