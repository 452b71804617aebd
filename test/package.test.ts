// The published shape of the package: what `npm pack` ships, types for every export,
// publint and arethetypeswrong clean. Runs against dist/ (npm test builds first).
import { describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = fileURLToPath(new URL('..', import.meta.url));
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/** Subpaths a user imports (consumer-worker is the consumer thread's script: see below). */
const IMPORTABLE = ['.', './worker', './prometheus', './redis'];

describe('npm pack', () => {
  const packed = JSON.parse(execFileSync(npm, ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
  const files: string[] = packed[0].files.map((f: { path: string }) => f.path);

  it('ships the built JavaScript, its declarations and the inlined WebAssembly', () => {
    for (const name of ['index', 'worker', 'prometheus', 'consumer-worker', 'consumer-runtime', 'wasm', 'wasm-bytes.generated',
      'platform-browser', 'platform-node', 'spawn-browser', 'spawn-node', 'manager', 'mapper']) {
      expect(files).toContain(`dist/${name}.js`);
      expect(files).toContain(`dist/${name}.d.ts`);
    }
    expect(files).toContain('package.json');
    expect(files).toContain('README.md');
    // Every file an export or import condition names is in the tarball.
    const targets = [
      ...Object.values(pkg.exports as Record<string, string | Record<string, string>>),
      ...Object.values(pkg.imports as Record<string, Record<string, string>>),
    ].flatMap((t) => (typeof t === 'string' ? [t] : Object.values(t)));
    for (const target of targets) expect(files).toContain(target.replace(/^\.\//, ''));
  });

  it('leaves out tests, sources, the AssemblyScript, benchmarks, examples and build scripts', () => {
    const stray = files.filter((f) => /^(test|src|assembly|bench|examples|scripts|build|docs\/api|node_modules)\//.test(f)
      || (f.endsWith('.ts') && !f.endsWith('.d.ts')) || f.endsWith('.tgz'));
    expect(stray).toEqual([]);
    // dist/, and the reading the README links to (docs/*.md: npm shows only the README)
    const reading = ['package.json', 'README.md', 'BENCHMARKS.md', 'CHANGELOG.md', 'LICENSE'];
    expect(files.filter((f) => !f.startsWith('dist/') && !reading.includes(f) && !/^docs\/[^/]+\.md$/.test(f))).toEqual([]);
    expect(files).toContain('docs/CONTRACT.md');
  });

  it('ships source maps that carry their sources (src/ is not shipped) and no declaration maps pointing at it', () => {
    const maps = files.filter((f) => f.endsWith('.js.map'));
    expect(maps.length).toBeGreaterThan(5);
    for (const map of maps) {
      const json = JSON.parse(readFileSync(join(root, map), 'utf8'));
      expect(json.sourcesContent?.length, `${map} has no sourcesContent`).toBe(json.sources.length);
    }
    expect(files.filter((f) => f.endsWith('.d.ts.map'))).toEqual([]);
  });

  it('carries both WebAssembly modules inlined in dist/wasm-bytes.generated.js (no .wasm file to locate)', async () => {
    expect(files.filter((f) => f.endsWith('.wasm'))).toEqual([]);
    const bytes = await import(join(root, 'dist/wasm-bytes.generated.js'));
    for (const name of ['WASM_SHARED_BASE64', 'WASM_SINGLE_BASE64']) {
      const wasm = Buffer.from(bytes[name], 'base64');
      expect(wasm.subarray(0, 4)).toEqual(Buffer.from([0, 0x61, 0x73, 0x6d])); // \0asm
      expect(WebAssembly.validate(wasm)).toBe(true);
    }
  });
});

describe('types', () => {
  // Type-check a virtual file inside the package (so 'shard-mapper' resolves to itself, as it
  // does for a user) that imports every subpath, with the user's view: dist/*.d.ts.
  const file = join(root, 'test', '__types_check__.ts');
  const source = IMPORTABLE.map((sub, i) => `import * as m${i} from '${sub === '.' ? 'shard-mapper' : `shard-mapper/${sub.slice(2)}`}';\nexport { m${i} };`).join('\n');
  const options: ts.CompilerOptions = {
    module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022,
    lib: ['lib.es2022.d.ts', 'lib.dom.d.ts'], types: ['node'], strict: true, noEmit: true, skipLibCheck: false,
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, lang, ...rest) => (name === file ? ts.createSourceFile(name, source, lang) : getSourceFile.call(host, name, lang, ...rest));
  host.fileExists = (name) => name === file || fileExists.call(host, name);
  host.readFile = (name) => (name === file ? source : readFile.call(host, name));
  const program = ts.createProgram([file], options, host);
  const checker = program.getTypeChecker();

  it('dist declarations type-check for a consumer (skipLibCheck off)', () => {
    const diagnostics = ts.getPreEmitDiagnostics(program)
      .filter((d) => !d.file || d.file.fileName === file || d.file.fileName.startsWith(join(root, 'dist')));
    expect(diagnostics.map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'))).toEqual([]);
  });

  it.each(IMPORTABLE)('every runtime export of %s has a declaration, resolved through the "types" condition', async (sub) => {
    const spec = sub === '.' ? 'shard-mapper' : `shard-mapper/${sub.slice(2)}`;
    const runtime = Object.keys(await import(spec)).sort();
    expect(runtime.length).toBeGreaterThan(0);
    const resolved = ts.resolveModuleName(spec, file, options, host).resolvedModule;
    expect(resolved?.resolvedFileName).toBe(join(root, pkg.exports[sub].types));
    const moduleSymbol = checker.getSymbolAtLocation(program.getSourceFile(resolved!.resolvedFileName)!)!;
    const declared = checker.getExportsOfModule(moduleSymbol).map((s) => s.name);
    expect(runtime.filter((name) => !declared.includes(name))).toEqual([]);
  });

  it('leaves out what is marked @internal: ShardMapper\'s package-only methods are in dist/*.js, not in the declarations', () => {
    const internal = ['slotOf', 'leastLoadedIds', 'stopDrained', 'discardProvisioning'];
    const mapperJs = readFileSync(join(root, 'dist/mapper.js'), 'utf8');
    for (const name of internal) expect(mapperJs, `dist/mapper.js defines ${name}`).toMatch(new RegExp(`\\n    ${name}\\(`));
    const resolved = ts.resolveModuleName('shard-mapper', file, options, host).resolvedModule!;
    const moduleSymbol = checker.getSymbolAtLocation(program.getSourceFile(resolved.resolvedFileName)!)!;
    const mapperClass = checker.getExportsOfModule(moduleSymbol).find((s) => s.name === 'ShardMapper')!;
    const members = checker.getPropertiesOfType(checker.getDeclaredTypeOfSymbol(checker.getAliasedSymbol(mapperClass))).map((s) => s.name);
    expect(members).toContain('selectShard');
    expect(members.filter((name) => internal.includes(name))).toEqual([]);
    // No shipped declaration names them (nor the manager's wiring), or keeps an @internal tag.
    const declarations = (readdirSync(join(root, 'dist'), { recursive: true }) as string[]).filter((f) => f.endsWith('.d.ts'));
    expect(declarations.length).toBeGreaterThan(10);
    const named = declarations.filter((f) => /\b(slotOf|leastLoadedIds|stopDrained|discardProvisioning|MapperWiring|WIRING|candidateIndexes)\b|@internal/
      .test(readFileSync(join(root, 'dist', f), 'utf8')));
    expect(named).toEqual([]);
  });

  it('the root declares every name of the contract (docs/CONTRACT.md §1), values and types', () => {
    const resolved = ts.resolveModuleName('shard-mapper', file, options, host).resolvedModule!;
    const moduleSymbol = checker.getSymbolAtLocation(program.getSourceFile(resolved.resolvedFileName)!)!;
    const declared = checker.getExportsOfModule(moduleSymbol).map((s) => s.name);
    for (const name of ['ShardMapper', 'ShardMetricsCollector', 'ShardState', 'ScalingPolicy', 'ScalingError', 'ScalingDecision',
      'ShardMetrics', 'NO_SHARD', 'hashKey', 'ShardManager', 'BackpressureMode', 'BackpressureError', 'sharedMemorySupported']) {
      expect(declared).toContain(name);
    }
  });
});

describe('API reference', () => {
  it('npm run docs (TypeDoc) documents the three entry points', () => {
    const out = mkdtempSync(join(tmpdir(), 'shard-mapper-docs-'));
    try {
      const run = spawnSync(process.execPath, [join(root, 'node_modules/typedoc/bin/typedoc'), '--out', out, '--logLevel', 'Error'], { cwd: root, encoding: 'utf8', timeout: 180_000 });
      expect(run.status, `${run.stdout}\n${run.stderr}`).toBe(0);
      const index = readFileSync(join(out, 'index.html'), 'utf8');
      for (const name of ['index', 'worker', 'prometheus']) expect(index).toContain(name);
      const pages = (readdirSync(out, { recursive: true }) as string[]).join('\n');
      for (const name of ['ShardManager', 'ShardMapper', 'ScalingPolicy', 'serveConsumer', 'registerShardManagerMetrics']) expect(pages).toContain(name);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 180_000);
});

describe('CommonJS', () => {
  // The package is ESM; CommonJS code loads it with require() where Node can require ES
  // modules (20.19+, unflagged). That needs every entry point free of top-level await.
  it.skipIf(!(process.features as { require_module?: boolean }).require_module)(
    'require() loads every entry point from a .cjs file (Node >= 20.19)',
    () => {
      const dir = mkdtempSync(join(tmpdir(), 'shard-mapper-cjs-'));
      try {
        mkdirSync(join(dir, 'node_modules'));
        symlinkSync(root, join(dir, 'node_modules', 'shard-mapper'), 'dir');
        const lines = IMPORTABLE.map((sub) => {
          const id = sub === '.' ? 'shard-mapper' : `shard-mapper/${sub.slice(2)}`;
          return `out[${JSON.stringify(id)}] = Object.keys(require(${JSON.stringify(id)})).length;`;
        });
        writeFileSync(join(dir, 'load.cjs'), `const out = {};\n${lines.join('\n')}\nconsole.log(JSON.stringify(out));\n`);
        const run = spawnSync(process.execPath, [join(dir, 'load.cjs')], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
        expect(run.status, run.stderr).toBe(0);
        const counts: Record<string, number> = JSON.parse(run.stdout);
        expect(Object.keys(counts)).toHaveLength(IMPORTABLE.length);
        for (const [id, n] of Object.entries(counts)) expect(n, id).toBeGreaterThan(0);
        expect(counts['shard-mapper']).toBeGreaterThan(10);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
    60_000,
  );
});

describe('package linters', () => {
  it('publint --strict and arethetypeswrong (attw --pack, ESM-only profile) report no problem', () => {
    const run = spawnSync(npm, ['run', '--silent', 'lint:package'], { cwd: root, encoding: 'utf8', timeout: 180_000 });
    const output = `${run.stdout}\n${run.stderr}`;
    expect(run.status, output).toBe(0);
    expect(output).toMatch(/All good!/); // publint
    // attw marks problems with emoji; node10 and CJS-require lines are shown but ignored by
    // the ESM-only profile (the package is ESM, Node >= 20).
    const counted = output.split('\n').filter((line) => !line.includes('(ignored'));
    expect(counted.filter((line) => /💀|❌|🥴|🐛|🎭|❗️|⚠️/.test(line))).toEqual([]);
  }, 180_000);
});

describe('shard-mapper/consumer-worker', () => {
  it('imported on the main thread, the import fails saying what the entry is for (it used to end the process with an unhandled rejection)', async () => {
    await expect(import('shard-mapper/consumer-worker')).rejects.toThrow(/consumer-worker is the consumer thread's own script .* import 'shard-mapper'/);
  });
});
