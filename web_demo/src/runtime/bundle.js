// Opening a bundle over HTTP: the manifest first (schema-checked by core/manifest.js), then each file the page
// uses, fetched and checked against the manifest's size and sha256 before it is used (runtime/bundle.py in the
// Python runtime): a missing, truncated or tampered file is refused by name. Works wherever fetch and WebCrypto
// exist (pages on localhost count as a secure context).

import { UserError } from '../core/errors.js';
import { MANIFEST_NAME, parseManifest } from '../core/manifest.js';

const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * A verified bundle served at `baseUrl` (ending in '/'): {manifest, label, read(path) -> Promise<Uint8Array>,
 * readJson(path)}. label: the bundle's name in messages (default: the URL's last folder). `read` refuses paths the manifest does not list and files whose bytes disagree with it.
 */
export async function openBundle(baseUrl, { fetchFn = globalThis.fetch, label = baseUrl.replace(/\/+$/, '').split('/').pop() || 'bundle' } = {}) {
  const noBundle = `no bundle at ${baseUrl}: start the demo with \`npm run demo -- --bundle DIR\`, DIR a folder written by \`ralu-export --model shapes --target web --out DIR\`.`;
  let response;
  try {
    response = await fetchFn(new URL(MANIFEST_NAME, baseUrl));
  } catch {
    throw new UserError(noBundle);
  }
  if (!response.ok) throw new UserError(noBundle);
  let data;
  try {
    data = JSON.parse(await response.text());
  } catch {
    throw new UserError(`${label}/${MANIFEST_NAME}: not valid JSON; re-export the bundle.`);
  }
  const manifest = parseManifest(data);
  if (data.target !== 'web') {
    // Other targets' graphs differ in what onnxruntime-web needs (docs/web.md): optional learned-token inputs,
    // one weights file name for every graph, .ort or .pte files.
    throw new UserError(`${label} is a ${data.target} bundle; the page runs web bundles: export one with \`ralu-export --model shapes --target web --out DIR\`.`);
  }

  async function read(path) {
    const entry = manifest.files.get(path);
    if (!entry) throw new UserError(`${label}/${path}: not a file the manifest vouches for; re-export the bundle.`);
    const fetched = await fetchFn(new URL(path, baseUrl));
    if (!fetched.ok) throw new UserError(`${label}/${path}: missing from the bundle (HTTP ${fetched.status}); re-export the bundle.`);
    const bytes = new Uint8Array(await fetched.arrayBuffer());
    if (bytes.length !== entry.size) {
      throw new UserError(`${label}/${path}: ${bytes.length} bytes but the manifest says ${entry.size}; re-export the bundle.`);
    }
    const digest = hex(await globalThis.crypto.subtle.digest('SHA-256', bytes));
    if (digest !== entry.sha256) {
      throw new UserError(`${label}/${path}: sha256 ${digest.slice(0, 12)}… but the manifest says ${entry.sha256.slice(0, 12)}…; re-export the bundle.`);
    }
    return bytes;
  }

  async function readJson(path) {
    const text = new TextDecoder().decode(await read(path));
    try {
      return JSON.parse(text);
    } catch {
      throw new UserError(`${label}/${path}: not valid JSON; re-export the bundle.`);
    }
  }

  return { manifest, label, read, readJson };
}
