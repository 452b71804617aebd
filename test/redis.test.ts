// shard-mapper/redis against a real redis-server (started here on 127.0.0.1, random port,
// temporary directory, append-only file with fsync always). One process: correctness of
// nodes, the controller and consumers. Scaling decisions run on an injected clock, driven
// with node.tick(); waits are for conditions (events consumed), never for logic.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Registry } from 'prom-client';
import { BackpressureError, ShardManager, type BackpressureMode } from 'shard-mapper';
import { registerShardManagerMetrics } from 'shard-mapper/prometheus';
import { DedupFilter, RedisShardManager, serveShardConsumers, type RedisManagerEvent, type ShardConsumers, type ShardRecord } from 'shard-mapper/redis';
import { RedisTestServer, redisAvailable } from './helpers/redis-server.js';
import { sleep, until } from './helpers/delivery.js';
import { affinityHomes, routingSlots } from '../dist/routing.js';

const available = redisAvailable();
let server: RedisTestServer;
let nsCounter = 0;
const ns = () => `t${process.pid}-${++nsCounter}`;

beforeAll(async () => { if (available) server = await RedisTestServer.start(); });
afterAll(async () => { await server?.dispose(); });


/** A consumer that records every delivery: shard, payload text, dedup id. */
async function collector(namespace: string, extra: { leaseMs?: number; consume?: (r: ShardRecord[], s: number) => void | Promise<void> } = {}) {
  const got: { shard: number; text: string; id: string }[] = [];
  const consumers = await serveShardConsumers({
    redis: server.url, namespace, leaseMs: extra.leaseMs ?? 1000, idleMs: 5,
    consume: async (records, shard) => {
      if (extra.consume) await extra.consume(records, shard);
      for (const r of records) got.push({ shard, text: r.payload.toString(), id: r.dedupId });
    },
  });
  return { got, consumers };
}

/** Per shard, the texts `p:<seq>` of each producer must rise. */
function checkOrder(got: { shard: number; text: string }[]): string[] {
  const last = new Map<string, number>();
  const bad: string[] = [];
  for (const g of got) {
    const [producer, seq] = g.text.split(':');
    const key = `${g.shard}/${producer}`;
    const n = Number(seq);
    if ((last.get(key) ?? -1) >= n) bad.push(`${key}: ${n} after ${last.get(key)}`);
    last.set(key, n);
  }
  return bad;
}

