// Portable: compiled by both asc (into the wasm module) and tsc (for the host). Plain integer constants only,
// so both compilers agree on every value. This file is the one source of truth for every byte shmbus shares.
//
// ─── Segment ─────────────────────────────────────────────────────────────────────────────────────────────
// A channel segment is one header followed by RING_COUNT rings. All integers are little-endian.
//
//   0        4        8        12       16                24       28       32       36       40
//   ┌────────┬────────┬────────┬────────┬─────────────────┬────────┬────────┬────────┬────────┬──────────────┐
//   │ magic  │version │features│hdrSize │ segmentSize u64 │ rings  │capacity│creatPid│reserved│creatStart u64│
//   └────────┴────────┴────────┴────────┴─────────────────┴────────┴────────┴────────┴────────┴──────────────┘
//   48 … 127 reserved, zero.          then ring 0 at SEGMENT_HEADER_SIZE, ring i at ringOffset(i, capacity).
//
// The creator writes every field, then stores `version` last (an atomic store). An opener waits for a non-zero
// version, checks magic, major version, that the ring geometry fits inside the bytes it mapped, and only then
// trusts anything else.
//
// ─── Ring (single producer, single consumer) ───────────────────────────────────────────────────────────────
//   0    capacity u32           creator      data bytes, a power of two
//   4…127 reserved               —
//   128  tailPosition u64        producer     bytes ever committed; only grows
//   136  producerClosed u32      producer     1 once the producer will commit nothing more
//   140  producerParkSeq u32     producer     odd while the producer waits for space
//   144  producerWakeSeq u32     producer     bumped each time the producer rings the parked consumer
//   148…151 reserved             —
//   152  committedRecords u64    producer     records ever committed (for tools: `shmbus stat`)
//   160…255 reserved             —
//   256  headPosition u64        consumer     bytes ever released; only grows
//   264  consumerClosed u32      consumer     1 once the consumer will read nothing more
//   268  consumerParkSeq u32     consumer     odd while the consumer is parked waiting for data
//   272  consumerWakeSeq u32     consumer     bumped each time the consumer rings the parked producer
//   276  consumerSpinCpu u32     consumer     1 + the core its reader last spun on (a hint, 0: unknown)
//   280  readRecords u64         consumer     records ever handed to the reader (for tools: `shmbus stat`)
//   288…383 reserved             —
//   384  data[capacity]
//
// Producer and consumer words sit 128 bytes apart so the two sides never write the same cache line pair.
// An index into data is `position & (capacity - 1)`.
//
// ─── Record ──────────────────────────────────────────────────────────────────────────────────────────────
//   0        4        8
//   ┌────────┬────────┬──────────────────────────┬─────────┐
//   │ length │  type  │ payload (length bytes)   │ pad to 8│
//   └────────┴────────┴──────────────────────────┴─────────┘
//   length i32: payload bytes, 0 … maxPayload(capacity). A negative length would mean "claimed, not committed";
//     a single-producer ring never publishes such a record (its tail moves only over committed records), so a
//     reader treats one as corruption.
//   type u32: RECORD_PADDING fills the data from this record to the end of the ring (the producer wraps);
//     any other value is the application's record type.
//   A record never wraps: it sits contiguously in data, so a reader can hand out a view of its payload.

// --- segment header -------------------------------------------------------------------------------------------
export const SEGMENT_MAGIC = 0x424d4853; // "SHMB" in memory order
export const LAYOUT_VERSION_MAJOR = 1;
// 1.1: topic and registry segments changed (one 64-bit claim word per publisher, subscriber and member slot) and
// took new magics, so an older build refuses them (bad magic) instead of misreading them; channels are unchanged.
// 1.2: channel rings may start small and grow in band (RECORD_RESIZE); a peer announcing 1.1 or older gets rings
// that never grow (it would not understand the record).
export const LAYOUT_VERSION_MINOR = 2;
export const LAYOUT_VERSION = (LAYOUT_VERSION_MAJOR << 16) | LAYOUT_VERSION_MINOR;

export const SEG_MAGIC_OFFSET = 0;
export const SEG_VERSION_OFFSET = SEG_MAGIC_OFFSET + 4;
export const SEG_FEATURES_OFFSET = SEG_VERSION_OFFSET + 4;
export const SEG_HEADER_SIZE_OFFSET = SEG_FEATURES_OFFSET + 4;
export const SEG_SIZE_OFFSET = SEG_HEADER_SIZE_OFFSET + 4;
export const SEG_RING_COUNT_OFFSET = SEG_SIZE_OFFSET + 8;
export const SEG_RING_CAPACITY_OFFSET = SEG_RING_COUNT_OFFSET + 4;
export const SEG_CREATOR_PID_OFFSET = SEG_RING_CAPACITY_OFFSET + 4;
export const SEG_CREATOR_START_OFFSET = SEG_CREATOR_PID_OFFSET + 8;
export const SEGMENT_HEADER_SIZE = 128;

/** Feature bits this build understands; an opener refuses a segment that sets any other bit. */
export const FEATURES_KNOWN = 0;

/** A channel segment holds two rings: RING_TO_CONNECTOR (written by the listener) and RING_TO_LISTENER. */
export const CHANNEL_RING_COUNT = 2;
export const RING_TO_CONNECTOR = 0;
export const RING_TO_LISTENER = 1;

