#!/usr/bin/env node
// Before/after of the per-event push on one thread, in one process: this checkout's dist/
// against another build of shard-mapper (a copy of an older dist/ with its package.json),
// interleaved round by round so load from other processes hits both alike.
//   node bench/compare-push.mjs /path/to/old-package   (the directory holding package.json + dist/)
//   node bench/compare-push.mjs                        (the fixed-record ring build of scenario 9)
// Each round pushes 4096 events into a 4-shard manager (rings of 4096 records, maxPayloadBytes
// = the payload size) and empties the rings untimed with poll(). Reports the 10th percentile
// and the median of the rounds, and the ratio before ÷ after.
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { loadFixedRing } from './fixed-ring-build.mjs';

let oldDir = process.argv[2];
if (!oldDir) {
  const baseline = await loadFixedRing();
  if (baseline.skipped) throw new Error(`${baseline.skipped} Name an older build instead: node bench/compare-push.mjs <directory holding its package.json + dist/>`);
  oldDir = baseline.dir;
}
const before = await import(pathToFileURL(join(resolve(oldDir), 'dist/index.js')).href);
const after = await import(new URL('../dist/index.js', import.meta.url).href);
const N = 4096;
const ROUNDS = Number(process.env.ROUNDS ?? 300);
const hashes = new Uint32Array(65536);
for (let i = 0; i < hashes.length; i++) hashes[i] = Math.imul(i + 1, 2654435761) >>> 0;

async function make(lib, size) {
  const m = await lib.ShardManager.create({
    initialShards: 4, ringBufferCapacity: N, maxPayloadBytes: size, backpressure: { kind: 'dropNewest' },
    policy: { maxShards: 4, autoScale: false },
  });
  const ids = m.mapper.activeShardIds();
  const payloads = Array.from({ length: 1024 }, (_, i) => new Uint8Array(size).fill(i & 255));
  // compiled separately for each build, so neither shares the other's inline caches
  const once = new Function('m', 'hashes', 'payloads', 'N',
    'return function once(off) { let ok = 0; for (let i = 0; i < N; i++) if (m.push(hashes[(off + i) & 65535], payloads[i & 1023])) ok++; return ok; }')(m, hashes, payloads, N);
  const drain = () => { for (const id of ids) while (m.poll(id, N).length > 0); };
  return { once, drain };
}

const pick = (a, p) => [...a].sort((x, y) => x - y)[Math.floor(p * (a.length - 1))];
for (const size of [16, 256]) {
  const impls = { before: await make(before, size), after: await make(after, size) };
  const times = { before: [], after: [] };
  for (let r = 0; r < ROUNDS; r++) {
    for (const k of ['before', 'after']) {
      const { once, drain } = impls[k];
      const t0 = performance.now();
      const ok = once(r * N);
      const dt = performance.now() - t0;
      if (ok !== N) throw new Error(`${k}: ${N - ok} pushes dropped`);
      drain();
      times[k].push((dt * 1e6) / N);
    }
  }
  const b = pick(times.before, 0.1), a = pick(times.after, 0.1);
  console.log(`push ${size} B per event (${ROUNDS} rounds of ${N}): before ${b.toFixed(1)} ns, after ${a.toFixed(1)} ns (10th percentile), before ÷ after ${(b / a).toFixed(2)}×; medians ${pick(times.before, 0.5).toFixed(1)} / ${pick(times.after, 0.5).toFixed(1)} ns`);
}
