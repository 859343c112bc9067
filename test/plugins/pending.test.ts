// plugins/plugin.ts's PendingTable (an instance's requests in flight by id) against a Map: random sequences of
// adds and deletes of ids clustered so that probe runs collide and wrap around the table's end, lookups of ids
// present, gone and never seen (the plugin's reply carries any number).
import t from 'tap';
import fc from 'fast-check';
import { PendingTable } from '../../plugins/plugin.js';
import { fileTimeout } from '../helpers.js';

fileTimeout(t, 60, 10);

type Entry = Parameters<PendingTable['set']>[0];

t.test('PendingTable keeps what a Map keeps', async (t) => {
  fc.assert(fc.property(
    fc.array(fc.tuple(fc.boolean(), fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0x7fffffe0, max: 0x7fffffff }))), { maxLength: 300 }),
    fc.array(fc.oneof(fc.integer(), fc.double(), fc.constant(2 ** 32 + 3), fc.constant(-1)), { maxLength: 20 }),
    (ops, probes) => {
      const table = new PendingTable();
      const map = new Map<number, Entry>();
      for (const [add, id] of ops) {
        if (add && !map.has(id)) {
          const e = { id } as Entry;
          table.set(e);
          map.set(id, e);
        } else if (!add) {
          table.delete(id);
          map.delete(id);
        }
        if (table.size !== map.size) return false;
        for (const [k, v] of map) if (table.get(k) !== v) return false;
      }
      for (const id of probes) if (table.get(id) !== map.get(id)) return false;
      const values = table.values();
      return values.length === map.size && values.every((v) => map.get(v.id) === v);
    },
  ), { numRuns: 500 });
  t.pass('every sequence agreed with the Map');
});
