// Processes of bench/bridge.ts, one role each (every line on stdout is a message to the parent):
//   bridge-child.js nats-pub <natsUrl> <subject> <count>   publishes `count` 64-byte messages with the nats client
//   bridge-child.js bus-pub <busUrl> <count>               publishes `count` 64-byte records on topic 'bench' (lossless)
//   bridge-child.js bridge <args…>                         runs `shmbus bridge <args…>` (bridge/command.ts)
// A publisher prints "ready", waits for a line "go" on stdin, publishes, prints "sent <n>" and waits for "exit".
import { createInterface } from 'node:readline';
import { connect } from 'nats';
import { Bus } from '../bus/index.js';
import { bridgeCommand } from '../bridge/command.js';

const [role, ...args] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin });
const next = (): Promise<string> => new Promise((resolve) => lines.once('line', resolve));

if (role === 'bridge') {
  lines.close();
  process.exitCode = await bridgeCommand(args);
} else if (role === 'nats-pub') {
  const [url, subject, countText] = args as [string, string, string];
  const nc = await connect({ servers: url });
  const payload = new Uint8Array(64).fill(1);
  console.log('ready');
  await next();
  const count = Number(countText);
  for (let i = 0; i < count; i++) {
    nc.publish(subject, payload);
    // Hand the socket what is buffered now and then, as a steady publisher would (the client flushes per turn).
    if ((i & 1023) === 1023) await new Promise((r) => setImmediate(r));
  }
  await nc.flush();
  console.log(`sent ${count}`);
  await next();
  await nc.close();
} else if (role === 'bus-pub') {
  const [url, countText] = args as [string, string];
  const bus = await Bus.open(url);
  // Lossless locally: the exporter's subscription holds the publisher back to the pace the bridge forwards at
  // (exported over core NATS all the same: --export bench:lossy), so the run measures the bridge, not lapping.
  const pub = bus.publisher('bench', { capacity: '4MiB', policy: 'lossless' });
  const payload = new Uint8Array(64).fill(1);
  console.log('ready');
  await next();
  const count = Number(countText);
  for (let i = 0; i < count; i++) {
    if (!pub.publishBytes(payload)) await pub.drained();
    // The same pacing as nats-pub: a turn of the event loop every 1024 messages.
    else if ((i & 1023) === 1023) await new Promise((r) => setImmediate(r));
  }
  console.log(`sent ${count}`);
  await next();
  await bus.close();
  lines.close();
} else {
  console.error(`unknown role ${role}`);
  process.exitCode = 2;
}
