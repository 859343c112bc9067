// Segments that were not made by a well-behaved shmbus process: planted files with a bad header, an impossible
// unit count or block, loose permissions, a size smaller than the header claims. Each is one typed error, never
// a crash or a hang.
import t from 'tap';
import { writeFileSync, rmSync, chmodSync, truncateSync, readdirSync } from 'node:fs';
import { Mutex } from '../../state/mutex.js';
import { Semaphore } from '../../state/semaphore.js';
import { SharedState } from '../../state/shared-state.js';
import { layoutOf } from '../../state/fields.js';
import { ErrorCode } from '../../host/errors.js';
import {
  MUTEX_MAGIC, SEMAPHORE_MAGIC, STATE_MAGIC, SYNC_LAYOUT_VERSION, SYNC_MAGIC_OFFSET, SYNC_VERSION_OFFSET,
  SYNC_SHAPE_OFFSET, SYNC_HEADER_SIZE_OFFSET, SYNC_SIZE_OFFSET, SYNC_PARAM_OFFSET, SYNC_HEADER_SIZE, lockBytes,
} from '../../assembly/layout.js';
import { fileTimeout, unique } from '../helpers.js';

fileTimeout(t, 30);

interface Header { magic: number; version?: number; shape: number; headerSize?: number; size: number; param?: number }

/** Plants /dev/shm/shmbus.<kind>.<name> with `header` in a file of `bytes` bytes; returns the URL and a remover. */
function plant(t: { teardown(fn: () => void): void }, kind: string, header: Header, bytes = 4096, mode = 0o600): string {
  const name = unique('hostile');
  const path = `/dev/shm/shmbus.${kind}.${name}`;
  const buf = Buffer.alloc(bytes);
  if (bytes >= SYNC_HEADER_SIZE) {
    buf.writeUInt32LE(header.magic, SYNC_MAGIC_OFFSET);
    buf.writeUInt32LE(header.version ?? SYNC_LAYOUT_VERSION, SYNC_VERSION_OFFSET);
    buf.writeUInt32LE(header.shape >>> 0, SYNC_SHAPE_OFFSET);
    buf.writeUInt32LE(header.headerSize ?? SYNC_HEADER_SIZE, SYNC_HEADER_SIZE_OFFSET);
    buf.writeBigUInt64LE(BigInt(header.size), SYNC_SIZE_OFFSET);
    buf.writeUInt32LE(header.param ?? 0, SYNC_PARAM_OFFSET);
  }
  writeFileSync(path, buf, { mode });
  chmodSync(path, mode);
  t.teardown(() => rmSync(path, { force: true }));
  return `shm://${name}`;
}

t.test('a bad magic, another major version, a wrong header size', async (t) => {
  await t.rejects(Mutex.open(plant(t, 'mutex', { magic: STATE_MAGIC, shape: 1, size: 4096 })), { code: ErrorCode.CORRUPT });
  await t.rejects(Mutex.open(plant(t, 'mutex', { magic: MUTEX_MAGIC, version: 2 << 16, shape: 1, size: 4096 })), { code: ErrorCode.VERSION_MISMATCH });
  await t.rejects(Mutex.open(plant(t, 'mutex', { magic: MUTEX_MAGIC, headerSize: 64, shape: 1, size: 4096 })), { code: ErrorCode.CORRUPT });
});

