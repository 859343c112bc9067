/**
 * Starting and stopping a plugin's runner: the one place that knows how a runner is hosted. Today a
 * worker_threads Worker (isolation 'thread'); the workers/ machinery (spawn with a channel over a memfd) is meant
 * to replace this file, keeping its small interface (RunnerHandle).
 */
import { Worker } from 'node:worker_threads';
import {
  CTL_INTS, CTL_IN_SEQ, CTL_MAPPED, CTL_OUTBOX, CTL_SEEN, CTL_SLEEPING, CTL_STOP, MAP_DONE, MAP_FAILED, RUNNER_LOADED,
  type MapRequest, type RunnerConfig, type RunnerReport,
} from './runner.js';
import { spawn, type SpawnOptions } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { getEngine } from '../host/engine.js';
import { Region } from '../host/region.js';
import { terminationGate } from '../host/thread.js';
import { futexWake, addressOf } from '../host/sys/futex.js';
import { mmapFixed } from '../host/sys/shm.js';
import { WASM_PAGE_SIZE } from '../assembly/layout.js';
import { fileURLToPath } from 'node:url';
import { BadArgumentError, ErrorCode, ShmbusError } from '../host/errors.js';

/** The host's grip on one running runner. */
export interface RunnerHandle {
  /** Tells a sleeping runner to look at ring IN again (call after committing to ring IN or releasing ring OUT).
   * True when the runner was awake (it will see the records within its spin, without a wakeup). */
  kick(): boolean;
  /** After a release of ring OUT: kicks the runner if the plugin's outbox waits for that room. */
  released(): void;
  /** Makes an awake runner poll once more and start its spin over; a sleeping one is left asleep, and its
   * SLEEPING flag is not taken (so the next kick still tells truly whether the runner is awake). */
  nudge(): void;
  /** Whether the runner has polled since the last kick (or nudge): it is on a core, its reply is coming. */
  seen(): boolean;
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

/** Isolation modes a runner can be started in: the same as a worker's. */
import type { Isolation } from '../workers/context.js';
export type { Isolation };

/**
 * The compiled runner script: next to this file when compiled; from the sources (tap runs .ts files) the copy
 * in dist/ that `npm run build` made, so the thread runs plain JavaScript without a loader and starts fast (as
 * host/wake/thread.ts does).
 */
function script(name: string): string {
  for (const rel of [`./${name}.js`, `../dist/plugins/${name}.js`]) {
    const path = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(path)) return path;
  }
  throw new ShmbusError(ErrorCode.NOT_FOUND, 'the plugin runner script is not built; run npm run build', { details: { file: `dist/plugins/${name}.js` } });
}

/**
 * The control-word side of a RunnerHandle, the same for both isolations: only how a sleeping runner is woken
 * differs (`wake`: Atomics.notify for a thread, a futex wake for a process).
 */
function controls(ctl: Int32Array, wake: () => void): Pick<RunnerHandle, 'kick' | 'released' | 'nudge' | 'seen'> {
  const kick = (): boolean => {
    // SYNC: pairs with the runner's load of CTL_IN_SEQ before its poll and its wait on the word.
    Atomics.add(ctl, CTL_IN_SEQ, 1);
    // Taking the flag: the kicks that follow before the runner is up make no second system call.
    if (Atomics.exchange(ctl, CTL_SLEEPING, 0) === 0) return true;
    wake();
    return false;
  };
  return {
    kick,
    released() {
      if (Atomics.load(ctl, CTL_OUTBOX) !== 0) kick();
    },
    nudge() {
      if (Atomics.load(ctl, CTL_SLEEPING) === 0) Atomics.add(ctl, CTL_IN_SEQ, 1);
    },
    seen() {
      // SYNC: pairs with the runner's store of CTL_SEEN after its load of CTL_IN_SEQ.
      return Atomics.load(ctl, CTL_SEEN) === Atomics.load(ctl, CTL_IN_SEQ);
    },
  };
}

