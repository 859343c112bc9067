// The design's real path, without loadPlugin: the host creates a sealed memfd segment, maps it into its engine's
// memory AND over the region the plugin reserved in the plugin's own memory, formats it with the host's code
// (formatSegment), and talks to echo.wasm through host/ring.ts's RingEnd while the plugin runs the same ring code
// from its side. One request, one reply, the bytes never copied between the two memories.
import t from 'tap';
import koffi from 'koffi';
import {
  CHANNEL_RING_COUNT, GUEST_RING_IN, GUEST_RING_OUT, RECORD_REQUEST, RECORD_REPLY, segmentBytes, ringOffset,
} from '../../assembly/layout.js';
import { getEngine } from '../../host/engine.js';
import { Region } from '../../host/region.js';
import { RingEnd } from '../../host/ring.js';
import { formatSegment } from '../../host/segment.js';
import { unique } from '../helpers.js';
import { instantiatePlugin, packr } from './plugin-rings.js';

t.test('echo over a memfd segment mapped into both the engine and the plugin', async (t) => {
  const capacity = 1 << 16;
  const bytes = segmentBytes(CHANNEL_RING_COUNT, capacity);
  const engine = getEngine();
  const region = Region.createMemfd(unique('shmbus-plugin'), { size: bytes });
  t.teardown(() => region.close());
  const window = engine.allocWindow(bytes);
  region.mapAt(engine.address(window));
  t.teardown(() => { region.unmapAt(engine.address(window)); engine.freeWindow(window, bytes); });
  formatSegment(engine, window, CHANNEL_RING_COUNT, capacity, process.pid, 0n);

  const { x, memory, aborts } = await instantiatePlugin('echo');
  const at = x.shmbus_reserve(bytes);
  t.ok(at > 0, 'the plugin reserved its region');
  const pluginAddress = BigInt(koffi.address(new Uint8Array(memory.buffer, 0, 0)) as bigint) + BigInt(at);
  region.mapAt(pluginAddress);
  t.teardown(() => region.unmapAt(pluginAddress));
  t.equal(x.shmbus_attach(at, bytes), 0, 'the plugin sees the segment the host formatted');

  const toGuest = new RingEnd(engine, window + ringOffset(GUEST_RING_IN, capacity), capacity, 'producer');
  const fromGuest = new RingEnd(engine, window + ringOffset(GUEST_RING_OUT, capacity), capacity, 'consumer');
  t.teardown(() => { toGuest.dispose(); fromGuest.dispose(); });
  const request = packr.pack([42, { text: 'through shared pages', n: 1.5 }]);
  const p = toGuest.claim(request.length, RECORD_REQUEST);
  t.ok(p > 0);
  engine.u8.set(request, p);
  toGuest.commit(request.length);

  t.equal(x.shmbus_poll(16), 1, 'the plugin read the request from its own memory');
  t.equal(fromGuest.read(), 1, 'the host reads one record');
  const [offset, length, type] = engine.u32.subarray(fromGuest.batch / 4, fromGuest.batch / 4 + 3);
  t.equal(type, RECORD_REPLY);
  t.same(packr.unpack(engine.u8.slice(offset!, offset! + length!)), [42, { text: 'through shared pages', n: 1.5 }]);
  fromGuest.release();
  t.same(aborts, []);
});
