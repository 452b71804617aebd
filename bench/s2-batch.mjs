// Scenario 2 — pick shards for a batch of 1 M hashes: selectShards (one WebAssembly call per
// scratch-full) against the plain-TS mapper and a bare typed-array loop.
import { ShardMapper } from 'shard-mapper';
import { PlainWeightedMapper } from './plain-js-baselines.mjs';
import { randomHashes } from '../shared/seeded-random.mjs';
import { measureOps, withRatios, row, goal, check } from './lib.mjs';

export const id = 's2';
export const title = '2. Pick shards for a batch of 1 M hashes';

const SHARDS = 8;
const TWO_POW_MINUS_32 = 2 ** -32;

export async function run(profile) {
  const BATCH = profile.name === 'tiny' ? 4096 : 1 << 20;
  const mapper = await ShardMapper.create(SHARDS, 1024, { maxShards: SHARDS, autoScale: false });
  const plain = new PlainWeightedMapper(SHARDS);
  const hashes = randomHashes(BATCH, 3);
  const out = new Uint16Array(BATCH);
  const out2 = new Uint16Array(BATCH);
  const table = new Uint16Array(SHARDS).map((_, i) => i);

  // The batch and the single form agree.
  mapper.selectShards(hashes, out);
  for (let i = 0; i < 1000; i++) check(out[i] === mapper.selectShard(hashes[i]), 'selectShards = selectShard');
  plain.selectShards(hashes, out2);
  for (let i = 0; i < 1000; i++) check(out2[i] === out[i], 'plain mapper = shard-mapper on equal weights');

  const E = { mapper, plain, hashes, out, out2, table, BATCH, SHARDS, TWO_POW_MINUS_32 }; // see lib.fresh
  const tasks = [
    { id: 'selectShards', name: 'shard-mapper selectShards(hashes, out)', ref: true, ops: BATCH, note: 'out preallocated', env: E, fn: () => {
      const r = mapper.selectShards(hashes, out);
      return r[BATCH - 1] + r[BATCH >> 1];
    } },
    { id: 'selectShards-alloc', name: 'shard-mapper selectShards(hashes)', ops: BATCH, note: 'allocates the 2 MB result', env: E, fn: () => {
      const r = mapper.selectShards(hashes);
      return r[BATCH - 1] + r[BATCH >> 1];
    } },
    { id: 'selectShard-loop', name: 'shard-mapper selectShard in a JS loop', ops: BATCH, env: E, fn: () => {
      for (let i = 0; i < BATCH; i++) out2[i] = mapper.selectShard(hashes[i]);
      return out2[BATCH - 1] + out2[BATCH >> 1];
    } },
    { id: 'plain', name: 'plain-TS weighted mapper, loop', ops: BATCH, note: 'written here (no package)', env: E, fn: () => {
      const r = plain.selectShards(hashes, out2);
      return r[BATCH - 1] + r[BATCH >> 1];
    } },
    { id: 'bare', name: 'bare Uint16Array loop, same arithmetic', ops: BATCH, note: 'the JS floor', env: E, fn: () => {
      const n = SHARDS;
      for (let i = 0; i < BATCH; i++) out2[i] = table[(hashes[i] * n * TWO_POW_MINUS_32) | 0];
      return out2[BATCH - 1] + out2[BATCH >> 1];
    } },
  ];
  const rows = withRatios(await measureOps(profile, tasks));
  const sm = row(rows, 'selectShards');
  return {
    tables: [{ id: 's2', title: `2. ${BATCH.toLocaleString('en-US')} hashes → shards (${SHARDS} shards), per hash`, unit: 'hash', rows }],
    goals: [goal({ id: 'selectShards-rate', issue: '#2', text: 'selectShards ≥ 500 M hashes/s',
      value: sm.opsPerSec / 1e6, target: 500, op: '>=', unit: 'M hashes/s',
      detail: `${sm.ns.toFixed(2)} ns/hash; plain-TS loop ${row(rows, 'plain').ns.toFixed(2)} ns/hash` })],
  };
}
