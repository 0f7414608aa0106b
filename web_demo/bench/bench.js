// RALU speed in the browser (issue 18 "Must show"): on the demo page in headless Chromium (WASM, threads as the
// page gets them), the denoising-loop time of ralu-4x and ralu-7x against the 50-step baseline, and the per-step
// milliseconds against the Python runtime (`ralu-run`, same bundle, same machine). Page and Python runs are
// interleaved mode by mode and round by round after one warm-up run each; medians are reported. Prints a table
// and writes one JSON file (default benchmarks/results/web_ralu_speed.json).
//
// Usage: npm run bench -- [--bundle DIR] [--repeats N] [--out FILE]
//   --bundle   a bundle of the shapes model (default $RALU_WEB_BUNDLE, else a fresh ralu-export)
//   --repeats  timed rounds per mode after the warm-up (default 3)
//   --out      the JSON file to write

import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CHROMIUM, CHROMIUM_FLAGS, REPO, generateOnPage, launchChromium, openDemo, raluRun, shapesBundle } from '../tools/browser.js';

const PROMPT = 'a large red circle on the left';
const SEED = 0;
const BASELINE_STEPS = 50;
const MODES = ['baseline', 'ralu-4x', 'ralu-7x'];

function parseArgs(argv) {
  const args = { bundle: null, repeats: 3, out: path.join(REPO, 'benchmarks/results/web_ralu_speed.json') };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === '--bundle') args.bundle = value;
    else if (flag === '--repeats') args.repeats = Number(value);
    else if (flag === '--out') args.out = path.resolve(value);
    else throw new Error(`unknown option ${flag}; options: --bundle DIR, --repeats N, --out FILE.`);
  }
  if (!Number.isInteger(args.repeats) || args.repeats < 1) throw new Error(`--repeats must be a whole number >= 1, got ${args.repeats}.`);
  return args;
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const p90 = (xs) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil(0.9 * xs.length) - 1)];
const sha256 = (file) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const bundle = args.bundle ?? await shapesBundle();
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'ralu-web-bench-'));
  const browser = await launchChromium();
  const demo = await openDemo(browser, bundle);
  const samples = Object.fromEntries(MODES.map((m) => [m, { page: [], python: [] }]));
  const request = (mode) => ({ prompt: PROMPT, mode, seed: SEED, steps: BASELINE_STEPS });
  const loadBefore = os.loadavg();
  try {
    for (let round = -1; round < args.repeats; round++) { // round -1: warm-up, not recorded
      for (const mode of MODES) {
        const page = (await generateOnPage(demo.page, request(mode))).stats;
        const python = await raluRun(bundle, { ...request(mode), threads: 0, outDir: path.join(scratch, `${mode}-${round}`) });
        if (round < 0) continue;
        samples[mode].page.push({ loop_ms: page.msDenoise, in_sessions_ms: page.msInSessions, stage_ms: page.stages.map((s) => s.ms), nfe: page.nfe, token_steps: page.imageTokenSteps, threads: page.threads });
        samples[mode].python.push({ loop_ms: python.seconds_denoise * 1000, stage_ms: python.seconds_per_stage.map((s) => s * 1000), nfe: python.nfe });
        process.stderr.write(`round ${round + 1}/${args.repeats} ${mode}: page ${page.msDenoise.toFixed(0)} ms, python ${(python.seconds_denoise * 1000).toFixed(0)} ms\n`);
      }
    }
  } finally {
    await demo.close();
    await browser.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  }

  const baselinePage = median(samples.baseline.page.map((s) => s.loop_ms));
  const baselinePython = median(samples.baseline.python.map((s) => s.loop_ms));
  const results = MODES.map((mode) => {
    const page = samples[mode].page.map((s) => s.loop_ms);
    const python = samples[mode].python.map((s) => s.loop_ms);
    const nfe = samples[mode].page[0].nfe;
    return {
      mode, nfe, image_token_steps: samples[mode].page[0].token_steps,
      page_loop_median_ms: median(page), page_loop_p90_ms: p90(page), page_per_step_median_ms: median(page) / nfe,
      page_speedup_vs_baseline50: baselinePage / median(page),
      page_stage_median_ms: samples[mode].page[0].stage_ms.map((_, k) => median(samples[mode].page.map((s) => s.stage_ms[k]))),
      python_loop_median_ms: median(python), python_loop_p90_ms: p90(python), python_per_step_median_ms: median(python) / nfe,
      python_speedup_vs_baseline50: baselinePython / median(python),
      page_over_python_per_step: median(page) / median(python),
      samples: samples[mode],
    };
  });

  const report = {
    benchmark: 'web_demo/bench/bench.js',
    what: 'denoising-loop time on the demo page (headless Chromium, onnxruntime-web WASM) vs the 50-step baseline, and vs ralu-run (onnxruntime, CPU EP) on the same machine',
    environment: {
      cpu: os.cpus()[0]?.model, logical_cores: os.cpus().length, load_average_before: loadBefore, load_average_after: os.loadavg(),
      node: process.version, chromium: execFileSync(CHROMIUM, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(),
      chromium_flags: CHROMIUM_FLAGS, onnxruntime_web: JSON.parse(fs.readFileSync(path.join(REPO, 'web_demo/node_modules/onnxruntime-web/package.json'))).version,
      page_threads: samples.baseline.page[0].threads, python_threads: 'ralu-run --threads 0 (all cores)',
      bundle: bundle, bundle_manifest_sha256: sha256(path.join(bundle, 'ralu_config.json')),
    },
    config: { prompt: PROMPT, seed: SEED, baseline_steps: BASELINE_STEPS, warmup_rounds: 1, repeats: args.repeats, order: 'per round: baseline, ralu-4x, ralu-7x; page then ralu-run for each' },
    results,
  };
  fs.mkdirSync(path.dirname(args.out), { recursive: true });
  fs.writeFileSync(args.out + '.tmp', JSON.stringify(report, null, 2) + '\n');
  fs.renameSync(args.out + '.tmp', args.out);

  const header = ['mode', 'NFE', 'token-steps', 'page loop ms', 'speedup', 'page ms/step', 'python loop ms', 'speedup', 'python ms/step', 'page/python'];
  const rows = results.map((r) => [r.mode, r.nfe, r.image_token_steps, r.page_loop_median_ms.toFixed(0), `${r.page_speedup_vs_baseline50.toFixed(2)}x`,
    r.page_per_step_median_ms.toFixed(1), r.python_loop_median_ms.toFixed(0), `${r.python_speedup_vs_baseline50.toFixed(2)}x`, r.python_per_step_median_ms.toFixed(1), r.page_over_python_per_step.toFixed(2)]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  for (const line of [header, ...rows]) console.log(line.map((c, i) => String(c).padStart(widths[i])).join('  '));
  console.log(`medians of ${args.repeats} interleaved rounds; page: ${report.environment.page_threads} WASM threads; wrote ${path.relative(process.cwd(), args.out)}`);
}

main().catch((e) => { process.stderr.write(`error: ${e.message}\n`); process.exitCode = 2; });
