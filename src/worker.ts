// 'shard-mapper/worker': the consumer side for workers you start yourself.
//
//   // consumer.worker.js, bundled by Vite/webpack from
//   //   new Worker(new URL('./consumer.worker.js', import.meta.url), { type: 'module' })
//   import { serveConsumer } from 'shard-mapper/worker';
//   serveConsumer((records, shardId) => { ... });
//
// and on the page: ShardManager.create({ ..., consumer: { worker: () => new Worker(...), threads } }).
import { runConsumer, type ConsumerFunction } from './consumer-runtime.js';

export type { ConsumerFunction };

/**
 * Serve `consume` as a consumer of a ShardManager's rings from this worker (a Web Worker or
 * a Node worker thread started by `options.consumer.worker`). Resolves when the manager
 * stops the worker (`manager.close()`); rejects if the worker cannot attach.
 */
export function serveConsumer(consume: ConsumerFunction): Promise<void> {
  if (typeof consume !== 'function') throw new TypeError('serveConsumer: consume must be a function (records, shardId) => void | Promise<void>');
  return runConsumer(() => consume);
}
