/**
 * The worker script of every dedicated thread (host/thread.ts): loads the loop of its kind, says 'ready', and runs
 * the loop until the main thread sets the stop flag. Nothing else ever runs on the thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { ThreadKind, ThreadMessage } from './thread.js';

const data = workerData as { kind: ThreadKind } & Record<string, unknown>;
const post = (message: ThreadMessage) => parentPort!.postMessage(message);

const run: (data: never, post: (message: ThreadMessage) => void) => void =
  data.kind === 'epoll' || data.kind === 'msgrcv' ? (await import('./blocking-loops.js')).run : (await import('./wake/wait-loops.js')).run;
// Every module is loaded: from now on the process may exit without waiting for this thread.
post('ready');
run(data as never, post);
