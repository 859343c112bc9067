// The conformance cases of the message-queue transports: POSIX (mq:) and System V (sysvmq:).
//
// Leftovers. POSIX queues are visible as files of the mqueue file system; it is mounted on /dev/mqueue here if
// nothing is (test/helpers.ts mqueueDir: root only; without it the mq: case cannot see leftovers). System V queues are listed from
// /proc/sysvipc/msg (see sysvQueues for which count as this run's).
import { readdirSync, readFileSync } from 'node:fs';
import { EpollThread, MsgrcvThread } from '../../host/blocking.js';
import { orphansSettled } from '../../transports/sysvmq.js';
import { listenerCase, withQuery, type ConformanceCase } from './harness.js';
import { mqueueDir } from '../helpers.js';

const pid = process.pid;
let serial = 0;

/**
 * The receive threads are per-process resources, started at first use and kept (each Worker's libuv loop owns a
 * pipe pair). The suite counts this process's pipes around every test to find leaked connections, so the threads
 * run before the first count instead of appearing inside the first test. (Loaded alone, the file starts them too:
 * they are unref'd and end with the process.)
 */
await Promise.all([EpollThread.get().start(), MsgrcvThread.get().start()]);

/** POSIX queues of this run (named conf-<pid>-…), endpoints and connections alike. */
export function mqueueLeftovers(prefix = `conf-${pid}-`): string[] {
  const dir = mqueueDir();
  if (dir === undefined) return [];
  return readdirSync(dir).filter((f) => f.startsWith(prefix)).sort();
}

/** Keys of this run's listeners: 0x5a, then the low 16 bits of our pid, then a serial. */
const KEY_PREFIX = ((0x5a << 24) | ((pid & 0xffff) << 8)) >>> 0;

/**
 * This run's System V queues, as "key/msqid": listener queues by key (`keyPrefix`: the key without its low
 * byte), and the private ones (ports, connection queues: key 0) that this process sent to or received from
 * (lspid/lrpid). Other processes may use sysvmq: at the same time (benchmarks), and their queues are not ours.
 */
export function sysvQueues(keyPrefix = KEY_PREFIX): string[] {
  return ourQueueRows(keyPrefix).map((f) => `0x${(Number(f[0]) >>> 0).toString(16).padStart(8, '0')}/${f[1]}`).sort();
}

/** sysvQueues' queues as the fields of their /proc/sysvipc/msg lines: key msqid perms cbytes qnum lspid lrpid … */
function ourQueueRows(keyPrefix = KEY_PREFIX): string[][] {
  return readFileSync('/proc/sysvipc/msg', 'utf8').split('\n').slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length > 6 && /^-?\d+$/.test(f[0]!))
    .filter((f) => {
      const key = Number(f[0]) >>> 0;
      return ((key & 0xffffff00) >>> 0) === keyPrefix || Number(f[5]) === pid || Number(f[6]) === pid;
    });
}

/** Keys of this run: 0x5a<pid low 16 bits><serial>, so concurrent runs do not collide. */
const sysvKey = () => `0x${((KEY_PREFIX | (++serial & 0xff)) >>> 0).toString(16)}`;

/**
 * A System V peer killed just before we close cannot remove its queues, and we may close before we see it die:
 * its queues are then removed as soon as its death is seen (transports/sysvmq.ts, "orphans"). A session's close
 * waits for that before the suite looks for leftovers.
 */
function settleOrphans(c: ConformanceCase): ConformanceCase {
  return {
    ...c,
    async open(mode, args, query, owner) {
      const s = await c.open(mode, args, query, owner);
      return { ...s, close: async (graceMs) => { await s.close(graceMs); await orphansSettled(); } };
    },
  };
}

export const queueCases: ConformanceCase[] = [
  listenerCase({
    name: 'mq',
    url: (q) => withQuery(`mq:///conf-${pid}-${++serial}`, q),
    leftovers: () => mqueueLeftovers(),
    badUrls: [
      'mq://x', 'mq:///', 'mq:///a/b', 'mq:///a b', 'mq:x', `mq:///${'n'.repeat(201)}`,
      'mq:///x?msgsize=10', 'mq:///x?maxmsg=0', 'mq:///x?perm=999', 'mq:///x?maxMessage=lots',
    ],
    endpointVisible: true,
  }),
  {
    ...settleOrphans(listenerCase({
      name: 'sysvmq',
      url: (q) => withQuery(`sysvmq://${sysvKey()}`, q),
      leftovers: () => sysvQueues(),
      badUrls: [
        'sysvmq://', 'sysvmq://banana', 'sysvmq://0x0', 'sysvmq://0x123456789', 'sysvmq://0x1234/path', 'sysvmq:0x1234',
        'sysvmq://0x1234?qbytes=1', 'sysvmq://0x1234?perm=9',
      ],
      endpointVisible: true,
    })),
    diagnose: sysvmqState,
  },
];

/** The msgrcv and epoll threads of this process and this run's queues with their counts (once seen: every
 * sysvmq: case of one run timing out while the same file passed alone). */
function sysvmqState(): string {
  const msgrcv = MsgrcvThread.get();
  const queues = ourQueueRows().map((f) => `${f[1]}: cbytes=${f[3]} qnum=${f[4]} lspid=${f[5]} lrpid=${f[6]}`);
  return JSON.stringify({ msgrcv: { ...msgrcv.state, ...msgrcv.ports }, epoll: EpollThread.get().state, queues });
}
