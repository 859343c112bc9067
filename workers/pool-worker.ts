/**
 * The worker a Pool starts (in a process or a thread): `node pool-worker.js <task module URL>`. It imports the
 * task module, takes its default export (the function a Piscina task module exports too), and answers the
 * parent's tasks one at a time over its parentChannel(). The protocol (see pool.ts):
 *   parent → worker  [id, task]
 *                    [id]  bytes        a task that is a Uint8Array (a Buffer): the next record carries it raw
 *   worker → parent  [id, 0, value]     the function returned (or resolved to) value
 *                    [id, 2]  bytes     it returned a Uint8Array: the next record carries it raw
 *                    [id, 1, error]     it threw or rejected: { name, message, stack, code }
 *                    [0, 0]             ready: the module is loaded (a task's run time starts from here at the earliest)
 *                    [0, 1, error]      the module could not be loaded or has no function to call; then it ends
 * Before running a task the worker claims it in the segment's claim table (assembly/layout.ts, "Task claims"): the
 * parent may have taken it back (to give it to an idle worker), and then it is skipped without an answer. Tasks
 * are numbered 1, 2, … in the order they arrive, as the parent numbered them when it sent them.
 * Binary tasks and results go as raw records (sendBytes) instead of inside msgpack: that saves an encode and a
 * decode copy of every byte, which for large buffers is most of the cost. They arrive as Uint8Arrays (as a
 * Buffer does through Piscina's structured clone).
 */
import { parentChannel } from './parent.js';
import { pairClaims } from './pair.js';
import { PAIR_CLAIM_SEQ_MAX, PAIR_CLAIM_SLOTS, PAIR_CLAIM_STARTED } from '../assembly/layout.js';
import { describeThrown } from './errors.js';
import { isConnectionEnd, MessageTooLargeError } from '../host/errors.js';

type TaskFunction = (task: unknown) => unknown;

/** Longest an idle sync-idle worker blocks before letting its event loop run once (see the loop below). */
const SYNC_IDLE_MS = 20;

/** The function a task module offers: its default export (an ES module's, or a CommonJS module.exports). */
function taskFunction(mod: Record<string, unknown>): TaskFunction {
  let candidate: unknown = mod.default;
  if (typeof candidate === 'object' && candidate !== null && typeof (candidate as { default?: unknown }).default === 'function') {
    candidate = (candidate as { default: unknown }).default;
  }
  if (typeof candidate !== 'function') throw new TypeError('the task module has no default export that is a function');
  return candidate as TaskFunction;
}

const target = process.argv[2];
const conn = await parentChannel();

/** Sends `value` to the parent, unless it is gone: if it closed the channel (its pool was closed or destroyed while
 * this worker started or ran a task), nothing is left to tell it, and the loop below ends at its next read. */
function tell(value: unknown): void {
  try {
    conn.send(value);
  } catch (error) {
    if (!isConnectionEnd(error)) throw error;
  }
}
let fn: TaskFunction | undefined;
try {
  if (target === undefined) throw new TypeError('no task module given');
  fn = taskFunction(await import(target) as Record<string, unknown>);
} catch (error) {
  tell([0, 1, describeThrown(error)]);
  process.exitCode = 1;
}

if (fn) {
  const claims = pairClaims(conn)?.view;
  /** The number of the last task that arrived. */
  let seq = 0;
  tell([0, 0]);
  /** The id of a task whose bytes come in the next record. */
  let bytesFor = -1;
  // A sync-idle pair (pair.ts): with nothing to run, block this thread on the ring word until the parent's commit
  // wakes it (one FUTEX_WAKE) instead of parking through the event loop (a doorbell byte, an epoll wakeup, a
  // promise turn: the cost of most small tasks). The event loop gets a turn every SYNC_IDLE_MS meanwhile, so the
  // task module's timers run late by up to that much while the worker idles, never while a task runs (as with
  // Piscina, whose idle workers block in Atomics.wait).
  const syncIdle = conn.syncWaitable;
  const messages = conn[Symbol.asyncIterator]();
  for (;;) {
    if (syncIdle && !conn.waitSync(SYNC_IDLE_MS)) {
      // Answers still queued (the parent is slow to read them) go out through the event loop first.
      if (conn.queued > 0) await conn.drained().catch(() => { /* the channel failed: next() says how */ });
      else await new Promise<void>((resolve) => setImmediate(resolve));
      continue;
    }
    const next = await messages.next();
    if (next.done) break;
    const message = next.value;
    let id: number;
    let task: unknown;
    if (bytesFor >= 0) {
      id = bytesFor;
      bytesFor = -1;
      if (!(message instanceof Uint8Array)) continue;
      task = message;
    } else {
      if (!Array.isArray(message) || typeof message[0] !== 'number') continue;
      if (message.length === 1) { bytesFor = message[0]; continue; }
      if (message.length !== 2) continue;
      id = message[0];
      task = message[1];
    }
    seq = seq >= PAIR_CLAIM_SEQ_MAX ? 1 : seq + 1;
    // SYNC: pairs with the parent's compare-and-swap taking the task back (pool.ts #revoke); one of the two wins.
    if (claims && Atomics.compareExchange(claims, seq & (PAIR_CLAIM_SLOTS - 1), seq, seq | PAIR_CLAIM_STARTED) !== seq) continue;
    let result: unknown;
    let failed = false;
    try {
      result = fn(task);
      if (typeof (result as { then?: unknown } | null)?.then === 'function') result = await result;
    } catch (error) {
      result = describeThrown(error);
      failed = true;
    }
    try {
      if (failed) conn.send([id, 1, result]);
      else if (result instanceof Uint8Array) {
        if (result.length > conn.maxMessageSize) throw new MessageTooLargeError(result.length, conn.maxMessageSize);
        conn.send([id, 2]);
        conn.sendBytes(result);
      } else conn.send([id, 0, result]);
    } catch (error) {
      // The value could not be sent (too large for the ring, not encodable): the task fails with that reason.
      if (!isConnectionEnd(error)) tell([id, 1, describeThrown(error)]);
    }
  }
}
await conn.close();
