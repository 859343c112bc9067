/**
 * A shm:// listener's spare segments (transports/shm/pool.ts): made only after a connection opened, only while no
 * handshake is in progress, at most a few,
 * each handed out once, all closed with the listener; a making that meets a full file system fails there, typed,
 * and leaves nothing.
 */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { listen, connect, type Listener, type Channel } from '../transports/shm/index.js';
import { REFILL_DELAY_MS, SegmentPool } from '../transports/shm/pool.js';
import { Region } from '../host/region.js';
import { ErrorCode, ShmbusError } from '../host/errors.js';
import { eventually, fileTimeout, startFixture, unique, within } from './helpers.js';

fileTimeout(t, 60);

const KiB = 1024;
/** The listener's bound (transports/shm/listener.ts SPARE_SEGMENTS). */
const SPARES = 4;

/** Our descriptors of memfds made for endpoint `name`. */
function memfds(name: string): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try { if (fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(`/memfd:shmbus.${name} `)) n++; } catch { /* closed meanwhile */ }
  }
  return n;
}

async function pair(listener: Listener, url: string): Promise<[Channel, Channel]> {
  const [c, s] = await Promise.all([connect(url), listener.acceptNext()]);
  if (!s) throw new Error('listener closed');
  return [c, s as Channel];
}

t.test('spares are made after a connection opened, up to the bound, each handed out once, and closed with the listener', async (t) => {
  const name = unique('pool');
  const url = `shm://${name}`;
  const fds0 = fs.readdirSync('/proc/self/fd').length;
  const listener = await listen(url);
  let closed = false;
  t.teardown(() => (closed ? undefined : listener.close()));
  t.equal(listener.spareSegments, 0, 'a listener that opened no connection holds no spare');
  t.equal(memfds(name), 0, 'and no memfd');

  const pairs: Array<[Channel, Channel]> = [await pair(listener, url)];
  await eventually(() => listener.spareSegments === SPARES, `${SPARES} spares made`);
  t.equal(listener.spareSegments, SPARES, `after the first connection the listener makes ${SPARES} spares`);
  // The connection's own segment has no descriptor left once both sides mapped it: every memfd is a spare.
  t.equal(memfds(name), SPARES, 'each spare is one memfd of ours');

  // A burst of more connections than there are spares, opened at once: some get spares, the rest make their own.
  const burst = await Promise.all(Array.from({ length: SPARES + 3 }, () => pair(listener, url)));
  pairs.push(...burst);
  // Were a segment handed out twice, two connections would share rings and read each other's messages.
  for (const [i, [c]] of pairs.entries()) c.send({ i });
  for (const [i, [, s]] of pairs.entries()) t.same(await s.receive(), { i }, `connection ${i} carries its own message`);
  for (const [i, [, s]] of pairs.entries()) s.send({ back: i });
  for (const [i, [c]] of pairs.entries()) t.same(await c.receive(), { back: i }, `connection ${i} carries its own reply`);
  await eventually(() => listener.spareSegments === SPARES && memfds(name) === SPARES, 'spares made again, no more');
  t.equal(memfds(name), SPARES, 'after the burst the listener holds its spares again, and no more memfds');

  await Promise.all(pairs.flatMap(([c, s]) => [c.close(), s.close()]));
  await listener.close();
  closed = true;
  t.equal(listener.spareSegments, 0, 'a closed listener holds no spare');
  t.equal(memfds(name), 0, 'every spare memfd is closed with the listener');
  // Sockets close on a later turn of the loop.
  await eventually(() => fs.readdirSync('/proc/self/fd').length <= fds0, 'descriptors given back');
  t.ok(fs.readdirSync('/proc/self/fd').length <= fds0, 'no descriptor left open');
});

t.test('a listener closed before its first spare is made makes none', async (t) => {
  const name = unique('pool-close');
  const url = `shm://${name}`;
  const listener = await listen(url);
  const [c, s] = await pair(listener, url);
  // The first making is scheduled REFILL_DELAY_MS after the connection opened: close before it runs.
  t.equal(listener.spareSegments, 0, 'no spare made yet in the turn the connection opened');
  const closing = listener.close();
  await closing;
  await Promise.all([c.close(), s.close()]);
  // A timer set now expires after the refill timer the connection scheduled (REFILL_DELAY_MS from its open), and
  // Node runs timers in order of expiry: had close not cancelled that one, it would have run by then.
  await new Promise((r) => setTimeout(r, REFILL_DELAY_MS + 1));
  t.equal(listener.spareSegments, 0, 'no spare after close');
  t.equal(memfds(name), 0, 'no memfd after close');
});

t.test('no spare is made while the listener says it is busy (a handshake in progress)', async (t) => {
  let busy = true;
  let asked = 0;
  const pool = new SegmentPool(() => Region.createMemfd(`shmbus.${unique('pool-idle')}`, { size: 64 * KiB }), 2, () => { asked++; return !busy; });
  t.teardown(() => pool.close());
  pool.refill();
  await eventually(() => asked >= 3, 'the pool asked three times');
  t.equal(pool.size, 0, 'nothing made while busy');
  t.ok(pool.refilling, 'it keeps looking');
  busy = false;
  await eventually(() => !pool.refilling, 'the pool stops making');
  t.equal(pool.size, 2, 'made up to its bound once idle');
  const a = pool.take()!;
  const b = pool.take()!;
  t.not(fs.fstatSync(a.fd).ino, fs.fstatSync(b.fd).ino, 'two different segments');
  t.equal(pool.take(), undefined, 'and no third');
  a.close();
  b.close();
});

