// Wake mechanisms: every `wake=` mode carries every wakeup (two processes, random pauses on both sides), idle
// channels cost nothing and never hold a threadpool thread, a killed peer is noticed while parked, the process
// exits by itself, kernel refusals and bad peers are typed errors, and nothing is left behind.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, promises as fsp } from 'node:fs';
import net from 'node:net';
import { listen, connect, ErrorCode, type Channel, type ShmUrl } from '../index.js';
import { wakeStats, mechanismFor, type BellContext } from '../host/wake/index.js';
import { reapDeadWakeObjects } from '../host/wake/reap.js';
import { sendStream, receiveStream, mulberry32 } from './fixtures/stream.js';
import { readLine, writeLine } from '../transports/shm/control.js';
import { LAYOUT_VERSION } from '../assembly/layout.js';
import { eventually, fileTimeout, mqueueDir, scaled, SCALE, startFixture, unique, within, type TestLike } from './helpers.js';

let serial = 0;

/** Every mode `wake=` accepts; the first three need no kernel object of their own. */
const MODES = ['spin', 'adaptive', 'doorbell', 'futex', 'sem', 'sysvsem', 'signal', 'mq'] as const;
/** The modes that park on a mechanism of host/wake (which counts its wakeups). */
const KERNEL_MODES = ['futex', 'sem', 'sysvsem', 'signal', 'mq'] as const;
const PARKING_MODES = MODES.filter((m) => m !== 'spin');

// --- what the tests must leave behind: nothing -----------------------------------------------------------------------

/** Processes whose wake objects and segments this file answers for: itself and the peers it started. */
const ours = new Set<number>([process.pid]);

/** Segments and wake objects of our processes (other test files may run at the same time: theirs are not ours). */
function leftovers(): string[] {
  const mine = (name: string) => [...ours].some((pid) => name.includes(`-${pid}-`) || name.includes(`.${pid}.`));
  const shm = readdirSync('/dev/shm').filter((f) => (f.startsWith('shmbus') || f.startsWith('sem.shmbus')) && mine(f));
  const mqueue = mqueueDir();
  const mq = mqueue === undefined ? [] : readdirSync(mqueue).filter((f) => f.startsWith('shmbus') && mine(f));
  // System V: the wake sets' keys carry the pid (0xb5000000 | pid), the channel segments are IPC_PRIVATE.
  const keys = new Set([...ours].map((pid) => '0x' + ((0xb5000000 | (pid & 0xffffff)) >>> 0).toString(16).padStart(8, '0')));
  const ipcs = execFileSync('ipcs', ['-s'], { encoding: 'utf8' }).split('\n').filter((l) => keys.has(l.split(/\s+/)[0]!));
  return [...shm.map((f) => `/dev/shm/${f}`), ...mq.map((f) => `/dev/mqueue/${f}`), ...ipcs.map((l) => `ipcs: ${l.trim()}`)];
}

const before = leftovers();
t.afterEach(async (sub) => {
  // Wake objects go away when their last channel closes; a thread being stopped finishes a moment later.
  await eventually(() => leftovers().length <= before.length, 'wake objects to go away').catch(() => {});
  t.same(leftovers(), before, `nothing left behind by: ${sub.name}`);
});

/** test/fixtures/wake-peer.ts with `args`, killed at the end of `t` at the latest; its objects count as ours. */
function startPeer(t: TestLike, args: string[], opts: { prefix?: string[] } = {}) {
  const child = startFixture(t, 'wake-peer', args, { prefix: opts.prefix });
  ours.add(child.pid);
  return { child, exit: child.exit.then((e) => e.code), stdout: () => child.stdout(), stderr: () => child.stderr() };
}

function threadCount(): number {
  return readdirSync('/proc/self/task').length;
}

/** Each thread's name (`comm`) and the system call it is in (449 futex_waitv, 281 epoll_pwait, …), by tid: what a
 * count that came out wrong names. */
function threadNames(): Map<string, string> {
  const out = new Map<string, string>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const syscall = readFileSync(`/proc/self/task/${tid}/syscall`, 'latin1').split(' ')[0];
      out.set(tid, `${readFileSync(`/proc/self/task/${tid}/comm`, 'latin1').trim()} in syscall ${syscall}`);
    } catch { /* the thread ended */ }
  }
  return out;
}