/** Starts a runner with `config` (`wasm`: the module's bytes, for a process); reports and bells arrive through `events`. */
export function startRunner(isolation: Isolation, config: RunnerConfig, wasm: Uint8Array, events: RunnerEvents): RunnerHandle {
  if (isolation === 'process') return startProcess(config, wasm, events);
  if (isolation !== 'thread') throw new BadArgumentError('unknown isolation', { isolation });
  const ctl = new Int32Array(new SharedArrayBuffer(CTL_INTS * 4));
  const worker = new Worker(script('runner-thread'), { workerData: { config, ctl }, execArgv: [], stdin: false });
  let gone = false;
  const gate = terminationGate(worker);
  const exited = new Promise<void>((resolve) => {
    let failure: Error | undefined;
    worker.on('error', (error) => { failure = error; });
    worker.on('exit', () => { gone = true; resolve(); events.onExit(failure); });
  });
  worker.on('message', (m: 0 | typeof RUNNER_LOADED | RunnerReport | MapRequest) => {
    if (m === 0) events.onBell();
    else if (m === RUNNER_LOADED) gate.loaded();
    else if ('map' in m) mapForRunner(ctl, config, m);
    else events.onReport(m);
  });
  return {
    ...controls(ctl, () => { Atomics.notify(ctl, CTL_IN_SEQ); }),
    async terminate() {
      if (!gone) {
        Atomics.store(ctl, CTL_STOP, 1);
        Atomics.notify(ctl, CTL_IN_SEQ);
        await gate.terminate();
      }
      await exited;
    },
  };
}

/**
 * Answers a thread runner's MapRequest: maps the segment over the plugin memory's bytes [address, address +
 * config.bytes), which must be page-aligned and inside the memory as it is now (checked here again: the address
 * came from the plugin), then wakes the runner with the outcome.
 */
function mapForRunner(ctl: Int32Array, config: RunnerConfig, request: MapRequest): void {
  let outcome = MAP_FAILED;
  try {
    const { map: address, memory } = request;
    const size = memory.buffer.byteLength;
    if (Number.isInteger(address) && address > 0 && address % WASM_PAGE_SIZE === 0 && address + config.bytes <= size) {
      mmapFixed(addressOf(new Uint8Array(memory.buffer, 0, 0)) + BigInt(address), config.bytes, config.fd);
      outcome = MAP_DONE;
    }
  } catch { /* MAP_FAILED: the runner reports it */ }
  Atomics.store(ctl, CTL_MAPPED, outcome);
  Atomics.notify(ctl, CTL_MAPPED);
}

/** The control page of a process runner: a sealed memfd mapped into this process's engine and the child's. */
const CONTROL_BYTES = 4096;

function startProcess(config: RunnerConfig, wasm: Uint8Array, events: RunnerEvents): RunnerHandle {
  const engine = getEngine();
  const control = Region.createMemfd(`shmbus-plugin-ctl-${process.pid}`, { size: CONTROL_BYTES });
  let window: number;
  try {
    window = engine.allocWindow(CONTROL_BYTES);
    control.mapAt(engine.address(window));
  } catch (error) {
    control.close();
    throw error;
  }
  const ctl = new Int32Array(engine.memory.buffer, window, CTL_INTS);
  const wakeAddress = engine.address(window + CTL_IN_SEQ * 4);
  const { module: _module, fd: _fd, ...rest } = config;
  const child = spawn(process.execPath, [script('runner-process'), JSON.stringify({ ...rest, parent: process.pid })], {
    stdio: ['pipe', 'inherit', 'inherit', config.fd, control.fd, 'pipe'],
    env: { ...process.env, NODE_OPTIONS: '' },
    execArgv: [],
  } as SpawnOptions);
  child.stdin!.on('error', () => { /* the child died before reading: its exit says so */ });
  child.stdin!.end(wasm);
  const host = (child.stdio as unknown as Readable[])[5]!;
  let line = '';
  host.on('data', (chunk: Buffer) => {
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i]!;
      if (line.length === 0 && c === 0x21) { events.onBell(); continue; }
      if (c !== 0x0a) {
        line += String.fromCharCode(c);
        if (line.length > 65536) { child.kill('SIGKILL'); line = ''; }
        continue;
      }
      let report: RunnerReport | undefined;
      try { report = JSON.parse(Buffer.from(line, 'latin1').toString('utf8')) as RunnerReport; } catch { /* not ours */ }
      line = '';
      if (report) events.onReport(report);
    }
  });
  host.on('error', () => { /* exit follows */ });
  let gone = false;
  const exited = new Promise<void>((resolve) => {
    const finish = (why: string | undefined) => {
      if (gone) return;
      gone = true;
      control.unmapAt(engine.address(window));
      engine.freeWindow(window, CONTROL_BYTES);
      control.close();
      resolve();
      events.onExit(why === undefined ? undefined : new Error(why));
    };
    // A child that could not be spawned at all gets 'error' and never 'exit'.
    child.on('error', (error) => { if (child.pid === undefined) finish(`runner process did not start: ${error.message}`); });
    child.on('exit', (code, signal) => finish(code === 0 ? undefined : `runner process exited (code=${code} signal=${signal})`));
  });
  return {
    ...controls(ctl, () => { futexWake(wakeAddress, true); }),
    async terminate() {
      if (!gone) child.kill('SIGKILL');
      await exited;
    },
  };
}
