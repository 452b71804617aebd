// shard-mapper in a real browser: examples/browser bundled by Vite and by esbuild (each a page
// that imports 'shard-mapper' by name), served from 127.0.0.1 with and without COOP/COEP,
// driven in headless Chromium through playwright-core (test/helpers/find-chromium.ts picks it).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type Browser, type ConsoleMessage } from 'playwright-core';
import { build as esbuild, type Metafile } from 'esbuild';
import { builtinModules } from 'node:module';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
// @ts-expect-error: a plain .mjs script without type declarations
import { buildExample, serveExample } from '../examples/browser/server.mjs';
import { findChromium } from './helpers/find-chromium.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const example = join(root, 'examples/browser');
// The flags this machine needs: no sandbox as root, and no background connections that the
// closed network would refuse. playwright gives every launch a fresh, empty profile.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
  '--no-first-run', '--disable-component-update', '--disable-sync',
];

const nodeBuiltin = (id: string) => id.startsWith('node:') || builtinModules.includes(id.split('/')[0]!);

const work = mkdtempSync(join(tmpdir(), 'shard-mapper-browser-'));
const viteOut = join(work, 'vite');
const esbuildOut = join(work, 'esbuild');
const viteRequested: string[] = [];
let esbuildMeta: Metafile;
let browser: Browser;
let viteServer: Server;
let esbuildServer: Server;

const urlOf = (server: Server, path: string) => `http://127.0.0.1:${(server.address() as AddressInfo).port}${path}`;

interface PageRun {
  result: Record<string, any>;
  console: { type: string; text: string }[];
  errors: string[];
  failedRequests: string[];
}

async function runPage(url: string): Promise<PageRun> {
  const page = await browser.newPage();
  const run: PageRun = { result: {}, console: [], errors: [], failedRequests: [] };
  page.on('console', (m: ConsoleMessage) => run.console.push({ type: m.type(), text: m.text() }));
  page.on('pageerror', (e) => run.errors.push(e.message));
  page.on('response', (r) => { if (r.status() >= 400) run.failedRequests.push(`${r.status()} ${r.url()}`); });
  try {
    await page.goto(url);
    try {
      await page.waitForFunction(() => (globalThis as { __shardMapperExample?: unknown }).__shardMapperExample, null, { timeout: 90_000 });
    } catch (error) {
      // Say how far the page got: its log lines.
      const progress = await page.evaluate(() => document.getElementById('log')?.textContent ?? '').catch(() => '');
      throw new Error(`${(error as Error).message}\npage log so far:\n${progress}\nconsole: ${JSON.stringify(run.console.slice(-10))}\nerrors: ${JSON.stringify(run.errors)}`);
    }
    run.result = await page.evaluate(() => (globalThis as { __shardMapperExample?: Record<string, unknown> }).__shardMapperExample!);
  } finally {
    await page.close();
  }
  return run;
}

beforeAll(async () => {
  const chromiumFound = await findChromium();
  console.info(`browser tests: ${chromiumFound.source} Chromium at ${chromiumFound.executablePath}`);
  // Vite: the example exactly as a user builds it, plus a plugin that sees every import the
  // page and its workers resolve.
  await buildExample(viteOut, {
    plugins: [{ name: 'record-imports', enforce: 'pre', resolveId(id: string) { viteRequested.push(id); return null; } }],
  });
  // esbuild for the browser platform: the page, the page's consumer worker, and the
  // package's own consumer worker next to the bundle (for options.consumer.module).
  const result = await esbuild({
    absWorkingDir: root,
    entryPoints: {
      main: join(example, 'main.js'),
      'consumer.worker': join(example, 'consumer.worker.js'),
      'producer.worker': join(example, 'producer.worker.js'),
      'dashboard.worker': join(example, 'dashboard.worker.js'),
      'batch-consumer.worker': join(example, 'batch-consumer.worker.js'),
      'late-consumer.worker': join(example, 'late-consumer.worker.js'),
      'consumer-worker': 'shard-mapper/consumer-worker',
    },
    outdir: esbuildOut,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    metafile: true,
    logLevel: 'silent',
    // The repo's tsconfig maps "#platform" to the Node sources for typechecking; a user's
    // bundle never sees it (it is not published), so bundle as a user would.
    tsconfigRaw: {},
  });
  esbuildMeta = result.metafile;
  for (const file of ['index.html', 'consumer-module.js']) copyFileSync(join(example, file), join(esbuildOut, file));

  browser = await chromium.launch({ executablePath: chromiumFound.executablePath, headless: true, args: CHROMIUM_ARGS });
  viteServer = await serveExample(viteOut, { port: 0 });
  esbuildServer = await serveExample(esbuildOut, { port: 0 });
});

