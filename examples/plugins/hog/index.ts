// hog: on a request, allocates memory 1 MiB at a time (touching every page) and never lets go, until its memory
// cannot grow any more; the allocator then traps. The host's memoryLimit must contain it.
import { onRequest, Incoming, Value } from '../../../assembly/guest';

export * from '../../../assembly/guest/exports';

const kept = new Array<Uint8Array>();

onRequest((req: Incoming): Value | null => {
  while (true) {
    const chunk = new Uint8Array(1 << 20);
    for (let i = 0; i < chunk.length; i += 4096) chunk[i] = 1;
    kept.push(chunk);
  }
  return null;
});
