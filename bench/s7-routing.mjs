// Scenario 7 — routing modes (issue #10): 'leastLoaded' (the rule of docs/CONTRACT.md §5), 'balanced' and
// 'affinity', measured five ways in one run:
//   a. herding on the model: a ShardManager with an injected clock, 8 shards whose simulated
//      consumers (poll) take a fixed number of records per window, one of them 4× slower;
//      200 windows of steady load. Deterministic (seeded hashes, no threads).
//   b. throughput on threads: the demo's workload (2 producer threads, 4 shards, 4 consumer
//      threads that wait 2 ms per batch of 128) at its peak rate, per mode.
//   c. key movement: 10^6 random keys, n → n+1 shards and removing one, for 'affinity' beside
//      the npm packages hashring and consistent-hash and jump consistent hash.
//   d. load bound: keys of Zipf(0.9) popularity over 10^6 keys on 8 shards, the busiest
//      shard's load ÷ the mean, 'affinity' (bounded) beside hashring.
//   e. cost: selectShard per mode, and collectMetrics() at 4096 shards per mode.
import { Worker } from 'node:worker_threads';
import HashRing from 'hashring';
import ConsistentHash from 'consistent-hash';
import { ShardManager, ShardMapper } from 'shard-mapper';
import { jumpHash } from './plain-js-baselines.mjs';
import { rng } from '../shared/seeded-random.mjs';
import { measureOps, withRatios, goal, consume, check, sleep, fmtRatio } from './lib.mjs';

export const id = 's7';
export const title = '7. Routing modes: herding, throughput on threads, key movement, load bound, cost';

const MODES = ['leastLoaded', 'balanced', 'affinity'];
const pct = (x, d = 1) => `${(100 * x).toFixed(d)}%`;

// ---- a. herding on the model -----------------------------------------------------------------

const H = { shards: 8, cap: 1024, take: 256, slowFactor: 4, steps: 8, load: 0.7 };

/** One mode's 200 windows; returns per-window shares and the figures of the table. */
export async function herding(mode, windows = 200) {
  const clock = { t: 0 };
  const policy = { minShards: 1, maxShards: H.shards, autoScale: false, metricsWindowMs: 100, fillRatioThreshold: 0.7 };
  const mgr = await ShardManager.create({
    initialShards: H.shards, ringBufferCapacity: H.cap, maxPayloadBytes: 8, backpressure: { kind: 'dropNewest' },
    policy, clock: () => clock.t, routing: mode,
  });
  const mapper = mgr.mapper;
  const ids = mapper.activeShardIds();
  const slow = ids[ids.length - 1];
  const takeOf = (id) => (id === slow ? H.take / H.slowFactor : H.take);
  const capacity = ids.reduce((a, id) => a + takeOf(id), 0);
  const perWindow = Math.round(H.load * capacity);
  const next = rng(0x7e57);
  const payload = new Uint8Array(8);
  const shares = [];
  // The hash space each shard owns, probed with evenly spaced hashes (exact to 1/65536):
  // what the table gives, free of the sampling noise of one window's random hashes.
  const probes = Uint32Array.from({ length: 65536 }, (_, i) => i * 65536 + 32768);
  const routedProbes = new Uint16Array(probes.length);
  let maxFill = 0;
  let maxFillSlowAfter5 = 0;
  let dropped = 0;
  let polled = 0;
  for (let w = 0; w < windows; w++) {
    mapper.selectShards(probes, routedProbes);
    const owned = new Map(ids.map((id) => [id, 0]));
    for (const id of routedProbes) owned.set(id, owned.get(id) + 1);
    shares.push(ids.map((id) => owned.get(id) / probes.length));
    for (let step = 0; step < H.steps; step++) {
      for (let i = 0; i < perWindow / H.steps; i++) {
        const h = next();
        if (!mgr.push(h, payload)) dropped++;
      }
      for (const id of ids) {
        polled += mgr.poll(id, takeOf(id) / H.steps).length;
        // (fill after the consumers' turn: what the next pushes meet)
      }
      for (const id of ids) {
        const f = mgr.ringLength(id) / mgr.ringCapacity;
        if (f > maxFill) maxFill = f;
        if (id === slow && w >= 5 && f > maxFillSlowAfter5) maxFillSlowAfter5 = f;
      }
    }
    clock.t += policy.metricsWindowMs;
    mgr.tick();
  }
  const s = mgr.stats();
  check(s.pushed === polled + s.inFlight, 'every accepted event was polled or is still in a ring');
  consume(s.pushed);
  await mgr.close();

  let maxShare = 0;
  let delta = 0;
  let deltas = 0;
  for (let w = 0; w < shares.length; w++) {
    for (let k = 0; k < ids.length; k++) {
      maxShare = Math.max(maxShare, shares[w][k]);
      if (w > 0) { delta += Math.abs(shares[w][k] - shares[w - 1][k]); deltas++; }
    }
  }
  // Where the shares settle: the mean of the last half; settled from the first window after
  // which every share stays within ±10 % of it.
  const half = shares.slice(shares.length >> 1);
  const settle = ids.map((_, k) => half.reduce((a, sh) => a + sh[k], 0) / half.length);
  let settledFrom = 0;
  for (let w = shares.length - 1; w >= 0; w--) {
    if (shares[w].some((x, k) => Math.abs(x - settle[k]) > 0.1 * settle[k])) { settledFrom = w + 1; break; }
  }
  return {
    mode, maxShare, meanDelta: delta / deltas, maxFill, maxFillSlowAfter5, dropped, pushed: s.pushed,
    settledFrom, slowShare: settle[ids.length - 1], perWindow, capacity,
  };
}

