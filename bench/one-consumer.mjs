#!/usr/bin/env node
// One producer (this thread) → one consumer thread, pushFixed of 16-byte records in batches of
// 256, failProducer (a full ring is retried): the rate from the first push to the last record
// delivered, in a process of its own (nothing else alive in it). For profiles
// (`node --cpu-prof bench/one-consumer.mjs`: one profile per thread) and for before/after runs
// of two builds, alternated by the caller:
//   node bench/one-consumer.mjs [--array] [--events 20000000] [--package /path/to/other-build]
// --array: the consumer takes Uint8Array[] (bench/workers/sm-consumer.mjs) instead of a
// RecordBatch (sm-batch-consumer.mjs).
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const args = process.argv.slice(2);
const opt = (name, fallback) => { const i = args.indexOf(`--${name}`); return i < 0 ? fallback : args[i + 1]; };
const array = args.includes('--array');
const N = Number(opt('events', 20_000_000));
const dir = opt('package', undefined);
const { ShardManager } = await import(dir ? pathToFileURL(join(resolve(dir), 'dist/index.js')).href : new URL('../dist/index.js', import.meta.url).href);
const SIZE = 16;
const B = 256;
const m = await ShardManager.create({
  initialShards: 1, ringBufferCapacity: 1 << 16, maxPayloadBytes: SIZE, backpressure: { kind: 'failProducer' },
  policy: { autoScale: false, maxShards: 1 },
  consumer: { module: new URL(`./workers/${array ? 'sm-consumer.mjs' : 'sm-batch-consumer.mjs'}`, import.meta.url), threads: 1, batch: !array },
});
const hashes = new Uint32Array(B).map((_, i) => Math.imul(i + 1, 2654435761) >>> 0);
const block = new Uint8Array(B * SIZE).fill(7);
const t0 = performance.now();
let stalls = 0;
for (let i = 0; i < N; i += B) {
  let done = 0;
  while (done < B) {
    try { done += m.pushFixed(hashes.subarray(done), block.subarray(done * SIZE), SIZE); } catch (e) { if (typeof e?.accepted !== "number") throw e; done += e.accepted; stalls++; }
  }
}
while (m.stats().delivered < N) await new Promise((r) => setTimeout(r, 1));
const ms = performance.now() - t0;
console.log(`${dir ?? 'this checkout'} ${array ? 'Uint8Array[]' : 'batch'} consumer: ${(N / ms / 1000).toFixed(2)} M events/s, ${stalls} full-ring retries`);
await m.close();
