/**
 * Many clients at once (issue 11): scaled(1000, 200) clients (1000 under test:stress) spread over 10 processes connect to one listener,
 * all exchange messages at the same time (each message echoed back in order), then close. Every message comes
 * back, and the listener's process is left with nothing: no connection counted, no descriptor, no memfd, every
 * window and ring handle of every engine free again.
 */
import t from 'tap';
import fs from 'node:fs';
import { listen } from '../transports/shm/index.js';
import type { Channel } from '../transports/shm/channel.js';
import { allEngines, getEngine } from '../host/engine.js';
import { BATCH_AREA_SIZE, MAX_HANDLES, MEMORY_MAX_PAGES, WASM_PAGE_SIZE, WINDOW_BASE } from '../assembly/layout.js';
import { eventually, fileTimeout, scaled, startFixture, unique } from './helpers.js';

fileTimeout(t, 180);

const PROCESSES = 10;
const CLIENTS = scaled(1000, 200);
const MESSAGES = 20;
const MEMORY_BYTES = MEMORY_MAX_PAGES * WASM_PAGE_SIZE;

function memfds(): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try { if (fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:shmbus.')) n++; } catch { /* closed meanwhile */ }
  }
  return n;
}

/** What connections take in this process: descriptors, memfds, and per engine the free ring handles and the
 * window bytes neither free nor kept as spare batch areas (host/engine.ts keeps a few for reuse). */
function state(): { fds: number; memfds: number; engines: { handles: number; windowBytesTaken: number }[] } {
  getEngine();
  return {
    fds: fs.readdirSync('/proc/self/fd').length,
    memfds: memfds(),
    engines: allEngines().map((e) => ({
      handles: e.freeHandleCount,
      windowBytesTaken: MEMORY_BYTES - WINDOW_BASE - e.freeWindowRanges().reduce((n, r) => n + r.end - r.start, 0) - e.spareBatchCount * BATCH_AREA_SIZE,
    })),
  };
}

/** Nothing more taken than before (descriptors may be fewer: lazily opened ones of the first run stay). */
function givenBack(before: ReturnType<typeof state>): boolean {
  const now = state();
  return now.fds <= before.fds && now.memfds === before.memfds
    && now.engines.every((e, i) => e.handles === (before.engines[i]?.handles ?? MAX_HANDLES) && e.windowBytesTaken === (before.engines[i]?.windowBytesTaken ?? 0));
}

t.test(`${CLIENTS} clients over ${PROCESSES} processes exchange messages at once, then close`, async (t) => {
  // Small rings: the default size would reserve 8 MiB of shared memory per connection.
  const url = `shm://${unique('scale-many')}?size=16KiB`;
  const listener = await listen(url, { maxPending: CLIENTS, maxConnections: CLIENTS });
  t.teardown(() => listener.close());
  const before = state();
  const echoed: Promise<void>[] = [];
  let accepted = 0;
  const accepting = (async () => {
    for await (const conn of listener) {
      accepted++;
      const c = conn as Channel;
      const echo = (async () => {
        for await (const m of c) if (!c.send(m)) await c.drained();
        await c.close();
      })();
      // Reported when awaited below; a client that died first fails the test there, not as an unhandled rejection.
      echo.catch(() => {});
      echoed.push(echo);
    }
  })();
  const per = Math.ceil(CLIENTS / PROCESSES);
  const children = Array.from({ length: PROCESSES }, (_, i) =>
    startFixture(t, 'many-clients', [url, String(Math.min(per, CLIENTS - i * per)), String(MESSAGES), '8'], { stdin: 'pipe' }));
  await Promise.all(children.map((c) => c.line('ready')));
  // A client's connect() resolves once it has sent its last handshake line; the listener hands the connection out
  // when it has read that line, a little later (on a busy machine, after the clients said 'ready').
  await eventually(() => accepted === CLIENTS, 'the listener to hand out every connection').catch(() => {});
  t.equal(accepted, CLIENTS, 'every client connected');
  t.equal(listener.load.connections, CLIENTS, 'the listener counts them all');
  for (const c of children) c.process.stdin!.write('go\n');
  const lines = await Promise.all(children.map((c) => c.line(/^done /)));
  const exits = await Promise.all(children.map((c) => c.exit));
  t.same(exits.map((e) => e.code), children.map(() => 0), 'every process got exactly its messages back, in order');
  t.equal(lines.reduce((sum, l) => sum + Number(l.split(' ')[1]), 0), CLIENTS * MESSAGES, 'every message came back');
  await Promise.all(echoed);
  t.equal(listener.load.connections, 0, 'no connection left counted');
  await listener.close();
  await accepting;
  await eventually(() => givenBack(before), 'descriptors, memfds, windows and handles given back').catch(() => {});
  t.ok(givenBack(before), 'descriptors, memfds, windows and handles all given back', { before, now: state() });
});