afterAll(async () => {
  await browser?.close();
  viteServer?.close();
  esbuildServer?.close();
  rmSync(work, { recursive: true, force: true });
});

function expectNoNodeCode(dir: string): void {
  for (const name of readdirSync(dir, { recursive: true }) as string[]) {
    if (!name.endsWith('.js')) continue;
    const code = readFileSync(join(dir, name), 'utf8');
    const imports = [...code.matchAll(/\bfrom\s*["']([^"']+)["']|\bimport\s*\(\s*["']([^"']+)["']|\brequire\(\s*["']([^"']+)["']/g)]
      .map((m) => m[1] ?? m[2] ?? m[3]!);
    expect(imports.filter(nodeBuiltin), `${name} imports Node built-ins`).toEqual([]);
    expect(code.includes('__vite-browser-external'), `${name} holds Vite's stub of a Node built-in`).toBe(false);
  }
}

describe('browser bundles', () => {
  it('Vite builds the example page (which imports shard-mapper by name) and its workers without any Node built-in', () => {
    expect(viteRequested).toContain('shard-mapper');
    expect(viteRequested).toContain('shard-mapper/worker');
    expect(viteRequested).toContain('#platform');
    expect(viteRequested.filter(nodeBuiltin)).toEqual([]);
    const files = readdirSync(join(viteOut, 'assets'));
    // The page, the page's worker, and the package's own consumer worker bundled out of the dependency.
    expect(files.some((f) => f.startsWith('consumer.worker-'))).toBe(true);
    expect(files.some((f) => f.startsWith('consumer-worker-'))).toBe(true);
    expect(files.filter((f) => f.endsWith('.wasm'))).toEqual([]); // inlined: no asset to find
    expectNoNodeCode(viteOut);
  });

  it('esbuild bundles the example for the browser platform without any Node built-in', () => {
    const inputs = Object.keys(esbuildMeta.inputs);
    expect(inputs.some((f) => f.endsWith('dist/platform-browser.js'))).toBe(true);
    expect(inputs.some((f) => f.endsWith('dist/spawn-browser.js'))).toBe(true);
    expect(inputs.filter((f) => /platform-node|spawn-node/.test(f) || nodeBuiltin(f))).toEqual([]);
    for (const output of Object.values(esbuildMeta.outputs)) {
      expect(output.imports.filter((i) => nodeBuiltin(i.path))).toEqual([]);
    }
    expectNoNodeCode(esbuildOut);
  });
});

describe.each([
  ['Vite build', () => viteServer],
  ['esbuild bundle', () => esbuildServer],
])('cross-origin isolated page (%s)', (_name, server) => {
  it('shares the memory with Web Workers that consume every event routed on the main thread, exactly once', async () => {
    const run = await runPage(urlOf(server(), '/'));
    expect(run.errors).toEqual([]);
    expect(run.failedRequests).toEqual([]); // (a worker's own script request is not the page's: the missing one below is not listed)
    const r = run.result;
    expect(r.missingWorker).toMatch(/consumer worker failed to start: the Web Worker options\.consumer\.worker returned did not load, or failed before it ran: a missing file \(404\)/);
    // a worker that awaited before serveConsumer missed the page's first init: it asks again
    // (create() used to wait for ever, silently)
    expect(r.lateServe).toMatchObject({ created: true, pushed: 500, delivered: 500, seen: 500 });
    expect(r.ok, r.error).toBe(true);
    expect(r.crossOriginIsolated).toBe(true);
    expect(r.sharedMemorySupported).toBe(true);
    expect(r.memoryKind).toBe('shared');
    // options.consumer.worker + serveConsumer: 20 000 events while a shard is added and one removed.
    expect(r.pushed).toBe(r.events);
    expect(r.delivered).toBe(r.pushed);
    // failProducer refusals count as drops; the page retried each, so nothing was lost.
    expect(r.drops).toEqual({ newest: 0, oldest: 0, sampled: 0, refused: r.retries, moving: 0 });
    expect(r.unrouted).toBe(0);
    expect(r.consumed.count).toBe(r.pushed);
    expect(r.consumed.sum).toBe(r.expectedSum); // every event once: none lost, none twice
    expect(r.consumed.bad).toBe(0);
    expect(r.consumed.shards).toEqual([0, 1, 2]);
    expect(r.added).toBe(2);
    expect(r.lifecycle).toEqual([
      'shardProvisioned', 'shardProvisioned', 'shardActivated', 'shardActivated',
      'shardProvisioned', 'shardActivated', 'shardDraining', 'shardStopped', 'shardRemoved',
    ]);
    // A producer Web Worker (ShardProducer.attach(manager.producerHandle())) and the page push together.
    expect(r.producer.inWorker).toBe(r.producer.events / 2);
    expect(r.producer.pushed).toBe(r.producer.events);
    expect(r.producer.delivered).toBe(r.producer.events);
    expect(r.producer.consumed.count).toBe(r.producer.events);
    expect(r.producer.consumed.sum).toBe(r.producer.expectedSum);
    // options.consumer.module: the package's own worker loads the module by URL.
    expect(r.module.pushed).toBe(r.module.events);
    expect(r.module.delivered).toBe(r.module.pushed);
    expect(r.module.consumed.count).toBe(r.module.pushed);
    expect(r.module.consumed.sum).toBe(r.module.expectedSum);
    // A consumer Web Worker terminated from the page (no exit event) is replaced through its
    // heartbeat; its shard is consumed again and nothing is lost (at least once: a batch it
    // reported before dying may come again).
    expect(r.replaced.events).toEqual(['consumerStalled', 'consumerRestarted']);
    expect(r.replaced.workersStarted).toBe(2);
    expect(r.replaced.pushed).toBe(r.replaced.events4);
    expect(r.replaced.delivered).toBe(r.replaced.events4);
    expect(r.replaced.inFlight).toBe(0);
    expect(r.replaced.consumed.count).toBeGreaterThanOrEqual(r.replaced.events4);
    expect(r.replaced.consumed.bad).toBe(0);
    // A consumer Web Worker terminated while its shard was idle (nothing to replace it for):
    // close() still settles, once the silent worker was ended after stallMs (300 ms here).
    expect(r.idleDeath).toMatchObject({ close: 'resolved', delivered: 100 });
    expect(r.idleDeath.closeMs).toBeGreaterThanOrEqual(290);
    // A batch consumer worker (serveConsumer(fn, { batch: true })) through a shard added, one
    // removed and a consumer worker killed: nothing lost, in order, a repeat only from the
    // batch the killed worker held (handed out again), and some batches wrapped the ring.
    expect(r.batch.pushed).toBe(r.batch.events);
    expect(r.batch.delivered).toBe(r.batch.events);
    expect(r.batch.missing).toBe(0);
    expect(r.batch.outOfOrder).toBe(0);
    expect(r.batch.bad).toBe(0);
    expect(r.batch.restarts).toBe(1);
    // The kill hit a batch in flight: the worker was holding one (unacknowledged), and its
    // replacement got it again (rewound) and held it too before it was released.
    expect(r.batch.killedHolding).toBe(true);
    expect(r.batch.holders).toBe(2);
    expect(r.batch.rewound).toBeGreaterThan(0);
    expect(r.batch.repeated).toBeLessThanOrEqual(r.batch.rewound);
    expect(r.batch.seen).toBe(r.batch.events + r.batch.repeated);
    expect(r.batch.wrapped).toBeGreaterThan(0);
    // dropOldest under a batch consumer that cannot keep up: evictions happened, what was
    // delivered arrived once and in order, and delivered + evicted = accepted.
    const d = r.batch.dropOldest;
    expect(d.evicted).toBeGreaterThan(0);
    expect(d.pushed).toBe(d.accepted);
    expect(d.delivered + d.evicted).toBe(d.accepted);
    expect(d.seen).toBe(d.delivered);
    expect(d.repeated).toBe(0);
    expect(d.outOfOrder).toBe(0);
    expect(d.bad).toBe(0);
    // Byte rings in Chromium: mixed sizes (10 B to 2 KiB) through 16 KiB payload areas while a
    // shard is added and one removed: all delivered once, in order, every byte intact; the
    // page waited on rings full by bytes (512 records would have held every event in flight).
    const b = r.bytes;
    expect(b.ringBufferBytes).toBe(16 * 1024);
    expect(b.pushed).toBe(b.events);
    expect(b.delivered).toBe(b.events);
    expect(b.seen).toBe(b.events);
    expect(b.missing).toBe(0);
    expect(b.repeated).toBe(0);
    expect(b.outOfOrder).toBe(0);
    expect(b.bad).toBe(0);
    expect(b.retries).toBeGreaterThan(0);
    // No fallback here, so no warning.
    expect(run.console.filter((m) => /fell back/.test(m.text))).toEqual([]);
    expectStreams(r.streams);
  }, 120_000); // the page runs many sections; on a loaded machine it may need more than the default 60 s
});

describe('page without COOP/COEP (Vite build)', () => {
  it('falls back to one thread, still routes and scales under an injected clock, and warns exactly once', async () => {
    const run = await runPage(urlOf(viteServer, '/fallback/'));
    expect(run.errors).toEqual([]);
    expect(run.failedRequests).toEqual([]);
    const r = run.result;
    expect(r.ok, r.error).toBe(true);
    expect(r.crossOriginIsolated).toBe(false);
    expect(r.sharedArrayBuffer).toBe('undefined');
    expect(r.sharedMemorySupported).toBe(false);
    expect(r.memoryKind).toBe('single');
    expect(r.consumerRefused).toMatch(/needs shared memory \(SharedArrayBuffer\), which this page does not have: serve it with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp/);
    expect(r.mapperActive).toBe(2); // a second instance (a ShardMapper) works too...
    const warnings = run.console.filter((m) => /fell back/.test(m.text));
    expect(warnings).toHaveLength(1); // ...and does not warn again
    expect(warnings[0]!.type).toBe('warning');
    expect(warnings[0]!.text).toMatch(/single-thread/);
    expect(warnings[0]!.text).toMatch(/Cross-Origin-Opener-Policy: same-origin/);
    // Scaled up while overloaded, then back down to minShards once idle.
    expect(r.decisions[0]).toBe('scaleUp(1)');
    expect(r.decisions.some((d: string) => d.startsWith('scaleDown'))).toBe(true);
    expect(r.scaledUpTo).toBeGreaterThanOrEqual(3);
    expect(r.activeAtEnd).toBe(1);
    expect(r.totalAtEnd).toBe(1);
    expect(r.routedAfter).toBe(true);
    expect(r.pushed).toBe(r.countedPushed);
    expect(r.delivered).toBe(r.pushed);
    expect(r.polled).toBe(r.pushed);
    expect(r.dropped).toBeGreaterThan(0); // dropNewest while every ring was full
    expect(run.console.filter((m) => m.type === 'error')).toEqual([]);
    expectStreams(r.streams);
  });
});

/** manager.writableStream() and manager.batches() in the page (main.js runStreams). */
function expectStreams(s: Record<string, any>): void {
  expect(s.received).toBe(s.events); // nothing lost through a 16-record ring
  expect(s.pushed).toBe(s.events);
  expect(s.inOrder).toBe(true);
  expect(s.refused).toBeGreaterThan(0); // the ring pushed back and the stream waited
  expect(s.nodeWritable).toMatch(/Node streams .* not available here; in a browser use manager.writableStream\(\)/);
}

describe('live view of the example page (Vite build)', () => {
  it.each([['cross-origin isolated', '/'], ['fallback', '/fallback/']])('%s: draws the events/s chart, a row per shard with its fill and share, and the scaling log', async (_name, path) => {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    try {
      await page.goto(urlOf(viteServer, path));
      // The live view starts once the self-check is done; wait for a few samples of it.
      await page.waitForFunction(() => Number(document.getElementById('tile-pushed')?.textContent?.replace(/,/g, '')) > 0, null, { timeout: 30_000 })
        .catch(async (error: Error) => {
          const progress = await page.evaluate(() => document.getElementById('log')?.textContent ?? '').catch(() => '');
          throw new Error(`${error.message}\npage log so far:\n${progress}`);
        });
      const view = await page.evaluate(() => {
        const canvas = document.getElementById('chart') as HTMLCanvasElement;
        const pixels = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data;
        let drawn = 0;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i]! > 0) drawn++;
        const rows = [...document.querySelectorAll('#shards tr')].map((tr) => ({
          state: tr.querySelector('.state')?.textContent, bars: tr.querySelectorAll('.bar').length,
          figures: [...tr.querySelectorAll('.num')].map((n) => n.textContent),
        }));
        return {
          visible: !(document.getElementById('live') as HTMLElement).hidden,
          chartSize: [canvas.width, canvas.height], drawn,
          legend: document.querySelector('.legend')?.textContent ?? '',
          rows, decisions: document.querySelectorAll('#decisions li').length,
          shards: document.getElementById('tile-shards')?.textContent,
        };
      });
      expect(errors).toEqual([]);
      expect(view.visible).toBe(true);
      expect(view.chartSize[0]).toBeGreaterThan(300);
      expect(view.drawn).toBeGreaterThan(1000); // axes, labels and at least the first samples
      expect(view.legend).toMatch(/pushed.*solid.*delivered.*dashed/s);
      expect(view.rows.length).toBeGreaterThanOrEqual(1);
      for (const row of view.rows) {
        expect(row.state).toMatch(/^(provisioning|active|draining|stopped)$/);
        expect(row.bars).toBe(2); // ring fill and share of traffic
        expect(row.figures.filter((f) => /^\d+%$/.test(f ?? ''))).toHaveLength(2);
      }
      expect(view.decisions).toBeGreaterThanOrEqual(1); // "none yet" or the decisions themselves
      expect(view.shards).toMatch(/^\d \/ 4$/);
    } finally {
      await page.close();
    }
  });
});
