// What one run of bench/everyday.ts measured, and the README's comparison tables made from it.
//
// `node dist/bench/everyday.js --json` prints an EverydayReport; `--save` (npm run bench:readme) also writes it to
// bench/results/everyday.json and puts renderEveryday(report) into README.md between the two markers below. The
// goal column (the issue's targets: 2x the socket through send / for await, 5x for the zero-copy paths, a round
// trip p50 within 2 µs and p99 within 50 µs) is worked out from the numbers here, never typed: a table in the
// README cannot claim a goal its own numbers miss. test/bench.test.ts checks that the README's tables are exactly
// what the committed results render to.

/** A per-direction row: messages (or, for bytes1M, 1 MiB messages) a second at the consumer, one value a round. */
export interface RateRow {
  row: string;
  /** Payload bytes of one message. */
  bytes: number;
  /** shm:// rounds, messages a second. */
  shmRounds: number[];
  /** The Unix socket's rounds of the same run (for shm-only rows: the socket's 64 B Buffer row). */
  unixRounds: number[];
  /** Medians of the rounds, and their ratio (kept for readers of the JSON). */
  shm: number;
  unix: number;
  ratio: number;
  /** The median of each round's own ratio (see pairedRatio). */
  paired: number;
}

/** Round trips in microseconds. */
export interface Latency { p50: number; p99: number; samples: number }

export interface EverydayReport {
  /** When the run ended (ISO 8601). */
  date: string;
  node: string;
  cpus: number;
  cpu: string | undefined;
  /** What /proc/cpuinfo says of the processor's generation ('family 26, model 2'; absent in older runs): the
   * model name alone ('AMD EPYC') is the same on hosts whose speed differs by 2x. */
  cpuId?: string;
  rounds: number;
  scale: number;
  /** Uncounted messages each throughput row sent first, as a fraction of its counted ones (absent: none). */
  warmUp?: number;
  /** URL options of the shm:// endpoint ('' for the defaults). */
  query: string;
  table: RateRow[];
  /** The 64 B object's round trip, shm and socket (absent when no trip row ran). */
  latency?: { shm: Latency; unix: Latency };
  /** The 64 B Buffer's round trip (row rtt64). */
  latencyBuffer64?: { shm: Latency; unix: Latency };
  /** request / handle (row rpc). */
  requests?: Latency;
  /** on('message') on both sides (row message). */
  onMessage?: Latency;
  /** The bare reference (row bare): a SharedArrayBuffer ring published per record and per BATCH, and a ping-pong. */
  bare?: { eachRounds: number[]; batchedRounds: number[]; batch: number; trip: Latency; each: number; batched: number };
}

export const median = (xs: readonly number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor((s.length - 1) / 2)]!; };

/**
 * The median of the rounds' own ratios: round i's shm rate over round i's socket rate, measured minutes (for a
 * row's pair, seconds) apart. On a VM whose speed moves by 2x within a run, the ratio of two medians can pair a
 * fast round of one side with a slow round of the other; this column cannot. Both are printed.
 */
export const pairedRatio = (shm: readonly number[], socket: readonly number[]): number => median(shm.map((v, i) => v / socket[i]!));

/** A per-direction row's entry, from its rounds. */
export function rateRow(row: string, bytes: number, shmRounds: number[], unixRounds: number[]): RateRow {
  const shm = median(shmRounds);
  const unix = median(unixRounds);
  return { row, bytes, shmRounds, unixRounds, shm, unix, ratio: shm / unix, paired: pairedRatio(shmRounds, unixRounds) };
}

const MiB = 1 << 20;

export function fmtRate(bytes: number, perSec: number): string {
  if (bytes >= MiB) return `${((perSec * bytes) / 1e9).toFixed(2)} GB/s`;
  return perSec >= 1e6 ? `${(perSec / 1e6).toFixed(2)}M msg/s` : `${(perSec / 1e3).toFixed(0)}k msg/s`;
}

