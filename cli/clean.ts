/** `shmbus clean`: removes what dead shmbus processes left behind (host/clean.ts runs every reaper). */
import { ALL_REAPERS, clean as runClean } from '../host/clean.js';
import { defineCommand, toJson } from './command.js';

export const clean = defineCommand({
  name: 'clean',
  summary: 'remove what dead shmbus processes left behind',
  usage: `usage: shmbus clean [--dir <dir>]... [--match <text>]... [--dry-run] [-v|--verbose] [--json]

  Removes what shmbus processes that died without cleaning up left behind. Only objects whose name is one
  shmbus gives and whose content proves it, whose creator (and every user) is dead, and that the caller owns
  (root: every user's). Never follows a symlink, never removes a live object. Channel segments (shm://,
  sysv://, file://) need no cleaning: they never have a name, so even SIGKILL leaves none behind.
    --dir <dir>     also look in <dir> for handshake FIFOs (fifo://)
                    (repeatable; no directory by default: endpoints can be anywhere)
    --match <text>  only objects whose name contains <text> (repeatable: any of them)
    --dry-run       say what would be removed, remove nothing
    -v, --verbose   also list what was kept, and why
    --json          the report as JSON { root, outcomes: [{ kind, name, uid, action, why }], notes }
  Kinds:
${ALL_REAPERS.map((r) => `    ${r.kind.padEnd(14)} ${r.pattern}`).join('\n')}`,
  options: {
    dir: { type: 'string', multiple: true },
    match: { type: 'string', multiple: true },
    'dry-run': { type: 'boolean' },
    verbose: { type: 'boolean', short: 'v' },
    json: { type: 'boolean' },
  },
  run({ values }) {
    const { report, lines } = runClean({ dirs: values.dir ?? [], match: values.match, dryRun: values['dry-run'], verbose: values.verbose });
    if (values.json) console.log(toJson(report, 2));
    else for (const l of lines) console.log(l);
    return 0;
  },
});
