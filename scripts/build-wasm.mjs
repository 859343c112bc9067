#!/usr/bin/env node
// Compiles assembly/ to build/*.wasm (both asconfig targets) unless the outputs already match the inputs: the
// sources under assembly/, asconfig.json and the compiler's version, hashed into build/.wasm-inputs. So `npm ci`
// (prepare) builds, and the `npm test` right after it (pretest) does not build again; any edit rebuilds.
// The same holds, each with its own stamp, for the guest codec's test module (asconfig.guest-test.json →
// build/guest/codec-test.wasm) and for every plugin folder examples/plugins/<name>/ (its index.ts and
// asconfig.json, which extends asconfig.plugin.json → build/plugins/<name>.wasm).
//   node scripts/build-wasm.mjs [--force]
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const force = process.argv.includes('--force');
// Relative paths (entries, the configs' outFile) are the repository's.
process.chdir(root);

/** Runs the compiler in this process (one load of asc for every module: each separate `asc` costs seconds). */
async function asc(args) {
  const { default: compiler } = await import('assemblyscript/asc');
  const { error } = await compiler.main(args, { stdout: process.stdout, stderr: process.stderr });
  if (error) throw new Error(`asc ${args.join(' ')}: ${error.message}`);
}
const ascVersion = JSON.parse(readFileSync(join(root, 'node_modules', 'assemblyscript', 'package.json'), 'utf8')).version;

function files(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]));
}

/** Hash of the compiler's version and every input file (path and content). */
function stampOf(inputs) {
  const hash = createHash('sha256');
  hash.update(`asc ${ascVersion}\n`);
  for (const file of inputs) hash.update(`${relative(root, file)}\n`).update(readFileSync(file));
  return hash.digest('hex');
}

/** Runs `compile` unless every output exists and the stamp file records the inputs' current hash. */
async function build({ what, inputs, outputs, stampFile, compile }) {
  const stamp = stampOf(inputs);
  const upToDate = !force && outputs.every((f) => existsSync(f)) && existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === stamp;
  if (upToDate) {
    console.log(`${what} is up to date (node scripts/build-wasm.mjs --force rebuilds)`);
    return;
  }
  console.log(`building ${what}`);
  for (const out of outputs) mkdirSync(dirname(out), { recursive: true });
  await compile();
  writeFileSync(stampFile, `${stamp}\n`);
}

const assemblyFiles = files(join(root, 'assembly')).sort();
const guestDir = join(root, 'assembly', 'guest');

// The ring module: assembly/ without the guest SDK (it does not import it).
const config = JSON.parse(readFileSync(join(root, 'asconfig.json'), 'utf8'));
await build({
  what: 'build/*.wasm',
  inputs: [join(root, 'asconfig.json'), ...assemblyFiles.filter((f) => !f.startsWith(guestDir + '/'))],
  outputs: Object.values(config.targets).map((target) => join(root, target.outFile)),
  stampFile: join(root, 'build', '.wasm-inputs'),
  async compile() {
    for (const target of Object.keys(config.targets)) await asc(['assembly/index.ts', '--config', join(root, 'asconfig.json'), '--target', target]);
  },
});

// The guest codec's test module.
await build({
  what: 'build/guest/codec-test.wasm',
  inputs: [join(root, 'asconfig.guest-test.json'), ...assemblyFiles],
  outputs: [join(root, 'build', 'guest', 'codec-test.wasm')],
  stampFile: join(root, 'build', 'guest', '.codec-test-inputs'),
  compile: () => asc(['assembly/guest/codec-test.ts', '--config', join(root, 'asconfig.guest-test.json'), '--target', 'release']),
});

// Every plugin folder with an index.ts.
const pluginsDir = join(root, 'examples', 'plugins');
const plugins = existsSync(pluginsDir)
  ? readdirSync(pluginsDir, { withFileTypes: true }).filter((e) => e.isDirectory() && existsSync(join(pluginsDir, e.name, 'index.ts'))).map((e) => e.name).sort()
  : [];
for (const name of plugins) {
  const dir = join(pluginsDir, name);
  const out = join(root, 'build', 'plugins', `${name}.wasm`);
  await build({
    what: `build/plugins/${name}.wasm`,
    inputs: [join(root, 'asconfig.plugin.json'), ...assemblyFiles, ...files(dir).filter((f) => f.endsWith('.ts') || f.endsWith('.json')).sort()],
    outputs: [out],
    stampFile: join(root, 'build', 'plugins', `.${name}-inputs`),
    compile: () => asc([relative(root, join(dir, 'index.ts')), '--config', join(dir, 'asconfig.json'), '--target', 'release', '--outFile', out]),
  });
}
