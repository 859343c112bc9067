#!/usr/bin/env node
// The shmbus command: dispatches to the commands in cli/, one file each. A new command is one line in COMMANDS.
// Each loads only when it runs (or when `shmbus help` lists it), so a library that cannot load (koffi, wasm)
// still leaves `shmbus doctor` able to say why.
import type { Command } from '../cli/command.js';
import { UsageError } from '../cli/command.js';

const COMMANDS: Record<string, () => Promise<Command>> = {
  ls: async () => (await import('../cli/ls.js')).ls,
  stat: async () => (await import('../cli/stat.js')).stat,
  tail: async () => (await import('../cli/tail.js')).tail,
  pub: async () => (await import('../cli/pub.js')).pub,
  req: async () => (await import('../cli/req.js')).req,
  doctor: async () => (await import('../cli/doctor.js')).doctor,
  bench: async () => (await import('../cli/bench.js')).bench,
  clean: async () => (await import('../cli/clean.js')).clean,
  version: async () => (await import('../cli/version.js')).version,
  bridge: async () => (await import('../bridge/command.js')).bridgeCliCommand,
};

async function usage(): Promise<string> {
  const lines = ['usage: shmbus <command> [options]    (shmbus <command> --help for its options)', ''];
  for (const [name, load] of Object.entries(COMMANDS)) {
    let summary: string;
    try { summary = (await load()).summary; } catch (error) { summary = `(cannot load: ${error instanceof Error ? error.message : String(error)})`; }
    lines.push(`  ${name.padEnd(10)} ${summary}`);
  }
  lines.push(`  ${'help'.padEnd(10)} this text`);
  return lines.join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    console.log(await usage());
    return 0;
  }
  const load = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!load) {
    console.error(`shmbus: unknown command ${name}\n${await usage()}`);
    return 2;
  }
  const command = await load();
  try {
    return (await command.run(rest)) ?? 0;
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`shmbus ${name}: ${error.message}\n${command.usage}`);
      return 2;
    }
    const e = error as { code?: unknown; message?: unknown };
    console.error(`shmbus ${name}: ${typeof e.code === 'string' ? `${e.code}: ` : ''}${String(e.message ?? error)}`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
