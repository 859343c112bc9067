// The single-producer single-consumer ring, run over ring headers that live in shared memory.
//
// Every function takes a handle: a small private block (see H_* in layout.ts) in this process's own memory that
// holds the validated capacity and this endpoint's cached positions. The shared ring header is never trusted
// for geometry after ring_open: a hostile peer can rewrite it, but only the peer-written positions are reread,
// and each one is checked before use. No function loops more than capacity / RECORD_ALIGNMENT times, and no
// address outside [data, data + capacity) is ever read or written.

import {
  RING_CAPACITY_OFFSET, RING_TAIL_OFFSET, RING_HEAD_OFFSET, RING_PRODUCER_CLOSED_OFFSET, RING_CONSUMER_CLOSED_OFFSET,
  RING_PRODUCER_PARK_OFFSET, RING_CONSUMER_PARK_OFFSET, RING_PRODUCER_WAKE_OFFSET, RING_CONSUMER_WAKE_OFFSET, RING_HEADER_SIZE, RING_MIN_CAPACITY, RING_MAX_CAPACITY,
  RING_COMMITTED_RECORDS_OFFSET, RING_READ_RECORDS_OFFSET,
  RECORD_LENGTH_OFFSET, RECORD_TYPE_OFFSET, RECORD_HEADER_SIZE, RECORD_ALIGNMENT, RECORD_PADDING,
  RING_OK, RING_E_POSITIONS, RING_E_RECORD, RING_E_TOO_LARGE, RING_E_STATE, RING_E_HEADER,
  H_RING_OFFSET, H_CAPACITY_OFFSET, H_ROLE_OFFSET, H_CLAIM_OFFSET, H_POSITION_OFFSET, H_CACHED_OFFSET,
  H_CLAIM_MAX_OFFSET, H_NEED_OFFSET, H_RUNG_OFFSET, H_CLAIM_TYPE_OFFSET, H_WAIT_VALUE_OFFSET, HANDLE_SIZE, ROLE_PRODUCER, ROLE_CONSUMER,
  BATCH_ENTRY_SIZE, maxPayload,
  RECORD_RESIZE, RESIZE_CAPACITY_OFFSET, RESIZE_PAYLOAD_SIZE, RING_GROW, RING_RESIZE_SENT, RING_RESIZE_SEEN,
  H_MAX_CAPACITY_OFFSET, H_PENDING_OFFSET, H_POPULATED_OFFSET, H_SWITCH_AT_OFFSET, H_TARGET_OFFSET, H_GROW_LIMIT_OFFSET, H_FULL_OFFSET,
  H_CLAIM_COUNT_OFFSET, H_UNPUBLISHED_OFFSET, H_UNPUBLISHED_BYTES_OFFSET,
} from './layout';

@inline function align(n: u64): u64 {
  return (n + (RECORD_ALIGNMENT - 1)) & ~(<u64>RECORD_ALIGNMENT - 1);
}

@inline function isPowerOfTwo(n: u32): bool {
  return n != 0 && (n & (n - 1)) == 0;
}

// --- handle fields ---------------------------------------------------------------------------------------------
@inline function ringOf(h: usize): usize { return <usize>load<u32>(h, H_RING_OFFSET); }
@inline function capacityOf(h: usize): u32 { return load<u32>(h, H_CAPACITY_OFFSET); }
@inline function dataOf(h: usize): usize { return ringOf(h) + RING_HEADER_SIZE; }

/** Formats a ring header at `ring` (the creator does this once, before publishing the segment version). */
export function ring_format(ring: usize, capacity: u32): i32 {
  if (!isPowerOfTwo(capacity) || capacity < <u32>RING_MIN_CAPACITY || capacity > <u32>RING_MAX_CAPACITY) return RING_E_HEADER;
  memory.fill(ring, 0, RING_HEADER_SIZE);
  store<u32>(ring, capacity, RING_CAPACITY_OFFSET);
  return RING_OK;
}

/**
 * Opens one end of the ring at `ring` into the private handle `h`. `capacity` comes from the segment header the
 * host already checked against the mapped length; the ring header must agree, and the positions must be sane.
 */
