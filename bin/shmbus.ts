#!/usr/bin/env node
// The shmbus command.
//   shmbus clean     remove POSIX segments (/dev/shm/shmbus.*) whose creating process is gone, shm buses whose
//                    members are all gone, and the wake objects (semaphores, queues, System V sets) of dead
//                    processes (host/wake/reap.ts)
//   shmbus version   print the package and layout versions
import { readdirSync, unlinkSync, readFileSync } from 'node:fs';
import { LAYOUT_VERSION } from '../assembly/layout.js';
import { isProcessAlive } from '../host/sys/proc.js';
import { reapDeadWakeObjects } from '../host/wake/reap.js';
import { reapDeadBuses } from '../host/bus.js';

/** Segment names are /shmbus.<endpoint>.<creator pid>.<n> (see host/shm.ts). */
export function cleanDeadSegments(dir = '/dev/shm'): string[] {
  const removed: string[] = [];
  for (const file of readdirSync(dir)) {
    const m = /^shmbus\..+\.(\d+)\.\d+$/.exec(file);
    if (!m || isProcessAlive(Number(m[1]))) continue;
    try {
      unlinkSync(`${dir}/${file}`);
      removed.push(file);
    } catch { /* raced with its owner or another cleaner */ }
  }
  return removed;
}

const [command] = process.argv.slice(2);
if (command === 'clean') {
  // Segments, then the wake objects (semaphores, queues, System V sets) of dead processes.
  const removed = [...cleanDeadSegments(), ...reapDeadBuses(), ...reapDeadWakeObjects()];
  console.log(removed.length ? `removed ${removed.join(' ')}` : 'nothing to clean');
} else if (command === 'version') {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  console.log(`shmbus ${pkg.version}, layout ${LAYOUT_VERSION >>> 16}.${LAYOUT_VERSION & 0xffff}`);
} else {
  console.log('usage: shmbus clean | version');
  process.exitCode = command ? 1 : 0;
}
