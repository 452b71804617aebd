// shard-mapper/redis on a Redis Cluster: three masters (cluster-enabled yes) on 127.0.0.1,
// random ports, temporary directories, joined with `redis-cli --cluster create`. The table's
// keys share the `{ns}` slot (the fenced table write is one script); the shard streams carry
// their own hash tags and spread over the masters.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from 'ioredis';
import { RedisShardManager, serveShardConsumers } from 'shard-mapper/redis';
import { RedisTestCluster, redisAvailable } from './helpers/redis-server.js';
import { until as untilHolds } from './helpers/delivery.js';

const available = redisAvailable();
let cluster: RedisTestCluster;
beforeAll(async () => { if (available) cluster = await RedisTestCluster.start(3); }, 60_000);
afterAll(async () => { await cluster?.dispose(); });

const until = (done: () => boolean, what: string, limitMs = 30_000) => untilHolds(done, what, limitMs);

describe.skipIf(!available)('shard-mapper/redis on Redis Cluster (3 masters)', () => {
  it('nodes, the controller and consumers work through an ioredis Cluster; streams spread over the masters', async () => {
    const client = new Cluster(cluster.startupNodes, { enableOfflineQueue: true });
    const consumerClient = new Cluster(cluster.startupNodes);
    const namespace = 'orders';
    const clock = { t: 0 };
    const node = await RedisShardManager.create({
      redis: client, namespace, initialShards: 6, ringBufferCapacity: 1000,
      policy: { minShards: 1, maxShards: 8, fillRatioThreshold: 0.5, cooldownMs: 1000, metricsWindowMs: 60_000 }, clock: () => clock.t,
    });
    let accepted = 0;
    for (let i = 0; i < 6000; i++) {
      if (node.push(`user-${i}`, `e:${i}`)) accepted++;
      if (i % 500 === 499) await node.flush();
    }
    await node.flush();
    expect(accepted).toBe(6000);
    // The scaling loop runs through the cluster too (backlog, no consumer yet → scale up).
    await node.tick();
    expect(node.isController).toBe(true);
    // 6 overloaded of 6: scaleUp(min(⌊6/2⌋, maxShards − 6)) = 2.
    expect(node.table().shards.length).toBe(8);
    // Where the streams live: more than one master holds shard streams.
    const masters = new Set<number>();
    for (const { id } of node.table().shards) {
      const key = `${namespace}:shard:{${namespace}:${id}}`;
      const slot = Number(await client.cluster('KEYSLOT', key));
      const owner = cluster.nodes.findIndex((n) => n.cli('CLUSTER', 'COUNTKEYSINSLOT', String(slot)) !== '0');
      masters.add(owner);
    }
    expect(masters.size).toBeGreaterThan(1);
    const got: string[] = [];
    const consumers = await serveShardConsumers({ redis: consumerClient, namespace, idleMs: 5, consume: (records) => { for (const r of records) got.push(r.payload.toString()); } });
    await until(() => got.length >= 6000, '6000 deliveries');
    await consumers.close();
    await node.close();
    expect(new Set(got).size).toBe(6000);
    expect(got.length).toBe(6000);
    client.disconnect();
    consumerClient.disconnect();
  });
});
