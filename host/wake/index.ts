// Every wake mechanism, registered once. Import mechanisms from here so that `wake=` knows them all.
//   doorbell   a byte on the control socket (mechanism.ts)
//   futex      FUTEX_WAIT/FUTEX_WAKE on the ring's wake words (futex.ts)
//   sem        a POSIX named semaphore per process (sem.ts)
//   sysvsem    a System V semaphore set per process (sysvsem.ts)
//   signal     a real-time signal queued to a thread (signal.ts)
//   mq         a POSIX message queue per process (mq.ts)
// The blocking ones wait on one dedicated thread per mechanism and process (thread.ts), never on the event loop
// or the libuv threadpool.
import { registerWakeMechanism } from './mechanism.js';
import { futex } from './futex.js';
import { semMechanism } from './sem.js';
import { sysvsemMechanism } from './sysvsem.js';
import { signalMechanism } from './signal.js';
import { mqMechanism } from './mq.js';

registerWakeMechanism(futex);
registerWakeMechanism(semMechanism);
registerWakeMechanism(sysvsemMechanism);
registerWakeMechanism(signalMechanism);
registerWakeMechanism(mqMechanism);

export * from './mechanism.js';
export { wakeStats, type WakeStats } from './common.js';