/** How each row is named in the tables, and the issue's goal for it (a ratio to the socket), if any. */
const ROW_INFO: Record<string, { name: string; goal?: number; zeroCopy?: boolean }> = {
  object: { name: '64 B object `{ i, s, f }` (`send` / `for await`)', goal: 2 },
  bytes64: { name: '64 B Buffer (`sendBytes` / `for await`)', goal: 2 },
  bytes1K: { name: '1 KiB Buffer' },
  bytes1M: { name: '1 MiB Buffer', goal: 2 },
  message64: { name: "64 B Buffer received through `on('message')` (socket: 64 B Buffer)" },
  claim64: { name: '`claim(64)`, `claim.bytes.set(…)`, `commit()` per record / `poll`', goal: 5, zeroCopy: true },
  claimAt64: { name: '`claim(64)`, `claim.memory.set(…, claim.offset)`, `commit()` / `poll`', goal: 5, zeroCopy: true },
  batch64: { name: '`claimBatch(64, 256)` + `commit()` / `poll`', goal: 5, zeroCopy: true },
};

// Numbers are shown as the goals are judged: ratios rounded down to two decimals, times up to one (two for the
// bare ping-pong), so a row never reads "2.00x — missed" or "2.0 µs — missed".
const down2 = (x: number) => Math.floor(x * 100) / 100;
const up = (x: number, digits: number) => Math.ceil(x * 10 ** digits) / 10 ** digits;
const ratioText = (x: number) => `${down2(x).toFixed(2)}x`;

/** "met", "missed", or which of the two ratios meets the goal when only one does. */
function verdict(goal: number, ratio: number, paired: number): string {
  const a = down2(ratio) >= goal;
  const b = down2(paired) >= goal;
  if (a && b) return `${goal}x — met`;
  if (!a && !b) return `${goal}x — missed`;
  return `${goal}x — met by the ${a ? 'ratio of medians' : 'round by round ratio'} only`;
}

function tripVerdict(l: Latency): string {
  const p50 = up(l.p50, 1) <= 2 ? 'p50 met' : 'p50 missed';
  const p99 = up(l.p99, 1) <= 50 ? 'p99 met' : 'p99 missed';
  return `≤ 2 / ≤ 50 µs — ${p50}, ${p99}`;
}

const us = (x: number, digits = 1) => `${up(x, digits).toFixed(digits)} µs`;
const trip = (l: Latency, digits = 1) => `${us(l.p50, digits)} / ${us(l.p99, digits)}`;

/**
 * The comparison as Markdown: the rows through the API people write (with their goals and the round trips), then
 * the zero-copy rows and the bare reference, each against the socket of the same run. Deterministic: the same
 * report always renders to the same text.
 */
