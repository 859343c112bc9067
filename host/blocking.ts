/**
 * Waiting for the kernel without blocking the event loop or holding a libuv threadpool thread per connection.
 *
 * Node's event loop watches sockets and pipes, but not message queues: an mqd has no libuv handle type, and a
 * System V queue is not a file descriptor at all. Waiting on them with blocking calls through koffi's `.async`
 * would park one threadpool thread per waiting queue, and four such calls starve every `fs` and `dns` call of
 * the process. So each process gets (at most) two dedicated threads, created on first use, each serving every
 * connection of its kind:
 *
 *   EpollThread    one epoll set for every POSIX queue (an mqd is a real fd on Linux), armed one-shot per queue
 *                  and direction (EPOLLIN: a message is waiting; EPOLLOUT: the queue has room). The thread only
 *                  reports readiness; the main thread then receives and sends with O_NONBLOCK itself and arms the
 *                  fd again once the queue said EAGAIN. Waking the thread (to stop it) goes through an eventfd.
 *   MsgrcvThread   a blocking msgrcv on ONE System V queue, the process's "port" (transports/sysvmq.ts): a queue
 *                  cannot be polled, so every doorbell and handshake message for any connection of this process
 *                  comes to that one queue, its mtype saying for which connection and why. Payloads up to
 *                  PORT_PAYLOAD_MAX bytes travel along (handshakes).
 *
 * Thread → main thread: a ring of fixed-size entries in a SharedArrayBuffer, and Atomics.notify on its head,
 * which the main thread awaits with Atomics.waitAsync (what this wake costs: host/thread.ts). When the ring is
 * full the thread waits (Atomics.wait) for the main thread to consume; nothing is dropped.
 *
 * Why threads and not the alternatives: koffi's `.async` blocking calls hold one libuv pool thread each (4 idle
 * connections starve fs); msgrcv/mq_receive with IPC_NOWAIT on a timer costs latency or a core; mq_notify with
 * a signal would take a signal number from the application; a socket or FIFO doorbell per connection would make
 * the queue transports depend on another mechanism. A thread costs 8.5 MiB of RSS (its V8 isolate; measured in
 * host/thread.ts) once per process, and one wake hop per wakeup.
 *
 * Both are dedicated threads of the one runtime (host/thread.ts: start, 'ready', holds, stop at exit, failure),
 * running the loops in blocking-loops.ts. The transports `await start()` before handing out a listener or
 * connection, so the first message never waits for the thread to load; after 'ready' the thread holds everything
 * it will hold (its libuv loop's fds), which lets a test count a process's fds around a connection. A thread
 * keeps the process alive only while an open connection or listener uses it.
 *
 * Peer liveness: POSIX and System V queues do not tell a reader that the writer died. `watchProcess` puts the
 * peer's pidfd (pidfd_open, Linux 5.3+) into the same epoll set, so a death is an event like any other; where
 * pidfds are not available it checks (pid, start time) on a shared timer every LIVENESS_MS (unref'd).
 */
import { ShmbusError, ErrorCode } from './errors.js';
import { DedicatedThread } from './thread.js';
import { isProcessAlive } from './sys/proc.js';
import { LIVENESS_MS } from './liveness.js';
import { closeFd, epollCreate, epollCtl, eventfdCreate, eventfdSignal, pidfdOpen } from './sys/mq.js';
import { msgSend, setMsgType, MSG_HEADER } from './sys/msg.js';
import { EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD, EPOLLIN, EPOLLONESHOT } from './sys/constants.js';

// --- the ring between a thread and the main thread (an Int32Array over a SharedArrayBuffer) ----------------------
// Shared with blocking-loops.ts. Counters are int32 and wrap; an entry's slot is counter & (CAPACITY - 1).

