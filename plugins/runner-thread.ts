/**
 * Entry of a plugin runner on a worker thread (started by plugins/runner-start.ts). Sleeps with Atomics.wait on
 * the control array the host shares (interruptible by Worker.terminate), rings the host with a one-byte
 * postMessage: the only thing that wakes another thread's event loop in Node 20, which has no Atomics.waitAsync.
 * It loads no native addon: the host maps the segment into the plugin's memory for it (runner.ts MapRequest).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { CTL_IN_SEQ, CTL_MAPPED, MAP_DONE, RUNNER_LOADED, runPlugin, type MapRequest, type RunnerConfig } from './runner.js';

const { config, ctl } = workerData as { config: RunnerConfig; ctl: Int32Array };
const port = parentPort!;

// The imports above are loaded: from here on the host may terminate this thread (see RUNNER_LOADED).
port.postMessage(RUNNER_LOADED);

runPlugin(config, {
  ctl,
  sleep(seq) { Atomics.wait(ctl, CTL_IN_SEQ, seq); },
  ringHost() { port.postMessage(0); },
  mapSegment(memory, address) {
    const request: MapRequest = { map: address, memory };
    port.postMessage(request);
    // Terminate interrupts this wait, as it does the sleep.
    while (Atomics.load(ctl, CTL_MAPPED) === 0) Atomics.wait(ctl, CTL_MAPPED, 0);
    if (Atomics.load(ctl, CTL_MAPPED) !== MAP_DONE) throw new Error('the host could not map the ring segment into the plugin\'s memory');
  },
}, (report) => port.postMessage(report));
