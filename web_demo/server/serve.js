// The demo's web server: `npm run demo -- --bundle DIR [--port N]` serves the page, the JavaScript runtime, the
// onnxruntime-web and transformers.js files from node_modules, and the bundle folder at /bundle/, on 127.0.0.1
// only. Every response carries the cross-origin isolation headers (COOP same-origin, COEP require-corp) that
// give the page SharedArrayBuffer, so onnxruntime-web's WASM backend runs with threads. GET and HEAD only; a
// path that leaves its folder is refused. /bundle.json tells the page whether a bundle is served, and its folder name for messages.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MODULES = path.join(ROOT, 'node_modules');
const HOST = '127.0.0.1';
const DEFAULT_PORT = 8017;

// URL prefix -> folder. node_modules is exposed only where the page needs it.
const VENDOR = {
  '/vendor/onnxruntime-web/dist/': path.join(MODULES, 'onnxruntime-web/dist'),
  '/vendor/onnxruntime-common/dist/': path.join(MODULES, 'onnxruntime-common/dist'),
  '/vendor/@huggingface/transformers/dist/': path.join(MODULES, '@huggingface/transformers/dist'),
  '/src/': path.join(ROOT, 'src'),
};

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json; charset=utf-8', '.wasm': 'application/wasm',
  '.png': 'image/png', '.txt': 'text/plain; charset=utf-8',
};

const ISOLATION = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
  'X-Content-Type-Options': 'nosniff',
  'Cache-Control': 'no-store',
};

/** The file under `folder` that `relative` names, or null when it leaves the folder or is not a file. */
function inside(folder, relative) {
  const file = path.resolve(folder, '.' + path.posix.normalize('/' + relative));
  if (file !== folder && !file.startsWith(folder + path.sep)) return null;
  try {
    return fs.statSync(file).isFile() ? file : null;
  } catch {
    return null;
  }
}

function resolve(urlPath, bundleDir) {
  if (urlPath === '/' || urlPath === '/index.html') return path.join(ROOT, 'src/page/index.html');
  if (urlPath.startsWith('/bundle/') && bundleDir) return inside(bundleDir, urlPath.slice('/bundle/'.length));
  for (const [prefix, folder] of Object.entries(VENDOR)) {
    if (urlPath.startsWith(prefix)) return inside(folder, urlPath.slice(prefix.length));
  }
  return null;
}

/**
 * Starts the server; resolves to {url, close()}. bundleDir: a bundle folder or null (the page then says how to
 * start with one); port 0 picks a free port.
 */
export function startServer({ bundleDir = null, port = DEFAULT_PORT } = {}) {
  const bundle = bundleDir ? path.resolve(bundleDir) : null;
  const server = http.createServer((request, response) => {
    const send = (status, body, type = 'text/plain; charset=utf-8') => {
      response.writeHead(status, { ...ISOLATION, 'Content-Type': type });
      response.end(request.method === 'HEAD' ? undefined : body);
    };
    if (request.method !== 'GET' && request.method !== 'HEAD') return send(405, 'only GET and HEAD\n');
    let urlPath;
    try {
      urlPath = decodeURIComponent(new URL(request.url, `http://${HOST}`).pathname);
    } catch {
      return send(400, 'bad path\n');
    }
    if (urlPath === '/bundle.json') {
      return send(200, JSON.stringify(bundle ? { url: 'bundle/', name: path.basename(bundle) } : { url: null }), TYPES['.json']);
    }
    if (urlPath === '/favicon.ico') return send(204, '');
    const file = resolve(urlPath, bundle);
    if (!file) return send(404, 'not found\n');
    const { size } = fs.statSync(file);
    response.writeHead(200, { ...ISOLATION, 'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'Content-Length': size });
    if (request.method === 'HEAD') return response.end();
    return fs.createReadStream(file).pipe(response);
  });
  return new Promise((resolvePromise, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, () => {
      const { port: actual } = server.address();
      resolvePromise({ url: `http://${HOST}:${actual}/`, close: () => new Promise((done) => server.close(done)) });
    });
  });
}

const USAGE = `usage: npm run demo -- --bundle DIR [--port N]

Serves the RALU web demo on http://${HOST}:PORT/ (localhost only) with DIR, a bundle folder written by
\`ralu-export --model shapes --target web --out DIR\`, at /bundle/. --port defaults to ${DEFAULT_PORT}.`;

function parseArgs(argv) {
  const args = { bundleDir: null, port: DEFAULT_PORT };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') return { help: true };
    const value = argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value; see --help.`);
    if (flag === '--bundle') args.bundleDir = value;
    else if (flag === '--port') {
      args.port = Number(value);
      if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) throw new Error(`--port ${value} is not a port number; use e.g. --port ${DEFAULT_PORT}.`);
    } else throw new Error(`unknown option ${flag}; see --help.`);
  }
  if (!args.bundleDir) throw new Error('--bundle DIR is required: a folder written by `ralu-export --model shapes --target web --out DIR`.');
  if (!fs.existsSync(path.join(args.bundleDir, 'ralu_config.json'))) {
    throw new Error(`${args.bundleDir}: no ralu_config.json, so this is not a bundle folder; export one with \`ralu-export --model shapes --target web --out DIR\`.`);
  }
  return args;
}

async function main(argv) {
  let args;
  try {
    args = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`error: ${e.message}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  try {
    const { url } = await startServer(args);
    process.stdout.write(`${url}\n`);
    process.stderr.write(`serving ${path.resolve(args.bundleDir)} at ${url}bundle/ (Ctrl-C stops)\n`);
  } catch (e) {
    process.stderr.write(`error: could not listen on ${HOST}:${args.port} (${e.code ?? e.message}); pick another --port.\n`);
    return 2;
  }
  return null;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then((status) => { if (status !== null) process.exitCode = status; });
}
