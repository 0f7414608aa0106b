// Driving the demo page in Debian's headless Chromium with playwright-core (shared by the end-to-end test, the
// benchmark and the screenshot script): start the local server, open the page, generate through the form as a
// person would, and read the pixels back from the page's canvas. Also the Python side these compare against:
// `ralu-export` for a bundle and `ralu-run` for reference PNGs, from the repository's .venv.

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import { startServer } from '../server/serve.js';

const run = promisify(execFile);
export const WEB_DEMO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = path.resolve(WEB_DEMO, '..');
export const CHROMIUM = '/usr/bin/chromium';
export const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'];
const VENV_BIN = path.join(REPO, '.venv', 'bin');

function venvTool(name) {
  const tool = path.join(VENV_BIN, name);
  if (!fs.existsSync(tool)) throw new Error(`${tool} is missing: run scripts/setup.sh first (it installs the Python runtime the browser is compared with).`);
  return tool;
}

/**
 * A bundle folder of the built-in shapes model: $RALU_WEB_BUNDLE when set (reused, e.g. between runs), else a
 * fresh `ralu-export --model shapes --target web` into a temporary folder (about 2 minutes on 2 cores).
 */
export async function shapesBundle() {
  if (process.env.RALU_WEB_BUNDLE) return process.env.RALU_WEB_BUNDLE;
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ralu-web-')), 'shapes-web');
  await run(venvTool('ralu-export'), ['--model', 'shapes', '--target', 'web', '--out', out], { maxBuffer: 1 << 24 });
  return out;
}

/** `ralu-run --json` for one image; returns its result object (out: the PNG path, seconds_denoise, ...). */
export async function raluRun(bundle, { prompt, mode, seed, steps = 28, threads = 0, embeddings = null, edgeProxy = 'latent_grad', outDir }) {
  const args = ['--bundle', bundle, '--prompt', prompt, '--mode', mode, '--seed', String(seed), '--steps', String(steps),
    '--threads', String(threads), '--edge-proxy', edgeProxy, '--out', outDir, '--json', '--no-progress'];
  if (embeddings) args.push('--embeddings', embeddings);
  const { stdout } = await run(venvTool('ralu-run'), args, { maxBuffer: 1 << 24, env: { ...process.env, HF_HUB_OFFLINE: '1' } });
  return JSON.parse(stdout).images[0];
}

/**
 * A learned_embeds.safetensors for `token` written by the Python runtime's own writer (runtime/embeddings.py),
 * with seeded random vectors of the bundle's hidden sizes: what `ralu-personalize` writes, without training.
 */
export async function learnedEmbedsFile(bundle, token, file) {
  const script = [
    'import sys, numpy as np',
    'from pathlib import Path',
    'from ralu_edge.manifest import read_manifest',
    'from ralu_runtime.embeddings import save_learned_embeds',
    'm = read_manifest(Path(sys.argv[1]))',
    'rng = np.random.default_rng(5)',
    'vecs = {e.name: rng.standard_normal(e.hidden_size).astype(np.float32) for e in m.text_encoders}',
    'save_learned_embeds(Path(sys.argv[3]), sys.argv[2], vecs, m)',
  ].join('\n');
  await run(venvTool('python'), ['-c', script, bundle, token, file]);
  return file;
}

/** Chromium, as the issue asks: Debian's binary, headless, no sandbox, no GPU, no background networking. */
export function launchChromium() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run scripts/setup.sh (apt-get install chromium).`);
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_FLAGS });
}

/**
 * Opens the page from a fresh local server over `bundleDir` (null: no bundle served) and waits until it is ready
 * or shows an error. Returns {page, server, console: [{type, text}], pageErrors: [], external: [urls]}.
 */
export async function openDemo(browser, bundleDir, query = '') {
  const server = await startServer({ bundleDir, port: 0 });
  const page = await browser.newPage();
  const log = { console: [], pageErrors: [], external: [] };
  page.on('console', (m) => log.console.push({ type: m.type(), text: m.text() }));
  page.on('pageerror', (e) => log.pageErrors.push(e.message));
  page.on('request', (r) => {
    const url = r.url();
    if (!url.startsWith(server.url) && !url.startsWith('data:') && !url.startsWith('blob:')) log.external.push(url);
  });
  await page.goto(server.url + (query ? `?${query}` : ''));
  await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state), null, { timeout: 180_000 });
  return { page, server, ...log, async close() { await page.close(); await server.close(); } };
}

/** The text of the page's error box ('' when hidden). */
export const errorText = (page) => page.evaluate(() => (document.getElementById('error').hidden ? '' : document.getElementById('error').textContent));

/**
 * Fills the form, clicks Generate, waits for the image; returns {stats, rgba: Uint8Array[H·W·4], width, height,
 * progress: [value, max]} with the pixels read back from the canvas.
 */
export async function generateOnPage(page, { prompt, mode, seed, steps = 28, edge = 'latent_grad' }) {
  await page.fill('#prompt', prompt);
  await page.selectOption('#mode', mode);
  await page.fill('#seed', String(seed));
  if (mode === 'baseline') await page.fill('#steps', String(steps)); // disabled for RALU modes, whose presets fix N
  await page.selectOption('#edge', edge);
  await page.click('#generate');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null, { timeout: 600_000 });
  const error = await errorText(page);
  if (error) throw new Error(`the page shows an error: ${error}`);
  const back = await page.evaluate(() => {
    const canvas = document.getElementById('image');
    const { data } = canvas.getContext('2d', { willReadFrequently: true }).getImageData(0, 0, canvas.width, canvas.height);
    const progress = document.getElementById('progress');
    return { stats: globalThis.raluLastRun, rgba: Array.from(data), width: canvas.width, height: canvas.height, progress: [progress.value, progress.max] };
  });
  return { ...back, rgba: Uint8Array.from(back.rgba) };
}

/** RGBA pixels of a PNG file, decoded by the page's own browser (createImageBitmap). */
export async function pngPixels(page, file) {
  const base64 = fs.readFileSync(file).toString('base64');
  const back = await page.evaluate(async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }), { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    return { rgba: Array.from(ctx.getImageData(0, 0, bitmap.width, bitmap.height).data), width: bitmap.width, height: bitmap.height };
  }, base64);
  return { ...back, rgba: Uint8Array.from(back.rgba) };
}
