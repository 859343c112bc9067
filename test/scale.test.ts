/**
 * Connections at scale (issue 11): a connection that fails at any step of its setup leaves nothing behind (no
 * descriptor, no memfd, no window, no ring handle, no file), whichever side fails and why; connections spread
 * over several wasm engines once one engine's memory or handles are full; past the last engine a typed
 * ERR_SHMBUS_LIMIT names that limit. Peer death at every step is test/hostile/kill-handshake.test.ts.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { listen, connect, type Listener } from '../transports/shm/index.js';
import type { Channel } from '../transports/shm/channel.js';
import { allEngines as enginesNow, engineCount, getEngine, setMaxEngines, type Engine } from '../host/engine.js';
import { ErrorCode, ShmbusError } from '../host/errors.js';
import { CHANNEL_RING_COUNT, segmentBytes } from '../assembly/layout.js';
import { eventually, fileTimeout, unique } from './helpers.js';

fileTimeout(t, 120);

const KiB = 1024;

function memfds(): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try { if (fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:shmbus.')) n++; } catch { /* closed meanwhile */ }
  }
  return n;
}

/** Everything a connection's setup takes in this process, engine by engine. The spare segments `listener` made
 * ahead (transports/shm/pool.ts) are its own, not a connection's: each is a memfd and a descriptor. */
function snapshot(engines: Engine[], listener?: { spareSegments: number }): Record<string, unknown> {
  const spares = listener?.spareSegments ?? 0;
  return {
    fds: fs.readdirSync('/proc/self/fd').length - spares,
    memfds: memfds() - spares,
    engines: engines.map((e) => ({ windows: e.freeWindowRanges(), handles: e.freeHandleCount })),
  };
}

/**
 * True when `now` holds no more than `before`: the same memfds, windows and handles, and no more descriptors.
 * Fewer descriptors is fine: sockets of earlier tests may still be closing (libuv closes them on a later turn).
 */
function givenBack(now: Record<string, unknown>, before: Record<string, unknown>): boolean {
  const { fds: fdsNow, ...restNow } = now;
  const { fds: fdsBefore, ...restBefore } = before;
  return (fdsNow as number) <= (fdsBefore as number) && JSON.stringify(restNow) === JSON.stringify(restBefore);
}

/** Every engine there is now (the first one made if none was). */
function allEngines(): Engine[] {
  getEngine();
  return [...enginesNow()];
}

interface Fill { engine: Engine; windows: [number, number][]; handles: number[] }

/** Takes every free window range of `engine` but `leaveBytes` and every handle but `leaveHandles`. */
function fill(engine: Engine, leaveBytes: number, leaveHandles: number): Fill {
  const f: Fill = { engine, windows: [], handles: [] };
  for (const r of engine.freeWindowRanges()) {
    const size = r.end - r.start;
    f.windows.push([engine.allocWindow(size), size]);
  }
  if (leaveBytes > 0) {
    const [at, size] = f.windows.pop()!;
    engine.freeWindow(at, size);
    const keep = size - leaveBytes;
    if (keep > 0) f.windows.push([engine.allocWindow(keep), keep]);
  }
  while (engine.freeHandleCount > leaveHandles) f.handles.push(engine.allocHandle());
  return f;
}

function release(f: Fill): void {
  for (const [at, size] of f.windows) f.engine.freeWindow(at, size);
  for (const h of f.handles) f.engine.freeHandle(h);
}

async function pair(listener: Listener, url: string): Promise<[Channel, Channel]> {
  const [c, s] = await Promise.all([connect(url), listener.acceptNext()]);
  return [c, s!];
}

async function failsWith(t: Test, p: Promise<unknown>, code: string, what: string): Promise<ShmbusError | undefined> {
  try {
    await p;
    t.fail(`${what}: connected`);
  } catch (error) {
    t.ok(error instanceof ShmbusError, `${what}: a typed error`);
    t.equal((error as ShmbusError).code, code, `${what}: ${code}`);
    return error as ShmbusError;
  }
  return undefined;
}

