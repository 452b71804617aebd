// Scenario 6 — growth: what selectShard, collectMetrics and ShardManager.tick() cost with 1, 8,
// 64, 512 and 4096 shards (mapper and manager created with that many initial shards, policy
// maxShards = the count). The hot path (selectShard) should stay flat; the per-window calls
// are expected to grow linearly (they visit every shard), and the log-log slope says so.
import { ShardMapper, ShardManager } from 'shard-mapper';
import { randomHashes } from '../shared/seeded-random.mjs';
import { measureOps, check } from './lib.mjs';

export const id = 's6';
export const title = '6. Growth: cost with 1 … 4096 shards';

const MASK = (1 << 16) - 1;

export async function run(profile) {
  const counts = profile.name === 'tiny' ? [1, 8, 64] : [1, 8, 64, 512, 4096];
  const hashes = randomHashes(MASK + 1, 23);
  const setups = [];
  for (const n of counts) {
    const mapper = await ShardMapper.create(n, 1024, { maxShards: n, autoScale: false });
    const mgr = await ShardManager.create({
      initialShards: n, ringBufferCapacity: 16, maxPayloadBytes: 16, policy: { maxShards: n }, clock: () => 0,
    });
    check(mapper.activeShardCount() === n && mgr.mapper.activeShardCount() === n, `${n} active shards`);
    // Every shard is reachable: evenly spaced hashes hit each candidate.
    const seen = new Set();
    for (let i = 0; i < n; i++) seen.add(mapper.selectShard(Math.floor(((i + 0.5) * 2 ** 32) / n)));
    check(seen.size === n, `selectShard reaches all ${n} shards`);
    setups.push({ n, mapper, mgr, per: Math.max(1, Math.floor(512 / n)) });
  }
  // The same three loops for every shard count, recompiled per count and round (lib.fresh),
  // so no count runs code specialized for another; the counts are interleaved.
  const OPS = 10_000;
  const cur = { o: 0 };
  const selectLoop = () => {
    const m = x.mapper;
    let s = 0; const b = cur.o; cur.o = (b + OPS) & MASK;
    for (let i = 0; i < OPS; i++) s += m.selectShard(hashes[(b + i) & MASK]);
    return s;
  };
  const collectLoop = () => {
    const m = x.mapper;
    const per = x.per;
    let s = 0;
    for (let i = 0; i < per; i++) s += m.collectMetrics().length;
    return s;
  };
  const tickLoop = () => {
    const mgr = x.mgr;
    const per = x.per;
    let s = 0;
    for (let i = 0; i < per; i++) s += mgr.tick().kind.length;
    return s;
  };
  const measure = (name, loop, ops) => measureOps(profile, setups.map((x) => ({
    id: `${name}-${x.n}`, name, ops: ops ?? x.per, fn: loop, env: { x, cur, hashes, OPS, MASK },
  })));
  const sel = await measure('selectShard', selectLoop, OPS);
  const collect = await measure('collectMetrics', collectLoop);
  const tick = await measure('tick', tickLoop);
  const rows = [];
  for (let k = 0; k < setups.length; k++) {
    const { n, mgr } = setups[k];
    check(mgr.mapper.activeShardCount() === n, 'tick() did not scale (clock frozen)');
    rows.push({ id: `n-${n}`, name: String(n), shards: n, select: sel[k].ns, selectSpread: sel[k].spreadPct, collect: collect[k].ns, tick: tick[k].ns });
    await mgr.close();
  }
  const first = rows[0];
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    r.ns = r.select; // for the JSON: the hot path
    r.opsPerSec = 1e9 / r.select;
    r.ratio = r.select / first.select;
    if (i > 0) {
      const p = rows[i - 1];
      const dx = Math.log(r.shards / p.shards);
      r.slopeSelect = Math.log(r.select / p.select) / dx;
      r.slopeCollect = Math.log(r.collect / p.collect) / dx;
      r.slopeTick = Math.log(r.tick / p.tick) / dx;
    }
  }
  const slope = (v) => (v === undefined ? '' : v.toFixed(2));
  return {
    tables: [{
      id: 's6', title: '6. Cost per call by shard count (log-log slope vs the previous row: 0 = flat, 1 = linear)', rows,
      columns: [
        { head: 'shards', get: (r) => r.name, align: 'right' },
        { head: 'selectShard ns', get: (r) => r.select.toFixed(2), align: 'right' },
        { head: '÷ 1 shard', get: (r) => `${r.ratio.toFixed(2)}×`, align: 'right' },
        { head: 'slope', get: (r) => slope(r.slopeSelect), align: 'right' },
        { head: 'collectMetrics µs', get: (r) => (r.collect / 1000).toFixed(r.collect < 10_000 ? 2 : 1), align: 'right' },
        { head: 'ns/shard', get: (r) => Math.round(r.collect / r.shards).toLocaleString('en-US'), align: 'right' },
        { head: 'slope', get: (r) => slope(r.slopeCollect), align: 'right' },
        { head: 'tick() µs', get: (r) => (r.tick / 1000).toFixed(r.tick < 10_000 ? 2 : 1), align: 'right' },
        { head: 'ns/shard', get: (r) => Math.round(r.tick / r.shards).toLocaleString('en-US'), align: 'right' },
        { head: 'slope', get: (r) => slope(r.slopeTick), align: 'right' },
      ],
      legend: 'selectShard: a ShardMapper with every shard a candidate (equal weights). collectMetrics: the same mapper. tick(): a ShardManager (16-record rings, no consumer threads) whose injected clock stands still, so every pass collects, evaluates, rebuilds the table and settles without scaling.',
    }],
  };
}
