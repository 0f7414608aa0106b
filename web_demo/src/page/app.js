// The demo page: loads the bundle the server names (every file checked against the manifest's sha256), fills
// the form from the manifest's modes, runs the sampler over onnxruntime-web (WASM with threads when the page is
// cross-origin isolated; WebGPU only where the browser has it), and shows the image, a progress bar per step
// and timings per stage. A mistake a user can make (no bundle, tampered file, unknown mode, bad seed) ends in
// one sentence in the #error box and nothing on the console. Query parameters preset the form: prompt, mode,
// seed, steps, edge, backend, threads (at most what the page gets), bundle (a bundle URL other than the served one).

import * as ortWasm from 'onnxruntime-web';
import { UserError } from '../core/errors.js';
import { openPipeline } from '../runtime/pipeline.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const available = globalThis.crossOriginIsolated ? Math.max(1, navigator.hardwareConcurrency || 1) : 1;
const threads = params.has('threads') ? Math.min(available, Math.max(1, Number.parseInt(params.get('threads'), 10) || 1)) : available;
let pipeline = null;
let embeddings = null;
let ort = ortWasm;

/**
 * The onnxruntime-web build for a backend: the WASM-only build (plain SIMD + threads; it measured faster here than
 * the WebGPU build's asyncify WASM) or the WebGPU build, loaded only when chosen. transformers.js points
 * onnxruntime-web at a CDN when it loads; the page serves the runtime itself.
 */
async function runtimeFor(backend) {
  const module = backend === 'webgpu' ? await import('onnxruntime-web/webgpu') : ortWasm;
  module.env.wasm.wasmPaths = new URL('/vendor/onnxruntime-web/dist/', location.href).href;
  module.env.wasm.numThreads = threads;
  module.env.logLevel = 'error';
  return module;
}

function showError(error) {
  const box = $('error');
  box.hidden = false;
  if (error instanceof UserError) {
    box.textContent = error.message;
  } else {
    box.textContent = `internal error: ${error?.message ?? error} (a bug; the console has the details).`;
    console.error(error); // bugs keep their stack
  }
  $('status').textContent = '';
  document.body.dataset.state = 'error';
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

/** {url, label} of the bundle to load: ?bundle=URL, else the one the server names in /bundle.json. */
async function servedBundle() {
  if (params.has('bundle')) return { url: new URL(params.get('bundle'), location.href).href };
  const { url, name } = await (await fetch('/bundle.json')).json();
  if (!url) throw new UserError('no bundle is served: start the demo with `npm run demo -- --bundle DIR`, DIR a folder written by `ralu-export --model shapes --target web --out DIR`.');
  return { url: new URL(url, location.href).href, label: name };
}

function sessionOptions() {
  const provider = $('backend').value;
  return { executionProviders: [provider], logSeverityLevel: 3, graphOptimizationLevel: 'all' };
}

async function load() {
  document.body.dataset.state = 'loading';
  $('generate').disabled = true;
  $('status').textContent = 'loading the bundle (checking every file against its sha256)…';
  ort = await runtimeFor($('backend').value);
  const served = await servedBundle();
  pipeline = await openPipeline({ ort, bundleUrl: served.url, bundleLabel: served.label, sessionOptions: sessionOptions(), embeddings });
  const select = $('mode');
  const previous = select.value || params.get('mode') || 'ralu-4x';
  select.replaceChildren(...pipeline.modes.map((m) => new Option(m, m)));
  if (!pipeline.modes.includes(previous)) pipeline.check({ prompt: 'x', mode: previous, steps: 1, seed: 0, edgeProxy: 'latent_grad' });
  select.value = previous;
  select.dispatchEvent(new Event('change'));
  const res = pipeline.manifest.resolution;
  $('status').textContent = `${pipeline.label}: ${pipeline.manifest.data.model.name} ${res.width}×${res.height}, loaded in ${(pipeline.loadMs / 1000).toFixed(1)} s`
    + (pipeline.learnedToken ? `, learned token ${pipeline.learnedToken}` : '') + '.';
  $('environment').textContent = `onnxruntime-web ${ort.env.versions.web}, ${$('backend').value}, ${threads} thread${threads > 1 ? 's' : ''}`
    + `${globalThis.crossOriginIsolated ? ' (cross-origin isolated)' : ''}, ${navigator.hardwareConcurrency} logical cores.`;
  $('generate').disabled = false;
  document.body.dataset.state = 'ready';
}

function readForm() {
  const integer = (id, what) => {
    const text = $(id).value.trim();
    if (!/^\d+$/.test(text)) throw new UserError(`the ${what} must be a whole number of 0 or more, got '${text}'.`);
    return Number(text);
  };
  return { prompt: $('prompt').value, mode: $('mode').value, seed: integer('seed', 'seed'), steps: integer('steps', 'step count'), edgeProxy: $('edge').value };
}

const ms = (x) => `${x.toFixed(0)} ms`;

function showTimings(stats) {
  const rows = [['text encoders', ms(stats.msText)]];
  for (const s of stats.stages) {
    rows.push([`stage ${s.stage}: ${s.numTokens} tokens × ${s.numSteps} steps`, `${ms(s.ms)} (${(s.ms / s.numSteps).toFixed(1)}/step)`]);
    rows.push([`  host work before stage ${s.stage}`, `${s.transitionMs.toFixed(1)} ms`]);
  }
  if (!stats.stages.length) rows.push([`denoising: ${stats.nfe} full-res steps`, ms(stats.msDenoise)]);
  rows.push(['denoising loop', `${ms(stats.msDenoise)} (${stats.msPerStep.toFixed(1)} ms/step, ${stats.nfe} NFE)`]);
  rows.push(['VAE decode', ms(stats.msDecode)], ['total', ms(stats.msTotal)]);
  $('timings').tBodies[0].replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement('tr');
    tr.innerHTML = '<td></td><td class="num"></td>';
    tr.cells[0].textContent = k;
    tr.cells[1].textContent = v;
    return tr;
  }));
}

