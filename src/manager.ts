// ShardManager: the runtime around a ShardMapper. Owns one ring per shard in the shared
// memory, routes pushes through the mapper's table, runs the scaling loop, and moves a
// shard through Provisioning → Active → Draining → Stopped → removed without losing or
// duplicating an accepted event.
import { SharedCore } from './core.js';
import { ConsumerPool } from './consumer-pool.js';
import { CloseTimeoutError, ManagerClosedError, ScalingError, checkInteger, describe, invalid } from './errors.js';
import { ShardMapper, ShardState, WIRING, type MapperWiring, type ScalingDecision } from './mapper.js';
import type { ScalingPolicy } from './policy.js';
import { tableCapacity, type RoutingMode } from './routing.js';
import { ShardProducer, type BatchEvent, type EventKey, type EventPayload, type ProducerHandle } from './producer.js';
import { Total, TOTALS } from './abi.js';
import { StallWatchdog } from './stall-watchdog.js';
import { sleep, unrefTimer } from './sleep.js';
import { KeyOrderFences } from './key-order.js';
import type { BackpressureMode, ManagerEvent, ShardManagerStats, ShardStats } from './types.js';
import { RecordBatch } from './record-batch.js';
import { compileAsync, type MemoryKind } from './wasm.js';
import { onThreadExit } from '#platform';
import type { Writable } from 'node:stream';
import {
  createWritable,
  createWritableStream,
  shardBatches,
  type BatchesOptions,
  type ManagerRecord,
  type WritableOptions,
} from './streams.js';
import { DEFAULT_LANE_BYTES } from './layout.generated.js';
import { checkManagerOptions, type ShardManagerOptions } from './manager-options.js';
import { closeTimeout, keyHash } from './validate.js';

const WAIT_STEP_MS = 2;
/** How long an operator's scale-up waits for consumer threads to let go of removed shards' slots. */
const SLOT_RELEASE_WAIT_MS = 2000;
/** How often fences whose wait is over are lifted while some exist (see #watchFences). */
const FENCE_LIFT_MS = 5;
const NONE: ScalingDecision = Object.freeze({ kind: 'none' });
/** The housekeeping timer's period: a quarter of the shorter stall limit, within these bounds. */
const HOUSEKEEPING_MIN_MS = 10;
const HOUSEKEEPING_MAX_MS = 250;
/** Without options.onConsumerError, a shard's consumer errors are logged at most this often. */
const CONSUMER_ERROR_LOG_MS = 5000;

interface Parts {
  options: ShardManagerOptions;
  core: SharedCore;
  pool: ConsumerPool | undefined;
  policy: ScalingPolicy;
  initialShards: number;
  /** Records a ring holds at once (ringBufferCapacity as given). */
  ringCapacity: number;
  maxPayload: number;
  backpressure: BackpressureMode;
  kind: MemoryKind;
  producerStallMs: number;
  consumerStallMs: number;
  routing: RoutingMode;
  loadBound: number;
  keyOrder: boolean;
}

export class ShardManager {
  readonly mapper: ShardMapper;
  /** Records each ring holds at once: ringBufferCapacity as given. */
  readonly ringCapacity: number;
  readonly maxPayloadBytes: number;
  readonly backpressure: BackpressureMode;
  /** 'shared' when worker threads can attach; 'single' in the one-thread fallback. */
  readonly memoryKind: MemoryKind;

  readonly #core: SharedCore;
  readonly #producer: ShardProducer;
  readonly #clock: () => number;
  readonly #onEvent: ((e: ManagerEvent) => void) | undefined;
  readonly #onConsumerError: ((e: Error, id: number) => void) | undefined;
  /** Per shard: when its last consumer error was logged, and how many came since (#logConsumerError). */
  readonly #errorLog = new Map<number, { loggedAt: number; since: number }>();
  readonly #pool: ConsumerPool | undefined;
  readonly #slots = new Map<number, number>(); // live shard id → slot
  readonly #retired: number[] = new Array(TOTALS).fill(0); // totals of removed shards, indexed by Total
  readonly #watchdog: StallWatchdog;
  readonly #consumerStallMs: number;
  readonly #stopWatchingThreads: () => void;
  /** Held here: the platform holds it only weakly (onThreadExit). */
  readonly #releaseLanesOf: (threadId: number) => void;
  #timer: ReturnType<typeof setInterval> | undefined;
  #fenceTimer: ReturnType<typeof setInterval> | undefined;
  #housekeeping: ReturnType<typeof setInterval> | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;
  /** routing 'affinity' with key order: the fences of moved slots. */
  readonly #fences: KeyOrderFences | undefined;
  /** Reused by pollBatch. */
  #pollBatch: RecordBatch | undefined;

