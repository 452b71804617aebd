// The messages between the consumer pool (the manager's thread) and its consumer threads:
// one definition for both sides (src/consumer-pool.ts and src/consumer-runtime.ts).

/** What the pool tells a consumer thread. */
export type ToConsumer =
  /** Own this shard from now on (its ring is at `slot`). */
  | { type: 'assign'; shardId: number; slot: number }
  /** Let go of this shard between two batches, then say 'released'. */
  | { type: 'release'; shardId: number }
  /** Take what is left, then say 'stopped'. */
  | { type: 'stop' };

/** What a consumer thread tells the pool. */
export type FromConsumer =
  /** Attached and the consumer function loaded: `doorbell` is where producers wake it. */
  | { type: 'ready'; lane: number; doorbell: number }
  /** It could not start (the module failed to load, or was not a function). */
  | { type: 'fatal'; message: string; stack?: string }
  /** The consumer function threw on a batch of this shard (the batch comes again). */
  | { type: 'error'; shardId: number; message: string; stack?: string; name?: string }
  | { type: 'released'; shardId: number }
  | { type: 'stopped' };
