// Public exports of shard-mapper.
export { ShardMapper, ShardState, NO_SHARD } from './mapper.js';
export { ShardMetricsCollector } from './metrics.js';
export { ScalingPolicy } from './policy.js';
export { ScalingError, BackpressureError, ManagerClosedError } from './errors.js';
export { hashKey, hashKeys } from './hash.js';
export { sharedMemorySupported } from './wasm.js';
export { ShardManager, BackpressureMode, } from './manager.js';
export { ShardProducer } from './producer.js';
export { RecordBatch } from './record-batch.js';