  private constructor(parts: Parts) {
    const { options, core, pool } = parts;
    this.#core = core;
    this.#pool = pool;
    this.#clock = options.clock ?? (() => performance.now());
    this.#onEvent = options.onEvent;
    this.#onConsumerError = options.onConsumerError;
    this.ringCapacity = parts.ringCapacity;
    this.maxPayloadBytes = parts.maxPayload;
    this.backpressure = Object.freeze({ ...parts.backpressure });
    this.memoryKind = parts.kind;
    this.#producer = new ShardProducer(core, parts.maxPayload, false);
    this.#watchdog = new StallWatchdog(core.abi, this.#clock, parts.producerStallMs);
    this.#consumerStallMs = parts.consumerStallMs;
    this.#fences = parts.keyOrder ? new KeyOrderFences(core, this.#clock) : undefined;
    // Lanes of producer and collector threads that exit without detach() come back. The
    // platform holds the listener weakly: this manager keeps it alive, and nothing keeps an
    // unreachable manager (closed or not) alive for it.
    this.#releaseLanesOf = (threadId) => core.releaseLanesOf(threadId);
    this.#stopWatchingThreads = onThreadExit(this.#releaseLanesOf);
    const wiring: MapperWiring = {
      core,
      assertOpen: (method) => this.#assertOpen(method), // scale-ups through manager.mapper after close()
      onAllocated: (id, slot) => {
        // The consumer is in place before the shard can be routed to (Active comes later,
        // or, for scaleUp's Active shards, right after this returns).
        this.#slots.set(id, slot);
        this.#pool?.assign(id, slot);
        this.#emit({ type: 'shardProvisioned', shardId: id, at: this.#clock() });
      },
      onActivated: (id) => this.#emit({ type: 'shardActivated', shardId: id, at: this.#clock() }),
      onDraining: (id, slot) => {
        core.abi.ringClose(slot); // the table was rebuilt first: producers re-select
        this.#emit({ type: 'shardDraining', shardId: id, at: this.#clock() });
      },
      onStopped: (id) => this.#emit({ type: 'shardStopped', shardId: id, at: this.#clock() }),
      onRemoved: (id, slot) => {
        for (let k = 0; k < this.#retired.length; k++) this.#retired[k]! += core.abi.total(slot, k);
        this.#slots.delete(id);
        this.#errorLog.delete(id);
        this.#watchdog.forget(slot);
        this.#pool?.release(id);
        this.#emit({ type: 'shardRemoved', shardId: id, at: this.#clock() });
      },
      keyOrder: this.#fences,
      onKeysMoving: (groups) => {
        for (const g of groups)
          this.#emit({ type: 'keysMoving', fromShard: g.fromShard, toShard: g.toShard, slots: g.slots, cause: g.cause, at: this.#clock() });
        this.#watchFences();
      },
      onKeysMoved: (groups) => {
        for (const g of groups)
          this.#emit({ type: 'keysMoved', toShard: g.toShard, slots: g.slots, waitedMs: g.waitedMs, at: this.#clock() });
      },
    };
    if (pool && options.clock === undefined) this.#startHousekeeping(parts.producerStallMs, parts.consumerStallMs);
    this.mapper = new ShardMapper(parts.initialShards, parts.ringCapacity, parts.policy, {
      clock: this.#clock,
      drainGraceMs: options.drainGraceMs,
      memory: parts.kind,
      [WIRING]: wiring,
      routing: parts.routing,
      loadBound: parts.loadBound,
    } as ConstructorParameters<typeof ShardMapper>[3]);
  }

  /** Create a manager (and its consumer threads, when `options.consumer` is given). */
  static async create(options: ShardManagerOptions): Promise<ShardManager> {
    const settings = checkManagerOptions(options);
    const {
      initialShards,
      ringCapacity,
      ringLimit,
      ringBytes,
      maxPayload,
      backpressure,
      bp,
      policy,
      routing,
      loadBound,
      keyOrder,
      maxSlots,
      kind,
    } = settings;
    const { producerStallMs, threads, batchSize, consumerStallMs, consumerSpinUs, maxThreads } = settings;
    await compileAsync(kind);
    const core = SharedCore.createSync({
      kind,
      tableCapacity: tableCapacity(routing, policy.maxShards),
      maxSlots,
      initialSlots: initialShards,
      ringCapacity,
      ringLimit,
      ringBytes,
      maxPayload,
      lanes: maxThreads,
      laneBytes: Math.max(DEFAULT_LANE_BYTES, 2 * (maxPayload + 64)),
      backpressure: bp.code,
      sampleRate: bp.rate,
      sampleFill: policy.fillRatioThreshold,
      keyOrder,
    });
    let self: ShardManager | undefined;
    const pool =
      threads > 0
        ? await ConsumerPool.start(core, options.consumer!, threads, batchSize, consumerSpinUs, {
            onError: (error, shardId) => {
              if (self) self.#consumerError(error, shardId);
            },
            onWorkerExit: (worker, exitCode, rewound) => {
              if (self) self.#emit({ type: 'consumerRestarted', worker, exitCode, rewound, at: self.#clock() });
            },
            onRestartFailed: (error) => {
              if (self) self.#emit({ type: 'tickError', error, at: self.#clock() });
              else console.error(error);
            },
            onStalled: (worker) => {
              if (self) self.#emit({ type: 'consumerStalled', worker, at: self.#clock() });
            },
          })
        : undefined;
    self = new ShardManager({
      options,
      core,
      pool,
      policy,
      initialShards,
      ringCapacity: ringLimit,
      maxPayload,
      backpressure,
      kind,
      producerStallMs,
      consumerStallMs,
      routing,
      loadBound,
      keyOrder,
    });
    return self;
  }

  /**
   * With consumer threads, a reservation a killed producer left unwritten and a consumer
   * thread stuck in a synchronous function would each stop a shard until something runs the
   * stall watchdog and the heartbeat check: tick() does, but only a started scaling loop
   * calls it. So while the loop is not started, this timer runs those two (nothing else:
   * no metrics window, no scaling). With options.clock the caller owns time: tick() runs them.
   */
  #startHousekeeping(producerStallMs: number, consumerStallMs: number): void {
    const period = Math.min(HOUSEKEEPING_MAX_MS, Math.max(HOUSEKEEPING_MIN_MS, Math.min(producerStallMs, consumerStallMs) / 4));
    this.#housekeeping = unrefTimer(
      setInterval(() => {
        if (this.#closed || this.#timer !== undefined) return; // closed, or tick() does it
        this.#recoveryChecks();
      }, period),
    );
  }

