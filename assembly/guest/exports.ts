// The entry points the host calls; every plugin re-exports them from its entry file:
//   export * from '<shmbus>/assembly/guest/exports';
// The handshake and each call's contract are in ../layout.ts ("Plugin (guest) rings and codec").
import { reserve, attach, poll, outboxSize, takeWakes } from './index';

/** Step 1: reserves `bytes` of this module's memory for the ring segment; its address, or 0. */
export function shmbus_reserve(bytes: u32): usize { return reserve(bytes); }

/** Step 3: checks the segment at `address` and opens both rings: RING_OK or a negative code. */
export function shmbus_attach(address: usize, bytes: u32): i32 { return attach(address, bytes); }

/** Step 4: handles up to `max` records from the host: how many, or a negative code. */
export function shmbus_poll(max: u32): i32 { return poll(max); }

/** Bytes waiting in this module's outbox for room in ring OUT (poll again once the host has read). */
export function shmbus_outbox(): u32 { return outboxSize(); }

/** Step 5: GUEST_WAKE_* bits since the last call: which of the host's ring ends parked and must be rung. */
export function shmbus_wakes(): u32 { return takeWakes(); }
