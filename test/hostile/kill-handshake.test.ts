/**
 * SIGKILL of either side at every step of the shm handshake leaves nothing behind: no /dev/shm entry, no System
 * V segment, no file, no descriptor in the survivor, and the survivor gets a typed error (or, once the channel
 * exists, PEER_DEAD). The child runs the real handshake with SHMBUS_TEST_STOP_AT=<side>:<step>, which makes it
 * print `step <side>:<step>` and stop exactly there (transports/shm/); the test kills it on that line.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { listen, connect } from '../../transports/shm/index.js';
import { Channel } from '../../transports/shm/channel.js';
import { ErrorCode, ShmbusError } from '../../host/errors.js';
import { fileTimeout, startFixture, unique, within, eventually } from '../helpers.js';

// About 4x what this file takes on a busy 2-core machine (a hang, not a slow machine, ends it).
fileTimeout(t, 120);

const WATCHDOG = 60_000;
type Scheme = 'shm' | 'sysv' | 'file';
/** The steps each side has (transports/shm/ `reached`): System V passes no descriptor, so no listener:4. A shm://
 * connector that knows the listener brings its own segment: connector:7 and 8, listener:6 (OWN_SEGMENT). */
const STEPS: Record<'listener' | 'connector', Record<Scheme, number[]>> = {
  listener: { shm: [1, 2, 3, 4, 5, 6], file: [1, 2, 3, 4, 5], sysv: [1, 2, 3, 5] },
  connector: { shm: [1, 2, 3, 4, 5, 6, 7, 8], file: [1, 2, 3, 4, 5, 6], sysv: [1, 2, 3, 4, 5, 6] },
};
/** Steps only a connection that brings its own segment reaches: a first connection makes the listener known. */
const OWN_SEGMENT = { listener: [6], connector: [7, 8] };

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-kill-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
let keys = 0;
function urlFor(scheme: Scheme): string {
  const name = unique('kill');
  if (scheme === 'shm') return `shm://${name}?size=64KiB`;
  if (scheme === 'sysv') return `sysv://0x${(0x5d000000 + ((process.pid & 0xffff) << 8) + (++keys & 0xff)).toString(16)}?size=64KiB`;
  return `file://${dir}/${name}?size=64KiB`;
}

function memfdSegments(): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try { if (fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:shmbus.')) n++; } catch { /* closed meanwhile */ }
  }
  return n;
}

function sysvSegments(pids: number[]): string[] {
  return fs.readFileSync('/proc/sysvipc/shm', 'utf8').split('\n').slice(1)
    .filter((l) => pids.map(String).includes(l.trim().split(/\s+/)[4] ?? ''));
}

function leftovers(childPid: number): Record<string, unknown> {
  return {
    memfds: memfdSegments(),
    sysv: sysvSegments([process.pid, childPid]),
    devShm: fs.readdirSync('/dev/shm').filter((f) => f.includes(String(childPid)) || (f.includes('shmbus') && f.includes(String(process.pid)))),
    files: fs.readdirSync(dir),
  };
}
const NOTHING = { memfds: 0, sysv: [], devShm: [], files: [] };

/** What the survivor saw: a typed handshake failure, or a channel whose peer then turns out dead (`dead`: PEER_DEAD,
 * or HANDSHAKE for a connector's channel whose listener died before its verdict). */
async function outcome(t: Test, got: Channel | ShmbusError, what: string, dead: string = ErrorCode.PEER_DEAD): Promise<void> {
  if (got instanceof Channel) {
    const error = await within(WATCHDOG, got.receive().then(() => undefined, (e: ShmbusError) => e), `${what}: channel to see the death`);
    t.equal(error?.code, dead, `${what}: the channel reports ${dead}`);
    await got.close();
  } else {
    t.ok(got instanceof ShmbusError, `${what}: typed error ${got.code}`);
  }
}

for (const scheme of ['shm', 'sysv', 'file'] as const) {
  t.test(`${scheme}: the listener killed at each step`, async (t) => {
    for (const step of STEPS.listener[scheme]) {
      const url = urlFor(scheme);
      const child = startFixture(t, 'handshake-peer', ['listen', url], { env: { SHMBUS_TEST_STOP_AT: `listener:${step}` } });
      await child.line('listening');
      const own = OWN_SEGMENT.listener.includes(step);
      if (own) await (await connect(url, { timeout: WATCHDOG })).close();
      const result = connect(url, { timeout: WATCHDOG }).then((c) => c, (e: ShmbusError) => e);
      await child.line(`step listener:${step}`);
      child.kill();
      await within(WATCHDOG, child.exit, 'the child to die');
      await outcome(t, await within(WATCHDOG, result, `listener:${step}: connect to settle`), `listener:${step}`, own ? ErrorCode.HANDSHAKE : ErrorCode.PEER_DEAD);
      await eventually(() => JSON.stringify(leftovers(child.pid)) === JSON.stringify(NOTHING), `listener:${step}: nothing left (${JSON.stringify(leftovers(child.pid))})`);
      t.same(leftovers(child.pid), NOTHING, `listener:${step}: nothing left`);
    }
  });

  t.test(`${scheme}: the connector killed at each step`, async (t) => {
    for (const step of STEPS.connector[scheme]) {
      const url = urlFor(scheme);
      const listener = await listen(url, { handshakeTimeout: WATCHDOG });
      const own = OWN_SEGMENT.connector.includes(step);
      const child = startFixture(t, 'handshake-peer', [own ? 'connect-again' : 'connect', url], { env: { SHMBUS_TEST_STOP_AT: `connector:${step}` } });
      if (own) {
        // The first connection, which makes the listener known to the child, opens and closes as usual.
        await (await within(WATCHDOG, listener.acceptNext(), 'the first connection'))!.close();
        await child.line('known');
      }
      const result = new Promise<Channel | ShmbusError>((resolve) => {
        listener.once('error', resolve);
        void listener.acceptNext().then((c) => { if (c) resolve(c as Channel); });
      });
      await child.line(`step connector:${step}`);
      child.kill();
      await within(WATCHDOG, child.exit, 'the child to die');
      await outcome(t, await within(WATCHDOG, result, `connector:${step}: the listener to settle`), `connector:${step}`);
      t.same(listener.load.pending, 0, `connector:${step}: no handshake left pending`);
      await listener.close();
      await eventually(() => JSON.stringify(leftovers(child.pid)) === JSON.stringify(NOTHING), `connector:${step}: nothing left (${JSON.stringify(leftovers(child.pid))})`);
      t.same(leftovers(child.pid), NOTHING, `connector:${step}: nothing left`);
    }
  });
}
