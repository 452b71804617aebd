// shard-mapper/prometheus: scrape a prom-client registry's text and check the values
// against the manager they describe.
import { describe, expect, it } from 'vitest';
import { Registry } from 'prom-client';
import { ShardManager, BackpressureMode } from 'shard-mapper';
import { registerShardManagerMetrics } from 'shard-mapper/prometheus';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Parse the text exposition format into `name{labels}` → value. */
function parse(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

function series(samples: Map<string, number>, name: string, labels: Record<string, string> = {}): number | undefined {
  const inner = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',');
  return samples.get(inner ? `${name}{${inner}}` : name);
}

async function setup(options: { prefix?: string; labels?: Record<string, string> } = {}) {
  const clock = { t: 0 };
  const registry = new Registry();
  const metrics = registerShardManagerMetrics({ registry, ...options });
  const manager = await ShardManager.create({
    initialShards: 2,
    ringBufferCapacity: 8,
    backpressure: BackpressureMode.DropNewest,
    clock: () => clock.t,
    drainGraceMs: 10,
    policy: { minShards: 1, maxShards: 4, cooldownMs: 100, scaleDownDelayMs: 200, fillRatioThreshold: 0.5, metricsWindowMs: 100 },
    onEvent: metrics.onEvent,
  });
  metrics.observe(manager);
  const scrape = async () => parse(await registry.metrics());
  return { clock, registry, metrics, manager, scrape };
}

