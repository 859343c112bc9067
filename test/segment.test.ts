// Segment header checks, windows over real segments, and memory.grow with windows mapped.
import t from 'tap';
import {
  SEG_MAGIC_OFFSET, SEG_VERSION_OFFSET, SEG_SIZE_OFFSET, SEG_RING_CAPACITY_OFFSET, SEG_FEATURES_OFFSET,
  SEG_HEADER_SIZE_OFFSET, SEG_RING_COUNT_OFFSET, CHANNEL_RING_COUNT, RECORD_BYTES, ringOffset, segmentBytes,
} from '../assembly/layout.js';
import { getEngine } from '../host/engine.js';
import { Region } from '../host/region.js';
import { RingEnd } from '../host/ring.js';
import { formatSegment, readSegment } from '../host/segment.js';
import { ErrorCode } from '../host/errors.js';
import { fileTimeout } from './helpers.js';

// Measured on a busy 2-core machine (load 10-20): ~10 s, mostly loading. Timeout: 4x that, at least tap's 60 s.
fileTimeout(t, 60);

const engine = getEngine();
const CAP = 64 * 1024;
const SIZE = segmentBytes(CHANNEL_RING_COUNT, CAP);
let serial = 0;
const name = () => `/shmbus-segtest-${process.pid}-${++serial}`;

/** Creates a posix segment mapped in a window, formatted, and a second mapping of it (as a peer would have). */
function twoMappings() {
  const created = Region.createPosix(name(), { size: SIZE });
  const a = engine.allocWindow(SIZE);
  created.mapAt(engine.address(a));
  formatSegment(engine, a, CHANNEL_RING_COUNT, CAP, process.pid, 1n);
  const attached = Region.attachPosix(created.name);
  const b = engine.allocWindow(SIZE);
  attached.mapAt(engine.address(b));
  return {
    a, b,
    view: new DataView(engine.memory.buffer),
    close() {
      created.unmapAt(engine.address(a)); engine.freeWindow(a, SIZE); created.close();
      attached.unmapAt(engine.address(b)); engine.freeWindow(b, SIZE); attached.close();
    },
  };
}

t.test('a formatted segment reads back through a second mapping', async (t) => {
  const m = twoMappings();
  const info = readSegment(engine, m.b, SIZE);
  t.match(info, { ringCount: CHANNEL_RING_COUNT, capacity: CAP, size: SIZE, creatorPid: process.pid, creatorStart: 1n });
  m.close();
});

t.test('corrupt headers are refused with typed errors', async (t) => {
  const cases: [string, (v: DataView, at: number) => void, string][] = [
    ['wrong magic', (v, at) => v.setUint32(at + SEG_MAGIC_OFFSET, 0x12345678, true), ErrorCode.CORRUPT],
    ['wrong major version', (v, at) => v.setUint32(at + SEG_VERSION_OFFSET, 2 << 16, true), ErrorCode.VERSION_MISMATCH],
    ['not initialised', (v, at) => v.setUint32(at + SEG_VERSION_OFFSET, 0, true), ErrorCode.CORRUPT],
    ['unknown feature bit', (v, at) => v.setUint32(at + SEG_FEATURES_OFFSET, 1 << 7, true), ErrorCode.VERSION_MISMATCH],
    ['bad header size', (v, at) => v.setUint32(at + SEG_HEADER_SIZE_OFFSET, 64, true), ErrorCode.CORRUPT],
    ['capacity not a power of two', (v, at) => v.setUint32(at + SEG_RING_CAPACITY_OFFSET, CAP + 8, true), ErrorCode.CORRUPT],
    ['capacity larger than the mapping', (v, at) => v.setUint32(at + SEG_RING_CAPACITY_OFFSET, CAP * 4, true), ErrorCode.CORRUPT],
    ['ring count zero', (v, at) => v.setUint32(at + SEG_RING_COUNT_OFFSET, 0, true), ErrorCode.CORRUPT],
    ['size field disagrees', (v, at) => v.setBigUint64(at + SEG_SIZE_OFFSET, 1n << 40n, true), ErrorCode.CORRUPT],
  ];
  for (const [what, corrupt, code] of cases) {
    const m = twoMappings();
    corrupt(m.view, m.a);
    t.throws(() => readSegment(engine, m.b, SIZE), { code }, what);
    m.close();
  }
  const m = twoMappings();
  t.throws(() => readSegment(engine, m.b, 64), { code: ErrorCode.CORRUPT }, 'mapping shorter than a header');
  m.close();
});

t.test('a ring works across two mappings, and after memory.grow', async (t) => {
  const m = twoMappings();
  const tx = new RingEnd(engine, m.a + ringOffset(0, CAP), CAP, 'producer');
  const rx = new RingEnd(engine, m.b + ringOffset(0, CAP), CAP, 'consumer');
  const before = engine.memory.buffer.byteLength;
  // A large window forces the memory to grow; the mapped windows must keep working in place.
  const big = engine.allocWindow(64 << 20);
  t.ok(engine.memory.buffer.byteLength > before, 'memory grew');
  t.equal(engine.u8.byteLength, engine.memory.buffer.byteLength, 'views were rebuilt');
  const at = tx.claim(5, RECORD_BYTES);
  engine.u8.set([1, 2, 3, 4, 5], at);
  tx.commit(5);
  t.equal(rx.read(), 1);
  const e = engine.batch / 4;
  const off = engine.u32[e]!;
  t.same([...engine.u8.subarray(off, off + 5)], [1, 2, 3, 4, 5], 'record visible through the other mapping');
  t.ok(off >= m.b && off < m.b + SIZE, 'read in place from the consumer window');
  rx.release();
  engine.freeWindow(big, 64 << 20);
  tx.dispose();
  rx.dispose();
  m.close();
});

t.test('unmapping puts zero pages back and the window is reusable', async (t) => {
  const r = Region.createPosix(name(), { size: 8192 });
  const w = engine.allocWindow(8192);
  r.mapAt(engine.address(w));
  engine.u8.fill(0xab, w, w + 8192);
  r.unmapAt(engine.address(w));
  t.equal(engine.u8.subarray(w, w + 8192).every((b) => b === 0), true, 'zeros after unmap');
  engine.freeWindow(w, 8192);
  t.equal(engine.allocWindow(8192), w, 'first fit reuses the freed window');
  engine.freeWindow(w, 8192);
  r.close();
});
