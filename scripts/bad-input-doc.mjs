// Writes docs/bad-input.md from the cases of test/bad-input.test.ts: runs that file's doc test
// with BAD_INPUT_DOC=write, which writes the file instead of comparing it (the cases are
// TypeScript and run against dist/, so vitest is what can load them).
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const r = spawnSync(process.execPath, [join(root, 'node_modules', 'vitest', 'vitest.mjs'), 'run', 'test/bad-input.test.ts', '-t', 'docs/bad-input.md'], {
  cwd: root, stdio: 'inherit', env: { ...process.env, BAD_INPUT_DOC: 'write' },
});
if (r.error) throw r.error;
if (r.status === 0) console.log('docs/bad-input.md written');
process.exit(r.status ?? 1);
