/**
 * The shm transport (shm://, sysv://, file://): rings in a shared segment, one connection per segment, set up
 * over a control socket. listener.ts and connect.ts are the two sides of the handshake (handshake.ts what they
 * share, control.ts the protocol); channel.ts is the connection.
 */
import type { Transport } from '../contract.js';
import { listen } from './listener.js';
import { connect } from './connect.js';

export { Listener, listen } from './listener.js';
export { connect } from './connect.js';
export { Channel, Claim, ClaimBatch, type RecordHandler } from './channel.js';

/** Shared-memory rings: the reference transport. */
export const shmTransport: Transport = {
  name: 'shm',
  schemes: ['shm', 'sysv', 'file'],
  listen,
  connect,
};
