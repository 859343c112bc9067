// The wasm module's exports: the ring operations the host calls. The module owns no state of its own; every
// function works on addresses the host passes (handles in private memory, rings in mapped windows).
export {
  ring_format, ring_open, ring_claim, ring_commit, ring_abort, ring_free, ring_read, ring_release, ring_pending,
  ring_park, ring_unpark, ring_needs_wake, ring_close, ring_peer_closed, ring_wait_address, ring_wait_value,
  ring_wake_address,
} from './ring';
