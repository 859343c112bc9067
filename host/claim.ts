/**
 * Claim words: one 64-bit word in shared memory that says which process holds a slot (a bus member slot, a
 * topic's publisher, a topic subscriber slot). Layout in assembly/layout.ts ("A claim is one 64-bit word"):
 * pid in the low 32 bits, the low 32 bits of the process's start time in the high 32 bits, 0 when free.
 *
 * Taking a slot is one compare-and-swap of the whole word, from 0 or from a claim whose process is dead, so two
 * claimants never both win: the old scheme (CAS the pid, then store the start time) let a second claimant see
 * the new pid with the old start time, judge it dead and take the slot too.
 */
import { CLAIM_FREE } from '../assembly/layout.js';
import { isProcessAlive, processStartTime } from './sys/proc.js';

const LOW32 = 0xffffffffn;

/** The claim this process (pid, start time) writes. */
export function claimOf(pid: number, start: bigint | undefined): bigint {
  return BigInt(pid >>> 0) | (((start ?? 0n) & LOW32) << 32n);
}

let own: bigint | undefined;
/** This process's claim. */
export function ownClaim(): bigint {
  own ??= claimOf(process.pid, processStartTime(process.pid));
  return own;
}

export function claimPid(claim: bigint): number {
  return Number(claim & LOW32);
}

export function claimStartLow(claim: bigint): number {
  return Number((claim >> 32n) & LOW32);
}

/**
 * Whether the process that wrote `claim` still runs: its pid is alive and its start time matches (a reused pid
 * has another start time). A claim without a start time (0: /proc unreadable) is judged by the pid alone.
 */
export function claimAlive(claim: bigint): boolean {
  if (claim === BigInt(CLAIM_FREE)) return false;
  const pid = claimPid(claim);
  if (!isProcessAlive(pid)) return false;
  const startLow = claimStartLow(claim);
  if (startLow === 0) return true;
  const start = processStartTime(pid);
  return start === undefined || Number(start & LOW32) === startLow;
}

/**
 * Tries to take the claim word at index `word` of `words`: from free, or from a dead holder. Returns true when
 * this call won it. `alive` decides liveness (tests substitute it).
 */
export function takeClaim(words: BigUint64Array, word: number, mine: bigint, alive: (claim: bigint) => boolean = claimAlive): boolean {
  // SYNC: pairs with the compare-and-swap of every other claimant and of the holder releasing it.
  const current = Atomics.load(words, word);
  if (current !== BigInt(CLAIM_FREE) && (current === mine || alive(current))) return false;
  return Atomics.compareExchange(words, word, current, mine) === current;
}

/** Gives the claim back if it is still `mine` (an evictor may have taken it). */
export function dropClaim(words: BigUint64Array, word: number, mine: bigint): boolean {
  // SYNC: pairs with the compare-and-swap in takeClaim.
  return Atomics.compareExchange(words, word, mine, BigInt(CLAIM_FREE)) === mine;
}