/** Runs `body` with the engine cap at the engines there are now, so that filling them reaches the real limit. */
async function atEngineCap<T>(body: (engines: Engine[]) => Promise<T>): Promise<T> {
  const engines = allEngines();
  const previous = setMaxEngines(engines.length);
  try {
    return await body(engines);
  } finally {
    setMaxEngines(previous);
  }
}

const SMALL = 64 * KiB;
const SEGMENT = segmentBytes(CHANNEL_RING_COUNT, SMALL);

t.test('a connection that fails at any step leaves nothing behind', async (t) => {
  const url = `shm://${unique('scale-fail')}?size=64KiB`;
  const listener = await listen(url);
  const listenerErrors: ShmbusError[] = [];
  listener.on('error', (e: ShmbusError) => listenerErrors.push(e));
  t.teardown(() => listener.close());
  // Warm up: the first connection makes lazily created things (the engine, wake machinery) that stay.
  for (const c of await pair(listener, url)) await c.close();

  const cases: { name: string; leaveBytes: number; leaveHandles: number; who: string }[] = [
    { name: 'no window for the listener', leaveBytes: 0, leaveHandles: Infinity, who: 'listener' },
    // The listener maps its segment; nothing is left for the connector's window.
    { name: 'no window for the connector', leaveBytes: SEGMENT + 64 * KiB, leaveHandles: Infinity, who: 'connector' },
    { name: 'no ring handles for the listener', leaveBytes: Infinity, leaveHandles: 1, who: 'listener' },
    // The listener opens its two ring ends; the connector finds one handle.
    { name: 'no ring handles for the connector', leaveBytes: Infinity, leaveHandles: 3, who: 'connector' },
  ];
  for (const c of cases) {
    await atEngineCap(async (engines) => {
      const fills = engines.map((e, i) => fill(e, i === 0 && c.leaveBytes !== Infinity ? c.leaveBytes : 0, i === 0 ? Math.min(c.leaveHandles, e.freeHandleCount) : 0));
      // Cases about handles leave the windows free, cases about windows leave the handles.
      if (c.leaveBytes === Infinity) for (const f of fills) { for (const [at, size] of f.windows) f.engine.freeWindow(at, size); f.windows = []; }
      if (c.leaveHandles === Infinity) for (const f of fills) { for (const h of f.handles) f.engine.freeHandle(h); f.handles = []; }
      try {
        const before = snapshot(engines, listener);
        const seen = listenerErrors.length;
        await failsWith(t, connect(url), ErrorCode.LIMIT, c.name);
        // The listener's side ends once its socket sees the refusal: wait for its error event.
        while (listenerErrors.length === seen) await new Promise((r) => setImmediate(r));
        t.equal(listenerErrors.at(-1)!.code, ErrorCode.LIMIT, `${c.name}: the listener reports LIMIT (${c.who} failed)`);
        // Sockets close as their ends see each other's end-of-file.
        const same = () => givenBack(snapshot(engines, listener), before);
        await eventually(same, `${c.name}: everything given back`).catch(() => {});
        const after = snapshot(engines, listener);
        t.ok(givenBack(after, before), `${c.name}: descriptors, memfds, windows and handles all given back`, { found: after, wanted: before });
        t.same(listener.load, { pending: 0, connections: 0 }, `${c.name}: no handshake or connection left counted`);
      } finally {
        fills.forEach(release);
      }
    });
  }
  const ok = await pair(listener, url);
  t.ok(ok[0].send('after'), 'the listener still connects once there is room');
  t.equal(await ok[1].receive(), 'after');
  for (const c of ok) await c.close();
});

t.test('past the last engine, LIMIT names the engines', async (t) => {
  const url = `shm://${unique('scale-limit')}?size=64KiB`;
  const listener = await listen(url);
  listener.on('error', () => {});
  t.teardown(() => listener.close());
  await atEngineCap(async (engines) => {
    const fills = engines.map((e) => fill(e, 0, 0));
    try {
      const error = await failsWith(t, connect(url), ErrorCode.LIMIT, 'every engine full');
      t.match(error?.message ?? '', /engine/, 'the message names the engines');
    } finally {
      fills.forEach(release);
    }
  });
});