// --- ring header ---------------------------------------------------------------------------------------------
export const RING_CAPACITY_OFFSET = 0;
export const RING_TAIL_OFFSET = 128;
export const RING_PRODUCER_CLOSED_OFFSET = RING_TAIL_OFFSET + 8;
export const RING_PRODUCER_PARK_OFFSET = RING_PRODUCER_CLOSED_OFFSET + 4;
export const RING_PRODUCER_WAKE_OFFSET = RING_PRODUCER_PARK_OFFSET + 4;
export const RING_HEAD_OFFSET = 256;
export const RING_CONSUMER_CLOSED_OFFSET = RING_HEAD_OFFSET + 8;
export const RING_CONSUMER_PARK_OFFSET = RING_CONSUMER_CLOSED_OFFSET + 4;
export const RING_CONSUMER_WAKE_OFFSET = RING_CONSUMER_PARK_OFFSET + 4;
export const RING_HEADER_SIZE = 384;

/** Smallest and largest ring data capacity (powers of two). */
export const RING_MIN_CAPACITY = 1024;
export const RING_MAX_CAPACITY = 1 << 28;
/** Wasm pages of the process memory at most (2 GiB): every address fits a positive i32. */
export const MEMORY_MAX_PAGES = 32768;

// --- records -------------------------------------------------------------------------------------------------
export const RECORD_LENGTH_OFFSET = 0;
export const RECORD_TYPE_OFFSET = 4;
export const RECORD_HEADER_SIZE = 8;
export const RECORD_ALIGNMENT = 8;

export const RECORD_PADDING = 0;
/** Raw bytes sent with sendBytes / claim. */
export const RECORD_BYTES = 1;
/** A msgpack-encoded value sent with send. */
export const RECORD_MSGPACK = 2;
/** A request (request/reply): msgpack of [id, value]. */
export const RECORD_REQUEST = 3;
/** A reply: msgpack of [id, value]. */
export const RECORD_REPLY = 4;
/** A failed request: msgpack of [id, { code, message }]. */
export const RECORD_REPLY_ERROR = 5;
/**
 * The ring's own record (1.2): from the record after this one on, the ring's data capacity is the u32 payload at
 * RESIZE_CAPACITY_OFFSET (a power of two, at most the capacity of the ring header, at least RING_MIN_CAPACITY;
 * the u32 after it is zero). Positions continue (index = position & (new capacity - 1)). The producer writes it in
 * the old geometry after it made the pages of the larger data area exist (MADV_POPULATE_WRITE), then writes
 * nothing more until the consumer has released past it, so no record of the old geometry is still unread when the
 * new one starts. The consumer reads nothing past it until it too has made those pages exist in its mapping. A
 * producer shrinks its ring the same way once it has been idle and empty for a while (then frees the pages past the
 * new capacity with MADV_REMOVE, after the consumer has passed the record). A
 * ring that was opened without room to grow (max = capacity) treats one as corrupt. Never handed to the reader;
 * reserved (ring_claim refuses it), at the top of the type space so that small application types stay free.
 */
export const RECORD_RESIZE = 0x7fffffff;
export const RESIZE_CAPACITY_OFFSET = 0;
export const RESIZE_PAYLOAD_SIZE = 8;

// --- results of ring operations (negative: the ring is unusable or the call was misused) ------------------------
export const RING_OK = 0;
/** Positions impossible for a healthy ring: head past tail, more than capacity apart, misaligned. */
export const RING_E_POSITIONS = -1;
/** A record whose length or type cannot be right, or that crosses the end of the data or the tail. */
export const RING_E_RECORD = -2;
/** A record larger than maxPayload(capacity). */
export const RING_E_TOO_LARGE = -3;
/** claim while a claim is open, commit/abort without one, commit longer than claimed. */
export const RING_E_STATE = -4;
/** The ring header disagrees with the segment header (capacity). */
export const RING_E_HEADER = -5;
/** A lossy topic's publisher outran every bounded attempt to join (try again; nothing is wrong with the ring). */
export const RING_E_AGAIN = -6;
/** Producer (growing ring): the record needs a larger ring whose pages are not known to exist: the host makes data
 * bytes [0, H_TARGET) exist (MADV_POPULATE_WRITE; a full /dev/shm fails there), calls ring_populated and claims again. */
export const RING_GROW = -7;
/** Producer: a RECORD_RESIZE was committed (ring the consumer); no room until the consumer has passed it. */
export const RING_RESIZE_SENT = -8;
/** Consumer: the next record is a RECORD_RESIZE to H_PENDING bytes: the host makes those pages exist in its own
 * mapping, then calls ring_resize_done and reads on. */
export const RING_RESIZE_SEEN = -9;

// --- this process's private wasm memory (not shared with anyone) -----------------------------------------------
//   0 … PRIVATE_BASE           the module's static data (the build test checks it fits)
//   PRIVATE_BASE …             endpoint handles, HANDLE_SIZE each, MAX_HANDLES of them
//   BATCH_BASE …               the batch descriptors ring_read fills: BATCH_MAX × (address, length, type) u32
//   WINDOW_BASE …              windows mapped onto shared segments (4 KiB aligned)
export const PAGE_SIZE = 4096;
export const WASM_PAGE_SIZE = 65536;
export const PRIVATE_BASE = 65536;
export const HANDLE_SIZE = 128;
export const MAX_HANDLES = 4096;
export const BATCH_BASE = PRIVATE_BASE + HANDLE_SIZE * MAX_HANDLES;
export const BATCH_MAX = 4096;
export const BATCH_ENTRY_SIZE = 12;
/** The batch area fits BATCH_MAX entries of the larger (topic) kind. */
export const BATCH_END = BATCH_BASE + BATCH_MAX * 16;
/**
 * Bytes of one batch area. Each reading end (ring consumer, topic subscriber) gets its own area in window space
 * on its first read, so a handler that polls another channel or topic never overwrites the batch being handed
 * out; the area at BATCH_BASE is only what `engine.batch` points at before any read.
 */
export const BATCH_AREA_SIZE = BATCH_END - BATCH_BASE;
export const WINDOW_BASE = 1 << 20; // above BATCH_END (the build test checks)

