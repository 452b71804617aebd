// The fixed-record ring of scenario 9: this package as it was at commit fc0008f (the last
// commit before byte rings, where every shard ring was ringBufferCapacity fixed slots of
// 8 B + maxPayloadBytes). It is not kept in the tree: the first run builds it from git history
// into bench/.cache/ (git-ignored) with that commit's own build script and this checkout's
// node_modules (the commit's lock pins the same assemblyscript and typescript), then reuses it.
// Where the history is absent (a source tarball, a shallow clone) its rows are skipped, saying so.
//
// Checked when this replaced the vendored copy: the build gives the files that copy held byte
// for byte (they had only lost their trailing sourceMappingURL line).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const FIXED_RING_COMMIT = 'fc0008f2202db4cc15985198607bf738fb8f67c0';
const SHORT = FIXED_RING_COMMIT.slice(0, 7);
/** What the old build reads: its sources, build script and configs (nothing else of the commit). */
const BUILD_INPUTS = ['package.json', 'tsconfig.json', 'asconfig.json', 'assembly', 'scripts', 'src'];
const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Why this checkout cannot build the baseline, or undefined when it can. */
function missing(root) {
  const git = spawnSync('git', ['-C', root, 'cat-file', '-e', `${FIXED_RING_COMMIT}^{commit}`], { encoding: 'utf8' });
  if (git.error) return `git is not installed (${git.error.message})`;
  if (git.status !== 0) return `commit ${SHORT} is not in this checkout's git history (a source tarball or a shallow clone?)`;
  if (!existsSync(join(root, 'node_modules', '.bin', 'asc'))) return 'node_modules has no assemblyscript (run npm ci first)';
  return undefined;
}

/**
 * The fixed-record ring build, built on first use: `{ lib, dir }` (lib = its index.js module,
 * dir = the folder holding its package.json and dist/), or `{ skipped }`, a sentence saying
 * why it cannot be had here. `root` is the repository (this one unless a test says otherwise).
 */
export async function loadFixedRing({ root = REPO_ROOT, log = (line) => console.log(line) } = {}) {
  const dir = join(root, 'bench', '.cache', `fixed-ring-${SHORT}`);
  const done = join(dir, '.built');
  if (!existsSync(done)) {
    const why = missing(root);
    if (why !== undefined) {
      return { skipped: `SKIPPED: the fixed-record ring (the build of commit ${SHORT}) is built from git history, and ${why}.` };
    }
    log(`building the fixed-record ring baseline from commit ${SHORT} into ${join('bench', '.cache', `fixed-ring-${SHORT}`)} (once, ~15 s)`);
    build(root, dir);
  }
  const lib = await import(pathToFileURL(join(dir, 'dist', 'index.js')).href);
  return { lib, dir };
}

/** Build into a temporary sibling folder and rename it into place, so a run stopped halfway
 *  (or a second run at the same time) never finds a half-built baseline. */
function build(root, dir) {
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    const tar = execFileSync('git', ['-C', root, 'archive', '--format=tar', FIXED_RING_COMMIT, ...BUILD_INPUTS], { maxBuffer: 1 << 28 });
    execFileSync('tar', ['-x', '-C', tmp], { input: tar });
    // The old build script runs node_modules/.bin/{asc,tsc} below its own root.
    symlinkSync(join(root, 'node_modules'), join(tmp, 'node_modules'), 'junction');
    const r = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: tmp, encoding: 'utf8' });
    if (r.status !== 0) {
      throw new Error(`building the fixed-record ring (commit ${SHORT}) failed:\n${r.stdout}${r.stderr}${r.error ? r.error.message : ''}`);
    }
    writeFileSync(join(tmp, '.built'), `${FIXED_RING_COMMIT}\n`);
    if (!existsSync(join(dir, '.built'))) { // else another run finished first: keep its build
      rmSync(dir, { recursive: true, force: true });
      renameSync(tmp, dir);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
