/**
 * Process lifetime ties: PR_SET_PDEATHSIG, so that a worker process started by `spawn` (workers/) gets a signal
 * when the thread that forked it dies, even by SIGKILL, instead of living on as an orphan.
 *
 * `prctl(2)` is variadic; it is declared here with a fixed prototype of five integer arguments (ABI-compatible on
 * x86_64). The death signal is set by the child itself, first thing: there is a window between fork and that call
 * in which the parent may already have died, so the caller checks `parentPid()` right after and leaves if it is
 * not the parent it expects (the parent's death reparented it).
 */
import koffi from 'koffi';
import { SystemError } from '../errors.js';
import * as libc from './libc.js';

const lib = koffi.load('libc.so.6');
const c = {
  prctlGet: lib.func('prctl', 'int', ['int', koffi.out(koffi.pointer('int')), 'unsigned long', 'unsigned long', 'unsigned long']) as
    (option: number, out: number[], a3: number, a4: number, a5: number) => number,
  getppid: lib.func('int getppid()') as () => number,
};

/** <linux/prctl.h> */
const PR_SET_PDEATHSIG = 1;
const PR_GET_PDEATHSIG = 2;

/** Asks the kernel to send `signal` (a number, e.g. 9) to this process when its parent thread dies. */
export function setParentDeathSignal(signal: number): void {
  if (libc.prctl(PR_SET_PDEATHSIG, signal, 0, 0, 0) !== 0) {
    throw new SystemError('prctl', libc.lastErrno(), { option: 'PR_SET_PDEATHSIG', signal });
  }
}

/** The signal this process gets when its parent dies (0: none). */
export function parentDeathSignal(): number {
  const value = [0];
  if (c.prctlGet(PR_GET_PDEATHSIG, value, 0, 0, 0) !== 0) throw new SystemError('prctl', libc.lastErrno(), { option: 'PR_GET_PDEATHSIG' });
  return value[0]!;
}

/** The parent's pid as the kernel sees it now (after the parent died: the reaper that adopted us). */
export function parentPid(): number {
  return c.getppid();
}