t.test('a connection goes to a new engine once the others are full, and works there', async (t) => {
  for (const wake of ['doorbell', 'futex']) {
    const url = `shm://${unique('scale-more')}?size=64KiB&wake=${wake}`;
    const listener = await listen(url);
    t.teardown(() => listener.close());
    const engines = allEngines();
    const fills = engines.map((e) => fill(e, 0, 0));
    let ends: [Channel, Channel];
    try {
      ends = await pair(listener, url);
    } finally {
      fills.forEach(release);
    }
    t.equal(engineCount(), engines.length + 1, `${wake}: one more engine`);
    t.notOk(engines.includes((ends[0] as unknown as { engine: Engine }).engine), `${wake}: the connection lives in a new engine`);
    const got = (async () => { const out: string[] = []; for await (const m of ends[1]) { out.push(m as string); if (out.length === 3) break; } return out; })();
    for (const m of ['a', 'b', 'c']) ends[0].send(m);
    t.same(await got, ['a', 'b', 'c'], `${wake}: messages cross in the new engine`);
    for (const c of ends) await c.close();
  }
});

// A 1 MiB tmpfs to fill up (file:// segments live in it). Mounting needs CAP_SYS_ADMIN; without it, skipped.
const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-scale-'));
const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'none', mnt]).status === 0;
t.teardown(() => {
  // Lazily (-l): a failed test may still hold a file in it open; the mount must not outlive the test either way.
  if (mounted) spawnSync('umount', ['-l', mnt]);
  fs.rmSync(mnt, { recursive: true, force: true });
});

t.test('a full file system fails at allocation with NO_SPACE and leaves nothing', { skip: !mounted && 'cannot mount a tmpfs here (needs CAP_SYS_ADMIN)' }, async (t) => {
  const url = `file://${mnt}/${unique('scale-full')}?size=1MiB`;
  const listener = await listen(url);
  const errors: ShmbusError[] = [];
  listener.on('error', (e: ShmbusError) => errors.push(e));
  t.teardown(() => listener.close());
  // Rings start with 64 KiB each and grow on demand (test/grow.test.ts): leave less than that free.
  const filler = path.join(mnt, 'filler');
  fs.writeFileSync(filler, Buffer.alloc(1024 * KiB - 64 * KiB));
  const engines = allEngines();
  const before = snapshot(engines);
  await failsWith(t, connect(url), ErrorCode.NO_SPACE, 'rings on a full tmpfs');
  fs.rmSync(filler);
  while (errors.length === 0) await new Promise((r) => setImmediate(r));
  t.equal(errors[0]!.code, ErrorCode.NO_SPACE, 'the listener reports NO_SPACE');
  await eventually(() => givenBack(snapshot(engines), before), 'everything given back').catch(() => {});
  const after = snapshot(engines);
  t.ok(givenBack(after, before), 'descriptors, windows and handles all given back', { found: after, wanted: before });
  t.same(fs.readdirSync(mnt), [], 'nothing in the file system');
  t.equal(fs.statfsSync(mnt).bfree, fs.statfsSync(mnt).blocks, 'every block of the tmpfs is free again');
});

