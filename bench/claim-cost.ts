// What the per-record zero-copy API costs on top of the ring, across two processes, in the same run:
//   node dist/bench/claim-cost.js [--pairs 3] [--count 2500000]
//
// A child produces 64-byte records into a channel; this process reads them in place with `poll` (as the claimAt64
// row of bench/everyday.ts does), counting from the first record after a quarter as many uncounted ones. The child
// writes each record in one of two ways, alternated in pairs so that both meet the same state of the machine:
//   api    conn.claim(64), claim.memory.set(payload, claim.offset), claim.commit(): the API users write
//   ring   the channel's own ring calls and nothing else (RingEnd.claim, the copy, a quiet RingEnd.commit and the
//          channel's wake check): no Claim object, none of the API's checks. Not an API: it reaches into the
//          channel's private fields, to show what an allocation-free per-record API could reach at most.
// The gap between the two is the per-record API's own work (README, "Through the API people write").
//
// The same file is the child: `--child <url> <mode> <count>`.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { listen, connect, RECORD_BYTES, type Channel } from '../index.js';
import type { RingEnd } from '../host/ring.js';

const SELF = fileURLToPath(import.meta.url);
const MODES = ['api', 'ring'] as const;
type Mode = (typeof MODES)[number];

/** The channel's private parts the `ring` mode uses. */
interface Inside { tx: RingEnd; engine: { u8: Uint8Array }; wakeScheduled: boolean; afterCommit(): void }

async function produce(url: string, mode: Mode, total: number): Promise<void> {
  const conn = (await connect(url as `shm://${string}`)) as Channel;
  const inside = conn as unknown as Inside;
  const payload = new Uint8Array(64).fill(7);
  for (let i = 0; i < total;) {
    if (mode === 'api') {
      const claim = conn.claim(64);
      if (claim === null) { await conn.drained(); continue; }
      claim.memory.set(payload, claim.offset);
      claim.commit();
    } else {
      const at = inside.tx.claim(64, RECORD_BYTES);
      if (at === 0) { await conn.drained(); continue; }
      inside.engine.u8.set(payload, at);
      inside.tx.commit(64, inside.wakeScheduled);
      inside.afterCommit();
    }
    i++;
  }
  await conn.receive(); // the consumer's "done"
  await conn.close();
}

/** Records per second of one run of `mode`: `count` counted after count / 4 uncounted. */
async function once(mode: Mode, count: number): Promise<number> {
  const url = `shm://shmbus-claim-cost-${process.pid}-${mode}-${Math.random().toString(36).slice(2)}` as const;
  const listener = await listen(url);
  const warm = Math.round(count / 4);
  const total = warm + count;
  const child = spawn(process.execPath, [SELF, '--child', url, mode, String(total)], { stdio: 'inherit' });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const conn = (await listener.acceptNext())!;
  let received = 0;
  let first = 0n;
  const onRecord = (): void => { if (received++ === warm) first = process.hrtime.bigint(); };
  while (received < total) if (conn.poll(onRecord) === 0) await conn.readable();
  const seconds = Number(process.hrtime.bigint() - first) / 1e9;
  conn.send('done');
  if ((await exited) !== 0) throw new Error(`${mode}: the producer failed`);
  await conn.close();
  await listener.close();
  return (count - 1) / seconds;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { pairs: { type: 'string', default: '3' }, count: { type: 'string', default: '2500000' } } });
  const pairs = Number(values.pairs);
  const count = Number(values.count);
  if (!(pairs >= 1 && count >= 10)) throw new Error('usage: node dist/bench/claim-cost.js [--pairs N>=1] [--count N>=10]');
  for (let p = 0; p < pairs; p++) {
    const rates: string[] = [];
    for (const mode of p % 2 ? [...MODES].reverse() : MODES) rates.push(`${mode} ${((await once(mode, count)) / 1e6).toFixed(2)}M`);
    console.log(`pair ${p + 1}: ${rates.join(', ')} records/s`);
  }
}

if (process.argv[2] === '--child') {
  const [, , , url, mode, total] = process.argv;
  produce(url!, mode as Mode, Number(total)).catch((error) => { console.error(error); process.exit(1); });
} else {
  main().catch((error) => { console.error(error); process.exit(1); });
}
