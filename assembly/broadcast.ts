// The broadcast ring: one publisher, many subscribers, each with its own cursor in the segment (layout.ts,
// "Topic segment"). Publishing touches only the publisher's words, so it costs the same whatever the number of
// subscribers; the subscriber table is scanned only when the ring looks full (once per lap at most).
//
// Policies:
//   lossless  the publisher never passes the slowest active subscriber's cursor (it waits; the host evicts a
//             subscriber whose process is dead);
//   lossy     the publisher never waits: it reclaims the oldest records, and a lapped subscriber skips to the
//             oldest one still there, counting exactly what it lost (records carry sequence numbers).
// Either way the newest `history` records are never reclaimed, so a late joiner can replay them.
//
// Moving `head` is a seqlock (reclaimGen odd while it moves): a reader takes (head, headSeq) only between two even,
// equal generations, so the pair is consistent. A lossless joiner publishes its cursor at that head inside the
// same window, so either the publisher's next scan sees the joiner or the joiner sees the new head.
//
// (tail, tailSeq) are two stores, so a reader can never take them as a pair: a reader that needs the sequence
// number at some position walks whole records from a consistent (head, headSeq) and counts them.
//
// Lossy reading. The publisher stores a new head before it overwrites anything below it (sequentially
// consistent stores; x86 does not reorder the reader's plain loads after its later atomic load of head). So a
// record header read at `position` is intact if head <= position when loaded right after reading it; otherwise
// the reader was lapped. A lapped reader does not restart at head (the very record the publisher reclaims next)
// but walks from a consistent head to the first record in the newer half of the ring, checking each header the
// same way, and counts every record it skipped as dropped. Payloads are checked after copying: the host compares
// the record's sequence number with the oldest one still there (topic_oldest_seq).
//
// Handles are private blocks of HANDLE_SIZE bytes in this process's memory (fields TH_*_OFFSET in layout.ts); geometry is
// copied there once and never reread from the shared header.

import {
  TOPIC_CAPACITY_OFFSET, TOPIC_MAX_SUBSCRIBERS_OFFSET, TOPIC_POLICY_OFFSET, TOPIC_HISTORY_OFFSET, TOPIC_TAIL_OFFSET,
  TOPIC_TAIL_SEQ_OFFSET, TOPIC_HEAD_OFFSET, TOPIC_HEAD_SEQ_OFFSET, TOPIC_WAKE_OFFSET, TOPIC_RECLAIM_GEN_OFFSET,
  TOPIC_PUBLISHER_PARK_OFFSET, TOPIC_SLEEPERS_OFFSET, TOPIC_SPACE_WAKE_OFFSET, TOPIC_HEADER_SIZE, TOPIC_SLOT_SIZE,
  TOPIC_MAX_SUBSCRIBERS, TOPIC_PUBLISHER_CLOSED_OFFSET,
  SLOT_CLAIM_OFFSET, SLOT_START_OFFSET, SLOT_CURSOR_OFFSET, SLOT_CURSOR_SEQ_OFFSET, SLOT_DROPPED_OFFSET,
  SLOT_PARKED_OFFSET, CLAIM_FREE, POLICY_LOSSLESS, POLICY_LOSSY, BC_RECORD_HEADER_SIZE,
  BC_RECORD_SEQ_OFFSET, BC_BATCH_ENTRY_SIZE, BC_RECORD_ALIGNMENT, RECORD_PADDING, RING_MIN_CAPACITY, RING_MAX_CAPACITY,
  RING_OK, RING_E_POSITIONS, RING_E_RECORD, RING_E_TOO_LARGE, RING_E_STATE, RING_E_HEADER, RING_E_AGAIN, HANDLE_SIZE,
  topicMaxPayload, BC_BATCH_LENGTH_OFFSET, BC_BATCH_TYPE_OFFSET, BC_BATCH_SEQ_OFFSET, BC_RECORD_TYPE_OFFSET,
  BC_BATCH_ADDRESS_OFFSET, BC_RECORD_LENGTH_OFFSET,
  TH_TOPIC_OFFSET, TH_CAPACITY_OFFSET, TH_MAX_SUBS_OFFSET, TH_POLICY_OFFSET, TH_HISTORY_OFFSET, TH_SLOT_OFFSET, TH_CLAIM_OFFSET, TH_CLAIM_MAX_OFFSET, TH_CLAIM_TYPE_OFFSET, TH_WAIT_VALUE_OFFSET, TH_POSITION_OFFSET, TH_SEQ_OFFSET, TH_HEAD_OFFSET, TH_HEAD_SEQ_OFFSET, TH_MIN_OFFSET, TH_DROPPED_OFFSET, TH_SLOT_INDEX_OFFSET, TH_CLAIM_WORD_OFFSET, TH_SCRATCH_POS_OFFSET, TH_SCRATCH_SEQ_OFFSET, TH_SCRATCH_GEN_OFFSET, TH_SCRATCH_TAIL_OFFSET, TH_SCRATCH_TAIL_SEQ_OFFSET,
} from './layout';

/** Bounded retries while a (possibly dead) publisher holds the reclaim seqlock, or a fast one laps a joiner. */
const JOIN_ATTEMPTS = 1 << 16;
/** Seqlock reads per snapshot before giving up on this attempt. */
const SNAPSHOT_SPINS = 1 << 6;
/** Relocations a lapped lossy reader tries per topic_read call; then it returns what it has and retries next call. */
const LAP_ATTEMPTS = 16;
const WALK_OK = 0;
/** A header read on the way was passed by head (lossy): walk again from a newer head. */
const WALK_LAPPED = 1;
/** A header that cannot be right although head had not reached it. */
const WALK_CORRUPT = 2;

