// What the state/ tests share: unique URLs for both schemes, and the check that a test left nothing behind.
import { readdirSync, readFileSync } from 'node:fs';
import { unique } from '../helpers.js';

let keys = 0;
/** A shm:// URL (POSIX) or a sysv:// URL (a key made of this process's pid and a counter) no one else uses. */
export function stateUrl(scheme: 'shm' | 'sysv', prefix = 'st'): string {
  if (scheme === 'shm') return `shm://${unique(prefix)}`;
  const key = (0x5a000000 | ((process.pid & 0xffff) << 8) | (++keys & 0xff)) >>> 0;
  return `sysv://0x${key.toString(16)}`;
}

/** The POSIX segments and System V keys of this process's test objects that exist now. */
export function leftovers(): string[] {
  const files = readdirSync('/dev/shm').filter((f) => /^shmbus\.(state|mutex|semaphore)\./.test(f) && f.includes(`-${process.pid}-`));
  const prefix = 0x5a000000 | ((process.pid & 0xffff) << 8);
  const segs = readFileSync('/proc/sysvipc/shm', 'latin1').split('\n').slice(1)
    .map((line) => Number(line.trim().split(/\s+/)[0]))
    .filter((key) => Number.isFinite(key) && ((key >>> 0) & 0xffffff00) === prefix >>> 0)
    .map((key) => `sysv 0x${(key >>> 0).toString(16)}`);
  return [...files, ...segs];
}
