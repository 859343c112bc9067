/**
 * `conn.on('message', fn)` for every connection (Node's `process.on('message')` style), written once: while
 * 'message' listeners are attached, hands them every message — what was already received, synchronously, then one
 * wait for more. Use either this or the iterator. Errors go to 'error' listeners as always; 'close' follows the
 * last message. The connection supplies its receive side (`MessageSource`) and starts `dispatchMessages` when a
 * 'message' listener is added.
 */

/** What the dispatcher needs of a connection's receive side. */
export interface MessageSource {
  listenerCount(event: 'message'): number;
  emit(event: 'message', value: unknown): boolean;
  /** Whether a received message waits (the next `takeReceived` returns it). */
  hasReceived(): boolean;
  takeReceived(): unknown;
  /** The iterator's next step: waits for a message, or the end (done), or throws the connection's failure. */
  next(): Promise<IteratorResult<unknown>>;
  /** Puts `value` back first, for the iterator (the listener went away while the dispatcher waited). */
  putBack(value: unknown): void;
}

const running = new WeakSet<MessageSource>();

/** Dispatches to 'message' listeners until none is left or the connection ends; one run per connection at a time. */
export async function dispatchMessages(source: MessageSource): Promise<void> {
  if (running.has(source)) return;
  running.add(source);
  const listening = () => source.listenerCount('message') > 0;
  try {
    while (listening()) {
      while (source.hasReceived() && listening()) source.emit('message', source.takeReceived());
      if (!listening()) break;
      const r = await source.next();
      if (r.done) break;
      if (!listening()) {
        source.putBack(r.value);
        break;
      }
      source.emit('message', r.value);
    }
  } catch {
    /* the failure was reported to 'error' listeners by the connection */
  } finally {
    running.delete(source);
  }
}
