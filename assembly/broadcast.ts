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
// Moving `head` is a seqlock (reclaimGen odd while it moves): a joining subscriber reads head/tail between two
// even, equal generations, so either the publisher's next scan sees the joiner or the joiner sees the new head.
//
// Handles are private blocks of HANDLE_SIZE bytes in this process's memory (fields TH_* below); geometry is
// copied there once and never reread from the shared header.

import {
  TOPIC_CAPACITY_OFFSET, TOPIC_MAX_SUBSCRIBERS_OFFSET, TOPIC_POLICY_OFFSET, TOPIC_HISTORY_OFFSET, TOPIC_TAIL_OFFSET,
  TOPIC_TAIL_SEQ_OFFSET, TOPIC_HEAD_OFFSET, TOPIC_HEAD_SEQ_OFFSET, TOPIC_WAKE_OFFSET, TOPIC_RECLAIM_GEN_OFFSET,
  TOPIC_PUBLISHER_PARK_OFFSET, TOPIC_SLEEPERS_OFFSET, TOPIC_SPACE_WAKE_OFFSET, TOPIC_HEADER_SIZE, TOPIC_SLOT_SIZE,
  TOPIC_MAX_SUBSCRIBERS, TOPIC_PUBLISHER_CLOSED_OFFSET,
  SLOT_STATE_OFFSET, SLOT_PID_OFFSET, SLOT_START_OFFSET, SLOT_CURSOR_OFFSET, SLOT_CURSOR_SEQ_OFFSET, SLOT_DROPPED_OFFSET,
  SLOT_PARKED_OFFSET, SLOT_FREE, SLOT_ACTIVE, POLICY_LOSSLESS, POLICY_LOSSY, BC_RECORD_HEADER_SIZE,
  BC_RECORD_SEQ_OFFSET, BC_BATCH_ENTRY_SIZE, BC_RECORD_ALIGNMENT, RECORD_PADDING, RING_MIN_CAPACITY, RING_MAX_CAPACITY,
  RING_OK, RING_E_POSITIONS, RING_E_RECORD, RING_E_TOO_LARGE, RING_E_STATE, RING_E_HEADER, HANDLE_SIZE,
  topicMaxPayload,
} from './layout';

// --- private handle fields -------------------------------------------------------------------------------------
const TH_TOPIC = 0; //       u32 address of the topic header
const TH_CAPACITY = 4; //    u32
const TH_MAX_SUBS = 8; //    u32
const TH_POLICY = 12; //     u32
const TH_HISTORY = 16; //    u32
const TH_SLOT = 20; //       u32 subscriber: address of its slot
const TH_CLAIM = 24; //      u32 publisher: payload address of the open claim, 0 when none
const TH_CLAIM_MAX = 28; //  u32
const TH_CLAIM_TYPE = 32; // u32
const TH_WAIT_VALUE = 36; // u32 value of the word this end sleeps on, read before it announced the park
const TH_POSITION = 40; //   u64 publisher: tail; subscriber: next read position
const TH_SEQ = 48; //        u64 publisher: next seq; subscriber: seq expected next
const TH_HEAD = 56; //       u64 publisher: head
const TH_HEAD_SEQ = 64; //   u64 publisher: head's seq
const TH_MIN = 72; //        u64 publisher: last minimum of the active cursors (lossless)
const TH_DROPPED = 80; //    u64 subscriber: records lost to lapping
const TH_SLOT_INDEX = 88; // u32 subscriber: its slot number

/** Bounded retries while a (possibly dead) publisher holds the reclaim seqlock. */
const JOIN_ATTEMPTS = 1 << 20;

// Topic records align to their 16-byte header, so the gap left at the end of the data is never smaller than a
// header: a padding record always fits (with 8-byte alignment an 8-byte gap could not hold one).
@inline function align(n: u64): u64 {
  return (n + (BC_RECORD_ALIGNMENT - 1)) & ~(<u64>BC_RECORD_ALIGNMENT - 1);
}
@inline function topicOf(h: usize): usize { return <usize>load<u32>(h, TH_TOPIC); }
@inline function capOf(h: usize): u32 { return load<u32>(h, TH_CAPACITY); }
@inline function dataOf(h: usize): usize {
  return topicOf(h) + TOPIC_HEADER_SIZE + <usize>load<u32>(h, TH_MAX_SUBS) * TOPIC_SLOT_SIZE;
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
  store<u32>(h, <u32>topic, TH_TOPIC);
  store<u32>(h, capacity, TH_CAPACITY);
  store<u32>(h, maxSubs, TH_MAX_SUBS);
  store<u32>(h, policy, TH_POLICY);
  store<u32>(h, history, TH_HISTORY);
  return RING_OK;
}