describe.skipIf(!available)('RedisShardManager: one node, consumers, one process', () => {
  it('stores every accepted event and consumers get each once, in push order per shard, with unique dedup ids', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 3, policy: { maxShards: 4, metricsWindowMs: 60_000 } });
    let accepted = 0;
    for (let i = 0; i < 5000; i++) if (node.push(`key-${i % 97}`, `a:${i}`)) accepted++;
    accepted += node.pushBatch(Array.from({ length: 2000 }, (_, i) => [i * 7919, `a:${5000 + i}`] as const));
    await node.flush();
    expect(accepted).toBe(7000);
    expect(node.stats()).toMatchObject({ pushed: 7000, stored: 7000, buffered: 0, dropped: 0, unrouted: 0 });
    const { got, consumers } = await collector(namespace);
    await until(() => got.length >= 7000, '7000 deliveries');
    await consumers.close();
    await node.close();
    expect(got.length).toBe(7000);
    expect(new Set(got.map((g) => g.text)).size).toBe(7000);
    expect(new Set(got.map((g) => g.id)).size).toBe(7000);
    expect(checkOrder(got)).toEqual([]);
    expect(new Set(got.map((g) => g.shard))).toEqual(new Set([0, 1, 2]));
    // Every stream entry was acknowledged and deleted.
    for (const id of [0, 1, 2]) expect(server.cli('XLEN', `${namespace}:shard:{${namespace}:${id}}`)).toBe('0');
  });

  it('a consume call that throws is retried with the same records (same dedup ids, same order) and reported to onError', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 2, policy: { metricsWindowMs: 60_000 } });
    for (let i = 0; i < 3000; i++) {
      node.push(i * 1_431_655, `t:${i}`);
      if (i % 100 === 99) await node.flush(); // many frames, so many consume calls
    }
    const deliveries: { shard: number; text: string; id: string }[] = [];
    const errors: string[] = [];
    let calls = 0;
    const consumers = await serveShardConsumers({
      redis: server.url, namespace, idleMs: 5, batchSize: 1,
      consume: (records, shard) => {
        for (const r of records) deliveries.push({ shard, text: r.payload.toString(), id: r.dedupId });
        if (++calls % 3 === 0) throw new Error(`flaky downstream (call ${calls})`);
      },
      onError: (e, shard) => errors.push(`${shard}: ${e.message}`),
    });
    const firstOf = () => new Map(deliveries.map((d) => [d.text, d] as const));
    await until(() => firstOf().size >= 3000, 'every event at least once');
    await consumers.close();
    await node.close();
    expect(errors.length).toBeGreaterThan(0);
    expect(errors[0]).toMatch(/flaky downstream/);
    // Every repeat carries the id of its first delivery.
    const ids = new Map<string, Set<string>>();
    for (const d of deliveries) { let set = ids.get(d.text); if (!set) ids.set(d.text, set = new Set()); set.add(d.id); }
    expect([...ids.values()].every((set) => set.size === 1)).toBe(true);
    expect(deliveries.length).toBeGreaterThan(3000); // the failed batches came again
    // DedupFilter-style view: drop what was seen, then per shard the order is the push order.
    const seen = new Set<string>();
    const once = deliveries.filter((d) => {
      if (seen.has(d.id)) return false;
      seen.add(d.id);
      return true;
    });
    expect(once).toHaveLength(3000);
    expect(checkOrder(once)).toEqual([]);
  });

  it('pushBatch under failProducer: a full send buffer stops the batch with BackpressureError.accepted; the accepted prefix is stored', async () => {
    const restartable = await RedisTestServer.start();
    try {
      const namespace = ns();
      const node = await RedisShardManager.create({ redis: restartable.url, namespace, initialShards: 1, ringBufferCapacity: 5, policy: { metricsWindowMs: 60_000 } });
      await restartable.stop();
      let caught: unknown;
      try {
        node.pushBatch([1, 1, 1, 1, 1, 1, 1, 1], ['b:0', 'b:1', 'b:2', 'b:3', 'b:4', 'b:5', 'b:6', 'b:7']);
      } catch (e) { caught = e; }
      expect(caught).toBeInstanceOf(BackpressureError);
      expect(caught).toMatchObject({ accepted: 5, shardId: 0 });
      expect(node.stats()).toMatchObject({ pushed: 5, buffered: 5, dropped: 0, drops: { refused: 1 } }); // a refusal is not a drop
      await restartable.restart();
      await node.close();
      const got: string[] = [];
      const consumers = await serveShardConsumers({ redis: restartable.url, namespace, idleMs: 5, consume: (records) => { for (const r of records) got.push(r.payload.toString()); } });
      await until(() => got.length >= 5, '5 deliveries');
      await consumers.close();
      expect(got).toEqual(['b:0', 'b:1', 'b:2', 'b:3', 'b:4']);
    } finally {
      await restartable.dispose();
    }
  });

  it('routes with the WebAssembly selection over the table: a key goes where the route says', async () => {
    const namespace = ns();
    // 'leastLoaded': one route entry per shard, so the arithmetic below is the contract's
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 4, policy: { maxShards: 4, metricsWindowMs: 60_000 }, routing: 'leastLoaded' });
    expect(node.table().route).toEqual([0, 1, 2, 3]);
    // floor(hash · 4 / 2^32): hashes 0, 2^30, 2^31, 3·2^30 land on shards 0..3.
    for (let s = 0; s < 4; s++) node.push(s * 2 ** 30, `h:${s}`);
    await node.flush();
    const { got, consumers } = await collector(namespace);
    await until(() => got.length >= 4, '4 deliveries');
    await consumers.close();
    await node.close();
    expect(got.map((g) => [g.text, g.shard]).sort()).toEqual([['h:0', 0], ['h:1', 1], ['h:2', 2], ['h:3', 3]]);
  });

  it('keeps accepting while redis-server restarts, and flush resolves once everything is stored (append-only file)', async () => {
    const restartable = await RedisTestServer.start();
    try {
      const namespace = ns();
      const node = await RedisShardManager.create({ redis: restartable.url, namespace, initialShards: 2, ringBufferCapacity: 100_000, policy: { metricsWindowMs: 60_000 } });
      for (let i = 0; i < 1000; i++) expect(node.push(i, `r:${i}`)).toBe(true);
      await node.flush();
      await restartable.stop();
      for (let i = 1000; i < 3000; i++) expect(node.push(i, `r:${i}`)).toBe(true); // Redis is away
      let flushed = false;
      const flushing = node.flush().then(() => { flushed = true; });
      await new Promise((r) => setTimeout(r, 200));
      expect(flushed).toBe(false);
      expect(node.stats().buffered).toBe(2000);
      await restartable.restart();
      await flushing;
      expect(node.stats()).toMatchObject({ pushed: 3000, stored: 3000, buffered: 0 });
      expect(node.stats().retries).toBeGreaterThan(0);
      const got: string[] = [];
      const consumers = await serveShardConsumers({ redis: restartable.url, namespace, idleMs: 5, consume: (records) => { for (const r of records) got.push(r.payload.toString()); } });
      await until(() => got.length >= 3000, '3000 deliveries');
      await consumers.close();
      await node.close();
      expect(new Set(got).size).toBe(3000);
      expect(got.length).toBe(3000); // no timeout happened mid-XADD here, so no repeat either
    } finally {
      await restartable.dispose();
    }
  });

  it('applies the backpressure modes to the local send buffer while Redis is away', async () => {
    const restartable = await RedisTestServer.start();
    try {
      const namespace = ns();
      const make = (backpressure: ConstructorParameters<typeof Object>[0]) => RedisShardManager.create({
        redis: restartable.url, namespace, initialShards: 1, ringBufferCapacity: 10, backpressure, policy: { metricsWindowMs: 60_000 },
      } as Parameters<typeof RedisShardManager.create>[0]);
      const fail = await make({ kind: 'failProducer' });
      const newest = await make({ kind: 'dropNewest' });
      const oldest = await make({ kind: 'dropOldest' });
      await restartable.stop();
      for (let i = 0; i < 10; i++) { fail.push(1, `f:${i}`); newest.push(1, `n:${i}`); oldest.push(1, `o:${i}`); }
      expect(() => fail.push(1, 'f:10')).toThrow(BackpressureError);
      expect(() => fail.push(1, 'f:10')).toThrow(/send buffer is full/);
      expect(newest.push(1, 'n:10')).toBe(false);
      expect(oldest.push(1, 'o:10')).toBe(true);
      expect(fail.stats().drops.refused).toBe(2);
      expect(newest.stats().drops.newest).toBe(1);
      expect(oldest.stats().drops.oldest).toBe(1);
      await restartable.restart();
      await Promise.all([fail.close(), newest.close(), oldest.close()]);
      const got: string[] = [];
      const consumers = await serveShardConsumers({ redis: restartable.url, namespace, idleMs: 5, consume: (records) => { for (const r of records) got.push(r.payload.toString()); } });
      await until(() => got.length >= 30, '30 deliveries');
      await consumers.close();
      const sorted = got.sort();
      expect(sorted.filter((t) => t.startsWith('f:'))).toHaveLength(10);
      expect(sorted.filter((t) => t.startsWith('n:'))).toEqual(Array.from({ length: 10 }, (_, i) => `n:${i}`).sort());
      // dropOldest evicted the oldest not-yet-sent event; o:10 was kept. (A frame already in
      // flight when Redis went away cannot be evicted, so the evicted one is o:0 or a later one.)
      expect(sorted.filter((t) => t.startsWith('o:'))).toHaveLength(10);
      expect(sorted).toContain('o:10');
    } finally {
      await restartable.dispose();
    }
  });

  it('bounds the local send buffer by payload bytes too (ringBufferBytes): full by bytes with room for events; dropOldest evicts until the new event fits', async () => {
    const restartable = await RedisTestServer.start();
    try {
      const namespace = ns();
      const make = (backpressure: BackpressureMode) => RedisShardManager.create({
        redis: restartable.url, namespace, initialShards: 1, ringBufferCapacity: 100, ringBufferBytes: 40, maxPayloadBytes: 32,
        backpressure, policy: { metricsWindowMs: 60_000 },
      });
      const fail = await make({ kind: 'failProducer' });
      const oldest = await make({ kind: 'dropOldest' });
      expect(fail.ringBufferBytes).toBe(40);
      await restartable.stop();
      const ten = (tag: string, i: number) => `${tag}:${String(i).padStart(8, '0')}`; // 10 bytes
      for (let i = 0; i < 4; i++) { fail.push(1, ten('f', i)); oldest.push(1, ten('o', i)); } // 40 bytes each: full by bytes, 4 of 100 events
      expect(() => fail.push(1, 'x')).toThrow(/send buffer is full \(4 events, 40 of 40 payload bytes/);
      // 30 bytes need three evictions (none of these frames was sent yet: Redis went away first)
      expect(oldest.push(1, `o:${'3'.repeat(28)}`)).toBe(true);
      expect(oldest.stats().drops.oldest).toBe(3);
      expect(fail.stats().drops.refused).toBe(1);
      await restartable.restart();
      await Promise.all([fail.close(), oldest.close()]);
      const got: string[] = [];
      const consumers = await serveShardConsumers({ redis: restartable.url, namespace, idleMs: 5, consume: (records) => { for (const r of records) got.push(r.payload.toString()); } });
      await until(() => got.length >= 6, '6 deliveries');
      await sleep(50); // and no more
      await consumers.close();
      expect(got.filter((t) => t.startsWith('f:'))).toEqual([0, 1, 2, 3].map((i) => ten('f', i)));
      expect(got.filter((t) => t.startsWith('o:'))).toEqual([ten('o', 3), `o:${'3'.repeat(28)}`]);
    } finally {
      await restartable.dispose();
    }
  });

  it('dropOldest never evicts from a frame that was sent once (Redis may have stored it): it drops the newest instead', async () => {
    const restartable = await RedisTestServer.start();
    try {
      const namespace = ns();
      const node = await RedisShardManager.create({
        redis: restartable.url, namespace, initialShards: 1, ringBufferCapacity: 10, backpressure: { kind: 'dropOldest' }, policy: { metricsWindowMs: 60_000 },
      });
      await restartable.stop();
      for (let i = 0; i < 10; i++) expect(node.push(1, `o:${i}`)).toBe(true);
      await until(() => node.stats().retries > 0, 'a failed send of the frame'); // o:0..o:9 went out once
      expect(node.push(1, 'o:10')).toBe(false);
      expect(node.stats().drops).toMatchObject({ oldest: 0, newest: 1 });
      await restartable.restart();
      await node.close();
      const got: string[] = [];
      const consumers = await serveShardConsumers({ redis: restartable.url, namespace, idleMs: 5, consume: (records) => { for (const r of records) got.push(r.payload.toString()); } });
      await until(() => got.length >= 10, '10 deliveries');
      await consumers.close();
      expect(got).toEqual(Array.from({ length: 10 }, (_, i) => `o:${i}`));
    } finally {
      await restartable.dispose();
    }
  });

  it('routing modes: affinity routes by the namespace\'s shard ids (the same slot table a ShardMapper builds for those ids), balanced gives every shard a share; every node loads the same route', async () => {
    for (const routing of ['affinity', 'balanced'] as const) {
      const namespace = ns();
      const policy = { maxShards: 8, metricsWindowMs: 60_000 };
      const a = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 3, policy, routing });
      const b = await RedisShardManager.create({ redis: server.url, namespace, controller: false, routing });
      const route = a.table().route;
      expect(route.length).toBe(routingSlots(8));
      expect(new Set(route)).toEqual(new Set([0, 1, 2]));
      if (routing === 'affinity') expect(route).toEqual(Array.from(affinityHomes([0, 1, 2], route.length)));
      await a.tick(); // the controller's first window: the route follows the metrics
      const added = a.addShard(); // id 3, queued for the controller's next window
      await a.tick();
      expect(await added).toBe(3); // affinity moves about a quarter of the slots, all to it
      const after = a.table().route;
      expect(new Set(after)).toEqual(new Set([0, 1, 2, 3]));
      if (routing === 'affinity') {
        const moved = after.filter((id, i) => id !== route[i]);
        expect(moved.every((id) => id === 3)).toBe(true);
        expect(moved.length / after.length).toBeGreaterThan(0.15);
        expect(moved.length / after.length).toBeLessThan(0.35);
      }
      await b.tick();
      expect(b.table()).toEqual(a.table());
      // a key goes where the route says, on either node
      for (let s = 0; s < 16; s++) {
        const hash = Math.floor((s + 0.5) * 2 ** 28);
        a.push(hash, `k:${s}`);
      }
      await a.flush();
      const { got, consumers } = await collector(namespace);
      await until(() => got.length >= 16, '16 deliveries');
      await consumers.close();
      for (const g of got) {
        const s = Number(g.text.slice(2));
        expect(g.shard).toBe(after[Math.floor(((s + 0.5) * 2 ** 28 * after.length) / 2 ** 32)]);
      }
      await b.close();
      await a.close();
    }
  });

  it('the controller scales up on backlog, then drains, stops and removes idle shards; ids are never reused; every node gets the table', async () => {
    const namespace = ns();
    const clock = { t: 0 };
    const events: RedisManagerEvent[] = [];
    const registry = new Registry();
    const metrics = registerShardManagerMetrics({ registry }); // its onEvent counts the controller's transitions
    const policy = { minShards: 1, maxShards: 4, fillRatioThreshold: 0.5, cooldownMs: 1000, scaleDownDelayMs: 2000, metricsWindowMs: 60_000 };
    const a = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 2, ringBufferCapacity: 100, policy, drainGraceMs: 500,
      clock: () => clock.t, onEvent: (e) => { events.push(e); metrics.onEvent(e); },
    });
    const b = await RedisShardManager.create({ redis: server.url, namespace, controller: false, clock: () => clock.t });
    metrics.observe(a.metricsView()); // the exporter's gauges read this node's figures
    for (let i = 0; i < 400; i++) {
      expect(a.push(i * 10_737_418, `s:${i}`)).toBe(true);
      if (i % 50 === 49) await a.flush(); // the local send buffer holds 100 per shard
    }
    await a.tick(); // takes the lease, reads a backlog of 200 per shard > 0.5 × 100
    expect(a.isController).toBe(true);
    expect(events.filter((e) => e.type === 'scalingDecision')).toEqual([{ type: 'scalingDecision', decision: { kind: 'scaleUp', count: 1 }, at: 0 }]);
    expect(a.table().shards).toEqual([{ id: 0, state: 'active' }, { id: 1, state: 'active' }, { id: 2, state: 'active' }]);
    await a.tick(); // in cooldown
    expect(a.table().shards).toHaveLength(3);
    clock.t = 1000;
    await a.tick(); // 0 and 1 overloaded, 2 not: 2 > ⌊3/2⌋ → one more
    expect(a.table().shards.map((s) => s.id)).toEqual([0, 1, 2, 3]);
    await b.tick();
    expect(b.table()).toEqual(a.table());
    const scrape = await registry.metrics();
    expect(scrape).toContain('shard_mapper_events_pushed_total 400');
    expect(scrape).toContain('shard_mapper_shards{state="active"} 4');
    expect(scrape).toContain(`shard_mapper_shard_ids_left ${65535 - 4}`); // the namespace's ids: 0..3 handed out
    expect(scrape).toMatch(/shard_mapper_shard_fill_ratio\{shard="3"\} 0/);
    expect(scrape).toMatch(/shard_mapper_shard_weight\{shard="0"\} [0-9.]+/); // the controller's last window

    // Consume everything: the shards go idle; after scaleDownDelayMs they are drained one by one.
    const { got, consumers } = await collector(namespace);
    await until(() => got.length >= 400, '400 deliveries');
    const seen: number[] = [];
    for (let step = 0; step < 60 && a.table().shards.length > 1; step++) {
      clock.t += 700;
      await a.tick();
      for (const s of a.table().shards) if (!seen.includes(s.id)) seen.push(s.id);
    }
    expect(a.table().shards).toHaveLength(1);
    const types = events.map((e) => e.type);
    for (const t of ['shardDraining', 'shardStopped', 'shardRemoved']) expect(types).toContain(t);
    // Per shard, the transitions come in lifecycle order.
    for (const id of [0, 1, 2, 3]) {
      const life = events.filter((e) => 'shardId' in e && e.shardId === id).map((e) => e.type);
      const order = ['shardProvisioned', 'shardActivated', 'shardDraining', 'shardStopped', 'shardRemoved'];
      expect(life).toEqual(order.filter((t) => life.includes(t as never)));
    }
    const survivor = a.table().shards[0]!.id;
    // Removed streams are gone; the survivor's is there.
    for (const id of [0, 1, 2, 3]) {
      expect(server.cli('EXISTS', `${namespace}:shard:{${namespace}:${id}}`)).toBe(id === survivor ? '1' : '0');
    }
    // Scale up again (no consumer: a backlog builds): a fresh id, never one used before.
    await consumers.close();
    for (let i = 0; i < 300; i++) {
      a.push(i, `t:${i}`);
      if (i % 50 === 49) await a.flush();
    }
    clock.t += 5000;
    await a.tick();
    expect(a.table().shards.map((s) => s.id)).toEqual([survivor, 4]);
    expect(a.table().nextId).toBe(5);
    const more = await collector(namespace);
    await until(() => more.got.length >= 300, '300 more deliveries');
    got.push(...more.got);
    await b.tick();
    expect(b.table()).toEqual(a.table());
    await more.consumers.close();
    await Promise.all([a.close(), b.close()]);
    const removed = events.filter((e) => e.type === 'shardRemoved').length;
    expect(await registry.getSingleMetricAsString('shard_mapper_shard_transitions_total')).toContain(`transition="removed"} ${removed}`);
    expect(new Set(got.map((g) => g.text)).size).toBe(700);
  });

  it('a node whose table is stale sends to a shard removed meanwhile: XADD NOMKSTREAM refuses, the node catches up and routes those events again', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 2, policy: { metricsWindowMs: 60_000 }, routing: 'leastLoaded' });
    // What a controller does while this node misses the notification: shard 1 leaves the
    // table and its stream is deleted (written here behind the node's back: no PUBLISH).
    const table = `{${namespace}}:table`;
    const doc = JSON.parse(server.cli('HGET', table, 'doc'));
    doc.shards = [{ id: 0, state: 'active' }];
    doc.route = [0];
    server.cli('HSET', table, 'version', '2', 'doc', JSON.stringify(doc));
    server.cli('DEL', `${namespace}:shard:{${namespace}:1}`);
    expect(node.table().route).toEqual([0, 1]); // still the old table
    for (let i = 0; i < 1000; i++) expect(node.push(i * 4_294_967, `x:${i}`)).toBe(true);
    await node.flush();
    expect(node.table()).toMatchObject({ version: 2, route: [0] });
    expect(node.stats().rerouted).toBeGreaterThan(0);
    expect(node.stats()).toMatchObject({ pushed: 1000, stored: 1000, buffered: 0 });
    expect(server.cli('EXISTS', `${namespace}:shard:{${namespace}:1}`)).toBe('0'); // not re-created
    const { got, consumers } = await collector(namespace);
    await until(() => got.length >= 1000, '1000 deliveries');
    await consumers.close();
    await node.close();
    expect(new Set(got.map((g) => g.text)).size).toBe(1000);
    expect(got.every((g) => g.shard === 0)).toBe(true);
  });

  it('a late append to a stopped shard (a node with a stale table) delays its removal until the event is consumed', async () => {
    const namespace = ns();
    const clock = { t: 0 };
    const events: RedisManagerEvent[] = [];
    const node = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 2, drainGraceMs: 500, clock: () => clock.t, onEvent: (e) => events.push(e),
      policy: { minShards: 1, maxShards: 2, cooldownMs: 100, scaleDownDelayMs: 1000, metricsWindowMs: 60_000 },
    });
    const { got, consumers } = await collector(namespace);
    await node.tick(); // the lease; both shards start an idle streak
    clock.t = 1000;
    await node.tick(); // scaleDown(1)
    const draining = node.table().shards.find((s) => s.state === 'draining')!.id;
    clock.t = 1600;
    await node.tick(); // empty and quiet for the grace: stopped
    expect(node.table().shards.find((s) => s.id === draining)!.state).toBe('stopped');
    // A node that still routes to it appends a frame (one event) — exactly what a node's XADD looks like.
    const stream = `${namespace}:shard:{${namespace}:${draining}}`;
    const frame = Buffer.concat([Buffer.from([4, 0, 0, 0]), Buffer.from('late')]);
    const client = new (await import('ioredis')).Redis(server.url);
    await client.xadd(stream, 'NOMKSTREAM', '*', 'n', '999', 's', '1', 'c', '1', 'd', frame);
    clock.t = 2200;
    await node.tick(); // the last id moved: not removed
    expect(node.table().shards.some((s) => s.id === draining)).toBe(true);
    await until(() => got.some((g) => g.text === 'late'), 'the late event delivered');
    expect(got.find((g) => g.text === 'late')).toMatchObject({ shard: draining, id: '999:1:0' });
    clock.t = 2800;
    await node.tick(); // consumed, quiet again for the grace: removed
    expect(node.table().shards.some((s) => s.id === draining)).toBe(false);
    expect(await client.exists(stream)).toBe(0);
    expect(events.filter((e) => e.type === 'shardRemoved')).toEqual([{ type: 'shardRemoved', shardId: draining, at: 2800 }]);
    // The removal script itself refuses a stream whose last id is not the one the controller saw.
    const other = `${namespace}:shard:{${namespace}:other}`;
    const first = await client.xadd(other, '*', 'd', 'x');
    await client.xdel(other, first!);
    await client.xadd(other, '*', 'd', 'y').then((id) => client.xdel(other, id!));
    const { connect, closeConnection } = await import('../dist/redis/connection.js');
    const conn = await connect(server.url, 'test');
    expect(Number(await conn.client.smDeleteIfQuiet(other, first!))).toBe(0); // empty, but appended to since
    expect(await client.exists(other)).toBe(1);
    await closeConnection(conn);
    client.disconnect();
    await consumers.close();
    await node.close();
  });

  it('operator calls from any node go through the controller: addShard, manualScaleUp, drainShard, removeShard, manualScaleDown', async () => {
    const namespace = ns();
    const clock = { t: 0 };
    const events: RedisManagerEvent[] = [];
    const a = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 2, drainGraceMs: 100, clock: () => clock.t, onEvent: (e) => events.push(e),
      policy: { minShards: 1, maxShards: 5, cooldownMs: 10_000, metricsWindowMs: 60_000, autoScale: false },
    });
    const b = await RedisShardManager.create({ redis: server.url, namespace, controller: false });
    await a.tick(); // a holds the lease
    const { got, consumers } = await collector(namespace);
    const ops = `{${namespace}}:ops`;
    /** Start an operator call on b, then run controller windows (advancing the clock) until it settles. */
    const drive = async <T>(call: () => Promise<T>): Promise<T> => {
      let settled = false;
      const p = call().finally(() => { settled = true; });
      p.catch(() => {});
      await until(() => server.cli('LLEN', ops) === '1' || settled, 'the request queued');
      for (let i = 0; i < 200 && !settled; i++) {
        clock.t += 60;
        await a.tick();
        await new Promise((r) => setTimeout(r, 5));
      }
      return p;
    };
    expect(await drive(() => b.addShard())).toBe(2); // no cooldown for an operator's call
    expect(await drive(() => b.manualScaleUp(2))).toEqual([3, 4]);
    expect(b.table().shards.map((s) => [s.id, s.state])).toEqual([[0, 'active'], [1, 'active'], [2, 'active'], [3, 'active'], [4, 'active']]);
    await expect(drive(() => b.manualScaleUp(1))).rejects.toMatchObject({ name: 'ScalingError', kind: 'AtMaxShards' });
    for (let i = 0; i < 500; i++) b.push(i * 8_589_934, `op:${i}`);
    await b.flush();
    await drive(() => b.drainShard(1));
    // Draining, or already gone: the windows that carried the call (60 ms each, drainGraceMs
    // 100) may also have seen its few events consumed and removed it (CI saw that once).
    expect(b.table().shards.find((s) => s.id === 1)?.state ?? 'removed').not.toBe('active');
    expect(b.table().route).not.toContain(1);
    await drive(() => b.removeShard(0)); // drained, consumed, stopped, removed
    expect(b.table().shards.some((s) => s.id === 0)).toBe(false);
    const down = await drive(() => b.manualScaleDown(2));
    expect(down).toHaveLength(2);
    expect(b.table().shards.filter((s) => s.state === 'active')).toHaveLength(1);
    await expect(drive(() => b.manualScaleDown(1))).rejects.toMatchObject({ kind: 'AtMinShards' });
    // Bad input is refused on the calling node, before anything is queued.
    await expect(b.drainShard(99)).rejects.toThrow(/drainSpecific: unknown shard 99/);
    await expect(b.removeShard(1.5)).rejects.toThrow(/removeShard: shard id must be an integer, got 1.5/);
    await expect(b.manualScaleUp(-1)).rejects.toThrow(/n must be an integer in \[0, 65535\], got -1/);
    expect(server.cli('LLEN', ops)).toBe('0');
    await until(() => got.length >= 500, '500 deliveries');
    expect(new Set(got.map((g) => g.text)).size).toBe(500);
    expect(events.filter((e) => e.type === 'shardRemoved').length).toBeGreaterThanOrEqual(3);
    await consumers.close();
    await Promise.all([a.close(), b.close()]);
    await expect(b.addShard()).rejects.toThrow(/manualScaleUp: the manager is closed/);
  });

  it('fences the table: a controller whose lease was taken cannot write, and another node takes over', async () => {
    const namespace = ns();
    const events: RedisManagerEvent[] = [];
    const a = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, policy: { metricsWindowMs: 60_000 }, onRedisEvent: (e) => events.push(e) });
    const b = await RedisShardManager.create({ redis: server.url, namespace });
    await a.tick();
    expect(a.isController).toBe(true);
    await b.tick();
    expect(b.isController).toBe(false);
    // A stalls past its lease and B's lease replaces it.
    const lease = `{${namespace}}:controller`;
    server.cli('DEL', lease);
    await b.tick();
    expect(b.isController).toBe(true);
    const before = server.cli('HGET', `{${namespace}}:table`, 'version');
    // A write with a token that does not hold the lease (A's, from before) is refused by the
    // table script itself, whatever the writer believes.
    const { connect, closeConnection } = await import('../dist/redis/connection.js');
    const { keysFor } = await import('../dist/redis/keys.js');
    const { readTable, writeTable } = await import('../dist/redis/table.js');
    const conn = await connect(server.url, 'test');
    const keys = keysFor(namespace);
    const current = await readTable(conn.client, keys);
    const stale = { ...current.doc, nextId: current.doc.nextId + 100 };
    await expect(writeTable(conn.client, keys, 'a-token-that-lost-its-lease', current, stale)).rejects.toThrow(/SMFENCED/);
    // The holder's token, but over an old version: refused too.
    const holder = server.cli('GET', lease);
    await expect(writeTable(conn.client, keys, holder, { ...current, version: current.version - 1 }, stale)).rejects.toThrow(/SMSTALE/);
    await closeConnection(conn);
    await a.tick(); // renewal fails: A steps down without writing
    expect(a.isController).toBe(false);
    expect(events.filter((e) => e.type === 'controller').map((e) => (e as { acquired: boolean }).acquired)).toEqual([true, false]);
    expect(server.cli('HGET', `{${namespace}}:table`, 'version')).toBe(before);
    await Promise.all([a.close(), b.close()]);
  });

  it('a consumer that stops responding loses its shards after leaseMs; the next owner re-delivers its pending entries with the same dedup ids', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, policy: { metricsWindowMs: 60_000 } });
    for (let i = 0; i < 50; i++) node.push(1, `c:${i}`);
    await node.flush();
    let hang: (() => void) | undefined;
    const first: ShardRecord[] = [];
    const stuck = await serveShardConsumers({
      redis: server.url, namespace, leaseMs: 300, idleMs: 5, batchSize: 1,
      consume: (records) => { first.push(...records); return new Promise<void>((r) => { hang = r; }); }, // never returns (until released below)
    });
    await until(() => first.length > 0, 'the first delivery');
    const { got, consumers } = await collector(namespace, { leaseMs: 300 });
    await until(() => got.length >= 50, '50 deliveries by the second consumer');
    const filter = new DedupFilter();
    const again = got.filter((g) => first.some((f) => f.dedupId === g.id));
    expect(again.length).toBe(first.length); // the stuck batch came again, same ids
    expect(got.map((g) => g.text)).toEqual(Array.from({ length: 50 }, (_, i) => `c:${i}`)); // in order, once each here
    // DedupFilter drops a repeat of what was committed (filter alone marks nothing).
    const records = first.map((r) => ({ ...r }));
    expect(filter.filter(records, 0)).toHaveLength(records.length);
    filter.commit(records, 0);
    expect(filter.filter(records, 0)).toHaveLength(0);
    hang?.();
    await Promise.all([stuck.close(), consumers.close(), node.close()]);
  });

  it('consumers share the shards fairly and rebalance as one joins and one leaves; a shard has one consumer at a time, so order holds', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 4, policy: { maxShards: 4, metricsWindowMs: 60_000 } });
    const log: { shard: number; text: string; who: string }[] = [];
    const active = new Map<number, string>(); // shard → the consumer inside consume() right now
    const overlaps: string[] = [];
    const make = (who: string) => serveShardConsumers({
      redis: server.url, namespace, leaseMs: 300, idleMs: 5, batchSize: 2, name: who,
      consume: async (records, shard) => {
        const other = active.get(shard);
        if (other !== undefined) overlaps.push(`shard ${shard}: ${who} while ${other}`);
        active.set(shard, who);
        await new Promise((r) => setTimeout(r, 2));
        for (const r of records) log.push({ shard, text: r.payload.toString(), who });
        active.delete(shard);
      },
    });
    const first = await make('first');
    let seq = 0;
    const pushSome = async (n: number) => { for (let i = 0; i < n; i++, seq++) node.push(seq * 2_654_435_761, `r:${seq}`); await node.flush(); };
    await pushSome(400);
    await until(() => first.owned().length === 4, 'the first consumer holding all 4 shards');
    const second = await make('second');
    await until(() => first.owned().length === 2 && second.owned().length === 2, 'two shards each');
    await pushSome(400);
    await until(() => log.length >= 800, '800 deliveries');
    await first.close();
    await until(() => second.owned().length === 4, 'the second consumer taking all 4 shards after the first left');
    await pushSome(400);
    await until(() => log.length >= 1200, '1200 deliveries');
    await second.close();
    await node.close();
    expect(overlaps).toEqual([]);
    expect(new Set(log.map((l) => l.text)).size).toBe(1200);
    expect(checkOrder(log.map((l) => ({ shard: l.shard, text: l.text })))).toEqual([]);
    expect(new Set(log.map((l) => l.who))).toEqual(new Set(['first', 'second']));
  });
});