// Topic records align to their 16-byte header, so the gap left at the end of the data is never smaller than a
// header: a padding record always fits (with 8-byte alignment an 8-byte gap could not hold one).
@inline function align(n: u64): u64 {
  return (n + (BC_RECORD_ALIGNMENT - 1)) & ~(<u64>BC_RECORD_ALIGNMENT - 1);
}
@inline function topicOf(h: usize): usize { return <usize>load<u32>(h, TH_TOPIC_OFFSET); }
@inline function capOf(h: usize): u32 { return load<u32>(h, TH_CAPACITY_OFFSET); }
@inline function dataOf(h: usize): usize {
  return topicOf(h) + TOPIC_HEADER_SIZE + <usize>load<u32>(h, TH_MAX_SUBS_OFFSET) * TOPIC_SLOT_SIZE;
}
@inline function slotAt(topic: usize, index: u32): usize {
  return topic + TOPIC_HEADER_SIZE + <usize>index * TOPIC_SLOT_SIZE;
}

function geometryOk(capacity: u32, maxSubs: u32, policy: u32): bool {
  return capacity != 0 && (capacity & (capacity - 1)) == 0 && capacity >= <u32>RING_MIN_CAPACITY
    && capacity <= <u32>RING_MAX_CAPACITY && maxSubs >= 1 && maxSubs <= <u32>TOPIC_MAX_SUBSCRIBERS
    && (policy == <u32>POLICY_LOSSLESS || policy == <u32>POLICY_LOSSY);
}

/** Formats the topic header and slot table at `topic` (the creator, before publishing the segment version). */
export function topic_format(topic: usize, capacity: u32, maxSubs: u32, policy: u32, history: u32): i32 {
  if (!geometryOk(capacity, maxSubs, policy)) return RING_E_HEADER;
  // Every retained record takes at least a header: a history that cannot fit in half the ring is refused.
  if (<u64>history * BC_RECORD_HEADER_SIZE > <u64>(capacity >>> 1)) return RING_E_TOO_LARGE;
  memory.fill(topic, 0, <usize>TOPIC_HEADER_SIZE + <usize>maxSubs * <usize>TOPIC_SLOT_SIZE);
  store<u32>(topic, capacity, TOPIC_CAPACITY_OFFSET);
  store<u32>(topic, maxSubs, TOPIC_MAX_SUBSCRIBERS_OFFSET);
  store<u32>(topic, policy, TOPIC_POLICY_OFFSET);
  store<u32>(topic, history, TOPIC_HISTORY_OFFSET);
  return RING_OK;
}

/** Copies and checks the topic geometry into the handle. */
function openCommon(h: usize, topic: usize, capacity: u32, maxSubs: u32): i32 {
  memory.fill(h, 0, HANDLE_SIZE);
  const policy = load<u32>(topic, TOPIC_POLICY_OFFSET);
  if (!geometryOk(capacity, maxSubs, policy)) return RING_E_HEADER;
  if (load<u32>(topic, TOPIC_CAPACITY_OFFSET) != capacity || load<u32>(topic, TOPIC_MAX_SUBSCRIBERS_OFFSET) != maxSubs) return RING_E_HEADER;
  const history = load<u32>(topic, TOPIC_HISTORY_OFFSET);
  if (<u64>history * BC_RECORD_HEADER_SIZE > <u64>(capacity >>> 1)) return RING_E_HEADER;
  store<u32>(h, <u32>topic, TH_TOPIC_OFFSET);
  store<u32>(h, capacity, TH_CAPACITY_OFFSET);
  store<u32>(h, maxSubs, TH_MAX_SUBS_OFFSET);
  store<u32>(h, policy, TH_POLICY_OFFSET);
  store<u32>(h, history, TH_HISTORY_OFFSET);
  return RING_OK;
}

@inline function sane(head: u64, tail: u64, headSeq: u64, tailSeq: u64, capacity: u32): bool {
  // Positions only grow from 0: a head numerically past the tail is impossible (not a wrap).
  return tail >= head && tailSeq >= headSeq && tail - head <= <u64>capacity && ((head | tail) & (BC_RECORD_ALIGNMENT - 1)) == 0
    && tailSeq - headSeq <= <u64>(capacity / BC_RECORD_HEADER_SIZE);
}

// --- publisher -------------------------------------------------------------------------------------------------

/** Opens the publishing end. A new publisher continues where a previous one stopped (file-backed history). */
export function topic_open_publisher(h: usize, topic: usize, capacity: u32, maxSubs: u32): i32 {
  const rc = openCommon(h, topic, capacity, maxSubs);
  if (rc != RING_OK) return rc;
  // SYNC: pairs with the atomic stores of a previous publisher (topic_commit / reclaim).
  const tail = atomic.load<u64>(topic, TOPIC_TAIL_OFFSET);
  const tailSeq = atomic.load<u64>(topic, TOPIC_TAIL_SEQ_OFFSET);
  const head = atomic.load<u64>(topic, TOPIC_HEAD_OFFSET);
  const headSeq = atomic.load<u64>(topic, TOPIC_HEAD_SEQ_OFFSET);
  if (!sane(head, tail, headSeq, tailSeq, capacity)) return RING_E_POSITIONS;
  // A publisher that died holding the seqlock left it odd; make it even again.
  const gen = atomic.load<u32>(topic, TOPIC_RECLAIM_GEN_OFFSET);
  if (gen & 1) atomic.store<u32>(topic, gen + 1, TOPIC_RECLAIM_GEN_OFFSET);
  // A new publisher reopens a closed topic (its subscribers had ended; new ones may join).
  // SYNC: pairs with the load in topic_publisher_closed.
  atomic.store<u32>(topic, 0, TOPIC_PUBLISHER_CLOSED_OFFSET);
  store<u64>(h, tail, TH_POSITION_OFFSET);
  store<u64>(h, tailSeq, TH_SEQ_OFFSET);
  store<u64>(h, head, TH_HEAD_OFFSET);
  store<u64>(h, headSeq, TH_HEAD_SEQ_OFFSET);
  store<u64>(h, head, TH_MIN_OFFSET);
  return RING_OK;
}

