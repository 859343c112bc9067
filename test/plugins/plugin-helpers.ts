// Shared by the plugin tests: where the built plugins are, and a check that no plugin segment is left open.
import { readdirSync, readlinkSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** build/plugins/<name>.wasm (built by `npm run build`). */
export function pluginPath(name: string): string {
  return fileURLToPath(new URL(`../../build/plugins/${name}.wasm`, import.meta.url));
}

/** How many plugin segments (memfds named shmbus-plugin-*) this process holds open. */
export function openPluginSegments(): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:shmbus-plugin-')) n++;
    } catch { /* closed meanwhile */ }
  }
  return n;
}

/** A module that imports a function the host never grants: env.evil: () => void. */
export const EVIL_IMPORT = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: one type, () -> ()
  0x02, 0x0c, 0x01, 0x03, 0x65, 0x6e, 0x76, 0x04, 0x65, 0x76, 0x69, 0x6c, 0x00, 0x00, // import "env" "evil" func 0
]);

/** A module that imports a shared memory and whose start function never returns. */
export const ENDLESS_START = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
  0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
  0x02, 0x12, 0x01, 0x03, 0x65, 0x6e, 0x76, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, // import "env" "memory"
  0x02, 0x03, 0x02, 0x80, 0x80, 0x02, //   memory, shared with a maximum: initial 2, maximum 32768
  0x03, 0x02, 0x01, 0x00, // one function of type 0
  0x08, 0x01, 0x00, // start: function 0
  0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // body: loop br 0 end end
]);