/** The scheduler state of each thread of this process ('R' running or runnable, 'S' asleep, …), by tid. */
function threadStates(): Map<string, string> {
  const out = new Map<string, string>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'latin1');
      out.set(tid, stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!);
    } catch { /* the thread ended */ }
  }
  return out;
}

// --- no lost wakeups -------------------------------------------------------------------------------------------------

/** Records per mode in the lossless test: 1,000,000 at stress scale (a multiple of 4: the peer sends back a quarter). */
const TOTAL = scaled(250_000) * 4;
const BACK = TOTAL / 4;
// Measured on a busy 2-core machine (load 10-20): ~120 s at scale 1, of which ~30 s scale (eight modes x 100,000
// records). Timeout: 4x that.
fileTimeout(t, 360, 110);

for (const mode of MODES) {
  t.test(`wake=${mode}: ${TOTAL} messages with random pauses on both sides, none lost`, async (t) => {
    // A small ring, so writers fill it and park for room while readers pause, and readers park for data while
    // writers pause: both directions, both kinds of wait, on both sides.
    const url = `shm://${unique(`lossless-${mode}`)}?size=4KiB&wake=${mode}` as ShmUrl;
    const seed = (process.pid * 31 + serial) >>> 0;
    const statsBefore = wakeStats()[mode];
    const listener = await listen(url);
    const peer = startPeer(t, [url, 'stream', String(TOTAL), String(seed)]);
    const conn = await within(60_000, listener.acceptNext(), () => `accept (${peer.stderr()})`).catch(async (e: unknown) => {
      await listener.close();
      throw e;
    }) as Channel;
    // On failure: no hang, and nothing left (the peer is killed, our side closed, its wake object reaped).
    t.teardown(async () => {
      peer.child.kill();
      await peer.exit;
      await conn.close();
      await listener.close();
      reapDeadWakeObjects();
    });
    const progress = { sent: 0, received: 0 };
    const [, got] = await within(Number(process.env.WAKE_WATCHDOG_MS ?? 90_000 * Math.max(1, SCALE)), Promise.all([
      sendStream(conn, TOTAL, mulberry32(seed + 2), progress),
      receiveStream(conn, BACK, mulberry32(seed + 3), true, progress),
    ]), () => `wake=${mode} seed=${seed} stalled: sent ${progress.sent}/${TOTAL}, received ${progress.received}/${BACK}, ` +
      `stats ${JSON.stringify(wakeStats()[mode])}; peer: ${peer.stderr()}`);
    const verdict = got.verdict as { received: number; bad: number; sent: number; stats: Record<string, { parks: number; wakes: number; fallbacks: number }> };
    t.same({ received: verdict.received, bad: verdict.bad }, { received: TOTAL, bad: 0 }, 'the peer got every record, in order');
    t.same({ received: got.received, bad: got.bad }, { received: BACK, bad: 0 }, 'we got every record the peer sent, in order');
    t.equal(await within(30_000, peer.exit, () => 'peer exit'), 0, peer.stderr());
    if ((KERNEL_MODES as readonly string[]).includes(mode)) {
      // The mechanism really carried the wakeups (with it broken, a parked side would only wake through the
      // socket's end, and this test would time out): in both processes, for both kinds of wait.
      const mine = wakeStats()[mode]!;
      const wakes = mine.wakes - (statsBefore?.wakes ?? 0);
      const theirs = verdict.stats[mode]!;
      // How many times depends on the machine's timing; that it happened at all is the point.
      t.ok(wakes > 0, `we woke ${wakes} times through ${mode}`);
      t.ok(theirs.wakes > 0, `the peer woke ${theirs.wakes} times through ${mode}`);
      t.comment(`${mode}: parks here ${mine.parks - (statsBefore?.parks ?? 0)}, there ${theirs.parks}; fallbacks to the socket: ${mine.fallbacks - (statsBefore?.fallbacks ?? 0)} + ${theirs.fallbacks}`);
    }
  });
}