/**
 * Scans the active subscribers for the smallest cursor (lossless). Returns u64.MAX_VALUE when nobody reads, or
 * when every cursor is implausible (a corrupt slot cannot stall the publisher: it is ignored).
 */
function minCursor(h: usize): u64 {
  const topic = topicOf(h);
  const maxSubs = load<u32>(h, TH_MAX_SUBS_OFFSET);
  const head = load<u64>(h, TH_HEAD_OFFSET);
  const tail = load<u64>(h, TH_POSITION_OFFSET);
  let min = u64.MAX_VALUE;
  for (let i: u32 = 0; i < maxSubs; i++) {
    const slot = slotAt(topic, i);
    // SYNC: pairs with the compare-and-swap in topic_join / topic_leave / topic_evict.
    if (atomic.load<u64>(slot, SLOT_CLAIM_OFFSET) == <u64>CLAIM_FREE) continue;
    // SYNC: pairs with the atomic store of the cursor in topic_release.
    const cursor = atomic.load<u64>(slot, SLOT_CURSOR_OFFSET);
    // A cursor behind head (a joiner racing a reclaim) still holds the data: clamp rather than ignore it.
    if (cursor > tail) continue;
    const c = cursor < head ? head : cursor;
    if (c < min) min = c;
  }
  return min;
}

/** A reclaim frees up to capacity >> RECLAIM_AHEAD_SHIFT bytes more than its claim needs (see reclaim). */
const RECLAIM_AHEAD_SHIFT: u32 = 4;

/**
 * Moves head forward (reclaiming the oldest records) until `needed` bytes fit after the tail, within the rules:
 * never a record among the newest `history`, and (lossless) never past the slowest cursor. Returns whether the
 * room is there now.
 */
function reclaim(h: usize, needed: u64): i32 {
  const topic = topicOf(h);
  const capacity = capOf(h);
  const mask = <u64>capacity - 1;
  const data = dataOf(h);
  const tail = load<u64>(h, TH_POSITION_OFFSET);
  const tailSeq = load<u64>(h, TH_SEQ_OFFSET);
  const history = <u64>load<u32>(h, TH_HISTORY_OFFSET);
  const lossless = load<u32>(h, TH_POLICY_OFFSET) == POLICY_LOSSLESS;
  let head = load<u64>(h, TH_HEAD_OFFSET);
  let headSeq = load<u64>(h, TH_HEAD_SEQ_OFFSET);

  const gen = atomic.load<u32>(topic, TOPIC_RECLAIM_GEN_OFFSET);
  // SYNC: seqlock write side; pairs with the generation loads in topic_join. Sequentially consistent, so the
  // slot scan below cannot move before it.
  atomic.store<u32>(topic, gen + 1, TOPIC_RECLAIM_GEN_OFFSET);
  const limit = lossless ? minCursor(h) : u64.MAX_VALUE;
  if (lossless) store<u64>(h, limit, TH_MIN_OFFSET);
  let steps: u32 = 0;
  let heldByHistory = false;
  // Reclaim RECLAIM_AHEAD more than asked for where the rules allow: the next claims then fit without a reclaim
  // of their own (each scans every subscriber's cursor and stores the head under the seqlock: a full topic paid it
  // on every publish, ~0.4 µs a 64-byte message with subscriber processes reading).
  const ahead = <u64>capacity >> RECLAIM_AHEAD_SHIFT;
  const want = needed + ahead > <u64>capacity ? needed : needed + ahead;
  while (tail + want - head > <u64>capacity && head < tail && steps++ < capacity) {
    const index = head & mask;
    const record = data + <usize>index;
    const type = load<u32>(record, BC_RECORD_TYPE_OFFSET);
    const length = load<i32>(record, BC_RECORD_LENGTH_OFFSET);
    const toEnd = <u64>capacity - index;
    let size: u64;
    if (type == RECORD_PADDING) {
      size = toEnd;
    } else {
      if (headSeq + history >= tailSeq && history != 0) { heldByHistory = true; break; } // one of the newest `history`
      if (<u64><u32>length > <u64>topicMaxPayload(capacity)) { steps = 0xffffffff; break; }
      size = align(<u64>length + BC_RECORD_HEADER_SIZE);
      if (size > toEnd) { steps = 0xffffffff; break; }
    }
    if (lossless && head + size > limit) break; // the slowest subscriber has not read it yet
    head += size;
    if (type != RECORD_PADDING) headSeq++;
  }
  store<u64>(h, head, TH_HEAD_OFFSET);
  store<u64>(h, headSeq, TH_HEAD_SEQ_OFFSET);
  // SYNC: pairs with the loads of head in topic_read (lossy lapping) and topic_join. Sequentially consistent
  // stores: the records below head are overwritten only after these are visible.
  atomic.store<u64>(topic, headSeq, TOPIC_HEAD_SEQ_OFFSET);
  atomic.store<u64>(topic, head, TOPIC_HEAD_OFFSET);
  atomic.store<u32>(topic, gen + 2, TOPIC_RECLAIM_GEN_OFFSET);
  // The publisher's own records can only be corrupted by someone else writing the segment.
  if (steps == 0xffffffff) return RING_E_RECORD;
  if (tail + needed - head <= <u64>capacity) return 1;
  // Only the retained history is in the way: no subscriber will ever free it, so waiting would be forever.
  return heldByHistory ? RING_E_TOO_LARGE : 0;
}

/**
 * Claims room for a record. Returns the payload address, 0 when a lossless topic must wait for its slowest
 * subscriber (or the newest `history` records fill the ring), or a negative RING_E_* code.
 */