export function ring_open(h: usize, ring: usize, capacity: u32, role: u32): i32 {
  memory.fill(h, 0, HANDLE_SIZE);
  if (!isPowerOfTwo(capacity) || capacity < <u32>RING_MIN_CAPACITY || capacity > <u32>RING_MAX_CAPACITY) return RING_E_HEADER;
  if (load<u32>(ring, RING_CAPACITY_OFFSET) != capacity) return RING_E_HEADER;
  if (role != ROLE_PRODUCER && role != ROLE_CONSUMER) return RING_E_STATE;
  // SYNC: pairs with the stores of tail (ring_commit) and head (ring_release) made before this open.
  const tail = atomic.load<u64>(ring, RING_TAIL_OFFSET);
  const head = atomic.load<u64>(ring, RING_HEAD_OFFSET);
  if (!positionsSane(head, tail, capacity)) return RING_E_POSITIONS;
  store<u32>(h, <u32>ring, H_RING_OFFSET);
  store<u32>(h, capacity, H_CAPACITY_OFFSET);
  store<u32>(h, role, H_ROLE_OFFSET);
  store<u32>(h, capacity, H_MAX_CAPACITY_OFFSET);
  store<u32>(h, capacity, H_GROW_LIMIT_OFFSET);
  store<u32>(h, capacity, H_POPULATED_OFFSET);
  if (role == ROLE_PRODUCER) {
    store<u64>(h, tail, H_POSITION_OFFSET);
    store<u64>(h, head, H_CACHED_OFFSET);
  } else {
    store<u64>(h, head, H_POSITION_OFFSET);
    store<u64>(h, tail, H_CACHED_OFFSET);
  }
  return RING_OK;
}

/**
 * Makes a freshly opened end, whose own position is still at the ring's start, start with `initial` data bytes
 * instead of the whole ring (1.2): the ring grows in band (RECORD_RESIZE) up to the capacity it was opened with.
 * Both ends of a ring must agree on `initial` (the handshake says it). Only the first `initial` bytes of data need
 * to exist. A consumer may open after its producer wrote (a connector sends before the listener took its segment:
 * transports/shm/control.ts): reading from the start, it meets every resize record in order.
 */
export function ring_start_small(h: usize, initial: u32): i32 {
  const max = load<u32>(h, H_MAX_CAPACITY_OFFSET);
  if (!isPowerOfTwo(initial) || initial < <u32>RING_MIN_CAPACITY || initial > max) return RING_E_HEADER;
  if (load<u64>(h, H_POSITION_OFFSET) != 0 || load<u32>(h, H_CLAIM_OFFSET) != 0) return RING_E_STATE;
  store<u32>(h, initial, H_CAPACITY_OFFSET);
  store<u32>(h, initial, H_POPULATED_OFFSET);
  return RING_OK;
}

/** Producer: data bytes [0, bytes) now exist (after RING_GROW the host populated them). */
export function ring_populated(h: usize, bytes: u32): i32 {
  if (bytes > load<u32>(h, H_MAX_CAPACITY_OFFSET)) return RING_E_STATE;
  if (bytes > load<u32>(h, H_POPULATED_OFFSET)) store<u32>(h, bytes, H_POPULATED_OFFSET);
  return RING_OK;
}

/** Producer: grow no further than `capacity` (never below the current one): an optional growth failed. */
export function ring_grow_limit(h: usize, capacity: u32): void {
  const now = capacityOf(h);
  const max = load<u32>(h, H_MAX_CAPACITY_OFFSET);
  store<u32>(h, capacity < now ? now : capacity > max ? max : capacity, H_GROW_LIMIT_OFFSET);
}

/** Producer: after the host freed the pages past `bytes` (MADV_REMOVE), only data bytes [0, bytes) are known to
 * exist: a later growth populates again. Never below the capacity in effect. */
export function ring_unpopulated(h: usize, bytes: u32): i32 {
  if (bytes < capacityOf(h) || load<u32>(h, H_PENDING_OFFSET) != 0) return RING_E_STATE;
  if (bytes < load<u32>(h, H_POPULATED_OFFSET)) store<u32>(h, bytes, H_POPULATED_OFFSET);
  return RING_OK;
}

/**
 * Producer: announces a smaller ring in band (RECORD_RESIZE, as growth) while the ring is empty and nothing is
 * claimed. RING_RESIZE_SENT (ring the consumer), 0 when not now (not empty, a claim open, a resize outstanding,
 * no room), or a negative code. The pages past the new capacity may be freed once it took effect.
 */
export function ring_shrink(h: usize, capacity: u32): i32 {
  const now = capacityOf(h);
  if (load<u32>(h, H_ROLE_OFFSET) != ROLE_PRODUCER || !isPowerOfTwo(capacity) || capacity < <u32>RING_MIN_CAPACITY || capacity >= now) return RING_E_STATE;
  if (load<u32>(h, H_CLAIM_OFFSET) != 0 || load<u32>(h, H_PENDING_OFFSET) != 0) return 0;
  const position = load<u64>(h, H_POSITION_OFFSET);
  // SYNC: pairs with the atomic store of head in ring_release.
  const head = atomic.load<u64>(ringOf(h), RING_HEAD_OFFSET);
  if (!positionsSane(head, position, now)) return RING_E_POSITIONS;
  store<u64>(h, head, H_CACHED_OFFSET);
  if (head != position) return 0;
  return announceResize(h, now, capacity);
}

/**
 * Producer: commits a RECORD_RESIZE to `capacity` in the geometry in effect (`now`) and marks it pending: the new
 * geometry starts right after the record, once the consumer has passed it. Returns RING_RESIZE_SENT, or what the
 * claim of the record returned (0: no room for it now).
 */
