// A screenshot of the demo page after a generation, for the docs (docs/images/web_demo.png).
// Usage: npm run screenshot -- [--bundle DIR] [--out FILE]   (bundle: default $RALU_WEB_BUNDLE, else a fresh export)

import path from 'node:path';
import { REPO, generateOnPage, launchChromium, openDemo, shapesBundle } from './browser.js';

async function main(argv) {
  const get = (flag) => { const i = argv.indexOf(flag); return i >= 0 ? argv[i + 1] : null; };
  const out = path.resolve(get('--out') ?? path.join(REPO, 'docs/images/web_demo.png'));
  const bundle = get('--bundle') ?? await shapesBundle();
  const browser = await launchChromium();
  const demo = await openDemo(browser, bundle);
  try {
    await demo.page.setViewportSize({ width: 900, height: 860 });
    await generateOnPage(demo.page, { prompt: 'a large red circle on the left', mode: 'ralu-4x', seed: 0 });
    await demo.page.screenshot({ path: out, fullPage: true });
  } finally {
    await demo.close();
    await browser.close();
  }
  console.log(out);
}

main(process.argv.slice(2)).catch((e) => { process.stderr.write(`error: ${e.message}\n`); process.exitCode = 2; });
