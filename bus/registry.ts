/**
 * The bus registry segment (drawn in assembly/layout.ts, "Bus registry segment"): member slots, each a claim word,
 * and topic entries. Every field is written by one member and read by all, so every read is bounded.
 */
import {
  REGISTRY_MEMBERS, REGISTRY_TOPICS, REGISTRY_NAME_OFFSET, REGISTRY_NAME_MAX, ENTRY_FREE, ENTRY_WRITING, ENTRY_READY,
  MEMBER_CLAIM_OFFSET, MEMBER_START_OFFSET, ENTRY_STATE_OFFSET, ENTRY_NAME_LENGTH_OFFSET, ENTRY_CAPACITY_OFFSET,
  ENTRY_MAX_SUBSCRIBERS_OFFSET, ENTRY_POLICY_OFFSET, ENTRY_HISTORY_OFFSET, ENTRY_CREATOR_PID_OFFSET, POLICY_LOSSY,
  POLICY_LOSSLESS, memberOffset, entryOffset,
} from '../assembly/layout.js';
import type { Engine } from '../host/engine.js';
import { claimAlive, dropClaim, ownClaim, takeClaim } from '../host/claim.js';
import type { Policy } from '../host/topic.js';
import { processStartTime } from '../host/sys/proc.js';
import { ErrorCode, ShmbusError } from '../host/errors.js';
import { TOPIC_NAME } from './naming.js';

/** A topic as its registry entry describes it. */
export interface TopicEntry { name: string; capacity: number; policy: Policy; history: number; maxSubscribers: number }

/** The registry's member claim words (as BigUint64Array indexes) and full start times. */
function memberWord(at: number, index: number): number {
  return (at + memberOffset(index) + MEMBER_CLAIM_OFFSET) / 8;
}

export function joinMembers(engine: Engine, at: number): number {
  const words = new BigUint64Array(engine.memory.buffer);
  const view = new DataView(engine.memory.buffer);
  const mine = ownClaim();
  for (let i = 0; i < REGISTRY_MEMBERS; i++) {
    // A free slot, or a dead member's, is taken by one compare-and-swap of the whole claim (host/claim.ts).
    if (takeClaim(words, memberWord(at, i), mine)) {
      view.setBigUint64(at + memberOffset(i) + MEMBER_START_OFFSET, processStartTime(process.pid) ?? 0n, true);
      return i;
    }
  }
  throw new ShmbusError(ErrorCode.LIMIT, 'the bus has no free member slot', { details: { max: REGISTRY_MEMBERS } });
}

export function leaveMembers(engine: Engine, at: number, index: number): void {
  dropClaim(new BigUint64Array(engine.memory.buffer), memberWord(at, index), ownClaim());
}

export function liveMembers(engine: Engine, at: number): number {
  const words = new BigUint64Array(engine.memory.buffer);
  let n = 0;
  for (let i = 0; i < REGISTRY_MEMBERS; i++) {
    // SYNC: pairs with the compare-and-swap in takeClaim / dropClaim.
    if (claimAlive(Atomics.load(words, memberWord(at, i)))) n++;
  }
  return n;
}

export function registerTopic(engine: Engine, at: number, name: string, g: { capacity: number; policy: Policy; history: number; maxSubscribers: number }): void {
  const words = new Int32Array(engine.memory.buffer);
  const view = new DataView(engine.memory.buffer);
  const bytes = Buffer.from(name, 'utf8');
  if (readEntries(engine, at).some((e) => e.name === name)) return;
  for (let i = 0; i < REGISTRY_TOPICS; i++) {
    const e = at + entryOffset(i);
    // SYNC: the claim word; pairs with the loads in readEntries (an entry is read only once READY).
    if (Atomics.compareExchange(words, (e + ENTRY_STATE_OFFSET) >>> 2, ENTRY_FREE, ENTRY_WRITING) !== ENTRY_FREE) continue;
    view.setUint32(e + ENTRY_NAME_LENGTH_OFFSET, bytes.length, true);
    view.setUint32(e + ENTRY_CAPACITY_OFFSET, g.capacity, true);
    view.setUint32(e + ENTRY_MAX_SUBSCRIBERS_OFFSET, g.maxSubscribers, true);
    view.setUint32(e + ENTRY_POLICY_OFFSET, g.policy === 'lossy' ? POLICY_LOSSY : POLICY_LOSSLESS, true);
    view.setUint32(e + ENTRY_HISTORY_OFFSET, g.history, true);
    view.setUint32(e + ENTRY_CREATOR_PID_OFFSET, process.pid, true);
    engine.u8.set(bytes, e + REGISTRY_NAME_OFFSET);
    Atomics.store(words, (e + ENTRY_STATE_OFFSET) >>> 2, ENTRY_READY);
    return;
  }
  throw new ShmbusError(ErrorCode.LIMIT, 'the bus registry is full', { details: { maxTopics: REGISTRY_TOPICS } });
}

/**
 * The READY entries of the registry. Every field is untrusted (any member can write the registry): an entry whose
 * name is too long or is not a valid topic name is skipped, so no path is ever built from it.
 */
export function readEntries(engine: Engine, at: number): { name: string; capacity: number; policy: Policy; history: number; maxSubscribers: number }[] {
  const words = new Int32Array(engine.memory.buffer);
  const view = new DataView(engine.memory.buffer);
  const out = [];
  for (let i = 0; i < REGISTRY_TOPICS; i++) {
    const e = at + entryOffset(i);
    // SYNC: pairs with the Atomics.store of ENTRY_READY in registerTopic.
    if (Atomics.load(words, (e + ENTRY_STATE_OFFSET) >>> 2) !== ENTRY_READY) continue;
    const length = view.getUint32(e + ENTRY_NAME_LENGTH_OFFSET, true);
    if (length > REGISTRY_NAME_MAX) continue; // a corrupt entry is skipped, never read past
    const name = Buffer.from(engine.u8.subarray(e + REGISTRY_NAME_OFFSET, e + REGISTRY_NAME_OFFSET + length)).toString('utf8');
    if (!TOPIC_NAME.test(name)) continue;
    out.push({
      name,
      capacity: view.getUint32(e + ENTRY_CAPACITY_OFFSET, true),
      maxSubscribers: view.getUint32(e + ENTRY_MAX_SUBSCRIBERS_OFFSET, true),
      policy: (view.getUint32(e + ENTRY_POLICY_OFFSET, true) === POLICY_LOSSY ? 'lossy' : 'lossless') as Policy,
      history: view.getUint32(e + ENTRY_HISTORY_OFFSET, true),
    });
  }
  return out;
}

