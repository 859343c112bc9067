// Mutex and Semaphore across processes: exact counts under contention, a SIGKILLed holder's lock and units come
// back (recovered), timeouts and aborts, misuse. Every test runs over shm:// and sysv://.
import t from 'tap';
import { Mutex } from '../../state/mutex.js';
import { Semaphore } from '../../state/semaphore.js';
import { SharedState } from '../../state/shared-state.js';
import { ErrorCode } from '../../host/errors.js';
import { eventually, fileTimeout, scaled, startFixture, within } from '../helpers.js';
import { wakeStats } from '../../host/wake/index.js';
import { leftovers, stateUrl } from './common.js';

// Measured on a busy 2-core machine: ~25 s at scale 1. Timeout: 4x that, plus the stress share.
fileTimeout(t, 100, 20);
let before = leftovers();
t.beforeEach(() => { before = leftovers(); });
t.afterEach((sub) => { t.same(leftovers(), before, `nothing left behind by: ${sub.name}`); });

for (const scheme of ['shm', 'sysv'] as const) {
  t.test(`${scheme}: 4 processes × withLock read-modify-write increments: the total is exact`, async (t) => {
    const mutexUrl = stateUrl(scheme);
    const counterUrl = stateUrl(scheme);
    const mutex = await Mutex.open(mutexUrl);
    const state = await SharedState.open(counterUrl, { fields: { n: 'u64', go: 'bool' } });
    const per = scaled(20_000, 200);
    const children = [0, 1, 2, 3].map(() => startFixture(t, 'state-peer', ['count', mutexUrl, counterUrl, String(per)]));
    for (const c of children) await c.line(/^ready$/);
    state.set('go', true);
    for (const c of children) t.match(await c.line(/^done /, 240_000), /^done 0$/, 'no lock was recovered');
    for (const c of children) t.equal((await c.exit).code, 0);
    t.equal(state.get('n'), 4 * per, 'no increment was lost');
    state.close();
    mutex.close();
  });

  t.test(`${scheme}: SIGKILL of the holder: the next locker gets it with recovered: true`, async (t) => {
    const url = stateUrl(scheme);
    const mutex = await Mutex.open(url);
    const holder = startFixture(t, 'state-peer', ['hold', url]);
    await holder.line(/^locked$/);
    t.equal(mutex.tryLock(), false, 'held by a living process: tryLock fails');
    const waiter = startFixture(t, 'state-peer', ['lock', url]);
    await waiter.line(/^waiting$/);
    holder.kill('SIGKILL');
    await holder.exit;
    t.same(JSON.parse(await waiter.line(/^\{/)), { recovered: true }, 'the waiter took the dead holder\'s lock');
    t.equal((await waiter.exit).code, 0);
    // Released by the waiter: free now.
    t.same(mutex.tryLock(), { recovered: false });
    mutex.unlock();
    mutex.close();
  });

  t.test(`${scheme}: a lock held by a dead process is recovered by lock() in this process too`, async (t) => {
    const url = stateUrl(scheme);
    const mutex = await Mutex.open(url);
    const holder = startFixture(t, 'state-peer', ['hold', url]);
    await holder.line(/^locked$/);
    const waiting = mutex.lock();
    holder.kill('SIGKILL');
    t.same(await within(30_000, waiting, 'lock after the holder died'), { recovered: true });
    t.equal(mutex.locked, true);
    mutex.close();
    // close() released it.
    const again = await Mutex.open(url, { create: false }).catch((e: { code: string }) => e.code);
    t.equal(again, ErrorCode.NOT_FOUND, 'the creator removed the name on close');
  });

  t.test(`${scheme}: Semaphore initial 2: never more than 2 holders; a killed holder's unit comes back`, async (t) => {
    const semUrl = stateUrl(scheme);
    const holdersUrl = stateUrl(scheme);
    const sem = await Semaphore.open(semUrl, { initial: 2 });
    const holders = await SharedState.open(holdersUrl, { fields: { holders: 'i32', max: 'i32', go: 'bool' } });
    t.equal(sem.size, 2);
    t.equal(sem.value, 2);
    const n = scaled(2000, 100);
    const cyclers = [0, 1, 2].map(() => startFixture(t, 'state-peer', ['sem-cycle', semUrl, holdersUrl, String(n)]));
    for (const c of cyclers) await c.line(/^ready$/);
    holders.set('go', true);
    for (const c of cyclers) {
      const r = JSON.parse(await c.line(/^\{/, 240_000)) as { max: number; recovered: number };
      t.ok(r.max >= 1 && r.max <= 2, `at most 2 holders seen (max ${r.max})`);
      t.equal(r.recovered, 0);
    }
    t.ok((holders.get('max') as number) <= 2, `the shared high-water mark of holders is at most 2 (${holders.get('max')})`);
    t.equal(holders.get('holders'), 0);
    t.equal(sem.value, 2, 'every unit given back');

    const a = startFixture(t, 'state-peer', ['sem-hold', semUrl]);
    const b = startFixture(t, 'state-peer', ['sem-hold', semUrl]);
    await a.line(/^held$/);
    await b.line(/^held$/);
    t.equal(sem.tryAcquire(), false, 'both units held by living processes');
    const third = sem.acquire();
    a.kill('SIGKILL');
    t.same(await within(30_000, third, 'the killed holder\'s unit'), { recovered: true }, 'its unit came back');
    t.equal(sem.holding, 1);
    t.equal(sem.tryAcquire(), false, 'the other unit is still held by b');
    sem.release();
    t.equal(sem.value, 1);
    b.kill('SIGKILL');
    await b.exit;
    t.equal(sem.value, 2, 'a dead holder\'s unit counts as available');
    holders.close();
    sem.close();
  });
}

t.test('lock() waits for a release in the same process, times out, and aborts', async (t) => {
  const url = stateUrl('shm');
  const a = await Mutex.open(url);
  const b = await Mutex.open(url);
  t.same(await a.lock(), { recovered: false });
  await t.rejects(b.lock({ timeout: 50 }), { code: ErrorCode.TIMEOUT });
  const controller = new AbortController();
  const aborted = b.lock({ signal: controller.signal });
  controller.abort();
  await t.rejects(aborted, { code: ErrorCode.CLOSED });
  const waiting = b.lock();
  a.unlock();
  t.same(await within(30_000, waiting, 'lock after unlock'), { recovered: false });
  b.unlock();
  t.equal(await b.withLock(() => 7), 7, 'withLock returns what fn returns');
  await t.rejects(b.withLock(() => { throw new Error('boom'); }), /boom/);
  t.equal(b.locked, false, 'withLock released the lock when fn threw');
  b.close();
  a.close();
});

t.test('lock waits sleep on the futex wait thread, and Mutexes opened, waited on and closed again and again start no new one', async (t) => {
  // A thread costs ~0.1 s to start, and each one that ends leaves koffi's per-thread memory behind (three
  // mappings): the thread idles between uses instead (host/wake/thread.ts).
  const futexStats = () => wakeStats().futex ?? { parks: 0, started: 0 };
  const url = stateUrl('shm');
  const round = async () => {
    const a = await Mutex.open(url);
    const b = await Mutex.open(url);
    await a.lock();
    const parks = futexStats().parks;
    const waiting = b.lock();
    await eventually(() => futexStats().parks > parks, 'the second locker to sleep on the futex');
    a.unlock();
    t.same(await within(30_000, waiting, 'lock after unlock'), { recovered: false });
    b.unlock();
    b.close();
    a.close();
  };
  await round();
  const started = futexStats().started;
  t.ok(started >= 1, 'the wait went through a wait thread');
  const rounds = scaled(200, 10);
  for (let i = 0; i < rounds; i++) await round();
  t.equal(futexStats().started, started, `no wait thread started for ${rounds} more rounds`);
});

t.test('close() ends a pending lock() (ERR_SHMBUS_CLOSED) and a pending watch(); the lock stays usable by others', async (t) => {
  const url = stateUrl('shm');
  const a = await Mutex.open(url);
  const b = await Mutex.open(url);
  await a.lock();
  const pending = b.lock();
  b.close();
  await t.rejects(within(30_000, pending, 'the closed handle\'s lock()'), { code: ErrorCode.CLOSED });
  const c = await Mutex.open(url);
  const next = c.lock();
  a.unlock();
  t.same(await within(30_000, next, 'lock after unlock'), { recovered: false });
  c.close();
  a.close();

  const s = await SharedState.open(stateUrl('shm'), { fields: { x: 'u32' } });
  const watching = (async () => { let n = 0; for await (const _ of s.watch()) n++; return n; })();
  await new Promise((resolve) => setImmediate(resolve));
  s.close();
  t.equal(await within(30_000, watching, 'watch to end on close'), 0);
});

t.test('misuse: unlock without the lock, release without a unit, a closed handle, bad options', async (t) => {
  const m = await Mutex.open(stateUrl('shm'));
  t.throws(() => m.unlock(), { code: ErrorCode.BAD_STATE });
  await t.rejects(m.lock({ timeout: -1 }), { code: ErrorCode.BAD_ARGUMENT });
  const s = await Semaphore.open(stateUrl('shm'), { initial: 3 });
  t.throws(() => s.release(), { code: ErrorCode.BAD_STATE });
  await t.rejects(Semaphore.open(stateUrl('shm'), { initial: 0 }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(Semaphore.open(stateUrl('shm'), { initial: 1e6 }), { code: ErrorCode.BAD_ARGUMENT });
  await t.rejects(Semaphore.open(s.url, { initial: 2 }), { code: ErrorCode.VERSION_MISMATCH }, 'another unit count');
  const same = await Semaphore.open(s.url);
  t.equal(same.size, 3, 'attaching without initial takes the segment\'s count');
  same.close();
  s.close();
  m.close();
  t.throws(() => m.tryLock(), { code: ErrorCode.CLOSED });
  await t.rejects(Mutex.open(s.url + 'x', { create: false }), { code: ErrorCode.NOT_FOUND });
});
