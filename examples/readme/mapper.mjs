// The README's "Quick start: the mapper", run by test/readme-examples.test.ts. Lines outside
// the region check what the README's code did.
import assert from 'node:assert/strict';
// #region readme
import { ShardMapper } from 'shard-mapper';

const mapper = await ShardMapper.create(4, 1024, { maxShards: 16 });
mapper.setOnShardCreated((id) => console.log('shard', id, 'is routable'));

const shard = mapper.selectShardForKey('user-42');     // xxHash32 of the key, then selectShard
const same = mapper.selectShard(0x61819a7e);            // a uint32 hash you computed yourself
const many = mapper.selectShards(new Uint32Array([1, 2, 3])); // Uint16Array, one WASM call
const keyed = mapper.selectShardsForKeys(['user-1', 'user-2']); // Uint16Array; hashKeys(keys) for the hashes

// Feed the collectors (any thread that attached to the memory may do this) ...
mapper.metricsCollector(shard).recordBufferLen(900);
mapper.metricsCollector(shard).recordPush(3);
// ... then collect and decide.
mapper.collectMetrics();
const decision = mapper.evaluateScaling();              // { kind: 'scaleUp', count: 1 } | ...
if (decision.kind === 'scaleUp') mapper.scaleUp(decision.count);
// #endregion readme

assert.ok(shard >= 0 && shard < 4 && same >= 0 && same < 4, 'a key and a hash each go to one of the 4 shards');
assert.deepEqual([many.length, keyed.length], [3, 2]);
assert.ok(['scaleUp', 'scaleDown', 'none'].includes(decision.kind), `a decision: ${JSON.stringify(decision)}`);
console.log('mapper: ok', decision);