t.test('impossible shapes: a mutex of 2 units, a semaphore of 0 or 10^6 units, a header size past the file', async (t) => {
  await t.rejects(Mutex.open(plant(t, 'mutex', { magic: MUTEX_MAGIC, shape: 2, size: lockBytes(2) })), { code: ErrorCode.VERSION_MISMATCH });
  await t.rejects(Semaphore.open(plant(t, 'semaphore', { magic: SEMAPHORE_MAGIC, shape: 0, size: 4096 })), { code: ErrorCode.CORRUPT });
  await t.rejects(Semaphore.open(plant(t, 'semaphore', { magic: SEMAPHORE_MAGIC, shape: 1e6, size: 4096 })), { code: ErrorCode.CORRUPT });
  await t.rejects(Semaphore.open(plant(t, 'semaphore', { magic: SEMAPHORE_MAGIC, shape: 4096, size: lockBytes(4096) })), { code: ErrorCode.CORRUPT }, 'the file is smaller than the header says');
  await t.rejects(Semaphore.open(plant(t, 'semaphore', { magic: SEMAPHORE_MAGIC, shape: 2, size: 1 << 30 })), { code: ErrorCode.CORRUPT });
});

t.test('a state whose header claims a block larger than the limit or than the file', async (t) => {
  const fields = { a: 'u32' } as const;
  const { hash, block } = layoutOf(fields);
  await t.rejects(SharedState.open(plant(t, 'state', { magic: STATE_MAGIC, shape: 1, size: 4096, param: block }), { fields }), { code: ErrorCode.VERSION_MISMATCH }, 'another field list');
  await t.rejects(SharedState.open(plant(t, 'state', { magic: STATE_MAGIC, shape: hash, size: 4096, param: 1 << 30 }), { fields }), { code: ErrorCode.VERSION_MISMATCH }, 'another block size');
  await t.rejects(SharedState.open(plant(t, 'state', { magic: STATE_MAGIC, shape: hash, size: 1 << 20, param: block }), { fields }), { code: ErrorCode.CORRUPT }, 'a size the file does not have');
  const s = await SharedState.open(plant(t, 'state', { magic: STATE_MAGIC, shape: hash, size: 4096, param: block }), { fields });
  t.same(s.read(), { a: 0 }, 'a well-formed planted state of ours opens');
  s.close();
});

t.test('a header that is never published, an empty file', async (t) => {
  await t.rejects(Mutex.open(plant(t, 'mutex', { magic: MUTEX_MAGIC, version: 0, shape: 1, size: 4096 })), { code: ErrorCode.CORRUPT });
  await t.rejects(Mutex.open(plant(t, 'mutex', { magic: 0, shape: 0, size: 0 }, 0)), { code: ErrorCode.CORRUPT });
});

t.test('a segment of ours that is group- or world-writable is refused unless perm allows it', async (t) => {
  const url = plant(t, 'mutex', { magic: MUTEX_MAGIC, shape: 1, size: 4096 }, 4096, 0o666);
  await t.rejects(Mutex.open(url), { code: ErrorCode.PERMISSION_DENIED });
  const m = await Mutex.open(url, { perm: 0o666 });
  t.same(m.tryLock(), { recovered: false });
  m.close();
});

t.test('a well-formed header in a segment far larger than its body: refused before it is mapped, no fd kept', async (t) => {
  const fds = () => readdirSync('/proc/self/fd').length;
  for (const bytes of [64 * 2 ** 20, 2 ** 40]) {
    const url = plant(t, 'mutex', { magic: MUTEX_MAGIC, shape: 1, size: lockBytes(1) });
    truncateSync(`/dev/shm/shmbus.mutex.${url.slice('shm://'.length)}`, bytes); // sparse: costs no memory
    const before = fds();
    await t.rejects(Mutex.open(url), { code: ErrorCode.CORRUPT }, `a mutex in ${bytes} bytes`);
    t.equal(fds(), before, 'its descriptor is closed');
  }
  const fields = { a: 'u32' } as const;
  const { hash, block } = layoutOf(fields);
  const url = plant(t, 'state', { magic: STATE_MAGIC, shape: hash, size: 4096, param: block });
  truncateSync(`/dev/shm/shmbus.state.${url.slice('shm://'.length)}`, 2 ** 30);
  await t.rejects(SharedState.open(url, { fields }), { code: ErrorCode.CORRUPT }, 'a state in 1 GiB');
});
