// A shm reader with nothing to read spins a little for the next record before it parks (host/turns.ts: a channel,
// a topic subscription; a lock() that finds the lock held does the same before it sleeps). The spin is
// synchronous, so it must not start before the microtasks the caller already queued have run: in a ping-pong those are the code that awaits the message just handed out and is about to send the
// next one. Started at once, the spin held that code back for its whole budget, found nothing, and parked; each
// round trip then took a doorbell (a 'message' listener resolving a promise: ~170 µs a trip instead of ~5 µs).
//
// The waits here end on the caller's own sends, made a few microtask turns after the wait began. The library's
// counters (host/ring.ts perf, on with SHMBUS_COUNTERS=1 when it loads) show whether a wait parked: none may,
// except in the one case whose send comes after the turns are over (it shows the limit is real).
import t from 'tap';
import type { TestLike } from './helpers.js';

process.env.SHMBUS_COUNTERS = '1';
const { COUNTING, perf } = await import('../host/ring.js');
const { listen, connect } = await import('../index.js');
const { unique } = await import('./helpers.js');
const { Bus } = await import('../bus/index.js');
const { Mutex } = await import('../state/mutex.js');
const { stateUrl, leftovers } = await import('./state/common.js');
type Channel = import('../index.js').Channel;

async function pair(t: TestLike): Promise<[Channel, Channel]> {
  const url = `shm://${unique('spin-turns')}`;
  const listener = await listen(url);
  t.teardown(() => listener.close());
  const [a, b] = await Promise.all([connect(url), listener.acceptNext()]);
  t.teardown(async () => { a.destroy(); b!.destroy(); });
  return [a as Channel, b as Channel];
}

/** Resolves after `depth` microtask turns (a chain of awaits, as nested async functions make). */
async function turns(depth: number): Promise<void> {
  for (let i = 0; i < depth; i++) await undefined;
}

t.test('the iterator waits for a record the caller sends a few microtasks later without parking', async (t) => {
  t.ok(COUNTING, 'the library counts (else no park would ever show)');
  const [a, b] = await pair(t);
  const it = b[Symbol.asyncIterator]();
  for (const depth of [1, 4, 12]) {
    const parks = perf.parks;
    for (let i = 0; i < 20; i++) {
      void turns(depth).then(() => a.send({ i }));
      t.same((await it.next()).value, { i });
    }
    t.equal(perf.parks - parks, 0, `sent ${depth} turns later: no wait parked`);
  }
  // Past the turns the reader spins (both ends in one thread: not at all) and parks, then the doorbell wakes it.
  // (A wait that finds the event loop unvisited for YIELD_MS yields to it first, and the send comes meanwhile.)
  const parks = perf.parks;
  for (let i = 0; i < 10; i++) {
    void turns(40).then(() => a.send({ i }));
    t.same((await it.next()).value, { i });
  }
  t.ok(perf.parks - parks > 0, 'sent 40 turns later: waits parked');
});

t.test('a waiting next() resumes its caller within two microtask turns of the turn that sees the record', async (t) => {
  // The wait looks once per turn; the caller's await takes one more turn once the wait resolves it. Every async
  // function between the wait and the caller would add a turn (the wait was two of them deep before: four turns).
  // A next() that finds the event loop unvisited for YIELD_MS (2 ms) lets it run first, however many turns that
  // takes: each round first takes a record (that next() yields if due), so only a round this thread loses its core
  // in is slow (5 of 20 with three busy loops on two cores); a quarter of the rounds must be quick (before: none).
  const [a, b] = await pair(t);
  const it = b[Symbol.asyncIterator]();
  const rounds = 20;
  let quick = 0;
  const seen: number[] = [];
  for (let i = 0; i < rounds; i++) {
    a.send('first');
    t.equal((await it.next()).value, 'first');
    let resumed = false;
    const got = it.next().then((r) => { resumed = true; return r.value; });
    await turns(3);
    a.send({ i });
    let after = 0;
    while (!resumed && after < 100) { await undefined; after++; }
    t.same(await got, { i });
    seen.push(after);
    if (after <= 3) quick++;
  }
  t.ok(quick >= rounds / 4, `resumed within 3 turns of the send in ${quick} of ${rounds} rounds (turns: ${seen.join(' ')})`);
});

