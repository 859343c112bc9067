// A bus against other local users and against its own members: files another user planted are refused before
// anything is mapped, a planted symlink is never followed, slot claims have exactly one winner however many race,
// and a shrunk topic is refused instead of mapped.
import t from 'tap';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, rmSync, symlinkSync, truncateSync, unlinkSync, writeFileSync, writeSync, chmodSync, statSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import {
  REGISTRY_MEMBERS, TOPIC_HEADER_OFFSET, TOPIC_PUBLISHER_CLAIM_OFFSET, TOPIC_RECLAIM_GEN_OFFSET, memberOffset, MEMBER_CLAIM_OFFSET,
} from '../../assembly/layout.js';
import { Bus } from '../../bus/index.js';
import { claimOf } from '../../host/claim.js';
import { ErrorCode, ShmbusError } from '../../host/errors.js';
import { fileTimeout, NOBODY, asUnprivileged, startChild, unique, within, type TestLike } from '../helpers.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 60);

/** A pid that cannot exist (above the kernel's largest pid_max), so its claim is dead. */
const DEAD_PID = 0x3ffffff0;
const deadClaim = claimOf(DEAD_PID, 12345n);

/** Runs `code` (CommonJS, with `fs`) as the unprivileged attacker and waits for it to finish. */
async function asAttacker(t: TestLike, code: string): Promise<void> {
  const who = asUnprivileged();
  if ('skip' in who) throw new Error(who.skip);
  const child = startChild(t, [...who.prefix, process.execPath, '-e', `const fs = require('fs'); ${code}; console.log('done')`]);
  await child.line('done');
  await within(30_000, child.exit, 'attacker to exit');
}

function expectDenied(t: { match(a: unknown, b: unknown, m: string): unknown }, error: unknown, what: string): void {
  t.match(error, { code: ErrorCode.PERMISSION_DENIED }, what);
  t.match((error as ShmbusError).details, { owner: NOBODY }, `${what}: the error names the owner`);
}

const rootOnly = 'skip' in asUnprivileged() ? (asUnprivileged() as { skip: string }).skip : false;

t.test('a registry another user pre-created in /dev/shm (0666) is refused, naming the owner; nothing is written to it', { skip: rootOnly }, async (t) => {
  const name = unique('squat');
  const file = `/dev/shm/shmbus.bus.${name}`;
  t.teardown(() => { try { unlinkSync(file); } catch { /* gone */ } });
  await asAttacker(t, `fs.writeFileSync(${JSON.stringify(file)}, Buffer.alloc(65536)); fs.chmodSync(${JSON.stringify(file)}, 0o666)`);
  t.equal(statSync(file).uid, NOBODY);
  const error = await Bus.open(`shm://${name}`).then(() => undefined, (e: unknown) => e);
  expectDenied(t, error, 'Bus.open');
  t.ok(readFileSync(file).every((b) => b === 0), 'the planted file is untouched');
});

t.test('a topic file another user pre-created is refused by publisher() and subscribe(); nothing is published into it', { skip: rootOnly }, async (t) => {
  const name = unique('squatt');
  const bus = await Bus.open(`shm://${name}`);
  t.teardown(() => bus.destroy());
  const file = `/dev/shm/shmbus.bus.${name}.ticks`;
  t.teardown(() => { try { unlinkSync(file); } catch { /* gone */ } });
  await asAttacker(t, `fs.writeFileSync(${JSON.stringify(file)}, Buffer.alloc(1 << 20)); fs.chmodSync(${JSON.stringify(file)}, 0o666)`);
  let error: unknown;
  try { bus.publisher('ticks', { capacity: 4096 }).publish({ secret: 1 }); } catch (e) { error = e; }
  expectDenied(t, error, 'publisher()');
  error = undefined;
  try { bus.subscribe('ticks', { create: false }); } catch (e) { error = e; }
  expectDenied(t, error, 'subscribe()');
  t.ok(readFileSync(file).every((b) => b === 0), 'nothing was written into the planted file');
});

t.test('file:// bus: a registry another user planted in a shared directory is refused', { skip: rootOnly }, async (t) => {
  const dir = `/tmp/${unique('busdir')}`;
  mkdirSync(dir);
  chmodSync(dir, 0o1777);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await asAttacker(t, `fs.writeFileSync('${dir}/m.registry', Buffer.alloc(65536)); fs.chmodSync('${dir}/m.registry', 0o666)`);
  const error = await Bus.open(`file://${dir}/m`).then(() => undefined, (e: unknown) => e);
  expectDenied(t, error, 'Bus.open(file://)');
});

