// Runs the README's producer thread (./producer-thread.mjs): the main thread posts the
// manager's producer handle, the thread pushes one event and detaches, the main thread polls it.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { ShardManager } from 'shard-mapper';

const manager = await ShardManager.create({ initialShards: 2, ringBufferCapacity: 1024 });
const worker = new Worker(new URL('./producer-thread.mjs', import.meta.url), { workerData: { handle: manager.producerHandle() } });
const [code] = await once(worker, 'exit');
assert.equal(code, 0, 'the producer thread ended without an error');
const got = manager.mapper.activeShardIds().flatMap((id) => manager.poll(id)).map((r) => new TextDecoder().decode(r));
assert.deepEqual(got, ['payload']);
await manager.close();
console.log('producer thread: ok');