function announceResize(h: usize, now: u32, capacity: u32): i32 {
  const at = claimIn(h, now, RESIZE_PAYLOAD_SIZE, RECORD_RESIZE);
  if (at <= 0) return at;
  store<u32>(<usize>at, capacity, RESIZE_CAPACITY_OFFSET);
  store<u32>(<usize>at, 0, RESIZE_CAPACITY_OFFSET + 4);
  ring_commit(h, RESIZE_PAYLOAD_SIZE);
  store<u32>(h, capacity, H_PENDING_OFFSET);
  store<u64>(h, load<u64>(h, H_POSITION_OFFSET), H_SWITCH_AT_OFFSET);
  return RING_RESIZE_SENT;
}

/** The data capacity in effect now (a growing ring's current geometry). */
export function ring_capacity(h: usize): u32 {
  return capacityOf(h);
}

/**
 * Producer with a RECORD_RESIZE outstanding: once the consumer has released past it (the ring is empty, since
 * nothing was written after it), the new capacity takes effect. 1 switched, 0 not yet, or RING_E_POSITIONS.
 */
function switchIfPassed(h: usize): i32 {
  const switchAt = load<u64>(h, H_SWITCH_AT_OFFSET);
  let head = load<u64>(h, H_CACHED_OFFSET);
  if (head < switchAt) {
    // SYNC: pairs with the atomic store of head in ring_release / ring_resize_done.
    head = atomic.load<u64>(ringOf(h), RING_HEAD_OFFSET);
    if (!positionsSane(head, load<u64>(h, H_POSITION_OFFSET), capacityOf(h))) return RING_E_POSITIONS;
    store<u64>(h, head, H_CACHED_OFFSET);
    if (head < switchAt) return 0;
  }
  store<u32>(h, load<u32>(h, H_PENDING_OFFSET), H_CAPACITY_OFFSET);
  store<u32>(h, 0, H_PENDING_OFFSET);
  return 1;
}

/**
 * A ring that a writer filled grows this many times larger at once (up to its limit): in one A/B on the 2-core VM
 * a flood of 64 B records ran ~1.3x faster in a 4 MiB ring than in a 64 KiB one (fewer parks and wakes per
 * record; compare `node dist/bench/everyday.js --rows bytes64,object` with and without `--query size=64KiB`), and
 * growing costs the writer one wait for the reader to pass the resize record. 64 KiB → 1 MiB → 4 MiB by default.
 */
const FULL_GROWTH_SHIFT = 4;

/**
 * The slow path of a claim on a ring that may grow: a resize outstanding, a record larger than a quarter of
 * the ring, or a ring a claim found full (H_FULL). Returns 1 to claim in the (possibly new) geometry, 0 for no room now (need set), RING_GROW (populate
 * H_TARGET bytes first), RING_RESIZE_SENT (a RECORD_RESIZE was committed), or another negative code.
 */
function growFor(h: usize, length: u32): i32 {
  let capacity = capacityOf(h);
  if (load<u32>(h, H_PENDING_OFFSET) != 0) {
    const switched = switchIfPassed(h);
    if (switched < 0) return switched;
    if (switched == 0) {
      // free() reaches the smaller of both capacities exactly when the consumer has passed the record.
      const pending = load<u32>(h, H_PENDING_OFFSET);
      store<u32>(h, pending < capacity ? pending : capacity, H_NEED_OFFSET);
      return 0;
    }
    capacity = capacityOf(h);
  }
  const limit = load<u32>(h, H_GROW_LIMIT_OFFSET);
  const record = align(<u64>length + RECORD_HEADER_SIZE);
  const full = load<u32>(h, H_FULL_OFFSET) != 0;
  if (capacity >= limit || (!full && record << 2 <= <u64>capacity)) {
    store<u32>(h, 0, H_FULL_OFFSET);
    return 1;
  }
  if (length > maxPayload(limit)) return RING_E_TOO_LARGE;
  // Room for four such records, within the limit (the limit always holds one); a ring found full grows more.
  let target = capacity << 1;
  while (target < limit && <u64>target < record << 2) target <<= 1;
  if (full) {
    const more = capacity << FULL_GROWTH_SHIFT;
    if (more > target) target = more;
  }
  if (target > limit) target = limit;
  if (load<u32>(h, H_POPULATED_OFFSET) < target) {
    store<u32>(h, target, H_TARGET_OFFSET);
    return RING_GROW;
  }
  const rc = announceResize(h, capacity, target);
  if (rc != RING_RESIZE_SENT) return rc;
  store<u32>(h, capacity, H_NEED_OFFSET);
  store<u32>(h, 0, H_FULL_OFFSET);
  return RING_RESIZE_SENT;
}

@inline function positionsSane(head: u64, tail: u64, capacity: u32): bool {
  // Positions only grow from 0 (2^64 bytes never wrap): a head numerically past the tail is impossible.
  return tail >= head && tail - head <= <u64>capacity && ((head | tail) & (RECORD_ALIGNMENT - 1)) == 0;
}