export function topic_claim(h: usize, length: u32, type: u32): i32 {
  if (load<u32>(h, TH_CLAIM_OFFSET) != 0 || type == RECORD_PADDING) return RING_E_STATE;
  const capacity = capOf(h);
  if (length > topicMaxPayload(capacity)) return RING_E_TOO_LARGE;
  const mask = <u64>capacity - 1;
  const tail = load<u64>(h, TH_POSITION_OFFSET);
  const index = tail & mask;
  const size = align(<u64>length + BC_RECORD_HEADER_SIZE);
  const toEnd = <u64>capacity - index;
  const padding: u64 = size > toEnd ? toEnd : 0;
  const needed = padding + size;
  if (tail + needed - load<u64>(h, TH_HEAD_OFFSET) > <u64>capacity) {
    const rc = reclaim(h, needed);
    if (rc <= 0) return rc;
  }
  const data = dataOf(h);
  let position = tail;
  if (padding != 0) {
    store<i32>(data + <usize>index, <i32>(padding - BC_RECORD_HEADER_SIZE), BC_RECORD_LENGTH_OFFSET);
    store<u32>(data + <usize>index, RECORD_PADDING, BC_RECORD_TYPE_OFFSET);
    store<u64>(data + <usize>index, 0, BC_RECORD_SEQ_OFFSET);
    position += padding;
    store<u64>(h, position, TH_POSITION_OFFSET);
  }
  const record = data + <usize>(position & mask);
  store<u32>(h, length, TH_CLAIM_MAX_OFFSET);
  store<u32>(h, type, TH_CLAIM_TYPE_OFFSET);
  store<u32>(h, <u32>(record + BC_RECORD_HEADER_SIZE), TH_CLAIM_OFFSET);
  return <i32>(record + BC_RECORD_HEADER_SIZE);
}

/** Publishes the open claim. Returns 1 when subscribers sleep (the caller wakes them), 0 if not, or < 0. */
export function topic_commit(h: usize, length: u32): i32 {
  const payload = <usize>load<u32>(h, TH_CLAIM_OFFSET);
  if (payload == 0 || length > load<u32>(h, TH_CLAIM_MAX_OFFSET)) return RING_E_STATE;
  const record = payload - BC_RECORD_HEADER_SIZE;
  const seq = load<u64>(h, TH_SEQ_OFFSET);
  store<i32>(record, <i32>length, BC_RECORD_LENGTH_OFFSET);
  store<u32>(record, load<u32>(h, TH_CLAIM_TYPE_OFFSET), BC_RECORD_TYPE_OFFSET);
  store<u64>(record, seq, BC_RECORD_SEQ_OFFSET);
  store<u32>(h, 0, TH_CLAIM_OFFSET);
  const tail = load<u64>(h, TH_POSITION_OFFSET) + align(<u64>length + BC_RECORD_HEADER_SIZE);
  store<u64>(h, tail, TH_POSITION_OFFSET);
  store<u64>(h, seq + 1, TH_SEQ_OFFSET);
  const topic = topicOf(h);
  // SYNC: pairs with the atomic loads of tail in topic_read / topic_park. Sequentially consistent: the sleepers
  // load below cannot move before it (a subscriber either sees this record or is counted as asleep).
  atomic.store<u64>(topic, seq + 1, TOPIC_TAIL_SEQ_OFFSET);
  atomic.store<u64>(topic, tail, TOPIC_TAIL_OFFSET);
  // SYNC: pairs with the atomic.add in topic_park.
  if (atomic.load<u32>(topic, TOPIC_SLEEPERS_OFFSET) == 0) return 0;
  // SYNC: pairs with the load of the wake word in topic_park (futex expected value).
  atomic.add<u32>(topic + TOPIC_WAKE_OFFSET, 1);
  return 1;
}

export function topic_abort(h: usize): i32 {
  if (load<u32>(h, TH_CLAIM_OFFSET) == 0) return RING_E_STATE;
  store<u32>(h, 0, TH_CLAIM_OFFSET);
  return RING_OK;
}

/** Index of the active subscriber with the smallest cursor (the one holding a lossless publisher), or -1. */
export function topic_slowest(h: usize): i32 {
  const topic = topicOf(h);
  const maxSubs = load<u32>(h, TH_MAX_SUBS_OFFSET);
  const tail = load<u64>(h, TH_POSITION_OFFSET);
  let best: i32 = -1;
  let min = u64.MAX_VALUE;
  for (let i: u32 = 0; i < maxSubs; i++) {
    const slot = slotAt(topic, i);
    // SYNC: pairs with the compare-and-swap in topic_join / topic_leave / topic_evict.
    if (atomic.load<u64>(slot, SLOT_CLAIM_OFFSET) == <u64>CLAIM_FREE) continue;
    // SYNC: pairs with the atomic store of the cursor in topic_release.
    const cursor = atomic.load<u64>(slot, SLOT_CURSOR_OFFSET);
    if (cursor <= tail && cursor < min) { min = cursor; best = <i32>i; }
  }
  return best;
}

/**
 * Evicts subscriber `index` if its slot still holds the claim (pid, startLow) the host found dead: frees the
 * slot and uncounts it from the sleepers. 1: evicted; 0: the slot changed hands meanwhile (nothing done).
 */
export function topic_evict(h: usize, index: u32, pid: u32, startLow: u32): i32 {
  if (index >= load<u32>(h, TH_MAX_SUBS_OFFSET)) return RING_E_STATE;
  const slot = slotAt(topicOf(h), index);
  const claim = makeClaim(pid, startLow);
  if (claim == <u64>CLAIM_FREE) return 0;
  const parked = atomic.load<u32>(slot, SLOT_PARKED_OFFSET);
  // SYNC: pairs with the compare-and-swap in topic_join; only one evictor (or the owner leaving) wins, and never
  // against a newer claimant of the same slot.
  if (atomic.cmpxchg<u64>(slot, claim, <u64>CLAIM_FREE, SLOT_CLAIM_OFFSET) != claim) return 0;
  if (parked) atomic.sub<u32>(topicOf(h) + TOPIC_SLEEPERS_OFFSET, 1);
  return 1;
}

@inline function makeClaim(pid: u32, startLow: u32): u64 {
  return <u64>pid | (<u64>startLow << 32);
}

