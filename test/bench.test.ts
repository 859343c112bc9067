// bench/everyday.ts, the benchmark the README's comparison with a Unix socket comes from, still runs every row at
// a tiny scale: each row measures both sides, each round trip row has samples, and no child process is left behind
// (its shm:// segments are memfds and its sockets abstract: they cannot outlive it). No assertion on speed.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { fileTimeout, groupMembers, startChild, within } from './helpers.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 120);

const EVERYDAY = fileURLToPath(new URL('../dist/bench/everyday.js', import.meta.url));

interface Latency { p50: number; p99: number; samples: number }
interface Report {
  table: Array<{ row: string; shm: number; unix: number }>;
  latency: { shm: Latency; unix: Latency };
  latencyBuffer64?: { shm: Latency; unix: Latency };
  requests?: Latency;
  onMessage?: Latency;
  bare?: { each: number; batched: number; trip: Latency };
}

t.test('npm run bench:everyday at scale 0.001: every row, both sides, and no child left', async (t) => {
  // Plain Node (no tap loader hooks), as `npm run bench:everyday` runs it.
  const child = startChild(t, [process.execPath, EVERYDAY, '--rounds', '1', '--scale', '0.001', '--json'], { env: { ...process.env, NODE_OPTIONS: '' } });
  const { code, signal } = await within(240_000, child.exit, () => `the bench did not finish; stderr: ${child.stderr()}`);
  t.equal(code, 0, `exit code (signal ${signal}); stderr:\n${child.stderr()}`);
  const report = JSON.parse(child.stdout()) as Report;
  const rows = report.table.map((r) => r.row);
  t.same(rows, ['object', 'bytes64', 'bytes1K', 'bytes1M', 'message64', 'claim64', 'claimAt64', 'batch64'], 'every row');
  for (const r of report.table) t.ok(r.shm > 0 && r.unix > 0, `${r.row}: both sides measured (${r.shm}, ${r.unix})`);
  const trips: Array<[string, Latency | undefined]> = [
    ['rtt shm', report.latency.shm], ['rtt unix', report.latency.unix],
    ['rtt64 shm', report.latencyBuffer64?.shm], ['rtt64 unix', report.latencyBuffer64?.unix],
    ['rpc', report.requests], ['message', report.onMessage], ['bare ping-pong', report.bare?.trip],
  ];
  for (const [name, l] of trips) t.ok(l !== undefined && l.samples > 0 && l.p50 > 0 && l.p99 >= l.p50, `${name}: round trips measured`);
  t.same(groupMembers(child.pid), [], 'no child left');
});

t.test('a row it does not know is refused with the usage, not run as an empty table', async (t) => {
  const child = startChild(t, [process.execPath, EVERYDAY, '--rows', 'rtt,rtt65'], { env: { ...process.env, NODE_OPTIONS: '' } });
  const { code } = await within(60_000, child.exit, 'the bench did not exit');
  t.equal(code, 2);
  t.match(child.stderr(), /unknown rows: rtt65\nusage: /);
  t.equal(child.stdout(), '', 'no table');
});