t.test('allow.uids accepts another user\'s files: the owner check passes (the empty file then fails as not a registry)', { skip: rootOnly }, async (t) => {
  const name = unique('allow');
  const file = `/dev/shm/shmbus.bus.${name}`;
  t.teardown(() => { try { unlinkSync(file); } catch { /* gone */ } });
  await asAttacker(t, `fs.writeFileSync(${JSON.stringify(file)}, Buffer.alloc(65536)); fs.chmodSync(${JSON.stringify(file)}, 0o600)`);
  const error = await Bus.open(`shm://${name}`, { allow: { uids: [NOBODY] } }).then(() => undefined, (e: unknown) => e);
  t.match(error, { code: ErrorCode.CORRUPT }, 'got past the owner check, refused as not a bus registry');
});

t.test('a same-user bus file writable by others is refused unless mode says so', async (t) => {
  const name = unique('loose');
  const file = `/dev/shm/shmbus.bus.${name}`;
  t.teardown(() => { try { unlinkSync(file); } catch { /* gone */ } });
  writeFileSync(file, Buffer.alloc(65536));
  chmodSync(file, 0o666);
  const error = await Bus.open(`shm://${name}`).then(() => undefined, (e: unknown) => e);
  t.match(error, { code: ErrorCode.PERMISSION_DENIED, details: { mode: '0o666' } });
});

t.test('a symlink planted where a file:// bus file goes is never followed', async (t) => {
  const dir = `/tmp/${unique('busln')}`;
  mkdirSync(dir);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(`${dir}/target`, 'precious');
  symlinkSync(`${dir}/target`, `${dir}/m.registry`);
  const error = await Bus.open(`file://${dir}/m`).then(() => undefined, (e: unknown) => e);
  t.ok(error instanceof ShmbusError, `typed error: ${String(error)}`);
  t.equal(readFileSync(`${dir}/target`, 'utf8'), 'precious', 'the target is untouched');
});

t.test('a topic shrunk by a member is refused by a new subscriber (CORRUPT), never mapped past its end', async (t) => {
  const name = unique('shrunk');
  const bus = await Bus.open(`shm://${name}`);
  t.teardown(() => bus.destroy());
  const pub = bus.publisher('t', { capacity: 65536 });
  pub.publish({ n: 1 });
  truncateSync(`/dev/shm/shmbus.bus.${name}.t`, 4096);
  let error: unknown;
  const sub = bus.subscribe('t', { create: false });
  try { await within(10_000, sub.receive(), 'receive on a shrunk topic'); } catch (e) { error = e; }
  t.match(error, { code: ErrorCode.CORRUPT });
  await sub.close();
});

t.test('claim words: many threads race for slots held by a dead claim; each slot has exactly one winner', async (t) => {
  const slots = 64;
  const threads = 8;
  const sab = new SharedArrayBuffer(8 * (slots + 2));
  const words = new BigUint64Array(sab);
  for (let i = 0; i < slots; i++) words[i] = deadClaim;
  const claimUrl = pathToFileURL(fileURLToPath(new URL('../../dist/host/claim.js', import.meta.url))).href;
  const code = `
    const { workerData, parentPort } = require('node:worker_threads');
    import(${JSON.stringify(claimUrl)}).then(({ takeClaim, claimOf }) => {
      const words = new BigUint64Array(workerData.sab);
      const gate = new Int32Array(workerData.sab, 8 * workerData.slots, 2);
      // Every thread claims with its own value (as processes would), and judges only the planted claim dead.
      const mine = claimOf(1000 + workerData.id, BigInt(workerData.id));
      const alive = (c) => c !== workerData.dead;
      Atomics.add(gate, 1, 1);
      Atomics.wait(gate, 0, 0);
      const won = [];
      for (let i = 0; i < workerData.slots; i++) if (takeClaim(words, i, mine, alive)) won.push(i);
      parentPort.postMessage(won);
    });`;
  const gate = new Int32Array(sab, 8 * slots, 2);
  const results = Array.from({ length: threads }, (_, id) => new Promise<number[]>((resolve, reject) => {
    const w = new Worker(code, { eval: true, workerData: { sab, slots, id, dead: deadClaim } });
    w.once('message', resolve);
    w.once('error', reject);
  }));
  await within(60_000, (async () => { while (Atomics.load(gate, 1) < threads) await new Promise((r) => setTimeout(r, 1)); })(), 'threads to reach the gate');
  Atomics.store(gate, 0, 1);
  Atomics.notify(gate, 0);
  const won = await within(60_000, Promise.all(results), 'threads to finish');
  const counts = new Array<number>(slots).fill(0);
  for (const list of won) for (const i of list) counts[i]!++;
  t.same(counts, new Array(slots).fill(1), 'every slot won exactly once');
  t.notOk(words.subarray(0, slots).some((w) => w === deadClaim), 'no slot kept the dead claim');
});