const FRAGMENT_CASES = [
  // The default: 4 MiB rings; messages past one record (2 MiB) go as fragments.
  { name: 'by default a connection carries 16 MiB messages', query: '', maxWindow: 9 * 1024 * KiB, oneRecord: 4 << 20 },
  // Small rings for many connections: an idle one takes at most 256 KiB and still carries 16 MiB messages.
  { name: 'with size=64KiB&maxMessage=16MiB an idle connection takes at most 256 KiB and carries 16 MiB messages', query: '?size=64KiB&maxMessage=16MiB', maxWindow: 256 * KiB, oneRecord: 1 << 20 },
];
for (const fc of FRAGMENT_CASES) t.test(fc.name, async (t) => {
  const url = `shm://${unique('scale-frag')}${fc.query}`;
  const listener = await listen(url);
  t.teardown(() => listener.close());
  const [c, s] = await pair(listener, url);
  const windowSize = (ch: Channel) => (ch as unknown as { mapped: { region: { size: number } } }).mapped.region.size;
  t.ok(windowSize(c) <= fc.maxWindow && windowSize(s) === windowSize(c), `segment of ${windowSize(c)} bytes`);
  t.equal(c.maxMessageSize, 16 * 1024 * 1024, 'connector: 16 MiB messages');
  t.equal(s.maxMessageSize, c.maxMessageSize, 'listener: the same');
  const sizes = [0, 100, 32_760, 32_761, 65_536, 1 << 20, 5 << 20, c.maxMessageSize];
  const fill = (n: number) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = (i * 31 + n) & 0xff; return b; };
  const got = (async () => { const out: unknown[] = []; for await (const m of s) { out.push(m); if (out.length === sizes.length + 2) break; } return out; })();
  for (const n of sizes) if (!c.sendBytes(fill(n))) await c.drained();
  const value = { big: 'y'.repeat(1 << 20), n: 7 };
  if (!c.send(value)) await c.drained();
  c.send('after');
  const out = await got;
  sizes.forEach((n, i) => t.same(Buffer.from(out[i] as Uint8Array), Buffer.from(fill(n)), `${n} bytes intact`));
  t.same(out[sizes.length], value, 'a 1 MiB value intact');
  t.equal(out[sizes.length + 1], 'after', 'messages after a fragmented one come in order');
  t.throws(() => c.sendBytes(new Uint8Array(c.maxMessageSize + 1)), { code: ErrorCode.MESSAGE_TOO_LARGE }, 'max + 1 refused');
  t.throws(() => c.trySendBytes(new Uint8Array(fc.oneRecord)), { code: ErrorCode.MESSAGE_TOO_LARGE }, 'trySend takes one record at most');
  t.throws(() => c.claim(fc.oneRecord), { code: ErrorCode.MESSAGE_TOO_LARGE }, 'a claim is one record at most');
  for (const ch of [c, s]) await ch.close();
});

t.test('an explicit size keeps every message within one record', async (t) => {
  const url = `shm://${unique('scale-explicit')}?size=64KiB`;
  const listener = await listen(url);
  t.teardown(() => listener.close());
  const [c, s] = await pair(listener, url);
  t.equal(c.maxMessageSize, 32 * KiB - 8, 'the ring\'s maxPayload');
  t.equal(s.maxMessageSize, c.maxMessageSize);
  t.throws(() => c.sendBytes(new Uint8Array(32 * KiB)), { code: ErrorCode.MESSAGE_TOO_LARGE });
  for (const ch of [c, s]) await ch.close();
});

t.test('fragments a peer gets wrong fail the connection with CORRUPT', async (t) => {
  const cases: [string, (put: (type: number, total: number, piece: number, recordType?: number) => void) => void][] = [
    ['a message longer than the maximum', (put) => put(1, 64 * 1024 * 1024, 1000)],
    ['a message that would fit in one record', (put) => put(1, 100, 100)],
    ['an unknown message type', (put) => put(99, 1 << 20, 1000)],
    ['fragments of two messages mixed', (put) => { put(1, 1 << 20, 1000); put(2, 1 << 20, 1000); }],
    ['another record inside a fragmented message', (put) => { put(1, 1 << 20, 1000); put(0, 0, 8, 1); }],
    ['fragments longer than their message', (put) => { put(1, 40_000, 30_000); put(1, 40_000, 30_000); }],
    ['a fragment shorter than its header', (put) => put(0, 0, -4)],
  ];
  for (const [name, write] of cases) {
    const url = `shm://${unique('scale-badfrag')}?size=64KiB&maxMessage=16MiB`;
    const listener = await listen(url);
    const [c, s] = await pair(listener, url);
    const tx = (c as unknown as { tx: import('../host/ring.js').RingEnd }).tx;
    const engine = (c as unknown as { engine: Engine }).engine;
    write((type, total, piece, recordType = 6) => {
      const length = Math.max(0, 8 + piece);
      const at = tx.claim(length, recordType);
      if (length >= 8) { engine.u32[at >>> 2] = type; engine.u32[(at >>> 2) + 1] = total; }
      tx.commit(length);
    });
    c.send('wake');
    let code: string | undefined;
    try { for await (const _ of s) { /* nothing valid comes */ } } catch (error) { code = (error as ShmbusError).code; }
    t.equal(code, ErrorCode.CORRUPT, name);
    await c.close().catch(() => {});
    await s.close().catch(() => {});
    await listener.close();
  }
});
