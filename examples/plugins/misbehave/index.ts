// misbehave: does what a hostile or buggy plugin does, on request, so the host's containment can be tested.
// The request is a string: 'unreachable', 'oob' (a load far past its memory), 'abort' (a failed assertion),
// 'fail' / 'fail-custom' (replyError with a shmbus code / another code), 'spin' (never returns), 'garbage' (sends bytes that are not msgpack), 'scribble' (replies, then overwrites the reply record's length in its own ring OUT with
// garbage before the host reads it), or anything else (replied as is).
import { onRequest, Incoming, Value, Kind, reserve, reply, replyError, sendRaw } from '../../../assembly/guest';
import { SEG_RING_CAPACITY_OFFSET, RING_TAIL_OFFSET, RING_HEADER_SIZE, GUEST_RING_OUT, ringOffset } from '../../../assembly/layout';

let turns: u64 = 0;

export * from '../../../assembly/guest/exports';

onRequest((req: Incoming): Value | null => {
  const v = req.value;
  const what = v.kind == Kind.String ? v.text : '';
  if (what == 'unreachable') unreachable();
  if (what == 'oob') return Value.int(load<u8>(<usize>0xfffffff0));
  if (what == 'abort') assert(false, 'misbehave was told to abort');
  if (what == 'scribble') {
    const region = reserve(0);
    const capacity = load<u32>(region + SEG_RING_CAPACITY_OFFSET);
    const ring = region + ringOffset(GUEST_RING_OUT, capacity);
    const tail = atomic.load<u64>(ring + RING_TAIL_OFFSET);
    reply(req, Value.nil());
    store<i32>(ring + RING_HEADER_SIZE + <usize>(tail % <u64>capacity), 0x7ffffff0);
    return null;
  }
  if (what == 'fail') { replyError(req, 'ERR_SHMBUS_LIMIT', 'told to fail'); return null; }
  if (what == 'fail-custom') { replyError(req, 'E_MINE', 'told to fail its own way'); return null; }
  if (what == 'garbage') {
    // 0xc1 is never valid msgpack: a message the host cannot decode, then a reply.
    const bytes = memory.data<u8>([0xc1, 0xc1, 0xc1, 0xc1]);
    sendRaw(bytes, 4);
    return Value.nil();
  }
  if (what == 'spin') {
    while (true) turns++;
  }
  return v;
});
