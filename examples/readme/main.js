// The README's browser page script ("In the browser"), run by test/readme-examples.test.ts
// under Node: Node's worker_threads Worker stands in for the page's Web Worker (the same
// manager and serveConsumer code runs on both). Lines outside the region check the delivery.
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
// #region readme
// main.js
import { ShardManager } from 'shard-mapper';
const manager = await ShardManager.create({
  initialShards: 2,
  ringBufferCapacity: 4096,
  consumer: {
    worker: () => new Worker(new URL('./consumer.worker.js', import.meta.url), { type: 'module' }),
    threads: 2,
  },
});
manager.push('user-42', 'clicked');
// #endregion readme

await manager.close();
assert.equal(manager.stats().delivered, 1, 'the worker served by ./consumer.worker.js acknowledged the event');
console.log('browser main: ok');
