/**
 * The runner of one plugin instance: instantiates the plugin over a shared memory whose `maximum` is the memory
 * limit, has the host's sealed memfd segment mapped over the region the plugin reserved (RunnerBell.mapSegment:
 * by the runner's process, or for a thread by its host), attaches, then drives the
 * plugin's rings (docs/plugins.md, "The contract with the host") until it is stopped.
 *
 * It runs on a thread (or in a process) of its own, never on the host's event loop: a plugin that never returns
 * (spin.wasm) holds only this thread, which the host then terminates.
 *
 * Sleeping. When ring IN is empty the runner spins briefly on the host's sequence word, then sleeps in
 * `Atomics.wait` on it (see RunnerBell). The host bumps the word after every commit to ring IN and after a
 * release of ring OUT while the plugin's outbox waits for room (CTL_OUTBOX), and notifies only when the runner
 * announced it sleeps. `Atomics.wait` is chosen over a
 * kernel futex (host/sys/futex.ts) for the thread because `Worker.terminate()` interrupts it, while a thread
 * blocked inside a koffi syscall cannot be terminated until the call returns.
 *
 * Nothing here trusts the plugin: its traps end the call and are reported, never thrown further.
 */
import { GUEST_BATCH_MAX, WASM_PAGE_SIZE } from '../assembly/layout.js';

/** Words of the control array the host and the runner share (Int32 indexes). */
export const CTL_IN_SEQ = 0; // written by the host: bumped after each commit to ring IN / release of ring OUT
export const CTL_SLEEPING = 1; // runner sets 1 before it sleeps on CTL_IN_SEQ; the host takes it (0) when it wakes it
export const CTL_STOP = 2; // written by the host: 1 asks the runner to return
export const CTL_OUTBOX = 3; // written by the runner: 1 while the plugin's outbox waits for room in ring OUT
export const CTL_SEEN = 4; // written by the runner: the CTL_IN_SEQ it loaded before its latest poll (it is running)
export const CTL_MAPPED = 5; // written by a thread runner's host: MAP_DONE or MAP_FAILED once it answered a MapRequest
export const CTL_INTS = 6;

/** CTL_MAPPED: the host mapped the segment where the thread runner asked. */
export const MAP_DONE = 1;
/** CTL_MAPPED: the host refused or failed. */
export const MAP_FAILED = 2;

/**
 * A thread runner's request to its host (postMessage): map the segment at `address` of `memory` (the plugin's
 * shared memory, the same in both threads). The host does it, so that the runner's thread never loads koffi:
 * every thread that loads it leaves koffi's per-thread memory behind when it ends (koffi 3.3.4 never frees it),
 * and instances are replaced after every trap or timeout, which a plugin can cause at will.
 */
export interface MapRequest {
  map: number;
  memory: WebAssembly.Memory;
}

/** A thread runner's first message: every module it needs is loaded. Until then the host does not terminate it
 * (host/thread.ts terminationGate: Node aborted when a runner was terminated while it loaded koffi, which it did
 * until the host took over the mapping; the rule stays, so that no future import of the runner reopens that). */
export const RUNNER_LOADED = 1;

/** What the runner tells its host (postMessage or the process channel: control only, never message data). */
export type RunnerReport =
  | { type: 'ready' }
  | { type: 'failed'; code: 'trap' | 'limit' | 'corrupt' | 'import' | 'attach'; message: string; ring?: number };

/** How the runner sleeps and rings its host; one per isolation (plugins/runner-start.ts). */
export interface RunnerBell {
  readonly ctl: Int32Array;
  /** Sleeps until CTL_IN_SEQ differs from `seq` (or a spurious wakeup). */
  sleep(seq: number): void;
  /** The host's consumer of ring OUT (or producer of ring IN) parked and must look at the rings. */
  ringHost(): void;
  /** Maps the host's segment (RunnerConfig fd and bytes) at `address` of `memory`, which the plugin reserved and
   * the runner checked (page-aligned, inside the memory). Throws when it cannot. */
  mapSegment(memory: WebAssembly.Memory, address: number): void;
}

/** Everything a runner needs to start, as sent by the host. */
export interface RunnerConfig {
  module: WebAssembly.Module;
  /** The segment's memfd, valid in this process. */
  fd: number;
  /** The segment's length (segmentBytes(2, capacity)). */
  bytes: number;
  /** The plugin memory's `maximum`, in wasm pages (the memory limit). */
  maximumPages: number;
  /** Initial pages (at least what the module declares). */
  initialPages: number;
  /** Polls of an idle ring before sleeping. */
  spin: number;
}

interface Exports {
  shmbus_reserve(bytes: number): number;
  shmbus_attach(address: number, bytes: number): number;
  shmbus_poll(max: number): number;
  shmbus_outbox(): number;
  shmbus_wakes(): number;
}

/** Longest trap text we copy out of the plugin's memory. */
const MAX_ABORT_TEXT = 4096;

/** Reads an AssemblyScript string (UTF-16LE, byte length in the u32 before it) with every bound checked. */
function guestText(memory: WebAssembly.Memory, ptr: number): string {
  const size = memory.buffer.byteLength;
  if (ptr < 4 || ptr >= size || ptr % 2 !== 0) return '';
  const len = Math.min(new DataView(memory.buffer).getUint32(ptr - 4, true), MAX_ABORT_TEXT, size - ptr) & ~1;
  return Buffer.from(new Uint8Array(memory.buffer, ptr, len).slice()).toString('utf16le');
}