// --- producer --------------------------------------------------------------------------------------------------

/**
 * Claims room for a record of `length` payload bytes and `type`. Returns the payload's address (> 0) for the
 * caller to fill, 0 when the ring has no room now (an expected outcome), or a negative RING_E_* code.
 */
export function ring_claim(h: usize, length: u32, type: u32): i32 {
  if (load<u32>(h, H_CLAIM_OFFSET) != 0 || type == RECORD_PADDING || type == RECORD_RESIZE) return RING_E_STATE;
  let capacity = capacityOf(h);
  // A ring that may grow takes the slow path for a resize in flight, a record of more than a quarter of it, or
  // after a claim found it full.
  if (load<u32>(h, H_PENDING_OFFSET) != 0 || load<u32>(h, H_FULL_OFFSET) != 0
    || ((<u64>length + RECORD_HEADER_SIZE) << 2 > <u64>capacity && capacity < load<u32>(h, H_GROW_LIMIT_OFFSET))) {
    const rc = growFor(h, length);
    if (rc <= 0) return rc;
    capacity = capacityOf(h);
  }
  const at = claimIn(h, capacity, length, type);
  // Full: what is committed must be visible, or the consumer could never free the room.
  if (at == 0) publishPending(h);
  // Full while it could grow: the writer is faster than a ring this small lets the reader keep up with.
  if (at == 0 && capacity < load<u32>(h, H_GROW_LIMIT_OFFSET)) store<u32>(h, 1, H_FULL_OFFSET);
  return at;
}

/** rereadHead's answer for a head no honest consumer could have written. */
const INSANE_HEAD: u64 = u64.MAX_VALUE;

/** The consumer's head read from the shared ring (not the producer's cached copy), then cached; INSANE_HEAD when it
 * is impossible for a producer at `position` (a broken or hostile peer). */
@inline function rereadHead(h: usize, position: u64, capacity: u32): u64 {
  // SYNC: pairs with the atomic store of head in ring_release.
  const head = atomic.load<u64>(ringOf(h), RING_HEAD_OFFSET);
  if (!positionsSane(head, position, capacity)) return INSANE_HEAD;
  store<u64>(h, head, H_CACHED_OFFSET);
  return head;
}

@inline function claimIn(h: usize, capacity: u32, length: u32, type: u32): i32 {
  if (length > maxPayload(capacity)) return RING_E_TOO_LARGE;
  const mask = <u64>capacity - 1;
  const position = load<u64>(h, H_POSITION_OFFSET);
  const index = position & mask;
  const recordSize = align(<u64>length + RECORD_HEADER_SIZE);
  const toEnd = <u64>capacity - index;
  // A record never wraps: if it does not fit before the end, a padding record fills the rest first.
  const padding: u64 = recordSize > toEnd ? toEnd : 0;
  const needed = padding + recordSize;

  let head = load<u64>(h, H_CACHED_OFFSET);
  if (position + needed - head > <u64>capacity) {
    // The cached head says full: reread the real one (the only shared read on this path).
    head = rereadHead(h, position, capacity);
    if (head == INSANE_HEAD) return RING_E_POSITIONS;
    if (position + needed - head > <u64>capacity) {
      // Exactly what free() must reach for this claim to succeed from this position (a writer waits for that,
      // not for the worst case with padding). needed <= capacity: maxPayload leaves room for any padding.
      store<u32>(h, <u32>needed, H_NEED_OFFSET);
      return 0;
    }
  }

  const data = dataOf(h);
  if (padding != 0) {
    store<i32>(data + <usize>index, <i32>(padding - RECORD_HEADER_SIZE), RECORD_LENGTH_OFFSET);
    store<u32>(data + <usize>index, RECORD_PADDING, RECORD_TYPE_OFFSET);
    store<u64>(h, position + padding, H_POSITION_OFFSET);
  }
  const record = data + <usize>((position + padding) & mask);
  store<u32>(h, length, H_CLAIM_MAX_OFFSET);
  store<u32>(h, type, H_CLAIM_TYPE_OFFSET);
  store<u32>(h, <u32>(record + RECORD_HEADER_SIZE), H_CLAIM_OFFSET);
  return <i32>(record + RECORD_HEADER_SIZE);
}

/** Commits the open claim with `length` payload bytes (at most what was claimed) and publishes it, with any
 * records committed quietly before it. */
export function ring_commit(h: usize, length: u32): i32 {
  const rc = writeCommit(h, length);
  if (rc == RING_OK) publishTail(h);
  return rc;
}

/**
 * A burst of quiet commits publishes the tail once per this many bytes of records: 64-byte records then move the
 * line the consumer polls once per 15 (each move costs both cores a cache-line transfer), while a record of this
 * size or more is published as it is committed. claimAt64 row of bench/everyday.ts (64 B records committed one by
 * one): 12.2–13.0M → 17.4–17.9M msg/s in three pairs of alternated builds.
 */
