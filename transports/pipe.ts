/**
 * pipe: two anonymous pipes (pipe(2)) between a parent and a child it starts, framed as in stream.ts.
 *
 *   // parent
 *   const { child, connection } = spawnWithPipe(new URL('./worker.js', import.meta.url), ['arg'], { url: 'pipe:?maxQueued=64' });
 *   // child (worker.js)
 *   const conn = await connect('pipe:');          // same as pipe:?in=3&out=4
 *
 * spawnWithPipe creates both pipes with O_CLOEXEC (so no other child inherits them and end-of-file stays exact),
 * hands the child its ends as stdio fd 3 (parent → child, the child reads) and fd 4 (child → parent, the child
 * writes), closes those ends in the parent, and runs the module with this Node binary (like child_process.fork,
 * but no IPC channel). The parent's end is the returned `connection`; it needs no listen.
 *
 * Options: `maxQueued`; in the child also `in` and `out`, the inherited fds (default 3 and 4). `pipe:` has no
 * endpoint to listen on: listen() is ERR_SHMBUS_BAD_URL. Nothing is created in the file system.
 */
import net from 'node:net';
import fs from 'node:fs';
import { spawn, type ChildProcess, type SpawnOptions, type StdioOptions } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BadArgumentError, BadUrlError, ErrorCode, ShmbusError } from '../host/errors.js';
import { growPipe, pipe } from '../host/sys/fifo.js';
import { parseTransportQuery, splitUrl } from './base.js';
import { StreamConnection } from './stream.js';
import type { Transport, Connection, ConnectionListener } from './contract.js';

/** The fds a child started by spawnWithPipe reads from and writes to. */
export const CHILD_IN_FD = 3;
export const CHILD_OUT_FD = 4;
/** Pipe buffer asked for (capped by /proc/sys/fs/pipe-max-size): large messages then need fewer wakeups. */
export const PIPE_BYTES = 1 << 20;

export interface PipeEndpoint {
  url: string;
  inFd: number;
  outFd: number;
  maxQueued: number;
}

export function parsePipeUrl(url: string): PipeEndpoint {
  const { rest, query } = splitUrl(url, 'pipe');
  if (rest !== '') throw new BadUrlError('pipe: URL is pipe: with options only (pipe:?in=3&out=4)', url);
  const { maxQueued, params } = parseTransportQuery(url, query, ['in', 'out']);
  const fd = (name: string, fallback: number) => {
    const text = params.get(name);
    if (text === null) return fallback;
    if (!/^\d{1,6}$/.test(text)) throw new BadUrlError(`${name} must be a file descriptor number`, url, { details: { [name]: text } });
    return Number(text);
  };
  const inFd = fd('in', CHILD_IN_FD);
  const outFd = fd('out', CHILD_OUT_FD);
  if (inFd === outFd) throw new BadUrlError('in and out must be different pipes', url);
  return { url, inFd, outFd, maxQueued };
}

export interface PipeSpawnOptions extends Omit<SpawnOptions, 'stdio'> {
  /** stdin, stdout, stderr of the child (fds 0-2); fds 3 and 4 are the pipes. Default: inherit all three. */
  stdio?: StdioOptions;
  /** Node options for the child (default: none; this process's execArgv is not copied). */
  execArgv?: string[];
  /** Options for the parent's end, as a pipe: URL (maxQueued). */
  url?: string;
}

export interface PipeChild {
  child: ChildProcess;
  connection: Connection;
}

/** Starts `module` in a child Node process connected to this one by two anonymous pipes. */
export function spawnWithPipe(module: string | URL, args: readonly string[] = [], options: PipeSpawnOptions = {}): PipeChild {
  const { stdio = 'inherit', execArgv = [], url = 'pipe:', ...spawnOptions } = options;
  const ep = parsePipeUrl(url);
  if (ep.inFd !== CHILD_IN_FD || ep.outFd !== CHILD_OUT_FD) throw new BadUrlError('in/out name the child\'s fds; spawnWithPipe chooses them', url);
  const base = typeof stdio === 'string' ? [stdio, stdio, stdio] : [...stdio];
  if (base.length > 3) throw new BadArgumentError('stdio may name fds 0-2 only; 3 and 4 are the pipes', { length: base.length });
  while (base.length < 3) base.push('inherit');
  const script = module instanceof URL ? fileURLToPath(module) : module;

  const [childIn, parentOut] = pipe();
  let parentIn = -1;
  let childOut = -1;
  let child: ChildProcess;
  try {
    [parentIn, childOut] = pipe();
    growPipe(parentOut, PIPE_BYTES);
    growPipe(childOut, PIPE_BYTES);
    child = spawn(process.execPath, [...execArgv, script, ...args], { ...spawnOptions, stdio: [...base, childIn, childOut] });
  } catch (error) {
    for (const fd of [parentIn, parentOut]) if (fd >= 0) fs.closeSync(fd);
    throw error;
  } finally {
    // The child has its own copies now (or never will): ours would keep the pipes open after it dies.
    for (const fd of [childIn, childOut]) if (fd >= 0) fs.closeSync(fd);
  }
  const input = new net.Socket({ fd: parentIn, readable: true, writable: false });
  const output = new net.Socket({ fd: parentOut, readable: false, writable: true });
  const connection = new StreamConnection({ url, maxQueued: ep.maxQueued, input, output });
  return { child, connection };
}

const taken = new Set<number>();

function checkPipe(fd: number, url: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.fstatSync(fd);
  } catch {
    throw new ShmbusError(ErrorCode.NOT_FOUND, 'no pipe at this fd: was the process started by spawnWithPipe?', { details: { url, fd } });
  }
  if (!stat.isFIFO()) throw new ShmbusError(ErrorCode.NOT_FOUND, 'this fd is not a pipe: was the process started by spawnWithPipe?', { details: { url, fd } });
  if (taken.has(fd)) throw new ShmbusError(ErrorCode.BAD_STATE, 'this pipe already carries a connection', { details: { url, fd } });
}

async function connect(url: string): Promise<Connection> {
  const ep = parsePipeUrl(url);
  checkPipe(ep.inFd, url);
  checkPipe(ep.outFd, url);
  taken.add(ep.inFd);
  taken.add(ep.outFd);
  const input = new net.Socket({ fd: ep.inFd, readable: true, writable: false });
  const output = new net.Socket({ fd: ep.outFd, readable: false, writable: true });
  return new StreamConnection({ url, maxQueued: ep.maxQueued, input, output });
}

async function listen(url: string): Promise<ConnectionListener> {
  parsePipeUrl(url);
  throw new BadUrlError('pipe: has no endpoint to listen on; the parent starts the child with spawnWithPipe()', url);
}

export const pipeTransport: Transport = { name: 'pipe', schemes: ['pipe'], listen, connect };
