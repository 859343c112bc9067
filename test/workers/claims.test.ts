// The task claim table of a Pool's pair (assembly/layout.ts, "Task claims") fits in the page padding after the two
// rings for every ring size, and its numbering wraps onto consecutive words.
import t from 'tap';
import { CHANNEL_RING_COUNT, PAIR_CLAIM_SEQ_MAX, PAIR_CLAIM_SLOTS, PAIR_CLAIM_STARTED, RING_MAX_CAPACITY, RING_MIN_CAPACITY, pairClaimsOffset, ringOffset, segmentBytes } from '../../assembly/layout.js';

t.test('the claim table fits after the rings', async (t) => {
  for (let capacity = RING_MIN_CAPACITY; capacity <= RING_MAX_CAPACITY; capacity *= 2) {
    const at = pairClaimsOffset(capacity);
    t.ok(at >= ringOffset(CHANNEL_RING_COUNT, capacity), `${capacity}: after the rings`);
    t.equal(at % 4, 0, `${capacity}: aligned`);
    t.ok(at + PAIR_CLAIM_SLOTS * 4 <= segmentBytes(CHANNEL_RING_COUNT, capacity), `${capacity}: inside the segment`);
  }
});

t.test('numbers', async (t) => {
  t.equal(PAIR_CLAIM_SEQ_MAX % PAIR_CLAIM_SLOTS, 0, 'wrapping keeps consecutive numbers on consecutive words');
  t.ok(PAIR_CLAIM_SEQ_MAX < PAIR_CLAIM_STARTED, 'a number never has the started bit');
  t.equal(PAIR_CLAIM_SLOTS & (PAIR_CLAIM_SLOTS - 1), 0, 'a power of two');
});