t.test('fillWhileWaiting makes one spare when there is none, and nothing otherwise', async (t) => {
  let made = 0;
  let fail = false;
  const pool = new SegmentPool(() => {
    if (fail) throw new ShmbusError(ErrorCode.NO_SPACE, 'full');
    made++;
    return Region.createMemfd(`shmbus.${unique('pool-fill')}`, { size: 64 * KiB });
  }, 4, () => false);
  t.teardown(() => pool.close());
  pool.fillWhileWaiting();
  t.equal(pool.size, 1, 'one made at once');
  pool.fillWhileWaiting();
  t.equal(made, 1, 'none while one is spare');
  pool.take()!.close();
  fail = true;
  t.doesNotThrow(() => pool.fillWhileWaiting(), 'a failed making is not the caller\'s error');
  t.equal(pool.size, 0);
  fail = false;
  pool.close();
  pool.fillWhileWaiting();
  t.equal(made, 1, 'none once closed');
});

t.test('a connector in another process: the listener makes the next segment while it waits for its last line', async (t) => {
  const name = unique('pool-other');
  const url = `shm://${name}`;
  const listener = await listen(url);
  t.teardown(() => listener.close());
  startFixture(t, 'grow-echo', [url]);
  const channel = await within(30_000, listener.acceptNext(), 'the connector') as Channel;
  t.teardown(() => channel.close());
  // The idle refill waits REFILL_DELAY_MS after the connection opened: this spare was made during its handshake.
  t.equal(listener.spareSegments, 1, 'a spare is there as the connection is handed out');
  // One in this process: no spare is made on its path (its own side would wait for it).
  const name2 = unique('pool-same');
  const local = await listen(`shm://${name2}`);
  t.teardown(() => local.close());
  const [c, s] = await pair(local, `shm://${name2}`);
  t.teardown(async () => { await c.close(); await s.close(); });
  t.equal(local.spareSegments, 0, 'none for a connector in this process');
});

// A 1 MiB tmpfs to fill up. Mounting needs CAP_SYS_ADMIN; without it, skipped.
const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-pool-'));
const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'none', mnt]).status === 0;
t.teardown(() => {
  if (mounted) spawnSync('umount', ['-l', mnt]);
  fs.rmSync(mnt, { recursive: true, force: true });
});

t.test('a pool meeting a full file system: the making fails there with NO_SPACE, spares are whole, nothing is left', { skip: !mounted && 'cannot mount a tmpfs here (needs CAP_SYS_ADMIN)' }, async (t) => {
  // Four reserved 256 KiB segments fill the 1 MiB tmpfs: the fifth making must fail, typed.
  const errors: unknown[] = [];
  const pool = new SegmentPool(() => {
    try {
      return Region.createAnonymousFile(mnt, { size: 256 * KiB });
    } catch (error) {
      errors.push(error);
      throw error;
    }
  }, 8);
  t.teardown(() => pool.close());
  pool.refill();
  await eventually(() => !pool.refilling, 'the pool stops making');
  t.equal(pool.size, 4, 'as many spares as the file system holds');
  t.equal(errors.length, 1, 'one making failed, and the pool stopped there');
  t.equal((errors[0] as ShmbusError).code, ErrorCode.NO_SPACE, 'a full file system fails the making with NO_SPACE');
  const { bfree } = fs.statfsSync(mnt);
  t.equal(bfree, 0, 'the spares hold every block: their pages are reserved, not promised');

  const taken: Region[] = [];
  for (let r = pool.take(); r !== undefined; r = pool.take()) taken.push(r);
  t.equal(taken.length, 4, 'each spare is handed out');
  t.equal(new Set(taken.map((r) => fs.fstatSync(r.fd).ino)).size, 4, 'and no segment twice');
  t.equal(pool.size, 0, 'a spare handed out is no longer the pool\'s');
  // A spare's pages can be written end to end: no SIGBUS on a reserved segment.
  for (const r of taken) fs.writeSync(r.fd, Buffer.alloc(256 * KiB, 1), 0, 256 * KiB, 0);
  for (const r of taken) r.close();
  t.equal(fs.statfsSync(mnt).bfree, fs.statfsSync(mnt).blocks, 'every block is free again once the taker closed them');

  // Refilled and closed: close frees them all.
  pool.refill();
  await eventually(() => !pool.refilling, 'the pool stops making');
  t.equal(pool.size, 4, 'refilled to what fits');
  pool.close();
  t.equal(pool.size, 0, 'close drops every spare');
  t.equal(fs.statfsSync(mnt).bfree, fs.statfsSync(mnt).blocks, 'and frees their blocks');
  pool.refill();
  t.notOk(pool.refilling, 'a closed pool makes nothing more');
  t.same(fs.readdirSync(mnt), [], 'nothing in the file system');
});
