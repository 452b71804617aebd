// 'shard-mapper/worker': the consumer side for workers you start yourself.
//
//   // consumer.worker.js, bundled by Vite/webpack from
//   //   new Worker(new URL('./consumer.worker.js', import.meta.url), { type: 'module' })
//   import { serveConsumer } from 'shard-mapper/worker';
//   serveConsumer((records, shardId) => { ... });
//
// and on the page: ShardManager.create({ ..., consumer: { worker: () => new Worker(...), threads } }).
import { runConsumer, type ConsumerFunction, type BatchConsumerFunction } from './consumer-runtime.js';

export type { ConsumerFunction, BatchConsumerFunction };
export { RecordBatch, type BatchRegion } from './record-batch.js';

export interface ServeConsumerOptions {
  /** true: `consume` takes one RecordBatch per batch; false: an array of views. Default: what
   *  the manager's `options.consumer.batch` says (false unless set). */
  batch?: boolean;
}

/**
 * Serve `consume` as a consumer of a ShardManager's rings from this worker (a Web Worker or
 * a Node worker thread started by `options.consumer.worker`). Resolves when the manager
 * stops the worker (`manager.close()`); rejects if the worker cannot attach.
 */
export function serveConsumer(consume: ConsumerFunction): Promise<void>;
/** The same with a batch consumer: `serveConsumer((batch, shardId) => { ... }, { batch: true })`. */
export function serveConsumer(consume: BatchConsumerFunction, options: { batch: true }): Promise<void>;
export function serveConsumer(consume: ConsumerFunction | BatchConsumerFunction, options?: ServeConsumerOptions): Promise<void>;
export function serveConsumer(consume: ConsumerFunction | BatchConsumerFunction, options: ServeConsumerOptions = {}): Promise<void> {
  if (typeof consume !== 'function')
    throw new TypeError('serveConsumer: consume must be a function (records, shardId) => void | Promise<void>');
  if (typeof options !== 'object' || options === null)
    throw new TypeError(`serveConsumer: options must be an object, got ${String(options)}`);
  if (options.batch !== undefined && typeof options.batch !== 'boolean')
    throw new TypeError(`serveConsumer: options.batch must be a boolean, got ${typeof options.batch}`);
  return runConsumer(() => consume, { batch: options.batch });
}
