/**
 * Pool: a fixed number of workers (processes or threads, see spawn.ts) running one task module, Piscina-style.
 *
 *   const pool = new Pool(new URL('./task.js', import.meta.url), { size: 4, isolation: 'thread' });
 *   const result = await pool.run({ tile: 7 });
 *
 * The task module's default export is called with each task; the value it returns (or resolves to) is the
 * result. The same file works unchanged as a Piscina task module. Each worker runs one task at a time over its
 * channel (protocol in pool-worker.ts), so a task's run time, its timeout and a crash are its own; with
 * `tasksPerWorker` > 1 the next ones are sent ahead and wait in the worker's ring.
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
import { BadArgumentError, ClosedError, ErrorCode, MessageTooLargeError, ShmbusError, TimeoutError } from '../host/errors.js';
import { checkSpawnOptions, spawn, type Isolation, type WorkerExit, type WorkerHandle } from './spawn.js';
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
  /** How an idle side waits (see spawn). Default: 'adaptive' while the workers and this thread fit in the
   * machine's cores, else 'doorbell' (spinning on a core someone else needs slows everyone down). */
  wake?: PairWakeMode;
  /**
   * Tasks sent ahead to each worker (default 1). A worker still runs one task at a time, in order; the ones sent
   * ahead wait in its ring, so it never idles between tasks and reads and answers them in batches. They count
   * as queued (wait time) until the one before them finishes, so taskTimeout still counts from the start of
   * running; if the worker dies they go back to the head of the queue. Larger values raise throughput for small
   * tasks and hurt balance for uneven ones (a long task holds up the ones sent ahead behind it).
   */
  tasksPerWorker?: number;
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
  /** Tasks sent to this worker, in order: the first runs (since startedAt), the others wait in its ring. A task
   * given up while waiting there (aborted) stays until its reply comes, which is then dropped. */
  tasks: Task[];
  startedAt: number;
  timer?: NodeJS.Timeout;
  /** Killed on purpose (timeout, abort, destroy): takes no more tasks. */
  doomed: boolean;
  /** The worker said its module is loaded: until then nothing it was sent runs (nor counts as running). */
  ready: boolean;
  gone: boolean;
  bornAt: number;
  /** Settles once the worker has ended (or could not start) and its channel is closed. */
  ended: Promise<void>;
  markEnded(): void;
}

/** How long a pool waits, after a worker's exit, for the rest of what it wrote to be read (normally no time). */
const READ_AFTER_EXIT_MS = 2000;

const ms = (h: RecordableHistogram): DurationSummary => h.count === 0
  ? { count: 0, p50: 0, p99: 0, max: 0, mean: 0 }
  : { count: h.count, p50: h.percentile(50) / 1e6, p99: h.percentile(99) / 1e6, max: h.max / 1e6, mean: h.mean / 1e6 };

const ns = (fromMs: number, toMs: number) => Math.max(1, Math.round((toMs - fromMs) * 1e6));

function positiveInt(value: number | undefined, name: string, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (value === Infinity && name === 'maxQueue') return value;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new BadArgumentError(`${name} must be an integer ≥ ${min}`, { [name]: value });
  }
  return value;
}

export class Pool {
  /** The task module (as a URL string or path). */
  readonly module: string;
  readonly size: number;
  readonly isolation: Isolation;
  readonly maxQueue: number;
  readonly taskTimeout: number | undefined;
  readonly tasksPerWorker: number;