const PUBLISH_BYTES: u32 = 1024;

/**
 * Commits the open claim as ring_commit does, but publishes the tail only once PUBLISH_BYTES of records wait for
 * it; until then they reach the consumer with the next publication (a commit that publishes, a claim that finds
 * the ring full, a park, a wake check or the close). For a writer that runs a wake check soon after (the
 * channel's afterCommit microtask). Returns RING_OK, or RING_E_STATE without a claim.
 */
export function ring_commit_quiet(h: usize, length: u32): i32 {
  const rc = writeCommit(h, length);
  if (rc == RING_OK && load<u32>(h, H_UNPUBLISHED_BYTES_OFFSET) >= PUBLISH_BYTES) publishTail(h);
  return rc;
}

/** What every commit does before the tail is published: the record's header, this end's position, the counts. */
@inline function writeCommit(h: usize, length: u32): i32 {
  const payload = <usize>load<u32>(h, H_CLAIM_OFFSET);
  if (payload == 0 || length > load<u32>(h, H_CLAIM_MAX_OFFSET)) return RING_E_STATE;
  const record = payload - RECORD_HEADER_SIZE;
  store<i32>(record, <i32>length, RECORD_LENGTH_OFFSET);
  store<u32>(record, load<u32>(h, H_CLAIM_TYPE_OFFSET), RECORD_TYPE_OFFSET);
  store<u32>(h, 0, H_CLAIM_OFFSET);
  store<u32>(h, 0, H_CLAIM_COUNT_OFFSET);
  const size = <u32>align(<u64>length + RECORD_HEADER_SIZE);
  store<u64>(h, load<u64>(h, H_POSITION_OFFSET) + size, H_POSITION_OFFSET);
  store<u32>(h, load<u32>(h, H_UNPUBLISHED_OFFSET) + 1, H_UNPUBLISHED_OFFSET);
  store<u32>(h, load<u32>(h, H_UNPUBLISHED_BYTES_OFFSET) + size, H_UNPUBLISHED_BYTES_OFFSET);
  return RING_OK;
}

/** Publishes what ring_commit_quiet committed (nothing when everything is out). */
@inline function publishPending(h: usize): void {
  if (load<u32>(h, H_UNPUBLISHED_OFFSET) != 0) publishTail(h);
}

/** Makes every record committed so far visible: the tail becomes this end's position. */
@inline function publishTail(h: usize): void {
  const ring = ringOf(h);
  // A counter for tools only, published with the tail below (nobody acts on it).
  store<u64>(ring, load<u64>(ring, RING_COMMITTED_RECORDS_OFFSET) + load<u32>(h, H_UNPUBLISHED_OFFSET), RING_COMMITTED_RECORDS_OFFSET);
  store<u32>(h, 0, H_UNPUBLISHED_OFFSET);
  store<u32>(h, 0, H_UNPUBLISHED_BYTES_OFFSET);
  // SYNC: pairs with the atomic load of tail in ring_read / ring_park; publishes the records written before it.
  // Sequentially consistent, so the consumer-park check in ring_needs_wake cannot be reordered before it.
  atomic.store<u64>(ring, load<u64>(h, H_POSITION_OFFSET), RING_TAIL_OFFSET);
}

/**
 * Claims up to `max` records of `length` payload bytes and `type` at once, laid out back to back: payload i is at
 * the returned address + i × align(length + RECORD_HEADER_SIZE). Returns what ring_claim returns (the first
 * payload's address, 0 for no room, a negative code); how many records were claimed (at least 1) is left in the
 * handle at H_CLAIM_COUNT_OFFSET. The records stop before the end of the data (no record wraps) and within the
 * free room. ring_commit_many publishes some of them with one store of the tail.
 */
export function ring_claim_many(h: usize, length: u32, type: u32, max: u32): i32 {
  const at = ring_claim(h, length, type);
  if (at <= 0) return at;
  const capacity = capacityOf(h);
  const stride = align(<u64>length + RECORD_HEADER_SIZE);
  const position = load<u64>(h, H_POSITION_OFFSET);
  // Records that fit before the end of the data (the first one does: claimIn put padding before it otherwise).
  let n = (<u64>capacity - (position & (<u64>capacity - 1))) / stride;
  let head = load<u64>(h, H_CACHED_OFFSET);
  if ((head + <u64>capacity - position) / stride < n) {
    head = rereadHead(h, position, capacity);
    if (head == INSANE_HEAD) return RING_E_POSITIONS;
  }
  const room = (head + <u64>capacity - position) / stride;
  if (room < n) n = room;
  if (<u64>max < n) n = <u64>max;
  if (n == 0) n = 1;
  store<u32>(h, <u32>n, H_CLAIM_COUNT_OFFSET);
  return at;
}