/** Instantiates and attaches; on success runs until stopped. Every failure is reported, then returns. */
export function runPlugin(config: RunnerConfig, bell: RunnerBell, report: (r: RunnerReport) => void): void {
  const { ctl } = bell;
  const maximumBytes = config.maximumPages * WASM_PAGE_SIZE;
  let memory: WebAssembly.Memory;
  let x: Exports;
  try {
    memory = new WebAssembly.Memory({ initial: config.initialPages, maximum: config.maximumPages, shared: true });
    const env = {
      memory,
      abort(msg: number, file: number, line: number, column: number): never {
        throw new Error(`abort: ${guestText(memory, msg)} at ${guestText(memory, file)}:${line >>> 0}:${column >>> 0}`);
      },
    };
    const instance = new WebAssembly.Instance(config.module, { env });
    x = instance.exports as unknown as Exports;
  } catch (error) {
    report({ type: 'failed', code: 'import', message: String((error as Error)?.message ?? error) });
    return;
  }
  const trapped = (error: unknown): void => {
    const message = String((error as Error)?.message ?? error);
    // The allocator traps with `unreachable` when memory.grow fails: at the limit, that is the limit's doing.
    const atLimit = error instanceof WebAssembly.RuntimeError && maximumBytes - memory.buffer.byteLength < (2 << 20);
    report({ type: 'failed', code: atLimit ? 'limit' : 'trap', message });
  };
  try {
    const address = x.shmbus_reserve(config.bytes) >>> 0;
    if (address === 0 || address % WASM_PAGE_SIZE !== 0 || address + config.bytes > memory.buffer.byteLength) {
      report({ type: 'failed', code: 'limit', message: `the plugin could not reserve ${config.bytes} bytes for its rings under its memory limit` });
      return;
    }
    bell.mapSegment(memory, address);
    const rc = x.shmbus_attach(address, config.bytes);
    if (rc !== 0) {
      report({ type: 'failed', code: 'attach', message: `shmbus_attach refused the segment`, ring: rc });
      return;
    }
  } catch (error) {
    trapped(error);
    return;
  }
  report({ type: 'ready' });
  let outboxWaits = false;
  /** The runner rang the host since its last spin. */
  let rang = false;
  let seen = Atomics.load(ctl, CTL_SEEN);
  // Polls before sleeping: self-tuned between spin/4 (about what a fixed spin of 2000 was) and spin.
  let budget = config.spin;
  const minBudget = config.spin >>> 2;
  for (;;) {
    if (Atomics.load(ctl, CTL_STOP) !== 0) return;
    // SYNC: pairs with the host's Atomics.add after its commit: a commit after this load changes the word.
    const seq = Atomics.load(ctl, CTL_IN_SEQ);
    // SYNC: the host loads it while it waits for a reply (RunnerHandle.seen): equal to its kick's sequence, this
    // runner is on a core and polls after that commit, so the reply is worth waiting for.
    if (seq !== seen) { seen = seq; Atomics.store(ctl, CTL_SEEN, seq); }
    let n: number;
    let wakes: number;
    try {
      n = x.shmbus_poll(GUEST_BATCH_MAX);
      wakes = x.shmbus_wakes();
    } catch (error) {
      trapped(error);
      return;
    }
    if (n < 0) {
      report({ type: 'failed', code: 'corrupt', message: 'the plugin found its rings corrupt', ring: n });
      return;
    }
    if (wakes !== 0) { bell.ringHost(); rang = true; }
    if (n > 0) continue;
    // The host kicks after reading ring OUT only while the outbox waits for room (not after every reply).
    // SYNC: pairs with the host's Atomics.load of CTL_OUTBOX after its release of ring OUT (both sequentially
    // consistent): either the host sees the flag and kicks, or the poll that follows the store sees the room.
    const waits = x.shmbus_outbox() !== 0;
    if (waits !== outboxWaits) {
      outboxWaits = waits;
      Atomics.store(ctl, CTL_OUTBOX, waits ? 1 : 0);
      if (waits) continue;
    }
    // After a doorbell the host answers only once its event loop is up again (µs to tens of µs; more when its
    // core had gone idle): the whole spin covers that, so the next request finds this runner awake. A runner that
    // slept instead, woken by that request, rings again for its reply and sleeps again: every call then paid two
    // wakeups (measured: about one lone call in 25 on a quiet machine, each 20-40 µs instead of 2).
    let spins = rang ? config.spin : budget;
    rang = false;
    while (spins-- > 0 && Atomics.load(ctl, CTL_IN_SEQ) === seq);
    if (Atomics.load(ctl, CTL_IN_SEQ) !== seq) {
      // Caught the next record while spinning: spin longer next time (up to `spin`).
      budget = Math.min(config.spin, budget * 2 + 1);
      continue;
    }
    // Slept after all: spin less next time, so a runner whose host is slow to answer (a busy machine) gives the
    // core back sooner instead of burning it on every request.
    budget = Math.max(minBudget, budget >>> 1);
    // SYNC: pairs with the host's Atomics.exchange of CTL_SLEEPING after its Atomics.add of CTL_IN_SEQ (both
    // sequentially consistent): either the host sees us asleep and wakes us (taking the flag, so a burst of
    // commits costs one wakeup), or its add lands before our wait compares the word.
    Atomics.store(ctl, CTL_SLEEPING, 1);
    bell.sleep(seq);
    Atomics.store(ctl, CTL_SLEEPING, 0);
  }
}
