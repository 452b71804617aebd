#!/usr/bin/env node
// Build the example with Vite and serve it from 127.0.0.1:
//   /           with COOP `same-origin` + COEP `require-corp`: cross-origin isolated, so the
//               manager shares its memory with the consumer Web Workers
//   /fallback/  the same files without those headers: no SharedArrayBuffer, so the page runs
//               the single-thread fallback
// Usage (from the repository root, after `npm run build`):
//   node examples/browser/server.mjs [--port 8080]
import { createServer } from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import { extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.map': 'application/json',
};

/** Build the page with Vite into `outDir` (default examples/browser/dist); `plugins` are
 *  added to the page's and the workers' builds (the tests watch module resolution with one). */
export async function buildExample(outDir = join(here, 'dist'), { logLevel = 'warn', plugins = [] } = {}) {
  const { build } = await import('vite');
  return build({
    root: here,
    configFile: join(here, 'vite.config.js'),
    logLevel,
    plugins,
    worker: { plugins: () => plugins },
    build: { outDir, emptyOutDir: true },
  });
}

/** Serve `root`; resolves to the listening server (port 0 picks a free port). */
export function serveExample(root, { port = 8080, host = '127.0.0.1' } = {}) {
  const base = resolve(root);
  const server = createServer(async (req, res) => {
    try {
      let path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
      const isolated = !(path === '/fallback' || path.startsWith('/fallback/'));
      if (path === '/fallback') {
        res.writeHead(301, { location: '/fallback/' }).end();
        return;
      }
      if (!isolated) path = path.slice('/fallback'.length);
      if (path.endsWith('/')) path += 'index.html';
      const file = normalize(join(base, path));
      if (!file.startsWith(base)) {
        res.writeHead(403).end();
        return;
      }
      const info = await stat(file).catch(() => undefined);
      if (!info?.isFile()) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
        return;
      }
      const headers = { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' };
      if (isolated) {
        headers['cross-origin-opener-policy'] = 'same-origin';
        headers['cross-origin-embedder-policy'] = 'require-corp';
      }
      res.writeHead(200, headers).end(await readFile(file));
    } catch (error) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(String(error));
    }
  });
  return new Promise((resolveServer, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolveServer(server));
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const at = process.argv.indexOf('--port');
  const port = at > 0 ? Number(process.argv[at + 1]) : 8080;
  const outDir = join(here, 'dist');
  await buildExample(outDir, { logLevel: 'info' });
  const server = await serveExample(outDir, { port });
  const { port: actual } = server.address();
  console.log(`shard-mapper example:
  http://127.0.0.1:${actual}/           cross-origin isolated: Web Workers consume over shared memory
  http://127.0.0.1:${actual}/fallback/  no COOP/COEP: single-thread fallback (see the console warning)`);
}
