/**
 * `shmbus bench`: one-way throughput on this host, shm:// against a Unix socket, child_process IPC and
 * worker_threads, side by side in one run (the measuring code is bench/'s: throughput.ts, baselines.ts,
 * workers.ts). Shows a progress bar, prints a table and writes an SVG chart.
 */
import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import cliProgress from 'cli-progress';
import { defineCommand, human, positiveInt, table, toJson } from './command.js';
import type { ThroughputResult } from '../bench/baselines.js';

type Kind = 'raw' | 'object';
const KINDS: Kind[] = ['raw', 'object'];
const PEERS = ['shm', 'unix', 'fork', 'worker'] as const;
type Peer = (typeof PEERS)[number];
const LABEL: Record<Peer, string> = { shm: 'shm://', unix: 'Unix socket', fork: 'child_process IPC', worker: 'worker_threads' };
const KIND_LABEL: Record<Kind, string> = { raw: '64 B bytes', object: '64 B object' };
const COLOR: Record<Peer, string> = { shm: '#2a7ab0', unix: '#e08a2c', fork: '#8c8c8c', worker: '#5aa05a' };

export interface BenchRow { kind: Kind; peer: Peer; label: string; messages: number; seconds: number; msgPerSec: number }

async function runOne(peer: Peer, kind: Kind, messages: number): Promise<ThroughputResult> {
  switch (peer) {
    case 'shm': return (await import('../bench/throughput.js')).shmThroughput({ messages, kind, url: `shm://shmbus-cli-bench-${process.pid}?size=4MiB` });
    case 'unix': return (await import('../bench/baselines.js')).unixSocketThroughput({ messages, kind });
    case 'fork': return (await import('../bench/baselines.js')).forkIpcThroughput({ messages, kind });
    case 'worker': return (await import('../bench/workers.js')).workerThroughput({ messages, kind });
  }
}

/** A grouped horizontal bar chart: one group per payload (each on its own scale), one bar per peer, msg/s. */
export function chart(rows: readonly BenchRow[], title: string): string {
  const barH = 18, gap = 6, groupGap = 26, left = 150, width = 460, right = 110, top = 40;
  const groups = KINDS.filter((k) => rows.some((r) => r.kind === k));
  const height = top + groups.length * (PEERS.length * (barH + gap) + groupGap) + 10;
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${left + width + right}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`, `<text x="10" y="22" font-size="14" font-weight="bold">${esc(title)}</text>`];
  let y = top;
  for (const k of groups) {
    const max = Math.max(...rows.filter((r) => r.kind === k).map((r) => r.msgPerSec), 1);
    out.push(`<text x="10" y="${y + 12}" font-weight="bold">${KIND_LABEL[k]}</text>`);
    y += 18;
    for (const p of PEERS) {
      const r = rows.find((x) => x.kind === k && x.peer === p);
      if (!r) continue;
      const w = Math.max(1, (r.msgPerSec / max) * width);
      out.push(`<text x="${left - 6}" y="${y + barH - 5}" text-anchor="end">${esc(LABEL[p])}</text>`,
        `<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${COLOR[p]}"/>`,
        `<text x="${Math.round(left + w + 6)}" y="${y + barH - 5}">${human(r.msgPerSec)} msg/s</text>`);
      y += barH + gap;
    }
    y += groupGap - 18;
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}

export const bench = defineCommand({
  name: 'bench',
  summary: 'measure shm:// against Unix sockets, child_process IPC and worker_threads on this host',
  usage: `usage: shmbus bench [--messages <n>] [--svg <file>] [--json]

  One-way throughput from one process to another (worker_threads: to a thread), 64-byte messages, as raw bytes
  and as a msgpack/JSON/structured-clone object, each peer in the same run: shm:// (trySendBytes + zero-copy
  poll, send + for await), a Unix socket with length-prefixed frames in 64 KiB writes, child_process.fork IPC
  (json), worker_threads postMessage. Prints a table with the shm:// ratio to each, writes an SVG chart.
  Numbers depend on what else runs on the machine: compare the ratios of one run.

    --messages <n>   messages per run (default 200000)
    --svg <file>     where the chart goes (default shmbus-bench.svg)
    --json           the rows as JSON { rows, svg } (no table; the progress bar goes to stderr)`,
  options: {
    messages: { type: 'string' },
    svg: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values }) {
    const messages = positiveInt(values.messages, 'messages', 200_000);
    const svgPath = resolve(values.svg ?? 'shmbus-bench.svg');
    const bar = new cliProgress.SingleBar({
      format: 'bench [{bar}] {value}/{total} {run}', stream: process.stderr, hideCursor: true, clearOnComplete: true,
    }, cliProgress.Presets.shades_classic);
    const runs = KINDS.flatMap((kind) => PEERS.map((peer) => ({ kind, peer })));
    bar.start(runs.length, 0, { run: '' });
    const rows: BenchRow[] = [];
    try {
      for (const { kind, peer } of runs) {
        bar.update(rows.length, { run: `${LABEL[peer]}, ${KIND_LABEL[kind]}` });
        const r = await runOne(peer, kind, messages);
        rows.push({ kind, peer, label: LABEL[peer], messages: r.messages, seconds: r.seconds, msgPerSec: r.msgPerSec });
      }
      bar.update(rows.length, { run: 'done' });
    } finally {
      bar.stop();
    }
    writeFileSync(svgPath, chart(rows, `shmbus bench: one-way throughput, ${messages} messages per run`));
    if (values.json) { console.log(toJson({ rows, svg: svgPath }, 2)); return 0; }
    const out = [['PAYLOAD', ...PEERS.map((p) => LABEL[p])]];
    for (const k of KINDS) {
      const shm = rows.find((r) => r.kind === k && r.peer === 'shm')!.msgPerSec;
      out.push([KIND_LABEL[k], ...PEERS.map((p) => {
        const r = rows.find((x) => x.kind === k && x.peer === p)!;
        return p === 'shm' ? `${human(r.msgPerSec)} msg/s` : `${human(r.msgPerSec)} msg/s (shm ${(shm / r.msgPerSec).toFixed(2)}x)`;
      })]);
    }
    console.log(table(out));
    console.log(`\nchart: ${svgPath}`);
    return 0;
  },
});
