// Framing of the byte-stream transports (transports/stream.ts): reassembly across any chunking, no partial
// frame ever delivered, and a corrupt frame (too long, unknown type, bad msgpack) closing the connection with
// ERR_SHMBUS_CORRUPT. The peer here is a raw socket writing bytes by hand, over unix: and tcp:.
import t from 'tap';
import net from 'node:net';
import { pack } from 'msgpackr';
import { listen, ErrorCode, RECORD_BYTES, RECORD_MSGPACK, type Connection } from '../../index.js';
import { FrameReader, FRAME_END, FRAME_HEADER_SIZE, encodeFrame } from '../../transports/stream.js';
import { within } from './harness.js';
import { fileTimeout } from '../helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
// Measured on a busy 2-core machine (load 10-20): ~13 s. Timeout: 4x that, at least tap's 60 s.
fileTimeout(t, 60);

t.test('FrameReader reassembles frames split at every possible boundary, copying whole frames not at all', async (t) => {
  // Deterministic pseudo-random frames: sizes 0 … 3000, both record types.
  let seed = 12345;
  const rand = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  const frames: { type: number; bytes: Uint8Array }[] = [];
  for (let i = 0; i < 300; i++) {
    const bytes = new Uint8Array(rand(4) === 0 ? 0 : rand(3000));
    for (let j = 0; j < bytes.length; j++) bytes[j] = rand(256);
    frames.push({ type: rand(2) ? RECORD_BYTES : RECORD_MSGPACK, bytes });
  }
  const wire = Buffer.concat(frames.map((f) => encodeFrame(f.type, f.bytes)));
  for (const chunkSize of [1, 2, 3, 4, 5, 6, 7, 13, 100, 4096, 65536, wire.length]) {
    const got: { type: number; bytes: Uint8Array }[] = [];
    const reader = new FrameReader(1 << 20, (type, bytes) => got.push({ type, bytes: new Uint8Array(bytes) }));
    for (let at = 0; at < wire.length; at += chunkSize) reader.push(wire.subarray(at, at + chunkSize));
    t.equal(got.length, frames.length, `chunks of ${chunkSize}: every frame, once`);
    t.ok(got.every((g, i) => g.type === frames[i]!.type && Buffer.compare(g.bytes, frames[i]!.bytes) === 0), `chunks of ${chunkSize}: intact, in order`);
    t.notOk(reader.midFrame, 'nothing left half-read');
  }
  // Random split points.
  const got: Uint8Array[] = [];
  const reader = new FrameReader(1 << 20, (_type, bytes) => got.push(new Uint8Array(bytes)));
  for (let at = 0; at < wire.length;) { const n = 1 + rand(9000); reader.push(wire.subarray(at, at + n)); at += n; }
  t.equal(got.length, frames.length, 'random chunking: every frame');
  // A frame entirely inside one chunk is handed out as a view of that chunk (no copy).
  const chunk = encodeFrame(RECORD_BYTES, new Uint8Array([1, 2, 3]));
  new FrameReader(10, (_t, bytes, owned) => {
    t.equal(bytes.buffer, chunk.buffer, 'a whole frame inside a chunk is a view');
    t.equal(owned, false);
  }).push(chunk);
  t.throws(() => new FrameReader(10, () => {}).push(encodeFrame(RECORD_BYTES, new Uint8Array(11))), { code: ErrorCode.CORRUPT }, 'longer than the maximum');
});

type Raw = { socket: net.Socket; conn: Connection; close(): Promise<void> };

const endpoints: [string, () => string][] = [
  ['unix', () => `unix://@shmbus-framing-${process.pid}-${Math.random().toString(36).slice(2)}`],
  ['tcp', () => 'tcp://127.0.0.1:0'],
];

