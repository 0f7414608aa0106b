// Text -> image over a served bundle, composed from parts as runtime/pipeline.py composes them: verified bundle ->
// onnxruntime-web backends -> sigma schedule or RALU preset -> the core sampler over the denoiser seam -> VAE
// decode -> RGBA pixels. Every input is checked before any work, and mistakes a user can make end in one
// UserError sentence.

import { UserError } from '../core/errors.js';
import { classifierFreeGuidance } from '../core/guidance.js';
import { imageToRgba } from '../core/images.js';
import { imageTokenSteps } from '../core/presets.js';
import { rngFor } from '../core/rng.js';
import { learnedEmbeds } from '../core/safetensors.js';
import { raluSample, sampleBaseline } from '../core/sampler.js';
import { fluxBaselineSigmas, sd3BaselineSigmas } from '../core/schedules.js';
import { promptTokenizer } from '../core/tokenization.js';
import { makeTokens, unpackLatents } from '../core/tokens.js';
import { openBundle } from './bundle.js';
import { ortDenoiser, ortTextEncoders, ortVaeDecoder, sessionFactory } from './backends.js';

const EDGE_PROXIES = ['latent_grad', 'canny'];

/**
 * A pipeline over the bundle at `bundleUrl` (named `bundleLabel` in messages). ort: the onnxruntime-web module; sessionOptions: onnxruntime-web
 * session options (execution providers); embeddings: {bytes: Uint8Array, label} of a learned_embeds.safetensors,
 * or null. Loads the tokenizers and every session up front (each file verified against the manifest).
 */
