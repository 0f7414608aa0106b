// onnxruntime-web implementations of the denoiser seam, the text encoders (with injected learned-token
// embeddings) and the VAE decoder, over a verified bundle (runtime/backends.py in the Python runtime). One session
// per graph; external weights are handed to onnxruntime-web as `externalData` under the location the graph
// references (relative to the graph's folder). RoPE tables are computed on the host from the seam's positions
// and cached per positions array, since a stage runs all its steps over the same array.

import { UserError } from '../core/errors.js';
import { ropeTables, withTextPositions } from '../core/rope.js';

const dirname = (path) => path.split('/').slice(0, -1).join('/');

function relativeTo(folder, path) {
  return folder && path.startsWith(folder + '/') ? path.slice(folder.length + 1) : path;
}

function checkFinite(values, label, output) {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) {
      throw new UserError(`${label}: output '${output}' holds NaN or infinite values; the graph's weights are damaged or out of range, re-export the bundle.`);
    }
  }
  return values;
}

/**
 * Opens onnxruntime-web sessions over a bundle's graphs. ort: the onnxruntime-web module; sessionOptions: e.g.
 * {executionProviders: ['wasm']}. Returns {session(graphName) -> Promise<{run(feeds), label}>}, each session
 * created once, its inputs and outputs checked against the manifest.
 */
export function sessionFactory(ort, bundle, sessionOptions) {
  const sessions = new Map();
  const dataFiles = new Map();
  // onnxruntime-web mounts external data in one process-wide table keyed by the referenced file name; a web
  // bundle names each folder's weights after the folder (transformer/transformer.onnx_data), so no two graphs
  // share a key. Sessions are still created one at a time, so that the page holds one graph's weights in
  // flight at once (the page's peak memory).
  let creating = Promise.resolve();
  const readOnce = (path) => {
    if (!dataFiles.has(path)) dataFiles.set(path, bundle.read(path));
    return dataFiles.get(path);
  };

  async function open(name) {
    const graph = bundle.manifest.graph(name);
    const label = `${bundle.label}/${graph.file}`;
    if (graph.format !== 'onnx') {
      throw new UserError(`${label} is ${graph.format}, which onnxruntime-web cannot run; serve a web bundle (ralu-export --target web).`);
    }
    const folder = dirname(graph.file);
    const [model, ...data] = await Promise.all([bundle.read(graph.file), ...(graph.data_files ?? []).map(readOnce)]);
    const externalData = (graph.data_files ?? []).map((path, i) => ({ path: relativeTo(folder, path), data: data[i] }));
    let session;
    try {
      // session_config: ORT config entries the exporter recorded for this graph (e.g. for weight-only int8)
      const extra = graph.session_config && Object.keys(graph.session_config).length ? { extra: graph.session_config } : {};
      session = await ort.InferenceSession.create(model, { ...sessionOptions, ...extra, externalData });
    } catch (e) {
      throw new UserError(`${label}: onnxruntime-web could not load it (${String(e.message ?? e).split('\n')[0].slice(0, 160)}); re-export the bundle.`);
    }
    for (const spec of graph.inputs) {
      if (!session.inputNames.includes(spec.name)) {
        throw new UserError(`${label}: the graph has no input '${spec.name}'; the manifest and the graph disagree, re-export the bundle.`);
      }
    }
    for (const spec of graph.outputs) {
      if (!session.outputNames.includes(spec.name)) {
        throw new UserError(`${label}: the graph has no output '${spec.name}'; the manifest and the graph disagree, re-export the bundle.`);
      }
    }
    return {
      label,
      async run(feeds) {
        let results;
        try {
          results = await session.run(feeds);
        } catch (e) {
          throw new UserError(`${label}: onnxruntime-web refused the run (${String(e.message ?? e).split('\n')[0].slice(0, 160)}); the manifest and the graph disagree, re-export the bundle.`);
        }
        for (const [output, tensor] of Object.entries(results)) {
          if (tensor.type === 'float32') checkFinite(tensor.data, label, output);
        }
        return results;
      },
    };
  }

  return {
    session(name) {
      if (!sessions.has(name)) {
        const opened = creating.then(() => open(name));
        creating = opened.catch(() => {});
        sessions.set(name, opened);
      }
      return sessions.get(name);
    },
  };
}

/**
 * The denoiser seam over the bundle's FLUX-family denoiser graph(s): velocity = f(tokens, positions, sigma, cond)
 * with cond {textStates: Float32Array[T·D], pooled: Float32Array[P], guidance?: number}. `clock.sessionMs`
 * accumulates the milliseconds spent inside session.run.
 */
