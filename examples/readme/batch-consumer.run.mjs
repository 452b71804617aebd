// Runs the README's RecordBatch consumer (./batch-consumer.mjs) on worker threads: every
// event must be acknowledged, and a consumer error (an exception in the module) fails at once
// instead of being retried for ever.
import assert from 'node:assert/strict';
import { ShardManager } from 'shard-mapper';

const manager = await ShardManager.create({
  initialShards: 2,
  ringBufferCapacity: 1024,
  consumer: { module: new URL('./batch-consumer.mjs', import.meta.url), batch: true, threads: 2 },
  onConsumerError: (error) => {
    console.error('batch-consumer.mjs threw:', error);
    process.exit(1);
  },
});
for (let i = 0; i < 1000; i++) manager.push(`key-${i}`, i % 2 ? `event ${i}` : JSON.stringify({ i })); // half are JSON objects
await manager.close();
assert.equal(manager.stats().delivered, 1000);
console.log('batch consumer: ok');
