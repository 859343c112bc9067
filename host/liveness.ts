/**
 * How often shmbus looks whether a process it depends on is still alive, where nothing tells it (no pidfd for a
 * peer of a message queue; a subscriber that holds back a lossless publisher and may have been SIGKILLed).
 *
 * Why 250 ms: it bounds how long a dead process can stall someone (a lossless publisher waits at most this long
 * behind a killed subscriber, a queue reader hears of a killed writer within it), which stays below what a person
 * notices as a hang; and it keeps an idle waiter's cost to 4 wakeups a second, each a read of /proc/<pid>/stat
 * (tens of µs), so a thousand idle watchers cost well under 1% of a core. Shorter buys little: a process killed
 * with a pidfd watching it is seen at once anyway; longer makes a killed subscriber a visible stall.
 */
export const LIVENESS_MS = 250;
