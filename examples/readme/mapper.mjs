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
const collector = mapper.metricsCollector(shard);       // undefined for an unknown shard id
collector?.recordBufferLen(900);
collector?.recordPush(3);
// ... then collect and decide. Here the answer is { kind: 'none' }: a shard counts only once
// it has been Active for cooldownMs, and one overloaded shard of four is not more than half.
mapper.collectMetrics();
const decision = mapper.evaluateScaling();              // { kind: 'scaleUp' | 'scaleDown', count } or { kind: 'none' }
if (decision.kind === 'scaleUp') mapper.scaleUp(decision.count);
// #endregion readme

assert.ok(shard >= 0 && shard < 4 && same >= 0 && same < 4, 'a key and a hash each go to one of the 4 shards');
assert.deepEqual([many.length, keyed.length], [3, 2]);
assert.ok(collector !== undefined, 'the selected shard has a collector');
assert.deepEqual(decision, { kind: 'none' }, 'the README says the decision is none (shards younger than cooldownMs)');
console.log('mapper: ok', decision);
