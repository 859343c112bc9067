/**
 * The shm control plane against another local user (uid 65534, see asUnprivileged): it cannot squat an endpoint
 * we then talk to, cannot make a listener allocate anything, gets in only when `allow` says so, and then cannot
 * resize the segment it was handed. Also the bounds on unauthenticated work: pending handshakes, connections,
 * the handshake deadline, and a failed setup that must release its segment.
 */
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { listen, connect, type Listener } from '../../transports/shm/index.js';
import { listen as listenAny, connect as connectAny } from '../../index.js';
import { Region } from '../../host/region.js';
import { getEngine } from '../../host/engine.js';
import { ErrorCode, ShmbusError } from '../../host/errors.js';
import { Channel } from '../../transports/shm/channel.js';
import { fileTimeout, asUnprivileged, NOBODY, startFixture, unique, within, eventually } from '../helpers.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 120);

const attacker = asUnprivileged();
/** The prefix that runs a child as the attacker; the tests that use it are skipped (with the reason) otherwise. */
const SKIP = { skip: 'skip' in attacker ? attacker.skip : false };
const PREFIX = 'prefix' in attacker ? attacker.prefix : [];
const WATCHDOG = 60_000;

/** Our own descriptors whose link matches `pattern`. */
function descriptors(pattern: RegExp): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try { if (pattern.test(fs.readlinkSync(`/proc/self/fd/${fd}`))) n++; } catch { /* closed meanwhile */ }
  }
  return n;
}
/** shmbus memfd segments we hold. */
const memfdSegments = () => descriptors(/^\/memfd:shmbus\./);
/** Unnamed files we hold in the temporary directory (file: segments; O_TMPFILE shows as `#<inode> (deleted)`). */
const TMP_FILE = new RegExp(`^${os.tmpdir().replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/.* \\(deleted\\)$`);
const unnamedFiles = () => descriptors(TMP_FILE);

/** System V segments this process created that still exist (/proc/sysvipc/shm, column cpid). */
function sysvSegments(pid = process.pid): string[] {
  return fs.readFileSync('/proc/sysvipc/shm', 'utf8').split('\n').slice(1).filter((l) => l.trim().split(/\s+/)[4] === String(pid));
}

function shmFiles(): string[] {
  return fs.readdirSync('/dev/shm').filter((f) => f.includes('shmbus') && f.includes(String(process.pid)));
}

/** Everything a listener in this process could have allocated for a connection. */
function allocations(): { memfds: number; unnamed: number; sysv: number; files: string[] } {
  return { memfds: memfdSegments(), unnamed: unnamedFiles(), sysv: sysvSegments().length, files: shmFiles() };
}

function urlFor(scheme: 'shm' | 'sysv' | 'file', name: string, query = 'size=64KiB'): string {
  if (scheme === 'shm') return `shm://${name}?${query}`;
  if (scheme === 'sysv') return `sysv://0x${(0x5c000000 + ((process.pid & 0xffff) << 8) + (Number(name.split('-').pop()) & 0xff)).toString(16)}?${query}`;
  return `file://${os.tmpdir()}/${name}?${query}`;
}

/** The next 'error' the listener emits. */
function nextError(listener: Listener): Promise<ShmbusError> {
  return new Promise((resolve) => listener.once('error', resolve));
}

t.test('a squatter holding the endpoint name: listen fails EXISTS, connect fails PERMISSION_DENIED naming its uid and sends it nothing', SKIP, async (t) => {
  const name = unique('squat');
  const squatter = startFixture(t, 'attacker', ['squat', `shmbus/shm/${name}`], { prefix: PREFIX });
  await squatter.line('listening');

  const listenError = await listen(`shm://${name}`).then(() => undefined, (e: ShmbusError) => e);
  t.equal(listenError?.code, ErrorCode.EXISTS);

  const connectError = await within(WATCHDOG, connect(`shm://${name}`).then(() => undefined, (e: ShmbusError) => e), 'connect to the squatter');
  t.equal(connectError?.code, ErrorCode.PERMISSION_DENIED);
  t.equal(connectError?.details.peerUid, NOBODY, 'the error names the uid found');
  t.match(connectError?.message, /uid 65534/);
  await squatter.line('closed 0 bytes');
  t.notOk(squatter.stdout().includes('got '), 'not a byte reached the squatter');
});