/** Commits the first `n` records of an open ring_claim_many claim (each of the claimed length) and publishes them. */
export function ring_commit_many(h: usize, n: u32): i32 {
  const payload = <usize>load<u32>(h, H_CLAIM_OFFSET);
  if (payload == 0 || n == 0 || n > load<u32>(h, H_CLAIM_COUNT_OFFSET)) return RING_E_STATE;
  const length = load<u32>(h, H_CLAIM_MAX_OFFSET);
  const type = load<u32>(h, H_CLAIM_TYPE_OFFSET);
  const stride = <usize>align(<u64>length + RECORD_HEADER_SIZE);
  let record = payload - RECORD_HEADER_SIZE;
  for (let i: u32 = 0; i < n; i++) {
    store<i32>(record, <i32>length, RECORD_LENGTH_OFFSET);
    store<u32>(record, type, RECORD_TYPE_OFFSET);
    record += stride;
  }
  store<u32>(h, 0, H_CLAIM_OFFSET);
  store<u32>(h, 0, H_CLAIM_COUNT_OFFSET);
  store<u64>(h, load<u64>(h, H_POSITION_OFFSET) + <u64>stride * n, H_POSITION_OFFSET);
  store<u32>(h, load<u32>(h, H_UNPUBLISHED_OFFSET) + n, H_UNPUBLISHED_OFFSET);
  publishTail(h);
  return RING_OK;
}

/**
 * Abandons the open claim: nothing is published. A padding record written by the claim stays, unpublished
 * until the next commit publishes it together with the next record (the consumer skips it).
 */
export function ring_abort(h: usize): i32 {
  if (load<u32>(h, H_CLAIM_OFFSET) == 0) return RING_E_STATE;
  store<u32>(h, 0, H_CLAIM_OFFSET);
  store<u32>(h, 0, H_CLAIM_COUNT_OFFSET);
  return RING_OK;
}

/**
 * Bytes the producer could still claim in one record (including a possible padding), rereading the head, or
 * RING_E_POSITIONS when the consumer's head is impossible (past our tail, more than capacity behind it, or
 * misaligned): a writer must fail then, not wait for room that a scribbled head will never free.
 */
export function ring_free(h: usize): i32 {
  let room = capacityOf(h);
  const pending = load<u32>(h, H_PENDING_OFFSET);
  if (pending != 0) {
    // A resize the consumer has passed takes effect here too, so a writer waiting for room sees the new ring.
    // Until then the free bytes count against the smaller of both capacities: the record itself is unreleased,
    // so they stay below the need growFor set, and reach it once the new capacity is in effect.
    const switched = switchIfPassed(h);
    if (switched < 0) return switched;
    if (switched == 0 && pending < room) room = pending;
  }
  const capacity = capacityOf(h);
  // SYNC: pairs with the atomic store of head in ring_release.
  const head = atomic.load<u64>(ringOf(h), RING_HEAD_OFFSET);
  const position = load<u64>(h, H_POSITION_OFFSET);
  if (!positionsSane(head, position, capacity)) return RING_E_POSITIONS;
  store<u64>(h, head, H_CACHED_OFFSET);
  const used = position - head;
  // capacity <= RING_MAX_CAPACITY (2^28): the count fits an i32.
  return used >= <u64>room ? 0 : <i32>(<u64>room - used);
}

// --- consumer --------------------------------------------------------------------------------------------------

/**
 * Reads up to `max` committed records after the previous batch and writes one (payload address, length, type)
 * triple per record at `out`. Padding is skipped. Returns the number of records (0 when none are committed) or
 * a negative RING_E_* code when the ring is corrupt. The payloads stay valid until ring_release.
 */
