// 'shard-mapper/redis': shards as Redis Streams, one shard table and one scaling loop for
// every node of a namespace. ioredis is an optional peer dependency: only this subpath
// imports it, never the package root.
export { RedisShardManager, type RedisShardManagerOptions, type RedisManagerStats } from './node.js';
export { OperatorTimeoutError, type OperatorCallOptions } from './operator.js';
export { serveShardConsumers, type ServeShardConsumersOptions, type ShardConsumers, type ShardRecord } from './consumers.js';
export { DedupFilter } from './dedup.js';
export type { RedisManagerEvent, RedisNodeEvent } from './controller.js';
export type { RedisOption } from './connection.js';
export type { RoutingMode, TableState } from './table.js';
