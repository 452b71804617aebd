// ioredis is an optional peer: both majors in use today (5 and 6) must install beside the
// package without an npm ERESOLVE, and the one this run uses (.ci/run runs the Redis suites
// under each) must be inside the range. npm resolves peers with the semver package.
import { describe, expect, it } from 'vitest';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
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