  /** The stall watchdog, then the consumer threads' heartbeats (tick() and housekeeping). */
  #recoveryChecks(): void {
    this.#watchStalls();
    this.#pool?.checkHeartbeats(this.#clock(), this.#consumerStallMs);
  }

  /**
   * While slots are published fenced, look every few ms for fences whose wait is over and
   * publish those slots plain again. The wait itself ends in the push path the moment the old
   * shard's consumer acknowledges the mark; this only spares the pushes of those slots the
   * fence check (a read of the old shard's cursor) sooner than the next tick would.
   */
  #watchFences(): void {
    if (this.#fenceTimer !== undefined || this.#closed) return;
    this.#fenceTimer = unrefTimer(
      setInterval(() => {
        if (this.#closed || (this.#fences?.fencedCount ?? 0) === 0) {
          clearInterval(this.#fenceTimer);
          this.#fenceTimer = undefined;
          return;
        }
        this.mapper.liftPassedFences();
      }, FENCE_LIFT_MS),
    );
  }

  #emit(event: ManagerEvent): void {
    if (!this.#onEvent) return;
    try {
      this.#onEvent(event);
    } catch (error) {
      console.error('shard-mapper: onEvent threw', error);
    }
  }

  #consumerError(error: Error, shardId: number): void {
    const at = this.#clock();
    this.#emit({ type: 'consumerError', shardId, error, at });
    if (this.#onConsumerError) this.#onConsumerError(error, shardId);
    else this.#logConsumerError(error, shardId, at);
  }

  /** Without onConsumerError, errors go to the console: a shard's first, then at most one a
   *  shard every CONSUMER_ERROR_LOG_MS with how many came since. A batch that always throws
   *  is retried every few milliseconds, and a stack trace each time would flood the log. */
  #logConsumerError(error: Error, shardId: number, at: number): void {
    const seen = this.#errorLog.get(shardId);
    if (seen !== undefined && at - seen.loggedAt < CONSUMER_ERROR_LOG_MS) {
      seen.since++;
      return;
    }
    const more = seen && seen.since > 0 ? ` (${seen.since} more errors of this shard since the last one logged)` : '';
    this.#errorLog.set(shardId, { loggedAt: at, since: 0 });
    console.error(
      `shard-mapper: consumer of shard ${shardId} threw; the batch will be retried${more}; pass options.onConsumerError to handle errors yourself:`,
      error,
    );
  }

  #assertOpen(method: string): void {
    if (this.#closed) throw new ManagerClosedError(method);
  }

  #slotFor(method: string, id: number): number {
    if (typeof id !== 'number' || !Number.isInteger(id)) throw invalid(`${method}: shard id must be an integer, got ${describe(id)}`);
    const slot = this.#slots.get(id);
    if (slot === undefined) throw invalid(`${method}: unknown shard ${id}`);
    return slot;
  }

  // ---- producing ------------------------------------------------------------------------

  /**
   * Route an event (a uint32 hash, or a string/bytes key hashed with hashKey) and append it
   * to that shard's ring, in one WebAssembly call. `true` when accepted; `false` when dropped
   * by backpressure or unrouted (no Active shard). Throws BackpressureError under
   * failProducer when the ring is full, and ManagerClosedError after close().
   */
  push(key: EventKey, payload: EventPayload): boolean {
    return this.#producer.push(key, payload);
  }

  /** Push many events; returns how many were accepted (see ShardProducer.pushBatch). */
  pushBatch(keys: ArrayLike<EventKey>, payloads: ArrayLike<EventPayload>): number;
  /** The same with events as `[key, payload]` pairs or `{ key, payload }` objects. */
  pushBatch(events: ArrayLike<BatchEvent>): number;
  pushBatch(keysOrEvents: ArrayLike<EventKey> | ArrayLike<BatchEvent>, payloads?: ArrayLike<EventPayload>): number {
    return payloads === undefined
      ? this.#producer.pushBatch(keysOrEvents as ArrayLike<BatchEvent>)
      : this.#producer.pushBatch(keysOrEvents as ArrayLike<EventKey>, payloads);
  }

  /** Push fixed-size binary records in bulk, the fastest path (see ShardProducer.pushFixed). */
  pushFixed(hashes: Uint32Array, records: Uint8Array, recordSize: number): number {
    return this.#producer.pushFixed(hashes, records, recordSize);
  }

  /** What a worker thread passes to `ShardProducer.attach` to push into these rings. */
  producerHandle(): ProducerHandle {
    this.#assertOpen('producerHandle'); // a thread attached now could only be refused
    if (this.memoryKind !== 'shared') {
      throw new Error(
        "shard-mapper: producerHandle: this manager runs in the single-thread fallback (memoryKind 'single': no SharedArrayBuffer), so no other thread can attach. " +
          'In a browser, serve the page with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp; or push from this thread',
      );
    }
    return { core: this.#core.handle(), maxPayloadBytes: this.maxPayloadBytes };
  }

  // ---- consuming ------------------------------------------------------------------------

  /** A poll variant's last check before it takes records: the shard is not the consumer
   *  threads' (a ring has one consumer at a time); then its producers are watched for stalls
   *  while this thread polls it. */
  #pollHere(method: string, shardId: number, slot: number): void {
    if (this.#pool?.owns(shardId))
      throw new Error(`${method}: shard ${shardId} is consumed by worker threads (options.consumer); a ring has one consumer at a time`);
    this.#watchStalls([slot]);
  }

  /** Take up to `max` records of a shard, in push order (copies; they count as delivered). */
  poll(shardId: number, max: number = this.ringCapacity): Uint8Array[] {
    const slot = this.#slotFor('poll', shardId);
    checkInteger('max', max, 1, Number.MAX_SAFE_INTEGER);
    this.#pollHere('poll', shardId, slot);
    const core = this.#core;
    const out: Uint8Array[] = [];
    while (out.length < max) {
      const n = core.claimInView(slot, Math.min(max - out.length, this.ringCapacity));
      if (n === 0) break;
      const start = core.claimStart;
      const base = core.claimBase;
      for (let k = 0; k < n; k++) {
        const rec = core.recordAt(base, start + k);
        const at = core.payloadAt(base, rec);
        out.push(core.u8.slice(at, at + core.lengthAt(rec)));
      }
      core.abi.ringAck(slot, start, n, n);
    }
    return out;
  }

  /**
   * Copy up to `lengths.length` records of a shard, in push order, back to back into
   * `target` (record i's length in `lengths[i]`), and return how many it took (0: the ring
   * is empty). What it returns counts as delivered. It takes as many whole records as fit;
   * if not even the next record fits it throws a RangeError and takes nothing (a 0-byte
   * target takes empty records only). Allocates nothing for records up to 64 bytes (larger
   * ones are copied through one short-lived view).
   */
  pollInto(shardId: number, target: Uint8Array, lengths: Uint32Array): number {
    const slot = this.#slotFor('pollInto', shardId);
    if (!(target instanceof Uint8Array)) throw invalid(`pollInto: target must be a Uint8Array, got ${describe(target)}`);
    if (!(lengths instanceof Uint32Array)) throw invalid(`pollInto: lengths must be a Uint32Array, got ${describe(lengths)}`);
    if (lengths.length === 0) throw new RangeError('pollInto: lengths is empty: its length is the most records to take, so at least 1');
    this.#pollHere('pollInto', shardId, slot);
    const core = this.#core;
    const abi = core.abi;
    let count = 0;
    let at = 0;
    while (count < lengths.length) {
      const n = core.claimInView(slot, Math.min(lengths.length - count, this.ringCapacity));
      if (n === 0) break;
      const start = core.claimStart;
      const base = core.claimBase;
      const u8 = core.u8;
      let k = 0;
      for (; k < n; k++) {
        const rec = core.recordAt(base, start + k);
        const len = core.lengthAt(rec);
        if (at + len > target.length) break;
        const from = core.payloadAt(base, rec);
        if (len <= 64) for (let b = 0; b < len; b++) target[at + b] = u8[from + b]!;
        else target.set(u8.subarray(from, from + len), at);
        lengths[count + k] = len;
        at += len;
      }
      if (k > 0) abi.ringAck(slot, start, k, k);
      count += k;
      if (k < n) {
        abi.ringRewind(slot); // the records that did not fit go back, first in line
        if (count === 0) {
          const need = core.lengthAt(core.recordAt(base, start));
          throw new RangeError(
            `pollInto: target has ${target.length} bytes, the next record of shard ${shardId} needs ${need}; nothing was taken`,
          );
        }
        break;
      }
    }
    return count;
  }

  /**
   * Hand the next batch of a shard's records (at most `max`) to `consume` as one RecordBatch
   * read in place, and acknowledge it when `consume` returns; returns how many records it
   * delivered (0: the ring was empty; `consume` is not called). `consume` must be
   * synchronous and must not keep the batch; if it throws, the records stay first in line
   * and the error is rethrown.
   */
  pollBatch(shardId: number, consume: (batch: RecordBatch, shardId: number) => void, max: number = this.ringCapacity): number {
    const slot = this.#slotFor('pollBatch', shardId);
    if (typeof consume !== 'function')
      throw invalid(`pollBatch: consume must be a function (batch, shardId) => void, got ${describe(consume)}`);
    checkInteger('max', max, 1, Number.MAX_SAFE_INTEGER);
    this.#pollHere('pollBatch', shardId, slot);
    const core = this.#core;
    const abi = core.abi;
    const n = core.claimInView(slot, Math.min(max, this.ringCapacity));
    if (n === 0) return 0;
    const start = core.claimStart;
    const base = core.claimBase;
    const batch = (this.#pollBatch ??= new RecordBatch(Math.min(max, this.ringCapacity)));
    batch.fill(shardId, core.u8, core.u32, base, core.ringCapacity, base + core.payloadOffset, start, n);
    let result: unknown;
    try {
      result = consume(batch, shardId);
    } catch (error) {
      abi.ringRewind(slot);
      throw error;
    }
    if (result !== null && typeof result === 'object' && typeof (result as { then?: unknown }).then === 'function') {
      abi.ringRewind(slot);
      throw new TypeError(
        'pollBatch: consume returned a promise; it must be synchronous (the batch is only valid during the call). The records were not taken; use options.consumer for asynchronous consumers',
      );
    }
    abi.ringAck(slot, start, n, n);
    return n;
  }

  /** Records in a shard's ring (accepted, not yet acknowledged). */
  ringLength(shardId: number): number {
    return this.#core.abi.ringLen(this.#slotFor('ringLength', shardId)) >>> 0;
  }

  /** Payload bytes a shard's ring holds (out of ringBufferBytes; see ShardStats.bytes). */
  ringBytesUsed(shardId: number): number {
    return this.#core.abi.ringBytesUsed(this.#slotFor('ringBytesUsed', shardId)) >>> 0;
  }

  /** Totals since creation (they never go down when shards are removed) and per-shard figures. */
  stats(): ShardManagerStats {
    const abi = this.#core.abi;
    const totals = [...this.#retired];
    const shards: ShardStats[] = [];
    if (!this.#closed) this.mapper.liftPassedFences();
    const moving = this.#fences?.perShard();
    for (const [id, slot] of this.#slots) {
      const t = Array.from({ length: TOTALS }, (_, k) => abi.total(slot, k));
      for (let k = 0; k < totals.length; k++) totals[k]! += t[k]!;
      shards.push({
        id,
        state: this.mapper.shardState(id)!,
        length: abi.ringLen(slot) >>> 0,
        bytes: abi.ringBytesUsed(slot) >>> 0,
        pushed: t[Total.Pushed]!,
        delivered: t[Total.Delivered]!,
        dropped: t[Total.DroppedNewest]! + t[Total.Sampled]! + t[Total.Evicted]!, // refusals are not drops
        movingOut: moving?.get(id)?.out ?? 0,
        movingIn: moving?.get(id)?.in ?? 0,
      });
    }
    const keyOrder = this.#fences?.stats() ?? {
      enabled: false,
      waitingSlots: 0,
      oldestWaitMs: 0,
      longestWaitMs: 0,
      movedSlots: 0,
      refused: 0,
    };
    const drops = {
      newest: totals[Total.DroppedNewest]!,
      oldest: totals[Total.Evicted]!,
      sampled: totals[Total.Sampled]!,
      refused: totals[Total.Refused]!,
      moving: keyOrder.refused,
    };
    return {
      pushed: totals[Total.Pushed]!,
      delivered: totals[Total.Delivered]!,
      // failProducer refuses moving keys (the caller keeps them); the other modes discard them.
      dropped: drops.newest + drops.oldest + drops.sampled + (this.backpressure.kind === 'failProducer' ? 0 : drops.moving),
      keyOrder,
      unrouted: abi.unroutedTotal(),
      drops,
      inFlight: totals[Total.Pushed]! - totals[Total.Delivered]! - drops.oldest,
      skipped: totals[Total.Skipped]!,
      shards,
    };
  }

  /** Bytes of each shard ring's payload area (options.ringBufferBytes, rounded up to 8, or its default). */
  get ringBufferBytes(): number {
    return this.#core.ringBytes;
  }

  /** Bytes of the WebAssembly memory right now (it grows as shards are added; freed
   *  shard slots are reused before it grows again). */
  get memoryBytes(): number {
    return this.#core.memory.buffer.byteLength;
  }

  /** Consumer threads and the shards each owns ([] without options.consumer); `ready`: its
   *  module loaded and it consumes (a replacement is alive before it is ready). */
  consumers(): { index: number; shards: number[]; alive: boolean; ready: boolean }[] {
    return this.#pool?.describe() ?? [];
  }

  /** End one consumer thread abruptly (as a crash would). A fresh thread takes its shards
   *  over from their last acknowledgement. */
  async terminateConsumer(index: number): Promise<void> {
    this.#assertOpen('terminateConsumer');
    if (!this.#pool) throw new RangeError('terminateConsumer: this manager has no consumer threads (options.consumer)');
    await this.#pool.terminateWorker(index);
  }

  // ---- the scaling loop -----------------------------------------------------------------

  /**
   * One pass: collectMetrics → evaluateScaling → act (scale-up: Provisioning, consumer
   * wired, then activate; scale-down: drain) → finalizeDraining → remove Stopped shards
   * whose ring is empty and acknowledged. Returns the decision. Synchronous.
   */
  tick(): ScalingDecision {
    if (this.#closed) return NONE;
    this.#recoveryChecks();
    const mapper = this.mapper;
    mapper.collectMetrics();
    const decision = mapper.evaluateScaling();
    if (decision.kind !== 'none') this.#emit({ type: 'scalingDecision', decision, at: this.#clock() });
    try {
      if (decision.kind === 'scaleUp') {
        this.#activateAll(mapper.scaleUpProvisioning(decision.count));
      } else if (decision.kind === 'scaleDown') {
        mapper.scaleDown(decision.count);
      }
    } finally {
      this.#settleDraining();
    }
    return decision;
  }

  /** Closed, and every reservation published or skipped: no push can still change this ring. */
  #quiescent(slot: number): boolean {
    return this.#core.abi.ringIsClosed(slot) !== 0 && this.#core.abi.ringAllPublished(slot) !== 0;
  }

  /** Quiescent and fully acknowledged. */
  #drained(slot: number): boolean {
    return this.#quiescent(slot) && this.#core.abi.ringLen(slot) === 0;
  }

  #settleDraining(): void {
    const mapper = this.mapper;
    for (const [id, slot] of this.#slots) {
      const state = mapper.shardState(id);
      // A push that reserved before the ring closed may be counted after the drain reset
      // the counter; once the ring is closed and fully published none can follow.
      if (state === ShardState.Draining && mapper.metricsCollector(id)!.pushesSinceDrainStart() > 0 && this.#quiescent(slot)) {
        mapper.metricsCollector(id)!.setDraining(true);
      }
    }
    let callbackError: { error: unknown } | undefined;
    try {
      mapper.finalizeDraining();
    } catch (error) {
      callbackError = { error }; // onShardRemoved threw: the shards are Stopped all the same
    }
    for (const [id, slot] of [...this.#slots]) {
      if (mapper.shardState(id) === ShardState.Stopped && this.#core.abi.ringLen(slot) === 0) mapper.removeSpecificStoppedShard(id);
    }
    if (callbackError) throw callbackError.error;
  }

  /** Activate every id even if a callback throws on one (none is left Provisioning), then
   *  rethrow the first callback error. */
  #activateAll(ids: readonly number[]): void {
    let callbackError: { error: unknown } | undefined;
    for (const id of ids) {
      try {
        this.mapper.activate(id);
      } catch (error) {
        callbackError ??= { error };
      }
    }
    if (callbackError) throw callbackError.error;
  }

  /** Run tick() every policy.metricsWindowMs (the timer does not keep Node alive). */
  start(): void {
    this.#assertOpen('start');
    if (this.#timer !== undefined) return;
    let logged: string | undefined; // the failure last written to the console
    this.#timer = unrefTimer(
      setInterval(() => {
        try {
          this.tick();
          logged = undefined;
        } catch (error) {
          if (this.#onEvent) this.#emit({ type: 'tickError', error: error as Error, at: this.#clock() });
          else {
            // Once per kind of failure, not once per window (ids run out: every window fails alike).
            const message = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
            if (message !== logged)
              console.error(
                'shard-mapper: the scaling loop failed; it keeps running (the same failure is not logged again until a pass succeeds):',
                error,
              );
            logged = message;
          }
        }
      }, this.mapper.policy().metricsWindowMs),
    );
  }

  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #stopFenceTimer(): void {
    if (this.#fenceTimer !== undefined) clearInterval(this.#fenceTimer);
    this.#fenceTimer = undefined;
  }

  // ---- operator calls -------------------------------------------------------------------

  /** Add one shard now (no cooldown: an operator's call); resolves to its id. */
  async addShard(): Promise<number> {
    this.#assertOpen('addShard');
    return (await this.manualScaleUp(1))[0]!;
  }

  /** Add n shards with one forced provisioning call, then wire and activate each. */
  async manualScaleUp(n: number): Promise<number[]> {
    this.#assertOpen('manualScaleUp');
    checkInteger('n', n, 0, 0xffff);
    if (this.#waitsForReleases(n)) {
      await this.#slotsReleased(n);
      this.#assertOpen('manualScaleUp');
    }
    const ids = this.mapper.scaleUpProvisioningForce(n);
    this.#activateAll(ids);
    return ids;
  }

  /** A removed shard's slot is free once its consumer thread let go of the ring (a message
   *  its event loop answers). When only such slots stand between an operator's call and
   *  `n` free ones, wait for them, up to SLOT_RELEASE_WAIT_MS in all; then the mapper's
   *  own check decides (and refuses with ShardCreationFailed if they are still held). */
  async #slotsReleased(n: number): Promise<void> {
    const until = performance.now() + SLOT_RELEASE_WAIT_MS;
    while (this.#waitsForReleases(n)) {
      const left = until - performance.now();
      if (left <= 0) return;
      await this.#pool!.nextRelease(left);
    }
  }

  #waitsForReleases(n: number): boolean {
    return this.#pool !== undefined && !this.#core.canAllocate(n) && this.#pool.releasesInFlight() > 0;
  }

  /** Start draining a shard: it stops receiving events at once; its ring is delivered. */
  async drainShard(id: number): Promise<void> {
    this.#assertOpen('drainShard');
    this.mapper.drainSpecific(id);
  }

  /** Remove a shard: an Active one is drained first; resolves once it is gone and every
   *  event it accepted has been delivered. A Provisioning shard is rolled back. */
  async removeShard(id: number): Promise<void> {
    this.#assertOpen('removeShard');
    this.#slotFor('removeShard', id);
    const state = this.mapper.shardState(id);
    if (state === ShardState.Provisioning) {
      this.mapper.discardProvisioning(id);
      return;
    }
    if (state === ShardState.Active) this.mapper.drainSpecific(id);
    await this.#awaitRemoval([id]);
  }

  /** Drain the n least-loaded Active shards (no cooldown: an operator's call) and resolve
   *  to their ids once all are removed. Refuses (AtMinShards) to go below minShards. */
  async manualScaleDown(n: number): Promise<number[]> {
    this.#assertOpen('manualScaleDown');
    checkInteger('n', n, 0, 0xffff);
    if (n === 0) return [];
    const p = this.mapper.policy();
    const active = this.mapper.activeShardCount();
    if (active - n < p.minShards) {
      throw new ScalingError('AtMinShards', `manualScaleDown: ${active} active - ${n} would go below minShards ${p.minShards}`);
    }
    const ids = this.mapper.leastLoadedIds(n);
    for (const id of ids) this.mapper.drainSpecific(id);
    await this.#awaitRemoval(ids);
    return ids;
  }

  async #awaitRemoval(ids: number[]): Promise<void> {
    const pending = new Set(ids);
    let callbackError: { error: unknown } | undefined;
    while (pending.size > 0) {
      for (const id of [...pending]) {
        const slot = this.#slots.get(id);
        if (slot === undefined) {
          pending.delete(id);
          continue;
        }
        const state = this.mapper.shardState(id);
        if (state === ShardState.Draining && this.#drained(slot)) {
          try {
            this.mapper.stopDrained(id);
          } catch (error) {
            callbackError ??= { error }; // onShardRemoved threw: finish the removal, then report it
          }
        }
        if (this.mapper.shardState(id) === ShardState.Stopped && this.#core.abi.ringLen(slot) === 0) {
          this.mapper.removeSpecificStoppedShard(id);
          pending.delete(id);
        }
      }
      if (pending.size > 0) {
        await sleep(WAIT_STEP_MS);
        this.#watchStalls([...pending].flatMap((id) => this.#slots.get(id) ?? []));
      }
    }
    if (callbackError) throw callbackError.error;
  }

  // ---- shutting down --------------------------------------------------------------------

  /**
   * Stop accepting pushes, let the consumer threads take every accepted event, stop the
   * timer and the threads. Without consumer threads it resolves at once and what is left
   * in the rings can still be poll()ed.
   *
   * `timeoutMs` (on the manager's clock) bounds the wait for the consumer threads, for a
   * shutdown with a deadline: past it they are ended whatever they hold, the records they
   * had not acknowledged go back to their rings, and close rejects with a CloseTimeoutError
   * that counts the events left undelivered (poll() still reads them). Without it, close
   * waits as long as the consumers take (a consumer that always throws keeps it waiting);
   * a consumer thread that died or hangs (no heartbeat for consumer.stallMs: a Web Worker's
   * death sends no event) is ended meanwhile, and replaced while its shards hold events.
   * A call while an earlier one is under way returns the earlier one's promise.
   */
  close(options?: { timeoutMs?: number }): Promise<void> {
    let timeoutMs: number | undefined;
    try {
      timeoutMs = closeTimeout(options);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.#closing) return this.#closing;
    this.#closed = true;
    this.stop();
    this.#stopFenceTimer();
    if (this.#housekeeping !== undefined) clearInterval(this.#housekeeping);
    this.#stopWatchingThreads();
    const abi = this.#core.abi;
    // The flag first, then every ring closed: a producer that read the flag before it was
    // set and reserves afterwards finds its ring closed, reads the flag again and gets
    // ManagerClosedError. So every push that returned true reserved before its ring closed,
    // and the wait below sees its record.
    abi.stopPushes();
    for (const slot of this.#slots.values()) abi.ringClose(slot);
    this.#closing = (async () => {
      const pool = this.#pool;
      if (!pool) return;
      const deadline = timeoutMs === undefined ? Infinity : this.#clock() + timeoutMs;
      for (;;) {
        // Heartbeats too: a consumer thread that died holding shards with records (a Web
        // Worker's death sends no event) is replaced, and its replacement delivers them.
        this.#recoveryChecks();
        let busy = false;
        for (const slot of this.#slots.values()) {
          if (!this.#drained(slot)) {
            busy = true;
            break;
          }
        }
        if (!busy) break;
        if (this.#clock() >= deadline) {
          await pool.close(true);
          let undelivered = 0;
          for (const slot of this.#slots.values()) {
            abi.ringRewind(slot); // what an ended thread claimed comes first again, for poll()
            undelivered += abi.ringLen(slot);
          }
          throw new CloseTimeoutError(timeoutMs!, undelivered);
        }
        await sleep(WAIT_STEP_MS);
      }
      // Every event was acknowledged: threads that do not answer the stop (dead, or hung)
      // are ended after stallMs of silence, or at the deadline.
      await pool.close(false, { now: this.#clock, stallMs: this.#consumerStallMs, deadline });
    })();
    return this.#closing;
  }

  /** Skip reservations that producers left unwritten for producerStallMs (see StallWatchdog).
   *  The poll calls look only at the ring they take from; removal at the rings it waits
   *  for; tick and close at all. */
  #watchStalls(slots: Iterable<number> = this.#slots.values()): void {
    for (const { slot, records } of this.#watchdog.check(slots)) {
      const id = [...this.#slots].find(([, s]) => s === slot)![0];
      this.#emit({ type: 'producerStallSkipped', shardId: id, records, at: this.#clock() });
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // ---- streams (src/streams.ts) ---------------------------------------------------------

  /**
   * A Node Writable in object mode taking `{ key, payload }` records. While a ring is full
   * (failProducer) a write waits for room instead of failing, so `write()` returns false once
   * `highWaterMark` records are held and 'drain' follows when there is room again:
   * `stream.pipeline(source, manager.writable())` gets backpressure. Records dropped by
   * dropNewest/sample or unrouted are counted as push() counts them. Node only.
   */
  writable(options?: WritableOptions): Writable {
    return createWritable(
      this,
      () => this.#closed,
      (key) => this.#keyWaits(key),
      options,
    );
  }

  /** The same as a WHATWG WritableStream (browsers, Deno, Node): a write's promise settles
   *  once the record is in a ring, and the writer's `ready` waits while the queue is full. */
  writableStream(options?: WritableOptions): WritableStream<ManagerRecord> {
    return createWritableStream(
      this,
      () => this.#closed,
      (key) => this.#keyWaits(key),
      options,
    );
  }

  /** Whether a push of `key` would wait for its key's move now (stream writers ask instead of pushing again). */
  #keyWaits(key: EventKey): boolean {
    const fences = this.#fences;
    if (fences === undefined || fences.fencedCount === 0) return false;
    if (typeof key !== 'number' && typeof key !== 'string' && !(key instanceof Uint8Array)) return false; // push names the error
    return fences.waits(keyHash(key, 'writable'));
  }

  /** `for await (const batch of manager.batches(id))`: the shard's records in push order, as
   *  poll() takes them (they count as delivered). Ends once the manager is closed or the
   *  shard drained, after every record it accepted was yielded. */
  batches(shardId: number, options?: BatchesOptions): AsyncIterableIterator<Uint8Array[]> {
    this.#slotFor('batches', shardId); // refuses a bad or unknown id now, not at the first next()
    return shardBatches(this, shardId, () => this.#closed, options);
  }
}
