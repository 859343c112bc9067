/**
 * SharedState: a named block of typed fields in shared memory, read without locks and written as whole changes.
 * See docs/state.md and assembly/layout.ts ("State body").
 */
import {
  STATE_MAGIC, STATE_SEQ_OFFSET, STATE_WRITER_OFFSET, STATE_MAX_BLOCK, stateBytes, stateCopyOffset,
} from '../assembly/layout.js';
import { BadArgumentError, ClosedError, CorruptError, ShmbusError, ErrorCode, TimeoutError } from '../host/errors.js';
import { claimAlive, claimPid, ownClaim } from '../host/claim.js';
import { SyncSegment, parseTarget, type OpenOptions } from './segment.js';
import { waitWord, wakeWord, LIVENESS_MS } from './wait.js';
import {
  layoutOf, readField, checkValue, writeField, addInteger, big, type FieldSpec, type Snapshot, type IntegerField,
  type Layout, type Field, type Value,
} from './fields.js';

export type { FieldSpec, FieldType, Snapshot, ValueOf } from './fields.js';

/** Options of SharedState.open. */
export interface SharedStateOptions<F extends FieldSpec> extends OpenOptions {
  /** The fields, in order: `{ hits: 'u64', bid: 'f64', name: 'string:32' }`. Must match the segment's exactly
   * (names, types, order), else ERR_SHMBUS_VERSION_MISMATCH. */
  fields: F;
}

/** How long a writer spins for another writer's update to finish before it gives up with ERR_SHMBUS_TIMEOUT. */
const WRITER_WAIT_MS = 2000;
/** How many times a reader retries a read that writers kept overtaking before ERR_SHMBUS_TIMEOUT. */
const READ_ATTEMPTS = 1_000_000;
const FREE = 0n;

/**
 * A block of typed fields shared by processes.
 *
 * - Reads never block writers and never wait for them: the block is kept twice (a seqlock over two copies).
 *   Version v lives in copy v & 1; a writer builds version v+1 in the other copy, then publishes it. A reader
 *   reads the copy of the latest published version and rereads the sequence word to make sure no writer started
 *   overwriting that copy meanwhile (it retries then; it never waits on a writer).
 * - A writer that dies in the middle of an update leaves the previous version complete and published: readers
 *   keep getting that last complete version (never an error, never a spin), and the next writer takes the dead
 *   writer's claim over and carries on from it. The half-written change is lost, as if it never happened.
 * - Writers are serialised by a claim word (pid + start time). Writes are synchronous and short (a copy of the
 *   block and the changed fields), so a writer that finds another one at work spins for it; it checks whether
 *   that writer is alive while it spins, and gives up with ERR_SHMBUS_TIMEOUT after 2 s (a stopped process).
 * - `watch()` sleeps on a kernel futex on the sequence word (through the wait thread), woken by writers only when
 *   a watcher is waiting.
 *
 * Every write copies the whole block (to keep the other copy complete), so the block should stay small (it may
 * be up to 1 MiB; writes then cost a 1 MiB copy).
 */
export class SharedState<F extends FieldSpec = FieldSpec> {
  readonly #seg: SyncSegment;
  readonly #layout: Layout;
  readonly #view: DataView;
  readonly #u8: Uint8Array;
  /** [seq, watchers] */
  readonly #words: Int32Array;
  readonly #writer: BigUint64Array;
  readonly #copies: [number, number];
  readonly #mine = ownClaim();
  /** Scratch of update(): the fields it changes and their checked values (reused: no allocation per update). */
  readonly #changedFields: Field[] = [];
  readonly #changedValues: (number | bigint | Uint8Array)[] = [];
  /** watch() calls asleep now (each counted once in the shared `watchers`). */
  #watching = 0;
  /** Aborted by close(): ends the sleeps of watch(). */
  readonly #closer = new AbortController();
  #closed = false;

  private constructor(seg: SyncSegment, layout: Layout) {
    this.#seg = seg;
    this.#layout = layout;
    const buffer = seg.engine.memory.buffer;
    const size = stateBytes(layout.block);
    this.#view = new DataView(buffer, seg.at, size);
    this.#u8 = new Uint8Array(buffer, seg.at, size);
    this.#words = new Int32Array(buffer, seg.at + STATE_SEQ_OFFSET, 2);
    this.#writer = new BigUint64Array(buffer, seg.at + STATE_WRITER_OFFSET, 1);
    this.#copies = [stateCopyOffset(layout.block, 0), stateCopyOffset(layout.block, 1)];
  }

  /**
   * Opens (by default creating) the state `url` names: `shm://name` or `sysv://0x1234`. `fields` is required and
   * must agree with the segment's field list (ERR_SHMBUS_VERSION_MISMATCH otherwise). A created state starts with
   * every field zero (false, empty string, empty bytes).
   */
  static async open<F extends FieldSpec>(url: string, options: SharedStateOptions<F>): Promise<SharedState<F>> {
    if (typeof options !== 'object' || options === null) throw new BadArgumentError('SharedState.open needs { fields }');
    const layout = layoutOf(options.fields);
    const target = parseTarget(url, 'state', options.perm);
    const seg = await SyncSegment.open(target, {
      kind: 'state', magic: STATE_MAGIC, shape: layout.hash, param: layout.block, createShape: layout.hash, most: stateBytes(layout.block),
      bytes: (_shape, block) => {
        if (block > STATE_MAX_BLOCK) throw new CorruptError('block size out of range', { block });
        return stateBytes(block);
      },
    }, options);
    return new SharedState<F>(seg, layout);
  }