/** Entries the thread has written (written by the thread only). */
export const HEAD = 0;
/** Entries the main thread has consumed (written by the main thread only). */
export const TAIL = 1;
/** Set to 1 by the main thread: the thread exits at its next wakeup. */
export const STOP = 2;
/** The System V queue the msgrcv thread receives from, or PORT_NONE (written by the main thread). */
export const PORT = 3;
export const HEADER_INTS = 16;
/** Entries in the ring (a power of two). An epoll thread has at most one entry per armed fd outstanding. */
export const CAPACITY = 1024;
/** One entry: [a, b, payload length, payload bytes…]: epoll (token, events); msgrcv (mtype low, high, text). */
export const ENTRY_INTS = 64;
/** Fields of an entry, as Int32 indexes from its start; the payload starts at byte ENTRY_PAYLOAD_OFFSET. */
export const ENTRY_A = 0;
export const ENTRY_B = 1;
export const ENTRY_LENGTH = 2;
export const ENTRY_PAYLOAD_OFFSET = (ENTRY_LENGTH + 1) * 4;
/** Longest message text the msgrcv thread hands over; longer port messages are truncated (MSG_NOERROR). */
export const PORT_PAYLOAD_MAX = ENTRY_INTS * 4 - ENTRY_PAYLOAD_OFFSET;
/** The epoll token of the eventfd that wakes the epoll thread. */
export const WAKE_TOKEN = 0;
export const PORT_NONE = -1;
/** mtype of the message that wakes a msgrcv thread so it sees STOP. Port mtypes of connections are larger. */
export const PORT_STOP_TYPE = 1;
/** The thread reports a port that vanished under it with this (a, b) pair and the msqid as payload. */
export const PORT_GONE_MARK = -1;

const sabBytes = () => (HEADER_INTS + CAPACITY * ENTRY_INTS) * 4;

/** Atomics.waitAsync (V8 8.7+, every supported Node): its types come with lib es2024, which tsconfig does not use. */
const waitAsync = (Atomics as unknown as {
  waitAsync(array: Int32Array, index: number, value: number): { async: boolean; value: Promise<string> | string };
}).waitAsync;


/** The part both threads share: the entry ring and the dedicated thread that fills it. */
abstract class EventThread {
  protected readonly sab = new SharedArrayBuffer(sabBytes());
  protected readonly ctrl = new Int32Array(this.sab);
  private readonly bytes = new Uint8Array(this.sab);
  private thread: DedicatedThread | undefined;
  private tail = 0;
  private running = false;
  private failure: ShmbusError | undefined;

  protected abstract readonly mode: 'epoll' | 'msgrcv';
  /** Data the worker needs besides the ring (fds). */
  protected abstract workerData(): Record<string, unknown>;
  /** One entry from the thread; `payload` is a view into the ring, valid during the call. */
  protected abstract onEntry(a: number, b: number, payload: Uint8Array): void;
  /** The thread died (an exception in it): every user must hear about it, or it would wait forever. */
  protected abstract onFailure(error: ShmbusError): void;
  /** Wakes the thread so it sees STOP. */
  protected abstract wake(): void;

  /**
   * Starts the thread if it is not running. Throws the error that killed a previous one. A thread is a
   * process-lifetime resource: besides its stack it holds its own libuv loop (an epoll fd, an eventfd and a pipe
   * pair), which is why a suite that counts open pipes starts it first.
   */
  protected ensureStarted(): void {
    if (this.failure) throw this.failure;
    if (this.thread?.running) return;
    Atomics.store(this.ctrl, STOP, 0);
    this.thread = new DedicatedThread({
      kind: this.mode,
      data: { sab: this.sab, ...this.workerData() },
      stop: () => {
        Atomics.store(this.ctrl, STOP, 1);
        Atomics.notify(this.ctrl, PORT);
        Atomics.notify(this.ctrl, TAIL);
        this.wake();
      },
      onFailure: (error) => {
        if (this.failure) return;
        this.failure = error;
        this.onFailure(error);
      },
    });
    if (!this.running) void this.pump();
  }

  /** Resolves once the thread runs its loop (its libuv loop and fds exist); the process stays alive until then. */
  protected whenOnline(): Promise<void> {
    return this.thread?.ready ?? Promise.resolve();
  }

  /** Something that must keep the process alive (an open connection) started using the thread. */
  protected addRef(): void {
    this.thread?.hold();
  }

  protected releaseRef(): void {
    this.thread?.release();
  }

  /** @internal For a report of a stall (tests): the entry ring's positions, whether the consumer loop and the
   * thread run, and the error that stopped the thread. */
  get state(): { head: number; tail: number; pumping: boolean; thread: boolean; stop: number; failure?: string } {
    return {
      head: Atomics.load(this.ctrl, HEAD), tail: this.tail, pumping: this.running, thread: this.thread?.running === true,
      stop: Atomics.load(this.ctrl, STOP), failure: this.failure?.message,
    };
  }