// ---- b. throughput on threads ---------------------------------------------------------------

const T = { producers: 2, shards: 4, ring: 4096, batch: 128, batchMs: 2, payload: 64 };
/** The demo's peak, and a demand above what the 4 consumers can take (where routing decides the rate). */
const PEAKS = [150_000, 300_000];

/** One run of the demo's peak: producers push at `T.peak` for `seconds`; delivered events/s. */
export async function throughput(mode, seconds, peak = PEAKS[0]) {
  const mgr = await ShardManager.create({
    initialShards: T.shards, ringBufferCapacity: T.ring, maxPayloadBytes: T.payload, routing: mode,
    policy: { minShards: 1, maxShards: T.shards, fillRatioThreshold: 0.5, metricsWindowMs: 250, autoScale: false },
    consumer: { module: new URL('./workers/routing-consumer.mjs', import.meta.url), threads: T.shards, batchSize: T.batch },
  });
  mgr.start();
  const control = new SharedArrayBuffer(8);
  const ctl = new Int32Array(control);
  Atomics.store(ctl, 0, Math.round(peak / T.producers));
  // The demo's own producer thread (its per-producer counters are not needed here).
  const counters = new SharedArrayBuffer(16 * T.producers);
  const workers = Array.from({ length: T.producers }, (_, producer) => new Worker(new URL('../examples/demo-producer.mjs', import.meta.url), {
    workerData: { handle: mgr.producerHandle(), producer, payloadBytes: T.payload, control, counters },
  }));
  const done = workers.map((w) => new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); }));
  // Warm-up of one second (threads start, the first windows are collected), then measure.
  await sleep(1000);
  const s0 = mgr.stats();
  const t0 = performance.now();
  await sleep(seconds * 1000);
  const s1 = mgr.stats();
  const delivered = s1.delivered - s0.delivered;
  const pushed = s1.pushed - s0.pushed;
  const ms = performance.now() - t0;
  Atomics.store(ctl, 1, 1);
  const produced = await Promise.all(done);
  await mgr.close();
  const s = mgr.stats();
  const accepted = produced.reduce((a, p) => a + p.accepted, 0);
  check(s.pushed === accepted && s.delivered === accepted, `every accepted event delivered (${accepted} accepted, ${s.delivered} delivered)`);
  consume(s.delivered);
  return { ms, events: delivered, pushed, refused: produced.reduce((a, p) => a + p.refused, 0) };
}

