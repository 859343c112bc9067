/**
 * Every kernel transport, in the order tables list them. index.ts registers each (plus shm://).
 * One line per transport.
 */
import type { Transport } from './contract.js';
import { unixTransport } from './unix.js';
import { tcpTransport } from './tcp.js';
import { pipeTransport } from './pipe.js';
import { fifoTransport } from './fifo.js';
import { mqTransport } from './mq.js';
import { sysvmqTransport } from './sysvmq.js';

export const allTransports: Transport[] = [
  unixTransport,
  tcpTransport,
  pipeTransport,
  fifoTransport,
  mqTransport,
  sysvmqTransport,
];
