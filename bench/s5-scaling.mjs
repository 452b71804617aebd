// Scenario 5 — scaling reaction. A ShardManager with an injected clock is driven one metrics
// window at a time: push that window's events, let a simulated consumer take a fixed number of
// records from every shard (poll), advance the clock by metricsWindowMs, tick(). The policy
// only ever sees the injected clock, so "policy ms" is the reaction time a production manager
// (whose timer ticks every metricsWindowMs) would show; "wall ms" is the real time this
// process spent getting there, and "tick() µs" the manager's own cost per scaling pass.
import { ShardManager, ScalingPolicy } from 'shard-mapper';
import { rng } from '../shared/seeded-random.mjs';
import { consume, check } from './lib.mjs';

export const id = 's5';
export const title = '5. Scaling reaction (injected clock for the policy, real time for the measurement)';

const CAP = 4096; // records per ring
const TAKE = CAP / 8; // records the simulated consumer takes from each shard per window
const MAX_WINDOWS = 20_000;

async function reaction(presetName, preset) {
  const policy = { ...preset, maxShards: Math.max(preset.maxShards, preset.minShards + 2) };
  const clock = { t: 0 };
  const mgr = await ShardManager.create({
    initialShards: policy.minShards, ringBufferCapacity: CAP, maxPayloadBytes: 16,
    backpressure: { kind: 'dropNewest' }, policy, clock: () => clock.t,
  });
  const mapper = mgr.mapper;
  const win = policy.metricsWindowMs;
  const payload = new Uint8Array(16).fill(7);
  const next = rng(17);
  let tickUs = 0;
  let ticks = 0;
  let polled = 0;

  function windowOf(events) {
    for (let i = 0; i < events; i++) mgr.push(next(), payload);
    for (const shard of mapper.allShardIds()) polled += mgr.poll(shard, TAKE).length;
    clock.t += win;
    const t0 = performance.now();
    mgr.tick();
    tickUs += (performance.now() - t0) * 1000;
    ticks++;
  }

  /** Run windows at `events` per window until `done()`; returns the phase's figures. */
  function phase(name, events, done) {
    const t0 = performance.now();
    const c0 = clock.t;
    const k0 = ticks;
    const u0 = tickUs;
    const before = mapper.activeShardCount();
    let n = 0;
    while (!done() && n < MAX_WINDOWS) { windowOf(typeof events === 'function' ? events() : events); n++; }
    const reached = done();
    return {
      preset: presetName, phase: name, reached, ticks: ticks - k0, policyMs: clock.t - c0,
      wallMs: performance.now() - t0, tickUs: n > 0 ? (tickUs - u0) / n : 0,
      shards: `${before} → ${mapper.activeShardCount()}`,
    };
  }

  const rows = [];
  // Light load (a quarter of what the active shards' consumers take): must stay at minShards.
  const light = phase('light load, 50 windows: stays at minShards', () => Math.floor((TAKE * mapper.activeShardCount()) / 4), (() => {
    let n = 0;
    return () => n++ >= 50;
  })());
  light.reached = mapper.activeShardCount() === policy.minShards;
  rows.push(light);
  // Load step: twice what the active shards' consumers take, until a new shard is Active.
  const a0 = mapper.activeShardCount();
  const stepEvents = 2 * TAKE * a0;
  const up = phase(`load step to 2× consumer capacity (${stepEvents}/window) → new shard Active`, stepEvents, () => mapper.activeShardCount() > a0);
  rows.push(up);
  const added = mapper.activeShardIds().filter((x) => x >= policy.minShards);
  // Idleness: nothing pushed; the consumer drains, then the manager scales in.
  const a1 = mapper.activeShardCount();
  const decided = phase('idle → scale-down decided (draining)', 0, () => mapper.activeShardCount() < a1);
  const draining = mapper.allShardIds().filter((x) => mapper.shardState(x) === 'draining');
  const removed = phase('draining → shard removed', 0, () => draining.length > 0 && draining.every((x) => mapper.shardState(x) === undefined));
  rows.push(decided, removed);
  rows.push({
    preset: presetName, phase: 'idle → shard removed (total)', reached: decided.reached && removed.reached,
    ticks: decided.ticks + removed.ticks, policyMs: decided.policyMs + removed.policyMs,
    wallMs: decided.wallMs + removed.wallMs,
    tickUs: (decided.tickUs * decided.ticks + removed.tickUs * removed.ticks) / Math.max(1, decided.ticks + removed.ticks),
    shards: `${a1} → ${mapper.activeShardCount()}`,
  });
  const s = mgr.stats();
  check(s.pushed === s.delivered + s.inFlight && s.pushed === polled + s.inFlight, 'every accepted event was polled or is still in a ring');
  consume(s.pushed + added.length);
  await mgr.close();
  return { rows, policy };
}

export async function run(profile) {
  const presets = [['default', ScalingPolicy.default()], ['highThroughput', ScalingPolicy.highThroughput()]];
  const rows = [];
  const legends = [];
  // The policy path is deterministic (injected clock, seeded hashes); only the real time
  // varies, so the whole reaction is repeated and each phase reports its median wall time.
  const reps = profile.name === 'full' ? 5 : 1;
  for (const [name, preset] of presets) {
    const runs = [];
    for (let i = 0; i < reps; i++) runs.push(await reaction(name, preset));
    const r = runs[0];
    for (let k = 0; k < r.rows.length; k++) {
      const med = (f) => runs.map((x) => f(x.rows[k])).sort((a, b) => a - b)[(runs.length - 1) >> 1];
      check(runs.every((x) => x.rows[k].ticks === r.rows[k].ticks), 'the policy path is deterministic');
      r.rows[k].wallMs = med((x) => x.wallMs);
      r.rows[k].tickUs = med((x) => x.tickUs);
    }
    rows.push(...r.rows);
    const p = r.policy;
    legends.push(`${name}: window ${p.metricsWindowMs} ms, fill > ${p.fillRatioThreshold}, cooldown ${p.cooldownMs} ms, scaleDownDelay ${p.scaleDownDelayMs} ms, minShards ${p.minShards}, maxShards ${p.maxShards}`);
    if (profile.name === 'tiny') break;
  }
  for (const r of rows) { r.id = `${r.preset}-${r.phase}`; r.name = r.phase; }
  return {
    tables: [{
      id: 's5', title: `5. Reaction of tick() to a load step and to idleness (ring ${CAP} records, simulated consumer takes ${TAKE} per shard per window)`,
      rows,
      columns: [
        { head: 'preset', get: (r) => r.preset },
        { head: 'phase', get: (r) => r.phase },
        { head: 'reached', get: (r) => (r.reached ? 'yes' : '**no**') },
        { head: 'ticks', get: (r) => String(r.ticks), align: 'right' },
        { head: 'policy ms', get: (r) => Math.round(r.policyMs).toLocaleString('en-US'), align: 'right' },
        { head: 'wall ms', get: (r) => r.wallMs.toFixed(r.wallMs < 10 ? 2 : 1), align: 'right' },
        { head: 'tick() µs', get: (r) => r.tickUs.toFixed(1), align: 'right' },
        { head: 'active shards', get: (r) => r.shards },
      ],
      legend: `Median of ${reps} run${reps > 1 ? 's' : ''} per preset (ticks and policy ms are deterministic). Policy presets on this machine — ${legends.join('; ')}. "policy ms" is the injected clock (= real time in production, where tick() runs every metricsWindowMs); "wall ms" is the real time this bench spent simulating it (pushes, polls and ticks).`,
    }],
  };
}