export async function openPipeline({ ort, bundleUrl, bundleLabel, sessionOptions, embeddings = null, fetchFn }) {
  const started = performance.now();
  const bundle = await openBundle(bundleUrl, { ...(fetchFn ? { fetchFn } : {}), ...(bundleLabel ? { label: bundleLabel } : {}) });
  const { manifest } = bundle;
  const learned = embeddings ? learnedEmbeds(embeddings.bytes, embeddings.label, manifest.textEncoders) : null;
  const tokenizers = {};
  for (const e of manifest.textEncoders) {
    const spec = manifest.tokenizer(e.tokenizer);
    tokenizers[e.name] = promptTokenizer(await bundle.readJson(spec.file), spec, learned ? [learned.token] : [],
      `${bundle.label}/${spec.file}`);
  }
  const sessions = sessionFactory(ort, bundle, sessionOptions);
  const clock = { sessionMs: 0, calls: 0 };
  const encode = ortTextEncoders(ort, bundle, sessions, tokenizers, learned);
  const denoiser = ortDenoiser(ort, bundle, sessions, clock);
  const decode = ortVaeDecoder(ort, bundle, sessions);
  const graphs = [...new Set([...manifest.textEncoders.map((e) => e.graph), ...manifest.denoiser.stage_graphs.map((s) => s.graph),
    manifest.graphsWithRole('vae_decoder')[0].name])];
  await Promise.all(graphs.map((g) => sessions.session(g)));
  const res = manifest.resolution;
  const grid = [res.grid_height, res.grid_width];
  const channels = manifest.denoiser.token_channels;

  function check({ prompt, mode, steps, seed, edgeProxy }) {
    if (typeof prompt !== 'string' || !prompt.trim()) {
      throw new UserError("the prompt is empty; describe the image, e.g. 'a large red circle on the left'.");
    }
    for (const token of prompt.match(/<[^<>\s]+>/g) ?? []) {
      if (!learned || token !== learned.token) {
        throw new UserError(`the prompt uses '${token}', which no loaded embedding defines; load the learned_embeds.safetensors that ralu-personalize wrote for it.`);
      }
    }
    if (!manifest.modes().includes(mode)) {
      throw new UserError(`mode '${mode}' is not in this bundle; choose one of: ${manifest.modes().join(', ')}.`);
    }
    if (mode === 'baseline' && !(Number.isInteger(steps) && steps >= 1)) throw new UserError(`steps must be a whole number of at least 1, got ${steps}.`);
    if (!(Number.isSafeInteger(seed) && seed >= 0)) throw new UserError(`the seed must be a whole number from 0 to 2^53 − 1, got ${seed}.`);
    if (!EDGE_PROXIES.includes(edgeProxy)) throw new UserError(`edge proxy '${edgeProxy}' is unknown; choose one of: ${EDGE_PROXIES.join(', ')}.`);
  }

  function baselineSigmas(steps) {
    const spec = manifest.denoiser;
    return spec.baseline_schedule === 'sd3_static' ? sd3BaselineSigmas(steps, spec.baseline_shift)
      : fluxBaselineSigmas(steps, grid[0] * grid[1]);
  }

  /**
   * One image: {rgba: Uint8ClampedArray[H·W·4], width, height, stats}. params: {prompt, mode, steps (baseline),
   * seed, edgeProxy}; onStep/onStage as in core/sampler.js. The same seed and mode give ralu-run's image.
   */
  async function generate({ prompt, mode = 'baseline', steps = 28, seed = 0, edgeProxy = 'latent_grad' },
    { onStep = null, onStage = null } = {}) {
    check({ prompt, mode, steps, seed, edgeProxy });
    const t0 = performance.now();
    const scale = manifest.denoiser.guidance_scale ?? null;
    let cond = await encode(prompt);
    let seam = denoiser;
    if (scale !== null) { // diffusers' CFG: the negative prompt "" first, then the prompt
      cond = { negative: await encode(''), prompt: cond };
      seam = classifierFreeGuidance(denoiser, scale);
    }
    const t1 = performance.now();
    const sessionBefore = clock.sessionMs;
    const noise = makeTokens(grid[0] * grid[1], channels, Float32Array.from(rngFor(seed, 'initial_noise').standardNormal(grid[0] * grid[1] * channels)));
    const stages = [];
    let tokens;
    let nfe;
    let tokenSteps;
    let selected = [];
    if (mode === 'baseline') {
      tokens = await sampleBaseline(seam, noise, grid[0], grid[1], baselineSigmas(steps), cond, { onStep });
      nfe = steps;
      tokenSteps = steps * grid[0] * grid[1];
    } else {
      const preset = manifest.presetForMode(mode);
      const halfDecode = edgeProxy === 'canny' ? decode : null;
      const result = await raluSample(seam, noise, grid[0], grid[1], preset, cond, rngFor(seed, 'ralu/select'), {
        edgeProxy, decode: halfDecode, onStep, onStage: (s) => { stages.push(s); if (onStage) onStage(s); },
      });
      tokens = result.tokens;
      selected = Array.from(result.selected);
      nfe = preset.nfe;
      tokenSteps = imageTokenSteps(preset, grid[0], grid[1]);
    }
    const t2 = performance.now();
    const image = await decode(unpackLatents(tokens, grid[0], grid[1]), channels / 4, 2 * grid[0], 2 * grid[1]);
    const t3 = performance.now();
    const msDenoise = t2 - t1;
    return {
      rgba: imageToRgba(image.data, image.height, image.width),
      width: image.width,
      height: image.height,
      stats: {
        mode, seed, nfe, imageTokenSteps: tokenSteps, msText: t1 - t0, msDenoise, msDecode: t3 - t2, msTotal: t3 - t0,
        msInSessions: clock.sessionMs - sessionBefore, msPerStep: msDenoise / nfe,
        stages: stages.map((s) => ({ stage: s.stage, numTokens: s.numTokens, numSteps: s.numSteps, ms: s.seconds * 1000, transitionMs: s.transitionSeconds * 1000 })),
        selected,
      },
    };
  }

  return { manifest, label: bundle.label, modes: manifest.modes(), loadMs: performance.now() - started, learnedToken: learned?.token ?? null, check, generate };
}
