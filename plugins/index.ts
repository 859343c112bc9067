/** Sandboxed WebAssembly plugins: loadPlugin and what it returns (docs/plugins.md). */
export type { Isolation } from '../workers/context.js';
export { loadPlugin, Plugin, type PluginOptions, type PluginRequestOptions, type Publication } from './plugin.js';
