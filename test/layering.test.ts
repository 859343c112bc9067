// Folders import downwards only (see /work/shared/DESIGN.md and README): every relative import in the TypeScript
// sources is checked against the layer order
//   assembly < host < transports < bus, state, workers, plugins, bridge < index.ts (the package entry) < cli, bin
// (the command is an application of the library: it may use the entry, which registers every transport)
// A file may import from its own layer or a lower one. examples/, bench/ and test/ may import anything.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Layer of each top-level folder (or root file); a higher number may import a lower one, never the reverse. */
const LAYERS: Record<string, number> = {
  assembly: 0,
  host: 1,
  transports: 2,
  bus: 3, state: 3, workers: 3, plugins: 3, bridge: 3,
  'index.ts': 4,
  cli: 5, bin: 5,
};
/** Folders whose files may import from any layer. */
const FREE = new Set(['examples', 'bench', 'test']);
const SKIP = new Set(['node_modules', 'dist', 'build', 'coverage', '.tap', '.git']);

/** The layer of a path relative to the repository root; undefined for files outside every layer. */
function layerOf(relative: string): number | undefined {
  const top = relative.split('/')[0]!;
  return LAYERS[top];
}

/** Every module specifier a source imports or re-exports: static and dynamic imports, `export … from`. */
export function importsOf(source: string): string[] {
  // Comments out first, so a commented-out import (or one named in a doc comment) does not count.
  const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
  const found: string[] = [];
  const patterns = [
    /\bimport\s+(?:type\s+)?[\w*{}\s,$]*?\s*from\s*['"]([^'"]+)['"]/g,
    /\bexport\s+(?:type\s+)?(?:\*(?:\s+as\s+\w+)?|\{[^}]*\})\s*from\s*['"]([^'"]+)['"]/g,
    /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g,
    /\bimport\s+['"]([^'"]+)['"]/g,
  ];
  for (const pattern of patterns) for (const m of code.matchAll(pattern)) found.push(m[1]!);
  return found;
}

/** Imports of `files` (path relative to the root → source) that go up a layer, as readable lines. */
export function violations(files: Map<string, string>): string[] {
  const bad: string[] = [];
  for (const [file, source] of files) {
    const from = layerOf(file);
    if (from === undefined) continue;
    for (const spec of importsOf(source)) {
      if (!spec.startsWith('.')) continue; // packages and node: builtins
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec));
      const to = layerOf(target);
      if (to !== undefined && to > from) bad.push(`${file} imports ${spec} (${target.split('/')[0]} is above ${file.split('/')[0]})`);
    }
  }
  return bad;
}

/** Every .ts file of the repository outside the free folders and build output, relative to the root. */
function sources(): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string) => {
    for (const entry of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const relative = dir ? `${dir}/${entry.name}` : entry.name;
      if (entry.isDirectory()) {
        if (!SKIP.has(entry.name) && !FREE.has(relative)) walk(relative);
      } else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) {
        files.set(relative, fs.readFileSync(path.join(ROOT, relative), 'utf8'));
      }
    }
  };
  walk('');
  return files;
}

t.test('the scanner sees every kind of import and flags one that goes up', async (t) => {
  t.same(importsOf(`
    import a from './a.js';
    import type { B } from "../b.js";
    import { c,
      d } from './c.js';
    import './side-effect.js';
    export { e } from './e.js';
    export * from './f.js';
    export type { G } from './g.js';
    const h = await import('./h.js');
    // import { no } from './commented.js';
    /* import { no } from './block.js'; */
  `).sort(), ['../b.js', './a.js', './c.js', './e.js', './f.js', './g.js', './h.js', './side-effect.js'].sort());
  // The tree before the package entry moved: host/index.ts registered the transports.
  t.same(violations(new Map([
    ['host/index.ts', "import { registerTransport } from '../transports/contract.js';"],
    ['transports/unix.ts', "import { Rpc } from '../host/rpc.js';"],
    ['bench/x.ts', "import { listen } from '../index.js';"],
    ['index.ts', "export * from './host/errors.js';"],
  ])), ['host/index.ts imports ../transports/contract.js (transports is above host)']);
});

t.test('no source file imports from a layer above its own', async (t) => {
  const files = sources();
  t.ok(files.has('index.ts') && [...files.keys()].some((f) => f.startsWith('host/')), 'the scan found the sources');
  t.same(violations(files), [], 'every import goes down (or stays in its layer)');
});

/** The packages `entry` loads, following its relative imports (type-only imports load nothing). */
function packagesLoadedBy(files: Map<string, string>, entry: string): Set<string> {
  const packages = new Set<string>();
  const seen = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    const source = files.get(file);
    if (source === undefined) return;
    const runtime = source.replace(/\bimport\s+type\s[^;]*;/g, '').replace(/\bexport\s+type\s[^;]*;/g, '');
    for (const spec of importsOf(runtime)) {
      if (!spec.startsWith('.')) { packages.add(spec); continue; }
      visit(path.posix.normalize(path.posix.join(path.posix.dirname(file), spec)).replace(/\.js$/, '.ts'));
    }
  };
  visit(entry);
  return packages;
}

t.test("a plugin runner's thread loads no native addon (koffi)", async (t) => {
  // Every thread that loads koffi leaves koffi's per-thread memory behind when it ends (three mappings; koffi
  // 3.3.4 never frees it), and a plugin can have its instance replaced at will (a trap, a timeout): the host maps
  // the segment for the runner instead (plugins/runner.ts MapRequest).
  const files = sources();
  const loaded = packagesLoadedBy(files, 'plugins/runner-thread.ts');
  t.ok(loaded.has('node:worker_threads'), `the scan followed the runner's imports (${[...loaded].join(', ')})`);
  t.notOk(loaded.has('koffi'), 'koffi is not among them');
  t.ok(packagesLoadedBy(files, 'plugins/runner-process.ts').has('koffi'), 'the same scan finds koffi where it is loaded (the process runner)');
});
