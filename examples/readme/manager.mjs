// The README's "Quick start: the manager" (its consumer is ./consumer.mjs), run by
// test/readme-examples.test.ts. Lines outside the region check what it delivered.
import assert from 'node:assert/strict';
// #region readme
import { ShardManager } from 'shard-mapper';

const manager = await ShardManager.create({
  initialShards: 2,
  ringBufferCapacity: 4096,          // records each shard's ring holds
  maxPayloadBytes: 256,              // the largest event; ringBufferBytes sizes a ring in bytes
  policy: { maxShards: 8 },          // any subset of ScalingPolicy; the rest are defaults (maxShards: the CPU count)
  consumer: { module: new URL('./consumer.mjs', import.meta.url), threads: 4 },
});
manager.start();                     // tick() every policy.metricsWindowMs

manager.push('user-42', JSON.stringify({ clicked: 'buy' }));   // string key, string payload
manager.push(0x61819a7e, new Uint8Array([1, 2, 3]));           // uint32 hash, bytes
manager.pushBatch(['a', 'b'], ['first', 'second']);            // one WASM call per scratch-full
const hashes = new Uint32Array([7, 8]), records = new Uint8Array(2 * 16);
manager.pushFixed(hashes, records, 16);    // one hash per 16-byte record, back to back: the fastest path

// Consumer threads keep Node running until close(): it stops pushes, waits until the
// consumers took everything, and ends the threads.
await manager.close();
console.log(manager.stats());        // { pushed, delivered, dropped, unrouted, drops, inFlight, shards: [{ id, state, length, bytes, … }] }
// #endregion readme

const stats = manager.stats();
assert.equal(stats.pushed, 6, 'push, push, pushBatch of 2, pushFixed of 2');
assert.equal(stats.delivered, 6, 'close() resolved after the consumer threads acknowledged every event');
assert.equal(stats.dropped, 0);
console.log('manager: ok');
