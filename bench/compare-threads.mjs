#!/usr/bin/env node
// Before/after across threads, in one process: this checkout's dist/ against another build of
// shard-mapper (a directory holding its package.json + dist/), on scenario 4's shard-mapper
// rows (push and pushFixed into batch and Uint8Array[] consumer threads) beside ringbuf.js,
// the runs of every row interleaved round by round so load from other processes hits all alike.
//   node bench/compare-threads.mjs /path/to/old-package [--sizes 16,256] [--consumers 1,2] [--rounds 5] [--events 2000000]
// Prints, per configuration, each row's median rate and range (M events/s) and the ratios the
// goals of issue 20 name: batch ÷ Uint8Array[] consumer, pushFixed → batch ÷ ringbuf.js.
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { smPush, smPushFixed, ringbuf } from './s4-threads.mjs';
import { randomHashes } from '../shared/seeded-random.mjs';
import { medianOf as median } from './lib.mjs';

const args = process.argv.slice(2);
const oldDir = args[0];
if (!oldDir || oldDir.startsWith('--')) throw new Error('usage: node bench/compare-threads.mjs <old package dir> [--sizes 16,256] [--consumers 1,2] [--rounds 5] [--events 2000000]');
const opt = (name, fallback) => { const i = args.indexOf(`--${name}`); return i < 0 ? fallback : args[i + 1]; };
const list = (v) => String(v).split(',').map(Number);
const sizes = list(opt('sizes', '16,256'));
const consumerCounts = list(opt('consumers', '1,2'));
const rounds = Number(opt('rounds', 5));
const events = Number(opt('events', 2_000_000));

const before = await import(pathToFileURL(join(resolve(oldDir), 'dist/index.js')).href);
const after = await import(new URL('../dist/index.js', import.meta.url).href);
const builds = [['old', before], ['new', after]];

const hashes = randomHashes(1 << 16, 11);

for (const size of sizes) {
  const payloads = Array.from({ length: 1024 }, (_, i) => new Uint8Array(size).fill((i % 251) + 1));
  for (const consumers of consumerCounts) {
    const impls = [];
    for (const [tag, lib] of builds) {
      impls.push({ ...smPush(size, consumers, payloads, hashes, true, lib), id: `${tag} push→batch` });
      impls.push({ ...smPush(size, consumers, payloads, hashes, false, lib), id: `${tag} push→array` });
      impls.push({ ...smPushFixed(size, consumers, payloads, hashes, true, lib), id: `${tag} pushFixed→batch` });
      impls.push({ ...smPushFixed(size, consumers, payloads, hashes, false, lib), id: `${tag} pushFixed→array` });
    }
    impls.push({ ...ringbuf(size, consumers, payloads, hashes), id: 'ringbuf.js' });
    const live = [];
    for (const impl of impls) live.push(await impl.setup());
    for (const l of live) await l.once(100_000); // warm-up
    const rates = impls.map(() => []);
    for (let r = 0; r < rounds; r++) {
      for (let k = 0; k < impls.length; k++) {
        const m = await live[k].once(events);
        rates[k].push(m.events / m.ms / 1000); // M events/s
      }
    }
    for (const l of live) await l.teardown();
    const med = Object.fromEntries(impls.map((impl, k) => [impl.id, median(rates[k])]));
    console.log(`\n## ${size} B, ${consumers} consumer thread${consumers > 1 ? 's' : ''} (${events} events a run, ${rounds} interleaved rounds)\n`);
    console.log('| row | median M/s | range |\n| --- | ---: | ---: |');
    for (let k = 0; k < impls.length; k++) {
      console.log(`| ${impls[k].id} | ${med[impls[k].id].toFixed(2)} | ${Math.min(...rates[k]).toFixed(2)}–${Math.max(...rates[k]).toFixed(2)} |`);
    }
    for (const [tag] of builds) {
      const r = (a, b) => (med[`${tag} ${a}`] / med[b.startsWith('ringbuf') ? b : `${tag} ${b}`]).toFixed(2);
      console.log(`- ${tag}: batch ÷ array: push ${r('push→batch', 'push→array')}×, pushFixed ${r('pushFixed→batch', 'pushFixed→array')}×; ÷ ringbuf.js: push→batch ${r('push→batch', 'ringbuf.js')}×, pushFixed→batch ${r('pushFixed→batch', 'ringbuf.js')}×`);
    }
  }
}