describe('shard-mapper/prometheus', () => {
  it('key order (routing affinity): waiting slots, per-shard moving slots, the wait and the pushes held back', async () => {
    const clock = { t: 0 };
    const registry = new Registry();
    const metrics = registerShardManagerMetrics({ registry });
    const manager = await ShardManager.create({
      routing: 'affinity', initialShards: 1, ringBufferCapacity: 64, backpressure: BackpressureMode.DropNewest,
      clock: () => clock.t, policy: { minShards: 1, maxShards: 4, autoScale: false }, onEvent: metrics.onEvent,
    });
    metrics.observe(manager);
    const scrape = async () => parse(await registry.metrics());
    const hashes = Array.from({ length: 40 }, (_, i) => Math.imul(i + 1, 0x9e3779b1) >>> 0);
    for (const h of hashes) manager.push(h, 'before'); // all on shard 0, not consumed
    const added = await manager.addShard(); // a part of the slots moves to it, behind shard 0's backlog
    clock.t = 250;
    const moved = hashes.filter((h) => manager.mapper.selectShard(h) === added);
    expect(moved.length).toBeGreaterThan(0);
    for (const h of moved) expect(manager.push(h, 'after')).toBe(false); // waits: dropped under dropNewest
    let s = await scrape();
    const stats = manager.stats();
    expect(stats.keyOrder!.waitingSlots).toBeGreaterThan(0);
    expect(series(s, 'shard_mapper_key_order_waiting_slots')).toBe(stats.keyOrder!.waitingSlots);
    expect(series(s, 'shard_mapper_key_order_oldest_wait_seconds')).toBeCloseTo(0.25);
    expect(series(s, 'shard_mapper_key_order_moved_slots_total')).toBe(stats.keyOrder!.movedSlots);
    expect(series(s, 'shard_mapper_shard_slots_moving', { shard: '0', direction: 'out' })).toBe(stats.keyOrder!.waitingSlots);
    expect(series(s, 'shard_mapper_shard_slots_moving', { shard: String(added), direction: 'in' })).toBe(stats.keyOrder!.waitingSlots);
    expect(series(s, 'shard_mapper_events_dropped_total', { reason: 'moving' })).toBe(moved.length);
    // Shard 0's consumer takes its backlog: the wait ends, the gauges go back to 0.
    manager.poll(0);
    clock.t = 400;
    for (const h of moved) expect(manager.push(h, 'after')).toBe(true);
    s = await scrape();
    expect(series(s, 'shard_mapper_key_order_waiting_slots')).toBe(0);
    expect(series(s, 'shard_mapper_shard_slots_moving', { shard: '0', direction: 'out' })).toBe(0);
    expect(series(s, 'shard_mapper_key_order_longest_wait_seconds')).toBeGreaterThanOrEqual(0.25);
    await manager.close();
  });

  it('publishes per-shard state, ring fill and totals that match stats() at scrape time', async () => {
    const { manager, scrape, registry } = await setup();
    for (let i = 0; i < 7; i++) manager.push(`k${i}`, `event ${i}`);
    let s = await scrape();
    const stats = manager.stats();
    expect(stats.pushed).toBe(7);
    expect(series(s, 'shard_mapper_events_pushed_total')).toBe(7);
    expect(series(s, 'shard_mapper_events_delivered_total')).toBe(0);
    expect(series(s, 'shard_mapper_events_in_flight')).toBe(7);
    expect(series(s, 'shard_mapper_shards', { state: 'active' })).toBe(2);
    expect(series(s, 'shard_mapper_shards', { state: 'draining' })).toBe(0);
    expect(series(s, 'shard_mapper_shards_max')).toBe(4);
    expect(series(s, 'shard_mapper_shards_min')).toBe(1);
    expect(series(s, 'shard_mapper_ring_capacity')).toBe(8);
    expect(series(s, 'shard_mapper_shard_ids_left')).toBe(manager.mapper.shardIdsLeft());
    expect(manager.mapper.shardIdsLeft()).toBe(65535 - 2);
    for (const shard of stats.shards) {
      const id = String(shard.id);
      expect(series(s, 'shard_mapper_shard_state', { shard: id, state: 'active' })).toBe(1);
      expect(series(s, 'shard_mapper_shard_state', { shard: id, state: 'stopped' })).toBe(0);
      expect(series(s, 'shard_mapper_shard_ring_length', { shard: id })).toBe(shard.length);
      expect(series(s, 'shard_mapper_shard_fill_ratio', { shard: id })).toBeCloseTo(shard.length / 8);
      expect(series(s, 'shard_mapper_shard_pushed_total', { shard: id })).toBe(shard.pushed);
    }
    // Before the scaling loop has collected a window there is no window figure to show.
    expect(series(s, 'shard_mapper_shard_event_rate', { shard: '0' })).toBeUndefined();

    // Fresh values at every scrape: deliver everything, scrape again.
    for (const id of manager.mapper.allShardIds()) manager.poll(id);
    s = await scrape();
    expect(series(s, 'shard_mapper_events_delivered_total')).toBe(7);
    expect(series(s, 'shard_mapper_events_in_flight')).toBe(0);
    expect(series(s, 'shard_mapper_shard_ring_length', { shard: '0' })).toBe(0);

    // The exposition declares the types scrapers expect.
    const text = await registry.metrics();
    expect(text).toContain('# TYPE shard_mapper_events_pushed_total counter');
    expect(text).toContain('# TYPE shard_mapper_shard_fill_ratio gauge');
  });

  it('shows window figures once collected, drops by reason, unrouted pushes and scaling decisions', async () => {
    const { manager, clock, scrape } = await setup();
    // Overload: both rings past the 0.5 threshold, extra pushes dropped (dropNewest).
    for (let i = 0; i < 40; i++) manager.push(i * 0x9e3779b1 >>> 0, `e${i}`);
    const before = manager.stats();
    expect(before.drops.newest).toBeGreaterThan(0);
    clock.t = 200;
    const decision = manager.tick();
    expect(decision).toEqual({ kind: 'scaleUp', count: 1 });
    let s = await scrape();
    expect(series(s, 'shard_mapper_events_dropped_total', { reason: 'newest' })).toBe(before.drops.newest);
    expect(series(s, 'shard_mapper_events_dropped_total', { reason: 'oldest' })).toBe(0);
    expect(series(s, 'shard_mapper_events_dropped_total', { reason: 'sampled' })).toBe(0);
    expect(series(s, 'shard_mapper_scaling_decisions_total', { decision: 'scaleUp' })).toBe(1);
    expect(series(s, 'shard_mapper_scaling_shards_total', { decision: 'scaleUp' })).toBe(1);
    expect(series(s, 'shard_mapper_scaling_decisions_total', { decision: 'scaleDown' })).toBe(0);
    expect(series(s, 'shard_mapper_shards', { state: 'active' })).toBe(3);
    expect(series(s, 'shard_mapper_shard_transitions_total', { transition: 'provisioned' })).toBe(3);
    expect(series(s, 'shard_mapper_shard_transitions_total', { transition: 'activated' })).toBe(3);
    expect(series(s, 'shard_mapper_consumer_errors_total')).toBe(0);
    expect(series(s, 'shard_mapper_tick_errors_total')).toBe(0);
    for (const id of [0, 1]) {
      const last = manager.mapper.lastMetrics(id)!;
      expect(series(s, 'shard_mapper_shard_event_rate', { shard: String(id) })).toBe(last.eventRate);
      expect(series(s, 'shard_mapper_shard_avg_push_latency_ns', { shard: String(id) })).toBe(last.avgPushLatencyNs);
      expect(series(s, 'shard_mapper_shard_avg_flush_latency_us', { shard: String(id) })).toBe(last.avgFlushLatencyUs);
      expect(series(s, 'shard_mapper_shard_weight', { shard: String(id) })).toBeCloseTo(last.weight);
      expect(series(s, 'shard_mapper_shard_dropped_total', { shard: String(id) })).toBe(
        manager.stats().shards.find((x) => x.id === id)!.dropped,
      );
    }
    expect(series(s, 'shard_mapper_shard_event_rate', { shard: '0' })).toBeGreaterThan(0);

    // Idle: everything delivered, the loop drains back to minShards; removed shards' series
    // disappear, totals stay.
    for (const id of manager.mapper.allShardIds()) manager.poll(id);
    for (let k = 0; k < 30 && manager.mapper.totalShardCount() > 1; k++) {
      clock.t += 100;
      manager.tick();
    }
    expect(manager.mapper.totalShardCount()).toBe(1);
    s = await scrape();
    expect(series(s, 'shard_mapper_scaling_decisions_total', { decision: 'scaleDown' })).toBeGreaterThanOrEqual(1);
    expect(series(s, 'shard_mapper_shard_transitions_total', { transition: 'removed' })).toBe(2);
    expect(series(s, 'shard_mapper_shards', { state: 'active' })).toBe(1);
    const remaining = String(manager.mapper.activeShardIds()[0]);
    const shardsSeen = [...s.keys()].filter((k) => k.startsWith('shard_mapper_shard_ring_length{'));
    expect(shardsSeen).toEqual([`shard_mapper_shard_ring_length{shard="${remaining}"}`]);
    expect(series(s, 'shard_mapper_events_pushed_total')).toBe(before.pushed);
    expect(series(s, 'shard_mapper_events_delivered_total')).toBe(before.pushed);

    // Unrouted: no Active shard... not reachable with minShards 1, so count directly instead.
    expect(series(s, 'shard_mapper_events_unrouted_total')).toBe(manager.stats().unrouted);
  });

  it('counts unrouted pushes when no shard is active', async () => {
    const registry = new Registry();
    const metrics = registerShardManagerMetrics({ registry });
    const manager = await ShardManager.create({ initialShards: 0, ringBufferCapacity: 8 });
    metrics.observe(manager);
    expect(manager.push('k', 'lost')).toBe(false);
    expect(manager.push('k', 'lost')).toBe(false);
    const s = parse(await registry.metrics());
    expect(series(s, 'shard_mapper_events_unrouted_total')).toBe(2);
    expect(series(s, 'shard_mapper_events_pushed_total')).toBe(0);
    expect(series(s, 'shard_mapper_shards', { state: 'active' })).toBe(0);
  });

  it('counts consumer errors, consumer restarts and tick errors from onEvent', async () => {
    const { metrics, scrape } = await setup();
    metrics.onEvent({ type: 'consumerError', shardId: 0, error: new Error('boom'), at: 1 });
    metrics.onEvent({ type: 'consumerError', shardId: 1, error: new Error('boom'), at: 2 });
    metrics.onEvent({ type: 'consumerRestarted', worker: 0, exitCode: 1, rewound: 12, at: 3 });
    metrics.onEvent({ type: 'producerStallSkipped', shardId: 0, records: 3, at: 3 });
    metrics.onEvent({ type: 'tickError', error: new Error('tick'), at: 4 });
    const s = await scrape();
    expect(series(s, 'shard_mapper_consumer_errors_total')).toBe(2);
    expect(series(s, 'shard_mapper_consumer_restarts_total')).toBe(1);
    expect(series(s, 'shard_mapper_consumer_records_rewound_total')).toBe(12);
    expect(series(s, 'shard_mapper_tick_errors_total')).toBe(1);
  });

  it('honours prefix and constant labels, and unregisters cleanly', async () => {
    const { registry, metrics, manager, scrape } = await setup({ prefix: 'ingest_', labels: { service: 'api' } });
    manager.push('k', 'v');
    const s = await scrape();
    expect(series(s, 'ingest_events_pushed_total', { service: 'api' })).toBe(1);
    expect(series(s, 'ingest_shards', { service: 'api', state: 'active' })).toBe(2);
    expect(metrics.names.every((n) => n.startsWith('ingest_'))).toBe(true);
    metrics.unregister();
    expect(await registry.metrics()).toBe('\n');
    // The same registry can take a fresh set after unregister (no duplicate-name error).
    registerShardManagerMetrics({ registry, prefix: 'ingest_', manager });
    expect(parse(await registry.metrics()).get('ingest_events_pushed_total')).toBe(1);
  });

  it('refuses bad options when registering (not at the first scrape), registering nothing', async () => {
    const registry = new Registry();
    const bad: [unknown, RegExp][] = [
      [{ manager: 5 }, /options\.manager must be a ShardManager \(or a Redis node's metricsView\(\)\), got 5/],
      [{ prefx: 'x_' }, /registerShardManagerMetrics: options\.prefx is not an option \(known: registry, prefix, labels, manager\)/],
      [{ prefix: null }, /options\.prefix must be a string of metric-name characters/],
      [{ prefix: 'my-app ' }, /options\.prefix must be a string of metric-name characters/],
      [{ labels: { shard: 'x' } }, /options\.labels\.shard is a label the series use themselves/],
      [{ labels: { app: 5 } }, /options\.labels\.app must be a string, got 5/],
      [{ registry: {} }, /options\.registry must be a prom-client Registry/],
    ];
    for (const [options, message] of bad) {
      expect(() => registerShardManagerMetrics({ registry, ...(options as object) } as never), JSON.stringify(options)).toThrow(message);
    }
    expect(() => registerShardManagerMetrics(null as never)).toThrow(/options must be an object, got null/);
    expect(await registry.getMetricsAsJSON()).toEqual([]);
    const metrics = registerShardManagerMetrics({ registry });
    expect(() => metrics.observe(5 as never)).toThrow(/observe: manager must be a ShardManager/);
    metrics.unregister();
  });

  it('scraping never resets the scaling windows', async () => {
    const { manager, scrape } = await setup();
    for (let i = 0; i < 3; i++) manager.push(`k${i}`, 'x');
    await scrape();
    await scrape();
    const metrics = manager.mapper.collectMetrics();
    expect(metrics.reduce((n, m) => n + m.eventRate, 0)).toBe(3);
  });

  it('is a separate entry: the package root never imports prom-client', () => {
    const dist = fileURLToPath(new URL('../dist/', import.meta.url));
    const root = readFileSync(`${dist}index.js`, 'utf8');
    expect(root).not.toContain('prometheus');
    const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../package.json', import.meta.url)), 'utf8'));
    expect(pkg.exports['./prometheus']).toEqual({ types: './dist/prometheus.d.ts', default: './dist/prometheus.js' });
    expect(pkg.peerDependencies['prom-client']).toBeDefined();
    expect(pkg.peerDependenciesMeta['prom-client'].optional).toBe(true);
    expect(pkg.dependencies?.['prom-client']).toBeUndefined();
    // No module reachable from the root entry imports prom-client.
    const seen = new Set<string>();
    const visit = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      const code = readFileSync(`${dist}${file}`, 'utf8');
      expect(code, `${file} imports prom-client`).not.toMatch(/from ['"]prom-client['"]/);
      for (const m of code.matchAll(/from ['"]\.\/([\w.-]+\.js)['"]/g)) visit(m[1]!);
    };
    visit('index.js');
    expect(seen.size).toBeGreaterThan(5);
  });
});
