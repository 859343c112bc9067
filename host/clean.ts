/**
 * `shmbus clean`: every reaper, one run, and its report as text. The list below is the one place a new kind of
 * object is added (its reaper lives with the code that creates the object).
 */
import { busReapers, endpointReapers, handshakeReapers, reap, type Candidate, type Outcome, type ReapOptions, type ReapReport, type Reaper } from './reap.js';
import { wakeReapers } from './wake/reap.js';

/** Every kind of object shmbus names, in the order `shmbus clean` visits them. */
export const ALL_REAPERS: readonly Reaper[] = [...busReapers, ...wakeReapers, ...handshakeReapers, ...endpointReapers];

export interface CleanOptions extends ReapOptions {
  /** Also list what was kept, and why. */
  verbose?: boolean;
  /** Only objects whose name (path, or `shmid=… key=…`) contains one of these texts. */
  match?: readonly string[];
}

/** Runs every reaper; returns the report and the lines to print. */
export function clean(options: CleanOptions = {}): { report: ReapReport; lines: string[] } {
  const { match, verbose, ...rest } = options;
  const select = match === undefined ? rest.select : (c: Candidate) => match.some((m) => c.name.includes(m)) && (rest.select?.(c) ?? true);
  const report = reap(ALL_REAPERS, { ...rest, select });
  return { report, lines: formatReport(report, { verbose: verbose === true, dirs: rest.dirs ?? [], dryRun: rest.dryRun === true }) };
}

function line(o: Outcome): string {
  return `${o.action.padEnd(12)} ${o.kind.padEnd(13)} ${o.name}  (uid ${o.uid}: ${o.why})`;
}

/** The text `shmbus clean` prints: what it removed, with -v what it kept and why, and a summary. */
export function formatReport(report: ReapReport, opts: { verbose: boolean; dirs: readonly string[]; dryRun?: boolean }): string[] {
  const lines: string[] = [];
  if (report.root) lines.push(`running as root: dead objects of every user ${opts.dryRun ? 'would be' : 'are'} removed`);
  for (const o of report.outcomes) if (o.action !== 'kept' || opts.verbose) lines.push(line(o));
  if (opts.verbose) {
    for (const n of report.notes) lines.push(`note: ${n}`);
    if (opts.dirs.length === 0) lines.push('note: handshake FIFOs (fifo://) are only looked for in directories given with --dir');
  }
  const removed = report.outcomes.filter((o) => o.action === 'removed').length;
  const would = report.outcomes.filter((o) => o.action === 'would remove').length;
  const kept = report.outcomes.length - removed - would;
  lines.push(`${opts.dryRun ? `${would} would be removed` : `${removed} removed`}, ${kept} kept${kept > 0 && !opts.verbose ? ' (-v says why)' : ''}`);
  return lines;
}