t.test('readable() waits for a record the caller sends a few microtasks later without parking', async (t) => {
  const [a, b] = await pair(t);
  const parks = perf.parks;
  for (let i = 0; i < 20; i++) {
    void turns(4).then(() => a.sendBytes(Uint8Array.of(i)));
    await b.readable();
    let got = -1;
    t.equal(b.poll((memory, offset) => { got = memory[offset]!; }), 1);
    t.equal(got, i);
  }
  t.equal(perf.parks - parks, 0, 'no wait parked');
});

t.test("a ping-pong through on('message') and a promise sends each message before the listener side parks", async (t) => {
  const [a, b] = await pair(t);
  let answer: (value: unknown) => void = () => {};
  b.on('message', (value) => answer(value));
  // What a user's request helper looks like: the listener settles a promise, an async function awaits it.
  const ask = async (i: number) => {
    const reply = new Promise((resolve) => { answer = resolve; });
    a.send({ i });
    return reply;
  };
  const roundTrip = async (i: number) => ask(i);
  await roundTrip(-1); // the dispatcher is running
  const parks = perf.parks;
  for (let i = 0; i < 50; i++) t.same(await roundTrip(i), { i });
  t.equal(perf.parks - parks, 0, 'no wait parked');
});

t.test('a topic subscription waits for a message published a few microtasks later without parking', async (t) => {
  const bus = await Bus.open(`shm://${unique('spin-turns-bus')}`);
  t.teardown(() => bus.close());
  const pub = bus.publisher('turns', { capacity: '64KiB', policy: 'lossless' });
  const sub = bus.subscribe('turns');
  const it = sub[Symbol.asyncIterator]();
  // Joined: a first message goes through.
  void turns(4).then(() => pub.publish({ i: -1 }));
  t.same((await it.next()).value, { i: -1 });
  const parks = perf.parks;
  for (let i = 0; i < 20; i++) {
    void turns(4).then(() => pub.publish({ i }));
    t.same((await it.next()).value, { i });
  }
  t.equal(perf.parks - parks, 0, 'no wait parked');
  await sub.close();
  await pub.close();
});

t.test('a subscription closed while its iterator waits (in the turns or past them) ends the iterator', async (t) => {
  const bus = await Bus.open(`shm://${unique('spin-turns-bus')}`);
  t.teardown(() => bus.close());
  const pub = bus.publisher('closing', { capacity: '64KiB', policy: 'lossless' });
  for (let depth = 1; depth <= 24; depth++) {
    const sub = bus.subscribe('closing');
    const it = sub[Symbol.asyncIterator]();
    void turns(2).then(() => pub.publish({ depth }));
    t.same((await it.next()).value, { depth }, 'joined');
    const waiting = it.next();
    void turns(depth).then(() => sub.close());
    t.same(await waiting, { value: undefined, done: true }, `closed ${depth} turns into the wait`);
  }
  await pub.close();
});

t.test('lock() gets a lock its holder in this thread releases a few microtasks later without sleeping', async (t) => {
  const before = leftovers();
  const url = stateUrl('shm');
  const holder = await Mutex.open(url);
  const waiter = await Mutex.open(url);
  const parks = perf.parks;
  for (let i = 0; i < 20; i++) {
    await holder.lock();
    void turns(4).then(() => holder.unlock());
    t.same(await waiter.lock(), { recovered: false });
    waiter.unlock();
  }
  t.equal(perf.parks - parks, 0, 'no lock() slept');
  waiter.close();
  holder.close();
  t.same(leftovers(), before, 'the mutex is gone');
});