export function renderEveryday(report: EverydayReport): string {
  const lines: string[] = [];
  const socket64 = report.table.find((r) => r.row === 'bytes64');
  const rateLine = (r: RateRow) => {
    const info = ROW_INFO[r.row] ?? { name: r.row };
    const goal = info.goal === undefined ? '—' : verdict(info.goal, r.ratio, r.paired);
    return `| ${info.name} | ${fmtRate(r.bytes, r.shm)} | ${fmtRate(r.bytes, r.unix)} | ${ratioText(r.ratio)} | ${ratioText(r.paired)} | ${goal} |`;
  };
  const header = '| payload | shm:// | Unix socket | shm / socket | round by round | goal |\n|---|--:|--:|--:|--:|--:|';
  const everyday = report.table.filter((r) => !ROW_INFO[r.row]?.zeroCopy);
  const zeroCopy = report.table.filter((r) => ROW_INFO[r.row]?.zeroCopy);
  const when = report.date.slice(0, 16).replace('T', ' ');
  const warm = report.warmUp ? `, each rate after ${Math.round(report.warmUp * 100)}% as many uncounted messages (warm-up)` : '';
  const cpu = `${report.cpu ?? 'cpu'}${report.cpuId ? ` (${report.cpuId})` : ''}`;
  lines.push(`Run of ${when} UTC: ${report.rounds} rotated rounds, medians, scale ${report.scale}${warm}${report.query ? `, \`--query '${report.query}'\`` : ''}; ${report.cpus} × ${cpu}, Node ${report.node}.`);
  lines.push('');
  if (everyday.length > 0 || report.latency) {
    lines.push(header);
    for (const r of everyday) lines.push(rateLine(r));
    if (report.latency) {
      lines.push(`| round trip, 64 B object, p50 / p99 | ${trip(report.latency.shm)} | ${trip(report.latency.unix)} | | | ${tripVerdict(report.latency.shm)} |`);
    }
    if (report.latencyBuffer64) {
      lines.push(`| round trip, 64 B Buffer (\`sendBytes\` / \`for await\`), p50 / p99 | ${trip(report.latencyBuffer64.shm)} | ${trip(report.latencyBuffer64.unix)} | | | — |`);
    }
    const socketTrip = report.latency ? trip(report.latency.unix) : '';
    if (report.requests) lines.push(`| request/reply (\`request\` / \`handle\`; socket: the object's round trip), p50 / p99 | ${trip(report.requests)} | ${socketTrip} | | | — |`);
    if (report.onMessage) lines.push(`| round trip through \`on('message')\` on both sides (socket: the object's round trip), p50 / p99 | ${trip(report.onMessage)} | ${socketTrip} | | | — |`);
  }
  if (zeroCopy.length > 0 || report.bare) {
    if (lines.at(-1) !== '') lines.push('');
    lines.push('| zero copy, 64 B (socket: its 64 B Buffer row) | shm:// | Unix socket | shm / socket | round by round | goal |\n|---|--:|--:|--:|--:|--:|');
    for (const r of zeroCopy) lines.push(rateLine(r));
    if (report.bare && socket64) {
      const b = report.bare;
      const refLine = (name: string, rounds: number[]) => {
        const rate = median(rounds);
        return `| ${name} | ${fmtRate(64, rate)} | ${fmtRate(64, socket64.unix)} | ${ratioText(rate / socket64.unix)} | ${ratioText(pairedRatio(rounds, socket64.unixRounds))} | (reference) |`;
      };
      lines.push(refLine('bare ring, not shmbus, published per record', b.eachRounds));
      lines.push(refLine(`bare ring, not shmbus, published per ${b.batch} records`, b.batchedRounds));
      lines.push(`| bare ping-pong of one word, not shmbus, p50 / p99 | ${trip(b.trip, 2)} | | | | (reference) |`);
    }
  }
  return lines.join('\n');
}

export const README_BEGIN = '<!-- bench:everyday begin: generated by `npm run bench:readme` from bench/results/everyday.json; do not edit -->';
export const README_END = '<!-- bench:everyday end -->';

/** `readme` with what lies between the markers replaced by `tables`; throws unless each marker is there once. */
export function withTables(readme: string, tables: string): string {
  const begin = readme.indexOf(README_BEGIN);
  const end = readme.indexOf(README_END);
  if (begin < 0 || end < begin || readme.indexOf(README_BEGIN, begin + 1) >= 0 || readme.indexOf(README_END, end + 1) >= 0) {
    throw new Error('README.md must hold each bench:everyday marker exactly once, begin before end');
  }
  return `${readme.slice(0, begin + README_BEGIN.length)}\n${tables}\n${readme.slice(end)}`;
}

/** What lies between the markers (the inverse of withTables), or undefined without them. */
export function tablesIn(readme: string): string | undefined {
  const begin = readme.indexOf(README_BEGIN);
  const end = readme.indexOf(README_END);
  if (begin < 0 || end < begin) return undefined;
  return readme.slice(begin + README_BEGIN.length + 1, end - 1);
}
