#!/usr/bin/env node
// Compiles assembly/ to build/*.wasm (both asconfig targets) unless the outputs already match the inputs: the
// sources under assembly/, asconfig.json and the compiler's version, hashed into build/.wasm-inputs. So `npm ci`
// (prepare) builds, and the `npm test` right after it (pretest) does not build again; any edit rebuilds.
//   node scripts/build-wasm.mjs [--force]
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const stampFile = join(root, 'build', '.wasm-inputs');

function files(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]));
}

const hash = createHash('sha256');
const asc = JSON.parse(readFileSync(join(root, 'node_modules', 'assemblyscript', 'package.json'), 'utf8')).version;
hash.update(`asc ${asc}\n`);
for (const file of [join(root, 'asconfig.json'), ...files(join(root, 'assembly')).sort()]) {
  hash.update(`${relative(root, file)}\n`).update(readFileSync(file));
}
const stamp = hash.digest('hex');

const config = JSON.parse(readFileSync(join(root, 'asconfig.json'), 'utf8'));
const outputs = Object.values(config.targets).map((target) => join(root, target.outFile));
const upToDate = !process.argv.includes('--force') && outputs.every((f) => existsSync(f))
  && existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === stamp;
if (upToDate) {
  console.log('build/*.wasm is up to date with assembly/ (node scripts/build-wasm.mjs --force rebuilds)');
} else {
  mkdirSync(join(root, 'build'), { recursive: true });
  const bin = join(root, 'node_modules', '.bin', 'asc');
  for (const target of Object.keys(config.targets)) {
    execFileSync(bin, ['assembly/index.ts', '--target', target], { cwd: root, stdio: 'inherit' });
  }
  writeFileSync(stampFile, `${stamp}\n`);
}