export function ring_read(h: usize, out: usize, max: u32): i32 {
  // A RECORD_RESIZE seen: nothing more until the host has populated the new area (ring_resize_done).
  if (load<u32>(h, H_PENDING_OFFSET) != 0) return RING_RESIZE_SEEN;
  const capacity = capacityOf(h);
  const mask = <u64>capacity - 1;
  const limit = <u64>maxPayload(capacity);
  const data = dataOf(h);
  let position = load<u64>(h, H_POSITION_OFFSET);
  let tail = load<u64>(h, H_CACHED_OFFSET);
  if (position == tail) {
    // SYNC: pairs with the atomic store of tail in ring_commit; the records below it are visible after this.
    tail = atomic.load<u64>(ringOf(h), RING_TAIL_OFFSET);
    // The head we own is at or before `position`; the tail must be within capacity of the released head.
    const head = atomic.load<u64>(ringOf(h), RING_HEAD_OFFSET);
    if (!positionsSane(head, tail, capacity) || tail - position > <u64>capacity) return RING_E_POSITIONS;
    store<u64>(h, tail, H_CACHED_OFFSET);
  }
  let count: u32 = 0;
  while (position != tail && count < max) {
    const index = position & mask;
    const record = data + <usize>index;
    const length = load<i32>(record, RECORD_LENGTH_OFFSET);
    const type = load<u32>(record, RECORD_TYPE_OFFSET);
    const toEnd = <u64>capacity - index;
    const available = tail - position;
    if (type == RECORD_PADDING) {
      // Padding must fill exactly to the end of the data, and the tail must lie past it.
      if (<u64>length + RECORD_HEADER_SIZE != toEnd || toEnd > available) return RING_E_RECORD;
      position += toEnd;
      continue;
    }
    if (type == RECORD_RESIZE) {
      const size = align(<u64>RESIZE_PAYLOAD_SIZE + RECORD_HEADER_SIZE);
      // The records before it go out first, whatever it is; the next read reports it.
      if (count != 0) break;
      if (length != RESIZE_PAYLOAD_SIZE || size > toEnd || size > available) return RING_E_RECORD;
      const payload = record + RECORD_HEADER_SIZE;
      const next = load<u32>(payload, RESIZE_CAPACITY_OFFSET);
      // Another power of two the mapped window backs (at most the capacity of the header this end opened).
      if (!isPowerOfTwo(next) || next == capacity || next < <u32>RING_MIN_CAPACITY || next > load<u32>(h, H_MAX_CAPACITY_OFFSET)
        || load<u32>(payload, RESIZE_CAPACITY_OFFSET + 4) != 0) return RING_E_RECORD;
      store<u32>(h, next, H_PENDING_OFFSET);
      break;
    }
    // The unsigned cast rejects negative lengths (claimed, never committed) with the same comparison.
    if (<u64><u32>length > limit) return RING_E_RECORD;
    const size = align(<u64>length + RECORD_HEADER_SIZE);
    if (size > toEnd || size > available) return RING_E_RECORD;
    const entry = out + <usize>count * BATCH_ENTRY_SIZE;
    store<u32>(entry, <u32>(record + RECORD_HEADER_SIZE), 0);
    store<u32>(entry, <u32>length, 4);
    store<u32>(entry, type, 8);
    position += size;
    count++;
  }
  store<u64>(h, position, H_POSITION_OFFSET);
  // A counter for tools only (nobody acts on it).
  if (count != 0) store<u64>(ringOf(h), load<u64>(ringOf(h), RING_READ_RECORDS_OFFSET) + count, RING_READ_RECORDS_OFFSET);
  else if (load<u32>(h, H_PENDING_OFFSET) != 0) return RING_RESIZE_SEEN;
  return <i32>count;
}

/**
 * Consumer, after RING_RESIZE_SEEN and after the host made the new data area's pages exist in its mapping: passes
 * the RECORD_RESIZE, switches to the new capacity and releases (the producer waits for that to write on).
 */
export function ring_resize_done(h: usize): i32 {
  const next = load<u32>(h, H_PENDING_OFFSET);
  if (next == 0 || load<u32>(h, H_ROLE_OFFSET) != ROLE_CONSUMER) return RING_E_STATE;
  const position = load<u64>(h, H_POSITION_OFFSET) + align(<u64>RESIZE_PAYLOAD_SIZE + RECORD_HEADER_SIZE);
  store<u64>(h, position, H_POSITION_OFFSET);
  store<u32>(h, next, H_CAPACITY_OFFSET);
  store<u32>(h, 0, H_PENDING_OFFSET);
  // SYNC: pairs with the atomic load of head in the producer's switchIfPassed / ring_free.
  atomic.store<u64>(ringOf(h), position, RING_HEAD_OFFSET);
  return RING_OK;
}

/** Releases every record read so far: the producer may overwrite them. */
export function ring_release(h: usize): void {
  // SYNC: pairs with the atomic load of head in ring_claim / ring_free. Sequentially consistent, so the
  // producer-park check in ring_needs_wake cannot be reordered before it.
  atomic.store<u64>(ringOf(h), load<u64>(h, H_POSITION_OFFSET), RING_HEAD_OFFSET);
}

/** Committed bytes not yet read by this consumer (rereads the tail). Negative when the positions are corrupt. */
export function ring_pending(h: usize): i32 {
  // SYNC: pairs with the atomic store of tail in ring_commit.
  const tail = atomic.load<u64>(ringOf(h), RING_TAIL_OFFSET);
  const position = load<u64>(h, H_POSITION_OFFSET);
  if (tail - position > <u64>capacityOf(h) || ((tail & (RECORD_ALIGNMENT - 1)) != 0)) return RING_E_POSITIONS;
  return <i32>(tail - position);
}

// --- parking, waking, closing (both roles) ---------------------------------------------------------------------

@inline function isProducer(h: usize): bool {
  return load<u32>(h, H_ROLE_OFFSET) == ROLE_PRODUCER;
}

@inline function ownParkOffset(h: usize): usize {
  return isProducer(h) ? RING_PRODUCER_PARK_OFFSET : RING_CONSUMER_PARK_OFFSET;
}

/** The word the peer bumps when it rings us: a parked end sleeps on it (futex) with the value seen at park. */
@inline function peerWakeOffset(h: usize): usize {
  return isProducer(h) ? RING_CONSUMER_WAKE_OFFSET : RING_PRODUCER_WAKE_OFFSET;
}

