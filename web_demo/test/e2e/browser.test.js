// End to end in Debian's headless Chromium (issue 18 item 4): the page loads the built-in shapes model's bundle
// from the local server, generates through its form, and the pixels read back from its canvas match ralu-run's
// PNG for the same prompt, seed and mode (PSNR >= 40 dB, WASM fp32) for baseline, ralu-4x and ralu-7x, and with a
// learned embedding loaded. Bad input (no bundle, a tampered file, an unknown mode, a bad seed) shows one
// sentence on the page and nothing on the console. No request leaves localhost.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { psnr } from '../../src/core/images.js';
import {
  errorText, generateOnPage, launchChromium, learnedEmbedsFile, openDemo, pngPixels, raluRun, shapesBundle,
} from '../../tools/browser.js';

const MIN_PSNR_DB = 40; // issue 18 "Must show": WASM fp32 against ralu-run
const PROMPT = 'a large red circle on the left';
const SEED = 3;
const STEPS = 28;

let browser;
let bundle;
let work;

before(async () => {
  [browser, bundle] = await Promise.all([launchChromium(), shapesBundle()]);
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'ralu-web-e2e-'));
});

after(async () => {
  await browser?.close();
  if (work) fs.rmSync(work, { recursive: true, force: true });
  if (bundle && !process.env.RALU_WEB_BUNDLE) fs.rmSync(path.dirname(bundle), { recursive: true, force: true }); // our own export
});

/** No uncaught error, no console error and no request outside localhost: what a clean page run looks like. */
function assertQuiet(demo) {
  assert.deepEqual(demo.pageErrors, [], 'uncaught errors on the page');
  assert.deepEqual(demo.console.filter((m) => m.type === 'error'), [], 'console errors');
  assert.deepEqual(demo.external, [], 'requests outside localhost');
}

describe('the page generates what ralu-run generates', () => {
  test('baseline, ralu-4x and ralu-7x match ralu-run PNGs at PSNR >= 40 dB', async () => {
    const demo = await openDemo(browser, bundle);
    try {
      assert.equal(await errorText(demo.page), '');
      for (const mode of ['baseline', 'ralu-4x', 'ralu-7x']) {
        const reference = await raluRun(bundle, { prompt: PROMPT, mode, seed: SEED, steps: STEPS, outDir: path.join(work, mode) });
        const got = await generateOnPage(demo.page, { prompt: PROMPT, mode, seed: SEED, steps: STEPS });
        const expected = await pngPixels(demo.page, reference.out);
        assert.deepEqual([got.width, got.height], [expected.width, expected.height]);
        const db = psnr(got.rgba, expected.rgba, 4);
        console.log(`# ${mode}: PSNR ${db.toFixed(1)} dB vs ralu-run, ${got.stats.msPerStep.toFixed(0)} ms/step on the page`);
        assert.ok(db >= MIN_PSNR_DB, `${mode}: PSNR ${db.toFixed(2)} dB < ${MIN_PSNR_DB} dB`);
        assert.equal(got.stats.nfe, mode === 'baseline' ? STEPS : reference.nfe);
        assert.deepEqual(got.progress, [got.stats.nfe, got.stats.nfe], 'the progress bar counts every step');
        if (mode !== 'baseline') assert.deepEqual(got.stats.selected, reference.selected_regions, 'the same regions upsampled early');
      }
      assertQuiet(demo);
    } finally {
      await demo.close();
    }
  });

  test('the Canny edge proxy selects the regions ralu-run selects and gives its image', async () => {
    const reference = await raluRun(bundle, { prompt: PROMPT, mode: 'ralu-4x', seed: SEED, edgeProxy: 'canny', outDir: path.join(work, 'canny') });
    const demo = await openDemo(browser, bundle);
    try {
      const got = await generateOnPage(demo.page, { prompt: PROMPT, mode: 'ralu-4x', seed: SEED, edge: 'canny' });
      assert.deepEqual(got.stats.selected, reference.selected_regions);
      const db = psnr(got.rgba, (await pngPixels(demo.page, reference.out)).rgba, 4);
      console.log(`# ralu-4x with the Canny proxy: PSNR ${db.toFixed(1)} dB vs ralu-run`);
      assert.ok(db >= MIN_PSNR_DB, `canny: PSNR ${db.toFixed(2)} dB < ${MIN_PSNR_DB} dB`);
      assertQuiet(demo);
    } finally {
      await demo.close();
    }
  });

  test('a learned embedding from ralu-personalize changes the image as it does in ralu-run', async () => {
    const token = '<web-token>';
    const file = await learnedEmbedsFile(bundle, token, path.join(work, 'learned_embeds.safetensors'));
    const prompt = `a small ${token} at the top`;
    const reference = await raluRun(bundle, { prompt, mode: 'ralu-7x', seed: SEED, embeddings: file, outDir: path.join(work, 'learned') });
    const demo = await openDemo(browser, bundle);
    try {
      await demo.page.setInputFiles('#embeddings', file);
      await demo.page.waitForFunction(() => document.body.dataset.state === 'ready' && /learned token/.test(document.getElementById('status').textContent));
      const got = await generateOnPage(demo.page, { prompt, mode: 'ralu-7x', seed: SEED });
      const db = psnr(got.rgba, (await pngPixels(demo.page, reference.out)).rgba, 4);
      console.log(`# ralu-7x with ${token}: PSNR ${db.toFixed(1)} dB vs ralu-run`);
      assert.ok(db >= MIN_PSNR_DB, `learned token: PSNR ${db.toFixed(2)} dB < ${MIN_PSNR_DB} dB`);
      assertQuiet(demo);
    } finally {
      await demo.close();
    }
  });
});