  /** Consumes entries as the thread produces them; waits with Atomics.waitAsync (not a libuv handle: the
   * thread's holds decide whether the process stays alive). */
  private async pump(): Promise<void> {
    this.running = true;
    const { ctrl, bytes } = this;
    try {
      for (;;) {
        let head = Atomics.load(ctrl, HEAD);
        if (head !== this.tail) {
          while (head !== this.tail) {
            const at = HEADER_INTS + (this.tail & (CAPACITY - 1)) * ENTRY_INTS;
            const length = ctrl[at + ENTRY_LENGTH]!;
            const offset = at * 4 + ENTRY_PAYLOAD_OFFSET;
            try {
              this.onEntry(ctrl[at + ENTRY_A]!, ctrl[at + ENTRY_B]!, bytes.subarray(offset, offset + length));
            } catch (error) {
              // A handler's bug must not stop every other connection's receiving.
              queueMicrotask(() => { throw error; });
            }
            this.tail = (this.tail + 1) | 0;
            Atomics.store(ctrl, TAIL, this.tail);
            if (head === this.tail) head = Atomics.load(ctrl, HEAD);
          }
          // The thread may be waiting for room in the ring.
          Atomics.notify(ctrl, TAIL);
          continue;
        }
        if (!this.thread?.running && Atomics.load(ctrl, STOP)) return;
        const w = waitAsync(ctrl, HEAD, head);
        if (w.async) await w.value;
      }
    } finally {
      this.running = false;
    }
  }
}

// ------------------------------------------------------------------------------------------------ epoll

/** Readiness of one fd, reported through `onReady(events)` at most once per `arm`. */
export class FdWatch {
  private armed = false;
  private closed = false;

  /** @internal */
  constructor(
    private readonly thread: EpollThread,
    readonly fd: number,
    readonly token: number,
    private readonly onReady: (events: number) => void,
    readonly onError: (error: ShmbusError) => void,
    private keeping: boolean,
  ) {}

  /** Whether the watch keeps the process alive (see EpollThread.watch). */
  get keepAlive(): boolean {
    return this.keeping;
  }

  /** The process no longer stays alive for this watch (it goes on reporting). */
  unref(): void {
    if (!this.keeping || this.closed) return;
    this.keeping = false;
    this.thread.unrefWatch();
  }

  /** Reports the fd once when it is ready for `events` (EPOLLIN / EPOLLOUT): level-triggered, so arming an
   * fd that is ready already reports it at once. Arming again while armed changes the events. */
  arm(events: number): void {
    if (this.closed) return;
    this.thread.modify(this, events | EPOLLONESHOT);
    this.armed = true;
  }

  get isArmed(): boolean {
    return this.armed;
  }

  /** @internal */
  fire(events: number): void {
    if (this.closed) return;
    this.armed = false;
    this.onReady(events);
  }

  /** Stops watching. Must be called before the fd is closed (epoll forgets an fd only with its last reference). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.thread.remove(this);
  }
}

/** The process's epoll thread (see the file comment). */
export class EpollThread extends EventThread {
  private static instance: EpollThread | undefined;
  protected readonly mode = 'epoll';
  private epfd = -1;
  private wakefd = -1;
  private nextToken = 1;
  private readonly watches = new Map<number, FdWatch>();

  static get(): EpollThread {
    return (EpollThread.instance ??= new EpollThread());
  }

  /**
   * Starts watching `fd` (not armed yet: call `arm`). `keepAlive`: the process stays alive while the watch
   * exists (an open connection does; a queue waiting for a handshake reply does too).
   */
  watch(fd: number, onReady: (events: number) => void, onError: (error: ShmbusError) => void, keepAlive = true): FdWatch {
    this.open();
    let token = this.nextToken;
    // Tokens are u32 and 0 is the eventfd's: skip it (and any still in use) after a wrap.
    while (token === WAKE_TOKEN || this.watches.has(token)) token = (token + 1) >>> 0;
    this.nextToken = (token + 1) >>> 0;
    const w = new FdWatch(this, fd, token, onReady, onError, keepAlive);
    // Added disarmed: EPOLLONESHOT with no events reports nothing until the first arm (EPOLL_CTL_MOD).
    epollCtl(this.epfd, EPOLL_CTL_ADD, fd, EPOLLONESHOT, token);
    this.watches.set(token, w);
    if (keepAlive) this.addRef();
    return w;
  }

  /** Starts the thread now instead of at the first watch (it then idles, unref'd). Resolves once it runs. */
  start(): Promise<void> {
    this.open();
    return this.whenOnline();
  }

  private open(): void {
    if (this.epfd < 0) {
      this.epfd = epollCreate();
      this.wakefd = eventfdCreate();
      epollCtl(this.epfd, EPOLL_CTL_ADD, this.wakefd, EPOLLIN, WAKE_TOKEN);
    }
    this.ensureStarted();
  }

