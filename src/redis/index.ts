// 'shard-mapper/redis': shards as Redis Streams, one shard table and one scaling loop for
// every node of a namespace. ioredis is an optional peer dependency: only this subpath
// imports it, never the package root.
export { RedisShardManager, type RedisManagerStats } from './node.js';
export type { RedisKeyOrderStats } from './key-order.js';
export type { RedisShardManagerOptions } from './options.js';
export { OperatorTimeoutError, type OperatorCallOptions } from './operator.js';
export { serveShardConsumers, type ServeShardConsumersOptions, type ShardConsumers, type ShardRecord } from './consumers.js';
export { DedupFilter } from './dedup.js';
export type { RedisManagerEvent, RedisNodeEvent } from './controller.js';
export type { RedisOption } from './connection.js';
export type { RoutingMode, TableState } from './table.js';
// The errors a node throws, the very classes of the package root (instanceof works with either import).
export { BackpressureError, CloseTimeoutError, ManagerClosedError, ScalingError, type ScalingErrorKind } from '../errors.js';
export type { BackpressureMode } from '../types.js';
export type { ScalingPolicy } from '../policy.js';
export type { EventKey, EventPayload, BatchEvent } from '../producer.js';
export type { ManagerRecord, WritableOptions } from '../streams.js';