describe('bad input shows one clear sentence and no console stack', () => {
  async function expectMessage(bundleDir, query, pattern, action = null) {
    const demo = await openDemo(browser, bundleDir, query);
    try {
      if (action) await action(demo.page);
      const text = await errorText(demo.page);
      assert.match(text, pattern);
      assert.equal(text.split(/(?<=[.;])\s+(?=[A-Z])/).length, 1, `one sentence: ${text}`);
      assert.doesNotMatch(text, /\n\s+at /, 'no stack in the message');
      assertQuiet(demo);
    } finally {
      await demo.close();
    }
  }

  test('no bundle served', () => expectMessage(null, '', /^no bundle is served: start the demo with `npm run demo -- --bundle DIR`/));

  test('a tampered file is refused by its sha256', async () => {
    const copy = path.join(work, 'tampered');
    fs.cpSync(bundle, copy, { recursive: true });
    const data = path.join(copy, 'vae_decoder', 'vae_decoder.onnx_data');
    const bytes = fs.readFileSync(data);
    bytes[bytes.length >> 1] ^= 0xff;
    fs.writeFileSync(data, bytes);
    await expectMessage(copy, '', /^tampered\/vae_decoder\/vae_decoder\.onnx_data: sha256 [0-9a-f]{12}… but the manifest says [0-9a-f]{12}…; re-export the bundle\.$/);
  });

  test("another target's bundle names the export that the page runs", async () => {
    // a desktop bundle's manifest says so; its text encoders' optional inputs are what onnxruntime-web refuses
    const copy = path.join(work, 'desktop');
    fs.cpSync(bundle, copy, { recursive: true });
    const manifest = path.join(copy, 'ralu_config.json');
    fs.writeFileSync(manifest, JSON.stringify({ ...JSON.parse(fs.readFileSync(manifest, 'utf8')), target: 'desktop' }));
    await expectMessage(copy, '', /^desktop is a desktop bundle; the page runs web bundles: export one with `ralu-export --model shapes --target web --out DIR`\.$/);
  });

  test('an unknown mode names the modes the bundle offers', () => expectMessage(bundle, 'mode=ralu-9x',
    /^mode 'ralu-9x' is not in this bundle; choose one of: baseline, ralu-4x, ralu-5x, ralu-7x\.$/));

  test('a bad seed is refused before any work', () => expectMessage(bundle, '', /^the seed must be a whole number of 0 or more, got '-3'\.$/,
    async (page) => { await page.fill('#seed', '-3'); await page.click('#generate'); }));
});