/** Marks the publisher gone for good: subscribers finish reading and end. */
export function topic_close_publisher(h: usize): void {
  const topic = topicOf(h);
  // SYNC: pairs with the atomic load in topic_publisher_closed; ordered after every commit.
  atomic.store<u32>(topic, 1, TOPIC_PUBLISHER_CLOSED_OFFSET);
  if (atomic.load<u32>(topic, TOPIC_SLEEPERS_OFFSET) != 0) atomic.add<u32>(topic + TOPIC_WAKE_OFFSET, 1);
}

/** Lossless publisher about to sleep until a subscriber frees `need` bytes. 1: sleep; 0: room appeared. */
export function topic_publisher_park(h: usize, need: u32): i32 {
  const topic = topicOf(h);
  // SYNC: pairs with the atomic.add in topic_release (futex expected value read before announcing the park).
  store<u32>(h, atomic.load<u32>(topic, TOPIC_SPACE_WAKE_OFFSET), TH_WAIT_VALUE_OFFSET);
  // SYNC: pairs with the load in topic_release. Sequentially consistent with the cursor scan below.
  atomic.store<u32>(topic, 1, TOPIC_PUBLISHER_PARK_OFFSET);
  if (reclaim(h, <u64>need + BC_RECORD_HEADER_SIZE) == 1) {
    atomic.store<u32>(topic, 0, TOPIC_PUBLISHER_PARK_OFFSET);
    return 0;
  }
  return 1;
}

export function topic_publisher_unpark(h: usize): void {
  // SYNC: pairs with the load in topic_release.
  atomic.store<u32>(topicOf(h), 0, TOPIC_PUBLISHER_PARK_OFFSET);
}

// --- subscriber ------------------------------------------------------------------------------------------------

const SNAP_OK = 0;
/** The seqlock kept moving (or a dead publisher left it odd) for SNAPSHOT_SPINS tries. */
const SNAP_BUSY = 1;
/** Positions no healthy publisher can produce, seen while head stood still. */
const SNAP_CORRUPT = 2;

/**
 * Takes a view of the positions into the scratch fields: (head, headSeq) read in one even generation of the
 * reclaim seqlock (a consistent pair), then (tail, tailSeq). The tail may be newer than that head; a walk from the
 * head notices if the publisher passes it.
 */
function snapshot(h: usize): i32 {
  const topic = topicOf(h);
  const capacity = capOf(h);
  for (let i = 0; i < SNAPSHOT_SPINS; i++) {
    // SYNC: seqlock read side; pairs with the generation stores in reclaim.
    const gen = atomic.load<u32>(topic, TOPIC_RECLAIM_GEN_OFFSET);
    if (gen & 1) continue;
    // SYNC: pairs with the stores of headSeq / head in reclaim.
    const headSeq = atomic.load<u64>(topic, TOPIC_HEAD_SEQ_OFFSET);
    const head = atomic.load<u64>(topic, TOPIC_HEAD_OFFSET);
    // SYNC: seqlock read side, second generation read.
    if (atomic.load<u32>(topic, TOPIC_RECLAIM_GEN_OFFSET) != gen) continue;
    // SYNC: pairs with the atomic stores of tailSeq / tail in topic_commit.
    const tail = atomic.load<u64>(topic, TOPIC_TAIL_OFFSET);
    const tailSeq = atomic.load<u64>(topic, TOPIC_TAIL_SEQ_OFFSET);
    // The tail, loaded after the head, is never behind it; it may be more than capacity ahead of a head that has
    // moved on since (the walk from head then finds itself lapped), so only a head that stood still proves that
    // distance corrupt.
    if (((head | tail) & (BC_RECORD_ALIGNMENT - 1)) != 0 || tail < head || tailSeq < headSeq) return SNAP_CORRUPT;
    // SYNC: pairs with the store of head in reclaim.
    if (tail - head > <u64>capacity && atomic.load<u64>(topic, TOPIC_HEAD_OFFSET) == head) return SNAP_CORRUPT;
    store<u64>(h, head, TH_SCRATCH_POS_OFFSET);
    store<u64>(h, headSeq, TH_SCRATCH_SEQ_OFFSET);
    store<u32>(h, gen, TH_SCRATCH_GEN_OFFSET);
    store<u64>(h, tail, TH_SCRATCH_TAIL_OFFSET);
    store<u64>(h, tailSeq, TH_SCRATCH_TAIL_SEQ_OFFSET);
    return SNAP_OK;
  }
  return SNAP_BUSY;
}

/**
 * Walks whole records from (position, seq), a record boundary with its exact sequence number, up to the first
 * boundary at or after `stopPosition`, or to record `stopSeq`, never past `tail`. Leaves the boundary reached and
 * its sequence number in the scratch fields. Lossy: each header is trusted only if head had not passed it when
 * loaded right after reading it (else WALK_LAPPED). Bounded: every step moves at least one header forward.
 */
function walk(h: usize, position: u64, seq: u64, tail: u64, stopPosition: u64, stopSeq: u64): i32 {
  const topic = topicOf(h);
  const capacity = capOf(h);
  const mask = <u64>capacity - 1;
  const data = dataOf(h);
  const lossy = load<u32>(h, TH_POLICY_OFFSET) == POLICY_LOSSY;
  const limit = <u64>topicMaxPayload(capacity);
  while (position < stopPosition && seq < stopSeq) {
    // Unsigned: a position past the tail fails the same test as one too far behind it. Lossy, a tail more than
    // capacity ahead means head has moved past us since the snapshot.
    if (tail - position > <u64>capacity) {
      // SYNC: pairs with the stores of head in reclaim.
      if (lossy && position < tail && atomic.load<u64>(topic, TOPIC_HEAD_OFFSET) > position) return WALK_LAPPED;
      return WALK_CORRUPT;
    }
    const index = position & mask;
    const record = data + <usize>index;
    const length = <u64><u32>load<i32>(record, BC_RECORD_LENGTH_OFFSET);
    const type = load<u32>(record, BC_RECORD_TYPE_OFFSET);
    const recordSeq = load<u64>(record, BC_RECORD_SEQ_OFFSET);
    // SYNC: pairs with the stores of head in reclaim (made before the publisher overwrites anything below head).
    if (lossy && atomic.load<u64>(topic, TOPIC_HEAD_OFFSET) > position) return WALK_LAPPED;
    const toEnd = <u64>capacity - index;
    const available = tail - position;
    if (type == RECORD_PADDING) {
      if (length + BC_RECORD_HEADER_SIZE != toEnd || toEnd > available) return WALK_CORRUPT;
      position += toEnd;
      continue;
    }
    if (length > limit || recordSeq != seq) return WALK_CORRUPT;
    const size = align(length + BC_RECORD_HEADER_SIZE);
    if (size > toEnd || size > available) return WALK_CORRUPT;
    position += size;
    seq++;
  }
  store<u64>(h, position, TH_SCRATCH_POS_OFFSET);
  store<u64>(h, seq, TH_SCRATCH_SEQ_OFFSET);
  return WALK_OK;
}

