// A healthy lossy topic at full speed on a 1 KiB ring, its publisher in another process: no read ever errors,
// drops are counted exactly (received + dropped = published), and joining never gives up. (Before: 279 of 23M
// reads failed and topic_join gave up 102 times.)
import t, { type Test } from 'tap';
import { Bus } from '../../bus/index.js';
import { fileTimeout, scaled, startFixture, unique, within } from '../helpers.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 90, 30);

/** A publisher process at full speed on a lossy 1 KiB topic for the scaled duration, and our subscription to it,
 * started together ('go' once both are there). */
async function lossyRun(t: Test, tag: string) {
  const url = `shm://${unique(tag)}`;
  const duration = scaled(10_000, 1000);
  const child = startFixture(t, 'lossy-pub', [url, 'ticks', '1024', '0', String(duration)], { stdin: 'pipe' });
  await child.line('ready');
  const bus = await Bus.open(url);
  t.teardown(() => bus.destroy());
  const sub = bus.subscribe('ticks', { create: false });
  child.process.stdin!.write('go\n');
  return { duration, child, sub };
}

t.test('healthy lossy topic at full speed on a 1 KiB ring, publisher in another process: no error, drops exact', async (t) => {
  const { duration, child, sub } = await lossyRun(t, 'lossy');
  let received = 0;
  let last = -1;
  let disorder = 0;
  const errors: unknown[] = [];
  try {
    await within(duration + 60_000, (async () => {
      for await (const msg of sub) {
        const n = (msg as { n: number }).n;
        if (!(n > last)) disorder++;
        last = n;
        received++;
      }
    })(), 'the lossy subscription to end when the publisher closes');
  } catch (error) {
    errors.push(error);
  }
  const { published } = JSON.parse(await child.line(/published/)) as { published: number };
  t.same(errors, [], 'no error while reading');
  t.equal(disorder, 0, 'messages come in publishing order');
  t.ok(received > 0, `received ${received} of ${published}`);
  t.equal(received + sub.dropped, published, `received ${received} + dropped ${sub.dropped} = published ${published}`);
  await sub.close();
});

t.test('joining a lossy topic under a full-speed publisher does not give up (latest and earliest)', async (t) => {
  const url = `shm://${unique('join')}`;
  const child = startFixture(t, 'lossy-pub', [url, 'ticks', '1024', '4', '0'], { stdin: 'pipe' });
  await child.line('ready');
  const bus = await Bus.open(url);
  t.teardown(() => bus.destroy());
  child.process.stdin!.write('go\n');
  const joins = scaled(1000, 100);
  let failures = 0;
  const firstError: unknown[] = [];
  for (let i = 0; i < joins; i++) {
    const sub = bus.subscribe('ticks', { create: false, from: i % 2 ? 'earliest' : 'latest' });
    try {
      const msg = await within(30_000, sub.receive(), 'a message after joining');
      if (typeof (msg as { n: number }).n !== 'number') failures++;
    } catch (error) {
      failures++;
      if (firstError.length === 0) firstError.push(error);
    } finally {
      await sub.close();
    }
  }
  t.equal(failures, 0, `${joins} joins, first error: ${String(firstError[0] ?? 'none')}`);
});

t.test('the same topic read by poll() in a tight loop (every read call counts): no read ever errors', async (t) => {
  const { duration, child, sub } = await lossyRun(t, 'lossypoll');
  let reads = 0, handed = 0, errors = 0;
  let firstError: unknown;
  // Synchronous reads while the publisher runs, yielding now and then so the child's output is seen.
  while (!sub.ended) {
    for (let i = 0; i < 100_000 && !sub.ended; i++) {
      try {
        handed += sub.poll(() => {});
      } catch (error) {
        errors++;
        firstError ??= error;
      }
      reads++;
    }
    await new Promise((r) => setImmediate(r));
  }
  const { published } = JSON.parse(await child.line(/published/)) as { published: number };
  t.equal(errors, 0, `${errors} of ${reads} reads failed; first: ${String(firstError ?? 'none')}`);
  t.ok(handed > 0 && handed <= published, `handed ${handed} of ${published}`);
  // Records overwritten while the handler ran are handed out and also counted as dropped.
  t.ok(handed + sub.dropped >= published, `handed ${handed} + dropped ${sub.dropped} covers published ${published}`);
  await sub.close();
});