t.test('wake=signal: when the signal queue is full (RLIMIT_SIGPENDING), rings fall back to the doorbell and none is lost', async (t) => {
  // The peer may have no queued signal pending at all: every signal we send it fails with EAGAIN.
  const url = `shm://${unique('sigpending')}?size=4KiB&wake=signal` as ShmUrl;
  const count = scaled(1_000_000);
  const statsBefore = wakeStats().signal;
  const listener = await listen(url);
  const peer = startPeer(t, [url, 'stream', String(count), '7'], { prefix: ['prlimit', '--sigpending=0'] });
  const conn = await within(60_000, listener.acceptNext(), () => `accept (${peer.stderr()})`) as Channel;
  t.teardown(async () => {
    peer.child.kill();
    await peer.exit;
    await conn.close();
    await listener.close();
  });
  const progress = { sent: 0, received: 0 };
  const [, got] = await within(60_000 * Math.max(1, SCALE), Promise.all([
    sendStream(conn, count, mulberry32(9), progress),
    receiveStream(conn, count / 4, mulberry32(10), true, progress),
  ]), () => `stalled: sent ${progress.sent}, received ${progress.received}, stats ${JSON.stringify(wakeStats().signal)}`);
  const verdict = got.verdict as { received: number; bad: number; stats: Record<string, { wakes: number }> };
  t.same({ received: verdict.received, bad: verdict.bad }, { received: count, bad: 0 }, 'the peer got every record');
  t.same({ received: got.received, bad: got.bad }, { received: count / 4, bad: 0 }, 'we got every record');
  const fallbacks = wakeStats().signal!.fallbacks - (statsBefore?.fallbacks ?? 0);
  t.ok(fallbacks > 0, `${fallbacks} rings to the peer went to the doorbell instead`);
  t.equal(await within(30_000, peer.exit, () => 'peer exit'), 0, peer.stderr());
});

// --- idle channels ---------------------------------------------------------------------------------------------------

// What a parked channel costs while idle (CPU share, wakeups) is measured by bench/idle.ts; here only what does not
// depend on the machine's speed: the wait threads are few, asleep, and leave the threadpool alone.
/** Wait threads (host/wake/thread.ts) the modes that have them run for one parked pair and for 64: futex takes a
 * second one past 127 words. The others (adaptive on the control socket, doorbell, mq, signal) wait on descriptors
 * the event loop watches. */