  readonly #options: PoolOptions;
  readonly #wake: PairWakeMode;
  readonly #slots = new Set<Slot>();
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
    if (typeof options !== 'object' || options === null) throw new BadArgumentError('options must be an object', { options: String(options) });
    this.module = module instanceof URL ? module.href : module;
    if (typeof this.module !== 'string' || this.module.length === 0) throw new BadArgumentError('module must be a path or a URL', { module: String(module) });
    const cores = Math.max(1, availableParallelism());
    this.size = positiveInt(options.size, 'size', cores);
    this.isolation = options.isolation ?? 'process';
    if (this.isolation !== 'process' && this.isolation !== 'thread') throw new BadArgumentError("isolation must be 'process' or 'thread'", { isolation: this.isolation });
    this.maxQueue = positiveInt(options.maxQueue, 'maxQueue', Infinity, 0);
    this.tasksPerWorker = positiveInt(options.tasksPerWorker, 'tasksPerWorker', 1);
    if (options.taskTimeout !== undefined && !(typeof options.taskTimeout === 'number' && options.taskTimeout > 0 && Number.isFinite(options.taskTimeout))) {
      throw new BadArgumentError('taskTimeout must be a positive number of milliseconds', { taskTimeout: options.taskTimeout });
    }
    this.taskTimeout = options.taskTimeout;
    this.#wake = options.wake ?? (this.size + 1 <= cores ? 'adaptive' : 'doorbell');
    // What every worker's spawn would refuse, refused here: a pool that could never start a worker is an error now.
    checkSpawnOptions({ isolation: this.isolation, ringSize: options.ringSize, wake: this.#wake, env: options.env, execArgv: options.execArgv, stdio: options.stdio });
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
    const slot = this.#freeSlot();
    if (!slot && this.#queued >= this.maxQueue) {
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
      if (slot) this.#dispatch(slot, t);
      else this.#enqueue(t);
    });
  }

