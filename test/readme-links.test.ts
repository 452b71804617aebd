// The README (and the contract it points to) stand alone: every link is to a file in this
// repository that exists, every #anchor names a heading of its target, nothing points outside
// (no ../ escaping the repo, no URL), and tables have their header rows.
import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const DOCS = [
  'README.md', 'docs/CONTRACT.md', 'docs/architecture.md', 'docs/routing.md', 'docs/redis.md',
  'docs/observability.md', 'docs/bad-input.md',
  'examples/browser/README.md', 'CONTRIBUTING.md',
];

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2… for repeats. */
function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  let fenced = false;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const m = !fenced && /^#{1,6}\s+(.*)$/.exec(line);
    if (!m) continue;
    const base = m[1]!.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

/** [text](target) links outside code spans and fenced blocks. */
function links(markdown: string): string[] {
  const prose = markdown.replace(/```[\s\S]*?```/g, '').replace(/`[^`\n]*`/g, '');
  return [...prose.matchAll(/\[[^\]]*\]\(([^)\s]+)\)/g)].map((m) => m[1]!);
}

/** Every relative link of `doc` names a file of the repository that exists, and a heading it has. */
function expectRelativeLinksResolve(doc: string, found: string[]): void {
  for (const link of found) {
    const [path, anchor] = link.split('#') as [string, string | undefined];
    const target = path === '' ? join(root, doc) : join(root, dirname(doc), decodeURI(path));
    expect(relative(root, target).startsWith('..'), `${doc}: ${link} leaves the repository`).toBe(false);
    expect(existsSync(target), `${doc}: ${link} does not exist`).toBe(true);
    if (anchor !== undefined) {
      expect(statSync(target).isFile(), `${doc}: ${link} has an anchor but is a folder`).toBe(true);
      expect([...anchors(readFileSync(target, 'utf8'))], `${doc}: ${link}`).toContain(anchor);
    }
  }
}

// The benchmark pages may link the packages they measure (npm URLs); their own links must resolve.
const BENCHMARK_PAGES = ['BENCHMARKS.md', ...readdirSync(join(root, 'bench/results')).filter((f) => f.endsWith('.md')).map((f) => `bench/results/${f}`)];
describe.each(BENCHMARK_PAGES)('%s', (doc) => {
  it('links to files of this repository that exist, and to headings they have', () => {
    const found = links(readFileSync(join(root, doc), 'utf8')).filter((l) => !/^https:\/\/www\.npmjs\.com\/package\//.test(l));
    if (doc === 'BENCHMARKS.md') expect(found.length).toBeGreaterThan(10);
    for (const link of found) expect(link, `${doc} links outside the repository`).not.toMatch(/^[a-z][a-z0-9+.-]*:/i);
    expectRelativeLinksResolve(doc, found);
  });
});

describe.each(DOCS)('%s', (doc) => {
  const text = readFileSync(join(root, doc), 'utf8');

  it('links only to files of this repository that exist, and to headings they have', () => {
    const found = links(text);
    if (doc === 'README.md') expect(found.length).toBeGreaterThan(5); // the parser finds the README's links
    for (const link of found) expect(link, `${doc} links outside the repository`).not.toMatch(/^[a-z][a-z0-9+.-]*:/i);
    expectRelativeLinksResolve(doc, found);
  });

  it('names nothing outside the repository', () => {
    expect(text).not.toMatch(/\.\.\/shared|SPEC\.md|SPEC §/);
    expect(text).not.toMatch(/https?:\/\/(?!127\.0\.0\.1[:/])/); // the example's own server is fine
  });

  it('gives every table a header row (a |---| line right after its first row)', () => {
    const lines = text.replace(/```[\s\S]*?```/g, '').split('\n');
    for (let i = 0; i < lines.length; i++) {
      const startsTable = lines[i]!.startsWith('|') && !lines[i - 1]?.startsWith('|');
      if (startsTable) expect(lines[i + 1], `${doc}: the table at "${lines[i]!.slice(0, 60)}" has no header row`).toMatch(/^\|\s*:?-{3,}/);
    }
  });
});

describe('code cites docs/CONTRACT.md, not the SPEC (which is not in the repository)', () => {
  it('no source, test, benchmark, example or script names the SPEC', () => {
    const self = fileURLToPath(import.meta.url);
    const found: string[] = [];
    for (const dir of ['src', 'assembly', 'test', 'bench', 'examples', 'scripts', '.ci']) {
      if (!existsSync(join(root, dir))) continue;
      for (const name of readdirSync(join(root, dir), { recursive: true }) as string[]) {
        const path = join(root, dir, name);
        // generated or fetched: the fixed-record ring's build, recorded results, bundles
        if (/(^|[\\/])(node_modules|dist|\.cache|results)([\\/]|$)/.test(name) || path === self) continue;
        if (!/\.(ts|mts|mjs|js|html|sh)$|^run$/.test(name.split(/[\\/]/).pop()!) || !statSync(path).isFile()) continue;
        readFileSync(path, 'utf8').split('\n').forEach((line, i) => {
          if (/\bSPEC\b/.test(line)) found.push(`${relative(root, path)}:${i + 1}: ${line.trim().slice(0, 80)}`);
        });
      }
    }
    expect(found, 'cite the section of docs/CONTRACT.md instead (its §1-§7 are numbered as the SPEC\'s)').toEqual([]);
  });
});

describe('links that work from the npm tarball (npm shows the README, users open the shipped docs)', () => {
  // What `npm pack` ships. Only these folders may be linked without being shipped: they are the
  // repository's runnable material (the browser page, benchmark history, tests), not reading.
  const REPOSITORY_ONLY = /^(examples|bench|test)\//;
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const packed = JSON.parse(execFileSync(npm, ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
  const shipped = new Set<string>(packed[0].files.map((f: { path: string }) => f.path));
  const shippedDocs = [...shipped].filter((f) => f.endsWith('.md'));

  it('ships the README and every markdown file it links to', () => {
    expect(shippedDocs).toContain('README.md');
    const linked = links(readFileSync(join(root, 'README.md'), 'utf8'))
      .map((l) => l.split('#')[0]!).filter((p) => p.endsWith('.md'));
    expect(linked.length).toBeGreaterThan(5);
    for (const path of linked) expect([...shipped], `README.md links ${path}, which npm pack leaves out`).toContain(path);
  });

  it.each(shippedDocs)('%s links only to shipped files (or, by name, to the repository-only folders)', (doc) => {
    for (const link of links(readFileSync(join(root, doc), 'utf8'))) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(link) || link.startsWith('#')) continue; // URLs are checked above, anchors too
      const target = relative(root, join(root, dirname(doc), decodeURI(link.split('#')[0]!))).split('\\').join('/');
      if (REPOSITORY_ONLY.test(target)) continue;
      expect(shipped.has(target), `${doc}: ${link} resolves to ${target}, which npm pack leaves out ("files" in package.json)`).toBe(true);
    }
  });
});

describe('numbers live in BENCHMARKS.md', () => {
  it('the README states no measured speed, ratio or share (it links BENCHMARKS.md instead)', () => {
    const prose = readFileSync(join(root, 'README.md'), 'utf8').replace(/```[\s\S]*?```/g, '');
    const measured = /\d[\d.,]*\s*(×|[kMG]?\s?(events?|ops|hashes)?\/s\b|ns\b|GB\/s)|\b(tens|hundreds|thousands|\d[\d.,]*) (of )?times\b|\d\s*% (faster|slower|of the)/gi;
    expect(prose.match(measured) ?? []).toEqual([]);
    expect(prose).toMatch(/\]\(BENCHMARKS\.md[#)]/);
  });
});
