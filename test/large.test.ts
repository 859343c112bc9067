// Large receives (host/large.ts): copied out into buffers that are not zero-filled, every byte the sender's; the
// process tunes malloc once it received one (unless SHMBUS_MALLOC_TUNE=0), and not before.
import t from 'tap';
import { listen, connect, type Channel } from '../index.js';
import { copyOut, allocLarge, mallocTuned, LARGE_RECORD_BYTES } from '../host/large.js';
import { unique, within } from './helpers.js';

t.test('copyOut copies exactly the range, small and large, as a plain Uint8Array', async (t) => {
  const memory = new Uint8Array(3 * LARGE_RECORD_BYTES);
  for (let i = 0; i < memory.length; i++) memory[i] = (i * 7 + 3) & 0xff;
  for (const [offset, length] of [[5, 0], [5, 64], [100, LARGE_RECORD_BYTES - 1], [8, LARGE_RECORD_BYTES], [17, 2 * LARGE_RECORD_BYTES]] as const) {
    const copy = copyOut(memory, offset, length);
    t.equal(copy.constructor, Uint8Array, `${length} bytes: a plain Uint8Array`);
    t.equal(copy.byteLength, length);
    t.equal(copy.buffer.byteLength, length, 'its own buffer, no more');
    t.ok(Buffer.from(copy).equals(Buffer.from(memory.subarray(offset, offset + length))), `${length} bytes equal`);
  }
  t.equal(allocLarge(1000).length, 1000);
});

t.test('a large message arrives intact through a channel and tunes malloc in the receiving process', async (t) => {
  const url = `shm://${unique('large')}`;
  const listener = await listen(url);
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]) as [Channel, Channel];
  await listener.close();
  t.teardown(async () => { await a.close(); await b.close(); });
  const big = new Uint8Array(1 << 20);
  for (let i = 0; i < big.length; i++) big[i] = (i * 13 + 1) & 0xff;
  const it = b[Symbol.asyncIterator]();
  for (let k = 0; k < 4; k++) {
    big[0] = k;
    if (!a.sendBytes(big)) await a.drained();
    const { value } = await within(10_000, it.next(), `message ${k}`);
    t.ok(Buffer.from(value as Uint8Array).equals(Buffer.from(big)), `1 MiB message ${k} equal, every byte`);
  }
  t.equal(mallocTuned(), process.env.SHMBUS_MALLOC_TUNE !== '0', 'tuned after a large receive (unless SHMBUS_MALLOC_TUNE=0)');
});
