// Public exports of shard-mapper.
export { ShardMapper, ShardState, NO_SHARD, type ScalingDecision, type ShardMapperOptions } from './mapper.js';
export type { RoutingMode } from './routing.js';
export { ShardMetricsCollector, type ShardMetrics, type CollectorHandle } from './metrics.js';
export type { CoreHandle } from './core.js';
export { ScalingPolicy } from './policy.js';
export {
  ScalingError,
  BackpressureError,
  ManagerClosedError,
  CloseTimeoutError,
  ProducerDetachedError,
  type ScalingErrorKind,
} from './errors.js';
export { hashKey, hashKeys } from './hash.js';
export { sharedMemorySupported, type MemoryKind } from './wasm.js';
export { ShardManager } from './manager.js';
export type { ShardManagerOptions } from './manager-options.js';
export { BackpressureMode, type ManagerStats, type ShardManagerStats, type ShardStats, type ManagerEvent } from './types.js';
export type { KeyOrderStats, KeyOrderWaits, MoveCause } from './key-order.js';
export { ShardProducer, type ProducerHandle, type EventKey, type EventPayload, type BatchEvent } from './producer.js';
export type { ConsumerOptions, ConsumerWorker } from './consumer-pool.js';
export type { ConsumerFunction, BatchConsumerFunction } from './consumer-runtime.js';
export { RecordBatch, type BatchRegion } from './record-batch.js';
export type { ManagerRecord, WritableOptions, BatchesOptions } from './streams.js';