  /** The URL it was opened with. */
  get url(): string {
    return this.#seg.url;
  }

  /** How many changes were published (mod 2^31). A change of several fields (update) counts once. */
  get version(): number {
    this.#checkOpen();
    // SYNC: pairs with the Atomics.store of seq in #publish.
    return Atomics.load(this.#words, 0) >>> 1;
  }

  /** A consistent snapshot of every field: all from one published version. */
  read(): Snapshot<F> {
    return this.#snapshot().values;
  }

  #snapshot(): { values: Snapshot<F>; version: number } {
    return this.#consistent((base, version) => {
      const values: Record<string, Value> = {};
      for (const f of this.#layout.fields) values[f.name] = readField(this.#view, this.#u8, base, f);
      return { values: values as Snapshot<F>, version };
    });
  }

  /** One field's value in the latest published version. */
  get<K extends keyof F & string>(name: K): Snapshot<F>[K] {
    const f = this.#field(name);
    return this.#consistent((base) => readField(this.#view, this.#u8, base, f)) as Snapshot<F>[K];
  }

  /** Sets one field (a change of its own). */
  set<K extends keyof F & string>(name: K, value: Snapshot<F>[K]): void {
    this.update({ [name]: value } as unknown as Partial<Snapshot<F>>);
  }

  /** Sets several fields as one change: a reader sees all of them or none. */
  update(values: Partial<Snapshot<F>>): void {
    if (typeof values !== 'object' || values === null) throw new BadArgumentError('update takes an object of field values');
    // Every value is checked before the writer claim is taken: a bad one changes nothing.
    const fields = this.#changedFields;
    const converted = this.#changedValues;
    let n = 0;
    for (const name in values) {
      if (!Object.hasOwn(values, name)) continue;
      const f = this.#field(name);
      fields[n] = f;
      converted[n++] = checkValue(f, (values as Record<string, unknown>)[name]);
    }
    const base = this.#beginWrite();
    try {
      for (let i = 0; i < n; i++) writeField(this.#view, this.#u8, base, fields[i]!, converted[i]!);
    } catch (error) {
      // Never leave our claim and an odd seq behind: the next write of this process would wait for itself.
      this.#abandon();
      throw error;
    } finally {
      converted.fill(0, 0, n);
    }
    this.#publish();
  }

  /** Adds `delta` to an integer field atomically (wrapping like the machine word) and returns the new value. */
  add<K extends IntegerField<F> & string>(name: K, delta: number | bigint): Snapshot<F>[K] {
    const f = this.#field(name);
    addInteger(f, 0, delta); // checks kind and delta before taking the writer claim
    const base = this.#beginWrite();
    let next: number | bigint;
    try {
      next = addInteger(f, readField(this.#view, this.#u8, base, f), delta);
    } catch (error) {
      this.#abandon();
      throw error;
    }
    writeField(this.#view, this.#u8, base, f, next);
    this.#publish();
    return (typeof next === 'bigint' ? big(next) : next) as Snapshot<F>[K];
  }

  /** Sets an integer field to `value` if it holds `expected` now; returns whether it did (atomic). */
  compareAndSet<K extends IntegerField<F> & string>(name: K, expected: number | bigint, value: number | bigint): boolean {
    const f = this.#field(name);
    addInteger(f, 0, 0); // integer fields only
    const want = checkValue(f, value);
    const expect = checkValue(f, expected);
    const base = this.#beginWrite();
    const current = readField(this.#view, this.#u8, base, f);
    const currentRaw = typeof expect === 'bigint' ? BigInt(current as number | bigint) : current;
    if (currentRaw !== expect) {
      this.#abandon();
      return false;
    }
    writeField(this.#view, this.#u8, base, f, want);
    this.#publish();
    return true;
  }

  /**
   * Snapshots as writers change the state: each time the version moves past the last one yielded (starting from
   * the version at the call), the latest snapshot; changes made in between are coalesced. Sleeps on a futex
   * between changes (no polling). Ends (returns) when `signal` aborts or the state is closed.
   */
  async *watch(options: { signal?: AbortSignal } = {}): AsyncGenerator<Snapshot<F>, void, undefined> {
    if (typeof options !== 'object' || options === null) throw new BadArgumentError('options must be an object');
    const signal = options.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new BadArgumentError('signal must be an AbortSignal');
    let last = this.version;
    while (!this.#closed && !signal?.aborted) {
      // SYNC: pairs with the load of watchers in #publish: counted before seq is read.
      Atomics.add(this.#words, 1, 1);
      this.#watching++;
      try {
        const seq = Atomics.load(this.#words, 0);
        if (seq >>> 1 === last) await waitWord(this.#seg.engine, this.#seg.at + STATE_SEQ_OFFSET, seq, LIVENESS_MS, signal, this.#closer.signal);
      } finally {
        this.#watching--;
        // After close(), which took our count back out of `watchers`, the window is not ours any more.
        if (!this.#closed) Atomics.sub(this.#words, 1, 1);
      }
      if (this.#closed || signal?.aborted) return;
      if (this.version === last) continue;
      const { values, version } = this.#snapshot();
      last = version;
      yield values;
    }
  }

  /** Unmaps, and removes the name if this process created it. Idempotent. */
  close(): void {
    if (this.#closed) return;
    if (this.#watching > 0) Atomics.sub(this.#words, 1, this.#watching);
    this.#closed = true;
    this.#closer.abort();
    this.#seg.close();
  }

  // ------------------------------------------------------------------------------------------ internals

  #checkOpen(): void {
    if (this.#closed) throw new ClosedError(`this handle of ${this.#seg.url} is closed`);
  }

  #field(name: string): Field {
    this.#checkOpen();
    const f = typeof name === 'string' ? this.#layout.byName.get(name) : undefined;
    if (!f) throw new BadArgumentError('no such field', { field: String(name) });
    return f;
  }

  /**
   * Runs `read(base, version)` on the copy of the latest published version until no writer overwrote that copy
   * meanwhile. A copy is overwritten only by the writer after next: the read is good while seq has not passed
   * (seen & ~1) + 2.
   */
  #consistent<T>(read: (base: number, version: number) => T): T {
    this.#checkOpen();
    for (let attempt = 0; attempt < READ_ATTEMPTS; attempt++) {
      // SYNC: pairs with the Atomics.store of seq in #beginWrite / #publish.
      const seen = Atomics.load(this.#words, 0) >>> 0;
      const version = seen >>> 1;
      const value = read(this.#copies[version & 1]!, version);
      // SYNC: as above; the plain reads of the copy come before this load.
      const now = Atomics.load(this.#words, 0) >>> 0;
      if (((now - (seen & ~1)) >>> 0) <= 2) return value;
    }
    throw new TimeoutError('writers kept overtaking this read', { url: this.#seg.url, attempts: READ_ATTEMPTS });
  }

  /**
   * Takes the writer claim (from a dead writer too), marks the next version as being written (seq odd), copies
   * the current version into the other copy and returns that copy's offset.
   */
  #beginWrite(): number {
    this.#checkOpen();
    const w = this.#writer;
    // SYNC: pairs with the compare-and-swap to 0 in #publish / #abandon and with every other writer's.
    if (Atomics.compareExchange(w, 0, FREE, this.#mine) !== FREE) this.#waitForWriter();
    // SYNC: every store below happens after the claim is ours; seq pairs with the readers' loads.
    const seq = Atomics.load(this.#words, 0) >>> 0;
    const version = seq >>> 1;
    // Odd already: a writer died after marking version+1; its copy is garbage and rebuilt below.
    if ((seq & 1) === 0) Atomics.store(this.#words, 0, (seq + 1) | 0);
    const from = this.#copies[version & 1]!;
    const to = this.#copies[(version + 1) & 1]!;
    this.#u8.copyWithin(to, from, from + this.#layout.block);
    return to;
  }

  #waitForWriter(): void {
    const w = this.#writer;
    const deadline = Date.now() + WRITER_WAIT_MS;
    for (let spins = 1; ; spins++) {
      const holder = Atomics.load(w, 0);
      if (holder === FREE) {
        if (Atomics.compareExchange(w, 0, FREE, this.#mine) === FREE) return;
        continue;
      }
      if ((spins & 1023) === 0) {
        // A writer this long at it may be dead: then its claim is ours (its half-written copy is discarded).
        if (holder !== this.#mine && !claimAlive(holder) && Atomics.compareExchange(w, 0, holder, this.#mine) === holder) return;
        if (Date.now() > deadline) {
          throw new ShmbusError(ErrorCode.TIMEOUT, 'another writer holds the state and does not finish', {
            details: { url: this.#seg.url, writer: claimPid(holder), waitedMs: WRITER_WAIT_MS },
          });
        }
      }
    }
  }

  /** Publishes the version being written and gives the claim back; wakes watchers if any wait. */
  #publish(): void {
    const seq = Atomics.load(this.#words, 0) >>> 0;
    // SYNC: pairs with the readers' loads of seq: every byte of the new copy is written before this store.
    Atomics.store(this.#words, 0, (seq + 1) | 0);
    Atomics.compareExchange(this.#writer, 0, this.#mine, FREE);
    // SYNC: pairs with the Atomics.add of watchers in watch(): seq is stored before watchers is read.
    if (Atomics.load(this.#words, 1) !== 0) wakeWord(this.#seg.address(STATE_SEQ_OFFSET));
  }

  /** Ends a write that changes nothing: seq back to the published version, claim given back. */
  #abandon(): void {
    const seq = Atomics.load(this.#words, 0) >>> 0;
    Atomics.store(this.#words, 0, (seq - 1) | 0);
    Atomics.compareExchange(this.#writer, 0, this.#mine, FREE);
  }
}
