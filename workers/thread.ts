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
// Loaded before THREAD_TOOK_FDS, after which the parent may terminate this thread (host/thread.ts
// terminationGate): the package entry, which loads every host/sys module that declares libc functions through
// koffi but prctl's (the workers' own), and msgpackr's native extractor. The module's own imports of shmbus then
// come from the cache.
import '../index.js';
import '../host/sys/prctl.js';

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
