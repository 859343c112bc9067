/**
 * Pool: a fixed number of workers (processes or threads, see spawn.ts) running one task module, Piscina-style.
 *
 *   const pool = new Pool(new URL('./task.js', import.meta.url), { size: 4, isolation: 'thread' });
 *   const result = await pool.run({ tile: 7 });
 *
 * The task module's default export is called with each task; the value it returns (or resolves to) is the
 * result. The same file works unchanged as a Piscina task module. Each worker runs one task at a time over its
 * channel (protocol in pool-worker.ts), so a task's run time, its timeout and a crash are its own.
 *
 * Failures: a task that throws rejects with TaskError (ERR_SHMBUS_REMOTE); a worker that dies mid-task
 * (a signal, process.exit, an uncaught exception) rejects its task with WorkerExitError (ERR_SHMBUS_PEER_DEAD,
 * with the exit code or signal) and is replaced, the other tasks go on; a task running longer than
 * `taskTimeout` rejects with ERR_SHMBUS_TIMEOUT and its worker is replaced; an aborted signal rejects with the
 * signal's reason (a running task's worker is replaced); past `maxQueue` waiting tasks, run() rejects with
 * ERR_SHMBUS_QUEUE_FULL.
 */
import { availableParallelism } from 'node:os';
import { createHistogram, type RecordableHistogram } from 'node:perf_hooks';
import { BadArgumentError, ClosedError, ErrorCode, ShmbusError, TimeoutError } from '../host/errors.js';
import { spawn, type Isolation, type WorkerExit, type WorkerHandle } from './spawn.js';
import type { PairWakeMode } from './pair.js';
import { TaskError, WorkerExitError, type ThrownDescription } from './errors.js';
import { workerScript } from './script.js';

const POOL_WORKER = workerScript('pool-worker.js');

export interface PoolOptions {
  /** Number of workers (default: the machine's available parallelism). */
  size?: number;
  /** 'process' (default) or 'thread' (see spawn). */
  isolation?: Isolation;
  /** Most tasks waiting for a worker; past it run() rejects with ERR_SHMBUS_QUEUE_FULL (default: no limit). */
  maxQueue?: number;
  /** Milliseconds a task may run (counted from when a worker starts it, not from run()); then it rejects with
   * ERR_SHMBUS_TIMEOUT and its worker is replaced. Default: no limit. */
  taskTimeout?: number;
  /** Ring data bytes per direction of each worker's channel (default 4 MiB): a task or result must fit in a
   * little under half of it. */
  ringSize?: number | string;
  /** How an idle side waits (see spawn). */
  wake?: PairWakeMode;
  /** The workers' environment, Node options and stdio (see spawn). */
  env?: NodeJS.ProcessEnv;
  execArgv?: readonly string[];
  stdio?: 'inherit' | 'ignore' | 'pipe';
}

export interface RunOptions {
  /** Aborting rejects the task with the signal's reason: taken off the queue, or its worker replaced. */
  signal?: AbortSignal;
}

/** Percentiles of a duration, in milliseconds. */
export interface DurationSummary {
  count: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
}

export interface PoolStats {
  /** Time tasks waited in the queue before a worker took them. */
  waitTime: DurationSummary;
  /** Time from a worker taking a task until its result came back. */
  runTime: DurationSummary;
  /** Busy time of all workers over their time alive since the pool started (0 … 1). */
  utilization: number;
  /** Tasks waiting for a worker now. */
  queueLength: number;
  /** Tasks running now. */
  running: number;
  completed: number;
  failed: number;
  /** Workers alive or starting now, and how many have been started to replace dead ones. */
  workers: number;
  replaced: number;
}

interface Task {
  id: number;
  value: unknown;
  resolve(value: unknown): void;
  reject(error: unknown): void;
  queuedAt: number;
  signal?: AbortSignal;
  onAbort?: () => void;
  slot?: Slot;
  settled: boolean;
}

interface Slot {
  handle?: WorkerHandle;
  task?: Task;
  startedAt: number;
  timer?: NodeJS.Timeout;
  /** Killed on purpose (timeout, abort, destroy): its exit fails no task. */
  doomed: boolean;
  gone: boolean;
  bornAt: number;
  /** Settles once the worker has ended (or could not start) and its channel is closed. */
  ended: Promise<void>;
  markEnded(): void;
}

