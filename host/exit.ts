/**
 * The one process-exit hook registry. Everything that must run synchronously when the process exits normally
 * (end of the event loop, `process.exit`, an uncaught exception) registers here: stopping dedicated threads (Node
 * joins worker threads at exit, and one blocked in `epoll_wait` or `msgrcv` would hang the exit forever), unlinking
 * a socket file or FIFO, removing a queue. Signals that kill the process skip it; what they leave is what the
 * reapers (`host/reap.ts`) find later.
 */
const hooks = new Set<() => void>();
let installed = false;

/** Runs `hook` (synchronously) when the process exits normally; returns the function that unregisters it. */
export function onProcessExit(hook: () => void): () => void {
  hooks.add(hook);
  if (!installed) {
    installed = true;
    process.on('exit', () => {
      for (const h of [...hooks]) {
        try { h(); } catch { /* best effort while exiting */ }
      }
    });
  }
  return () => { hooks.delete(hook); };
}