describe.skipIf(!available)('serveShardConsumers housekeeping', () => {
  it('a consumer taking a shard over forgets group members that are gone (nothing pending, idle two lease periods)', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, policy: { metricsWindowMs: 60_000 } });
    node.push(1, 'x');
    await node.flush();
    const stream = `${namespace}:shard:{${namespace}:0}`;
    const old = await serveShardConsumers({ redis: server.url, namespace, name: 'old', leaseMs: 100, idleMs: 5, consume: () => {} });
    await until(() => old.consumed === 1, 'the first consumer at work');
    await old.close();
    expect(server.cli('XINFO', 'CONSUMERS', stream, 'shard-mapper')).toContain('old');
    await new Promise((r) => setTimeout(r, 250)); // > 2 × leaseMs idle
    const fresh = await serveShardConsumers({ redis: server.url, namespace, name: 'fresh', leaseMs: 100, idleMs: 5, consume: () => {} });
    await until(() => fresh.owned().length === 1, 'the take-over');
    await until(() => !server.cli('XINFO', 'CONSUMERS', stream, 'shard-mapper').includes('old'), 'the gone consumer forgotten');
    expect(server.cli('XINFO', 'CONSUMERS', stream, 'shard-mapper')).toContain('fresh');
    await fresh.close();
    await node.close();
  });
});