@inline function sane(head: u64, tail: u64, headSeq: u64, tailSeq: u64, capacity: u32): bool {
  return tail - head <= <u64>capacity && ((head | tail) & (BC_RECORD_ALIGNMENT - 1)) == 0
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
  store<u64>(h, tail, TH_POSITION);
  store<u64>(h, tailSeq, TH_SEQ);
  store<u64>(h, head, TH_HEAD);
  store<u64>(h, headSeq, TH_HEAD_SEQ);
  store<u64>(h, head, TH_MIN);
  return RING_OK;
}

/**
 * Scans the active subscribers for the smallest cursor (lossless). Returns u64.MAX_VALUE when nobody reads, or
 * when every cursor is implausible (a corrupt slot cannot stall the publisher: it is ignored).
 */
function minCursor(h: usize): u64 {
  const topic = topicOf(h);
  const maxSubs = load<u32>(h, TH_MAX_SUBS);
  const head = load<u64>(h, TH_HEAD);
  const tail = load<u64>(h, TH_POSITION);
  let min = u64.MAX_VALUE;
  for (let i: u32 = 0; i < maxSubs; i++) {
    const slot = slotAt(topic, i);
    // SYNC: pairs with the compare-and-swap in topic_join / topic_leave.
    if (atomic.load<u32>(slot, SLOT_STATE_OFFSET) != SLOT_ACTIVE) continue;
    // SYNC: pairs with the atomic store of the cursor in topic_release.
    const cursor = atomic.load<u64>(slot, SLOT_CURSOR_OFFSET);
    // A cursor behind head (a joiner racing a reclaim) still holds the data: clamp rather than ignore it.
    if (cursor > tail) continue;
    const c = cursor < head ? head : cursor;
    if (c < min) min = c;
  }
  return min;
}

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
  const tail = load<u64>(h, TH_POSITION);
  const tailSeq = load<u64>(h, TH_SEQ);
  const history = <u64>load<u32>(h, TH_HISTORY);
  const lossless = load<u32>(h, TH_POLICY) == POLICY_LOSSLESS;
  let head = load<u64>(h, TH_HEAD);
  let headSeq = load<u64>(h, TH_HEAD_SEQ);

  const gen = atomic.load<u32>(topic, TOPIC_RECLAIM_GEN_OFFSET);
  // SYNC: seqlock write side; pairs with the generation loads in topic_join. Sequentially consistent, so the
  // slot scan below cannot move before it.
  atomic.store<u32>(topic, gen + 1, TOPIC_RECLAIM_GEN_OFFSET);
  const limit = lossless ? minCursor(h) : u64.MAX_VALUE;
  if (lossless) store<u64>(h, limit, TH_MIN);
  let steps: u32 = 0;
  let heldByHistory = false;
  while (tail + needed - head > <u64>capacity && head < tail && steps++ < capacity) {
    const index = head & mask;
    const record = data + <usize>index;
    const type = load<u32>(record, 4);
    const length = load<i32>(record, 0);
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
  store<u64>(h, head, TH_HEAD);
  store<u64>(h, headSeq, TH_HEAD_SEQ);
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
  if (load<u32>(h, TH_CLAIM) != 0 || type == RECORD_PADDING) return RING_E_STATE;
  const capacity = capOf(h);
  if (length > topicMaxPayload(capacity)) return RING_E_TOO_LARGE;
  const mask = <u64>capacity - 1;
  const tail = load<u64>(h, TH_POSITION);
  const index = tail & mask;
  const size = align(<u64>length + BC_RECORD_HEADER_SIZE);
  const toEnd = <u64>capacity - index;
  const padding: u64 = size > toEnd ? toEnd : 0;
  const needed = padding + size;
  if (tail + needed - load<u64>(h, TH_HEAD) > <u64>capacity) {
    const rc = reclaim(h, needed);
    if (rc <= 0) return rc;
  }
  const data = dataOf(h);
  let position = tail;
  if (padding != 0) {
    store<i32>(data + <usize>index, <i32>(padding - BC_RECORD_HEADER_SIZE), 0);
    store<u32>(data + <usize>index, RECORD_PADDING, 4);
    store<u64>(data + <usize>index, 0, BC_RECORD_SEQ_OFFSET);
    position += padding;
    store<u64>(h, position, TH_POSITION);
  }
  const record = data + <usize>(position & mask);
  store<u32>(h, length, TH_CLAIM_MAX);
  store<u32>(h, type, TH_CLAIM_TYPE);
  store<u32>(h, <u32>(record + BC_RECORD_HEADER_SIZE), TH_CLAIM);
  return <i32>(record + BC_RECORD_HEADER_SIZE);
}

