#!/usr/bin/env node
// The shmbus command: parses the command line and hands each command to the code that owns it.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { LAYOUT_VERSION } from '../assembly/layout.js';
import { ALL_REAPERS, clean } from '../host/clean.js';

const USAGE = `usage: shmbus <command>

  clean [--dir <dir>]... [--match <text>]... [--dry-run] [-v|--verbose]
      Removes what shmbus processes that died without cleaning up left behind. Only objects whose name is one
      shmbus gives and whose content proves it, whose creator (and every user) is dead, and that the caller owns
      (root: every user's). Never follows a symlink, never removes a live object. Channel segments (shm://,
      sysv://, file://) need no cleaning: they never have a name, so even SIGKILL leaves none behind.
        --dir <dir>     also look in <dir> for handshake FIFOs (fifo://)
                        (repeatable; no directory by default: endpoints can be anywhere)
        --match <text>  only objects whose name contains <text> (repeatable: any of them)
        --dry-run       say what would be removed, remove nothing
        -v, --verbose   also list what was kept, and why
      Kinds:
${ALL_REAPERS.map((r) => `        ${r.kind.padEnd(14)} ${r.pattern}`).join('\n')}

  version       print the package and layout versions
  help          print this text`;

function version(): void {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  console.log(`shmbus ${pkg.version}, layout ${LAYOUT_VERSION >>> 16}.${LAYOUT_VERSION & 0xffff}`);
}

function runClean(args: string[]): void {
  const { values } = parseArgs({
    args,
    options: {
      dir: { type: 'string', multiple: true },
      match: { type: 'string', multiple: true },
      'dry-run': { type: 'boolean' },
      verbose: { type: 'boolean', short: 'v' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) { console.log(USAGE); return; }
  const { lines } = clean({ dirs: values.dir ?? [], match: values.match, dryRun: values['dry-run'], verbose: values.verbose });
  for (const l of lines) console.log(l);
}

const [command, ...rest] = process.argv.slice(2);
try {
  if (command === 'clean') runClean(rest);
  else if (command === 'version') version();
  else if (command === 'help' || command === '--help' || command === '-h' || command === undefined) console.log(USAGE);
  else {
    console.error(`shmbus: unknown command ${command}\n${USAGE}`);
    process.exitCode = 2;
  }
} catch (error) {
  // parseArgs refuses unknown options and missing values with a TypeError naming them (ERR_PARSE_ARGS_*).
  console.error(`shmbus: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 2;
}