t.test('bus: members and would-be publishers racing in threads over dead claims: distinct slots, one publisher', async (t) => {
  const name = unique('race');
  const url = `shm://${name}`;
  const bus = await Bus.open(url);
  t.teardown(() => bus.destroy());
  // Plant dead claims in every member slot but ours, and as the topic's publisher.
  const engine = bus._engine;
  const registryAt = (bus as unknown as { registry: { at: number } }).registry.at;
  const words = new BigUint64Array(engine.memory.buffer);
  const mySlot = (bus as unknown as { memberSlot: number }).memberSlot;
  for (let i = 0; i < REGISTRY_MEMBERS; i++) if (i !== mySlot) words[(registryAt + memberOffset(i) + MEMBER_CLAIM_OFFSET) / 8] = deadClaim;
  const pub = bus.publisher('t', { capacity: 4096 });
  const topicAt = (pub as unknown as { mapped: { at: number } }).mapped.at;
  // Planted while the topic is still mapped here; close() then leaves it (the claim is no longer ours).
  words[(topicAt + TOPIC_HEADER_OFFSET + TOPIC_PUBLISHER_CLAIM_OFFSET) / 8] = deadClaim;
  await pub.close();
  const busUrl = pathToFileURL(fileURLToPath(new URL('../../dist/bus/index.js', import.meta.url))).href;
  const threads = 6;
  const sab = new SharedArrayBuffer(8);
  const gate = new Int32Array(sab);
  const code = `
    const { workerData, parentPort } = require('node:worker_threads');
    import(${JSON.stringify(busUrl)}).then(async ({ Bus }) => {
      const gate = new Int32Array(workerData.sab);
      Atomics.add(gate, 1, 1);
      Atomics.wait(gate, 0, 0);
      const bus = await Bus.open(workerData.url);
      let publisher = false;
      try { bus.publisher('t', { capacity: 4096 }); publisher = true; } catch (e) { if (e.code !== 'ERR_SHMBUS_EXISTS') throw e; }
      parentPort.postMessage({ slot: bus.memberSlot, publisher });
      // Stay a member until told, so no other thread can reuse this slot before all have joined.
      parentPort.once('message', async () => { await bus.close(); parentPort.postMessage('closed'); });
    });`;
  const workers = Array.from({ length: threads }, () => new Worker(code, { eval: true, workerData: { sab, url } }));
  const results = workers.map((w) => new Promise<{ slot: number; publisher: boolean }>((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  }));
  await within(60_000, (async () => { while (Atomics.load(gate, 1) < threads) await new Promise((r) => setTimeout(r, 1)); })(), 'threads to reach the gate');
  Atomics.store(gate, 0, 1);
  Atomics.notify(gate, 0);
  const got = await within(60_000, Promise.all(results), 'threads to join');
  const memberSlots = got.map((g) => g.slot);
  t.equal(new Set(memberSlots).size, threads, `distinct member slots: ${memberSlots.join(' ')}`);
  t.notOk(memberSlots.includes(mySlot), 'nobody took a live member\'s slot');
  t.equal(got.filter((g) => g.publisher).length, 1, 'exactly one publisher');
  await within(60_000, Promise.all(workers.map((w) => new Promise((resolve) => { w.once('message', resolve); w.postMessage('close'); }))), 'threads to close');
  await Promise.all(workers.map((w) => w.terminate()));
  t.ok(existsSync(`/dev/shm/shmbus.bus.${name}`), 'the bus outlives the threads (we are still a member)');
});

t.test('a join held off by a publish in progress (as while its publisher is preempted there) joins once it ends', async (t) => {
  const name = unique('held');
  const bus = await Bus.open(`shm://${name}`);
  t.teardown(() => bus.destroy());
  const pub = bus.publisher('t', { capacity: 65536 });
  pub.publish({ n: 0 });
  // The topic's reclaim word, odd while a publish reclaims room: a publisher stopped there holds every join off.
  const fd = openSync(`/dev/shm/shmbus.bus.${name}.t`, 'r+');
  t.teardown(() => closeSync(fd));
  const at = TOPIC_HEADER_OFFSET + TOPIC_RECLAIM_GEN_OFFSET;
  const word = Buffer.alloc(4);
  readSync(fd, word, 0, 4, at);
  const gen = word.readUInt32LE(0);
  const setGen = (value: number) => { word.writeUInt32LE(value >>> 0, 0); writeSync(fd, word, 0, 4, at); };
  setGen(gen | 1);
  const sub = bus.subscribe('t', { create: false });
  t.teardown(() => sub.close());
  // Both the subscribe's own try and the first of receive() are held off (each makes all of its attempts at once).
  let settled = false;
  const got = sub.receive().then((v) => ({ v }), (e: unknown) => ({ e })).finally(() => { settled = true; });
  setGen(gen);
  // The publisher goes on; the subscription joins on a later try and takes what comes after.
  for (let n = 1; !settled; n++) {
    pub.publish({ n });
    await new Promise((resolve) => setImmediate(resolve));
  }
  const result = await within(30_000, got, 'a message');
  t.ok('v' in result && typeof (result.v as { n?: unknown }).n === 'number', `joined on a later try and received: ${JSON.stringify(result)}`);
});
