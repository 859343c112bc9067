/**
 * `shmbus bridge <busUrl> <natsUrl> --export t1 --import t2`: runs a bridge until SIGINT or SIGTERM.
 * Prints one line `bridge ready name=… prefix=…` once every topic is bridged, and with `--stats <ms>` a JSON line
 * of counters that often.
 */
import { parseArgs } from 'node:util';
import type { Policy } from '../host/topic.js';
import { ShmbusError } from '../host/errors.js';
import { bridge, type TopicSpec } from './index.js';

/** What `shmbus bridge --help` prints. */
export const USAGE = `usage: shmbus bridge <busUrl> <natsUrl> [options]

Bridges the topics of a local bus to NATS: exported topics are published to <prefix>.<topic>, imported
subjects into local topics. Lossy topics ride core NATS, lossless ones a JetStream stream.

options:
  --export <topic>[:lossy|:lossless]   export a local topic (repeat, or comma-separate)
  --import <topic>[:lossy|:lossless]   import a subject into a local topic (repeat, or comma-separate)
  --prefix <prefix>                    subject prefix (default shmbus)
  --name <name>                        this bridge's stable identity (default: from host name and bus URL)
  --creds <file>                       NATS credentials file (or user:pass@ in the NATS URL)
  --stats <ms>                         print counters as a JSON line this often
  -h, --help                           this text

example:
  shmbus bridge shm://market nats://127.0.0.1:4222 --export ticks --import orders:lossless
`;

function specs(values: string[] | undefined): TopicSpec[] {
  const out: TopicSpec[] = [];
  for (const v of values ?? []) {
    for (const item of v.split(',').filter(Boolean)) {
      const [topic, policy] = item.split(':') as [string, string | undefined];
      if (policy !== undefined && policy !== 'lossy' && policy !== 'lossless') throw new Error(`bad policy in ${item}: lossy or lossless`);
      out.push(policy ? { topic, policy: policy as Policy } : { topic });
    }
  }
  return out;
}

/** Runs the command; resolves with the exit code (0 after a signal, 1 on an error, 2 on bad usage). */
/** `shmbus bridge` as a command of bin/shmbus.ts. */
export const bridgeCliCommand = {
  name: 'bridge',
  summary: 'bridge a bus\'s topics and request/reply to NATS until SIGINT or SIGTERM',
  usage: USAGE,
  run: (args: string[]) => bridgeCommand(args),
};

export async function bridgeCommand(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        export: { type: 'string', multiple: true },
        import: { type: 'string', multiple: true },
        prefix: { type: 'string' },
        name: { type: 'string' },
        creds: { type: 'string' },
        stats: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    process.stderr.write(`shmbus bridge: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (positionals.length !== 2) {
    process.stderr.write(`shmbus bridge: needs <busUrl> and <natsUrl>\n${USAGE}`);
    return 2;
  }
  let exports: TopicSpec[], imports: TopicSpec[];
  let statsMs: number | undefined;
  try {
    exports = specs(values.export);
    imports = specs(values.import);
    if (values.stats !== undefined) {
      statsMs = Number(values.stats);
      if (!Number.isFinite(statsMs) || statsMs < 10) throw new Error('--stats takes milliseconds (at least 10)');
    }
  } catch (error) {
    process.stderr.write(`shmbus bridge: ${(error as Error).message}\n`);
    return 2;
  }
  const [busUrl, natsUrl] = positionals as [string, string];
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const link = await bridge(busUrl, natsUrl, {
      export: exports, import: imports, prefix: values.prefix, name: values.name, credentials: values.creds, signal: stop.signal,
    });
    process.stdout.write(`bridge ready name=${link.name} prefix=${link.prefix} export=${exports.map((e) => e.topic).join(',')} import=${imports.map((e) => e.topic).join(',')}\n`);
    const timer = statsMs !== undefined ? setInterval(() => process.stdout.write(`${JSON.stringify(link.stats())}\n`), statsMs) : undefined;
    if (!stop.signal.aborted) await new Promise((resolve) => stop.signal.addEventListener('abort', resolve, { once: true }));
    clearInterval(timer);
    await link.close();
    return 0;
  } catch (error) {
    if (stop.signal.aborted) return 0;
    const code = error instanceof ShmbusError ? ` [${error.code}]` : '';
    process.stderr.write(`shmbus bridge: ${(error as Error).message}${code}\n`);
    return 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
