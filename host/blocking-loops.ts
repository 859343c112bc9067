/**
 * The loops of the receive threads (host/blocking.ts), run on a dedicated thread (host/thread.ts): blocking system
 * calls that report what they saw through the shared ring, and nothing else. The thread's kind picks the loop:
 *
 *   epoll   epoll_wait on the set the main thread manages; every fd is armed EPOLLONESHOT, so each reported fd
 *           stays quiet until the main thread has dealt with it and armed it again. The eventfd (token 0) only
 *           wakes the loop to look at STOP.
 *   msgrcv  a blocking msgrcv on the port queue named in ctrl[PORT]; after one message, every other one already
 *           waiting is taken without blocking, so a burst costs one wakeup of the main thread. Duplicate
 *           doorbells (same mtype, no payload) in one burst are reported once. When the port is removed
 *           (EIDRM/EINVAL) the thread idles in Atomics.wait until the main thread names a new one.
 */
import { epollEventAt, epollWait, eventfdDrain } from './sys/mq.js';
import { msgReceive, msgType, MSG_HEADER } from './sys/msg.js';
import { MSG_NOERROR, EPOLL_EVENT_SIZE } from './sys/constants.js';
import {
  CAPACITY, ENTRY_A, ENTRY_B, ENTRY_LENGTH, ENTRY_INTS, ENTRY_PAYLOAD_OFFSET, HEAD, HEADER_INTS, PORT, PORT_GONE_MARK, PORT_NONE, PORT_PAYLOAD_MAX,
  PORT_STOP_TYPE, STOP, TAIL, WAKE_TOKEN,
} from './blocking.js';

/** What host/blocking.ts hands its thread; `boundMs` bounds each blocking call (host/thread.ts NESTED_WAIT_MS). */
export interface EventThreadData { kind: 'epoll' | 'msgrcv'; sab: SharedArrayBuffer; boundMs: number; epfd?: number; wakefd?: number }

/** A bounded msgrcv loop (no timeout exists for it) looks at an empty port this often at most, while idle. */
const PORT_POLL_MAX_MS = 5;

let ctrl: Int32Array;
let bytes: Uint8Array;
/** Entries written but not yet published with a notify. */
let head = 0;

const stopping = () => Atomics.load(ctrl, STOP) !== 0;

/** Writes one entry; waits while the ring is full (the main thread notifies TAIL after consuming). */
function push(a: number, b: number, payload?: Uint8Array): boolean {
  for (;;) {
    const tail = Atomics.load(ctrl, TAIL);
    if (((head - tail) | 0) < CAPACITY) break;
    publish();
    Atomics.wait(ctrl, TAIL, tail, 1000);
    if (stopping()) return false;
  }
  const at = HEADER_INTS + (head & (CAPACITY - 1)) * ENTRY_INTS;
  ctrl[at + ENTRY_A] = a;
  ctrl[at + ENTRY_B] = b;
  const length = payload ? Math.min(payload.length, PORT_PAYLOAD_MAX) : 0;
  ctrl[at + ENTRY_LENGTH] = length;
  if (length) bytes.set(payload!.subarray(0, length), at * 4 + ENTRY_PAYLOAD_OFFSET);
  head = (head + 1) | 0;
  return true;
}

/** Makes the written entries visible and wakes the main thread's Atomics.waitAsync. */
function publish(): void {
  if (Atomics.load(ctrl, HEAD) === head) return;
  Atomics.store(ctrl, HEAD, head);
  Atomics.notify(ctrl, HEAD);
}

function epollLoop(epfd: number, wakefd: number, boundMs: number): void {
  const events = new Uint8Array(EPOLL_EVENT_SIZE * 256);
  const view = new DataView(events.buffer);
  while (!stopping()) {
    const n = epollWait(epfd, events, boundMs > 0 ? boundMs : -1);
    for (let i = 0; i < n; i++) {
      const { events: mask, token } = epollEventAt(view, i);
      if (token === WAKE_TOKEN) eventfdDrain(wakefd);
      else if (!push(token, mask)) return;
    }
    publish();
  }
}

function msgrcvLoop(boundMs: number): void {
  const buf = new Uint8Array(MSG_HEADER + PORT_PAYLOAD_MAX);
  const text = buf.subarray(MSG_HEADER);
  const seen = new Set<number>();
  const gone = new Uint8Array(4);
  // Bounded: an empty port is looked at again after a pause that doubles up to PORT_POLL_MAX_MS.
  let pause = 0.05;
  while (!stopping()) {
    const port = Atomics.load(ctrl, PORT);
    if (port === PORT_NONE) {
      Atomics.wait(ctrl, PORT, PORT_NONE);
      continue;
    }
    let n: number;
    try {
      n = msgReceive(port, buf, 0, boundMs === 0, MSG_NOERROR);
      if (n < 0) {
        // Only when bounded: nothing there yet (an Atomics.wait is interrupted by terminate).
        Atomics.wait(ctrl, STOP, 0, pause);
        pause = Math.min(pause * 2, PORT_POLL_MAX_MS);
        continue;
      }
      pause = 0.05;
    } catch {
      // Removed (EIDRM while we slept, EINVAL after). If the main thread did not detach first, tell it.
      if (Atomics.compareExchange(ctrl, PORT, port, PORT_NONE) === port) {
        new DataView(gone.buffer).setInt32(0, port, true);
        push(PORT_GONE_MARK, PORT_GONE_MARK, gone);
        publish();
      }
      continue;
    }
    seen.clear();
    let batch = 0;
    while (n >= 0) {
      const mtype = msgType(buf);
      if (mtype !== PORT_STOP_TYPE && !(n === 0 && seen.has(mtype))) {
        if (n === 0) seen.add(mtype);
        // mtype is a positive long below 2^53: split into two int32 halves.
        if (!push(mtype % 2 ** 32 | 0, Math.floor(mtype / 2 ** 32) | 0, text.subarray(0, n))) return;
      }
      if (++batch >= CAPACITY / 2) break;
      try {
        n = msgReceive(port, buf, 0, false, MSG_NOERROR);
      } catch {
        break; // removed: the blocking call above will see it
      }
    }
    publish();
  }
}

/** Runs the loop of `data.kind` until the main thread sets STOP. */
export function run(data: EventThreadData): void {
  ctrl = new Int32Array(data.sab);
  bytes = new Uint8Array(data.sab);
  head = Atomics.load(ctrl, HEAD);
  if (data.kind === 'epoll') epollLoop(data.epfd!, data.wakefd!, data.boundMs);
  else msgrcvLoop(data.boundMs);
}
