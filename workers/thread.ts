/**
 * The entry of a worker thread started by `spawn(module, { isolation: 'thread' })`. The descriptors the parent
 * names are its own (one fd table per process): the thread takes copies of them at once and tells the parent,
 * which then closes its own, so each side holds exactly one end (the parent closes the copies too if this thread
 * is terminated before it took them: context.ts THREAD_FDS_TAKEN). Then the module's path goes in
 * `process.argv[1]` and the module is imported.
 */
import { fileURLToPath } from 'node:url';
import { parentPort, workerData } from 'node:worker_threads';
import { dupFd } from '../host/sys/socket.js';
import { closeFd } from '../host/sys/shm.js';
import { checkContext, setWorkerContext, takeWorkerContext, THREAD_TOOK_FDS } from './context.js';
// Every module that declares libc functions through koffi, and the package entry, loaded before THREAD_TOOK_FDS:
// a thread terminated while koffi loads or declares functions aborts the whole process (napi_throw), and the
// parent terminates a thread only after that message (spawn.ts). The module's own imports then come from the cache.
import '../host/sys/dir.js';
import '../host/sys/fifo.js';
import '../host/sys/futex.js';
import '../host/sys/libc.js';
import '../host/sys/malloc.js';
import '../host/sys/mq.js';
import '../host/sys/msg.js';
import '../host/sys/prctl.js';
import '../host/sys/sched.js';
import '../host/sys/sem.js';
import '../host/sys/signal.js';
import '../host/sys/wakemq.js';
import '../index.js';

const data = workerData as { context: unknown; module: string; owner: Int32Array };
const context = checkContext(data.context);
const segmentFd = dupFd(context.segmentFd);
const socketFd = dupFd(context.socketFd);
parentPort!.postMessage([THREAD_TOOK_FDS, segmentFd, socketFd]);
setWorkerContext({ ...context, segmentFd, socketFd, owner: data.owner });
// A module that never asked for its channel leaves the copies unused: close them when the thread ends.
process.once('exit', () => {
  const left = takeWorkerContext();
  if (left) { try { closeFd(left.segmentFd); } catch { /* gone */ } try { closeFd(left.socketFd); } catch { /* gone */ } }
});
process.argv[1] = data.module.startsWith('file:') ? fileURLToPath(data.module) : data.module;
await import(data.module);
