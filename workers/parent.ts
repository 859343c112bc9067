/**
 * The worker's side: `parentChannel()` gives a module started by `spawn` (or by a Pool) its channel to the
 * parent, in a child process or a thread alike.
 */
import type { Channel } from '../transports/shm/channel.js';
import { ErrorCode, ShmbusError } from '../host/errors.js';
import { openWorkerChannel } from './pair.js';
import { channelSlot, takeWorkerContext } from './context.js';

/**
 * The channel to the parent that started this worker with `spawn` (the same one for every call). Rejects with
 * ERR_SHMBUS_BAD_STATE when this process or thread was not started by `spawn`, and with the segment's checks'
 * error (ERR_SHMBUS_PERMISSION_DENIED, ERR_SHMBUS_CORRUPT) when what it was handed is not a sound segment.
 */
export function parentChannel(): Promise<Channel> {
  const slot = channelSlot();
  const existing = slot.get();
  if (existing) return existing as Promise<Channel>;
  const context = takeWorkerContext();
  if (!context) {
    return Promise.reject(new ShmbusError(ErrorCode.BAD_STATE, 'parentChannel() needs a worker started by spawn() or a Pool', {
      details: { pid: process.pid },
    }));
  }
  const made = (async () => openWorkerChannel(context.geometry, context.segmentFd, context.socketFd, context.parentPid, `worker.${process.pid}`, context.claims, context.syncIdle))();
  slot.set(made);
  return made;
}
