// The worker of bench/pool.ts's minimal child_process.fork pool: `[id, task]` in, `[id, result]` out, over Node's
// IPC channel ('advanced' serialization, so Buffers arrive as Buffers).
import echo from './pool-task.js';

process.on('message', (message) => {
  const [id, task] = message as [number, unknown];
  process.send!([id, echo(task)]);
});
process.on('disconnect', () => process.exit(0));