// A macrotask boundary after each step, so the progress bar can repaint between synchronous WASM runs.
const yieldToPage = () => new Promise((resolve) => { const c = new MessageChannel(); c.port1.onmessage = () => resolve(); c.port2.postMessage(0); });

async function generate(event) {
  event?.preventDefault();
  clearError();
  const request = readForm();
  pipeline.check(request);
  const total = request.mode === 'baseline' ? request.steps : pipeline.manifest.presetForMode(request.mode).nfe;
  $('generate').disabled = true;
  document.body.dataset.state = 'running';
  const progress = $('progress');
  progress.max = total;
  progress.value = 0;
  let done = 0;
  const result = await pipeline.generate(request, {
    onStep: async (s) => {
      progress.value = ++done;
      $('status').textContent = `${request.mode}: ${s.stage ? `stage ${s.stage}, ` : ''}step ${done}/${total} (${s.numTokens} tokens)`;
      await yieldToPage();
    },
  });
  const canvas = $('image');
  canvas.width = result.width;
  canvas.height = result.height;
  canvas.getContext('2d', { willReadFrequently: true }).putImageData(new ImageData(result.rgba, result.width, result.height), 0, 0);
  showTimings(result.stats);
  $('status').textContent = `${request.mode}, seed ${request.seed}: ${result.stats.nfe} steps in ${(result.stats.msDenoise / 1000).toFixed(2)} s.`;
  globalThis.raluLastRun = { ...result.stats, width: result.width, height: result.height, threads, backend: $('backend').value };
  $('generate').disabled = false;
  document.body.dataset.state = 'done';
}

const guarded = (fn) => async (...args) => {
  try {
    await fn(...args);
  } catch (error) {
    showError(error);
    if (pipeline) $('generate').disabled = false;
  }
};

async function start() {
  if (globalThis.navigator.gpu && await navigator.gpu.requestAdapter().catch(() => null)) $('backend').add(new Option('WebGPU', 'webgpu'));
  for (const [key, id] of [['prompt', 'prompt'], ['seed', 'seed'], ['steps', 'steps'], ['edge', 'edge'], ['backend', 'backend']]) {
    if (params.has(key)) $(id).value = params.get(key);
  }
  const stepsApply = () => { $('steps').disabled = $('mode').value !== 'baseline'; }; // RALU presets fix their steps
  $('mode').addEventListener('change', stepsApply);
  $('form').addEventListener('submit', guarded(generate));
  $('backend').addEventListener('change', guarded(load));
  $('embeddings').addEventListener('change', guarded(async () => {
    const file = $('embeddings').files[0];
    embeddings = file ? { bytes: new Uint8Array(await file.arrayBuffer()), label: file.name } : null;
    await load();
  }));
  await load();
}

guarded(start)();