  /** @internal */
  modify(w: FdWatch, events: number): void {
    epollCtl(this.epfd, EPOLL_CTL_MOD, w.fd, events, w.token);
  }

  /** @internal A watch stopped keeping the process alive (FdWatch.unref). */
  unrefWatch(): void {
    this.releaseRef();
  }

  /** @internal */
  remove(w: FdWatch): void {
    if (!this.watches.delete(w.token)) return;
    try {
      epollCtl(this.epfd, EPOLL_CTL_DEL, w.fd, 0, 0);
    } catch {
      /* the fd was closed already: epoll dropped it by itself */
    }
    if (w.keepAlive) this.releaseRef();
  }

  /** How many fds are watched (for tests). */
  get size(): number {
    return this.watches.size;
  }

  protected workerData(): Record<string, unknown> {
    return { epfd: this.epfd, wakefd: this.wakefd };
  }

  protected onEntry(token: number, events: number): void {
    // A token whose watch is gone: its fd fired just before close(); nothing to tell.
    this.watches.get(token >>> 0)?.fire(events >>> 0);
  }

  protected onFailure(error: ShmbusError): void {
    for (const w of [...this.watches.values()]) w.onError(error);
  }

  protected wake(): void {
    if (this.wakefd >= 0) eventfdSignal(this.wakefd);
  }

}

// ------------------------------------------------------------------------------------------------ msgrcv

/** A message that arrived on the port: its mtype and up to PORT_PAYLOAD_MAX bytes (a view, valid during the call). */
export type PortHandler = (mtype: number, payload: Uint8Array) => void;

/** The process's msgrcv thread, receiving from one System V queue at a time (see the file comment). */
export class MsgrcvThread extends EventThread {
  private static instance: MsgrcvThread | undefined;
  protected readonly mode = 'msgrcv';
  private port = PORT_NONE;
  private handler: PortHandler | undefined;
  private onGone: ((error: ShmbusError) => void) | undefined;
  /** Whether the attached port keeps the process alive (it does from attach on, until keepAlive(false)). */
  private holding = true;

  static get(): MsgrcvThread {
    return (MsgrcvThread.instance ??= new MsgrcvThread());
  }

  private constructor() {
    super();
    // The ring's memory starts zeroed, and 0 is a valid msqid (the first queue of an IPC namespace: a fresh boot,
    // a container). A thread started before the first attach would try queue 0, and its report that queue 0 is gone
    // could be read after queue 0 had become our port (test/ipc-namespace.test.ts).
    Atomics.store(this.ctrl, PORT, PORT_NONE);
  }

  /** Starts the thread now instead of at the first attach (it then idles, unref'd, in Atomics.wait). Resolves
   * once it runs. */
  start(): Promise<void> {
    this.ensureStarted();
    return this.whenOnline();
  }

  /**
   * Receives every message of queue `msqid` from now on and hands it to `handler`. `onFailure` hears when the
   * thread can no longer receive (it died, or the queue was removed behind our back). The thread keeps the
   * process alive until `detach`.
   */
  attach(msqid: number, handler: PortHandler, onFailure: (error: ShmbusError) => void): void {
    this.ensureStarted();
    if (this.port === PORT_NONE) this.addRef();
    this.port = msqid;
    this.handler = handler;
    this.onGone = onFailure;
    Atomics.store(this.ctrl, PORT, msqid);
    Atomics.notify(this.ctrl, PORT);
  }

  /** Stops receiving from the port. The caller removes the queue next (IPC_RMID wakes the thread with EIDRM). */
  detach(msqid: number): void {
    if (this.port !== msqid) return;
    this.port = PORT_NONE;
    this.handler = undefined;
    this.onGone = undefined;
    Atomics.compareExchange(this.ctrl, PORT, msqid, PORT_NONE);
    if (this.holding) this.releaseRef();
    this.holding = true;
  }

  /** Whether the attached port keeps the process alive: not while its only users are connections that linger
   * for their END (transports/sysvmq.ts Port.release). */
  keepAlive(on: boolean): void {
    if (this.port === PORT_NONE || on === this.holding) return;
    this.holding = on;
    if (on) this.addRef();
    else this.releaseRef();
  }

  protected workerData(): Record<string, unknown> {
    return {};
  }

  /** @internal The port the thread receives from (as the thread sees it, and as we attached it). */
  get ports(): { portSeen: number; portAttached: number } {
    return { portSeen: Atomics.load(this.ctrl, PORT), portAttached: this.port };
  }