describe.skipIf(!available)('RedisShardManager: bad input is refused clearly and changes nothing', () => {
  it('bad URLs, namespaces and options', async () => {
    const bad: [unknown, RegExp][] = [
      [{ redis: 'http://127.0.0.1:1', namespace: 'x' }, /options\.redis must be a redis:\/\/ or rediss:\/\/ URL, got protocol "http:"/],
      [{ redis: 'not a url', namespace: 'x' }, /options\.redis must be a redis:\/\/ or rediss:\/\/ URL, got "not a url" \(not a URL\)/],
      [{ redis: 5, namespace: 'x' }, /options\.redis must be a redis:\/\/ URL or an ioredis Redis \/ Cluster instance, got 5/],
      [{ redis: server.url, namespace: '' }, /options\.namespace must be 1 to 64 characters/],
      [{ redis: server.url, namespace: 'a b' }, /options\.namespace must be/],
      [{ redis: server.url, namespace: '{x}' }, /options\.namespace must be/],
      [{ redis: server.url, namespace: 'a:b' }, /options\.namespace must be/],
      [{ redis: server.url, namespace: 'x'.repeat(65) }, /options\.namespace must be/],
      [{ redis: server.url, namespace: 7 }, /options\.namespace must be .*got 7/],
      [{ redis: server.url, namespace: 'x', routing: 'random' }, /options\.routing must be 'leastLoaded', 'balanced' or 'affinity', got "random"/],
      [{ redis: server.url, namespace: 'x', routing: 'affinity', loadBound: 0 }, /options\.loadBound must be a finite number > 0, got 0/],
      [{ redis: server.url, namespace: 'x', policy: { maxShards: 'many' } }, /policy\.maxShards must be an integer >= 1, got "many"/],
      [{ redis: server.url, namespace: 'x', backpressure: { kind: 'nope' } }, /options\.backpressure\.kind must be dropNewest, dropOldest, failProducer or sample, got "nope"/],
      [{ redis: server.url, namespace: 'x', maxFrameBytes: 1 }, /options\.maxFrameBytes must be an integer in \[64, /],
      [{ redis: server.url, namespace: 'x', leaseMs: 50, policy: { metricsWindowMs: 100 } }, /options\.leaseMs must be longer than policy\.metricsWindowMs/],
      [{ redis: server.url, namespace: 'x', ringBufferCapacity: 0 }, /options\.ringBufferCapacity must be an integer in \[1, /],
      [{ redis: server.url, namespace: 'x', ringBufferBytes: 100 }, /options\.ringBufferBytes must be an integer in \[256, /],
      [{ redis: server.url, namespace: 'x', ringBufferBytes: Number.NaN }, /options\.ringBufferBytes must be an integer in \[256, .*got NaN/],
      [null, /options must be an object, got null/],
    ];
    for (const [options, message] of bad) {
      await expect(RedisShardManager.create(options as never), JSON.stringify(options)).rejects.toThrow(message);
    }
    expect(server.cli('EXISTS', '{x}:table')).toBe('0'); // nothing was created
    await expect(serveShardConsumers({ redis: server.url, namespace: 'x', consume: 5 } as never)).rejects.toThrow(/options\.consume must be a function, got 5/);
    // A namespace no node created yet is waited for (test/redis-consumers.test.ts); a key that is not ours is refused.
    server.cli('SET', '{taken-by-other}:table', 'somebody else');
    await expect(serveShardConsumers({ redis: server.url, namespace: 'taken-by-other', consume: () => {} })).rejects.toThrow(/serveShardConsumers: the key \{taken-by-other\}:table holds a string, not a shard table/);
  });

  it('a server that is not there, and one that refuses the password', async () => {
    const { freePort } = await import('./helpers/redis-server.js');
    const port = await freePort();
    await expect(RedisShardManager.create({ redis: `redis://127.0.0.1:${port}`, namespace: 'x' })).rejects.toThrow(new RegExp(`cannot use Redis at redis://127.0.0.1:${port}.*ECONNREFUSED`));
    const locked = await RedisTestServer.start({ config: { requirepass: 'right' } });
    try {
      await expect(RedisShardManager.create({ redis: `redis://:wrong@127.0.0.1:${locked.port}`, namespace: 'x' }))
        .rejects.toThrow(/authentication refused.*|WRONGPASS/);
      await expect(RedisShardManager.create({ redis: `redis://:wrong@127.0.0.1:${locked.port}`, namespace: 'x' }))
        .rejects.toThrow(/redis:\/\/:\*\*\*@127\.0\.0\.1/); // the password is not repeated in the message
      const ok = await RedisShardManager.create({ redis: `redis://:right@127.0.0.1:${locked.port}`, namespace: 'x', initialShards: 1 });
      await ok.close();
    } finally {
      await locked.dispose();
    }
  });

  it('a key of another type where the table goes, and a foreign hash', async () => {
    const namespace = ns();
    server.cli('SET', `{${namespace}}:table`, 'somebody else');
    await expect(RedisShardManager.create({ redis: server.url, namespace })).rejects.toThrow(new RegExp(`the key \\{${namespace}\\}:table holds a string, not a shard table: another application uses namespace "${namespace}"`));
    expect(server.cli('GET', `{${namespace}}:table`)).toBe('somebody else');
    const other = ns();
    server.cli('HSET', `{${other}}:table`, 'field', 'value');
    await expect(RedisShardManager.create({ redis: server.url, namespace: other })).rejects.toThrow(/is not a shard-mapper table/);
    expect(server.cli('HGETALL', `{${other}}:table`)).toBe('field\nvalue');
  });

  it('two nodes with different policies on one namespace: the second is refused, the table is unchanged', async () => {
    const namespace = ns();
    const a = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 2, policy: { maxShards: 8, metricsWindowMs: 60_000 } });
    // Field by field (a hash's field order can change between reads as Redis rehashes it).
    const tableFields = () => { const l = server.cli('HGETALL', `{${namespace}}:table`).split('\n'); return Object.fromEntries(l.flatMap((k, i) => (i % 2 === 0 ? [[k, l[i + 1]]] : []))); };
    const before = tableFields();
    const nodesBefore = server.cli('HGET', `{${namespace}}:table`, 'nodes');
    await expect(RedisShardManager.create({ redis: server.url, namespace, policy: { maxShards: 16, metricsWindowMs: 60_000 } }))
      .rejects.toThrow(new RegExp(`namespace "${namespace}" already runs with another policy: maxShards 8 \\(stored\\) vs 16 \\(given\\)`));
    // made without a routing, the namespace routes as ShardManager does by default: 'balanced'
    expect(JSON.parse(server.cli('HGET', `{${namespace}}:table`, 'doc')).routing).toBe('balanced');
    await expect(RedisShardManager.create({ redis: server.url, namespace, routing: 'leastLoaded' })).rejects.toThrow(/already routes with 'balanced', this node was given 'leastLoaded'/);
    expect(tableFields()).toEqual(before);
    expect(server.cli('HGET', `{${namespace}}:table`, 'nodes')).toBe(nodesBefore); // no node number taken
    // Without a policy, a node adopts the stored one.
    const b = await RedisShardManager.create({ redis: server.url, namespace });
    expect(b.policy().maxShards).toBe(8);
    await Promise.all([a.close(), b.close()]);
  });

  it('push and pushBatch refuse bad input with the same errors as ShardManager, and add nothing', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, maxPayloadBytes: 16, policy: { metricsWindowMs: 60_000 } });
    const local = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 16, maxPayloadBytes: 16 });
    const message = (fn: () => unknown): string => { try { fn(); return 'no error'; } catch (e) { return `${(e as Error).name}: ${(e as Error).message}`; } };
    const cases: [string, (m: { push: ShardManager['push']; pushBatch: ShardManager['pushBatch'] }) => unknown][] = [
      ['17 bytes', (m) => m.push(1, new Uint8Array(17))],
      ['utf-8', (m) => m.push(1, 'é'.repeat(9))],
      ['number payload', (m) => m.push(1, 42 as never)],
      ['null key', (m) => m.push(null as never, 'x')],
      ['bigint key', (m) => m.push(1n as never, 'x')],
      ['batch lengths', (m) => m.pushBatch([1, 2], ['x'])],
      ['batch payload', (m) => m.pushBatch([1, 2], ['x', 5 as never])],
      ['batch key', (m) => m.pushBatch([1, null as never], ['x', 'y'])],
      ['batch events', (m) => m.pushBatch([5] as never)],
    ];
    for (const [name, call] of cases) {
      const expected = message(() => call(local));
      expect(expected, name).not.toBe('no error');
      expect(message(() => call(node as never)), name).toBe(expected);
    }
    expect(node.stats()).toMatchObject({ pushed: 0, buffered: 0 });
    await node.close();
    expect(() => node.push(1, 'x')).toThrow(/push: the manager is closed/);
    await local.close();
  });
});

export type { ShardConsumers };