// ---- c. key movement ------------------------------------------------------------------------

function randomKeys(count, seed) {
  const next = rng(seed);
  const keys = new Uint32Array(count);
  for (let i = 0; i < count; i++) keys[i] = next();
  return keys;
}

const keyString = (k) => `k${k.toString(36)}`;

/** Fraction of keys whose owner differs between two assignments. */
function moved(a, b) {
  let m = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) m++;
  return m / a.length;
}

async function affinityAssign(keys, n, removeOne) {
  const mapper = await ShardMapper.create(n, 64, { minShards: 1, maxShards: n + 1, autoScale: false }, { routing: 'affinity' });
  const before = mapper.selectShards(keys);
  if (removeOne) mapper.drainSpecific(Math.floor(n / 2));
  else mapper.scaleUp(1);
  const after = mapper.selectShards(keys);
  return moved(before, after);
}

function ringAssign(keys, n, removeOne, make) {
  const names = Array.from({ length: n + 1 }, (_, i) => `shard-${i}`);
  const first = make(names.slice(0, n));
  const lookup = (ring) => { const out = new Array(keys.length); for (let i = 0; i < keys.length; i++) out[i] = ring.get(keyString(keys[i])); return out; };
  const before = lookup(first);
  if (removeOne) first.remove(names[Math.floor(n / 2)]);
  else first.add(names[n]);
  return moved(before, lookup(first));
}

function jumpAssign(keys, n, removeOne) {
  // Jump hash can only add or remove the last bucket; removing any other renumbers.
  const a = new Uint16Array(keys.length);
  const b = new Uint16Array(keys.length);
  for (let i = 0; i < keys.length; i++) { a[i] = jumpHash(keys[i], n); b[i] = jumpHash(keys[i], removeOne ? n - 1 : n + 1); }
  return moved(a, b);
}

const makeHashring = (names) => new HashRing(names);
const makeConsistentHash = (names) => { const r = new ConsistentHash(); for (const n of names) r.add(n); return r; };

// ---- d. load bound --------------------------------------------------------------------------

/** Zipf(s) sampler over ranks 0..n-1 by inverse CDF on a precomputed table. */
function zipfSampler(n, s, seed) {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let k = 0; k < n; k++) { sum += 1 / (k + 1) ** s; cdf[k] = sum; }
  for (let k = 0; k < n; k++) cdf[k] /= sum;
  const next = rng(seed);
  return () => {
    const u = next() / 2 ** 32;
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (cdf[mid] < u) lo = mid + 1; else hi = mid; }
    return lo;
  };
}

/**
 * The busiest shard's load ÷ the mean over the last `measure` windows, for a mode on a
 * ShardMapper whose collectors are fed with each window's routed events.
 */
async function boundedLoad(mode, keys, draw, { shards, windows, perWindow, measure, loadBound }) {
  const mapper = await ShardMapper.create(shards, 1 << 16, { minShards: 1, maxShards: shards, autoScale: false }, { routing: mode, loadBound });
  const collectors = mapper.activeShardIds().map((id) => mapper.metricsCollector(id));
  let worst = 0;
  let sumRatio = 0;
  const events = new Uint32Array(perWindow);
  const routed = new Uint16Array(perWindow);
  for (let w = 0; w < windows; w++) {
    for (let i = 0; i < perWindow; i++) events[i] = keys[draw()];
    mapper.selectShards(events, routed);
    const counts = new Array(shards).fill(0);
    for (let i = 0; i < perWindow; i++) counts[routed[i]]++;
    for (let id = 0; id < shards; id++) for (let c = 0; c < counts[id]; c++) collectors[id].recordEventOnly();
    const ratio = Math.max(...counts) / (perWindow / shards);
    if (w >= windows - measure) { worst = Math.max(worst, ratio); sumRatio += ratio; }
    mapper.collectMetrics();
  }
  // Fraction of keys (by distinct key) routed away from where the spill-free table puts them.
  const home = await ShardMapper.create(shards, 64, { minShards: 1, maxShards: shards, autoScale: false }, { routing: 'affinity' });
  const away = moved(home.selectShards(keys), mapper.selectShards(keys));
  return { worst, mean: sumRatio / measure, away };
}

