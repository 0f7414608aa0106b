// The bundle manifest (`ralu_config.json`, DESIGN.md "Bundles"; ralu_edge/manifest.py is the schema's home):
// the subset the web runtime reads, checked before any file is fetched, with cross-references resolved so that
// every path the runtime later asks for is one the manifest vouches for with a sha256 and a size.

import { UserError } from './errors.js';
import { modeForPreset, presetFromDict } from './presets.js';

export const MANIFEST_NAME = 'ralu_config.json';
const FORMAT = 'ralu-bundle';
const FORMAT_VERSION = 1;
const SHA256 = /^[0-9a-f]{64}$/;

function fail(where, problem) {
  return new UserError(`${MANIFEST_NAME}: ${where} ${problem}; re-export the bundle with ralu-export.`);
}

function need(object, key, where) {
  if (object === null || typeof object !== 'object' || !(key in object)) throw fail(where, `lacks '${key}'`);
  return object[key];
}

/**
 * A checked manifest: the parsed JSON plus lookups (file, graph, tokenizer, the modes it offers). Refuses another
 * format or version, a file entry that is not a relative path with a sha256, and a graph, tokenizer or text
 * encoder that names a file or graph the manifest does not list.
 */
export function parseManifest(data) {
  if (data === null || typeof data !== 'object') throw fail('the top level', 'is not a JSON object');
  if (data.format !== FORMAT) throw fail('format', `is ${JSON.stringify(data.format)}, not '${FORMAT}'`);
  if (data.format_version !== FORMAT_VERSION) {
    throw new UserError(`${MANIFEST_NAME}: format_version ${data.format_version} is not the supported ${FORMAT_VERSION}; re-export the bundle with this version of ralu-export.`);
  }
  const files = new Map();
  for (const entry of need(data, 'files', 'the manifest')) {
    const path = need(entry, 'path', 'a files entry');
    if (typeof path !== 'string' || !path || path.startsWith('/') || path.split('/').includes('..') || path.includes('\\')) {
      throw fail(`files entry ${JSON.stringify(path)}`, 'is not a relative POSIX path inside the bundle');
    }
    if (!SHA256.test(entry.sha256)) throw fail(`files entry '${path}'`, `has a malformed sha256 ${JSON.stringify(entry.sha256)}`);
    if (!Number.isInteger(entry.size) || entry.size < 0) throw fail(`files entry '${path}'`, `has a bad size ${entry.size}`);
    files.set(path, { path, sha256: entry.sha256, size: entry.size });
  }
  const graphs = new Map(need(data, 'graphs', 'the manifest').map((g) => [need(g, 'name', 'a graph'), g]));
  const tokenizers = new Map(need(data, 'tokenizers', 'the manifest').map((t) => [need(t, 'name', 'a tokenizer'), t]));
  const listed = (path, where) => {
    if (!files.has(path)) throw fail(where, `uses '${path}', which the files list lacks`);
  };
  for (const g of graphs.values()) [g.file, ...(g.data_files ?? [])].forEach((p) => listed(p, `graph '${g.name}'`));
  for (const t of tokenizers.values()) listed(t.file, `tokenizer '${t.name}'`);

  const manifest = {
    data,
    files,
    resolution: need(data, 'resolutions', 'the manifest')[0] ?? (() => { throw fail('resolutions', 'is empty'); })(),
    vae: need(data, 'vae', 'the manifest'),
    rope: data.rope,
    denoiser: need(data, 'denoiser', 'the manifest'),
    textEncoders: need(data, 'text_encoders', 'the manifest'),
    presets: need(data, 'presets', 'the manifest').map((entry) => ({ name: entry.name, preset: presetFromDict(need(entry, 'preset', `preset '${entry.name}'`)) })),
    graph(name) {
      const g = graphs.get(name);
      if (!g) throw fail(`graph '${name}'`, `is referenced but not described (the bundle has ${[...graphs.keys()].join(', ')})`);
      return g;
    },
    graphsWithRole(role) {
      return [...graphs.values()].filter((g) => g.role === role);
    },
    tokenizer(name) {
      const t = tokenizers.get(name);
      if (!t) throw fail(`tokenizer '${name}'`, 'is referenced but not described');
      return t;
    },
    /** `baseline` plus `ralu-<N>x` for every preset (runtime/pipeline.py `Pipeline.modes`). */
    modes() {
      return ['baseline', ...this.presets.map((p) => modeForPreset(p.name))];
    },
    /** The preset behind a `ralu-…` mode; UserError naming the modes the bundle offers. */
    presetForMode(mode) {
      const entry = this.presets.find((p) => modeForPreset(p.name) === mode);
      if (!entry) throw new UserError(`mode '${mode}' is not in this bundle; choose one of: ${this.modes().join(', ')}.`);
      return entry.preset;
    },
    /** The denoiser graph to run at `numTokens` image tokens (ralu_edge.manifest.DenoiserSpec.graph_for). */
    denoiserGraphFor(numTokens) {
      for (const stage of this.denoiser.stage_graphs) {
        if (stage.num_image_tokens === null || stage.num_image_tokens === numTokens) return stage.graph;
      }
      throw new UserError(`this bundle has no denoiser graph for ${numTokens} image tokens; re-export it with the resolution and preset you need.`);
    },
  };
  for (const encoder of manifest.textEncoders) {
    manifest.graph(encoder.graph);
    manifest.tokenizer(encoder.tokenizer);
  }
  for (const stage of need(manifest.denoiser, 'stage_graphs', 'denoiser')) manifest.graph(stage.graph);
  if (manifest.denoiser.positions === 'sincos') {
    throw new UserError('this bundle holds an SD3-class model (sin-cos positions), which the web demo does not run yet; use a FLUX-family bundle such as the built-in shapes model.');
  }
  if (!manifest.graphsWithRole('vae_decoder').length) throw fail('graphs', 'name no vae_decoder graph');
  return manifest;
}
