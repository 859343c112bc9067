// Pool options and Piscina compatibility of a task module (the isolation cases are in pool-cases.ts).
import t from 'tap';
import { Piscina } from 'piscina';
import { Pool } from '../../workers/pool.js';
import { ErrorCode } from '../../host/errors.js';
import { fileTimeout } from '../helpers.js';
import { TASK } from './pool-cases.js';

fileTimeout(t, 60);

t.test('bad options', async (t) => {
  t.throws(() => new Pool(TASK, { size: 0 }), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => new Pool(TASK, { isolation: 'fiber' as 'thread' }), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => new Pool(TASK, { taskTimeout: -1 }), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => new Pool(TASK, { maxQueue: 1.5 }), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => new Pool(TASK, { tasksPerWorker: 0 }), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => new Pool(TASK, { tasksPerWorker: 129 }), { code: ErrorCode.BAD_ARGUMENT }, 'more than the claim table allows');
  t.throws(() => new Pool('', {}), { code: ErrorCode.BAD_ARGUMENT });
  // What spawn refuses is refused by the constructor, before any worker is started (not by every run() later).
  t.throws(() => new Pool(TASK, { size: 1, wake: 'sem' as 'futex' }), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => new Pool(TASK, { size: 1, ringSize: 1000 }), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => new Pool(TASK, { size: 1, stdio: 'tty' as 'pipe' }), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => new Pool(TASK, { size: 1, execArgv: '--inspect' as unknown as string[] }), { code: ErrorCode.BAD_ARGUMENT });
  t.throws(() => new Pool(TASK, null as unknown as {}), { code: ErrorCode.BAD_ARGUMENT });
});

t.test('the same module runs under Piscina', async (t) => {
  const piscina = new Piscina({ filename: TASK, maxThreads: 1, minThreads: 1 });
  t.teardown(() => piscina.destroy());
  t.same(await piscina.run({ op: 'echo', value: { a: 1 } }), { a: 1 });
  await t.rejects(piscina.run({ op: 'throw' }), { message: 'task failed' });
});
