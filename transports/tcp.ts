/**
 * tcp: TCP stream sockets, framed as in stream.ts, with Nagle off (every batch goes out at once).
 *
 *   tcp://127.0.0.1:7000      tcp://[::1]:7000      tcp://localhost:7000
 *
 * Port 0 lets the kernel choose when listening; the listener's `url` then carries the chosen port.
 * Options: `maxQueued`. Resolving a host name happens once, at connect, not per message.
 */
import net from 'node:net';
import { BadUrlError } from '../host/errors.js';
import { maxConnectionsOf, parseTransportQuery, splitUrl } from './base.js';
import { ServerListener, StreamConnection, socketError, whenConnected } from './stream.js';
import type { Transport, ConnectOptions, ListenOptions, Connection, ConnectionListener } from './contract.js';

const DEFAULT_TIMEOUT = 5000;

export interface TcpEndpoint {
  url: string;
  host: string;
  port: number;
  query: string;
  maxQueued: number;
}

export function parseTcpUrl(url: string): TcpEndpoint {
  const { rest, query } = splitUrl(url, 'tcp');
  const { maxQueued } = parseTransportQuery(url, query);
  const m = /^\/\/(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})\/?$/.exec(rest);
  if (!m) throw new BadUrlError('tcp: URL is tcp://host:port', url);
  const host = m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!;
  const port = Number(m[2]);
  if (port > 65535) throw new BadUrlError('tcp: port out of range (0 … 65535)', url, { details: { port } });
  return { url, host, port, query, maxQueued };
}

function formatUrl(host: string, port: number, query: string): string {
  return `tcp://${host.includes(':') ? `[${host}]` : host}:${port}${query ? '?' + query : ''}`;
}

function open(url: string, maxQueued: number, socket: net.Socket): StreamConnection {
  socket.setNoDelay(true);
  return new StreamConnection({ url, maxQueued, input: socket, output: socket });
}

async function listen(url: string, options: ListenOptions = {}): Promise<ConnectionListener> {
  const ep = parseTcpUrl(url);
  const maxConnections = maxConnectionsOf(options);
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => reject(socketError(error, url, 'listen')));
    server.listen({ host: ep.host, port: ep.port }, () => {
      server.removeAllListeners('error');
      resolve();
    });
  });
  const address = server.address() as net.AddressInfo;
  const bound = formatUrl(ep.host, address.port, ep.query);
  return new ServerListener(bound, server, maxConnections, (socket) => open(bound, ep.maxQueued, socket));
}

async function connect(url: string, options: ConnectOptions = {}): Promise<Connection> {
  const ep = parseTcpUrl(url);
  if (ep.port === 0) throw new BadUrlError('tcp: cannot connect to port 0', url);
  const socket = await whenConnected(net.connect({ host: ep.host, port: ep.port, allowHalfOpen: true }), url, options.timeout ?? DEFAULT_TIMEOUT);
  return open(url, ep.maxQueued, socket);
}

export const tcpTransport: Transport = { name: 'tcp', schemes: ['tcp'], listen, connect };
