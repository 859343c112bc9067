/**
 * Pool: a fixed number of workers (processes or threads, see spawn.ts) running one task module, Piscina-style.
 *
 *   const pool = new Pool(new URL('./task.js', import.meta.url), { size: 4, isolation: 'thread' });
 *   const result = await pool.run({ tile: 7 });
 *
 * The task module's default export is called with each task; the value it returns (or resolves to) is the
 * result. The same file works unchanged as a Piscina task module. Each worker runs one task at a time over its
 * channel (protocol in pool-worker.ts), so a task's run time, its timeout and a crash are its own; the next ones
 * (up to `tasksPerWorker`) are sent ahead and wait in the worker's ring, and a worker that runs out takes back
 * those another has not started yet (the claim table: docs/workers.md), so a long task holds up nothing.
 *
 * Failures: a task that throws rejects with TaskError (ERR_SHMBUS_REMOTE); a worker that dies mid-task
 * (a signal, process.exit, an uncaught exception) rejects its task with WorkerExitError (ERR_SHMBUS_PEER_DEAD,
 * with the exit code or signal) and is replaced, the other tasks go on; a task running longer than
 * `taskTimeout` rejects with ERR_SHMBUS_TIMEOUT and its worker is replaced; an aborted signal rejects with the
 * signal's reason (a running task's worker is replaced); past `maxQueue` waiting tasks (queued, or sent ahead),
 * run() rejects with ERR_SHMBUS_QUEUE_FULL; after MAX_FAILED_STARTS workers in a row end without running a task
 * (a module that exits or crashes as it loads), every pending and later task rejects with WorkerStartError.
 */
import { availableParallelism } from 'node:os';
import { createHistogram, type RecordableHistogram } from 'node:perf_hooks';
import { BadArgumentError, ClosedError, ErrorCode, MessageTooLargeError, ShmbusError, TimeoutError } from '../host/errors.js';
import { checkSpawnOptions, spawn, type Isolation, type WorkerExit, type WorkerHandle } from './spawn.js';
import { syncIdleAvailable, type PairWakeMode } from './pair.js';
import { TaskError, WorkerExitError, WorkerStartError, type ThrownDescription } from './errors.js';
import { PAIR_CLAIM_SEQ_MAX, PAIR_CLAIM_SLOTS } from '../assembly/layout.js';
import { workerScript } from './script.js';

const POOL_WORKER = workerScript('pool-worker.js');

