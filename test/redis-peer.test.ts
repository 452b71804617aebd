// ioredis is an optional peer: both majors in use today (5 and 6) must install beside the
// package without an npm ERESOLVE, and the one this run uses (.ci/run runs the Redis suites
// under each) must be inside the range. npm resolves peers with the semver package.
import { describe, expect, it } from 'vitest';
import { createRequire } from 'node:module';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import semver from 'semver';

const require = createRequire(import.meta.url);
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
const range: string = pkg.peerDependencies.ioredis;

describe('the ioredis peer range', () => {
  it('accepts ioredis 5 and 6 (not 4, not 7)', () => {
    for (const v of ['5.0.0', '5.11.1', '6.0.0', '6.1.0', '6.99.0']) expect(semver.satisfies(v, range), `${v} in ${range}`).toBe(true);
    for (const v of ['4.30.0', '7.0.0']) expect(semver.satisfies(v, range), `${v} in ${range}`).toBe(false);
  });

  it('accepts the ioredis installed for this run', () => {
    const installed: string = require('ioredis/package.json').version;
    console.log(`ioredis ${installed}`);
    expect(semver.satisfies(installed, range), `${installed} in ${range}`).toBe(true);
  });
});

describe('without ioredis installed', () => {
  it("importing 'shard-mapper/redis' works; create() and serveShardConsumers() say to install the peer", () => {
    // The built package (dist + package.json) in a temporary node_modules with no ioredis
    // anywhere up the tree (the temp dir is outside this checkout).
    const dir = mkdtempSync(join(tmpdir(), 'shard-mapper-no-ioredis-'));
    try {
      const pkgDir = join(dir, 'node_modules', 'shard-mapper');
      mkdirSync(pkgDir, { recursive: true });
      cpSync(new URL('../dist', import.meta.url), join(pkgDir, 'dist'), { recursive: true });
      cpSync(new URL('../package.json', import.meta.url), join(pkgDir, 'package.json'));
      writeFileSync(join(dir, 'probe.mjs'), [
        "import { createRequire } from 'node:module';",
        "try { createRequire(import.meta.url).resolve('ioredis'); console.log('ioredis is reachable'); process.exit(2); } catch {}",
        "const { RedisShardManager, serveShardConsumers } = await import('shard-mapper/redis');",
        "for (const start of [() => RedisShardManager.create({ redis: 'redis://127.0.0.1:1', namespace: 'x' }), () => serveShardConsumers({ redis: 'redis://127.0.0.1:1', namespace: 'x', consume() {} })]) {",
        "  try { await start(); console.log('started?'); } catch (e) { console.log(e.message + ' | cause: ' + e.cause?.code); }",
        "}",
      ].join('\n'));
      const r = spawnSync(process.execPath, ['probe.mjs'], { cwd: dir, encoding: 'utf8', timeout: 30_000 });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      const said = 'shard-mapper/redis needs the optional peer dependency ioredis (npm install ioredis) | cause: ERR_MODULE_NOT_FOUND';
      expect(r.stdout.trim().split('\n')).toEqual([said, said]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
