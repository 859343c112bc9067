// spin: never returns from a request (the host's timeout must stop it). Messages are ignored.
import { onRequest, Incoming, Value } from '../../../assembly/guest';

export * from '../../../assembly/guest/exports';

let turns: u64 = 0;

onRequest((req: Incoming): Value | null => {
  // A global store each turn, so no optimizer may treat the loop as removable.
  while (true) turns++;
  return null;
});