  /** Finishes every queued and running task, then ends the workers. run() rejects from now on. */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    if (this.#state === 'open') this.#state = 'closing';
    this.#closing = (async () => {
      while (this.#queued > 0 || this.#inWorkers() > 0) {
        if (this.#broken && this.#inWorkers() === 0) break;
        if (this.#state === 'closed') break;
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
    for (const slot of this.#slots) {
      for (const task of slot.tasks) this.#settle(task, error, false);
      this.#finishHead(slot);
      slot.tasks.length = 0;
    }
    this.#drained?.();
    await this.#stopAll(true);
    await this.#closing;
  }

  /** Counters and duration percentiles since the pool started. */
  stats(): PoolStats {
    const now = performance.now();
    let busy = this.#busyMs;
    let alive = this.#aliveMs;
    let running = 0;
    let waiting = 0;
    for (const slot of this.#slots) {
      const started = slot.ready && slot.tasks.length > 0;
      if (started) { busy += now - slot.startedAt; running++; }
      waiting += slot.tasks.length - (started ? 1 : 0);
      alive += now - slot.bornAt;
    }
    return {
      waitTime: ms(this.#wait),
      runTime: ms(this.#run),
      utilization: alive > 0 ? Math.min(1, busy / alive) : 0,
      queueLength: this.#queued + waiting,
      running,
      completed: this.#completed,
      failed: this.#failed,
      workers: this.#slots.size,
      replaced: this.#replaced,
    };
  }

  #inWorkers(): number {
    let n = 0;
    for (const slot of this.#slots) n += slot.tasks.length;
    return n;
  }

  /** The worker with the fewest tasks, if one can take another. */
  #freeSlot(): Slot | undefined {
    let best: Slot | undefined;
    for (const slot of this.#slots) {
      if (!slot.handle || slot.doomed || slot.gone || slot.tasks.length >= this.tasksPerWorker) continue;
      if (!best || slot.tasks.length < best.tasks.length) best = slot;
      if (slot.tasks.length === 0) break;
    }
    return best;
  }

  // --- workers ---------------------------------------------------------------------------------------------------

  #start(): void {
    let markEnded!: () => void;
    const ended = new Promise<void>((resolve) => { markEnded = resolve; });
    const slot: Slot = { tasks: [], startedAt: 0, doomed: false, ready: false, gone: false, bornAt: performance.now(), ended, markEnded };
    this.#slots.add(slot);
    const o = this.#options;
    spawn(POOL_WORKER, {
      isolation: this.isolation, args: [this.module], ringSize: o.ringSize, wake: this.#wake, env: o.env, execArgv: o.execArgv, stdio: o.stdio,
    }).then((handle) => {
      slot.handle = handle;
      if (this.#state === 'closed') { slot.doomed = true; handle.kill('SIGKILL'); }
      const reading = this.#read(slot, handle);
      // A worker's last replies (a result, or "the module does not load") may still be in the ring when its exit
      // is reported: read them first, so the task settles with what the worker said. Its end of the socket closes
      // with it (a process's descriptors, a thread's handles), which ends the read; a bound guards against a
      // channel that never ends.
      void handle.exited.then(async (exit) => {
        let bound: NodeJS.Timeout | undefined;
        await Promise.race([reading, new Promise<void>((resolve) => { bound = setTimeout(resolve, READ_AFTER_EXIT_MS); })]);
        clearTimeout(bound);
        this.#onExit(slot, exit);
      });
      if (!slot.doomed) this.#fill(slot);
    }, (error: unknown) => {
      this.#slots.delete(slot);
      slot.gone = true;
      slot.markEnded();
      this.#break(error instanceof ShmbusError ? error : new ShmbusError(ErrorCode.SYSCALL, 'cannot start a pool worker', { cause: error }));
    });
  }

  /** Reads one worker's replies until its channel ends. */
  async #read(slot: Slot, handle: WorkerHandle): Promise<void> {
    // A result that is bytes comes as [id, 2], then a raw record (see pool-worker.ts).
    let bytesFor = -1;
    try {
      for await (const message of handle.channel) {
        if (bytesFor >= 0) {
          const id = bytesFor;
          bytesFor = -1;
          if (message instanceof Uint8Array) this.#onReply(slot, [id, 0, message]);
        } else if (Array.isArray(message) && message.length === 2 && message[1] === 2 && typeof message[0] === 'number') {
          bytesFor = message[0];
        } else {
          this.#onReply(slot, message);
        }
      }
    } catch {
      /* the worker died: its exit settles what it ran (#onExit) */
    }
  }

  #onReply(slot: Slot, message: unknown): void {
    if (!Array.isArray(message) || message.length < 2 || message.length > 3 || typeof message[0] !== 'number') return;
    if (message.length === 2 && message[0] === 0 && message[1] === 0 && !slot.ready) {
      slot.ready = true;
      if (slot.tasks.length > 0) this.#begin(slot);
      return;
    }
    const [id, status, value] = message as [number, number, unknown];
    if (id === 0 && status === 1) {
      // The module does not load: no worker ever will run a task.
      const error = new TaskError(value as ThrownDescription);
      this.#break(error);
      for (const task of slot.tasks) this.#settle(task, error, false);
      this.#finishHead(slot);
      slot.tasks.length = 0;
      return;
    }
    const head = slot.tasks[0];
    // The worker answers in order: anything else is not an answer to the task it runs (ignored).
    if (!head || head.id !== id || !slot.ready) return;
    this.#finishHead(slot);
    slot.tasks.shift();
    this.#settle(head, status === 0 ? value : new TaskError((value ?? {}) as ThrownDescription), status === 0);
    if (slot.tasks.length > 0) this.#begin(slot);
    if (!slot.doomed) this.#fill(slot);
    if (this.#state === 'closing' && this.#queued === 0 && this.#inWorkers() === 0) this.#drained?.();
  }

  /** The first task of `slot` starts running now (from the parent's view: the one before it has just answered). */
  #begin(slot: Slot): void {
    const now = performance.now();
    const head = slot.tasks[0]!;
    slot.startedAt = now;
    this.#wait.record(ns(head.queuedAt, now));
    if (this.taskTimeout !== undefined) {
      slot.timer = setTimeout(() => {
        slot.timer = undefined;
        this.#settle(head, new TimeoutError('task ran past taskTimeout', { taskTimeout: this.taskTimeout }), false);
        this.#retire(slot);
      }, this.taskTimeout);
    }
  }

  /** The running task of `slot` is over (answered, or its worker gone): its run time counts, its timer stops. */
  #finishHead(slot: Slot): void {
    if (slot.tasks.length === 0 || !slot.ready) return;
    if (slot.timer) { clearTimeout(slot.timer); slot.timer = undefined; }
    const now = performance.now();
    this.#busyMs += now - slot.startedAt;
    this.#run.record(ns(slot.startedAt, now));
  }

  #onExit(slot: Slot, exit: WorkerExit): void {
    slot.gone = true;
    this.#slots.delete(slot);
    this.#aliveMs += performance.now() - slot.bornAt;
    void slot.handle?.channel.close().finally(() => slot.markEnded());
    const [head, ...ahead] = slot.tasks;
    this.#finishHead(slot);
    slot.tasks.length = 0;
    if (head) this.#settle(head, new WorkerExitError(exit.code, exit.signal, { pid: slot.handle?.pid, threadId: slot.handle?.threadId }), false);
    // Tasks sent ahead never started: they go back to the head of the queue, in order.
    for (let i = ahead.length - 1; i >= 0; i--) {
      const task = ahead[i]!;
      if (task.settled) continue;
      task.slot = undefined;
      if (this.#state === 'closed' || this.#broken) this.#settle(task, this.#broken ?? new ClosedError('the pool closed'), false);
      else this.#requeue(task);
    }
    if (this.#state === 'closed' || this.#broken) { this.#drained?.(); return; }
    if (this.#state === 'closing' && this.#queued === 0) { this.#drained?.(); return; }
    this.#replaced++;
    this.#start();
  }

  /** Sends queued tasks to `slot` while it can take more. */
  #fill(slot: Slot): void {
    while (slot.tasks.length < this.tasksPerWorker && !slot.doomed && !slot.gone) {
      const next = this.#takeQueued();
      if (!next) return;
      this.#dispatch(slot, next);
    }
  }

  #dispatch(slot: Slot, task: Task): void {
    try {
      const channel = slot.handle!.channel;
      const value = task.value;
      if (value instanceof Uint8Array) {
        // Raw, after a header naming the task (see pool-worker.ts). Checked first: a header without its bytes
        // would make the worker take the next task's header for them.
        if (value.length > channel.maxMessageSize) throw new MessageTooLargeError(value.length, channel.maxMessageSize);
        channel.send([task.id]);
        channel.sendBytes(value);
      } else {
        channel.send([task.id, value]);
      }
    } catch (error) {
      // Too large for the ring, not encodable, or the channel ended: this task fails, the worker stays.
      this.#settle(task, error, false);
      return;
    }
    task.slot = slot;
    slot.tasks.push(task);
    if (slot.tasks.length === 1 && slot.ready) this.#begin(slot);
  }

  #enqueue(task: Task): void {
    this.#queue.push(task);
    this.#queued++;
  }

  #requeue(task: Task): void {
    if (this.#queueHead > 0) this.#queue[--this.#queueHead] = task;
    else this.#queue.unshift(task);
    this.#queued++;
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

  /** A worker whose running task was given up (timeout, abort): killed; its exit starts a replacement. */
  #retire(slot: Slot): void {
    slot.doomed = true;
    slot.handle?.kill('SIGKILL');
  }

  #abort(task: Task): void {
    if (task.settled) return;
    const slot = task.slot;
    if (!slot) this.#queued--;
    this.#settle(task, task.signal!.reason, false);
    // Only the running task's worker must go; one sent ahead is skipped when its (ignored) answer comes.
    if (slot && slot.tasks[0] === task) this.#retire(slot);
  }

  #settle(task: Task, outcome: unknown, ok: boolean): void {
    if (task.settled) return;
    task.settled = true;
    if (task.onAbort) task.signal!.removeEventListener('abort', task.onAbort);
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
    await Promise.all(ends);
  }
}
