// Large receives (host/large.ts): copied out into buffers that are not zero-filled, every byte the sender's; the
// process tunes malloc once it received one (unless SHMBUS_MALLOC_TUNE=0), and not before.
import t from 'tap';
import { listen, connect, type Channel } from '../index.js';
import { copyOut, copyOutBuffer, allocLarge, mallocTuned, LARGE_RECORD_BYTES, SLAB_COPY_BYTES } from '../host/large.js';
import { unique, within } from './helpers.js';

t.test('copyOut copies exactly the range, small and large, as a plain Uint8Array', async (t) => {
  const memory = new Uint8Array(3 * LARGE_RECORD_BYTES);
  for (let i = 0; i < memory.length; i++) memory[i] = (i * 7 + 3) & 0xff;
  for (const [offset, length] of [[5, 0], [5, 64], [3, SLAB_COPY_BYTES], [100, LARGE_RECORD_BYTES - 1], [8, LARGE_RECORD_BYTES], [17, 2 * LARGE_RECORD_BYTES]] as const) {
    const copy = copyOut(memory, offset, length);
    t.equal(copy.constructor, Uint8Array, `${length} bytes: a plain Uint8Array`);
    t.equal(copy.byteLength, length);
    t.equal(copy.buffer.byteLength, length, 'its own buffer, no more');
    t.ok(Buffer.from(copy).equals(Buffer.from(memory.subarray(offset, offset + length))), `${length} bytes equal`);
  }
  t.equal(allocLarge(1000).length, 1000);
});

t.test('copies of 65 bytes to 2 KiB share slabs, each its own bytes, as Uint8Arrays or Buffers', async (t) => {
  const memory = new Uint8Array(64 * 1024);
  for (let i = 0; i < memory.length; i++) memory[i] = (i * 7 + 3) & 0xff;
  const copies: Array<[Uint8Array, number, number]> = [];
  // Enough to fill several slabs, of sizes on both sides of the bounds.
  for (let k = 0; k < 400; k++) {
    const length = [65, 100, 777, SLAB_COPY_BYTES - 1, 64, SLAB_COPY_BYTES][k % 6]!;
    const offset = (k * 131) % (memory.length - length);
    const copy = k % 2 ? copyOutBuffer(Buffer.from(memory.buffer), offset, length) : copyOut(memory, offset, length);
    copies.push([copy, offset, length]);
    t.equal(Buffer.isBuffer(copy), k % 2 === 1, `${length} bytes: ${k % 2 ? 'a Buffer' : 'a Uint8Array'}`);
    t.equal(copy.byteOffset % 8, 0, 'starts 8-aligned');
    if (length <= 64 || length >= SLAB_COPY_BYTES) t.equal(copy.buffer.byteLength, length, `${length} bytes: its own buffer`);
  }
  // Written after all were made: a copy's bytes are its own, no later copy wrote over them.
  memory.fill(0);
  for (const [copy, offset, length] of copies) {
    const expected = Uint8Array.from({ length }, (_, i) => ((offset + i) * 7 + 3) & 0xff);
    if (!Buffer.from(copy).equals(Buffer.from(expected))) { t.fail(`copy at ${offset} of ${length} bytes changed`); return; }
  }
  t.pass('every copy kept its bytes');
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
