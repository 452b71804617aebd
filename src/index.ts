// Public exports of shard-mapper.
export { ShardMapper, ShardState, NO_SHARD, type ScalingDecision, type ShardMapperOptions } from './mapper.js';
export { ShardMetricsCollector, type ShardMetrics, type CollectorHandle } from './metrics.js';
export { ScalingPolicy } from './policy.js';
export { ScalingError, BackpressureError, type ScalingErrorKind } from './errors.js';
export { hashKey } from './hash.js';
export { sharedMemorySupported } from './wasm.js';
