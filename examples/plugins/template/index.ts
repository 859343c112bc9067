// A minimal shmbus plugin: copy this folder to examples/plugins/<name>/ and `npm run build` compiles it to
// build/plugins/<name>.wasm. Outside this repository, compile it with
//   npx asc index.ts --config asconfig.json --target release --outFile <name>.wasm
// and point the relative imports below at the shmbus package's assembly/ folder.
import { onRequest, onMessage, Incoming, Value, Kind, log, send, reply, env } from '../../../assembly/guest';

// The entry points the host calls. Every plugin needs this line.
export * from '../../../assembly/guest/exports';

let greeted: u32 = 0;
/** Requests that asked to wait: answered when the next message arrives. */
const waiting = new Array<Incoming>();

function greeting(req: Incoming): Value {
  const name = req.value.get('name');
  const who = name != null && name.kind == Kind.String ? name.text : 'stranger';
  greeted++;
  const hello = env('GREETING'); // loadPlugin(…, { env: { GREETING: 'hi' } })
  return Value.map().set('greeting', Value.string((hello != null ? hello : 'hello') + ' ' + who)).set('count', Value.uint(greeted));
}

// A request { name: string } gets { greeting: 'hello <name>', count } back. With { wait: true } the reply comes
// later: returning null leaves the request open, and reply() answers it when the next message arrives.
onRequest((req: Incoming): Value | null => {
  const wait = req.value.get('wait');
  if (wait != null && wait.kind == Kind.Bool && wait.flag) {
    waiting.push(req);
    return null;
  }
  return greeting(req);
});

// A message is logged, answers the requests that wait, and is acknowledged with a message of its own.
onMessage((msg: Incoming): void => {
  log('template got a message of ' + msg.valueLength.toString() + ' bytes');
  for (let i = 0; i < waiting.length; i++) reply(waiting[i], greeting(waiting[i]));
  waiting.length = 0;
  send(Value.map().set('ack', Value.bool(true)));
});
