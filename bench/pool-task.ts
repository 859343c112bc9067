// The task module of bench/pool.ts, for every pool in it (shmbus Pool, Piscina, the fork pool): echoes the task.
export default function echo(task: unknown): unknown {
  return task;
}
