/**
 * Wake mechanisms: how a parked side of a shm channel sleeps, and how its peer wakes it.
 *
 * The ring decides *whether* to sleep and *whether* to ring (park sequences, see assembly/ring.ts); a mechanism
 * only carries the wakeup. Each side picks its own mechanism with `wake=` on its URL and tells the peer in the
 * handshake how to ring it (`params`): a side sleeping on a futex is rung with FUTEX_WAKE, one sleeping on the
 * control socket is rung with a doorbell byte, whatever the other side uses for itself.
 *
 * A ring happens at most once per park of the peer, so the cost of a mechanism is paid only when a side
 * actually sleeps; a busy channel makes no system call at all.
 */
import type net from 'node:net';
import type { Engine } from '../engine.js';
import type { RingEnd } from '../ring.js';
import { DOORBELL_DATA, DOORBELL_SPACE } from '../control.js';
import { BadUrlError } from '../errors.js';
import type { PeerCredentials } from '../peer.js';

/** The peer has records to read. */
export const WAKE_DATA = 0;
/** The peer has room to write. */
export const WAKE_SPACE = 1;
export type WakeKind = typeof WAKE_DATA | typeof WAKE_SPACE;

/** This side's sleeping. `wait(kind)` is called after the ring said "park"; the mechanism then calls the
 * channel's `onWake(kind)` once when rung. `cancel` is called when the channel stopped waiting by other means. */
export interface Sleeper {
  wait(kind: WakeKind): void;
  cancel(kind: WakeKind): void;
  close(): void;
}

/** Rings a peer that sleeps with a given mechanism. */
export interface Bell {
  ring(kind: WakeKind): void;
  close(): void;
}

export interface SleeperContext {
  engine: Engine;
  /** Our outbound ring (we wait on it for WAKE_SPACE) and inbound ring (WAKE_DATA). */
  tx: RingEnd;
  rx: RingEnd;
  socket: net.Socket;
  onWake(kind: WakeKind): void;
  /** What this side sent the peer for this connection (the result of `params()`), so a mechanism can tie the
   * sleeper to it (a reservation, a channel id the peer's rings carry). */
  params?: Record<string, unknown>;
}

export interface BellContext {
  engine: Engine;
  tx: RingEnd;
  rx: RingEnd;
  socket: net.Socket;
  /** What the peer put in the handshake for its mechanism. */
  params: Record<string, unknown>;
  /** Who the peer is, as the kernel says (SO_PEERCRED of the control socket). A mechanism whose params name a
   * kernel object (a thread to signal, a semaphore, a queue) rings only objects that provably belong to this
   * peer, and refuses to build a bell at all when it is unknown. */
  peer?: PeerCredentials;
}

export interface WakeMechanism {
  /** The name used in `wake=` and in the handshake. */
  readonly name: string;
  /** What the peer needs to ring us (JSON). Called once per connection, before the handshake line is sent. */
  params(): Record<string, unknown>;
  /** Gives back what `params()` reserved for a connection whose handshake failed before its sleeper was made; nothing
   * for params a sleeper took already. */
  unreserve(params: Record<string, unknown>): void;
  sleeper(ctx: SleeperContext): Sleeper;
  /** How to ring a peer; throws (ERR_SHMBUS_HANDSHAKE, PERMISSION_DENIED, PEER_DEAD) when `params` do not name
   * this peer's own object (see `checkPeer`). */
  bell(ctx: BellContext): Bell;
  /**
   * Checks a peer's params against its kernel-verified credentials without keeping anything open: the same
   * checks `bell` makes (which keeps what it verified, so nothing can be swapped between check and use). Throws
   * as `bell` does. Lets a handshake refuse a peer before allocating anything for it.
   */
  checkPeer(params: Record<string, unknown>, peer: PeerCredentials | undefined): void;
}

const BYTES = [Buffer.from([DOORBELL_DATA]), Buffer.from([DOORBELL_SPACE])] as const;

/** Per control socket and kind: the write generation of a doorbell byte that went into Node's write queue and
 * has not been flushed to the kernel yet, or 0. */
const queuedBells = new WeakMap<net.Socket, [number, number]>();
let generation = 0;

/**
 * Writes a doorbell byte of `kind`, unless a byte of that kind still waits in Node's write queue. A doorbell
 * only says "look at the ring", and the peer cannot have looked because of a byte it has not received, so a
 * second one adds nothing: a peer that stops reading its control socket costs us at most one queued byte per
 * kind, never a queue that grows with every ring.
 *
 * A byte counts as queued only when the write left it in user space (writableLength > 0 right after it) and
 * until its write callback runs. A byte handed to the kernel at once is never "queued", even though its
 * callback comes a tick later: the peer may already have read it and parked again, and skipping the next ring
 * then would lose a wakeup.
 */
export function writeDoorbell(socket: net.Socket, kind: WakeKind): void {
  if (socket.destroyed || socket.writableEnded) return;
  let queued = queuedBells.get(socket);
  if (queued === undefined) queuedBells.set(socket, (queued = [0, 0]));
  if (queued[kind] !== 0 && socket.writableLength > 0) return;
  const gen = ++generation;
  const flags = queued;
  socket.write(BYTES[kind], () => { if (flags[kind] === gen) flags[kind] = 0; });
  flags[kind] = socket.writableLength > 0 ? gen : 0;
}

/**
 * The default park path: one byte on the channel's control socket, read through the event loop (epoll), so no
 * thread blocks. The channel already reads doorbell bytes from the socket, so sleeping needs nothing more.
 */
export const doorbell: WakeMechanism = {
  name: 'doorbell',
  params: () => ({}),
  unreserve() {},
  sleeper: () => ({ wait() {}, cancel() {}, close() {} }),
  bell: ({ socket }) => ({
    ring(kind) {
      writeDoorbell(socket, kind);
    },
    close() {},
  }),
  // The bytes go on the connection itself: nothing outside it is named.
  checkPeer() {},
};

const mechanisms = new Map<string, WakeMechanism>([['doorbell', doorbell]]);

/** Makes a mechanism available to `wake=` and to the handshake. */
export function registerWakeMechanism(mechanism: WakeMechanism): void {
  mechanisms.set(mechanism.name, mechanism);
}

/** The mechanism a parked side uses for the given `wake=` mode (`adaptive` and `spin` park on the doorbell). */
export function mechanismFor(mode: string, url = ''): WakeMechanism {
  const mechanism = mechanisms.get(mode === 'adaptive' || mode === 'spin' ? 'doorbell' : mode);
  if (!mechanism) throw new BadUrlError('unknown wake mode', url, { details: { wake: mode, supported: wakeModes().join(',') } });
  return mechanism;
}

/** Every `wake=` value accepted. */
export function wakeModes(): string[] {
  return ['adaptive', 'spin', ...mechanisms.keys()];
}
