// A nats-server of a test's own: 127.0.0.1, a random free port, JetStream in a temporary store directory. The
// server runs as a child (test/helpers.ts startChild), so it dies with the test; the directory is removed after.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startChild, type Child } from '../helpers.js';

export interface NatsServer {
  /** nats://127.0.0.1:<port> */
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  /** The running server process. */
  child(): Child;
  /** SIGKILLs the server and waits for it to be gone. */
  kill(): Promise<void>;
  /** Starts it again on the same port and store; resolves once it accepts connections. */
  restart(): Promise<void>;
}

interface TapLike { teardown(fn: () => unknown): void; fail(message: string): unknown }

/** Why the bridge tests cannot run here, if they cannot. */
export function natsMissing(): string | undefined {
  const r = spawnSync('nats-server', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return 'nats-server is not installed (apt-get install nats-server)';
  return undefined;
}

export async function startNats(t: TapLike): Promise<NatsServer> {
  const storeDir = mkdtempSync(join(tmpdir(), 'shmbus-nats-'));
  let child: Child;
  const launch = async (port: number): Promise<number> => {
    // exec: the shell becomes the server (one process); its log goes to stdout, where child.line() reads it.
    child = startChild(t, ['sh', '-c', `exec nats-server -a 127.0.0.1 -p ${port} -js -sd '${storeDir}' 2>&1`]);
    const listening = await child.line(/Listening for client connections on/, 30_000);
    await child.line('Server is ready', 30_000);
    return Number(/:(\d+)\s*$/.exec(listening)![1]);
  };
  // -1: the server picks a free port itself (no window where another process could take it).
  const port = await launch(-1);
  // The server that runs last (after a restart) must be gone before its store is removed, or it writes it anew.
  const remove = () => rmSync(storeDir, { recursive: true, force: true });
  process.once('exit', remove);
  t.teardown(async () => {
    child.kill('SIGKILL');
    await child.exit;
    remove();
    process.off('exit', remove);
  });
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    child: () => child,
    async kill() {
      child.kill('SIGKILL');
      await child.exit;
    },
    async restart() {
      await launch(port);
    },
  };
}