function staticLoad(ring, keys, draw, { shards, windows, perWindow, measure }) {
  const owner = new Uint16Array(keys.length);
  const names = Array.from({ length: shards }, (_, i) => `shard-${i}`);
  const index = new Map(names.map((n, i) => [n, i]));
  for (let i = 0; i < keys.length; i++) owner[i] = index.get(ring.get(keyString(keys[i])));
  let worst = 0;
  let sumRatio = 0;
  for (let w = windows - measure; w < windows; w++) {
    const counts = new Array(shards).fill(0);
    for (let i = 0; i < perWindow; i++) counts[owner[draw()]]++;
    const ratio = Math.max(...counts) / (perWindow / shards);
    worst = Math.max(worst, ratio);
    sumRatio += ratio;
  }
  return { worst, mean: sumRatio / measure, away: 0 };
}

// ---- e. cost --------------------------------------------------------------------------------

async function collectCost(profile, shards) {
  const mappers = {};
  for (const mode of MODES) {
    mappers[mode] = await ShardMapper.create(shards, 1024, { minShards: 1, maxShards: shards, autoScale: false }, { routing: mode });
  }
  // Every window a rotating 1/64 of the shards see traffic and a backlog (some over the fill
  // threshold) and the previous window's busy shards have caught up, so the load-aware tables
  // really change from one window to the next: the cost of a rebuild, not of an unchanged table.
  const env = (mode) => {
    const m = mappers[mode];
    const collectors = m.activeShardIds().map((id) => m.metricsCollector(id));
    return { collectors, m, round: 0 };
  };
  const state = Object.fromEntries(MODES.map((mode) => [mode, env(mode)]));
  const tasks = MODES.map((mode) => ({
    id: mode, name: `collectMetrics() at ${shards} shards, ${mode}`, ops: 1, ref: mode === 'leastLoaded',
    fn: () => {
      const st = state[mode];
      const n = st.collectors.length;
      const busy = Math.max(1, n >> 6);
      const r = st.round++;
      for (let k = 0; k < busy; k++) {
        st.collectors[((r - 1) * busy + k + n) % n].recordBufferLen(0); // last window's busy shards caught up
        const c = st.collectors[(r * busy + k) % n];
        for (let e = 0; e < 8; e++) c.recordEventOnly();
        c.recordBufferLen((r * 37 + k * 11) % 800); // fill up to 0.78: some cross the 0.7 threshold
      }
      return st.m.collectMetrics().length;
    },
  }));
  const short = { ...profile, time: Math.max(profile.time, profile.name === 'tiny' ? 0 : 300) };
  return withRatios(await measureOps(short, tasks));
}

export async function selectCost(profile) {
  const POOL = 4096;
  const hashes = new Uint32Array(POOL);
  const next = rng(5);
  for (let i = 0; i < POOL; i++) hashes[i] = next();
  const tasks = [];
  for (const mode of MODES) {
    const mapper = await ShardMapper.create(8, 1024, { minShards: 1, maxShards: 8, autoScale: false }, { routing: mode });
    tasks.push({
      id: mode, name: `selectShard, ${mode}`, ops: 1 << 16, ref: mode === 'leastLoaded',
      env: { mapper, hashes },
      fn: () => {
        let acc = 0;
        for (let i = 0; i < 65536; i++) acc += mapper.selectShard(hashes[i & 4095]);
        return acc;
      },
    });
  }
  return withRatios(await measureOps(profile, tasks));
}

