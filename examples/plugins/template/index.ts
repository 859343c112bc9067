// A minimal shmbus plugin: copy this folder to examples/plugins/<name>/ and `npm run build` compiles it to
// build/plugins/<name>.wasm. Outside this repository, compile it with
//   npx asc index.ts --config asconfig.json --target release --outFile <name>.wasm
// and point the relative imports below at the shmbus package's assembly/ folder.
import { onRequest, onMessage, Incoming, Value, Kind, log, send } from '../../../assembly/guest';

// The entry points the host calls. Every plugin needs this line.
export * from '../../../assembly/guest/exports';

let greeted: u32 = 0;

// A request { name: string } gets { greeting: 'hello <name>', count } back.
onRequest((req: Incoming): Value | null => {
  const name = req.value.get('name');
  const who = name != null && name.kind == Kind.String ? name.text : 'stranger';
  greeted++;
  return Value.map().set('greeting', Value.string('hello ' + who)).set('count', Value.uint(greeted));
});

// A message is logged and acknowledged with a message of its own.
onMessage((msg: Incoming): void => {
  log('template got a message of ' + msg.valueLength.toString() + ' bytes');
  send(Value.map().set('ack', Value.bool(true)));
});
