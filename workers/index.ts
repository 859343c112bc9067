/**
 * Workers: processes and threads started with a shmbus channel already connected (`spawn`, `parentChannel`), and
 * a task pool over them (`Pool`). The package entry re-exports these names.
 */
export { spawn, WorkerHandle, type SpawnOptions, type WorkerExit, type WorkerHandleEvents, type Isolation } from './spawn.js';
export { parentChannel } from './parent.js';
export { Pool, type PoolOptions, type PoolStats, type RunOptions, type DurationSummary } from './pool.js';
export { WorkerExitError, WorkerStartError, TaskError } from './errors.js';
export { PAIR_WAKE_MODES, type PairWakeMode } from './pair.js';
