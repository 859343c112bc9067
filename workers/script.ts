import { existsSync } from 'node:fs';
import { ErrorCode, ShmbusError } from '../host/errors.js';

/**
 * A compiled script of this folder (a bootstrap, the pool's worker): next to this file when running compiled
 * (dist/workers/), or the compiled copy in dist/ when this file runs from its TypeScript source (tap runs .ts
 * files): workers run plain JavaScript, without a loader, which also keeps their start fast.
 */
export function workerScript(name: string): URL {
  for (const rel of [`./${name}`, `../dist/workers/${name}`]) {
    const url = new URL(rel, import.meta.url);
    if (existsSync(url)) return url;
  }
  throw new ShmbusError(ErrorCode.NOT_FOUND, 'the worker scripts are not built; run npm run build', { details: { file: `dist/workers/${name}` } });
}
