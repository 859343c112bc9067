/**
 * The worker a Pool starts (in a process or a thread): `node pool-worker.js <task module URL>`. It imports the
 * task module, takes its default export (the function a Piscina task module exports too), and answers the
 * parent's tasks one at a time over its parentChannel(). The protocol (see pool.ts):
 *   parent → worker  [id, task]
 *   worker → parent  [id, 0, value]     the function returned (or resolved to) value
 *                    [id, 1, error]     it threw or rejected: { name, message, stack, code }
 *                    [0, 1, error]      the module could not be loaded or has no function to call; then it ends
 */
import { parentChannel } from './parent.js';
import { describeThrown } from './errors.js';

type TaskFunction = (task: unknown) => unknown;

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
let fn: TaskFunction | undefined;
try {
  if (target === undefined) throw new TypeError('no task module given');
  fn = taskFunction(await import(target) as Record<string, unknown>);
} catch (error) {
  conn.send([0, 1, describeThrown(error)]);
  process.exitCode = 1;
}

if (fn) {
  for await (const message of conn) {
    if (!Array.isArray(message) || message.length !== 2 || typeof message[0] !== 'number') continue;
    const id = message[0];
    let reply: unknown[];
    try {
      const result = fn(message[1]);
      reply = [id, 0, typeof (result as { then?: unknown } | null)?.then === 'function' ? await result : result];
    } catch (error) {
      reply = [id, 1, describeThrown(error)];
    }
    try {
      conn.send(reply);
    } catch (error) {
      // The value could not be sent (too large for the ring, not encodable): the task fails with that reason.
      conn.send([id, 1, describeThrown(error)]);
    }
  }
}
await conn.close();