/**
 * Announces that this end is about to sleep (odd park sequence), then checks once more for progress by the
 * peer. Returns 1 if the caller should sleep until the doorbell rings, 0 if progress arrived (then it is not
 * parked). A consumer waits for data; a producer waits for `need` free bytes.
 */
export function ring_park(h: usize, need: u32): i32 {
  if (isProducer(h)) publishPending(h);
  const ring = ringOf(h);
  const offset = ownParkOffset(h);
  // Read before announcing the park: a ring that happens after this read changes the word, so a futex wait
  // with this value returns at once instead of sleeping through it.
  // SYNC: pairs with the atomic.add in ring_needs_wake.
  store<u32>(h, atomic.load<u32>(ring + peerWakeOffset(h)), H_WAIT_VALUE_OFFSET);
  const seq = atomic.load<u32>(ring + offset);
  // SYNC: pairs with the atomic load of this word in ring_needs_wake. Sequentially consistent, with the peer's
  // sequentially consistent position store: either the peer sees us parked or we see its progress below.
  atomic.store<u32>(ring + offset, (seq | 1) == seq ? seq : seq + 1);
  let progressed: bool;
  if (load<u32>(h, H_ROLE_OFFSET) == ROLE_CONSUMER) {
    progressed = ring_pending(h) != 0;
  } else {
    // A corrupt head counts as progress: the caller rereads free() and fails with the error instead of sleeping.
    const free = ring_free(h);
    progressed = free < 0 || <u32>free >= need;
  }
  if (progressed) ring_unpark(h);
  return progressed ? 0 : 1;
}

/** Leaves the parked state (even park sequence). */
export function ring_unpark(h: usize): void {
  const ring = ringOf(h);
  const offset = ownParkOffset(h);
  const seq = atomic.load<u32>(ring + offset);
  // SYNC: pairs with the atomic load of this word in ring_needs_wake.
  if (seq & 1) atomic.store<u32>(ring + offset, seq + 1);
}

/**
 * After making progress (commit or release), asks whether the peer is parked and has not been rung for this
 * park yet. Returns 1 exactly once per peer park: the caller then rings the doorbell.
 */
export function ring_needs_wake(h: usize): i32 {
  // A consumer parks after reading the tail: publish first, so that either it sees our records or we see it parked.
  if (isProducer(h)) publishPending(h);
  const peerOffset: usize = load<u32>(h, H_ROLE_OFFSET) == ROLE_PRODUCER ? RING_CONSUMER_PARK_OFFSET : RING_PRODUCER_PARK_OFFSET;
  // SYNC: pairs with the atomic store in the peer's ring_park.
  const seq = atomic.load<u32>(ringOf(h) + peerOffset);
  if ((seq & 1) == 0 || seq == load<u32>(h, H_RUNG_OFFSET)) return 0;
  store<u32>(h, seq, H_RUNG_OFFSET);
  // SYNC: pairs with the load in the peer's ring_park (and its futex wait on this word).
  atomic.add<u32>(ringOf(h) + (isProducer(h) ? RING_PRODUCER_WAKE_OFFSET : RING_CONSUMER_WAKE_OFFSET), 1);
  return 1;
}

/** Address of the word this end sleeps on when parked (the peer bumps it when ringing). */
export function ring_wait_address(h: usize): usize {
  return ringOf(h) + peerWakeOffset(h);
}

/** The value of that word when this end last parked: a futex wait with it cannot miss a ring. */
export function ring_wait_value(h: usize): u32 {
  return load<u32>(h, H_WAIT_VALUE_OFFSET);
}

/** Address of the word the peer sleeps on when parked (we bump it in ring_needs_wake): the futex to wake. */
export function ring_wake_address(h: usize): usize {
  return ringOf(h) + (isProducer(h) ? RING_PRODUCER_WAKE_OFFSET : RING_CONSUMER_WAKE_OFFSET);
}

/** Marks this end closed: a producer commits nothing more; a consumer reads nothing more. */
export function ring_close(h: usize): void {
  if (isProducer(h)) publishPending(h);
  const offset: usize = load<u32>(h, H_ROLE_OFFSET) == ROLE_PRODUCER ? RING_PRODUCER_CLOSED_OFFSET : RING_CONSUMER_CLOSED_OFFSET;
  // SYNC: pairs with the atomic load in the peer's ring_peer_closed; ordered after every commit before it.
  atomic.store<u32>(ringOf(h) + offset, 1);
}

/** 1 when the other end has closed. A consumer should drain what is committed before acting on it. */
export function ring_peer_closed(h: usize): i32 {
  const offset: usize = load<u32>(h, H_ROLE_OFFSET) == ROLE_PRODUCER ? RING_CONSUMER_CLOSED_OFFSET : RING_PRODUCER_CLOSED_OFFSET;
  // SYNC: pairs with the atomic store in the peer's ring_close.
  return atomic.load<u32>(ringOf(h) + offset) != 0 ? 1 : 0;
}