const WAIT_THREADS: Partial<Record<string, [number, number]>> = { futex: [1, 2], sem: [1, 1], sysvsem: [1, 1] };
for (const mode of PARKING_MODES) {
  t.test(`wake=${mode}: 64 idle channels park without spinning and hold no threadpool thread`, async (t) => {
    const threadsBefore = threadCount();
    const url = `shm://${unique(`idle-${mode}`)}?size=4KiB&wake=${mode}` as ShmUrl;
    const listener = await listen(url);
    const pairs: [Channel, Channel][] = [];
    const waits: Promise<unknown>[] = [];
    t.teardown(async () => {
      for (const [a, b] of pairs) { await a.close(); await b.close(); }
      await listener.close();
    });
    const parks = () => wakeStats()[mode]?.parks ?? 0;
    const threads = () => wakeStats()[mode]?.threads ?? 0;
    const [threadsOne, threadsAll] = WAIT_THREADS[mode] ?? [0, 0];
    /** Every receive so far is armed on the mechanism (modes that count their parks), and its thread is up. */
    const parked = async (n: number, parksBefore: number) => {
      if ((KERNEL_MODES as readonly string[]).includes(mode)) {
        await eventually(() => parks() - parksBefore >= n, `${n} receives to park (wake=${mode})`);
      }
      // A wait thread started for them settles into its wait (asleep) rather than still starting up.
      await eventually(() => [...threadStates()].every(([tid, s]) => tid === String(process.pid) || s !== 'R'), 'the threads to settle').catch(() => {});
    };
    let threadsForOne = 0;
    let namesForOne = new Map<string, string>();
    const parksBefore = parks();
    for (let i = 0; i < 64; i++) {
      const pair = await Promise.all([connect(url), listener.acceptNext()]) as [Channel, Channel];
      pairs.push(pair);
      // Every end parks waiting for a message (128 parked waits in this process).
      waits.push(pair[0].receive(), pair[1].receive());
      if (i === 0) {
        await parked(2, parksBefore);
        // The wait thread has loaded (under a module loader, as in tap, a thread's first import starts one more
        // thread of the loader's, which would otherwise appear in the count only later).
        if (threadsOne > 0) await eventually(() => threads() >= threadsOne, `the ${mode} wait thread to be up`);
        threadsForOne = threadCount();
        namesForOne = threadNames();
      }
    }
    await parked(128, parksBefore);
    if (threadsAll > 0) {
      await eventually(() => threads() >= threadsAll, `the ${mode} wait threads to be up`);
      t.equal(threads(), threadsAll, `wait threads running for 128 parked waits (wake=${mode})`);
    }
    // A wait thread per mechanism (futex: per 127 words, so 128 waits take a second one), never one per channel;
    // under a module loader such as tap's each wait thread comes with one thread of the loader's.
    const more = threadCount() - threadsForOne;
    const newThreads = [...threadNames()].filter(([tid]) => !namesForOne.has(tid)).map(([tid, name]) => `${tid} ${name}`);
    t.ok(more <= 2 * (threadsAll - threadsOne), `${threadCount() - threadsBefore} thread(s) more in all; ${more} more for 127 more parked waits than for 1${more > 0 ? ` (new: ${newThreads.join(', ')})` : ''}`);

    // No thread spins: sampled 50 times while everything is parked, every thread but this one (which samples) is
    // asleep now and then. A spinning (or busy-polling) thread is running or runnable at every look, however
    // busy the machine. Meanwhile fs.stat answers at all: the threadpool is not held by the waits.
    const running = new Map<string, number>();
    const SAMPLES = 50;
    for (let i = 0; i < SAMPLES; i++) {
      for (const [tid, state] of threadStates()) if (state === 'R') running.set(tid, (running.get(tid) ?? 0) + 1);
      await within(30_000, fsp.stat('/'), () => `fs.stat did not answer while 128 receives are parked (wake=${mode}): the threadpool is blocked`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const spinning = [...running].filter(([tid, n]) => tid !== String(process.pid) && n === SAMPLES).map(([tid]) => tid);
    t.same(spinning, [], `no thread was running at every one of ${SAMPLES} looks (runnable per thread: ${[...running].map(([tid, n]) => `${tid === String(process.pid) ? 'main' : tid}:${n}`).join(' ')})`);

    // And they still work: one message each way wakes every parked end.
    for (const [a, b] of pairs) { a.send('ping'); b.send('pong'); }
    const got = await within(30_000, Promise.all(waits), () => `parked ends did not wake (wake=${mode})`);
    t.equal(got.filter((m, i) => m === (i % 2 === 0 ? 'pong' : 'ping')).length, 128, 'every parked end woke with its message');
    for (const [a, b] of pairs) { await a.close(); await b.close(); }
    pairs.length = 0;
    // When its last channel closes, a mechanism keeps one wait thread, idle, for the next channel (futex stops
    // the second, taken past 127 words); a new channel reuses it: no thread is started again.
    const idleThreads = Math.min(threadsAll, 1);
    await eventually(() => threads() <= idleThreads, 'the extra wait threads to stop').catch(() => {});
    t.equal(threads(), idleThreads, `wait threads left idle (wake=${mode})`);
    const started = wakeStats()[mode]?.started ?? 0;
    const pair = await Promise.all([connect(url), listener.acceptNext()]) as [Channel, Channel];
    pairs.push(pair);
    const parksAgain = parks();
    const next = pair[1].receive();
    await parked(1, parksAgain);
    pair[0].send('again');
    t.equal(await within(30_000, next, () => `a channel opened after the others closed did not wake (wake=${mode})`), 'again');
    t.equal(wakeStats()[mode]?.started ?? 0, started, `no wait thread started for a channel opened after the last one closed (wake=${mode})`);
  });
}

// --- a peer killed while we are parked -------------------------------------------------------------------------------

for (const mode of MODES) {
  t.test(`wake=${mode}: a peer killed with SIGKILL while we are parked is a typed error`, async (t) => {
    const url = `shm://${unique(`kill-${mode}`)}?size=4KiB&wake=${mode}` as ShmUrl;
    const listener = await listen(url);
    const peer = startPeer(t, [url, 'hang']);
    let conn: Channel | undefined;
    t.teardown(async () => {
      peer.child.kill();
      await peer.exit;
      await conn?.close();
      await listener.close();
      // SIGKILL leaves the peer's wake object behind (the crash case): remove it as `shmbus clean` would.
      reapDeadWakeObjects();
    });
    conn = (await within(60_000, listener.acceptNext(), () => `accept (${peer.stderr()})`))!;
    t.same(Buffer.from(await within(60_000, conn.receive(), () => 'the peer\'s first record') as Uint8Array).toString(), 'R');
    // Park both ways: the reader waits for data, the writer for room (the peer never reads).
    while (conn.trySendBytes(new Uint8Array(64))) { /* fill the ring */ }
    const parked = conn;
    const parksBefore = wakeStats()[mode]?.parks ?? 0;
    const reading = parked.receive().then(() => 'ended', (e: { code: string }) => e.code);
    const draining = parked.drained().then(() => 'drained', (e: { code: string }) => e.code);
    parked.sendBytes(new Uint8Array(64));
    // Kill once the channel is parked on the mechanism (modes that count parks: one park arms both waits; the
    // other modes park at once or spin).
    if ((KERNEL_MODES as readonly string[]).includes(mode)) {
      await eventually(() => (wakeStats()[mode]?.parks ?? 0) > parksBefore, 'the channel to park');
    } else {
      await new Promise((r) => setImmediate(r));
    }
    peer.child.kill('SIGKILL');
    // Any delay is fine; never noticing is the failure (the watchdog turns that hang into a failure).
    const [read, drained] = await within(30_000, Promise.all([reading, draining]), () => 'no error after the peer died');
    t.equal(read, ErrorCode.PEER_DEAD, `the parked reader got PEER_DEAD (${read})`);
    t.equal(drained, ErrorCode.PEER_DEAD, `the parked writer got PEER_DEAD (${drained})`);
  });
}

// --- lifetime --------------------------------------------------------------------------------------------------------

t.test('the process stays alive while a parked channel is awaited, and exits by itself once it is closed', async (t) => {
  for (const mode of KERNEL_MODES) {
    const url = `shm://${unique(`exit-${mode}`)}?wake=${mode}` as ShmUrl;
    const listener = await listen(url);
    const peer = startPeer(t, [url, 'await']);
    t.teardown(() => listener.close());
    const conn = (await within(60_000, listener.acceptNext(), () => `accept (${peer.stderr()})`))!;
    t.teardown(() => conn.close());
    await within(60_000, conn.receive(), () => 'the peer\'s first record');
    let exited = false;
    void peer.exit.then(() => { exited = true; });
    // A window for a wrongly empty event loop to end the peer. Not a synchronisation: a correct peer waits
    // however long this takes, and a peer that ended early would also have exited 13 (top-level await unsettled).
    await new Promise((r) => setTimeout(r, 500));
    t.notOk(exited, `${mode}: the peer is still alive while it awaits a message`);
    conn.send('bye');
    const code = await within(30_000, peer.exit, () => `${mode}: the peer did not exit by itself after closing its channel`);
    t.equal(code, 0, `${mode}: the peer exited by itself ${peer.stderr()}`);
  }
});

// --- bad input and kernel refusals -----------------------------------------------------------------------------------

t.test('unknown wake= values are BAD_URL', async (t) => {
  await t.rejects(listen('shm://x?wake=pigeon'), { code: ErrorCode.BAD_URL });
  await t.rejects(connect('shm://x?wake=FUTEX'), { code: ErrorCode.BAD_URL });
  await t.rejects(connect('shm://x?wake='), { code: ErrorCode.BAD_URL });
});

t.test('a semaphore limit (SEMMNI) refuses wake=sysvsem with a typed LIMIT error', async (t) => {
  const url = `shm://${unique('semmni')}?wake=sysvsem` as ShmUrl;
  const listener = await listen(url);
  // In a fresh IPC namespace with SEMMNI = 0, semget must fail (the namespace's own limits; ours are untouched).
  const peer = startPeer(t, [url, 'error'], { prefix: ['unshare', '--ipc', 'sh', '-c', 'echo "32000 1024000000 500 0" > /proc/sys/kernel/sem && exec "$@"', 'sh'] });
  t.equal(await within(60_000, peer.exit, () => 'peer exit'), 0, peer.stderr());
  const result = JSON.parse(peer.stdout()) as { code: string; details: { syscall: string; limit: string } };
  t.equal(result.code, ErrorCode.LIMIT, result.code);
  t.equal(result.details.syscall, 'semget');
  t.match(result.details.limit, /SEMMNI/, 'the limit is named');
  await listener.close();
});

t.test('the message queue limit (RLIMIT_MSGQUEUE) refuses wake=mq with a typed LIMIT error', async (t) => {
  const url = `shm://${unique('mqlimit')}?wake=mq` as ShmUrl;
  const listener = await listen(url);
  const peer = startPeer(t, [url, 'error'], { prefix: ['prlimit', '--msgqueue=0'] });
  t.equal(await within(60_000, peer.exit, () => 'peer exit'), 0, peer.stderr());
  const result = JSON.parse(peer.stdout()) as { code: string; details: { syscall: string; limit: string } };
  t.equal(result.code, ErrorCode.LIMIT, result.code);
  t.equal(result.details.syscall, 'mq_open');
  t.equal(result.details.limit, 'RLIMIT_MSGQUEUE', 'the limit is named');
  await listener.close();
});

t.test('a peer with bad wake parameters is a typed error, not a ring into the void', async (t) => {
  // What a hostile or broken peer could put in its handshake line; the bell is built from it.
  const cases: [string, Record<string, unknown>, string][] = [
    ['sem', { name: '/etc-passwd' }, ErrorCode.HANDSHAKE],
    ['sem', { name: 42 }, ErrorCode.HANDSHAKE],
    ['sem', { name: '/shmbus-wake.1.999999' }, ErrorCode.NOT_FOUND],
    ['mq', { name: '/shmbus-wake.1.1', id: 'x' }, ErrorCode.HANDSHAKE],
    ['mq', { name: '/elsewhere', id: 1 }, ErrorCode.HANDSHAKE],
    ['signal', { pid: 1, tid: 1, startTime: '1', signal: 9, id: 1 }, ErrorCode.HANDSHAKE],
    ['signal', { pid: 999_999_999, tid: 999_999_999, startTime: '1', signal: 40, id: 1 }, ErrorCode.PEER_DEAD],
    ['signal', { pid: process.pid, tid: process.pid, startTime: '1', signal: 40, id: 1 }, ErrorCode.PEER_DEAD],
    ['sysvsem', { semid: 'nope' }, ErrorCode.HANDSHAKE],
    ['sysvsem', { semid: 0x7ffffff0 }, ErrorCode.NOT_FOUND],
  ];
  const socket = new net.Socket();
  for (const [mode, params, code] of cases) {
    // The peer as SO_PEERCRED would report it: the pid its params claim (1 when they name none).
    const peer = { pid: typeof params.pid === 'number' ? params.pid : 1, uid: process.getuid!(), gid: process.getgid!() };
    const ctx = { params, socket, peer } as unknown as BellContext;
    t.throws(() => mechanismFor(mode).bell(ctx), { code }, `${mode} ${JSON.stringify(params)}`);
  }
  t.throws(() => mechanismFor('carrier-pigeon'), { code: ErrorCode.BAD_URL }, 'a peer asking for an unknown mechanism');
});

// `shmbus clean` (which reaps every dead process's objects, not only ours) is tested in test/reap.test.ts, which
// runs alone.

t.test('a handshake that fails gives its wake object back at once (no reservation left to lapse)', async (t) => {
  for (const mode of ['sem', 'sysvsem', 'mq'] as const) {
    const url = `shm://${unique(`unreserve-${mode}`)}?wake=${mode}` as ShmUrl;
    const listener = await listen(url);
    // The connector's side: it makes its wake line (reserving its process object) before it meets the listener,
    // which turns out to run as another uid than it expects.
    await t.rejects(connect(url, { expectUid: 4242 }), { code: ErrorCode.PERMISSION_DENIED }, `${mode}: the connect fails`);
    t.same(leftovers(), before, `${mode}: the connector's wake object is gone`);
    // The listener's side: its reply names its wake object; the connector then hangs up instead of attaching.
    const socket = net.connect(`\0shmbus/shm/${url.slice('shm://'.length, url.indexOf('?'))}`);
    socket.on('error', () => {});
    await new Promise((r) => socket.once('connect', r));
    writeLine(socket, { shmbus: 1, version: LAYOUT_VERSION, pid: process.pid, wake: { mode: 'doorbell', params: {} }, maxMessage: 0, records: true });
    const { message } = await readLine(socket, 30_000);
    t.equal((message.wake as { mode?: string } | undefined)?.mode, mode, `${mode}: the listener's reply names its wake object`);
    // A POSIX queue is seen only where the mqueue file system can be listed (mounted here when we are root).
    if (mode !== 'mq' || mqueueDir() !== undefined) t.not(leftovers().length, before.length, `${mode}: which exists meanwhile`);
    socket.destroy();
    await eventually(() => listener.load.pending === 0, 'the listener to end the handshake');
    await eventually(() => leftovers().length === before.length, `${mode}: the listener's wake object to go away`);
    await listener.close();
  }
});
