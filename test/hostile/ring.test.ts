// A channel whose peer scribbles the consumer head: the writer fails with CORRUPT instead of waiting for room a
// scribbled head will never free (ring_free used to report an impossible head as "0 bytes free").
import t from 'tap';
import { RING_HEAD_OFFSET, H_RING_OFFSET } from '../../assembly/layout.js';
import { listen, connect, ErrorCode, type Channel } from '../../host/index.js';
import type { RingEnd } from '../../host/ring.js';
import { unique } from '../helpers.js';

t.test('a scribbled head makes the writer fail with CORRUPT (send, free, park), not wait for room', async (t) => {
  const url = `shm://${unique('scribble')}` as const;
  const listener = await listen(url);
  t.teardown(() => listener.close());
  const accepted = (async () => { for await (const c of listener) return c; return undefined; })();
  const client: Channel = await connect(url);
  const server = (await accepted)!;
  t.teardown(async () => { await client.close().catch(() => {}); await server.close().catch(() => {}); });
  // Fill the client's outbound ring (nobody reads on the server side) without queueing anything locally.
  const payload = new Uint8Array(1000);
  let sent = 0;
  while (client.trySendBytes(payload)) sent++;
  t.ok(sent > 0, `${sent} messages fit`);
  const tx = (client as unknown as { tx: RingEnd }).tx;
  const engine = tx.engine;
  const ring = engine.u32[(tx.handle + H_RING_OFFSET) >>> 2]!;
  // The peer owns the head; a hostile one writes an impossible value: past our tail, off the 8-byte grid.
  new DataView(engine.memory.buffer).setBigUint64(ring + RING_HEAD_OFFSET, 0xfffffffffffff003n, true);
  t.throws(() => tx.free(), { code: ErrorCode.CORRUPT }, 'free() is CORRUPT, not 0');
  t.equal(tx.park(64), false, 'the writer does not park on it');
  t.throws(() => client.sendBytes(payload), { code: ErrorCode.CORRUPT }, 'send() is CORRUPT');
});
