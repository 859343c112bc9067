/** Sandboxed WebAssembly plugins: loadPlugin and what it returns (docs/plugins.md). */
export { loadPlugin, Plugin, type PluginOptions, type PluginRequestOptions, type Publication } from './plugin.js';
export type { Isolation } from './runner-start.js';