t.test('a connector that is not allowed is refused before anything is allocated', SKIP, async (t) => {
  for (const scheme of ['shm', 'sysv', 'file'] as const) {
    const url = urlFor(scheme, unique('refuse'));
    const listener = await listen(url);
    t.teardown(() => listener.close());
    const before = allocations();
    const refused = nextError(listener);
    const peer = startFixture(t, 'attacker', ['connect', url], { prefix: PREFIX });
    const error = await within(WATCHDOG, refused, 'the listener to refuse');
    t.equal(error.code, ErrorCode.PERMISSION_DENIED, `${scheme}: listener refused`);
    t.equal(error.details.peerUid, NOBODY);
    t.same(allocations(), before, `${scheme}: nothing was allocated for it`);
    t.same(listener.load, { pending: 0, connections: 0 });
    t.match(await peer.line(/^refused/), /^refused ERR_SHMBUS_PERMISSION_DENIED/, `${scheme}: the attacker was told no`);
    await listener.close();
  }
});

t.test('connections refused on arrival give their descriptors back, and one that never hangs up is cut off', SKIP, async (t) => {
  const name = unique('knock');
  const listener = await listen(`shm://${name}`, { handshakeTimeout: 300 });
  t.teardown(() => listener.close());
  let refused = 0;
  listener.on('error', () => { refused++; });
  // Sockets bound to the endpoint's name (/proc/net/unix): the listening one and every connection it accepted and
  // still holds. Counting our own descriptors instead would also count the fixtures' stdio pipes.
  const sockets = () => fs.readFileSync('/proc/net/unix', 'latin1').split('\n')
    .filter((line) => line.split(/\s+/)[7]?.replace(/@+$/, '') === `@shmbus/shm/${name}`).length;
  const before = sockets();
  t.equal(before, 1, 'the listening socket alone');
  const knocker = startFixture(t, 'attacker', ['knock', `shmbus/shm/${name}`, '20'], { prefix: PREFIX });
  t.equal(await knocker.line(/^knocked/), 'knocked 20 20', 'each of 20 connections was told no, then hung up');
  // Each refused socket closes when it reads the connector's end of file (before, one stayed open per refusal).
  await eventually(() => sockets() === before, 'the refused connections to close', WATCHDOG).catch(() => {});
  t.equal(sockets(), before, 'no descriptor kept for a refused connection');
  t.equal(refused, 20, 'the listener reported every refusal');
  const lingerer = startFixture(t, 'attacker', ['linger', `shmbus/shm/${name}`], { prefix: PREFIX });
  await lingerer.line('answered');
  await eventually(() => sockets() === before, 'the lingering connection to be cut off after the handshake timeout', WATCHDOG).catch(() => {});
  t.equal(sockets(), before, 'a refused connector that never hangs up does not keep a descriptor');
});

t.test('refused connectors that do not hang up hold at most maxPending of the listener\'s descriptors', SKIP, async (t) => {
  const name = unique('linger-many');
  // A deadline no test waits for: what is counted is what the listener keeps meanwhile.
  const listener = await listen(`shm://${name}`, { maxPending: 2, handshakeTimeout: 60_000 });
  t.teardown(() => listener.close());
  listener.on('error', () => {});
  const sockets = () => fs.readFileSync('/proc/net/unix', 'latin1').split('\n')
    .filter((line) => line.split(/\s+/)[7]?.replace(/@+$/, '') === `@shmbus/shm/${name}`).length;
  const lingerer = startFixture(t, 'attacker', ['linger', `shmbus/shm/${name}`, '6'], { prefix: PREFIX });
  // Each of the six was told why or closed at once; the attacker keeps all six descriptors open.
  t.equal(await lingerer.line(/^answered/), 'answered 2', 'the first two were told why, the rest closed at once');
  t.equal(sockets(), 1 + 2, 'the listening socket and two refused ones, not six');
});

t.test('a peer of another uid that `allow` admits connects and works (uid and gid rules)', SKIP, async (t) => {
  // The last case runs the peer with a supplementary group (SO_PEERGROUPS), the others with none.
  const withGroup = PREFIX.map((a) => (a === '--clear-groups' ? '--groups=4242' : a));
  const cases = [['shm', 'uid:65534', PREFIX], ['sysv', `uid:${NOBODY}`, PREFIX], ['file', `uid:${NOBODY}`, PREFIX],
    ['shm', `gid:${NOBODY}`, PREFIX], ['sysv', 'any', PREFIX], ['shm', 'gid:4242', withGroup]] as const;
  for (const [scheme, allow, prefix] of cases) {
    const url = urlFor(scheme, unique('allow'));
    const listener = await listen(url, { allow });
    const accepted = listener.acceptNext();
    startFixture(t, 'attacker', ['connect', url], { prefix: [...prefix] });
    const channel = await within(WATCHDOG, accepted, `${scheme} allow=${allow}: the connection`) as Channel;
    t.same(await within(WATCHDOG, channel.receive(), 'its message'), { after: 'connect' }, `${scheme} allow=${allow}: message arrived`);
    await channel.close();
    await listener.close();
  }
});

