/**
 * `shmbus doctor`: checks what makes shmbus fail on a host, each with its fix. Imports the library lazily, check by
 * check, so that a library that cannot load (koffi) is one failed check, not a crash of the command.
 */
import fs from 'node:fs';
import { defineCommand, toJson } from './command.js';

/** One check: `fail` makes the command exit 1; `warn` only limits some transports or modes. */
export interface Check {
  name: string;
  status: 'ok' | 'warn' | 'fail';
  detail: string;
  /** What to do about it (empty when ok). */
  fix: string;
}

const MiB = 1 << 20;
/** Docker gives a container a 64 MiB /dev/shm unless told otherwise. */
const DOCKER_DEFAULT_SHM = 64 * MiB;
/** A bus topic's default ring: what /dev/shm must at least hold (channels use memfds, which it does not count). */
const ONE_TOPIC = 1 * MiB;
const ENOSYS = 38;

function sysctl(file: string): number[] | undefined {
  try { return fs.readFileSync(file, 'latin1').trim().split(/\s+/).map(Number); } catch { return undefined; }
}

const mb = (n: number) => `${(n / MiB).toFixed(n < 10 * MiB ? 1 : 0)} MiB`;

function shmCheck(): Check {
  const name = '/dev/shm size and free space';
  let st: fs.StatsFs;
  try {
    st = fs.statfsSync('/dev/shm');
    fs.accessSync('/dev/shm', fs.constants.W_OK);
  } catch (error) {
    return { name, status: 'fail', detail: `cannot use /dev/shm: ${(error as Error).message}`, fix: 'mount a tmpfs there: mount -t tmpfs -o size=1G,mode=1777 tmpfs /dev/shm' };
  }
  const size = st.blocks * st.bsize;
  const free = st.bavail * st.bsize;
  const detail = `${mb(size)} total, ${mb(free)} free`;
  const grow = 'in Docker: docker run --shm-size=1g (compose: shm_size: 1g); otherwise: mount -o remount,size=1G /dev/shm';
  if (free < ONE_TOPIC) return { name, status: 'fail', detail: `${detail}: not even one bus topic of the default 1 MiB fits`, fix: `free space (shmbus clean removes what dead processes left), or ${grow}` };
  if (size <= DOCKER_DEFAULT_SHM) return { name, status: 'warn', detail: `${detail}: the 64 MiB Docker default or less; bus topics and semaphores (kept in /dev/shm) run out fast (channels use memfds, not counted here)`, fix: grow };
  return { name, status: 'ok', detail, fix: '' };
}

function mqueueCheck(): Check {
  const name = '/dev/mqueue mounted';
  const mounts = fs.readFileSync('/proc/mounts', 'latin1').split('\n').map((l) => l.split(' '));
  const m = mounts.find((f) => f[2] === 'mqueue');
  if (!m) return { name, status: 'warn', detail: 'no mqueue file system: mq:// and wake=mq work, but shmbus clean cannot see their queues', fix: 'mkdir -p /dev/mqueue && mount -t mqueue none /dev/mqueue' };
  return { name, status: 'ok', detail: `mounted at ${m[1]}`, fix: '' };
}

function sysvCheck(): Check[] {
  const out: Check[] = [];
  const msgmni = sysctl('/proc/sys/kernel/msgmni')?.[0];
  const msgmnb = sysctl('/proc/sys/kernel/msgmnb')?.[0];
  const sem = sysctl('/proc/sys/kernel/sem');
  out.push(msgmni === undefined ? { name: 'msgmni', status: 'warn', detail: 'unreadable', fix: '' }
    : msgmni < 64 ? { name: 'msgmni', status: 'warn', detail: `${msgmni} System V queues in the system: each sysvmq:// connection takes two`, fix: 'sysctl -w kernel.msgmni=32000' }
      : { name: 'msgmni', status: 'ok', detail: `${msgmni} System V queues`, fix: '' });
  out.push(msgmnb === undefined ? { name: 'msgmnb', status: 'warn', detail: 'unreadable', fix: '' }
    : msgmnb < 16384 ? { name: 'msgmnb', status: 'warn', detail: `${msgmnb} bytes per System V queue: sysvmq:// splits messages into pieces that fit, slowly`, fix: 'sysctl -w kernel.msgmnb=65536' }
      : { name: 'msgmnb', status: 'ok', detail: `${msgmnb} bytes per System V queue`, fix: '' });
  const semmni = sem?.[3];
  out.push(semmni === undefined ? { name: 'SEMMNI', status: 'warn', detail: 'unreadable', fix: '' }
    : semmni < 128 ? { name: 'SEMMNI', status: 'warn', detail: `${semmni} semaphore sets: wake=sysvsem takes one per process`, fix: 'sysctl -w kernel.sem="32000 1024000000 500 32000"' }
      : { name: 'SEMMNI', status: 'ok', detail: `${semmni} semaphore sets (kernel.sem ${sem!.join(' ')})`, fix: '' });
  return out;
}

