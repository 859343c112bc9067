/**
 * Starting and stopping a plugin's runner: the one place that knows how a runner is hosted. Today a
 * worker_threads Worker (isolation 'thread'); the workers/ machinery (spawn with a channel over a memfd) is meant
 * to replace this file, keeping its small interface (RunnerHandle).
 */
import { Worker } from 'node:worker_threads';
import { CTL_INTS, CTL_IN_SEQ, CTL_SLEEPING, CTL_STOP, type RunnerConfig, type RunnerReport } from './runner.js';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BadArgumentError, ErrorCode, ShmbusError } from '../host/errors.js';

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

/**
 * The compiled runner script: next to this file when compiled; from the sources (tap runs .ts files) the copy
 * in dist/ that `npm run build` made, so the thread runs plain JavaScript without a loader and starts fast (as
 * host/wake/thread.ts does).
 */
function threadScript(): string {
  for (const rel of ['./runner-thread.js', '../dist/plugins/runner-thread.js']) {
    const path = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(path)) return path;
  }
  throw new ShmbusError(ErrorCode.NOT_FOUND, 'the plugin runner script is not built; run npm run build', { details: { file: 'dist/plugins/runner-thread.js' } });
}

/** Starts a runner with `config`; its reports and bells arrive through `events`. */
export function startRunner(isolation: Isolation, config: RunnerConfig, events: RunnerEvents): RunnerHandle {
  if (isolation !== 'thread') throw new BadArgumentError('isolation not supported yet', { isolation });
  const ctl = new Int32Array(new SharedArrayBuffer(CTL_INTS * 4));
  const worker = new Worker(threadScript(), { workerData: { config, ctl }, execArgv: [], stdin: false });
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