/**
 * Batch calls per mode: pushFixed and pushBatch of 256 16-byte events whose keys spread over 4
 * shards, one thread, timed alone (the rings are emptied after each call, untimed). Under
 * 'affinity' key order is on (its default): the table read once per block must still hold
 * when the block has reserved (assembly/ring.ts, GROUPED WRITES).
 */
export async function batchCost(profile) {
  const CALL = 256, SIZE = 16;
  const hashes = new Uint32Array(1 << 16);
  const next = rng(31);
  for (let i = 0; i < hashes.length; i++) hashes[i] = next();
  const records = new Uint8Array(CALL * SIZE).fill(7);
  const payloads = Array.from({ length: CALL }, (_, i) => records.subarray(i * SIZE, (i + 1) * SIZE));
  const tasks = [];
  const managers = [];
  for (const mode of MODES) {
    const m = await ShardManager.create({
      routing: mode, initialShards: 4, ringBufferCapacity: 4096, maxPayloadBytes: SIZE, backpressure: { kind: 'dropNewest' },
      policy: { autoScale: false, maxShards: 4 },
    });
    const ids = m.mapper.activeShardIds();
    const cur = { at: 0, accepted: 0, taken: 0 };
    const drain = () => { for (const id of ids) while (m.pollBatch(id, (b) => { cur.taken += b.length; }) > 0); };
    managers.push({ mode, m, cur });
    for (const call of ['pushFixed', 'pushBatch']) {
      tasks.push({
        id: `${call}-${mode}`, name: `${call}(${CALL}), ${mode}${mode === 'affinity' ? ' (key order on)' : ''}`, ops: CALL, selfTimed: true,
        ref: call === 'pushFixed' && mode === 'leastLoaded', env: { m, cur, drain, hashes, records, payloads, CALL, SIZE, fixed: call === 'pushFixed' },
        fn: () => {
          const h = hashes.subarray(cur.at, cur.at + CALL);
          const t0 = performance.now();
          const n = fixed ? m.pushFixed(h, records, SIZE) : m.pushBatch(h, payloads);
          const dt = performance.now() - t0;
          cur.accepted += n;
          cur.at = (cur.at + CALL) & 0xffff;
          drain();
          return dt;
        },
      });
    }
  }
  const rows = withRatios(await measureOps(profile, tasks));
  for (const { mode, m, cur } of managers) {
    const s = m.stats();
    check(s.pushed === cur.accepted && s.delivered === cur.taken && s.pushed === s.delivered && s.dropped === 0, `batch calls (${mode}): every event accepted and taken (${s.pushed} pushed, ${cur.taken} taken)`);
    await m.close();
  }
  return rows;
}

// ---- the scenario ----------------------------------------------------------------------------

