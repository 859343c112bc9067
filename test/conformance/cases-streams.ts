// The conformance cases of the byte-stream transports (unix, tcp, pipe, fifo) and of shared memory (shm://,
// the reference implementation of the contract).
import { mkdtempSync, rmSync, readdirSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { filesIn, listenerCase, pipeCase, unixSockets, withQuery, type ConformanceCase } from './harness.js';

// tap also loads this file on its own (it has no tests then): creating anything happens on first use only.
let workDir: string | undefined;
/** Where unix socket files and FIFOs of this run live; removed by cleanupStreamCases. */
const dir = () => (workDir ??= mkdtempSync(join(tmpdir(), 'shmbus-conf-')));
const pid = process.pid;
let serial = 0;

export function cleanupStreamCases(): void {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
}

const named = (prefix: string) => () => filesIn(dir()).filter((f) => f.startsWith(prefix));

export const streamCases: ConformanceCase[] = [
  listenerCase({
    name: 'shm',
    url: (q) => withQuery(`shm://conf-${pid}-${++serial}`, q),
    leftovers: () => [
      // Segments are named after the endpoint (shmbus.<name>.<pid>.<n>): only this run's, other tests may run.
      ...readdirSync('/dev/shm').filter((f) => f.startsWith(`shmbus.conf-${pid}-`)),
      ...unixSockets(`@shmbus/shm/conf-${pid}-`),
    ],
    badUrls: ['shm://', 'shm://a b', 'shm://x?size=3000', 'shm://x?wake=pigeon'],
    endpointVisible: true,
  }),
  listenerCase({
    name: 'unix',
    url: (q) => withQuery(`unix://${dir()}/u${++serial}.sock`, q),
    leftovers: () => [...named('u')(), ...unixSockets(dir())],
    badUrls: ['unix://relative/path', 'unix:relative', 'unix://@', 'unix:///tmp/', `unix:///${'x'.repeat(200)}`],
    endpointVisible: true,
  }),
  listenerCase({
    name: 'unix-abstract',
    url: (q) => withQuery(`unix://@shmbus-conf-${pid}-${++serial}`, q),
    leftovers: () => unixSockets(`@shmbus-conf-${pid}-`),
    badUrls: ['unix://@', 'unix:@name'],
    endpointVisible: true,
  }),
  listenerCase({
    name: 'tcp',
    url: (q) => withQuery('tcp://127.0.0.1:0', q),
    // A leaked TCP socket shows up in the suite's open-fd check.
    leftovers: () => [],
    badUrls: ['tcp://127.0.0.1', 'tcp://127.0.0.1:99999', 'tcp://:80', 'tcp://127.0.0.1:80/path', 'tcp://a_b:80'],
    endpointVisible: false,
    idleUrl: async () => {
      // A port that was free a moment ago.
      const server = net.createServer();
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as net.AddressInfo).port;
      await new Promise((r) => server.close(r));
      return `tcp://127.0.0.1:${port}`;
    },
  }),
  pipeCase({ name: 'pipe', leftovers: () => [] }),
  listenerCase({
    name: 'fifo',
    url: (q) => withQuery(`fifo://${dir()}/f${++serial}`, q),
    leftovers: named('f'),
    badUrls: ['fifo://relative', 'fifo:relative', 'fifo:///tmp/'],
    endpointVisible: true,
  }),
];
