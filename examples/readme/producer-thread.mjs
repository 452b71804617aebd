// The README's producer thread (section "Producers on threads"), started by
// ./producer-thread.run.mjs with the manager's producer handle.
// #region readme
// producer-thread.mjs
import { workerData } from 'node:worker_threads';
import { ShardProducer } from 'shard-mapper';
const producer = await ShardProducer.attach(workerData.handle); // from manager.producerHandle()
producer.push('key', 'payload');                                // push / pushBatch / pushFixed, as on the manager
producer.detach();
// #endregion readme