const ms = (h: RecordableHistogram, n: number): DurationSummary => n === 0
  ? { count: 0, p50: 0, p99: 0, max: 0, mean: 0 }
  : { count: n, p50: h.percentile(50) / 1e6, p99: h.percentile(99) / 1e6, max: h.max / 1e6, mean: h.mean / 1e6 };

function positiveInt(value: number | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (value === Infinity && name === 'maxQueue') return value;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < (name === 'maxQueue' ? 0 : 1)) {
    throw new BadArgumentError(`${name} must be a positive integer`, { [name]: value });
  }
  return value;
}

export class Pool {
  /** The task module (as a URL string). */
  readonly module: string;
  readonly size: number;
  readonly isolation: Isolation;
  readonly maxQueue: number;
  readonly taskTimeout: number | undefined;

  readonly #options: PoolOptions;
  readonly #slots = new Set<Slot>();
  readonly #idle: Slot[] = [];
  readonly #queue: (Task | undefined)[] = [];
  #queueHead = 0;
  #queued = 0;
  #nextId = 1;
  #state: 'open' | 'closing' | 'closed' = 'open';
  /** Why the pool cannot run tasks any more (its module does not load, workers cannot start). */
  #broken: ShmbusError | undefined;
  #closing: Promise<void> | undefined;
  #drained: (() => void) | undefined;
  readonly #wait = createHistogram();
  readonly #run = createHistogram();
  #completed = 0;
  #failed = 0;
  #replaced = 0;
  #busyMs = 0;
  #aliveMs = 0;

  constructor(module: string | URL, options: PoolOptions = {}) {
    this.module = module instanceof URL ? module.href : module;
    this.size = positiveInt(options.size, 'size', Math.max(1, availableParallelism()));
    this.isolation = options.isolation ?? 'process';
    if (this.isolation !== 'process' && this.isolation !== 'thread') throw new BadArgumentError("isolation must be 'process' or 'thread'", { isolation: this.isolation });
    this.maxQueue = positiveInt(options.maxQueue, 'maxQueue', Infinity);
    if (options.taskTimeout !== undefined && !(typeof options.taskTimeout === 'number' && options.taskTimeout > 0 && Number.isFinite(options.taskTimeout))) {
      throw new BadArgumentError('taskTimeout must be a positive number of milliseconds', { taskTimeout: options.taskTimeout });
    }
    this.taskTimeout = options.taskTimeout;
    this.#options = options;
    for (let i = 0; i < this.size; i++) this.#start();
  }