// --- handle: one endpoint of a ring, private to this process --------------------------------------------------
export const H_RING_OFFSET = 0; //        u32 address of the ring header
export const H_CAPACITY_OFFSET = 4; //    u32 validated capacity
export const H_ROLE_OFFSET = 8; //        u32 ROLE_PRODUCER or ROLE_CONSUMER
export const H_CLAIM_OFFSET = 12; //      u32 payload address of the open claim, 0 when none
export const H_POSITION_OFFSET = 16; //   u64 producer: next claim position; consumer: next read position
export const H_CACHED_OFFSET = 24; //     u64 producer: last head seen; consumer: last tail seen
export const H_CLAIM_MAX_OFFSET = 32; //  u32 bytes claimed
export const H_RUNG_OFFSET = 36; //       u32 the peer's park sequence we last rang the doorbell for
export const H_CLAIM_TYPE_OFFSET = 40; // u32 type of the open claim
export const H_WAIT_VALUE_OFFSET = 44; // u32 the peer's wake sequence seen when this end parked (futex expected value)
export const H_NEED_OFFSET = 48; //       u32 producer: free bytes the last refused claim needed (record + padding)
export const H_MAX_CAPACITY_OFFSET = 52; // u32 the capacity of the ring header: what a growing ring may reach
export const H_PENDING_OFFSET = 56; //    u32 capacity announced by a RECORD_RESIZE not yet in effect (0: none)
export const H_POPULATED_OFFSET = 60; //  u32 producer: data bytes whose pages are known to exist
export const H_SWITCH_AT_OFFSET = 64; //  u64 producer: position right after the RECORD_RESIZE (the new geometry starts)
export const H_TARGET_OFFSET = 72; //     u32 producer: data bytes to populate after RING_GROW
export const H_GROW_LIMIT_OFFSET = 76; // u32 producer: the largest capacity it will grow to (lowered when an optional growth failed)
export const H_FULL_OFFSET = 80; //       u32 producer: 1 once a claim found the ring full while it could still grow (the next claim grows it)
export const H_CLAIM_COUNT_OFFSET = 84; // u32 producer: records of the open claim (ring_claim_many; 0 for a single claim)
export const H_UNPUBLISHED_OFFSET = 88; // u32 producer: records committed by ring_commit_quiet and not yet in the shared tail
export const H_UNPUBLISHED_BYTES_OFFSET = 92; // u32 producer: their bytes (headers and alignment included)

export const ROLE_PRODUCER = 0;
export const ROLE_CONSUMER = 1;

// --- derived ---------------------------------------------------------------------------------------------------
/** Largest payload a ring of `capacity` accepts: a record of half the ring always fits once the ring drains. */
export function maxPayload(capacity: u32): u32 {
  return (capacity >>> 1) - RECORD_HEADER_SIZE;
}

/** Offset of ring `index` inside a segment whose rings have `capacity` data bytes. */
export function ringOffset(index: u32, capacity: u32): u32 {
  return SEGMENT_HEADER_SIZE + index * (RING_HEADER_SIZE + capacity);
}