for (const [name, makeUrl] of endpoints) {
  /** A listener here, and a raw socket connected to it: we write the frames by hand. */
  async function raw(): Promise<Raw> {
    const listener = await listen(makeUrl());
    const target = listener.url.startsWith('unix://@')
      ? { path: '\0' + listener.url.slice('unix://@'.length) }
      : { host: '127.0.0.1', port: Number(new URL(listener.url).port) };
    const socket = net.connect(target);
    socket.on('error', () => {});
    const conn = (await within(5000, listener.acceptNext(), 'accept'))!;
    conn.on('error', () => {});
    return {
      socket, conn,
      async close() {
        socket.destroy();
        await conn.close();
        await listener.close();
      },
    };
  }

  t.test(`${name}: a partial frame is never delivered; the rest completes it`, async (t) => {
    const r = await raw();
    const frame = encodeFrame(RECORD_MSGPACK, pack({ hello: 'world', n: 42 }));
    r.socket.write(frame.subarray(0, 3));
    let delivered = false;
    const next = r.conn.receive().then((m) => { delivered = true; return m; });
    // Windows for a wrong delivery to show; a correct reader waits however long they are.
    await sleep(50);
    r.socket.write(frame.subarray(3, frame.length - 1));
    await sleep(50);
    t.notOk(delivered, 'nothing delivered while one byte is missing');
    r.socket.write(frame.subarray(frame.length - 1));
    t.same(await within(5000, next, 'the whole frame'), { hello: 'world', n: 42 });
    // One byte per write: still exactly one message.
    const second = encodeFrame(RECORD_BYTES, new Uint8Array([9, 8, 7]));
    for (const b of second) { r.socket.write(Buffer.from([b])); await sleep(1); }
    t.same(Array.from(await within(5000, r.conn.receive(), 'byte by byte') as Uint8Array), [9, 8, 7]);
    // End-of-file in the middle of a frame: the peer died; the partial frame is dropped.
    r.socket.end(encodeFrame(RECORD_BYTES, new Uint8Array(100)).subarray(0, 50));
    await t.rejects(within(5000, r.conn.receive(), 'after EOF'), { code: ErrorCode.PEER_DEAD });
    await r.close();
  });

  t.test(`${name}: FRAME_END ends the stream in order`, async (t) => {
    const r = await raw();
    r.socket.write(Buffer.concat([encodeFrame(RECORD_BYTES, new Uint8Array([1])), encodeFrame(FRAME_END, new Uint8Array(0))]));
    t.same(Array.from(await r.conn.receive() as Uint8Array), [1]);
    t.equal(await within(5000, r.conn.receive(), 'end'), undefined, 'the iterator ends');
    t.throws(() => r.conn.send(1), { code: ErrorCode.CLOSED });
    await r.close();
  });

  const corrupt: [string, Buffer][] = [
    ['a frame longer than maxMessageSize', (() => { const h = Buffer.alloc(FRAME_HEADER_SIZE); h.writeUInt32LE(0xffffffff, 0); h[4] = RECORD_BYTES; return h; })()],
    ['a frame of an unknown type', encodeFrame(0x33, new Uint8Array([1, 2]))],
    ['msgpack that does not decode', encodeFrame(RECORD_MSGPACK, new Uint8Array([0xd9, 0x10, 0x41]))],
    ['msgpack with bytes after the value', encodeFrame(RECORD_MSGPACK, new Uint8Array([0x01, 0x02]))],
  ];
  for (const [what, bytes] of corrupt) {
    t.test(`${name}: ${what} closes the connection with CORRUPT`, async (t) => {
      const r = await raw();
      const errors: string[] = [];
      r.conn.on('error', (e: { code: string }) => errors.push(e.code));
      const closed = new Promise((resolve) => r.conn.once('close', resolve));
      // A good message first: it is still delivered before the error.
      r.socket.write(Buffer.concat([encodeFrame(RECORD_BYTES, new Uint8Array([5])), bytes]));
      t.same(Array.from(await within(5000, r.conn.receive(), 'good message') as Uint8Array), [5]);
      await t.rejects(within(5000, r.conn.receive(), 'corrupt'), { code: ErrorCode.CORRUPT });
      t.throws(() => r.conn.send(1), { code: ErrorCode.CORRUPT }, 'later sends report it');
      await within(5000, closed, 'close event');
      t.same(errors, [ErrorCode.CORRUPT], "'error' listeners heard it once");
      await r.close();
    });
  }
}
