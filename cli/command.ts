/**
 * What every `shmbus` command is: a name, a one-line summary for the command list, its usage text, the
 * `util.parseArgs` options it takes, and a function that runs it. bin/shmbus.ts dispatches over a table of these,
 * so a new command is one file here and one line there.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

type Options = NonNullable<ParseArgsConfig['options']>;

/** The parsed command line of one command. */
export interface Parsed<O extends Options> {
  values: ReturnType<typeof parseArgs<{ options: O; allowPositionals: true; strict: true }>>['values'];
  positionals: string[];
}

/** One `shmbus` command. `run` resolves with the exit code (0 when it returns nothing). */
export interface Command {
  readonly name: string;
  /** One line for `shmbus help`. */
  readonly summary: string;
  /** The full text `shmbus <name> --help` prints. */
  readonly usage: string;
  run(args: string[]): Promise<number | void> | number | void;
}

/** A usage error: bin/shmbus.ts prints it with the command's usage and exits 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/**
 * Defines a command: parses its arguments (strict: an unknown option or a missing value is a usage error), answers
 * `--help`/`-h` with the usage text, checks the count of positionals, and hands the rest to `run`.
 */
export function defineCommand<O extends Options>(spec: {
  name: string;
  summary: string;
  usage: string;
  options: O;
  /** How many positionals: [min, max]. */
  positionals?: [number, number];
  run(parsed: Parsed<O>): Promise<number | void> | number | void;
}): Command {
  const options = { ...spec.options, help: { type: 'boolean', short: 'h' } } as O;
  const [min, max] = spec.positionals ?? [0, 0];
  return {
    name: spec.name,
    summary: spec.summary,
    usage: spec.usage,
    run(args) {
      let parsed: Parsed<O>;
      try {
        parsed = parseArgs({ args, options, allowPositionals: true, strict: true }) as unknown as Parsed<O>;
      } catch (error) {
        // parseArgs refuses unknown options and missing values with a TypeError naming them (ERR_PARSE_ARGS_*).
        throw new UsageError(error instanceof Error ? error.message : String(error));
      }
      if ((parsed.values as { help?: boolean }).help) { console.log(spec.usage); return 0; }
      const n = parsed.positionals.length;
      if (n < min || n > max) {
        throw new UsageError(n < min ? `missing argument (${min === max ? min : `${min} to ${max}`} expected)` : `unexpected argument ${parsed.positionals[max]}`);
      }
      return spec.run(parsed);
    },
  };
}

/** A positive integer option, or a usage error naming it. */
export function positiveInt(text: string | undefined, name: string, fallback: number): number {
  if (text === undefined) return fallback;
  if (!/^[1-9][0-9]{0,9}$/.test(text)) throw new UsageError(`--${name} must be a positive integer, got ${text}`);
  return Number(text);
}

/** The longest wait a Node timer takes: a longer one fires at once (with a warning). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A positive number of milliseconds that a timer can wait, or a usage error naming the option. */
export function milliseconds(text: string | undefined, name: string, fallback: number): number {
  const ms = positiveInt(text, name, fallback);
  if (ms > MAX_TIMER_MS) throw new UsageError(`--${name} must be at most ${MAX_TIMER_MS} ms, got ${text}`);
  return ms;
}

/**
 * JSON text for anything a message can hold: bytes as `{ "$bytes": "<base64>" }`, bigints as strings, Maps as
 * objects. Used by every command that prints values.
 */
export function toJson(value: unknown, space?: number): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v === 'bigint') return v.toString();
    if (v instanceof Uint8Array) return { $bytes: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') };
    if (v instanceof Map) return Object.fromEntries(v);
    return v;
  }, space);
}

/** A value from a command-line JSON argument: `{ "$bytes": "<base64>" }` becomes bytes again (see toJson). */
export function fromJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text, (_key, v: unknown) => {
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
        const keys = Object.keys(v);
        const b = (v as { $bytes?: unknown }).$bytes;
        if (keys.length === 1 && typeof b === 'string') return new Uint8Array(Buffer.from(b, 'base64'));
      }
      return v;
    });
  } catch (error) {
    throw new UsageError(`${what} is not JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** Columns padded to their widest cell; the first row is the header. */
export function table(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => { widths[i] = Math.max(widths[i] ?? 0, cell.length); });
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n');
}

/** 1234567 → "1.23M", for rates and counts in tables. */
export function human(n: number, unit = ''): string {
  if (!Number.isFinite(n)) return '-';
  const abs = Math.abs(n);
  if (abs >= 1e9) return `${(n / 1e9).toFixed(2)}G${unit}`;
  if (abs >= 1e6) return `${(n / 1e6).toFixed(2)}M${unit}`;
  if (abs >= 1e3) return `${(n / 1e3).toFixed(1)}k${unit}`;
  return `${Math.round(n)}${unit}`;
}
