/**
 * Entry of a plugin runner in a child process (isolation 'process', started by plugins/runner-start.ts).
 *
 * Inherited: fd 3 the ring segment (a sealed memfd), fd 4 the control page (a sealed memfd holding the words of
 * runner.ts's CTL_*), fd 5 a socket to the host, stdin the plugin's bytes; argv[2] the config as JSON.
 * The child asks for SIGKILL when its parent dies (PR_SET_PDEATHSIG) and exits if the parent is already gone.
 *
 * Across processes Atomics.wait cannot be woken (V8 emulates futexes per process), so the runner sleeps in the
 * kernel: futex_waitv on the control page's CTL_IN_SEQ word, shared (keyed by the memfd's page), and the host
 * rings it with FUTEX_WAKE. The runner rings the host with one byte '!' on fd 5; reports are JSON lines there.
 */
import { readFileSync, writeSync } from 'node:fs';
import { setParentDeathSignal, parentPid } from '../host/sys/prctl.js';
import { futexWaitv, addressOf } from '../host/sys/futex.js';
import { mmapFixed } from '../host/sys/shm.js';
import { FUTEX2_SIZE_U32 } from '../host/sys/constants.js';
import { CTL_IN_SEQ, CTL_INTS, runPlugin, type RunnerConfig } from './runner.js';

const SIGKILL = 9;
const SEGMENT_FD = 3;
const CONTROL_FD = 4;
const HOST_FD = 5;

const given = JSON.parse(process.argv[2] ?? '{}') as Omit<RunnerConfig, 'module' | 'fd'> & { parent: number };
// Die with the parent; if it is already gone (we were reparented before asking), leave now.
setParentDeathSignal(SIGKILL);
if (parentPid() !== given.parent) process.exit(1);

const controlMemory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
const controlBase = addressOf(new Uint8Array(controlMemory.buffer, 0, 0));
mmapFixed(controlBase, 4096, CONTROL_FD);
const ctl = new Int32Array(controlMemory.buffer, 0, CTL_INTS);
const waiter = new BigUint64Array([0n, controlBase + BigInt(CTL_IN_SEQ * 4), BigInt(FUTEX2_SIZE_U32)]);
const BELL = Buffer.from('!');

const module = new WebAssembly.Module(readFileSync(0));
runPlugin({ ...given, module, fd: SEGMENT_FD }, {
  ctl,
  sleep(seq) {
    waiter[0] = BigInt(seq >>> 0);
    futexWaitv(waiter, 1); // EAGAIN (the word moved), EINTR and a wake all mean: look again
  },
  ringHost() { writeSync(HOST_FD, BELL); },
  mapSegment(memory, address) {
    mmapFixed(addressOf(new Uint8Array(memory.buffer, 0, 0)) + BigInt(address), given.bytes, SEGMENT_FD);
  },
}, (report) => writeSync(HOST_FD, JSON.stringify(report) + '\n'));
process.exit(0);
