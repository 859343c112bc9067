/**
 * A listener the connector expects (same uid) that hands over the wrong thing: the connector checks what it is
 * given before it maps anything (finding: "the connector maps whatever segment name, path or shmid the listener
 * hands it"). The fake listener speaks the handshake by hand on the endpoint's control socket.
 */
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { connect, listen } from '../../transports/shm/index.js';
import { socketFd } from '../../host/control.js';
import { FD_BYTE } from '../../transports/shm/control.js';
import { sendFd } from '../../host/sys/socket.js';
import * as sys from '../../host/sys/shm.js';
import { CHANNEL_RING_COUNT, segmentBytes } from '../../assembly/layout.js';
import { F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, IPC_CREAT, IPC_PRIVATE, MFD_ALLOW_SEALING, MFD_CLOEXEC, O_CLOEXEC, O_CREAT, O_RDWR } from '../../host/sys/constants.js';
import { ErrorCode, ShmbusError } from '../../host/errors.js';
import { fileTimeout, unique, within } from '../helpers.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 60);

const CAPACITY = 64 * 1024;
const SIZE = segmentBytes(CHANNEL_RING_COUNT, CAPACITY);
const WATCHDOG = 30_000;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-handover-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

function memfdSegments(): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try { if (fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:')) n++; } catch { /* closed meanwhile */ }
  }
  return n;
}

interface Offer {
  scheme: 'shm' | 'file' | 'sysv';
  reply: Record<string, unknown>;
  /** The descriptor to pass when asked (closed by the fake afterwards), or 'none' to send the byte alone. */
  fd?: () => number | 'none';
}