async function mqLimitsCheck(): Promise<Check[]> {
  const { mqLimits } = await import('../host/sys/mq.js');
  const l = mqLimits();
  const out: Check[] = [];
  const rl = l.rlimit === Infinity ? 'unlimited' : `${l.rlimit} bytes`;
  out.push(l.rlimit < 819200
    ? { name: 'RLIMIT_MSGQUEUE', status: 'warn', detail: `${rl}: below Linux's default 819200, few mq:// connections fit`, fix: 'ulimit -q 8192000 (systemd: LimitMSGQUEUE=; /etc/security/limits.conf: msgqueue)' }
    : { name: 'RLIMIT_MSGQUEUE', status: 'ok', detail: `${rl} of POSIX queues per user`, fix: '' });
  out.push(l.msgMax < 10 || l.msgsizeMax < 8192 || l.queuesMax < 64
    ? { name: 'mqueue limits', status: 'warn', detail: `msg_max ${l.msgMax}, msgsize_max ${l.msgsizeMax}, queues_max ${l.queuesMax}: below Linux's defaults`, fix: 'sysctl -w fs.mqueue.msg_max=10 fs.mqueue.msgsize_max=8192 fs.mqueue.queues_max=256' }
    : { name: 'mqueue limits', status: 'ok', detail: `msg_max ${l.msgMax}, msgsize_max ${l.msgsizeMax}, queues_max ${l.queuesMax}`, fix: '' });
  return out;
}

async function futexCheck(): Promise<Check> {
  const { futexWaitvErrno } = await import('../host/sys/futex.js');
  const errno = futexWaitvErrno();
  if (errno === ENOSYS) return { name: 'futex_waitv', status: 'warn', detail: 'the kernel lacks futex_waitv (Linux 5.16+): wake=futex fails, bus sleepers poll', fix: 'run on Linux 5.16 or later (or allow the syscall in the seccomp profile)' };
  return { name: 'futex_waitv', status: 'ok', detail: 'available', fix: '' };
}

async function koffiCheck(): Promise<Check> {
  const { default: koffi } = await import('koffi');
  const libc = koffi.load('libc.so.6');
  const getpid = libc.func('int getpid(void)') as () => number;
  if (getpid() !== process.pid) throw new Error('getpid through koffi returned another pid');
  return { name: 'koffi', status: 'ok', detail: `koffi ${(koffi as { version?: string }).version ?? ''} calls libc`.replace('  ', ' '), fix: '' };
}

/** Creates a sealed memfd, maps it into a window of the wasm memory, writes through wasm memory, reads through the fd. */
async function wasmMapCheck(): Promise<Check> {
  const { getEngine } = await import('../host/engine.js');
  const { Region } = await import('../host/region.js');
  const engine = getEngine();
  const region = Region.createMemfd('shmbus-doctor', { size: 65536 });
  try {
    const at = engine.allocWindow(region.size);
    try {
      region.mapAt(engine.address(at));
      try {
        engine.u8[at + 100] = 0x5a;
        const back = Buffer.alloc(1);
        const fd = fs.openSync(`/proc/self/fd/${region.fd}`, 'r');
        try { fs.readSync(fd, back, 0, 1, 100); } finally { fs.closeSync(fd); }
        if (back[0] !== 0x5a) throw new Error('a byte written through wasm memory is not in the segment');
      } finally {
        region.unmapAt(engine.address(at));
      }
    } finally {
      engine.freeWindow(at, region.size);
    }
  } finally {
    region.close();
  }
  return { name: 'segment in wasm memory', status: 'ok', detail: 'a memfd mapped into the wasm memory shares its bytes', fix: '' };
}

/** Every check; a check that throws is a failure carrying its message. */
export async function runChecks(): Promise<Check[]> {
  const guard = async (name: string, fix: string, f: () => Promise<Check | Check[]> | Check | Check[]): Promise<Check[]> => {
    try {
      const r = await f();
      return Array.isArray(r) ? r : [r];
    } catch (error) {
      return [{ name, status: 'fail', detail: error instanceof Error ? error.message : String(error), fix }];
    }
  };
  return [
    ...await guard('/dev/shm size and free space', 'mount a tmpfs at /dev/shm', shmCheck),
    ...await guard('/dev/mqueue mounted', 'mount -t mqueue none /dev/mqueue', mqueueCheck),
    ...await guard('System V limits', 'check /proc/sys/kernel', sysvCheck),
    ...await guard('POSIX queue limits', 'check /proc/sys/fs/mqueue and ulimit -q', mqLimitsCheck),
    ...await guard('futex_waitv', 'run on Linux 5.16 or later', futexCheck),
    ...await guard('koffi', 'reinstall: npm rebuild koffi (Linux x86_64 with glibc)', koffiCheck),
    ...await guard('segment in wasm memory', 'npm run build (build/*.wasm), Node 20+; memfd_create and mmap must be allowed (seccomp)', wasmMapCheck),
  ];
}

export const doctor = defineCommand({
  name: 'doctor',
  summary: 'check this host for what makes shmbus fail, with the fixes',
  usage: `usage: shmbus doctor [--json]

  Checks /dev/shm (size, free space, the 64 MiB Docker default), /dev/mqueue, the System V limits (msgmni,
  msgmnb, SEMMNI), RLIMIT_MSGQUEUE and the mqueue limits, futex_waitv, that koffi loads and calls libc, and that
  a segment maps into wasm memory. Prints each with its fix. Exits 1 when a check failed (warnings only limit
  some transports or wake modes).

    --json   [{ name, status: ok|warn|fail, detail, fix }]`,
  options: { json: { type: 'boolean' } },
  async run({ values }) {
    const checks = await runChecks();
    if (values.json) console.log(toJson(checks, 2));
    else {
      for (const c of checks) {
        console.log(`${c.status === 'ok' ? 'ok  ' : c.status === 'warn' ? 'WARN' : 'FAIL'}  ${c.name}: ${c.detail}`);
        if (c.fix) console.log(`      fix: ${c.fix}`);
      }
    }
    return checks.some((c) => c.status === 'fail') ? 1 : 0;
  },
});
