/**
 * The entry of a worker process started by `spawn(module, { isolation: 'process' })`:
 *   node [execArgv] child.js <module URL> [args…]
 * It ties the process's life to the parent's (PR_SET_PDEATHSIG), takes the context the parent left in the
 * environment, makes the inherited descriptors close-on-exec (so the worker's own children inherit neither), puts
 * the module's path in `process.argv[1]` as if it had been started directly, and imports it.
 */
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setParentDeathSignal, parentPid } from '../host/sys/prctl.js';
import { dupFd } from '../host/sys/socket.js';
import { closeFd } from '../host/sys/shm.js';
import { CONTEXT_ENV, checkContext, setWorkerContext } from './context.js';

const SIGKILL = 9;

const raw = process.env[CONTEXT_ENV];
delete process.env[CONTEXT_ENV];
const target = process.argv[2];
if (raw === undefined || target === undefined) {
  process.stderr.write('shmbus: workers/child.js is started by spawn(), not by hand\n');
  process.exit(70);
}
const context = checkContext(JSON.parse(raw));
// The parent may have died between our fork and this call: then we are already an orphan and nobody will signal.
setParentDeathSignal(SIGKILL);
if (parentPid() !== context.parentPid) process.exit(70);
// stdio descriptors arrive without FD_CLOEXEC: move them to close-on-exec copies.
const segmentFd = dupFd(context.segmentFd);
const socketFd = dupFd(context.socketFd);
closeFd(context.segmentFd);
closeFd(context.socketFd);
setWorkerContext({ ...context, segmentFd, socketFd });

const url = /^[a-z][a-z0-9+.-]*:/i.test(target) && !/^[a-z]:[\\/]/i.test(target) ? target : pathToFileURL(target).href;
process.argv.splice(1, 2, target.startsWith('file:') ? fileURLToPath(target) : target);
await import(url);
