// Scenario 1 — pick a shard for one hash, and for one string key (hashing included), plus the
// other per-event hot-path call of the mapper: the collector's recordPush.
import HashRing from 'hashring';
import ConsistentHash from 'consistent-hash';
import xxhashWasm from 'xxhash-wasm';
import { ShardMapper, hashKey } from 'shard-mapper';
import { PlainWeightedMapper, jumpHash } from './plain-js-baselines.mjs';
import { randomHashes, rng } from '../shared/seeded-random.mjs';
import { measureOps, withRatios, row, goal, consume, check } from './lib.mjs';

export const id = 's1';
export const title = '1. Pick a shard for one hash / one key';

const SHARDS = 8;
const N = 1 << 16; // distinct inputs, cycled: more than hashring's 5 000-entry LRU cache
const MASK = N - 1;
const TWO_POW_MINUS_32 = 2 ** -32;

export async function run(profile) {
  const mapper = await ShardMapper.create(SHARDS, 1024, { maxShards: SHARDS, autoScale: false });
  const plain = new PlainWeightedMapper(SHARDS);
  const hashes = randomHashes(N, 1);
  const hashStrings = Array.from(hashes, (h) => String(h));
  const servers = Array.from({ length: SHARDS }, (_, i) => `shard-${i}`);
  const ring = new HashRing(servers);
  const keyRing = new HashRing(servers);
  const hotRing = new HashRing(servers);
  const ch = new ConsistentHash();
  for (let i = 0; i < SHARDS; i++) ch.add(i);
  const next = rng(2);
  const keys = Array.from({ length: N }, () => `user-${next() % 10_000_000}-session`);
  // selectShardsForKeys takes arrays of keys: the same keys, in 2000-key arrays (built before timing)
  const keyChunks = Array.from({ length: N >>> 11 }, (_, c) => keys.slice(c << 11, (c << 11) + 2000));
  const keyOut = new Uint16Array(2000);
  const HOT = 1024; // fits hashring's LRU cache: every get after the first is a cache hit
  const { h32 } = await xxhashWasm();
  // The bare baselines: selectShard's arithmetic over a Uint16Array of candidates.
  // - bare: the table and its count live in variables that a rebuild reassigns, as any
  //   load-aware table must (V8 cannot fold them into the code);
  // - bareConst: a table and count that never change, so V8 folds n = 8 into the code: the
  //   absolute floor, which no rebuildable table can reach.
  let table = new Uint16Array(0);
  let count = 0;
  const rebuild = (ids) => { table = Uint16Array.from(ids); count = ids.length; };
  rebuild([0]);
  rebuild(Array.from({ length: SHARDS }, (_, i) => i));
  const bare = (hash) => table[((hash >>> 0) * count * TWO_POW_MINUS_32) | 0];
  const constTable = new Uint16Array(SHARDS).map((_, i) => i);
  const n = SHARDS;
  const bareConst = (hash) => constTable[((hash >>> 0) * n * TWO_POW_MINUS_32) | 0];

  // Sanity: every implementation answers with a shard of the 8.
  check(mapper.selectShard(hashes[0]) < SHARDS && plain.selectShard(hashes[0]) < SHARDS, 'selectShard range');
  check(mapper.selectShard(0) === 0 && mapper.selectShard(0xffffffff) === SHARDS - 1, 'selectShard index mapping');
  check(mapper.selectShardForKey(keys[0]) === mapper.selectShard(hashKey(keys[0])), 'selectShardForKey = selectShard(hashKey)');

  // ---- 1a: one uint32 hash ----------------------------------------------------------------
  const OPS = 10_000;
  // Every name a task uses from outside is in E: each round recompiles the tasks (lib.fresh).
  const cur = { a: 0, b: 0, c: 0 }; // rolling offsets into the inputs
  const collector = mapper.metricsCollector(0);
  const counters = new Int32Array(new SharedArrayBuffer(256));
  const plainCounters = new Int32Array(64);
  const E = {
    mapper, plain, hashes, hashStrings, ring, keyRing, hotRing, ch, keys, h32, bare, bareConst, keyChunks, keyOut,
    jump: jumpHash, xxh: hashKey, // local names: a bundler/test transform rewrites imported names in fn source
    n, OPS, MASK, HOT, cur, collector, counters, plainCounters,
  };
  const hashTasks = [
    { id: 'selectShard', name: 'shard-mapper selectShard(hash)', ref: true, ops: OPS, env: E, fn: () => {
      let s = 0; const b = cur.a; cur.a = (b + OPS) & MASK;
      for (let i = 0; i < OPS; i++) s += mapper.selectShard(hashes[(b + i) & MASK]);
      return s;
    } },
    { id: 'bare', name: 'bare Uint16Array read, same arithmetic', ops: OPS, note: 'table + count in variables a rebuild reassigns; no checks', env: E, fn: () => {
      let s = 0; const b = cur.a; cur.a = (b + OPS) & MASK;
      for (let i = 0; i < OPS; i++) s += bare(hashes[(b + i) & MASK]);
      return s;
    } },
    { id: 'bare-const', name: 'bare Uint16Array read, constant table', ops: OPS, note: 'n = 8 folded into the code: not rebuildable', env: E, fn: () => {
      let s = 0; const b = cur.a; cur.a = (b + OPS) & MASK;
      for (let i = 0; i < OPS; i++) s += bareConst(hashes[(b + i) & MASK]);
      return s;
    } },
    { id: 'plain', name: 'plain-TS weighted mapper (same rule, no WASM)', ops: OPS, note: 'written here (no package)', env: E, fn: () => {
      let s = 0; const b = cur.a; cur.a = (b + OPS) & MASK;
      for (let i = 0; i < OPS; i++) s += plain.selectShard(hashes[(b + i) & MASK]);
      return s;
    } },
    { id: 'modulo', name: 'plain modulo (hash % n)', ops: OPS, note: 'not load-aware, reshuffles on resize', env: E, fn: () => {
      let s = 0; const b = cur.a; cur.a = (b + OPS) & MASK;
      for (let i = 0; i < OPS; i++) s += hashes[(b + i) & MASK] % n;
      return s;
    } },
    { id: 'jump', name: 'jump consistent hash (plain JS)', ops: OPS, note: 'written here, exact 64-bit LCG without BigInt', env: E, fn: () => {
      let s = 0; const b = cur.a; cur.a = (b + OPS) & MASK;
      for (let i = 0; i < OPS; i++) s += jump(hashes[(b + i) & MASK], n);
      return s;
    } },
    { id: 'consistent-hash', name: 'consistent-hash get(String(hash))', ops: 2000, note: 'string keys only: decimal string precomputed', env: E, fn: () => {
      let s = 0; const b = cur.a; cur.a = (b + 2000) & MASK;
      for (let i = 0; i < 2000; i++) s += ch.get(hashStrings[(b + i) & MASK]);
      return s;
    } },
    { id: 'hashring', name: 'hashring get(String(hash))', ops: 500, note: 'string keys only; md5 + LRU cache (misses)', env: E, fn: () => {
      let s = 0; const b = cur.a; cur.a = (b + 500) & MASK;
      for (let i = 0; i < 500; i++) s += ring.get(hashStrings[(b + i) & MASK]).length;
      return s;
    } },
  ];
  const hashRows = withRatios(await measureOps(profile, hashTasks));

  // ---- 1b: one string key, hashing included ----------------------------------------------
  const keyTasks = [
    { id: 'selectShardForKey', name: 'shard-mapper selectShardForKey(key)', ref: true, ops: 2000, note: 'xxHash32 in JS + selectShard', env: E, fn: () => {
      let s = 0; const b = cur.b; cur.b = (b + 2000) & MASK;
      for (let i = 0; i < 2000; i++) s += mapper.selectShardForKey(keys[(b + i) & MASK]);
      return s;
    } },
    { id: 'selectShardsForKeys', name: 'shard-mapper selectShardsForKeys(2000 keys, out)', ops: 2000, note: 'batch: keys joined, encoded once, hashed from bytes', env: E, fn: () => {
      const b = cur.b & ~2047; cur.b = (b + 2048) & MASK;
      mapper.selectShardsForKeys(keyChunks[b >>> 11], keyOut);
      return keyOut[7];
    } },
    { id: 'xxhash-wasm', name: 'xxhash-wasm h32(key) + selectShard', ops: 2000, note: 'same hash computed in WASM (one call per key)', env: E, fn: () => {
      let s = 0; const b = cur.b; cur.b = (b + 2000) & MASK;
      for (let i = 0; i < 2000; i++) s += mapper.selectShard(h32(keys[(b + i) & MASK]));
      return s;
    } },
    { id: 'jump-key', name: 'hashKey(key) + jump consistent hash', ops: 2000, note: 'same hash, jump instead of the weighted table', env: E, fn: () => {
      let s = 0; const b = cur.b; cur.b = (b + 2000) & MASK;
      for (let i = 0; i < 2000; i++) s += jump(xxh(keys[(b + i) & MASK]), n);
      return s;
    } },
    { id: 'consistent-hash-key', name: 'consistent-hash get(key)', ops: 2000, note: 'PJW string hash + binary search', env: E, fn: () => {
      let s = 0; const b = cur.b; cur.b = (b + 2000) & MASK;
      for (let i = 0; i < 2000; i++) s += ch.get(keys[(b + i) & MASK]);
      return s;
    } },
    { id: 'hashring-key', name: 'hashring get(key)', ops: 500, note: `md5 + binary search; ${N} distinct keys overflow its 5 000-entry LRU`, env: E, fn: () => {
      let s = 0; const b = cur.b; cur.b = (b + 500) & MASK;
      for (let i = 0; i < 500; i++) s += keyRing.get(keys[(b + i) & MASK]).length;
      return s;
    } },
    { id: 'hashring-key-hot', name: `hashring get(key), ${HOT} hot keys`, ops: 2000, note: 'every lookup an LRU cache hit: its best case', env: E, fn: () => {
      let s = 0; const b = cur.c; cur.c = (b + 2000) & (HOT - 1);
      for (let i = 0; i < 2000; i++) s += hotRing.get(keys[(b + i) & (HOT - 1)]).length;
      return s;
    } },
  ];
  const keyRows = withRatios(await measureOps(profile, keyTasks));
  const batchAnswers = mapper.selectShardsForKeys(keyChunks[3]);
  check(batchAnswers.every((id, i) => id === mapper.selectShardForKey(keyChunks[3][i])), 'selectShardsForKeys = selectShardForKey, key for key');

  // ---- 1c: the collector's per-event call ---------------------------------------------------
  const collectorTasks = [
    { id: 'recordPush', name: 'shard-mapper collector.recordPush(ns)', ref: true, ops: OPS, note: 'atomic in WASM: events + packed (count, sum)', env: E, fn: () => {
      for (let i = 0; i < OPS; i++) collector.recordPush(i & 7);
    } },
    { id: 'atomics', name: 'JS Atomics.add ×3 on a SharedArrayBuffer', ops: OPS, note: 'events, count, sum (count and sum not one word)', env: E, fn: () => {
      for (let i = 0; i < OPS; i++) { Atomics.add(counters, 0, 1); Atomics.add(counters, 32, 1); Atomics.add(counters, 33, i & 7); }
    } },
    { id: 'plain-counters', name: 'plain Int32Array increments (one thread only)', ops: OPS, note: 'not thread-safe: the floor', env: E, fn: () => {
      for (let i = 0; i < OPS; i++) { plainCounters[0]++; plainCounters[32]++; plainCounters[33] += i & 7; }
    } },
  ];
  const collectorRows = withRatios(await measureOps(profile, collectorTasks));
  const m = mapper.collectMetrics()[0];
  check(m.eventRate > 0, 'recordPush counted events');
  consume(m.eventRate + counters[0] + plainCounters[0]);

  const sel = row(hashRows, 'selectShard');
  const key = row(keyRows, 'selectShardForKey');
  const goals = [
    goal({ id: 'selectShard-vs-bare', issue: '#2, #5', text: 'selectShard ≤ 1.5× a bare typed-array read',
      value: sel.ns / row(hashRows, 'bare').ns, target: 1.5, op: '<=',
      detail: `${sel.ns.toFixed(2)} ns vs ${row(hashRows, 'bare').ns.toFixed(2)} ns (vs the constant-folded table, ${row(hashRows, 'bare-const').ns.toFixed(2)} ns: ${(sel.ns / row(hashRows, 'bare-const').ns).toFixed(2)}×)` }),
    goal({ id: 'keyed-vs-hashring', issue: '#5', text: 'keyed routing ≥ 20× hashring',
      value: row(keyRows, 'hashring-key').ns / key.ns, target: 20, op: '>=',
      detail: `${key.ns.toFixed(1)} ns vs ${row(keyRows, 'hashring-key').ns.toFixed(0)} ns (LRU-hit best case: ${(row(keyRows, 'hashring-key-hot').ns / key.ns).toFixed(1)}×)` }),
    goal({ id: 'keyed-vs-consistent-hash', issue: '#5, #12', text: 'keyed routing ≥ 2× consistent-hash (per key: selectShardForKey)',
      value: row(keyRows, 'consistent-hash-key').ns / key.ns, target: 2, op: '>=',
      detail: `${key.ns.toFixed(1)} ns vs ${row(keyRows, 'consistent-hash-key').ns.toFixed(1)} ns` }),
    goal({ id: 'keyed-batch-vs-consistent-hash', issue: '#12', text: 'keyed routing ≥ 2× consistent-hash (batch: selectShardsForKeys)',
      value: row(keyRows, 'consistent-hash-key').ns / row(keyRows, 'selectShardsForKeys').ns, target: 2, op: '>=',
      detail: `${row(keyRows, 'selectShardsForKeys').ns.toFixed(1)} ns per key vs ${row(keyRows, 'consistent-hash-key').ns.toFixed(1)} ns` }),
  ];

  return {
    tables: [
      { id: 's1a', title: `1a. One uint32 hash → shard (${SHARDS} shards)`, unit: 'op', rows: hashRows },
      { id: 's1b', title: `1b. One string key → shard, hashing included (${SHARDS} shards, keys like "${keys[0]}")`, unit: 'op', rows: keyRows },
      { id: 's1c', title: '1c. Collector recordPush per call', unit: 'op', rows: collectorRows },
    ],
    goals,
  };
}
