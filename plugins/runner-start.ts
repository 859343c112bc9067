/**
 * Starting and stopping a plugin's runner: the one place that knows how a runner is hosted. Today a
 * worker_threads Worker (isolation 'thread'); the workers/ machinery (spawn with a channel over a memfd) is meant
 * to replace this file, keeping its small interface (RunnerHandle).
 */
import { Worker } from 'node:worker_threads';
import { CTL_INTS, CTL_IN_SEQ, CTL_SLEEPING, CTL_STOP, type RunnerConfig, type RunnerReport } from './runner.js';
import { BadArgumentError } from '../host/errors.js';

/** The host's grip on one running runner. */
export interface RunnerHandle {
  /** Tells a sleeping runner to look at ring IN again (call after committing to ring IN or releasing ring OUT). */
  kick(): void;
  /** Ends the runner now, even inside an endless loop of the plugin. Resolves once it is gone. */
  terminate(): Promise<void>;
}

export interface RunnerEvents {
  /** The runner rang: the host's parked end of a ring must look again. */
  onBell(): void;
  onReport(report: RunnerReport): void;
  /** The runner is gone (after terminate, or on its own); `error` when it died of an exception. */
  onExit(error?: Error): void;
}

/** Isolation modes a runner can be started in. */
export type Isolation = 'thread' | 'process';

const FROM_SOURCE = import.meta.url.endsWith('.ts');
const THREAD_URL = new URL(`./runner-thread${FROM_SOURCE ? '.ts' : '.js'}`, import.meta.url);
/** From source the worker needs the test runner's TypeScript loader; compiled it needs no flags at all. */
const EXEC_ARGV = FROM_SOURCE ? process.execArgv.filter((a) => !a.startsWith('--input-type')) : [];

/** Starts a runner with `config`; its reports and bells arrive through `events`. */
export function startRunner(isolation: Isolation, config: RunnerConfig, events: RunnerEvents): RunnerHandle {
  if (isolation !== 'thread') throw new BadArgumentError('isolation not supported yet', { isolation });
  const ctl = new Int32Array(new SharedArrayBuffer(CTL_INTS * 4));
  const worker = new Worker(THREAD_URL, { workerData: { config, ctl }, execArgv: EXEC_ARGV, stdin: false });
  let gone = false;
  const exited = new Promise<void>((resolve) => {
    let failure: Error | undefined;
    worker.on('error', (error) => { failure = error; });
    worker.on('exit', () => { gone = true; resolve(); events.onExit(failure); });
  });
  worker.on('message', (m: 0 | RunnerReport) => {
    if (m === 0) events.onBell();
    else events.onReport(m);
  });
  return {
    kick() {
      // SYNC: pairs with the runner's load of CTL_IN_SEQ before its poll and its Atomics.wait on the word.
      Atomics.add(ctl, CTL_IN_SEQ, 1);
      if (Atomics.load(ctl, CTL_SLEEPING) !== 0) Atomics.notify(ctl, CTL_IN_SEQ);
    },
    async terminate() {
      if (!gone) {
        Atomics.store(ctl, CTL_STOP, 1);
        Atomics.notify(ctl, CTL_IN_SEQ);
        await worker.terminate();
      }
      await exited;
    },
  };
}
