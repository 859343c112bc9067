// A host app for the wordcount plugin: loads build/plugins/wordcount.wasm in a sandbox (its own thread, 64 MiB at
// most), feeds it a text file paragraph by paragraph, and prints the running totals the plugin publishes.
//
//   npm run build && node dist/examples/plugins/host.js [file.txt] [--process]
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { loadPlugin, type Publication } from '../../plugins/index.js';

const args = process.argv.slice(2);
const file = args.find((a) => !a.startsWith('--')) ?? fileURLToPath(new URL('../../../README.md', import.meta.url));
const wasm = new URL('../../../build/plugins/wordcount.wasm', import.meta.url);

const plugin = await loadPlugin(wasm, {
  isolation: args.includes('--process') ? 'process' : 'thread',
  memoryLimit: '64MiB',
  timeout: 1000,
  allow: ['wordcount.totals'],
});
plugin.on('publish', ({ topic, value }: Publication) => {
  const { total, texts } = value as { total: number; texts: number };
  console.log(`${topic}: ${total} words in ${texts} paragraphs`);
});
plugin.on('log', ({ text }: { text: string }) => console.error(`plugin: ${text}`));

const paragraphs = (await readFile(file, 'utf8')).split(/\n\s*\n/).filter((p) => p.trim() !== '');
let last: unknown;
for (const text of paragraphs) last = await plugin.request({ text });
console.log('final reply:', last);
await plugin.close();
