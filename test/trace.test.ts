/**
 * NODE_DEBUG=shmbus (host/trace.ts): a listener's refusal, a connect that failed and how one succeeded each leave a
 * line on stderr; without it nothing is written.
 */
import t from 'tap';
import net from 'node:net';
import { eventually, fileTimeout, startFixture, unique, within } from './helpers.js';

fileTimeout(t, 60);
const WATCHDOG = 30_000;
const DEBUG = { NODE_DEBUG: 'shmbus' };

t.test('NODE_DEBUG=shmbus traces a refused connector, an open and a failed connect', async (t) => {
  const name = unique('trace');
  const url = `shm://${name}`;
  const listener = startFixture(t, 'handshake-peer', ['listen', url], { env: DEBUG });
  await listener.line('listening', WATCHDOG);

  // A connector that does not speak the protocol: the listener refuses it, and says so only to 'error' listeners
  // and to the trace.
  const socket = net.connect(`\0shmbus/shm/${name}`);
  socket.on('error', () => {});
  t.teardown(() => { socket.destroy(); });
  await new Promise((r) => socket.once('connect', r));
  socket.write('{"shmbus":99}\n');
  await listener.line('handshake-failed ERR_SHMBUS_HANDSHAKE', WATCHDOG);
  const refused = new RegExp(`SHMBUS \\d+: listen ${url}: refused pid ${process.pid} uid ${process.getuid!()}: ERR_SHMBUS_HANDSHAKE `);
  await eventually(() => refused.test(listener.stderr()), 'the listener\'s trace of the refusal', WATCHDOG);
  t.pass('the listener traced the refusal with the connector\'s pid and uid');

  const opened = startFixture(t, 'attacker', ['connect', url], { env: DEBUG });
  await opened.line('connected', WATCHDOG);
  await eventually(() => /connect shm:\/\/\S+: open \(full handshake with listener pid \d+ uid \d+\)/.test(opened.stderr()), 'the trace of the open', WATCHDOG);
  t.pass('a connect traced how it opened');

  const missing = `shm://${unique('trace-nobody')}`;
  const failed = startFixture(t, 'attacker', ['connect', missing], { env: DEBUG });
  t.match(await failed.line(/^refused/, WATCHDOG), /^refused ERR_SHMBUS_NOT_FOUND/, 'the connect fails');
  await within(WATCHDOG, failed.exit, 'the failed connector to exit');
  t.match(failed.stderr(), new RegExp(`SHMBUS \\d+: connect ${missing}: failed: ERR_SHMBUS_NOT_FOUND `), 'and traced why');

  const quiet = startFixture(t, 'attacker', ['connect', missing], { env: { NODE_DEBUG: '' } });
  await quiet.line(/^refused/, WATCHDOG);
  await within(WATCHDOG, quiet.exit, 'the quiet connector to exit');
  t.notMatch(quiet.stderr(), /SHMBUS/, 'without NODE_DEBUG nothing is traced');
});
