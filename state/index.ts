/**
 * Shared variables and locks between processes (the seeds' shmget + semget pair): SharedState, Mutex,
 * Semaphore, over `shm://` names and `sysv://` keys. See docs/state.md.
 */
export { SharedState, type SharedStateOptions, type FieldSpec, type FieldType, type Snapshot, type ValueOf } from './shared-state.js';
export { Mutex, type MutexOptions } from './mutex.js';
export { Semaphore, type SemaphoreOptions } from './semaphore.js';
export type { LockResult, WaitOptions } from './units.js';