t.test('an allowed peer of another uid that knows the listener brings a segment of its own, and it works', SKIP, async (t) => {
  const url = urlFor('shm', unique('allow-own'));
  const listener = await listen(url, { allow: `uid:${NOBODY}` });
  t.teardown(() => listener.close());
  startFixture(t, 'attacker', ['connect-again', url], { prefix: PREFIX });
  // The first connection is the full handshake; the peer closes it and connects again with its own memfd.
  await (await within(WATCHDOG, listener.acceptNext(), 'the first connection'))!.close();
  const channel = await within(WATCHDOG, listener.acceptNext(), 'the second connection') as Channel;
  t.same(await within(WATCHDOG, channel.receive(), 'its message'), { after: 'connect-again' }, 'a message over the segment the peer made');
  await channel.close();
});

t.test('an allowed peer cannot resize the sealed memfd it was handed (no SIGBUS for us)', SKIP, async (t) => {
  const url = urlFor('shm', unique('resize'));
  const listener = await listen(url, { allow: `uid:${NOBODY}` });
  t.teardown(() => listener.close());
  const accepted = listener.acceptNext();
  const peer = startFixture(t, 'attacker', ['resize', url], { prefix: PREFIX });
  const channel = await within(WATCHDOG, accepted, 'the connection') as Channel;
  t.equal(await peer.line(/^ftruncate/), 'ftruncate 1', 'ftruncate: EPERM');
  t.equal(await peer.line(/^fallocate/), 'fallocate 1', 'fallocate past the end: EPERM');
  t.equal(await peer.line(/^seal/), 'seal 1', 'no further seal: EPERM');
  t.match(await peer.line(/^size/), /^size (\d+) \1$/, 'size unchanged');
  t.same(await within(WATCHDOG, channel.receive(), 'its message'), { after: 'resize' }, 'the channel still works');
  await channel.close();
});

t.test('the connector checks the listener: default own uid or root, expectUid names another', SKIP, async (t) => {
  const url = urlFor('shm', unique('expect'));
  const other = startFixture(t, 'handshake-peer', ['listen', url], { prefix: PREFIX });
  await other.line('listening');
  const denied = await connect(url).then(() => undefined, (e: ShmbusError) => e);
  t.equal(denied?.code, ErrorCode.PERMISSION_DENIED, 'a listener of another uid is refused by default');
  t.equal(denied?.details.peerUid, NOBODY);
  const wrong = await connect(url, { expectUid: 4242 }).then(() => undefined, (e: ShmbusError) => e);
  t.equal(wrong?.code, ErrorCode.PERMISSION_DENIED, 'expectUid is exact');
  const channel = await within(WATCHDOG, connect(`${url}&expectUid=${NOBODY}`), 'connect with expectUid');
  channel.send({ ping: 1 });
  t.same(await within(WATCHDOG, channel.receive(), 'the echo'), { ping: 1 });
  await channel.close();
});

t.test('unix: both ends check SO_PEERCRED too (abstract names have no permissions)', SKIP, async (t) => {
  const name = unique('unix-squat');
  const squatter = startFixture(t, 'attacker', ['squat', name], { prefix: PREFIX });
  await squatter.line('listening');
  const denied = await connectAny(`unix://@${name}`).then(() => undefined, (e: ShmbusError) => e);
  t.equal(denied?.code, ErrorCode.PERMISSION_DENIED, 'a squatted unix endpoint is refused');
  t.equal(denied?.details.peerUid, NOBODY);
  await squatter.line('closed 0 bytes');

  const url = `unix://@${unique('unix-listen')}`;
  const listener = await listenAny(url);
  t.teardown(() => listener.close());
  const refused = new Promise<ShmbusError>((resolve) => listener.once('error', resolve));
  startFixture(t, 'attacker', ['connect', url], { prefix: PREFIX });
  const error = await within(WATCHDOG, refused, 'the unix listener to refuse');
  t.equal(error.code, ErrorCode.PERMISSION_DENIED);
  t.equal(error.details.peerUid, NOBODY);

  const open = await listenAny(`unix://@${unique('unix-allow')}`, { allow: `uid:${NOBODY}` });
  t.teardown(() => open.close());
  const accepted = open.acceptNext();
  startFixture(t, 'attacker', ['connect', open.url], { prefix: PREFIX });
  const conn = await within(WATCHDOG, accepted, 'the allowed connection');
  t.same(await within(WATCHDOG, conn!.receive(), 'its message'), { after: 'connect' });
  await conn!.close();
});