/**
 * Joins as subscriber in slot `index` (the host tries free slots in turn). `fromEarliest`: start at the oldest
 * of the newest `history` records still there; otherwise at the next record published. `pid` and `startLow`
 * (low 32 bits of our start time) form the slot's claim. Returns RING_OK, 1 when the slot is taken (try
 * another), RING_E_AGAIN when a publisher kept lapping every attempt, or another negative code.
 *
 * The position is found by walking from a consistent head: lossless, after our cursor holds that head (the
 * publisher cannot reclaim past it, so the walk reads records that stay put); lossy, checking every header
 * against head as topic_read does. Either way joining does not depend on the publisher pausing.
 */
export function topic_join(h: usize, topic: usize, capacity: u32, maxSubs: u32, index: u32, fromEarliest: u32, pid: u32, startLow: u32, start: f64): i32 {
  const rc = openCommon(h, topic, capacity, maxSubs);
  if (rc != RING_OK) return rc;
  if (index >= maxSubs || pid == 0) return RING_E_STATE;
  const slot = slotAt(topic, index);
  const claim = makeClaim(pid, startLow);
  // SYNC: pairs with the claim loads in minCursor / topic_slowest and the CAS in topic_evict / topic_leave.
  if (atomic.cmpxchg<u64>(slot, <u64>CLAIM_FREE, claim, SLOT_CLAIM_OFFSET) != <u64>CLAIM_FREE) return 1;
  store<u64>(slot, <u64>start, SLOT_START_OFFSET);
  store<u64>(slot, 0, SLOT_DROPPED_OFFSET);
  store<u32>(slot, 0, SLOT_PARKED_OFFSET);
  store<u32>(h, <u32>slot, TH_SLOT_OFFSET);
  store<u32>(h, index, TH_SLOT_INDEX_OFFSET);
  store<u64>(h, claim, TH_CLAIM_WORD_OFFSET);
  const lossy = load<u32>(h, TH_POLICY_OFFSET) == POLICY_LOSSY;
  const history = <u64>load<u32>(h, TH_HISTORY_OFFSET);
  for (let attempt = 0; attempt < JOIN_ATTEMPTS; attempt++) {
    const snap = snapshot(h);
    if (snap == SNAP_BUSY) continue;
    if (snap == SNAP_CORRUPT) { topic_leave(h); return RING_E_POSITIONS; }
    const head = load<u64>(h, TH_SCRATCH_POS_OFFSET);
    const headSeq = load<u64>(h, TH_SCRATCH_SEQ_OFFSET);
    const tail = load<u64>(h, TH_SCRATCH_TAIL_OFFSET);
    const tailSeq = load<u64>(h, TH_SCRATCH_TAIL_SEQ_OFFSET);
    if (!lossy) {
      // Hold everything from head on before looking further.
      // SYNC: pairs with the cursor loads in minCursor / topic_slowest.
      atomic.store<u64>(slot, headSeq, SLOT_CURSOR_SEQ_OFFSET);
      atomic.store<u64>(slot, head, SLOT_CURSOR_OFFSET);
      // SYNC: seqlock; a reclaim that overlapped our cursor store may have missed it: take a newer head.
      if (atomic.load<u32>(topic, TOPIC_RECLAIM_GEN_OFFSET) != load<u32>(h, TH_SCRATCH_GEN_OFFSET)) continue;
    }
    let stopSeq = u64.MAX_VALUE;
    if (fromEarliest && history != 0) {
      // The oldest of the newest `history` records (tailSeq may already count a record being committed).
      stopSeq = tailSeq - headSeq > history ? tailSeq - history : headSeq;
    }
    const walked = walk(h, head, headSeq, tail, tail, stopSeq);
    if (walked == WALK_LAPPED) continue;
    if (walked == WALK_CORRUPT) { topic_leave(h); return RING_E_RECORD; }
    const position = load<u64>(h, TH_SCRATCH_POS_OFFSET);
    const seq = load<u64>(h, TH_SCRATCH_SEQ_OFFSET);
    store<u64>(h, position, TH_POSITION_OFFSET);
    store<u64>(h, seq, TH_SEQ_OFFSET);
    // SYNC: pairs with the cursor loads in minCursor / topic_slowest.
    atomic.store<u64>(slot, seq, SLOT_CURSOR_SEQ_OFFSET);
    atomic.store<u64>(slot, position, SLOT_CURSOR_OFFSET);
    return RING_OK;
  }
  topic_leave(h);
  return RING_E_AGAIN;
}

/** Leaves the slot (frees it), if it is still ours. */
export function topic_leave(h: usize): void {
  const slot = <usize>load<u32>(h, TH_SLOT_OFFSET);
  if (slot == 0) return;
  const parked = atomic.load<u32>(slot, SLOT_PARKED_OFFSET);
  const claim = load<u64>(h, TH_CLAIM_WORD_OFFSET);
  // SYNC: pairs with the CAS in topic_evict: if the publisher evicted us, it already uncounted our park.
  if (atomic.cmpxchg<u64>(slot, claim, <u64>CLAIM_FREE, SLOT_CLAIM_OFFSET) == claim && parked) {
    atomic.sub<u32>(topicOf(h) + TOPIC_SLEEPERS_OFFSET, 1);
  }
  store<u32>(h, 0, TH_SLOT_OFFSET);
}

