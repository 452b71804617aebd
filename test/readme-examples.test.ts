// Every JavaScript block of the README runs. Each block is kept in examples/readme/ between
// `// #region readme` and `// #endregion readme` (the lines around it stand in for the
// application and check what the block did); this test fails when a README block and its file
// differ, then runs every file with Node against the built package (dist/, through the
// package name), each bounded by a timeout. The Redis block runs against a redis-server
// started here on 127.0.0.1 (skipped loudly without one, like the other Redis suites).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RedisTestServer, redisAvailable } from './helpers/redis-server.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const dir = join(root, 'examples/readme');
const RUN_TIMEOUT_MS = 90_000;

/** The README's fenced blocks: [language, text]. */
function fencedBlocks(markdown: string): [string, string][] {
  return [...markdown.matchAll(/^```(\w*)\n([\s\S]*?)^```/gm)].map((m) => [m[1]!, m[2]!]);
}

/** The text between the region markers of an examples/readme file (undefined: no region). */
function region(text: string): string | undefined {
  const m = /^\/\/ #region readme\n([\s\S]*?)^\/\/ #endregion readme$/m.exec(text);
  return m?.[1];
}

const readme = readFileSync(join(root, 'README.md'), 'utf8');
const blocks = fencedBlocks(readme);
const jsBlocks = blocks.filter(([lang]) => lang === 'js').map(([, text]) => text);
const files = readdirSync(dir).filter((f) => /\.(mjs|js)$/.test(f)).sort();
const regions = new Map(files.flatMap((f) => {
  const r = region(readFileSync(join(dir, f), 'utf8'));
  return r === undefined ? [] : [[f, r] as const];
}));

/** What the test runs; the worker modules (consumers, the producer thread) run inside these. */
const RUNS = ['mapper.mjs', 'manager.mjs', 'batch-consumer.run.mjs', 'producer-thread.run.mjs', 'streams.mjs', 'main.js', 'prometheus.mjs'];
const REDIS_RUNS = ['redis.mjs'];

function runExample(file: string, env: Record<string, string> = {}): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(dir, file)], { cwd: root, timeout: RUN_TIMEOUT_MS, env: { ...process.env, ...env } }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
      resolve({ code, output: `${stdout}\n${stderr}${error?.killed ? `\n(killed after ${RUN_TIMEOUT_MS} ms)` : ''}` });
    });
  });
}

describe('README code blocks and examples/readme/ are the same text', () => {
  it('the README\'s fenced blocks are JavaScript, shell commands or plain text (the JavaScript ones are checked)', () => {
    expect(jsBlocks.length).toBeGreaterThanOrEqual(10);
    expect(blocks.filter(([lang]) => !['js', 'sh', ''].includes(lang)).map(([lang]) => lang)).toEqual([]);
  });

  it('every README JavaScript block is the region of one examples/readme file', () => {
    const texts = [...regions.values()];
    for (const block of jsBlocks) {
      expect(texts.filter((t) => t === block).length, `this README block has no identical file region in examples/readme/ (edit both together):\n${block}`).toBe(1);
    }
  });

  it('every examples/readme region is a block of the README', () => {
    for (const [file, text] of regions) expect(jsBlocks, `examples/readme/${file}: its region is not (or no longer) a README block`).toContain(text);
  });

  it('every file with a region is run, directly or by a file the test runs', () => {
    const runners = [...RUNS, ...REDIS_RUNS].map((f) => readFileSync(join(dir, f), 'utf8')).join('\n');
    for (const file of regions.keys()) {
      expect([...RUNS, ...REDIS_RUNS].includes(file) || runners.includes(`./${file}`), `examples/readme/${file} is never run`).toBe(true);
    }
  });
});

describe('README code blocks run', () => {
  it.each(RUNS)('examples/readme/%s', async (file) => {
    const { code, output } = await runExample(file);
    expect(code, output).toBe(0);
    expect(output).toMatch(/: ok\b/); // the checks after the README's code ran to the end
  }, RUN_TIMEOUT_MS + 10_000);
});

const available = redisAvailable();
describe.skipIf(!available)('README code blocks run against Redis (a redis-server on 127.0.0.1)', () => {
  let server: RedisTestServer;
  beforeAll(async () => { server = await RedisTestServer.start(); });
  afterAll(async () => { await server?.dispose(); });

  it.each(REDIS_RUNS)('examples/readme/%s', async (file) => {
    const { code, output } = await runExample(file, { REDIS_URL: server.url });
    expect(code, output).toBe(0);
    expect(output).toMatch(/: ok\b/);
  }, RUN_TIMEOUT_MS + 10_000);
});