// ---- bounded work; these need no second user

t.test('handshakes in progress are capped (maxPending) and each has a deadline', async (t) => {
  const url = urlFor('shm', unique('pending'));
  const listener = await listen(url, { maxPending: 2, handshakeTimeout: 5000 });
  t.teardown(() => listener.close());
  const errors: ShmbusError[] = [];
  listener.on('error', (e: ShmbusError) => errors.push(e));
  const path = `\0shmbus/shm/${url.slice(6, url.indexOf('?'))}`;
  const silent = (): Promise<{ socket: net.Socket; closed: Promise<string> }> => new Promise((resolve, reject) => {
    const socket = net.connect({ path });
    let got = '';
    socket.on('data', (d) => { got += d.toString(); });
    const closed = new Promise<string>((r) => socket.on('close', () => r(got)));
    socket.once('connect', () => resolve({ socket, closed }));
    socket.once('error', reject);
  });
  const a = await silent();
  const b = await silent();
  await eventually(() => listener.load.pending === 2, 'two handshakes pending');
  const c = await silent();
  t.equal(await within(WATCHDOG, c.closed, 'the third to be closed'), '', 'over the cap: closed at once, nothing said');
  t.equal(listener.load.pending, 2);
  // The two silent ones run into the handshake deadline and are told so.
  t.match(await within(WATCHDOG, a.closed, 'the deadline'), /ERR_SHMBUS_TIMEOUT/);
  t.match(await within(WATCHDOG, b.closed, 'the deadline'), /ERR_SHMBUS_TIMEOUT/);
  await eventually(() => listener.load.pending === 0, 'no handshake pending');
  t.ok(errors.every((e) => e.code === ErrorCode.TIMEOUT), 'the listener reported the timeouts');
  t.same(allocations().files, []);
});

t.test('connections per listener are capped (maxConnections)', async (t) => {
  const url = urlFor('shm', unique('conns'));
  const listener = await listen(url, { maxConnections: 1 });
  t.teardown(() => listener.close());
  listener.on('error', () => {});
  const first = await connect(url);
  const server = (await listener.acceptNext())!;
  const second = await connect(url).then(() => undefined, (e: ShmbusError) => e);
  t.equal(second?.code, ErrorCode.LIMIT, 'over the cap: LIMIT');
  await first.close();
  await server.close();
  await eventually(() => listener.load.connections === 0, 'the closed connection to be counted out');
  const third = await connect(url);
  await third.close();
});

t.test('a setup that fails after creating the segment releases it (window allocation, mapping)', async (t) => {
  const engine = getEngine();
  const originalMap = Region.prototype.mapAt;
  const originalAlloc = engine.allocWindow;
  t.teardown(() => { Region.prototype.mapAt = originalMap; engine.allocWindow = originalAlloc; });
  const forced = () => new ShmbusError(ErrorCode.LIMIT, 'forced failure');
  // Each failure hits the listener only: it is armed once the connector's part is done (the listener maps
  // first, before it replies), and disarmed by the first call.
  const failures: Record<string, () => void> = {
    window: () => { engine.allocWindow = function () { engine.allocWindow = originalAlloc; throw forced(); }; },
    mapping: () => {
      Region.prototype.mapAt = function (this: Region, addr: bigint) {
        Region.prototype.mapAt = originalMap;
        if (this.created) throw forced();
        return originalMap.call(this, addr);
      };
    },
  };
  for (const [what, arm] of Object.entries(failures)) {
    for (const scheme of ['shm', 'sysv', 'file'] as const) {
      const url = urlFor(scheme, unique('fail'), 'size=1MiB');
      const listener = await listen(url);
      const failed = nextError(listener);
      const before = allocations();
      arm();
      const error = await connect(url).then(() => undefined, (e: ShmbusError) => e);
      Region.prototype.mapAt = originalMap;
      engine.allocWindow = originalAlloc;
      t.equal(error?.code, ErrorCode.LIMIT, `${what}, ${scheme}: the connector is told why`);
      t.equal((await failed).code, ErrorCode.LIMIT);
      t.same(allocations(), before, `${what}, ${scheme}: the segment was released`);
      await listener.close();
    }
  }
});