export function ortDenoiser(ort, bundle, sessions, clock) {
  const spec = bundle.manifest.denoiser;
  const rope = bundle.manifest.rope;
  let cachedPositions = null;
  let cachedTables = null;
  return async (tokens, positions, sigma, cond) => {
    const textLength = spec.text_length;
    if (positions !== cachedPositions) {
      cachedTables = ropeTables(withTextPositions(textLength, positions), rope.axes_dim, rope.theta);
      cachedPositions = positions;
    }
    const session = await sessions.session(bundle.manifest.denoiserGraphFor(tokens.length));
    const feeds = {
      hidden_states: new ort.Tensor('float32', tokens.data, [1, tokens.length, tokens.channels]),
      encoder_hidden_states: new ort.Tensor('float32', cond.textStates, [1, textLength, spec.text_dim]),
      pooled_projections: new ort.Tensor('float32', cond.pooled, [1, spec.pooled_dim]),
      timestep: new ort.Tensor('float32', Float32Array.of(sigma), [1]),
      rope_cos: new ort.Tensor('float32', cachedTables.cos, [cachedTables.length, cachedTables.headDim]),
      rope_sin: new ort.Tensor('float32', cachedTables.sin, [cachedTables.length, cachedTables.headDim]),
    };
    if (spec.guidance) feeds.guidance = new ort.Tensor('float32', Float32Array.of(cond.guidance ?? 3.5), [1]);
    const started = performance.now();
    const out = await session.run(feeds);
    clock.sessionMs += performance.now() - started;
    clock.calls += 1;
    return out.velocity.data;
  };
}

/**
 * Prompt -> conditioning through the bundle's text encoders: CLIP's pooled output and T5's sequence (FLUX),
 * learned-token embeddings injected through the graphs' placeholder inputs. tokenizers: {encoder name:
 * promptTokenizer}; learned: {token, embeddings: {encoder name: Float32Array}} or null.
 */
export function ortTextEncoders(ort, bundle, sessions, tokenizers, learned) {
  const encoders = bundle.manifest.textEncoders;
  return async (prompt) => {
    const pooledParts = [];
    let textStates = null;
    for (const e of encoders) {
      const tokenizer = tokenizers[e.name];
      const ids = tokenizer.encode(prompt);
      // Without a learned token, one placeholder row that no id matches (-1, zeros): onnxruntime-web 1.30's WASM
      // broadcast fails on zero rows ("Broadcaster"), which onnxruntime 1.32 on the desktop accepts.
      const placeholderId = learned ? BigInt(tokenizer.placeholderIds[learned.token]) : -1n;
      const feeds = {
        input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, ids.length]),
        [e.placeholder_ids_input]: new ort.Tensor('int64', BigInt64Array.of(placeholderId), [1]),
        [e.placeholder_embeds_input]: new ort.Tensor('float32', learned ? learned.embeddings[e.name] : new Float32Array(e.hidden_size), [1, e.hidden_size]),
      };
      const out = await (await sessions.session(e.graph)).run(feeds);
      if (e.use === 'pooled' || e.use === 'both') pooledParts.push(out[e.pooled_output].data);
      if (e.use === 'sequence' || e.use === 'both') {
        if (e.kind !== 't5' || textStates) {
          throw new UserError(`${bundle.label}: text encoder '${e.name}' (${e.kind}, ${e.use}) is a layout the web demo does not join yet (SD3-class); use a FLUX-family bundle.`);
        }
        textStates = out[e.sequence_output].data;
      }
    }
    const pooled = new Float32Array(pooledParts.reduce((n, p) => n + p.length, 0));
    pooledParts.reduce((at, p) => { pooled.set(p, at); return at + p.length; }, 0);
    return { textStates, pooled };
  };
}

/** Normalised latents Float32Array[C·h·w] -> {data: Float32Array[3·H·W] in [−1, 1], height, width}. */
export function ortVaeDecoder(ort, bundle, sessions) {
  const vae = bundle.manifest.vae;
  const graph = bundle.manifest.graphsWithRole('vae_decoder')[0];
  return async (latent, channels, height, width) => {
    const z = vae.normalization_in_graph ? latent
      : latent.map((x) => Math.fround(Math.fround(x / Math.fround(vae.scaling_factor)) + Math.fround(vae.shift_factor)));
    const out = await (await sessions.session(graph.name)).run({ [graph.inputs[0].name]: new ort.Tensor('float32', z, [1, channels, height, width]) });
    const image = out[graph.outputs[0].name];
    return { data: image.data, height: image.dims[2], width: image.dims[3] };
  };
}
