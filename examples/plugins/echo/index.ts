// echo: replies to every request with the request's value, and sends every message back, byte for byte (the
// value is never decoded: the raw msgpack goes straight from ring IN to ring OUT).
import { onRequest, onMessage, Incoming, Value, replyRaw, sendRaw } from '../../../assembly/guest';

export * from '../../../assembly/guest/exports';

onRequest((req: Incoming): Value | null => {
  replyRaw(req, req.valueStart, req.valueLength);
  return null;
});

onMessage((msg: Incoming): void => {
  sendRaw(msg.valueStart, msg.valueLength);
});
