#!/usr/bin/env node
// Before/after of the consumer's side of a ring on one thread, in one process: this
// checkout's dist/ against another build (a directory holding its package.json + dist/),
// interleaved round by round. Each round fills a 1-shard ring with pushFixed (untimed), then
// times claiming and acknowledging it in batches of 256 (ringClaim + ringAck, what a consumer
// thread does around its function), and separately the pushFixed fill. One thread, so the
// numbers are the instructions' cost without the cross-thread cache traffic; scheduling noise
// from other processes hits both builds alike.
//   node bench/compare-ack.mjs /path/to/old-package [--rounds 200]
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const args = process.argv.slice(2);
const oldDir = args[0];
if (!oldDir || oldDir.startsWith('--')) throw new Error('usage: node bench/compare-ack.mjs <old package dir> [--rounds 200]');
const i = args.indexOf('--rounds');
const ROUNDS = i < 0 ? 200 : Number(args[i + 1]);
const CAP = 1 << 14;
const BATCH = 256;
const SIZE = 16;

async function make(dir) {
  const url = (f) => pathToFileURL(join(dir, 'dist', f)).href;
  const lib = await import(url('index.js'));
  const { SharedCore } = await import(url('core.js'));
  const { CLAIM_START } = await import(url('layout.generated.js'));
  const m = await lib.ShardManager.create({
    initialShards: 1, ringBufferCapacity: CAP, maxPayloadBytes: SIZE, backpressure: { kind: 'failProducer' },
    policy: { autoScale: false, maxShards: 1 },
  });
  const core = SharedCore.attachSync(m.producerHandle().core);
  const slot = m.mapper.slotOf(0);
  const hashes = new Uint32Array(BATCH).map((_, k) => Math.imul(k + 1, 2654435761) >>> 0);
  const block = new Uint8Array(BATCH * SIZE).fill(7);
  // compiled separately for each build, so neither shares the other's inline caches
  const fill = new Function('m', 'hashes', 'block', 'CAP', 'BATCH', 'SIZE',
    'return function fill() { for (let n = 0; n < CAP; n += BATCH) m.pushFixed(hashes, block, SIZE); }')(m, hashes, block, CAP, BATCH, SIZE);
  const drain = new Function('abi', 'core', 'slot', 'CLAIM_START', 'BATCH',
    'return function drain() { let total = 0, n; while ((n = abi.ringClaim(slot, BATCH, core.result)) > 0) { abi.ringAck(slot, core.u32[(core.result + CLAIM_START) >>> 2], n, n); total += n; } return total; }')(core.abi, core, slot, CLAIM_START, BATCH);
  return { m, fill, drain };
}

const builds = [['old', await make(resolve(oldDir))], ['new', await make(resolve(new URL('..', import.meta.url).pathname))]];
const times = Object.fromEntries(builds.map(([tag]) => [tag, { fill: [], drain: [] }]));
for (let r = 0; r < ROUNDS + 10; r++) {
  for (const [tag, b] of builds) {
    const t0 = performance.now();
    b.fill();
    const t1 = performance.now();
    const n = b.drain();
    const t2 = performance.now();
    if (n !== CAP) throw new Error(`${tag}: drained ${n} of ${CAP}`);
    if (r >= 10) { times[tag].fill.push(((t1 - t0) * 1e6) / CAP); times[tag].drain.push(((t2 - t1) * 1e6) / CAP); }
  }
}
const q = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };
console.log(`| ns per record (${ROUNDS} interleaved rounds of ${CAP}) | old p10 / median | new p10 / median | old ÷ new (median) |`);
console.log('| --- | ---: | ---: | ---: |');
for (const what of ['fill', 'drain']) {
  const o = times.old[what];
  const n = times.new[what];
  const label = what === 'fill' ? `pushFixed(${BATCH}) of ${SIZE} B, per record` : `claim + acknowledge in batches of ${BATCH}, per record`;
  console.log(`| ${label} | ${q(o, 0.1).toFixed(2)} / ${q(o, 0.5).toFixed(2)} | ${q(n, 0.1).toFixed(2)} / ${q(n, 0.5).toFixed(2)} | ${(q(o, 0.5) / q(n, 0.5)).toFixed(2)}× |`);
}
for (const [, b] of builds) await b.m.close();
