// The types the runtimes share: ShardManager and the Redis node take the same backpressure
// modes, report the same events and the same stats, and the Prometheus exporter reads either.
// Here, so that src/redis/* and src/prometheus.ts need not import manager.ts for its types.
import type { KeyOrderStats, MoveCause } from './key-order.js';
import type { ScalingDecision, ShardState } from './mapper.js';
import type { ShardMetrics } from './metrics.js';
import type { ScalingPolicy } from './policy.js';

export type BackpressureMode =
  | { kind: 'dropNewest' }
  | { kind: 'dropOldest' }
  | { kind: 'failProducer' }
  | { kind: 'sample'; rate: number };

/** The modes by name, for `options.backpressure` (the one value of this module). */
export const BackpressureMode = {
  DropNewest: Object.freeze({ kind: 'dropNewest' }) as BackpressureMode,
  DropOldest: Object.freeze({ kind: 'dropOldest' }) as BackpressureMode,
  FailProducer: Object.freeze({ kind: 'failProducer' }) as BackpressureMode,
  /** Past the fill threshold keep 1 event in `rate`; when full, drop the newest. */
  sample: (rate: number): BackpressureMode => ({ kind: 'sample', rate }),
};

/** A lifecycle or scaling event, for logs, metrics and tracing. */
export type ManagerEvent =
  | { type: 'shardProvisioned' | 'shardActivated' | 'shardDraining' | 'shardStopped' | 'shardRemoved'; shardId: number; at: number }
  /** Emitted only for a decision that acts (a `none` is not an event). */
  | { type: 'scalingDecision'; decision: Exclude<ScalingDecision, { kind: 'none' }>; at: number }
  | { type: 'consumerError'; shardId: number; error: Error; at: number }
  /** A consumer thread's heartbeat stopped while it had records to take (a dead Web Worker, or
   *  a thread stuck in a synchronous consumer): it is ended, then consumerRestarted follows. */
  | { type: 'consumerStalled'; worker: number; at: number }
  /** A consumer thread exited unasked; `rewound` records it held unacknowledged are handed out again. */
  | { type: 'consumerRestarted'; worker: number; exitCode: number; rewound: number; at: number }
  /** `records` reserved by a producer that never wrote them (its thread died or stalled
   *  inside pushBatch/pushFixed) were skipped so the shard's later records flow again. */
  | { type: 'producerStallSkipped'; shardId: number; records: number; at: number }
  /** A tick() run by start()'s timer threw (e.g. ShardCreationFailed); the loop goes on. */
  | { type: 'tickError'; error: Error; at: number }
  /** routing 'affinity': `slots` table slots moved from one shard to another (`cause`: shards
   *  added or removed, or a spill or return under the load bound); their new events wait until
   *  `fromShard`'s consumer acknowledged the ones pushed there before the move. */
  | { type: 'keysMoving'; fromShard: number; toShard: number; slots: number; cause: MoveCause; at: number }
  /** The wait of `slots` moved slots ended (noticed at a tick, a rebuild or stats()):
   *  their events go to `toShard` unchecked again; `waitedMs` is the longest of them. */
  | { type: 'keysMoved'; toShard: number; slots: number; waitedMs: number; at: number };

export interface ShardStats {
  id: number;
  state: ShardState;
  /** Records in the ring (accepted, not yet acknowledged). */
  length: number;
  /** Payload bytes those records hold in the ring (each rounded up to 8, with any padding at
   *  the end of the payload area), out of ringBufferBytes. */
  bytes: number;
  pushed: number;
  delivered: number;
  dropped: number;
  /** routing 'affinity': table slots moved away from this shard whose new events still wait
   *  for this shard's consumer. */
  movingOut?: number;
  /** routing 'affinity': table slots moved to this shard that still wait. */
  movingIn?: number;
}

export interface ManagerStats {
  /** Events accepted into a ring. */
  pushed: number;
  /** Events acknowledged by a consumer (or returned by poll). */
  delivered: number;
  /** Events the package discarded under backpressure: dropNewest, dropOldest evictions, sample,
   *  and moving keys under those modes. Pushes failProducer refused (the caller keeps the
   *  event and may retry) are not drops: they are counted in drops.refused. */
  dropped: number;
  /** Pushes made while no shard was Active (never counted as backpressure). */
  unrouted: number;
  /** `moving`: pushes of a key whose slot had just moved and was waiting (routing 'affinity'):
   *  refused under failProducer (BackpressureError, reason 'moving'), dropped otherwise. */
  drops: { newest: number; oldest: number; sampled: number; refused: number; moving?: number };
  /** Accepted events still in rings (pushed − delivered − evicted). */
  inFlight: number;
  /** Records reserved by a producer that never wrote them (its thread was terminated inside
   *  pushBatch/pushFixed): skipped as padding; their push never returned, so none was accepted.
   *  Under routing 'affinity' also a reservation that raced a table change moving its key:
   *  given up as padding, its event pushed again (see README, Key order across moves). And
   *  records a batch reserved past the point where another reservation of the same block came
   *  short: given up as padding, their events pushed again (docs/architecture.md, Grouped
   *  writes). */
  skipped: number;
  shards: ShardStats[];
  /** Key order across moves (routing 'affinity'); `enabled` false and zeros otherwise.
   *  (Always set by ShardManager; optional for other sources of these figures.) */
  keyOrder?: KeyOrderStats;
}

/** What `ShardManager.stats()` returns: ManagerStats with the key-order figures always set. */
export interface ShardManagerStats extends ManagerStats {
  drops: { newest: number; oldest: number; sampled: number; refused: number; moving: number };
  keyOrder: KeyOrderStats;
}

/** What the Prometheus exporter reads: a ShardManager, or anything with the same figures (a
 *  shard-mapper/redis node's `metricsView()`). */
export interface ObservedManager {
  stats(): ManagerStats;
  /** Records per shard ring. */
  readonly ringCapacity: number;
  /** Payload bytes per shard ring (absent: the fill gauge counts records only). */
  readonly ringBufferBytes?: number;
  readonly mapper: {
    lastMetrics(id: number): ShardMetrics | undefined;
    policy(): Readonly<ScalingPolicy>;
    /** New shard ids left (absent: the gauge is not published). */
    shardIdsLeft?(): number;
  };
}