  /**
   * Runs `task` on a worker: resolves with what the module's default export returned (or resolved to) for it.
   * Rejects as the file comment says; with ERR_SHMBUS_CLOSED once close() or destroy() was called.
   */
  run(task: unknown, options: RunOptions = {}): Promise<unknown> {
    const signal = options.signal;
    if (this.#state !== 'open') return Promise.reject(new ClosedError('the pool is closed'));
    if (this.#broken) return Promise.reject(this.#broken);
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#idle.length === 0 && this.#queued >= this.maxQueue) {
      return Promise.reject(new ShmbusError(ErrorCode.QUEUE_FULL, 'the pool has as many tasks waiting as maxQueue allows', { details: { maxQueue: this.maxQueue } }));
    }
    return new Promise((resolve, reject) => {
      const t: Task = { id: this.#nextId, value: task, resolve, reject, queuedAt: performance.now(), settled: false };
      this.#nextId = this.#nextId >= 0x7fffffff ? 1 : this.#nextId + 1;
      if (signal) {
        t.signal = signal;
        t.onAbort = () => this.#abort(t);
        signal.addEventListener('abort', t.onAbort, { once: true });
      }
      const slot = this.#idle.pop();
      if (slot) this.#dispatch(slot, t);
      else { this.#queue.push(t); this.#queued++; }
    });
  }

  /** Finishes every queued and running task, then ends the workers. run() rejects from now on. */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    if (this.#state === 'open') this.#state = 'closing';
    this.#closing = (async () => {
      while (this.#queued > 0 || this.#running() > 0) {
        if (this.#broken && this.#running() === 0) break;
        await new Promise<void>((resolve) => { this.#drained = resolve; });
      }
      this.#failQueued(this.#broken ?? new ClosedError('the pool closed'));
      this.#state = 'closed';
      await this.#stopAll(false);
    })();
    return this.#closing;
  }

  /** Stops at once: every queued and running task rejects with ERR_SHMBUS_CLOSED, and the workers are killed. */
  async destroy(): Promise<void> {
    this.#state = 'closed';
    const error = new ClosedError('the pool was destroyed');
    this.#failQueued(error);
    for (const slot of this.#slots) if (slot.task) this.#settle(slot.task, error, false);
    this.#drained?.();
    await this.#stopAll(true);
    await this.#closing;
  }

  /** Counters and duration percentiles since the pool started. */
  stats(): PoolStats {
    const now = performance.now();
    let busy = this.#busyMs;
    let alive = this.#aliveMs;
    for (const slot of this.#slots) {
      if (slot.task) busy += now - slot.startedAt;
      alive += now - slot.bornAt;
    }
    return {
      waitTime: ms(this.#wait, this.#wait.count),
      runTime: ms(this.#run, this.#run.count),
      utilization: alive > 0 ? Math.min(1, busy / alive) : 0,
      queueLength: this.#queued,
      running: this.#running(),
      completed: this.#completed,
      failed: this.#failed,
      workers: this.#slots.size,
      replaced: this.#replaced,
    };
  }

  #running(): number {
    let n = 0;
    for (const slot of this.#slots) if (slot.task) n++;
    return n;
  }

  // --- workers ---------------------------------------------------------------------------------------------------

  #start(): void {
    let markEnded!: () => void;
    const ended = new Promise<void>((resolve) => { markEnded = resolve; });
    const slot: Slot = { startedAt: 0, doomed: false, gone: false, bornAt: performance.now(), ended, markEnded };
    this.#slots.add(slot);
    const o = this.#options;
    spawn(POOL_WORKER, {
      isolation: this.isolation, args: [this.module], ringSize: o.ringSize, wake: o.wake, env: o.env, execArgv: o.execArgv, stdio: o.stdio,
    }).then((handle) => {
      slot.handle = handle;
      if (this.#state === 'closed') { slot.doomed = true; handle.kill('SIGKILL'); }
      void handle.exited.then((exit) => this.#onExit(slot, exit));
      void this.#read(slot, handle);
      if (!slot.doomed) this.#becameIdle(slot);
    }, (error: unknown) => {
      this.#slots.delete(slot);
      slot.gone = true;
      slot.markEnded();
      this.#break(error instanceof ShmbusError ? error : new ShmbusError(ErrorCode.SYSCALL, 'cannot start a pool worker', { cause: error }));
    });
  }

  /** Reads one worker's replies until its channel ends. */
  async #read(slot: Slot, handle: WorkerHandle): Promise<void> {
    try {
      for await (const message of handle.channel) this.#onReply(slot, message);
    } catch {
      /* the worker died: its exit settles what it ran (#onExit) */
    }
  }

  #onReply(slot: Slot, message: unknown): void {
    if (!Array.isArray(message) || message.length !== 3 || typeof message[0] !== 'number') return;
    const [id, status, value] = message as [number, number, unknown];
    if (id === 0 && status === 1) {
      // The module does not load: no worker ever will run a task.
      const error = new TaskError(value as ThrownDescription);
      this.#break(error);
      if (slot.task) this.#settle(slot.task, error, false);
      return;
    }
    const task = slot.task;
    if (!task || task.id !== id) return; // a late reply to a task that timed out or was aborted
    this.#settle(task, status === 0 ? value : new TaskError((value ?? {}) as ThrownDescription), status === 0);
    if (!slot.doomed) this.#becameIdle(slot);
  }

  #onExit(slot: Slot, exit: WorkerExit): void {
    slot.gone = true;
    this.#slots.delete(slot);
    const idle = this.#idle.indexOf(slot);
    if (idle >= 0) this.#idle.splice(idle, 1);
    this.#aliveMs += performance.now() - slot.bornAt;
    void slot.handle?.channel.close().finally(() => slot.markEnded());
    if (slot.task) this.#settle(slot.task, new WorkerExitError(exit.code, exit.signal, { pid: slot.handle?.pid, threadId: slot.handle?.threadId }), false);
    if (this.#state === 'closed' || this.#broken) { this.#drained?.(); return; }
    if (this.#state === 'closing' && this.#queued === 0) { this.#drained?.(); return; }
    this.#replaced++;
    this.#start();
  }

  #becameIdle(slot: Slot): void {
    const next = this.#takeQueued();
    if (next) this.#dispatch(slot, next);
    else {
      this.#idle.push(slot);
      if (this.#state === 'closing' && this.#running() === 0) this.#drained?.();
    }
  }

  #dispatch(slot: Slot, task: Task): void {
    const now = performance.now();
    slot.task = task;
    slot.startedAt = now;
    task.slot = slot;
    this.#wait.record(Math.max(1, Math.round((now - task.queuedAt) * 1e6)));
    try {
      slot.handle!.channel.send([task.id, task.value]);
    } catch (error) {
      // Too large for the ring, not encodable, or the channel ended: this task fails, the worker stays.
      slot.task = undefined;
      this.#settle(task, error, false);
      if (!slot.gone) this.#becameIdle(slot);
      return;
    }
    if (this.taskTimeout !== undefined) {
      slot.timer = setTimeout(() => {
        this.#settle(task, new TimeoutError('task ran past taskTimeout', { taskTimeout: this.taskTimeout }), false);
        this.#retire(slot);
      }, this.taskTimeout);
    }
  }

  #takeQueued(): Task | undefined {
    while (this.#queueHead < this.#queue.length) {
      const t = this.#queue[this.#queueHead];
      this.#queue[this.#queueHead++] = undefined;
      if (this.#queueHead === this.#queue.length) { this.#queue.length = 0; this.#queueHead = 0; }
      if (t && !t.settled) { this.#queued--; return t; }
    }
    return undefined;
  }

  /** A worker whose task was given up (timeout, abort): killed; its exit starts a replacement. */
  #retire(slot: Slot): void {
    slot.doomed = true;
    slot.handle?.kill('SIGKILL');
  }

  #abort(task: Task): void {
    if (task.settled) return;
    const slot = task.slot;
    if (!slot) this.#queued--;
    this.#settle(task, task.signal!.reason, false);
    if (slot) this.#retire(slot);
  }

  #settle(task: Task, outcome: unknown, ok: boolean): void {
    if (task.settled) return;
    task.settled = true;
    if (task.onAbort) task.signal!.removeEventListener('abort', task.onAbort);
    const slot = task.slot;
    if (slot && slot.task === task) {
      slot.task = undefined;
      if (slot.timer) { clearTimeout(slot.timer); slot.timer = undefined; }
      const ran = performance.now() - slot.startedAt;
      this.#busyMs += ran;
      this.#run.record(Math.max(1, Math.round(ran * 1e6)));
    }
    if (ok) { this.#completed++; task.resolve(outcome); } else { this.#failed++; task.reject(outcome); }
  }

  #failQueued(error: unknown): void {
    for (let t = this.#takeQueued(); t; t = this.#takeQueued()) this.#settle(t, error, false);
  }

  #break(error: ShmbusError): void {
    this.#broken ??= error;
    this.#failQueued(error);
    this.#drained?.();
  }

  /** Ends every worker (closing its channel ends its loop; `kill`: SIGKILL) and waits until all have ended.
   * Workers still starting are killed as soon as they are up (#start). */
  async #stopAll(kill: boolean): Promise<void> {
    const ends: Promise<void>[] = [];
    for (const slot of this.#slots) {
      ends.push(slot.ended);
      if (!slot.handle) continue;
      slot.doomed = true;
      if (kill) slot.handle.kill('SIGKILL');
      else void slot.handle.channel.close();
    }
    this.#idle.length = 0;
    await Promise.all(ends);
  }
}