/** 1 while our slot is ours (not evicted). */
export function topic_member(h: usize): i32 {
  const slot = <usize>load<u32>(h, TH_SLOT_OFFSET);
  // SYNC: pairs with the CAS in topic_evict.
  return slot != 0 && atomic.load<u64>(slot, SLOT_CLAIM_OFFSET) == load<u64>(h, TH_CLAIM_WORD_OFFSET) ? 1 : 0;
}

/**
 * Reads up to `max` records into `out` (address, length, type, seq low 32 bits; 16 bytes each). A lossy
 * subscriber that was lapped first moves to a record in the newer half of the ring (see the top of this file)
 * and adds what it skipped to its dropped count; if the publisher laps it LAP_ATTEMPTS times in one call, it
 * returns what it has (maybe 0) and tries again on the next call. Returns the count or a negative code.
 * Payloads stay in place until topic_release; on a lossy topic they may be overwritten meanwhile: check with
 * topic_oldest_seq after using them.
 */
export function topic_read(h: usize, out: usize, max: u32): i32 {
  const topic = topicOf(h);
  const capacity = capOf(h);
  const mask = <u64>capacity - 1;
  const data = dataOf(h);
  const limit = <u64>topicMaxPayload(capacity);
  const lossy = load<u32>(h, TH_POLICY_OFFSET) == POLICY_LOSSY;
  let position = load<u64>(h, TH_POSITION_OFFSET);
  let seq = load<u64>(h, TH_SEQ_OFFSET);
  // SYNC: pairs with the atomic stores of tail in topic_commit.
  let tail = atomic.load<u64>(topic, TOPIC_TAIL_OFFSET);
  // Our position is a record boundary we reached; a tail behind it or off the 16-byte grid is impossible.
  if ((tail & (BC_RECORD_ALIGNMENT - 1)) != 0 || tail < position) return RING_E_POSITIONS;
  let count: u32 = 0;
  let relocations: u32 = 0;
  while (position != tail && count < max) {
    let lapped = false;
    if (tail - position > <u64>capacity) {
      if (!lossy) return RING_E_POSITIONS;
      lapped = true;
    }
    const index = position & mask;
    const record = data + <usize>index;
    const length = <u64><u32>load<i32>(record, BC_RECORD_LENGTH_OFFSET);
    const type = load<u32>(record, BC_RECORD_TYPE_OFFSET);
    const recordSeq = load<u64>(record, BC_RECORD_SEQ_OFFSET);
    // SYNC: pairs with the stores of head in reclaim: head <= position now means the header above was intact.
    if (lossy && !lapped && atomic.load<u64>(topic, TOPIC_HEAD_OFFSET) > position) lapped = true;
    if (lapped) {
      if (relocations++ >= <u32>LAP_ATTEMPTS) break;
      const rc = relocate(h, seq);
      if (rc < 0) return rc;
      if (rc == 0) continue; // lapped again while walking: try once more
      position = load<u64>(h, TH_SCRATCH_POS_OFFSET);
      seq = load<u64>(h, TH_SCRATCH_SEQ_OFFSET);
      // SYNC: relocate loaded a newer tail; reread it so the batch can go on to it.
      tail = atomic.load<u64>(topic, TOPIC_TAIL_OFFSET);
      if ((tail & (BC_RECORD_ALIGNMENT - 1)) != 0 || tail < position) return RING_E_POSITIONS;
      continue;
    }
    const toEnd = <u64>capacity - index;
    const available = tail - position;
    if (type == RECORD_PADDING) {
      if (length + BC_RECORD_HEADER_SIZE != toEnd || toEnd > available) return RING_E_RECORD;
      position += toEnd;
      continue;
    }
    if (length > limit || recordSeq != seq) return RING_E_RECORD;
    const size = align(length + BC_RECORD_HEADER_SIZE);
    if (size > toEnd || size > available) return RING_E_RECORD;
    position += size;
    const entry = out + <usize>count * BC_BATCH_ENTRY_SIZE;
    store<u32>(entry, <u32>(record + BC_RECORD_HEADER_SIZE), BC_BATCH_ADDRESS_OFFSET);
    store<u32>(entry, <u32>length, BC_BATCH_LENGTH_OFFSET);
    store<u32>(entry, type, BC_BATCH_TYPE_OFFSET);
    store<u32>(entry, <u32>seq, BC_BATCH_SEQ_OFFSET);
    seq++;
    count++;
  }
  store<u64>(h, position, TH_POSITION_OFFSET);
  store<u64>(h, seq, TH_SEQ_OFFSET);
  return <i32>count;
}

/**
 * A lapped lossy reader at sequence `seq` finds where to go on: from a consistent head, walks to the first record
 * boundary in the newer half of the ring (those records survive at least half a lap of publishing) and adds the
 * records it skips to the dropped count. 1: the new boundary is in the scratch fields; 0: lapped while walking
 * (or the seqlock kept moving), try again; negative: the positions cannot be right.
 */