/** Runs one connect against a fake listener making `offer`; resolves with the connector's error. */
async function against(offer: Offer): Promise<ShmbusError | undefined> {
  const name = unique('fake');
  const endpoint = offer.scheme === 'file' ? `${dir}/${name}` : offer.scheme === 'sysv' ? `0x${(0x5e000000 + (process.pid & 0xffff) * 16 + (Number(name.split('-').pop()) & 15)).toString(16)}` : name;
  const url = `${offer.scheme}://${offer.scheme === 'file' ? '' : ''}${endpoint}?size=64KiB`;
  const controlName = offer.scheme === 'sysv' ? `0x${Number(endpoint).toString(16)}` : endpoint;
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    let buffered = '';
    let state: 'hello' | 'ask' | 'done' = 'hello';
    socket.on('data', (d) => {
      buffered += d.toString();
      while (buffered.includes('\n')) {
        const line = buffered.slice(0, buffered.indexOf('\n'));
        buffered = buffered.slice(line.length + 1);
        if (state === 'hello') {
          state = 'ask';
          socket.write(JSON.stringify({ ok: true, size: SIZE, capacity: CAPACITY, wake: { mode: 'doorbell', params: {} }, ...offer.reply }) + '\n');
        } else if (state === 'ask' && JSON.parse(line).fd === true && offer.fd) {
          state = 'done';
          const fd = offer.fd();
          if (fd === 'none') socket.write(Buffer.from([FD_BYTE]));
          else { sendFd(socketFd(socket), fd, FD_BYTE); sys.closeFd(fd); }
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen({ path: `\0shmbus/${offer.scheme}/${controlName}` }, resolve));
  try {
    return await within(WATCHDOG, connect(url).then(async (c) => { await c.close(); return undefined; }, (e: ShmbusError) => e), 'connect to the fake');
  } finally {
    server.close();
  }
}

function memfd(seals: number, size = SIZE): number {
  const fd = sys.memfdCreate('shmbus.fake', MFD_CLOEXEC | MFD_ALLOW_SEALING);
  sys.ftruncate(fd, size);
  if (seals) sys.addSeals(fd, seals);
  return fd;
}
const SEALED = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

t.test('the connector refuses a descriptor that is not what it must be', async (t) => {
  const before = memfdSegments();
  const cases: Array<[string, Offer, string]> = [
    ['an unsealed memfd', { scheme: 'shm', reply: { kind: 'memfd' }, fd: () => memfd(0) }, ErrorCode.PERMISSION_DENIED],
    ['a memfd sealed only against shrinking', { scheme: 'shm', reply: { kind: 'memfd' }, fd: () => memfd(F_SEAL_SHRINK) }, ErrorCode.PERMISSION_DENIED],
    ['a sealed memfd of another size', { scheme: 'shm', reply: { kind: 'memfd' }, fd: () => memfd(SEALED, SIZE + 4096) }, ErrorCode.CORRUPT],
    ['a named file instead of a memfd', {
      scheme: 'shm', reply: { kind: 'memfd' },
      fd: () => { const p = path.join(dir, unique('named')); const fd = sys.openFile(p, O_RDWR | O_CREAT | O_CLOEXEC, 0o600); sys.ftruncate(fd, SIZE); return fd; },
    }, ErrorCode.PERMISSION_DENIED],
    ['a file segment that still has a name', {
      scheme: 'file', reply: { kind: 'file' },
      fd: () => { const p = path.join(dir, unique('named')); const fd = sys.openFile(p, O_RDWR | O_CREAT | O_CLOEXEC, 0o600); sys.ftruncate(fd, SIZE); return fd; },
    }, ErrorCode.PERMISSION_DENIED],
    ['the byte without a descriptor', { scheme: 'shm', reply: { kind: 'memfd' }, fd: () => 'none' }, ErrorCode.HANDSHAKE],
    ['another kind than the scheme means', { scheme: 'shm', reply: { kind: 'sysv', shmid: 0 } }, ErrorCode.HANDSHAKE],
    ['a capacity past the ring limit', { scheme: 'shm', reply: { kind: 'memfd', capacity: 2 ** 30, size: segmentBytes(CHANNEL_RING_COUNT, 2 ** 30) } }, ErrorCode.HANDSHAKE],
    ['a size that does not fit the rings', { scheme: 'shm', reply: { kind: 'memfd', size: SIZE * 4 } }, ErrorCode.HANDSHAKE],
  ];
  for (const [what, offer, code] of cases) {
    const error = await against(offer);
    t.equal(error?.code, code, `${what}: ${error?.message}`);
  }
  t.equal(memfdSegments(), before, 'every descriptor received was closed');
});

t.test('the connector refuses a System V segment the listener did not make or did not remove', async (t) => {
  // Not marked for removal (a segment that would outlive both sides).
  const kept = sys.shmGet(IPC_PRIVATE, SIZE, IPC_CREAT | 0o600);
  t.teardown(() => { try { sys.shmRemove(kept); } catch { /* gone */ } });
  const notRemoved = await against({ scheme: 'sysv', reply: { kind: 'sysv', shmid: kept } });
  t.equal(notRemoved?.code, ErrorCode.PERMISSION_DENIED, `not removed: ${notRemoved?.message}`);
  // Made by another process (ipcmk), though of our uid and the right size.
  const made = /id: (\d+)/.exec(execFileSync('ipcmk', ['-M', String(SIZE), '-p', '0600'], { encoding: 'utf8' }));
  const foreign = Number(made![1]);
  t.teardown(() => { try { sys.shmRemove(foreign); } catch { /* gone */ } });
  const notOurs = await against({ scheme: 'sysv', reply: { kind: 'sysv', shmid: foreign } });
  t.equal(notOurs?.code, ErrorCode.PERMISSION_DENIED, `another creator: ${notOurs?.message}`);
  // An id that is no segment at all.
  const missing = await against({ scheme: 'sysv', reply: { kind: 'sysv', shmid: 0x7ffffff0 } });
  t.equal(missing?.code, ErrorCode.NOT_FOUND, `no such segment: ${missing?.message}`);
  // Of another size than announced.
  const wrong = sys.shmGet(IPC_PRIVATE, SIZE + 4096, IPC_CREAT | 0o600);
  const at = sys.shmAttach(wrong, null, 0);
  sys.shmRemove(wrong);
  t.teardown(() => sys.shmDetach(at));
  const sized = await against({ scheme: 'sysv', reply: { kind: 'sysv', shmid: wrong } });
  t.equal(sized?.code, ErrorCode.CORRUPT, `wrong size: ${sized?.message}`);
});

t.test('options are checked: bad allow, expectUid and caps are typed errors', async (t) => {
  await t.rejects(listen(`shm://${unique('opt')}?allow=root`), { code: ErrorCode.BAD_URL });
  await t.rejects(listen(`shm://${unique('opt')}?allow=uid:x`), { code: ErrorCode.BAD_URL });
  await t.rejects(listen(`shm://${unique('opt')}`, { allow: 'gid:' }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(listen(`shm://${unique('opt')}`, { maxPending: 0 }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(listen(`shm://${unique('opt')}`, { maxConnections: 1.5 }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(connect(`shm://${unique('opt')}?expectUid=-1`), { code: ErrorCode.BAD_URL });
  await t.rejects(connect(`shm://${unique('opt')}`, { expectUid: -1 }), { code: ErrorCode.BAD_ARGUMENT });
  // A refused listen left no name behind: the same URL listens fine afterwards.
  const url = `shm://${unique('opt')}`;
  await t.rejects(listen(url, { maxPending: -1 }), { code: ErrorCode.BAD_ARGUMENT });
  const listener = await listen(url);
  await listener.close();
});
