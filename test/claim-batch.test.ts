// claimBatch (issue 10, the zero-copy rows): several records of one size claimed at once, written in place and
// published with one store of the ring's tail; the reader checks every record as for any other.
import t from 'tap';
import { listen, connect, ErrorCode, type Channel } from '../index.js';
import { unique, within } from './helpers.js';
import { RECORD_HEADER_SIZE } from '../assembly/layout.js';

async function pair(query = 'size=64KiB'): Promise<{ a: Channel; b: Channel; close: () => Promise<void> }> {
  const url = `shm://${unique('claim-batch')}?${query}` as const;
  const l = await listen(url);
  const [b, a] = await Promise.all([connect(url), l.acceptNext()]);
  return { a: a as unknown as Channel, b: b as unknown as Channel, close: async () => { await a!.close(); await b.close(); await l.close(); } };
}

t.test('claimBatch: records written in place arrive in order, whole, through poll and the iterator', async (t) => {
  const { a, b, close } = await pair();
  const size = 20;
  let sent = 0;
  const total = 10_000;
  const got: number[] = [];
  const reading = (async () => {
    for await (const m of b) {
      const bytes = m as Uint8Array;
      if (bytes.length !== size || bytes[size - 1] !== 0xee) throw new Error(`bad record ${bytes.length}`);
      got.push(bytes[0]! | (bytes[1]! << 8));
      if (got.length === total) break;
    }
  })();
  let batches = 0;
  while (sent < total) {
    const batch = a.claimBatch(size, 300);
    if (batch === null) { await a.drained(); continue; }
    batches++;
    t.ok(batch.count >= 1 && batch.count <= 300, 'count within what was asked');
    t.equal(batch.stride, (size + RECORD_HEADER_SIZE + 7) & ~7);
    const n = Math.min(batch.count, total - sent);
    for (let i = 0; i < n; i++) {
      const at = batch.offset(i);
      batch.memory.fill(0, at, at + size);
      batch.memory[at] = sent & 0xff; batch.memory[at + 1] = (sent >> 8) & 0xff;
      batch.memory[at + size - 1] = 0xee;
      sent++;
    }
    batch.commit(n);
    t.throws(() => batch.commit(), { code: ErrorCode.BAD_STATE }, 'one commit per batch');
  }
  await within(10_000, reading, 'reading');
  t.equal(got.length, total);
  t.ok(got.every((v, i) => v === (i & 0xffff)), 'in order');
  t.ok(batches < total / 10, `batched (${batches} batches)`);
  await close();
});

t.test('claimBatch: commit of part, abort, one claim at a time, bad arguments', async (t) => {
  const { a, b, close } = await pair();
  const batch = a.claimBatch(8, 10)!;
  t.ok(batch);
  t.equal(batch.count, 10);
  t.throws(() => a.claim(1), { code: ErrorCode.BAD_STATE }, 'a batch is an open claim');
  t.throws(() => a.claimBatch(8, 1), { code: ErrorCode.BAD_STATE });
  t.throws(() => batch.commit(11), { code: ErrorCode.BAD_ARGUMENT });
  for (let i = 0; i < 3; i++) batch.memory.fill(i + 1, batch.offset(i), batch.offset(i) + 8);
  batch.commit(3);
  const aborted = a.claimBatch(16, 4)!;
  aborted.abort();
  const one = a.claimBatch(8, 1)!;
  t.equal(one.count, 1, 'a batch of one');
  one.memory.fill(4, one.offset(0), one.offset(0) + 8);
  one.commit();
  t.throws(() => a.claimBatch(8, 0), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => a.claimBatch(-1, 2), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => a.claimBatch(a.maxMessageSize + 1, 2), { code: ErrorCode.MESSAGE_TOO_LARGE });
  a.sendBytes(new Uint8Array([9]));
  const got: Uint8Array[] = [];
  for await (const m of b) { got.push(m as Uint8Array); if (got.length === 5) break; }
  t.same(got.map((m) => [...m]), [[1, 1, 1, 1, 1, 1, 1, 1], [2, 2, 2, 2, 2, 2, 2, 2], [3, 3, 3, 3, 3, 3, 3, 3], [4, 4, 4, 4, 4, 4, 4, 4], [9]]);
  await close();
});

t.test('claimBatch stops at the end of the ring and at its free room; a full ring gives null', async (t) => {
  const { a, b, close } = await pair('size=64KiB');
  let claimed = 0;
  let batches = 0;
  for (;;) {
    const batch = a.claimBatch(1000, 1000);
    if (batch === null) break;
    claimed += batch.count;
    batches++;
    batch.commit();
    if (batches > 1000) break;
  }
  t.ok(claimed > 0 && batches <= 1000, `${claimed} records in ${batches} batches until full`);
  let read = 0;
  while (read < claimed) { const n = b.poll(() => {}); if (n === 0) await b.readable(); read += n; }
  t.equal(read, claimed, 'every claimed record was read');
  await close();
});