export async function run(profile) {
  const tiny = profile.name === 'tiny';
  const quick = profile.name === 'quick';
  const tables = [];
  const goals = [];

  // a. herding
  const herd = [];
  for (const mode of MODES) herd.push(await herding(mode, tiny ? 12 : 200));
  for (const r of herd) { r.id = `herd-${r.mode}`; r.name = r.mode; r.ns = 0; }
  tables.push({
    id: 's7-herding',
    title: `7a. Herding on the model: ${H.shards} shards, one consumer ${H.slowFactor}× slower, ${herd[0].perWindow} events per window (${pct(H.load, 0)} of what the consumers take), ${tiny ? 12 : 200} windows`,
    rows: herd,
    columns: [
      { head: 'mode', get: (r) => r.name },
      { head: 'largest share in a window', get: (r) => pct(r.maxShare), align: 'right' },
      { head: 'mean |Δ share| per window', get: (r) => pct(r.meanDelta, 2), align: 'right' },
      { head: 'highest fill', get: (r) => pct(r.maxFill, 0), align: 'right' },
      { head: 'slow shard\'s highest fill after window 5', get: (r) => pct(r.maxFillSlowAfter5, 0), align: 'right' },
      { head: 'slow shard\'s settled share', get: (r) => pct(r.slowShare), align: 'right' },
      { head: 'shares within ±10 % of settled from window', get: (r) => String(r.settledFrom), align: 'right' },
      { head: 'dropped (ring full)', get: (r) => `${pct(r.dropped / (r.pushed + r.dropped), 2)}`, align: 'right' },
    ],
    legend: `Ring ${H.cap} records per shard; each window the consumers take ${H.take} records from a fast shard and ${H.take / H.slowFactor} from the slow one, in ${H.steps} steps interleaved with the pushes; fillRatioThreshold 0.7; backpressure dropNewest (so the table can count what a full ring refuses). A fair share is ${pct(1 / H.shards)}; the slow shard can take ${pct(H.take / H.slowFactor / herd[0].perWindow)} of the load.`,
  });
  const bal = herd.find((r) => r.mode === 'balanced');
  if (!tiny) {
    goals.push(goal({ id: 's7-settle', issue: '#10', text: 'balanced: every share within ±10 % of where it settles from window', value: bal.settledFrom, target: 5, op: '<=', unit: 'windows' }));
    goals.push(goal({ id: 's7-slowfill', issue: '#10', text: 'balanced: the slow shard\'s highest fill after window 5', value: 100 * bal.maxFillSlowAfter5, target: 70, op: '<=', unit: '%' }));
  }

  // b. throughput on threads
  const reps = tiny ? 0 : quick ? 1 : 5;
  const seconds = quick ? 2 : 4;
  if (reps > 0) {
    const rows = [];
    for (const peak of PEAKS) {
      const runs = Object.fromEntries(MODES.map((m) => [m, []]));
      for (let r = 0; r < reps; r++) for (const mode of MODES) runs[mode].push(await throughput(mode, seconds, peak));
      const some = MODES.map((mode) => {
        const rates = runs[mode].map((x) => (x.events / x.ms) * 1000).sort((a, b) => a - b);
        const med = rates[(rates.length - 1) >> 1];
        return {
          id: `threads-${peak}-${mode}`, name: mode, peak, ref: mode === 'leastLoaded', ns: 1e9 / med, opsPerSec: med,
          lo: rates[0], hi: rates[rates.length - 1], refused: runs[mode].reduce((a, x) => a + x.refused, 0) / reps,
          pushedRate: runs[mode].map((x) => (x.pushed / x.ms) * 1000).sort((a, b) => a - b)[(reps - 1) >> 1],
        };
      });
      withRatios(some);
      rows.push(...some);
      const b = some.find((r) => r.name === 'balanced');
      const l = some.find((r) => r.name === 'leastLoaded');
      goals.push(goal({ id: `s7-threads-${peak}`, issue: '#10', text: `balanced ÷ leastLoaded delivered events/s, producers asking ${peak.toLocaleString('en-US')}/s`, value: b.opsPerSec / l.opsPerSec, target: 1.5, op: '>=' }));
    }
    tables.push({
      id: 's7-threads', unit: 'event',
      title: `7b. Throughput on threads: the demo's workload (${T.producers} producer threads, ${T.shards} shards, ${T.shards} consumer threads waiting ${T.batchMs} ms per batch of ${T.batch}, ${T.payload}-byte events)`,
      rows,
      columns: [
        { head: 'producers ask (events/s)', get: (r) => r.peak.toLocaleString('en-US'), align: 'right' },
        { head: 'mode', get: (r) => (r.ref ? `**${r.name}**` : r.name) },
        { head: 'accepted pushes/s (median)', get: (r) => Math.round(r.pushedRate).toLocaleString('en-US'), align: 'right' },
        { head: 'delivered events/s (median)', get: (r) => Math.round(r.opsPerSec).toLocaleString('en-US'), align: 'right' },
        { head: 'range', get: (r) => `${Math.round(r.lo).toLocaleString('en-US')} – ${Math.round(r.hi).toLocaleString('en-US')}`, align: 'right' },
        { head: '÷ leastLoaded', get: (r) => fmtRatio(1 / r.ratio), align: 'right' },
        { head: 'refused pushes per run (retried)', get: (r) => Math.round(r.refused).toLocaleString('en-US'), align: 'right' },
      ],
      legend: `${reps} run${reps > 1 ? 's' : ''} per mode and rate, interleaved; each measures ${seconds} s after 1 s of warm-up; median and range of the delivered rate. 150,000/s is the demo's peak setting (its producer threads pace by the clock since 2026-12-05; runs before that pushed fixed 5 ms quotas timed by setTimeout and overshot it: about 175,000/s when nothing pushed back); 300,000/s asks more than the ${T.shards} consumers can take, so the delivered rate is what the routing lets them do. Backpressure failProducer: a full ring makes the producer back off 1 ms and retry, so nothing is lost (checked). No autoscaling (the shard count is fixed at ${T.shards}); metrics window 250 ms, fillRatioThreshold 0.5, as in the demo.`,
    });
  }

  // c. key movement
  const KEYS = tiny ? 2000 : quick ? 100_000 : 1_000_000;
  const keys = randomKeys(KEYS, 0xc0ffee);
  const moves = [];
  for (const n of [4, 8, 16]) {
    for (const removeOne of [false, true]) {
      const t0 = performance.now();
      const row = {
        id: `move-${n}-${removeOne}`, name: removeOne ? `${n} → ${n - 1} (one removed)` : `${n} → ${n + 1}`,
        ideal: removeOne ? 1 / n : 1 / (n + 1),
        affinity: await affinityAssign(keys, n, removeOne),
        hashring: ringAssign(keys, n, removeOne, makeHashring),
        consistentHash: ringAssign(keys, n, removeOne, makeConsistentHash),
        jump: jumpAssign(keys, n, removeOne),
      };
      row.wallMs = performance.now() - t0;
      moves.push(row);
    }
  }
  tables.push({
    id: 's7-movement',
    title: `7c. Key movement: fraction of ${KEYS.toLocaleString('en-US')} random keys that change shard`,
    rows: moves,
    columns: [
      { head: 'change', get: (r) => r.name },
      { head: 'ideal', get: (r) => pct(r.ideal, 2), align: 'right' },
      { head: '**affinity**', get: (r) => pct(r.affinity, 2), align: 'right' },
      { head: 'hashring', get: (r) => pct(r.hashring, 2), align: 'right' },
      { head: 'consistent-hash', get: (r) => pct(r.consistentHash, 2), align: 'right' },
      { head: 'jump hash', get: (r) => pct(r.jump, 2), align: 'right' },
    ],
    legend: 'Removing one: the middle shard for affinity, hashring and consistent-hash; jump consistent hash can only remove the last bucket (removing another renumbers the buckets and moves far more). Ideal: 1/(n+1) on adding, 1/n (the removed shard\'s own keys) on removing.',
  });
  if (!tiny) {
    const worstOver = Math.max(...moves.map((r) => r.affinity - r.ideal));
    goals.push(goal({ id: 's7-movement', issue: '#10', text: 'affinity key movement above the ideal 1/(n+1) (or 1/n on removal), worst case', value: 100 * worstOver, target: 1, op: '<=', unit: 'pp' }));
  }

  // d. load bound
  const ZKEYS = tiny ? 5000 : 1_000_000;
  const zkeys = randomKeys(ZKEYS, 0x21bf);
  const cfg = { shards: 8, windows: tiny ? 6 : 60, perWindow: tiny ? 5000 : 200_000, measure: tiny ? 2 : 20 };
  const bound = [];
  for (const [name, how] of [
    ['affinity, loadBound 0.25', () => boundedLoad('affinity', zkeys, zipfSampler(ZKEYS, 0.9, 9), { ...cfg, loadBound: 0.25 })],
    ['affinity, loadBound 0.1', () => boundedLoad('affinity', zkeys, zipfSampler(ZKEYS, 0.9, 9), { ...cfg, loadBound: 0.1 })],
    ['balanced', () => boundedLoad('balanced', zkeys, zipfSampler(ZKEYS, 0.9, 9), cfg)],
    ['hashring', () => staticLoad(new HashRing(Array.from({ length: 8 }, (_, i) => `shard-${i}`)), zkeys, zipfSampler(ZKEYS, 0.9, 9), cfg)],
    ['consistent-hash', () => staticLoad(makeConsistentHash(Array.from({ length: 8 }, (_, i) => `shard-${i}`)), zkeys, zipfSampler(ZKEYS, 0.9, 9), cfg)],
  ]) {
    const t0 = performance.now();
    const r = await how();
    bound.push({ id: `bound-${name}`, name, ...r, wallMs: performance.now() - t0 });
  }
  tables.push({
    id: 's7-bound',
    title: `7d. Load bound: Zipf(0.9) popularity over ${ZKEYS.toLocaleString('en-US')} keys, ${cfg.shards} shards, ${cfg.perWindow.toLocaleString('en-US')} events per window`,
    rows: bound,
    columns: [
      { head: 'routing', get: (r) => r.name },
      { head: 'busiest ÷ mean (worst window)', get: (r) => r.worst.toFixed(3), align: 'right' },
      { head: 'busiest ÷ mean (mean)', get: (r) => r.mean.toFixed(3), align: 'right' },
      { head: 'keys away from their spill-free shard', get: (r) => (r.name.startsWith('affinity') ? pct(r.away, 2) : ''), align: 'right' },
    ],
    legend: `Over the last ${cfg.measure} of ${cfg.windows} windows (the load-aware modes see each window's counts through the collectors and rebuild at collectMetrics). A hash ring's assignment is static, so its ratio is its hash imbalance plus the hot keys' weight.`,
  });
  if (!tiny) {
    const a = bound.find((r) => r.name === 'affinity, loadBound 0.25');
    goals.push(goal({ id: 's7-bound', issue: '#10', text: 'affinity (ε 0.25): busiest shard ÷ mean under Zipf(0.9), mean over the measured windows', value: a.mean, target: 1.25, op: '<=', unit: '×' }));
  }

  // e. cost
  const select = await selectCost(profile);
  tables.push({ id: 's7-select', unit: 'op', title: '7e. selectShard per mode (8 shards; 65,536 hashes per call)', rows: select });
  const collect = await collectCost(profile, tiny ? 64 : 4096);
  tables.push({ id: 's7-collect', unit: 'op', title: `7f. collectMetrics() per mode at ${tiny ? 64 : 4096} shards`, rows: collect });
  const batch = await batchCost(profile);
  tables.push({ id: 's7-batch', unit: 'event', title: '7g. Batch calls per mode: 256 16-byte events a call, keys over 4 shards, one thread, per event', rows: batch,
    legend: 'Timed alone; the rings are emptied after each call, untimed. affinity runs with key order on, its default.' });
  if (!tiny) {
    const worstSelect = Math.max(...select.map((r) => r.ratio));
    goals.push(goal({ id: 's7-select', issue: '#10', text: 'selectShard: slowest mode ÷ leastLoaded', value: worstSelect, target: 1.05, op: '<=' }));
    const worstCollect = Math.max(...collect.map((r) => r.ratio));
    goals.push(goal({ id: 's7-collect', issue: '#10', text: 'collectMetrics() at 4096 shards: slowest mode ÷ leastLoaded', value: worstCollect, target: 2, op: '<=' }));
  }

  return {
    intro: 'Every table of this scenario comes from the same process run; ratios are between its rows.',
    tables, goals,
  };
}