/** Publishes the open claim. Returns 1 when subscribers sleep (the caller wakes them), 0 if not, or < 0. */
export function topic_commit(h: usize, length: u32): i32 {
  const payload = <usize>load<u32>(h, TH_CLAIM);
  if (payload == 0 || length > load<u32>(h, TH_CLAIM_MAX)) return RING_E_STATE;
  const record = payload - BC_RECORD_HEADER_SIZE;
  const seq = load<u64>(h, TH_SEQ);
  store<i32>(record, <i32>length, 0);
  store<u32>(record, load<u32>(h, TH_CLAIM_TYPE), 4);
  store<u64>(record, seq, BC_RECORD_SEQ_OFFSET);
  store<u32>(h, 0, TH_CLAIM);
  const tail = load<u64>(h, TH_POSITION) + align(<u64>length + BC_RECORD_HEADER_SIZE);
  store<u64>(h, tail, TH_POSITION);
  store<u64>(h, seq + 1, TH_SEQ);
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
  if (load<u32>(h, TH_CLAIM) == 0) return RING_E_STATE;
  store<u32>(h, 0, TH_CLAIM);
  return RING_OK;
}

/** Index of the active subscriber with the smallest cursor (the one holding a lossless publisher), or -1. */
export function topic_slowest(h: usize): i32 {
  const topic = topicOf(h);
  const maxSubs = load<u32>(h, TH_MAX_SUBS);
  const tail = load<u64>(h, TH_POSITION);
  let best: i32 = -1;
  let min = u64.MAX_VALUE;
  for (let i: u32 = 0; i < maxSubs; i++) {
    const slot = slotAt(topic, i);
    // SYNC: pairs with the compare-and-swap in topic_join / topic_leave.
    if (atomic.load<u32>(slot, SLOT_STATE_OFFSET) != SLOT_ACTIVE) continue;
    // SYNC: pairs with the atomic store of the cursor in topic_release.
    const cursor = atomic.load<u64>(slot, SLOT_CURSOR_OFFSET);
    if (cursor <= tail && cursor < min) { min = cursor; best = <i32>i; }
  }
  return best;
}