function relocate(h: usize, seq: u64): i32 {
  const topic = topicOf(h);
  const capacity = capOf(h);
  const snap = snapshot(h);
  if (snap == SNAP_BUSY) return 0;
  if (snap == SNAP_CORRUPT) return RING_E_POSITIONS;
  const head = load<u64>(h, TH_SCRATCH_POS_OFFSET);
  const headSeq = load<u64>(h, TH_SCRATCH_SEQ_OFFSET);
  const tail = load<u64>(h, TH_SCRATCH_TAIL_OFFSET);
  // We were lapped, so head passed our record: an older headSeq cannot be right.
  if (headSeq < seq) return RING_E_POSITIONS;
  const half = <u64>(capacity >>> 1);
  const stop = tail - head > half ? tail - half : head;
  const walked = walk(h, head, headSeq, tail, stop, u64.MAX_VALUE);
  if (walked == WALK_LAPPED) return 0;
  if (walked == WALK_CORRUPT) return RING_E_RECORD;
  store<u64>(h, load<u64>(h, TH_DROPPED_OFFSET) + (load<u64>(h, TH_SCRATCH_SEQ_OFFSET) - seq), TH_DROPPED_OFFSET);
  return 1;
}

/**
 * Low 32 bits of the oldest sequence still in the ring. After using a lossy batch, records with an older
 * sequence (compared modulo 2^32) may have been overwritten while read: discard them as dropped.
 */
export function topic_oldest_seq(h: usize): u32 {
  // SYNC: pairs with the stores of head in reclaim (after the payload reads, which x86 does not reorder).
  return <u32>atomic.load<u64>(topicOf(h), TOPIC_HEAD_SEQ_OFFSET);
}

/** Adds `n` records to the dropped count (the host discarded torn records). */
export function topic_add_dropped(h: usize, n: u32): void {
  store<u64>(h, load<u64>(h, TH_DROPPED_OFFSET) + <u64>n, TH_DROPPED_OFFSET);
}

/** Records lost to lapping so far. */
export function topic_dropped(h: usize): f64 {
  return <f64>load<u64>(h, TH_DROPPED_OFFSET);
}

/** Publishes our cursor (everything read so far is released). 1 when the publisher sleeps waiting for room. */
export function topic_release(h: usize): i32 {
  const slot = <usize>load<u32>(h, TH_SLOT_OFFSET);
  if (slot == 0) return 0;
  store<u64>(slot, load<u64>(h, TH_DROPPED_OFFSET), SLOT_DROPPED_OFFSET);
  // SYNC: pairs with the cursor loads in minCursor. Sequentially consistent: the park load below cannot pass it.
  atomic.store<u64>(slot, load<u64>(h, TH_SEQ_OFFSET), SLOT_CURSOR_SEQ_OFFSET);
  atomic.store<u64>(slot, load<u64>(h, TH_POSITION_OFFSET), SLOT_CURSOR_OFFSET);
  const topic = topicOf(h);
  // SYNC: pairs with the store in topic_publisher_park.
  if (atomic.load<u32>(topic, TOPIC_PUBLISHER_PARK_OFFSET) == 0) return 0;
  atomic.add<u32>(topic + TOPIC_SPACE_WAKE_OFFSET, 1);
  return 1;
}

/**
 * Records published and not yet read by us: 0 exactly when caught up (our position is the tail), else at least 1
 * (the count is approximate: tailSeq and tail are separate words).
 */
export function topic_pending(h: usize): i32 {
  const topic = topicOf(h);
  // SYNC: pairs with the atomic stores of tail / tailSeq in topic_commit.
  const tail = atomic.load<u64>(topic, TOPIC_TAIL_OFFSET);
  if (tail == load<u64>(h, TH_POSITION_OFFSET)) return 0;
  const behind = atomic.load<u64>(topic, TOPIC_TAIL_SEQ_OFFSET) - load<u64>(h, TH_SEQ_OFFSET);
  return behind == 0 || behind > 0x7fffffff ? 1 : <i32>behind;
}

/** 1 once the publisher closed for good. */
export function topic_publisher_closed(h: usize): i32 {
  // SYNC: pairs with the store in topic_close_publisher.
  return atomic.load<u32>(topicOf(h), TOPIC_PUBLISHER_CLOSED_OFFSET) != 0 ? 1 : 0;
}

/** Subscriber about to sleep: counts itself asleep, checks once more. 1: sleep on the wake word; 0: records came. */
export function topic_park(h: usize): i32 {
  const topic = topicOf(h);
  const slot = <usize>load<u32>(h, TH_SLOT_OFFSET);
  // SYNC: pairs with the atomic.add of the wake word in topic_commit (futex expected value).
  store<u32>(h, atomic.load<u32>(topic, TOPIC_WAKE_OFFSET), TH_WAIT_VALUE_OFFSET);
  store<u32>(slot, 1, SLOT_PARKED_OFFSET);
  // SYNC: pairs with the sleepers load in topic_commit; sequentially consistent with the tail load below.
  atomic.add<u32>(topic + TOPIC_SLEEPERS_OFFSET, 1);
  if (topic_pending(h) != 0 || topic_publisher_closed(h) || !topic_member(h)) {
    topic_unpark(h);
    return 0;
  }
  return 1;
}

export function topic_unpark(h: usize): void {
  const slot = <usize>load<u32>(h, TH_SLOT_OFFSET);
  if (slot == 0 || load<u32>(slot, SLOT_PARKED_OFFSET) == 0) return;
  store<u32>(slot, 0, SLOT_PARKED_OFFSET);
  // SYNC: pairs with the sleepers load in topic_commit.
  if (topic_member(h)) atomic.sub<u32>(topicOf(h) + TOPIC_SLEEPERS_OFFSET, 1);
}

/** Address of the word this end sleeps on (subscriber: wakeSeq; publisher: spaceWake) and its value at park. */
export function topic_wait_address(h: usize): usize {
  return topicOf(h) + (load<u32>(h, TH_SLOT_OFFSET) != 0 ? TOPIC_WAKE_OFFSET : TOPIC_SPACE_WAKE_OFFSET);
}

export function topic_wait_value(h: usize): u32 {
  return load<u32>(h, TH_WAIT_VALUE_OFFSET);
}

/** The slot of this subscriber, for tools (-1 for a publisher). */
export function topic_slot(h: usize): i32 {
  return load<u32>(h, TH_SLOT_OFFSET) != 0 ? <i32>load<u32>(h, TH_SLOT_INDEX_OFFSET) : -1;
}
