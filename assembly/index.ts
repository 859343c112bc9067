// The wasm module's exports: the ring operations the host calls. The module owns no state of its own; every
// function works on addresses the host passes (handles in private memory, rings in mapped windows).
export {
  ring_format, ring_open, ring_claim, ring_commit, ring_abort, ring_free, ring_read, ring_release, ring_pending,
  ring_park, ring_unpark, ring_needs_wake, ring_close, ring_peer_closed, ring_wait_address, ring_wait_value,
  ring_wake_address, ring_start_small, ring_populated, ring_grow_limit, ring_capacity, ring_resize_done, ring_shrink,
  ring_unpopulated, ring_claim_many, ring_commit_many, ring_commit_quiet,
} from './ring';
export {
  topic_format, topic_open_publisher, topic_claim, topic_commit, topic_abort, topic_slowest, topic_evict,
  topic_close_publisher, topic_publisher_park, topic_publisher_unpark, topic_join, topic_leave, topic_member,
  topic_read, topic_oldest_seq, topic_add_dropped, topic_dropped, topic_release, topic_pending,
  topic_publisher_closed, topic_park, topic_unpark, topic_wait_address, topic_wait_value, topic_slot,
} from './broadcast';