export interface PoolOptions {
  /** Number of workers (default: the machine's available parallelism). */
  size?: number;
  /** 'process' (default) or 'thread' (see spawn). */
  isolation?: Isolation;
  /** Most tasks waiting to run (queued, or sent ahead to a busy worker); past it run() rejects with
   * ERR_SHMBUS_QUEUE_FULL (default: no limit). */
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
   * Most tasks given to a worker at once (default 32, at most 128). A worker still runs one task at a time, in
   * order; the ones sent ahead wait in its ring, so it never idles between tasks and reads and answers them in
   * batches. They count as queued (wait time) until the one before them finishes, so taskTimeout still counts
   * from the start of running. A task sent ahead is not bound to its worker until that worker starts it: a
   * worker that runs out of work takes back half of the not-yet-started tasks of the busiest one (the claim
   * table, assembly/layout.ts), so a long task never holds up the ones behind it while another worker idles; if
   * the worker dies they go back to the head of the queue. 1 sends a task only to an idle worker (Piscina's way).
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
  /** Tasks sent ahead to a worker and taken back (not started) for an idle one. */
  stolen: number;
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
  /** Its number among the tasks sent to its worker (the claim table's word, see pool-worker.ts). */
  seq: number;
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
  /** Its channel ended (the worker is going): takes no more tasks; its exit settles what it has. */
  ended: boolean;
  /** Tasks were taken back from it (its running one is long), or its channel refused one: takes no more until
   * its running task answers. */
  hold: boolean;
  /** The claim table (undefined once the worker is gone and it is unmapped), and the number of the last task sent. */
  claims: Int32Array | undefined;
  seq: number;
  /** Bytes of the binary tasks in `tasks`. */
  bytes: number;
  /** It answered a task (so it started fine). */
  answered: boolean;
  /** The worker said its module is loaded: until then nothing it was sent runs (nor counts as running). */
  ready: boolean;
  gone: boolean;
  bornAt: number;
  /** Settles once the worker has ended (or could not start) and its channel is closed. */
  closed: Promise<void>;
  markClosed(): void;
}

/** How long a pool waits, after a worker's exit, for the rest of what it wrote to be read (normally no time). */
const READ_AFTER_EXIT_MS = 2000;
/** Workers in a row that end without having run a task (the module exits or crashes as it loads, or soon after)
 * before the pool gives up: it is broken, and every pending and later task rejects with WorkerStartError. */
export const MAX_FAILED_STARTS = 3;
const DEFAULT_TASKS_PER_WORKER = 32;
const CLAIM_MASK = PAIR_CLAIM_SLOTS - 1;
const nextSeq = (seq: number) => (seq >= PAIR_CLAIM_SEQ_MAX ? 1 : seq + 1);
const taskBytes = (task: Task) => (task.value instanceof Uint8Array ? task.value.length : 0);
const seqDistance = (from: number, to: number) => (to - from + PAIR_CLAIM_SEQ_MAX) % PAIR_CLAIM_SEQ_MAX;

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
  /** Idle workers block on a futex (wake 'doorbell' only, where they would park at once anyway; see pair.ts). */
  readonly #syncIdle: boolean;
  /** Bytes of binary tasks past which a worker that has one is sent no more: three quarters of its ring. The
   * running one was read out of the ring already, so the others fit in it with room to spare for the wrap; more
   * would only wait in the channel's send queue, copied once more. (1 MiB tasks in the default 4 MiB ring: three
   * per worker, one running and two waiting; with half the ring, one waiting, the worker ran dry between the
   * parent's turns more often: 3-8% fewer tasks/s, measured A/B.) */
  readonly #aheadBytes: number;
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
  #stolen = 0;
  /** Workers in a row that ended without running a task (see MAX_FAILED_STARTS). */
  #failedStarts = 0;
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
    this.tasksPerWorker = positiveInt(options.tasksPerWorker, 'tasksPerWorker', DEFAULT_TASKS_PER_WORKER);
    if (this.tasksPerWorker > PAIR_CLAIM_SLOTS / 2) throw new BadArgumentError(`tasksPerWorker must be at most ${PAIR_CLAIM_SLOTS / 2}`, { tasksPerWorker: this.tasksPerWorker });
    if (options.taskTimeout !== undefined && !(typeof options.taskTimeout === 'number' && options.taskTimeout > 0 && Number.isFinite(options.taskTimeout))) {
      throw new BadArgumentError('taskTimeout must be a positive number of milliseconds', { taskTimeout: options.taskTimeout });
    }
    this.taskTimeout = options.taskTimeout;
    this.#wake = options.wake ?? (this.size + 1 <= cores ? 'adaptive' : 'doorbell');
    // What every worker's spawn would refuse, refused here: a pool that could never start a worker is an error now.
    const { geometry } = checkSpawnOptions({ isolation: this.isolation, ringSize: options.ringSize, wake: this.#wake, env: options.env, execArgv: options.execArgv, stdio: options.stdio });
    this.#options = options;
    this.#syncIdle = this.#wake === 'doorbell' && syncIdleAvailable();
    this.#aheadBytes = geometry.capacity - (geometry.capacity >>> 2);
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
    // A task an idle worker takes at once does not wait.
    if (this.maxQueue !== Infinity && !(slot && slot.tasks.length === 0) && this.#waiting() >= this.maxQueue) {
      return Promise.reject(new ShmbusError(ErrorCode.QUEUE_FULL, 'the pool has as many tasks waiting as maxQueue allows', { details: { maxQueue: this.maxQueue } }));
    }
    return new Promise((resolve, reject) => {
      const t: Task = { id: this.#nextId, value: task, resolve, reject, queuedAt: performance.now(), seq: 0, settled: false };
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
      slot.bytes = 0;
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
      stolen: this.#stolen,
    };
  }

  /** Tasks not running: queued, or sent ahead to a worker. */
  #waiting(): number {
    let n = this.#queued;
    for (const slot of this.#slots) n += slot.tasks.length - (slot.ready && slot.tasks.length > 0 ? 1 : 0);
    return n;
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
      if (!this.#canTake(slot)) continue;
      if (!best || slot.tasks.length < best.tasks.length) best = slot;
      if (slot.tasks.length === 0) break;
    }
    return best;
  }

  #canTake(slot: Slot): boolean {
    if (!slot.handle || slot.doomed || slot.gone || slot.ended || slot.hold || slot.tasks.length >= this.tasksPerWorker) return false;
    if (slot.bytes >= this.#aheadBytes) return false;
    // Fewer than PAIR_CLAIM_SLOTS tasks between its oldest unanswered one and the next: no claim word is reused
    // while its task may still be started.
    return slot.tasks.length === 0 || slot.claims === undefined || seqDistance(slot.tasks[0]!.seq, nextSeq(slot.seq)) < PAIR_CLAIM_SLOTS;
  }

  // --- workers ---------------------------------------------------------------------------------------------------

  #start(): void {
    let markClosed!: () => void;
    const closed = new Promise<void>((resolve) => { markClosed = resolve; });
    const slot: Slot = {
      tasks: [], startedAt: 0, doomed: false, ended: false, hold: false, claims: undefined, seq: 0, bytes: 0, answered: false,
      ready: false, gone: false, bornAt: performance.now(), closed, markClosed,
    };
    this.#slots.add(slot);
    const o = this.#options;
    spawn(POOL_WORKER, {
      isolation: this.isolation, args: [this.module], ringSize: o.ringSize, wake: this.#wake, env: o.env, execArgv: o.execArgv, stdio: o.stdio,
      taskClaims: true, syncIdle: this.#syncIdle,
    }).then((handle) => {
      slot.handle = handle;
      slot.claims = handle.claims?.view;
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
      slot.markClosed();
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
    slot.ended = true;
  }

  #onReply(slot: Slot, message: unknown): void {
    if (!Array.isArray(message) || message.length < 2 || message.length > 3 || typeof message[0] !== 'number') return;
    if (message.length === 2 && message[0] === 0 && message[1] === 0 && !slot.ready) {
      slot.ready = true;
      if (slot.tasks.length > 0) this.#begin(slot);
      else if (!slot.doomed) this.#fill(slot);
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
      slot.bytes = 0;
      return;
    }
    const head = slot.tasks[0];
    // The worker answers in order: anything else is not an answer to the task it runs (ignored).
    if (!head || head.id !== id || !slot.ready) return;
    this.#finishHead(slot);
    slot.tasks.shift();
    slot.bytes -= taskBytes(head);
    slot.hold = false;
    slot.answered = true;
    this.#failedStarts = 0;
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
    this.#finishHead(slot);
    const tasks = slot.tasks.splice(0);
    slot.bytes = 0;
    // What the worker had started (claimed) and not answered was running when it died: that fails. What it had
    // not started is taken back (so it cannot start it either) and goes back to the head of the queue, in order.
    // Without a claim table only the first task counts as started.
    const back: Task[] = [];
    let ran = false;
    for (let i = 0; i < tasks.length; i++) {
      const task = tasks[i]!;
      const started = slot.claims ? !this.#revoke(slot, task) : i === 0;
      if (started) {
        ran = true;
        this.#settle(task, new WorkerExitError(exit.code, exit.signal, { pid: slot.handle?.pid, threadId: slot.handle?.threadId }), false);
      } else if (!task.settled) {
        task.slot = undefined;
        back.push(task);
      }
    }
    slot.claims = undefined;
    slot.handle?.claims?.release();
    void slot.handle?.channel.close().finally(() => slot.markClosed());
    if (!ran && !slot.answered && !slot.doomed && this.#state !== 'closed' && ++this.#failedStarts >= MAX_FAILED_STARTS) {
      this.#break(new WorkerStartError(this.#failedStarts, exit.code, exit.signal));
    }
    for (let i = back.length - 1; i >= 0; i--) {
      const task = back[i]!;
      if (this.#state === 'closed' || this.#broken) this.#settle(task, this.#broken ?? new ClosedError('the pool closed'), false);
      else this.#requeue(task);
    }
    if (this.#state === 'closed' || this.#broken) { this.#drained?.(); return; }
    if (this.#state === 'closing' && this.#queued === 0) { this.#drained?.(); return; }
    this.#replaced++;
    this.#start();
    // The others may take what came back now.
    for (const other of this.#slots) if (this.#queued > 0) this.#fill(other);
  }

  /** Takes back a task sent to `slot` that its worker has not started: true if it will never start there. */
  #revoke(slot: Slot, task: Task): boolean {
    const claims = slot.claims;
    if (!claims || task.seq === 0) return false;
    // SYNC: pairs with the worker's compare-and-swap claiming the task (pool-worker.ts); one of the two wins.
    return Atomics.compareExchange(claims, task.seq & CLAIM_MASK, task.seq, 0) === task.seq;
  }

  /** `thief` has nothing to do and the queue is empty: it takes back half of the not-yet-started tasks of the
   * worker with the most, newest first, and runs them. */
  #steal(thief: Slot): void {
    let victim: Slot | undefined;
    for (const slot of this.#slots) {
      if (slot !== thief && slot.claims && slot.tasks.length > 1 && (!victim || slot.tasks.length > victim.tasks.length)) victim = slot;
    }
    if (!victim) return;
    const want = Math.min(Math.ceil((victim.tasks.length - 1) / 2), this.tasksPerWorker);
    const taken: Task[] = [];
    while (taken.length < want && victim.tasks.length > 1) {
      const task = victim.tasks[victim.tasks.length - 1]!;
      // Once one has started, so have all before it.
      if (!this.#revoke(victim, task)) break;
      victim.tasks.pop();
      victim.bytes -= taskBytes(task);
      taken.push(task);
    }
    if (taken.length === 0) return;
    victim.hold = true;
    this.#stolen += taken.length;
    for (let i = taken.length - 1; i >= 0; i--) {
      const task = taken[i]!;
      task.slot = undefined;
      if (!task.settled) this.#dispatch(thief, task);
    }
  }

  /** Sends queued tasks to `slot` while it can take more; with none queued, an idle worker steals (#steal). */
  #fill(slot: Slot): void {
    while (this.#canTake(slot)) {
      const next = this.#takeQueued();
      if (!next) {
        if (slot.tasks.length === 0 && slot.ready && slot.claims) this.#steal(slot);
        return;
      }
      this.#dispatch(slot, next);
    }
  }

  #dispatch(slot: Slot, task: Task): void {
    const seq = nextSeq(slot.seq);
    const claims = slot.claims;
    // Not started, before the worker can see it (the word's previous task was answered or taken back).
    if (claims) Atomics.store(claims, seq & CLAIM_MASK, seq);
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
      // Nothing was sent: the number is not used.
      if (claims) Atomics.store(claims, seq & CLAIM_MASK, 0);
      const code = error instanceof ShmbusError ? error.code : undefined;
      if (code === undefined || code === ErrorCode.MESSAGE_TOO_LARGE || code === ErrorCode.BAD_ARGUMENT) {
        // Too large for the ring, or not encodable: this task fails, the worker stays.
        this.#settle(task, error, false);
        return;
      }
      // The channel ended (the worker is going; its exit starts a replacement) or cannot take more now: the task
      // is not this worker's fault, it goes back to the head of the queue for another.
      if (code === ErrorCode.QUEUE_FULL) slot.hold = true;
      else slot.ended = true;
      this.#requeue(task);
      const other = this.#freeSlot();
      if (other) this.#fill(other);
      return;
    }
    slot.seq = seq;
    task.seq = seq;
    task.slot = slot;
    slot.tasks.push(task);
    slot.bytes += taskBytes(task);
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
    // Only the running task's worker must go; one sent ahead is taken back (or, if its worker started it
    // meanwhile, its answer is ignored when it comes).
    if (slot && slot.tasks[0] === task) this.#retire(slot);
    else if (slot && this.#revoke(slot, task)) {
      const at = slot.tasks.indexOf(task);
      if (at >= 0) { slot.tasks.splice(at, 1); slot.bytes -= taskBytes(task); }
    }
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
      ends.push(slot.closed);
      if (!slot.handle) continue;
      slot.doomed = true;
      if (kill) slot.handle.kill('SIGKILL');
      else void slot.handle.channel.close();
    }
    await Promise.all(ends);
  }
}