/** Evicts subscriber `index` (its process is dead): frees its slot and uncounts it from the sleepers. */
export function topic_evict(h: usize, index: u32): i32 {
  if (index >= load<u32>(h, TH_MAX_SUBS)) return RING_E_STATE;
  const slot = slotAt(topicOf(h), index);
  const parked = atomic.load<u32>(slot, SLOT_PARKED_OFFSET);
  // SYNC: pairs with the compare-and-swap in topic_join; only one evictor (or the owner leaving) wins.
  if (atomic.cmpxchg<u32>(slot, SLOT_ACTIVE, SLOT_FREE, SLOT_STATE_OFFSET) != SLOT_ACTIVE) return 0;
  if (parked) atomic.sub<u32>(topicOf(h) + TOPIC_SLEEPERS_OFFSET, 1);
  return 1;
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
  store<u32>(h, atomic.load<u32>(topic, TOPIC_SPACE_WAKE_OFFSET), TH_WAIT_VALUE);
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

/**
 * Joins as subscriber in slot `index` (the host tries free slots in turn). `fromEarliest`: start at the oldest
 * of the newest `history` records still there; otherwise at the next record published. Returns RING_OK, 0 when
 * the slot is taken (try another), or a negative code.
 */
export function topic_join(h: usize, topic: usize, capacity: u32, maxSubs: u32, index: u32, fromEarliest: u32, pid: u32, start: f64): i32 {
  const rc = openCommon(h, topic, capacity, maxSubs);
  if (rc != RING_OK) return rc;
  if (index >= maxSubs) return RING_E_STATE;
  const slot = slotAt(topic, index);
  // SYNC: pairs with the state loads in minCursor / topic_slowest and the CAS in topic_evict / topic_leave.
  if (atomic.cmpxchg<u32>(slot, SLOT_FREE, SLOT_ACTIVE, SLOT_STATE_OFFSET) != SLOT_FREE) return 1;
  store<u32>(slot, pid, SLOT_PID_OFFSET);
  store<u64>(slot, <u64>start, SLOT_START_OFFSET);
  store<u64>(slot, 0, SLOT_DROPPED_OFFSET);
  store<u32>(slot, 0, SLOT_PARKED_OFFSET);
  store<u32>(h, <u32>slot, TH_SLOT);
  store<u32>(h, index, TH_SLOT_INDEX);
  const history = <u64>load<u32>(h, TH_HISTORY);
  for (let attempt = 0; attempt < JOIN_ATTEMPTS; attempt++) {
    // SYNC: seqlock read side; pairs with the generation stores in reclaim.
    const gen = atomic.load<u32>(topic, TOPIC_RECLAIM_GEN_OFFSET);
    if (gen & 1) continue;
    const tail = atomic.load<u64>(topic, TOPIC_TAIL_OFFSET);
    const tailSeq = atomic.load<u64>(topic, TOPIC_TAIL_SEQ_OFFSET);
    const head = atomic.load<u64>(topic, TOPIC_HEAD_OFFSET);
    const headSeq = atomic.load<u64>(topic, TOPIC_HEAD_SEQ_OFFSET);
    if (!sane(head, tail, headSeq, tailSeq, capacity)) { topic_leave(h); return RING_E_POSITIONS; }
    let position = tail;
    let seq = tailSeq;
    if (fromEarliest && history != 0) {
      // Start at seq max(headSeq, tailSeq - history): walk records from head.
      const want = tailSeq - headSeq > history ? tailSeq - history : headSeq;
      position = head;
      seq = headSeq;
      const walked = walk(h, position, seq, want, tail);
      if (walked == u64.MAX_VALUE) continue; // torn by a concurrent reclaim: retry
      position = walked;
      seq = want;
    }
    store<u64>(h, position, TH_POSITION);
    store<u64>(h, seq, TH_SEQ);
    // SYNC: pairs with the cursor loads in minCursor / topic_slowest.
    atomic.store<u64>(slot, seq, SLOT_CURSOR_SEQ_OFFSET);
    atomic.store<u64>(slot, position, SLOT_CURSOR_OFFSET);
    if (atomic.load<u32>(topic, TOPIC_RECLAIM_GEN_OFFSET) == gen) return RING_OK;
  }
  topic_leave(h);
  return RING_E_STATE;
}

/** Position of record `want`, walking from (position, seq); u64.MAX_VALUE if the records there do not add up. */
function walk(h: usize, position: u64, seq: u64, want: u64, tail: u64): u64 {
  const capacity = capOf(h);
  const mask = <u64>capacity - 1;
  const data = dataOf(h);
  let steps: u32 = 0;
  while (seq < want) {
    if (position >= tail || steps++ > capacity) return u64.MAX_VALUE;
    const index = position & mask;
    const record = data + <usize>index;
    const type = load<u32>(record, 4);
    const toEnd = <u64>capacity - index;
    if (type == RECORD_PADDING) { position += toEnd; continue; }
    const length = <u64><u32>load<i32>(record, 0);
    if (length > <u64>topicMaxPayload(capacity)) return u64.MAX_VALUE;
    const size = align(length + BC_RECORD_HEADER_SIZE);
    if (size > toEnd) return u64.MAX_VALUE;
    position += size;
    seq++;
  }
  return position;
}

/** Leaves the slot (frees it), if it is still ours. */
export function topic_leave(h: usize): void {
  const slot = <usize>load<u32>(h, TH_SLOT);
  if (slot == 0) return;
  const parked = atomic.load<u32>(slot, SLOT_PARKED_OFFSET);
  // SYNC: pairs with the CAS in topic_evict: if the publisher evicted us, it already uncounted our park.
  if (atomic.cmpxchg<u32>(slot, SLOT_ACTIVE, SLOT_FREE, SLOT_STATE_OFFSET) == SLOT_ACTIVE && parked) {
    atomic.sub<u32>(topicOf(h) + TOPIC_SLEEPERS_OFFSET, 1);
  }
  store<u32>(h, 0, TH_SLOT);
}

/** 1 while our slot is ours (not evicted). */
export function topic_member(h: usize): i32 {
  const slot = <usize>load<u32>(h, TH_SLOT);
  // SYNC: pairs with the CAS in topic_evict.
  return slot != 0 && atomic.load<u32>(slot, SLOT_STATE_OFFSET) == SLOT_ACTIVE ? 1 : 0;
}

/**
 * Reads up to `max` records into `out` (address, length, type, seq low 32 bits; 16 bytes each). A lossy
 * subscriber that was lapped first jumps to the oldest record still there and adds what it skipped to its
 * dropped count. Returns the count or a negative code. Payloads stay in place until topic_release; on a lossy
 * topic they may be overwritten meanwhile: check with topic_oldest_seq after using them.
 */
export function topic_read(h: usize, out: usize, max: u32): i32 {
  const topic = topicOf(h);
  const capacity = capOf(h);
  const mask = <u64>capacity - 1;
  const data = dataOf(h);
  const lossy = load<u32>(h, TH_POLICY) == POLICY_LOSSY;
  let position = load<u64>(h, TH_POSITION);
  let seq = load<u64>(h, TH_SEQ);
  // SYNC: pairs with the atomic stores of tail in topic_commit.
  const tail = atomic.load<u64>(topic, TOPIC_TAIL_OFFSET);
  const tailSeq = atomic.load<u64>(topic, TOPIC_TAIL_SEQ_OFFSET);
  if ((tail & (BC_RECORD_ALIGNMENT - 1)) != 0 || tail < position || tailSeq < seq) return RING_E_POSITIONS;
  let count: u32 = 0;
  let laps: u32 = 0;
  while (position != tail && count < max) {
    if (lossy) {
      // SYNC: pairs with the stores of head in reclaim.
      const headSeq = atomic.load<u64>(topic, TOPIC_HEAD_SEQ_OFFSET);
      const head = atomic.load<u64>(topic, TOPIC_HEAD_OFFSET);
      if (position < head) {
        // Lapped: what lay between us and the oldest record is gone. Bounded: each lap moves us forward.
        if (head > tail || laps++ > 64) return RING_E_POSITIONS;
        if (headSeq > seq) store<u64>(h, load<u64>(h, TH_DROPPED) + (headSeq - seq), TH_DROPPED);
        position = head;
        seq = headSeq;
        continue;
      }
    }
    if (tail - position > <u64>capacity) return RING_E_POSITIONS;
    const index = position & mask;
    const record = data + <usize>index;
    const length = load<i32>(record, 0);
    const type = load<u32>(record, 4);
    const recordSeq = load<u64>(record, BC_RECORD_SEQ_OFFSET);
    const toEnd = <u64>capacity - index;
    const available = tail - position;
    let size: u64 = 0;
    let ok = true;
    if (type == RECORD_PADDING) {
      ok = <u64><u32>length + BC_RECORD_HEADER_SIZE == toEnd && toEnd <= available;
      size = toEnd;
    } else {
      ok = <u64><u32>length <= <u64>topicMaxPayload(capacity) && recordSeq == seq;
      size = align(<u64><u32>length + BC_RECORD_HEADER_SIZE);
      ok = ok && size <= toEnd && size <= available;
    }
    if (!ok) {
      // On a lossy topic the publisher may have overwritten the record under us: that is a lap, seen on the
      // next turn of the loop. Anything else is corruption.
      // SYNC: pairs with the stores of head in reclaim.
      if (lossy && atomic.load<u64>(topic, TOPIC_HEAD_OFFSET) > position && laps < 64) continue;
      return RING_E_RECORD;
    }
    position += size;
    if (type == RECORD_PADDING) continue;
    const entry = out + <usize>count * BC_BATCH_ENTRY_SIZE;
    store<u32>(entry, <u32>(record + BC_RECORD_HEADER_SIZE), 0);
    store<u32>(entry, <u32>length, 4);
    store<u32>(entry, type, 8);
    store<u32>(entry, <u32>seq, 12);
    seq++;
    count++;
  }
  store<u64>(h, position, TH_POSITION);
  store<u64>(h, seq, TH_SEQ);
  return <i32>count;
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
  store<u64>(h, load<u64>(h, TH_DROPPED) + <u64>n, TH_DROPPED);
}

/** Records lost to lapping so far. */
export function topic_dropped(h: usize): f64 {
  return <f64>load<u64>(h, TH_DROPPED);
}

/** Publishes our cursor (everything read so far is released). 1 when the publisher sleeps waiting for room. */
export function topic_release(h: usize): i32 {
  const slot = <usize>load<u32>(h, TH_SLOT);
  if (slot == 0) return 0;
  store<u64>(slot, load<u64>(h, TH_DROPPED), SLOT_DROPPED_OFFSET);
  // SYNC: pairs with the cursor loads in minCursor. Sequentially consistent: the park load below cannot pass it.
  atomic.store<u64>(slot, load<u64>(h, TH_SEQ), SLOT_CURSOR_SEQ_OFFSET);
  atomic.store<u64>(slot, load<u64>(h, TH_POSITION), SLOT_CURSOR_OFFSET);
  const topic = topicOf(h);
  // SYNC: pairs with the store in topic_publisher_park.
  if (atomic.load<u32>(topic, TOPIC_PUBLISHER_PARK_OFFSET) == 0) return 0;
  atomic.add<u32>(topic + TOPIC_SPACE_WAKE_OFFSET, 1);
  return 1;
}

/** Records published and not yet read by us (0 when caught up). */
export function topic_pending(h: usize): i32 {
  // SYNC: pairs with the atomic store of tailSeq in topic_commit.
  const tailSeq = atomic.load<u64>(topicOf(h), TOPIC_TAIL_SEQ_OFFSET);
  const seq = load<u64>(h, TH_SEQ);
  const behind = tailSeq - seq;
  return behind > 0x7fffffff ? 0x7fffffff : <i32>behind;
}

/** 1 once the publisher closed for good. */
export function topic_publisher_closed(h: usize): i32 {
  // SYNC: pairs with the store in topic_close_publisher.
  return atomic.load<u32>(topicOf(h), TOPIC_PUBLISHER_CLOSED_OFFSET) != 0 ? 1 : 0;
}

/** Subscriber about to sleep: counts itself asleep, checks once more. 1: sleep on the wake word; 0: records came. */
export function topic_park(h: usize): i32 {
  const topic = topicOf(h);
  const slot = <usize>load<u32>(h, TH_SLOT);
  // SYNC: pairs with the atomic.add of the wake word in topic_commit (futex expected value).
  store<u32>(h, atomic.load<u32>(topic, TOPIC_WAKE_OFFSET), TH_WAIT_VALUE);
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
  const slot = <usize>load<u32>(h, TH_SLOT);
  if (slot == 0 || load<u32>(slot, SLOT_PARKED_OFFSET) == 0) return;
  store<u32>(slot, 0, SLOT_PARKED_OFFSET);
  // SYNC: pairs with the sleepers load in topic_commit.
  if (topic_member(h)) atomic.sub<u32>(topicOf(h) + TOPIC_SLEEPERS_OFFSET, 1);
}

/** Address of the word this end sleeps on (subscriber: wakeSeq; publisher: spaceWake) and its value at park. */
export function topic_wait_address(h: usize): usize {
  return topicOf(h) + (load<u32>(h, TH_SLOT) != 0 ? TOPIC_WAKE_OFFSET : TOPIC_SPACE_WAKE_OFFSET);
}

export function topic_wait_value(h: usize): u32 {
  return load<u32>(h, TH_WAIT_VALUE);
}

/** The slot of this subscriber, for tools (-1 for a publisher). */
export function topic_slot(h: usize): i32 {
  return load<u32>(h, TH_SLOT) != 0 ? <i32>load<u32>(h, TH_SLOT_INDEX) : -1;
}