/** Bytes a segment of `ringCount` rings of `capacity` needs, rounded up to whole pages. */
export function segmentBytes(ringCount: u32, capacity: u32): u32 {
  const bytes = ringOffset(ringCount, capacity);
  return ((bytes + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) >>> 0;
}

// ─── Topic segment (broadcast ring: one publisher, many subscribers) ──────────────────────────────────────
// A topic segment starts with the same 128-byte segment header (magic TOPIC_MAGIC, ringCount = maxSubscribers,
// ringCapacity = the data bytes), then:
//
//   128  topic header
//     0    capacity u32            creator      data bytes, a power of two
//     4    maxSubscribers u32      creator      slots in the table below
//     8    policy u32              creator      POLICY_LOSSLESS or POLICY_LOSSY
//     12   history u32            creator      the newest `history` records are never reclaimed (late joiners)
//     16…127 reserved
//     128  tailPosition u64        publisher    bytes ever published
//     136  tailSeq u64             publisher    sequence number the next record gets (records count from 0)
//     144  headPosition u64        publisher    oldest record still in the ring
//     152  headSeq u64             publisher    its sequence number
//     160  wakeSeq u32             publisher    bumped when records are published while someone sleeps (futex)
//     164  reserved u32
//     168  publisherStart u64      publisher    full start time of the claimant, for tools (written after the claim)
//     176  publisherClosed u32     publisher    1 once the publisher is gone for good
//     180  reclaimGen u32          publisher    odd while the publisher moves head (a seqlock readers read around)
//     184  publisherParked u32     publisher    1 while a lossless publisher waits for the slowest subscriber
//     188  reserved u32
//     192  publisherClaim u64      claim word   0 when no publisher; else a claim (below), taken by compare-and-swap
//                                               from 0 or from a claim whose process is dead
//     200…255 reserved
//     256  sleepers u32            subscribers  how many subscribers are parked (atomic add/sub by each)
//     260  spaceWake u32           subscribers  bumped (atomic add) by a subscriber that frees room for a parked publisher
//     264…383 reserved
//   128+384  subscriber slots, maxSubscribers × TOPIC_SLOT_SIZE:
//     0    claim u64               claim word   0 = free; a claim by a joining subscriber (compare-and-swap from 0);
//                                               back to 0 by its owner, or by the publisher evicting a dead owner
//                                               (compare-and-swap from the exact claim it found dead)
//     8    startTime u64           subscriber   full start time, for tools (written after the claim)
//     16   cursorPosition u64      subscriber   next byte to read; the lossless publisher never passes it
//     24   cursorSeq u64           subscriber   sequence number of that record
//     32   dropped u64             subscriber   records lost to lapping (lossy), a counter for tools
//     40   parked u32              subscriber   1 while counted in sleepers (so an evictor can uncount it)
//     44…127 reserved
//   then data[capacity]: records with a 16-byte header:
//     0 length i32 · 4 type u32 (0 = padding) · 8 seq u64 · payload · pad to 16
//
//   A claim is one 64-bit word: pid in the low 32 bits, the low 32 bits of the process's start time (clock ticks
//   since boot, /proc/<pid>/stat field 22) in the high 32 bits. Taking a slot is a single compare-and-swap of that
//   word, so two claimants can never both win, and "is the holder alive" is decided from the word alone (pid
//   alive and its start time matches), never from a start time written after the claim.
/** "SHT2" in memory order (layout 1.0 topics were "SHBT"). */
export const TOPIC_MAGIC = 0x32544853;
export const TOPIC_HEADER_OFFSET = SEGMENT_HEADER_SIZE;
export const TOPIC_CAPACITY_OFFSET = 0;
export const TOPIC_MAX_SUBSCRIBERS_OFFSET = 4;
export const TOPIC_POLICY_OFFSET = 8;
export const TOPIC_HISTORY_OFFSET = 12;
export const TOPIC_TAIL_OFFSET = 128;
export const TOPIC_TAIL_SEQ_OFFSET = 136;
export const TOPIC_HEAD_OFFSET = 144;
export const TOPIC_HEAD_SEQ_OFFSET = 152;
export const TOPIC_WAKE_OFFSET = 160;
export const TOPIC_PUBLISHER_START_OFFSET = 168;
export const TOPIC_PUBLISHER_CLOSED_OFFSET = 176;
export const TOPIC_RECLAIM_GEN_OFFSET = 180;
export const TOPIC_PUBLISHER_PARK_OFFSET = 184;
export const TOPIC_PUBLISHER_CLAIM_OFFSET = 192;
export const TOPIC_SLEEPERS_OFFSET = 256;
export const TOPIC_SPACE_WAKE_OFFSET = 260;
export const TOPIC_HEADER_SIZE = 384;
export const TOPIC_SLOT_SIZE = 128;
export const SLOT_CLAIM_OFFSET = 0;
export const SLOT_START_OFFSET = 8;
export const SLOT_CURSOR_OFFSET = 16;
export const SLOT_CURSOR_SEQ_OFFSET = 24;
export const SLOT_DROPPED_OFFSET = 32;
export const SLOT_PARKED_OFFSET = 40;
/** A claim word's value when nobody holds it. */
export const CLAIM_FREE = 0;
export const POLICY_LOSSLESS = 0;
export const POLICY_LOSSY = 1;
export const TOPIC_MAX_SUBSCRIBERS = 256;
export const BC_RECORD_HEADER_SIZE = 16;
export const BC_RECORD_SEQ_OFFSET = 8;
/** Topic records (and positions) are 16-byte aligned: the smallest gap at the end of the data holds a header. */
export const BC_RECORD_ALIGNMENT = 16;
/** ring_read-style batch entries for topics: address, length, type, seq (low 32 bits). */
export const BC_BATCH_ENTRY_SIZE = 16;

/** Largest payload a topic of `capacity` accepts. */
export function topicMaxPayload(capacity: u32): u32 {
  return (capacity >>> 1) - BC_RECORD_HEADER_SIZE;
}

/** Offset of the data in a topic segment. */
export function topicDataOffset(maxSubscribers: u32): u32 {
  return TOPIC_HEADER_OFFSET + TOPIC_HEADER_SIZE + maxSubscribers * TOPIC_SLOT_SIZE;
}

/** Bytes a topic segment needs, rounded up to whole pages. */
export function topicBytes(maxSubscribers: u32, capacity: u32): u32 {
  return ((topicDataOffset(maxSubscribers) + capacity + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) >>> 0;
}

// ─── Bus registry segment ─────────────────────────────────────────────────────────────────────────────────
// The same 128-byte segment header (magic REGISTRY_MAGIC, ringCount = topic entries, ringCapacity = member
// slots), then REGISTRY_MEMBERS member slots, then REGISTRY_TOPICS topic entries.
//
//   member slot (REGISTRY_MEMBER_SIZE = 16):
//   0                 8                 16
//   ┌─────────────────┬─────────────────┐
//   │ claim u64       │ startTime u64   │
//   └─────────────────┴─────────────────┘
//   claim      claim word: 0 free; a claim (see "Topic segment") by a joining process, compare-and-swap from 0 or
//              from a claim whose process is dead; back to 0 by its owner (compare-and-swap from its own claim)
//   startTime  the member's full start time, for tools (written after the claim; never used to decide liveness)
//
//   topic entry (REGISTRY_ENTRY_SIZE = 128):
//   0        4        8        12       16       20       24       28       32                               128
//   ┌────────┬────────┬────────┬────────┬────────┬────────┬────────┬────────┬────────────────────────────────┐
//   │ state  │nameLen │capacity│maxSubs │ policy │history │creatPid│reserved│ name (UTF-8, nameLen ≤ 96)     │
//   └────────┴────────┴────────┴────────┴────────┴────────┴────────┴────────┴────────────────────────────────┘
//   state u32   claim word: ENTRY_FREE → ENTRY_WRITING (compare-and-swap by the creator) → ENTRY_READY (store by
//               the creator once every other field is written). Everything else is written by the creator only.
//   A reader treats every field as untrusted: nameLen past REGISTRY_NAME_MAX or a name that is not a valid topic
//   name is skipped.
/** "SHR2" in memory order (layout 1.0 registries were "SHBR"). */
export const REGISTRY_MAGIC = 0x32524853;
export const REGISTRY_MEMBERS = 256;
export const MEMBER_CLAIM_OFFSET = 0;
export const MEMBER_START_OFFSET = MEMBER_CLAIM_OFFSET + 8;
export const REGISTRY_MEMBER_SIZE = MEMBER_START_OFFSET + 8;
export const REGISTRY_TOPICS = 256;
export const ENTRY_STATE_OFFSET = 0;
export const ENTRY_NAME_LENGTH_OFFSET = ENTRY_STATE_OFFSET + 4;
export const ENTRY_CAPACITY_OFFSET = ENTRY_NAME_LENGTH_OFFSET + 4;
export const ENTRY_MAX_SUBSCRIBERS_OFFSET = ENTRY_CAPACITY_OFFSET + 4;
export const ENTRY_POLICY_OFFSET = ENTRY_MAX_SUBSCRIBERS_OFFSET + 4;
export const ENTRY_HISTORY_OFFSET = ENTRY_POLICY_OFFSET + 4;
export const ENTRY_CREATOR_PID_OFFSET = ENTRY_HISTORY_OFFSET + 4;
export const REGISTRY_NAME_OFFSET = ENTRY_CREATOR_PID_OFFSET + 8;
export const REGISTRY_NAME_MAX = 96;
export const REGISTRY_ENTRY_SIZE = REGISTRY_NAME_OFFSET + REGISTRY_NAME_MAX;
export const ENTRY_FREE = 0;
export const ENTRY_WRITING = 1;
export const ENTRY_READY = 2;

/** Offset of member slot `index` in a registry segment. */
export function memberOffset(index: u32): u32 {
  return SEGMENT_HEADER_SIZE + index * REGISTRY_MEMBER_SIZE;
}

/** Offset of topic entry `index` in a registry segment. */
export function entryOffset(index: u32): u32 {
  return SEGMENT_HEADER_SIZE + REGISTRY_MEMBERS * REGISTRY_MEMBER_SIZE + index * REGISTRY_ENTRY_SIZE;
}

export function registryBytes(topics: u32, members: u32): u32 {
  return ((SEGMENT_HEADER_SIZE + members * REGISTRY_MEMBER_SIZE + topics * REGISTRY_ENTRY_SIZE + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) >>> 0;
}

// ─── Plugin (guest) rings and codec ───────────────────────────────────────────────────────────────────────
// A plugin is an AssemblyScript module (assembly/guest/ is its SDK) that talks to its host through one channel
// segment in exactly the format above (header, then CHANNEL_RING_COUNT rings), mapped onto a region of the
// plugin's OWN linear memory. The plugin's memory is imported (`env.memory`, shared), so the host sets its limit.
//
//   plugin linear memory
//   0 … heap            static data, the plugin's stack and heap (the AssemblyScript runtime owns it)
//   region              GUEST_REGION_ALIGN aligned, `bytes` long, taken by memory.grow OUTSIDE the runtime's heap:
//     region + 0          segment header (SEGMENT_MAGIC, ringCount = 2, ringCapacity = capacity)
//     region + ringOffset(GUEST_RING_IN, capacity)    host → plugin (host produces, plugin consumes)
//     region + ringOffset(GUEST_RING_OUT, capacity)   plugin → host (plugin produces, host consumes)
//
// Handshake (every step a call of a plugin export, always by the host's runner of that plugin):
//   1. shmbus_reserve(bytes) → address: the plugin grows its memory by whole wasm pages and returns the region's
//      address (a multiple of GUEST_REGION_ALIGN), or 0 when its memory cannot grow. Asking again with the same or
//      fewer bytes returns the same address. This is how the plugin tells the host where its rings live.
//   2. The host creates the segment (a sealed memfd), formats it (formatSegment), and maps it MAP_FIXED over
//      [address, address + bytes) of the plugin's memory (or formats it there directly when it runs the plugin in
//      its own thread over memory it can see); `bytes` is segmentBytes(2, capacity), a multiple of PAGE_SIZE.
//   3. shmbus_attach(address, bytes) → RING_OK or a RING_E_* / GUEST_E_* code: the plugin checks the header (magic,
//      major version, ring count, that the rings fit in `bytes`) and opens its two ends.
//   4. shmbus_poll(max) → records handled (≥ 0) or a negative code: the plugin first retries what waits in its
//      private outbox (ring OUT was full), then reads up to `max` records from ring IN, runs the handlers, releases
//      them. The runner calls it when ring IN has records or ring OUT gained room (shmbus_outbox() > 0).
//   5. shmbus_wakes() → GUEST_WAKE_* bits: whether the host's end of either ring parked and must be rung (the
//      plugin cannot make system calls; its runner rings the doorbell).
// Record types on the rings: RECORD_MSGPACK (send), RECORD_REQUEST / RECORD_REPLY / RECORD_REPLY_ERROR as on any
// channel, plus GUEST_RECORD_PUBLISH (msgpack [topic, value], only topics the host granted are honoured) and
// GUEST_RECORD_LOG (msgpack [level, text]).
export const GUEST_RING_IN = RING_TO_CONNECTOR;
export const GUEST_RING_OUT = RING_TO_LISTENER;
/** The region is aligned to whole wasm pages (a multiple of PAGE_SIZE, as mmap needs). */
export const GUEST_REGION_ALIGN = WASM_PAGE_SIZE;
/** Default data capacity of each guest ring: messages up to maxPayload (1 MiB - 8 bytes) each way. */
export const GUEST_RING_CAPACITY = 1 << 21;
/** Records shmbus_poll reads per call at most. */
export const GUEST_BATCH_MAX = 256;
/** Bytes a plugin keeps in its private outbox while ring OUT is full; past it send/reply/publish fail. */
export const GUEST_OUTBOX_MAX = 1 << 24;
export const GUEST_RECORD_PUBLISH = 16;
export const GUEST_RECORD_LOG = 17;
/** Host → plugin, the first record on ring IN when `env` is given: msgpack map of string → string. */
export const GUEST_RECORD_ENV = 18;
export const GUEST_LOG_DEBUG = 0;
export const GUEST_LOG_INFO = 1;
export const GUEST_LOG_WARN = 2;
export const GUEST_LOG_ERROR = 3;
/** shmbus_wakes bits: the host's consumer of ring OUT is parked and has records; its producer of ring IN has room. */
export const GUEST_WAKE_OUT = 1;
export const GUEST_WAKE_IN = 2;
/** shmbus_attach / shmbus_poll results beyond RING_E_*. */
export const GUEST_E_SEGMENT = -16; // the segment header is wrong (magic, version, ring count, size)
export const GUEST_E_NOT_ATTACHED = -17; // shmbus_poll before a successful shmbus_attach
export const GUEST_E_OUTBOX_FULL = -18; // send/reply/publish while GUEST_OUTBOX_MAX bytes already wait
export const GUEST_E_TOO_LARGE = -19; // a message larger than maxPayload(capacity)
export const GUEST_E_STATE = -20; // reply to a message, or a second reply to one request

// Results of the guest msgpack codec (assembly/guest/msgpack.ts): 0 is success, each failure its own code.
export const MSGPACK_OK = 0;
/** The input ended inside a value (a header or a fixed-size number cut short). */
export const MSGPACK_E_TRUNCATED = -1;
/** 0xc1 (never used), or a type other than the typed reader asked for. */
export const MSGPACK_E_TYPE = -2;
/** A string, binary, ext, array or map declares more bytes or items than the input still holds. */
export const MSGPACK_E_LENGTH = -3;
/** Arrays and maps nested deeper than the reader's depth limit. */
export const MSGPACK_E_DEPTH = -4;
/** A string, binary, ext or container larger than the reader's size limit. */
export const MSGPACK_E_LIMIT = -5;
/** A string that is not valid UTF-8. */
export const MSGPACK_E_UTF8 = -6;
/** A number that does not fit the typed reader's type (readU32 of -1, readI64 of 2^63). */
export const MSGPACK_E_RANGE = -7;
/** Bytes left after the one value the input should hold. */
export const MSGPACK_E_TRAILING = -8;
/** Default limits of a Reader: nesting depth, and bytes or items of one string, binary, ext or container. */
export const MSGPACK_MAX_DEPTH = 64;
export const MSGPACK_MAX_SIZE = 1 << 26;

// ─── Topic batch entries and topic handles (private to one process) ───────────────────────────────────────
// topic_read fills a reader's batch area with BC_BATCH_ENTRY_SIZE-byte entries, one per record:
//   0        4        8        12       16
//   ┌────────┬────────┬────────┬────────┐
//   │address │ length │  type  │seq low │   address: the payload in this process's memory; seq: low 32 bits
//   └────────┴────────┴────────┴────────┘
export const BC_BATCH_ADDRESS_OFFSET = 0;
export const BC_BATCH_LENGTH_OFFSET = BC_BATCH_ADDRESS_OFFSET + 4;
export const BC_BATCH_TYPE_OFFSET = BC_BATCH_LENGTH_OFFSET + 4;
export const BC_BATCH_SEQ_OFFSET = BC_BATCH_TYPE_OFFSET + 4;

// A topic handle (one publisher or subscriber end, HANDLE_SIZE bytes in PRIVATE_BASE space), written only by the
// wasm code of the process that owns it:
//   0  topic u32       address of the topic header          40  position u64   publisher: tail; subscriber: next read
//   4  capacity u32                                         48  seq u64        publisher: next seq; subscriber: expected
//   8  maxSubs u32                                          56  head u64       publisher: head  (subscriber: scratch tail)
//   12 policy u32                                           64  headSeq u64    publisher: head's seq (subscriber: scratch tailSeq)
//   16 history u32                                          72  min u64        publisher: last minimum of the cursors (lossless)
//   20 slot u32        subscriber: address of its slot      80  dropped u64    subscriber: records lost to lapping
//   24 claim u32       publisher: payload of the open claim 88  slotIndex u32  subscriber: its slot number
//   28 claimMax u32                                         96  claimWord u64  subscriber: the claim it holds its slot with
//   32 claimType u32                                        104 scratchPos u64, 112 scratchSeq u64, 120 scratchGen u32:
//   36 waitValue u32   the word's value read before parking     results of snapshot / walk
export const TH_TOPIC_OFFSET = 0;
export const TH_CAPACITY_OFFSET = TH_TOPIC_OFFSET + 4;
export const TH_MAX_SUBS_OFFSET = TH_CAPACITY_OFFSET + 4;
export const TH_POLICY_OFFSET = TH_MAX_SUBS_OFFSET + 4;
export const TH_HISTORY_OFFSET = TH_POLICY_OFFSET + 4;
export const TH_SLOT_OFFSET = TH_HISTORY_OFFSET + 4;
export const TH_CLAIM_OFFSET = TH_SLOT_OFFSET + 4;
export const TH_CLAIM_MAX_OFFSET = TH_CLAIM_OFFSET + 4;
export const TH_CLAIM_TYPE_OFFSET = TH_CLAIM_MAX_OFFSET + 4;
export const TH_WAIT_VALUE_OFFSET = TH_CLAIM_TYPE_OFFSET + 4;
export const TH_POSITION_OFFSET = TH_WAIT_VALUE_OFFSET + 4;
export const TH_SEQ_OFFSET = TH_POSITION_OFFSET + 8;
export const TH_HEAD_OFFSET = TH_SEQ_OFFSET + 8;
export const TH_HEAD_SEQ_OFFSET = TH_HEAD_OFFSET + 8;
export const TH_MIN_OFFSET = TH_HEAD_SEQ_OFFSET + 8;
export const TH_DROPPED_OFFSET = TH_MIN_OFFSET + 8;
export const TH_SLOT_INDEX_OFFSET = TH_DROPPED_OFFSET + 8;
export const TH_CLAIM_WORD_OFFSET = TH_SLOT_INDEX_OFFSET + 8;
export const TH_SCRATCH_POS_OFFSET = TH_CLAIM_WORD_OFFSET + 8;
export const TH_SCRATCH_SEQ_OFFSET = TH_SCRATCH_POS_OFFSET + 8;
export const TH_SCRATCH_GEN_OFFSET = TH_SCRATCH_SEQ_OFFSET + 8;
/** A subscriber has no head: snapshot keeps the tail it saw in the publisher's head fields. */
export const TH_SCRATCH_TAIL_OFFSET = TH_HEAD_OFFSET;
export const TH_SCRATCH_TAIL_SEQ_OFFSET = TH_HEAD_SEQ_OFFSET;
/** Topic record header fields (drawn in "Topic segment": length i32 · type u32 · seq u64). */
export const BC_RECORD_LENGTH_OFFSET = 0;
export const BC_RECORD_TYPE_OFFSET = BC_RECORD_LENGTH_OFFSET + 4;

// --- ring counters for tools -----------------------------------------------------------------------------------
// Two counters in words of the ring header that were reserved (zero in rings written by older builds), on the
// cache line each side already writes: `shmbus stat` turns them into messages per second and messages waiting.
// Each costs its writer one plain load and store per commit or per read batch, no atomic and no system call.

/** u64, producer: records ever committed (ring_commit). */
export const RING_COMMITTED_RECORDS_OFFSET = 152;
/** u64, consumer: records ever handed to the reader (ring_read, padding excluded). */
export const RING_READ_RECORDS_OFFSET = 280;

/** u32, consumer: 1 + the core the reader last started a spin on (0: unknown; zero in rings of older builds). A
 * hint only, read by the peer's spin to notice that both spinners share one core (transports/shm/channel.ts
 * spinFor); a wrong value costs the peer a few yields, nothing else. */
export const RING_CONSUMER_CPU_OFFSET = 276;

// ─── Shared state and lock segments (state/: SharedState, Mutex, Semaphore) ─────────────────────────────────
// Three kinds share one 128-byte header of their own (not the ring header: no ring geometry), told apart by the
// magic. All integers little-endian.
//
//   0        4        8        12       16                24       28       32                40       44    128
//   ┌────────┬────────┬────────┬────────┬─────────────────┬────────┬────────┬─────────────────┬────────┬─────┐
//   │ magic  │version │ shape  │hdrSize │ segmentSize u64 │creatPid│reserved│ creatStart u64  │ param  │ 0 … │
//   └────────┴────────┴────────┴────────┴─────────────────┴────────┴────────┴─────────────────┴────────┴─────┘
//   Every header word is written by the creator only, `version` last (an atomic store). An opener checks magic,
//   major version, header size, shape and param against what it expects and that the segment holds the body.
//   shape  state: FNV-1a hash of the field list ("name:type\n" per field, in order); mutex: 1; semaphore: units
//   param  state: bytes of one copy of the fields (the block); mutex, semaphore: 0
//
// Lock body (Mutex: one unit; Semaphore: `shape` units, at most SYNC_MAX_UNITS):
//   128  releases u32        any holder   bumped after every release; the futex word waiters sleep on
//   132  waiters u32         any waiter   processes (asleep or about to be) in a futex wait on `releases`; a
//                                         releaser makes the FUTEX_WAKE system call only when it is non-zero
//   136 … 255 reserved
//   256  unit claim words, u64 each: a claim word (see "Topic segment": pid | low 32 bits of start time << 32),
//        0 = free. Taken by compare-and-swap from 0, or from a claim whose process is dead (that taker reports
//        `recovered`); given back by its holder with a compare-and-swap from its own claim to 0.
//
// State body:
//   128  seq u32             writer       2·version while stable, odd while the writer copies; futex word of watch()
//   132  watchers u32        any watcher  processes in a futex wait on `seq`; the writer wakes only when non-zero
//   136 … 191 reserved
//   192  writer claim u64    writers      claim word serialising writers (taken from a dead writer too)
//   200 … 255 reserved
//   256  copy 0 of the block, then copy 1 at 256 + block rounded up to 8. Version v lives in copy (v & 1).
//   A writer turning version v into v+1 stores seq = 2v+1, copies copy (v & 1) over copy ((v+1) & 1), changes
//   that one, then stores seq = 2v+2. A reader that saw seq s reads copy ((s >> 1) & 1), which no writer touches
//   until seq passes (s & ~1) + 2: a torn read is detected by rereading seq, and a writer that died mid-update
//   leaves the previous version complete in its copy.
//   Field i sits at an 8-aligned offset in the block: u32, i32, bool (u32 0/1) take 4 bytes; u64, i64, f64 take 8;
//   string:N and bytes:N take a u32 length (≤ N, untrusted: a reader bounds it) then N bytes.
/** "SHS1" in memory order. */
export const STATE_MAGIC = 0x31534853;
/** "SHX1". */
export const MUTEX_MAGIC = 0x31584853;
/** "SHN1". */
export const SEMAPHORE_MAGIC = 0x314e4853;
export const SYNC_LAYOUT_VERSION_MAJOR = 1;
export const SYNC_LAYOUT_VERSION_MINOR = 0;
export const SYNC_LAYOUT_VERSION = (SYNC_LAYOUT_VERSION_MAJOR << 16) | SYNC_LAYOUT_VERSION_MINOR;
export const SYNC_MAGIC_OFFSET = 0;
export const SYNC_VERSION_OFFSET = SYNC_MAGIC_OFFSET + 4;
export const SYNC_SHAPE_OFFSET = SYNC_VERSION_OFFSET + 4;
export const SYNC_HEADER_SIZE_OFFSET = SYNC_SHAPE_OFFSET + 4;
export const SYNC_SIZE_OFFSET = SYNC_HEADER_SIZE_OFFSET + 4;
export const SYNC_CREATOR_PID_OFFSET = SYNC_SIZE_OFFSET + 8;
export const SYNC_CREATOR_START_OFFSET = SYNC_CREATOR_PID_OFFSET + 8;
export const SYNC_PARAM_OFFSET = SYNC_CREATOR_START_OFFSET + 8;
export const SYNC_HEADER_SIZE = 128;
export const LOCK_RELEASES_OFFSET = SYNC_HEADER_SIZE;
export const LOCK_WAITERS_OFFSET = LOCK_RELEASES_OFFSET + 4;
export const LOCK_UNITS_OFFSET = 256;
export const LOCK_UNIT_SIZE = 8;
/** Most units a Semaphore may have (each is a claim word a waiter may scan). */
export const SYNC_MAX_UNITS = 4096;
export const STATE_SEQ_OFFSET = SYNC_HEADER_SIZE;
export const STATE_WATCHERS_OFFSET = STATE_SEQ_OFFSET + 4;
export const STATE_WRITER_OFFSET = 192;
export const STATE_BLOCK_OFFSET = 256;
/** Largest block of fields (one copy). */
export const STATE_MAX_BLOCK = 1 << 20;
/** Largest N of a string:N or bytes:N field. */
export const STATE_MAX_FIELD_BYTES = 65536;

/** Bytes of a lock segment with `units` units, whole pages. */
export function lockBytes(units: u32): u32 {
  return ((LOCK_UNITS_OFFSET + units * LOCK_UNIT_SIZE + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) >>> 0;
}

/** Offset of copy `which` (0 or 1) of a state block of `block` bytes. */
export function stateCopyOffset(block: u32, which: u32): u32 {
  return STATE_BLOCK_OFFSET + which * ((block + 7) & ~7);
}

/** Bytes of a state segment whose block is `block` bytes, whole pages. */
export function stateBytes(block: u32): u32 {
  return ((stateCopyOffset(block, 2) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) >>> 0;
}

// ─── Fragments: a message larger than one record (issue 11) ─────────────────────────────────────────────────
// A channel whose two sides agreed on a maximum message size above the ring's maxPayload (the handshake's
// `maxMessage`) sends a larger message as consecutive RECORD_FRAGMENT records, nothing else between them. Each
// fragment's payload:
//
//   0      4      8
//   +------+------+---------------------+
//   | type | total| bytes of the message |
//   +------+------+---------------------+
//   type  u32  the whole message's record type (RECORD_BYTES … RECORD_REPLY_ERROR), the same in every fragment
//   total u32  the whole message's length, the same in every fragment; the fragments' bytes add up to it
// written by the producer only; the consumer checks every field against the first fragment and its own maximum.
/** A piece of a message too large for one record. */
export const RECORD_FRAGMENT = 6;
export const FRAGMENT_TYPE_OFFSET = 0;
export const FRAGMENT_TOTAL_OFFSET = 4;
export const FRAGMENT_HEADER_SIZE = 8;

// ─── Values with record structures (issue 10) ────────────────────────────────────────────────────────────────
// A msgpack value written by a msgpackr Packr with `sequential: true`: objects of one shape are records whose
// keys are defined inline the first time (ext 0x72 "r", then the keys) and named by one byte (0x40–0x7f) after
// that, per channel direction, in ring order. Sent by `send` only to a peer that said `records: true` in the
// handshake; the receiver checks every definition and bounds their total (host/codec.ts RecordStructures).
export const RECORD_MSGPACK_RECORDS = 7;

// ─── Task claims of a Pool's worker pair (issue 12, workers/pool.ts) ────────────────────────────────────────
// A pair segment (workers/pair.ts: a channel segment of CHANNEL_RING_COUNT rings) ends in page padding of at least
// 1,152 bytes after its rings (segmentBytes rounds 896 + 2 × capacity up to a page; capacity ≥ 1024). A Pool uses
// the first PAIR_CLAIM_SLOTS × 4 bytes of it as a table of i32 claim words, one per task in flight:
//   word (seq & (PAIR_CLAIM_SLOTS - 1)), seq = the task's number among those sent to this worker (1, 2, … wrapping
//   after PAIR_CLAIM_SEQ_MAX, a multiple of PAIR_CLAIM_SLOTS, so consecutive numbers use consecutive words)
//     seq                      parent      written before the task is sent: not started
//     seq | PAIR_CLAIM_STARTED worker      compare-and-swap from seq just before the task runs
//     0                        parent      compare-and-swap from seq: taken back (the worker skips the task)
// The parent keeps fewer than PAIR_CLAIM_SLOTS of a worker's tasks unanswered, so a word is reused only for a task
// whose predecessor in it was answered or taken back.
export const PAIR_CLAIM_SLOTS = 256;
export const PAIR_CLAIM_STARTED = 0x40000000;
export const PAIR_CLAIM_SEQ_MAX = 0x3fffff00;

/** Offset of the claim table in a pair segment whose rings have `capacity` data bytes. */
export function pairClaimsOffset(capacity: u32): u32 {
  return ringOffset(CHANNEL_RING_COUNT, capacity);
}