  protected onEntry(lo: number, hi: number, payload: Uint8Array): void {
    if (lo === PORT_GONE_MARK && hi === PORT_GONE_MARK) {
      // The thread saw our port vanish (EIDRM/EINVAL) without a detach: someone removed it (ipcrm).
      const msqid = payload.length >= 4 ? new DataView(payload.buffer, payload.byteOffset, 4).getInt32(0, true) : PORT_NONE;
      if (msqid === this.port && this.onGone) this.onGone(new ShmbusError(ErrorCode.NOT_FOUND, 'the process\'s System V port queue was removed', { details: { msqid } }));
      return;
    }
    const mtype = (hi >>> 0) * 2 ** 32 + (lo >>> 0);
    this.handler?.(mtype, payload);
  }

  protected onFailure(error: ShmbusError): void {
    this.onGone?.(error);
  }

  protected wake(): void {
    // A thread blocked in msgrcv on a live port wakes for a message; PORT_STOP_TYPE tells it to look at STOP.
    const port = Atomics.load(this.ctrl, PORT);
    if (port === PORT_NONE) return;
    const buf = new Uint8Array(MSG_HEADER);
    setMsgType(buf, PORT_STOP_TYPE);
    try { msgSend(port, buf, 0); } catch { /* gone: the thread woke with EIDRM already */ }
  }
}

// ------------------------------------------------------------------------------------------------ liveness

/** One watched process: its callbacks, and how it is watched (a pidfd in the epoll set, or the timer). */
interface Watched {
  pid: number;
  startTime: bigint | undefined;
  callbacks: Set<() => void>;
  pidfd: number;
  watch: FdWatch | undefined;
}

const watched = new Map<string, Watched>();
/** Processes watched by the timer (no pidfd: an old kernel, another pid namespace, out of fds). */
const polled = new Set<Watched>();
let livenessTimer: NodeJS.Timeout | undefined;

function gone(w: Watched): void {
  const key = `${w.pid}:${w.startTime ?? ''}`;
  if (watched.get(key) !== w) return;
  watched.delete(key);
  release(w);
  for (const cb of w.callbacks) {
    try { cb(); } catch (error) { queueMicrotask(() => { throw error; }); }
  }
}

function release(w: Watched): void {
  polled.delete(w);
  w.watch?.close();
  w.watch = undefined;
  if (w.pidfd >= 0) {
    try { closeFd(w.pidfd); } catch { /* closed */ }
    w.pidfd = -1;
  }
}

function poll(w: Watched): void {
  polled.add(w);
  if (livenessTimer) return;
  livenessTimer = setInterval(() => {
    for (const p of [...polled]) if (!isProcessAlive(p.pid, p.startTime)) gone(p);
    if (polled.size === 0 && livenessTimer) {
      clearInterval(livenessTimer);
      livenessTimer = undefined;
    }
  }, LIVENESS_MS);
  livenessTimer.unref();
}

/**
 * Calls `onGone` once, asynchronously, when process `pid` (with that start time, against pid reuse) is no longer
 * alive. Returns the function that stops watching. Watching never keeps the process alive by itself.
 *
 * Where the kernel has pidfd_open, the process's pidfd sits in the epoll thread's set, so a death is seen as
 * soon as the thread wakes (one thread hop, host/thread.ts); otherwise a shared timer checks /proc every
 * LIVENESS_MS. One pidfd serves every watcher of the same process.
 */
export function watchProcess(pid: number, startTime: bigint | undefined, onGone: () => void): () => void {
  const key = `${pid}:${startTime ?? ''}`;
  let w = watched.get(key);
  if (!w) {
    const entry: Watched = { pid, startTime, callbacks: new Set(), pidfd: -1, watch: undefined };
    w = entry;
    watched.set(key, entry);
    const fd = pidfdOpen(pid);
    if (fd === 'gone') {
      queueMicrotask(() => gone(entry));
    } else if (fd === 'unsupported') {
      poll(entry);
    } else {
      entry.pidfd = fd;
      try {
        entry.watch = EpollThread.get().watch(fd, () => gone(entry), () => { release(entry); poll(entry); }, false);
        entry.watch.arm(EPOLLIN);
      } catch {
        release(entry);
        poll(entry);
      }
      // The pid may have been reused between our learning it and pidfd_open: then the fd is someone else's.
      if (!isProcessAlive(pid, startTime)) queueMicrotask(() => gone(entry));
    }
  }
  const entry = w;
  entry.callbacks.add(onGone);
  return () => {
    entry.callbacks.delete(onGone);
    if (entry.callbacks.size === 0 && watched.get(key) === entry) {
      watched.delete(key);
      release(entry);
    }
  };
}
