/** `shmbus version`: the package and shared-layout versions. */
import { readFileSync } from 'node:fs';
import { LAYOUT_VERSION } from '../assembly/layout.js';
import { defineCommand, toJson } from './command.js';

export const version = defineCommand({
  name: 'version',
  summary: 'print the package and layout versions',
  usage: `usage: shmbus version [--json]

  The package version, the shared-memory layout version (processes with another major layout version cannot
  talk to each other), and Node's.`,
  options: { json: { type: 'boolean' } },
  run({ values }) {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    const layout = `${LAYOUT_VERSION >>> 16}.${LAYOUT_VERSION & 0xffff}`;
    if (values.json) console.log(toJson({ version: pkg.version, layout, node: process.versions.node }));
    else console.log(`shmbus ${pkg.version}, layout ${layout}, node ${process.versions.node}`);
    return 0;
  },
});
