// The README's Prometheus snippet ("Observability"), run by test/readme-examples.test.ts.
// Lines outside the region push an event and read the registry as a scrape would.
import assert from 'node:assert/strict';
// #region readme
import { Registry } from 'prom-client';
import { ShardManager } from 'shard-mapper';
import { registerShardManagerMetrics } from 'shard-mapper/prometheus';

const registry = new Registry();
const metrics = registerShardManagerMetrics({ registry, labels: { service: 'ingest' } });
const manager = await ShardManager.create({ initialShards: 2, ringBufferCapacity: 4096, onEvent: metrics.onEvent });
metrics.observe(manager);
// GET /metrics: res.end(await registry.metrics())
// #endregion readme

manager.push('user-42', 'clicked');
const scrape = await registry.metrics();
assert.match(scrape, /shard_mapper_events_pushed_total\{service="ingest"\} 1\b/);
await manager.close();
console.log('prometheus: ok');
