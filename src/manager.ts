// ShardManager: the runtime around a ShardMapper. Owns one ring per shard in the shared
// memory, routes pushes through the mapper's table, runs the scaling loop, and moves a
// shard through Provisioning → Active → Draining → Stopped → removed without losing or
// duplicating an accepted event.
import { SharedCore, payloadExtent } from './core.js';
import { ConsumerPool, type ConsumerOptions } from './consumer-pool.js';
import { ManagerClosedError, ScalingError, checkFinite, checkFunction, checkInteger, describe, given, invalid } from './errors.js';
import { ShardMapper, ShardState, WIRING, type MapperWiring, type ScalingDecision } from './mapper.js';
import { resolvePolicy, type ScalingPolicy } from './policy.js';
import { checkLoadBound, checkRouting, tableCapacity, type RoutingMode } from './routing.js';
import { ShardProducer, type BatchEvent, type EventKey, type EventPayload, type ProducerHandle } from './producer.js';
import { Total, TOTALS } from './abi.js';
import { StallWatchdog } from './stall-watchdog.js';
import { sleep } from './sleep.js';
import { checkBackpressure, checkMaxPayloadBytes, checkOptionalBoolean } from './validate.js';
import { KeyOrderFences } from './key-order.js';
import { BackpressureMode, type ManagerEvent, type ManagerStats, type ShardStats } from './types.js';
import { RecordBatch } from './record-batch.js';
import { checkMemoryKind, compileAsync, type MemoryKind } from './wasm.js';
import { cpuCount, onThreadExit } from '#platform';
import type { Writable } from 'node:stream';
import { createWritable, createWritableStream, shardBatches, type BatchesOptions, type ManagerRecord, type WritableOptions } from './streams.js';
import {
  BP_DROP_NEWEST, BP_DROP_OLDEST, BP_FAIL_PRODUCER, BP_SAMPLE, MAX_LANES, DEFAULT_LANE_BYTES, PAYLOAD_ALIGN, MAX_RING_BYTES,
} from './layout.generated.js';

export interface ShardManagerOptions {
  initialShards: number;
  /** Records per shard ring; rounded up to a power of two (see `manager.ringCapacity`). */
  ringBufferCapacity: number;
  policy?: Partial<ScalingPolicy>;
  /** Default failProducer: nothing accepted is evicted unless you choose dropOldest. */
  backpressure?: BackpressureMode;
  clock?: () => number;
  drainGraceMs?: number;
  /** How long (ms, by `clock`) a consumer may wait on a record a producer reserved and never
   *  wrote before it is skipped (default 1000). Only a producer thread that died or stalled
   *  inside pushBatch/pushFixed leaves one; a slow producer that finds its record skipped
   *  pushes the event again, so this is a latency knob, not a safety one. */
  producerStallMs?: number;
  /** Largest event payload in bytes (default 256); at most a quarter of ringBufferBytes. */
  maxPayloadBytes?: number;
  /** Bytes of each shard ring's payload area (rounded up to a multiple of 8). Payloads take
   *  their own length rounded up to 8, so memory follows the events, not the largest one.
   *  Default: (ringCapacity + 1) × min(maxPayloadBytes, 256) (rounded up to 8), and at least
   *  4 × maxPayloadBytes: room for ringBufferCapacity typical events (all of them, of any
   *  size, when maxPayloadBytes ≤ 256); a few large events fill a ring by bytes, which the
   *  fill ratio reports and autoscaling answers. */
  ringBufferBytes?: number;
  /** Run consumers in worker threads; without it the application consumes with poll(). */
  consumer?: ConsumerOptions;
  onConsumerError?: (error: Error, shardId: number) => void;
  /** Lifecycle and scaling events (OpenTelemetry-friendly hook). */
  onEvent?: (event: ManagerEvent) => void;
  /** Most shard slots alive at once, draining ones included (default max(2·maxShards, maxShards + 16)). */
  maxSlots?: number;
  /** 'shared' (default where possible) or 'single' (no SharedArrayBuffer: one thread). */
  memory?: MemoryKind;
  /** Threads that may attach at once, this one and consumer threads included (default
   *  max(64, consumer threads + 8), at most 256). Each costs a 16 KiB staging lane. */
  maxThreads?: number;
  /** How hashes are spread over Active shards (default: see MANAGER_DEFAULT_ROUTING). */
  routing?: RoutingMode;
  /** ε of 'affinity' routing (default 0.25). */
  loadBound?: number;
  /**
   * routing 'affinity' only (default true there): a key's events are consumed in push order
   * across moves of its slot to another shard; the moved keys' new events wait (see README,
   * Routing modes). false: the previous behaviour, per-shard order only. Refused with another
   * routing mode.
   */
  keyOrder?: boolean;
}

/** The routing mode ShardManager uses when `options.routing` is not given (README: Routing modes). */
export const MANAGER_DEFAULT_ROUTING: RoutingMode = 'balanced';

const MAX_RING_CAPACITY = 1 << 24;
const DEFAULT_MAX_THREADS = 64;
const DEFAULT_PRODUCER_STALL_MS = 1000;
const DEFAULT_CONSUMER_STALL_MS = 10_000;
const WAIT_STEP_MS = 2;
/** How often fences whose wait is over are lifted while some exist (see #watchFences). */
const FENCE_LIFT_MS = 5;
const NONE: ScalingDecision = Object.freeze({ kind: 'none' });

/** The ring's code for a backpressure mode (checked first: bad modes are refused by name). */
function backpressureCode(mode: unknown): { code: number; rate: number } {
  const checked = checkBackpressure(mode);
  switch (checked.kind) {
    case 'dropNewest': return { code: BP_DROP_NEWEST, rate: 1 };
    case 'dropOldest': return { code: BP_DROP_OLDEST, rate: 1 };
    case 'failProducer': return { code: BP_FAIL_PRODUCER, rate: 1 };
    case 'sample': return { code: BP_SAMPLE, rate: checked.rate };
  }
}

const nextPowerOfTwo = (n: number) => 2 ** Math.ceil(Math.log2(Math.max(1, n)));

/** The event size the default payload area is made for: raising maxPayloadBytes for a rare
 *  large event must not multiply every ring's memory (64 KiB × 4096 records is 256 MiB a
 *  shard, fatal in a browser tab). */
const TYPICAL_EVENT_BYTES = 256;

/** Each ring's payload area: `options.ringBufferBytes` (rounded up to 8), or room for
 *  ringCapacity payloads of the typical size (the largest one when that is smaller) plus one
 *  more: a payload never wraps, and the padding in front of one that would have crossed the
 *  end is shorter than a payload, so with maxPayloadBytes up to the typical size ringCapacity
 *  records of any sizes always fit. The largest payload may be at most a quarter of the area
 *  (its padding then costs at most a quarter too), so the default is at least 4 of them. */
function ringBytesFor(requested: unknown, ringCapacity: number, maxPayload: number): number {
  const extent = payloadExtent(maxPayload);
  const typical = Math.min(extent, TYPICAL_EVENT_BYTES);
  const ringBytes = requested === undefined
    ? Math.min(MAX_RING_BYTES, Math.max((ringCapacity + 1) * typical, 4 * extent))
    : payloadExtent(checkInteger('options.ringBufferBytes', requested, 1, MAX_RING_BYTES));
  if (4 * extent > ringBytes) {
    throw invalid(`options.maxPayloadBytes (${maxPayload}) may be at most a quarter of options.ringBufferBytes (${ringBytes}): ` +
      `raise ringBufferBytes to at least ${4 * extent} or lower maxPayloadBytes to ${Math.floor(ringBytes / 4 / PAYLOAD_ALIGN) * PAYLOAD_ALIGN}`);
  }
  return ringBytes;
}

interface Parts {
  options: ShardManagerOptions;
  core: SharedCore;
  pool: ConsumerPool | undefined;
  policy: ScalingPolicy;
  initialShards: number;
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
  /** Records per ring (ringBufferCapacity rounded up to a power of two). */
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
  readonly #pool: ConsumerPool | undefined;
  readonly #slots = new Map<number, number>(); // live shard id → slot
  readonly #retired: number[] = new Array(TOTALS).fill(0); // totals of removed shards, indexed by Total
  readonly #watchdog: StallWatchdog;
  readonly #consumerStallMs: number;
  readonly #stopWatchingThreads: () => void;
  #timer: ReturnType<typeof setInterval> | undefined;
  #fenceTimer: ReturnType<typeof setInterval> | undefined;
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
    // Lanes of producer and collector threads that exit without detach() come back.
    this.#stopWatchingThreads = onThreadExit((threadId) => core.releaseLanesOf(threadId));
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
        this.#watchdog.forget(slot);
        this.#pool?.release(id);
        this.#emit({ type: 'shardRemoved', shardId: id, at: this.#clock() });
      },
      keyOrder: this.#fences,
      onKeysMoving: (groups) => {
        for (const g of groups) this.#emit({ type: 'keysMoving', fromShard: g.fromShard, toShard: g.toShard, slots: g.slots, cause: g.cause, at: this.#clock() });
        this.#watchFences();
      },
      onKeysMoved: (groups) => {
        for (const g of groups) this.#emit({ type: 'keysMoved', toShard: g.toShard, slots: g.slots, waitedMs: g.waitedMs, at: this.#clock() });
      },
    };
    this.mapper = new ShardMapper(parts.initialShards, parts.ringCapacity, parts.policy, {
      clock: this.#clock, drainGraceMs: options.drainGraceMs, memory: parts.kind, [WIRING]: wiring,
      routing: parts.routing, loadBound: parts.loadBound,
    } as ConstructorParameters<typeof ShardMapper>[3]);
  }

  /** Create a manager (and its consumer threads, when `options.consumer` is given). */
  static async create(options: ShardManagerOptions): Promise<ShardManager> {
    if (typeof options !== 'object' || options === null) throw invalid(`options must be an object, got ${describe(options)}`);
    const initialShards = checkInteger('options.initialShards', options.initialShards, 0, 0xffff);
    const requested = checkInteger('options.ringBufferCapacity', options.ringBufferCapacity, 1, MAX_RING_CAPACITY);
    const maxPayload = checkMaxPayloadBytes(options.maxPayloadBytes);
    // At least 2: with one record the sequence word of a published record (index + 1)
    // equals the free mark of the next index, so a second push would overwrite the first.
    const ringCapacity = nextPowerOfTwo(Math.max(2, requested));
    const ringBytes = ringBytesFor(options.ringBufferBytes, ringCapacity, maxPayload);
    const backpressure = given(options.backpressure, BackpressureMode.FailProducer);
    const bp = backpressureCode(backpressure);
    const policy = resolvePolicy(options.policy, initialShards);
    const routing = options.routing === undefined ? MANAGER_DEFAULT_ROUTING : checkRouting('options.routing', options.routing);
    const loadBound = checkLoadBound('options.loadBound', options.loadBound);
    checkOptionalBoolean('options.keyOrder', options.keyOrder);
    if (options.keyOrder === true && routing !== 'affinity') {
      throw invalid(`options.keyOrder applies to routing 'affinity' only (routing is '${routing}': a hash may go to another shard at each window by design)`);
    }
    const keyOrder = routing === 'affinity' && options.keyOrder !== false;
    const defaultSlots = Math.min(0xffff, Math.max(2 * policy.maxShards, policy.maxShards + 16, initialShards));
    const maxSlots = checkInteger('options.maxSlots', given(options.maxSlots, defaultSlots), Math.max(1, initialShards), 0xffff);
    const kind = checkMemoryKind(options.memory);
    if (options.clock !== undefined) checkFunction('options.clock', options.clock);
    if (options.drainGraceMs !== undefined) checkFinite('options.drainGraceMs', options.drainGraceMs, 0);
    const producerStallMs = checkFinite('options.producerStallMs', given(options.producerStallMs, DEFAULT_PRODUCER_STALL_MS), 0);
    for (const name of ['onEvent', 'onConsumerError'] as const) {
      if (options[name] !== undefined) checkFunction(`options.${name}`, options[name]);
    }
    let threads = 0;
    let batchSize = 0;
    let consumerStallMs = DEFAULT_CONSUMER_STALL_MS;
    if (options.consumer !== undefined) {
      const c = options.consumer;
      if (typeof c !== 'object' || c === null || (c.worker === undefined && typeof c.module !== 'string' && !(c.module instanceof URL))) {
        throw invalid(`options.consumer.module must be a path or URL, got ${describe((c as { module?: unknown } | null)?.module)}`);
      }
      if (c.worker !== undefined && (typeof c.worker !== 'function' || c.module !== undefined)) {
        throw invalid(`options.consumer.worker must be a function returning a Worker, given instead of options.consumer.module, got ${describe(c.worker)}`);
      }
      if (kind !== 'shared') throw invalid('options.consumer needs shared memory (SharedArrayBuffer); in the single-thread fallback consume with poll()');
      threads = checkInteger('options.consumer.threads', given(c.threads, cpuCount()), 1, MAX_LANES - 2);
      batchSize = checkInteger('options.consumer.batchSize', given(c.batchSize, 256), 1, MAX_RING_CAPACITY);
      consumerStallMs = checkFinite('options.consumer.stallMs', given(c.stallMs, DEFAULT_CONSUMER_STALL_MS), 0, true);
      checkOptionalBoolean('options.consumer.batch', c.batch);
    }
    // One lane per attached thread: this one, each consumer thread, each producer thread.
    const maxThreads = checkInteger('options.maxThreads', given(options.maxThreads, Math.max(DEFAULT_MAX_THREADS, threads + 8)), threads + 1, MAX_LANES);
    await compileAsync(kind);
    const core = SharedCore.createSync({
      kind, tableCapacity: tableCapacity(routing, policy.maxShards), maxSlots, initialSlots: initialShards, ringCapacity, ringBytes, maxPayload,
      lanes: maxThreads, laneBytes: Math.max(DEFAULT_LANE_BYTES, 2 * (maxPayload + 64)), backpressure: bp.code,
      sampleRate: bp.rate, sampleFill: policy.fillRatioThreshold, keyOrder,
    });
    let self: ShardManager | undefined;
    const pool = threads > 0
      ? await ConsumerPool.start(core, options.consumer!, threads, batchSize, {
        onError: (error, shardId) => { if (self) self.#consumerError(error, shardId); },
        onWorkerExit: (worker, exitCode, rewound) => { if (self) self.#emit({ type: 'consumerRestarted', worker, exitCode, rewound, at: self.#clock() }); },
        onRestartFailed: (error) => { if (self) self.#emit({ type: 'tickError', error, at: self.#clock() }); else console.error(error); },
        onStalled: (worker) => { if (self) self.#emit({ type: 'consumerStalled', worker, at: self.#clock() }); },
      })
      : undefined;
    self = new ShardManager({ options, core, pool, policy, initialShards, ringCapacity, maxPayload, backpressure, kind, producerStallMs, consumerStallMs, routing, loadBound, keyOrder });
    return self;
  }

  /**
   * While slots are published fenced, look every few ms for fences whose wait is over and
   * publish those slots plain again. The wait itself ends in the push path the moment the old
   * shard's consumer acknowledges the mark; this only spares the pushes of those slots the
   * fence check (a read of the old shard's cursor) sooner than the next tick would.
   */
  #watchFences(): void {
    if (this.#fenceTimer !== undefined || this.#closed) return;
    this.#fenceTimer = setInterval(() => {
      if (this.#closed || (this.#fences?.fencedCount ?? 0) === 0) {
        clearInterval(this.#fenceTimer);
        this.#fenceTimer = undefined;
        return;
      }
      this.mapper.liftPassedFences();
    }, FENCE_LIFT_MS);
    (this.#fenceTimer as { unref?: () => void }).unref?.();
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
    this.#emit({ type: 'consumerError', shardId, error, at: this.#clock() });
    if (this.#onConsumerError) this.#onConsumerError(error, shardId);
    else console.error(`shard-mapper: consumer of shard ${shardId} threw; the batch will be retried:`, error);
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
    if (this.memoryKind !== 'shared') throw new Error('producerHandle: the single-thread fallback cannot share its memory with workers');
    return { core: this.#core.handle(), maxPayloadBytes: this.maxPayloadBytes };
  }

  // ---- consuming ------------------------------------------------------------------------

  /** Take up to `max` records of a shard, in push order (copies; they count as delivered). */
  poll(shardId: number, max: number = this.ringCapacity): Uint8Array[] {
    const slot = this.#slotFor('poll', shardId);
    checkInteger('max', max, 1, Number.MAX_SAFE_INTEGER);
    if (this.#pool?.owns(shardId)) throw new Error(`poll: shard ${shardId} is consumed by worker threads (options.consumer); a ring has one consumer at a time`);
    const core = this.#core;
    const out: Uint8Array[] = [];
    const base = core.abi.slotAddress(slot);
    this.#watchStalls([slot]);
    while (out.length < max) {
      const n = core.claim(slot, Math.min(max - out.length, this.ringCapacity));
      if (n === 0) break;
      const start = core.claimStart;
      core.ensureViews(core.recordsEnd(base));
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
   * if not even the next record fits it throws a RangeError and takes nothing. Allocates
   * nothing for records up to 64 bytes (larger ones are copied through one short-lived view).
   */
  pollInto(shardId: number, target: Uint8Array, lengths: Uint32Array): number {
    const slot = this.#slotFor('pollInto', shardId);
    if (!(target instanceof Uint8Array)) throw invalid(`pollInto: target must be a Uint8Array, got ${describe(target)}`);
    if (!(lengths instanceof Uint32Array)) throw invalid(`pollInto: lengths must be a Uint32Array, got ${describe(lengths)}`);
    if (target.length === 0) throw new RangeError('pollInto: target is empty (0 bytes): it must hold at least one record');
    if (lengths.length === 0) throw new RangeError('pollInto: lengths is empty: its length is the most records to take, so at least 1');
    if (this.#pool?.owns(shardId)) throw new Error(`pollInto: shard ${shardId} is consumed by worker threads (options.consumer); a ring has one consumer at a time`);
    const core = this.#core;
    const abi = core.abi;
    const base = abi.slotAddress(slot);
    this.#watchStalls([slot]);
    let count = 0;
    let at = 0;
    while (count < lengths.length) {
      const n = core.claim(slot, Math.min(lengths.length - count, this.ringCapacity));
      if (n === 0) break;
      const start = core.claimStart;
      core.ensureViews(core.recordsEnd(base));
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
          throw new RangeError(`pollInto: target has ${target.length} bytes, the next record of shard ${shardId} needs ${need}; nothing was taken`);
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
    if (typeof consume !== 'function') throw invalid(`pollBatch: consume must be a function (batch, shardId) => void, got ${describe(consume)}`);
    checkInteger('max', max, 1, Number.MAX_SAFE_INTEGER);
    if (this.#pool?.owns(shardId)) throw new Error(`pollBatch: shard ${shardId} is consumed by worker threads (options.consumer); a ring has one consumer at a time`);
    const core = this.#core;
    const abi = core.abi;
    const base = abi.slotAddress(slot);
    this.#watchStalls([slot]);
    const n = core.claim(slot, Math.min(max, this.ringCapacity));
    if (n === 0) return 0;
    const start = core.claimStart;
    core.ensureViews(core.recordsEnd(base));
    const batch = (this.#pollBatch ??= new RecordBatch(Math.min(max, this.ringCapacity)));
    batch.fill(shardId, core.u8, core.u32, base, this.ringCapacity, base + core.payloadOffset, start, n);
    let result: unknown;
    try {
      result = consume(batch, shardId);
    } catch (error) {
      abi.ringRewind(slot);
      throw error;
    }
    if (result !== null && typeof result === 'object' && typeof (result as { then?: unknown }).then === 'function') {
      abi.ringRewind(slot);
      throw new TypeError('pollBatch: consume returned a promise; it must be synchronous (the batch is only valid during the call). The records were not taken; use options.consumer for asynchronous consumers');
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
  stats(): ManagerStats {
    const abi = this.#core.abi;
    const totals = [...this.#retired];
    const shards: ShardStats[] = [];
    if (!this.#closed) this.mapper.liftPassedFences();
    const moving = this.#fences?.perShard();
    for (const [id, slot] of this.#slots) {
      const t = Array.from({ length: TOTALS }, (_, k) => abi.total(slot, k));
      for (let k = 0; k < totals.length; k++) totals[k]! += t[k]!;
      shards.push({
        id, state: this.mapper.shardState(id)!, length: abi.ringLen(slot) >>> 0, bytes: abi.ringBytesUsed(slot) >>> 0,
        pushed: t[Total.Pushed]!, delivered: t[Total.Delivered]!,
        dropped: t[Total.DroppedNewest]! + t[Total.Sampled]! + t[Total.Evicted]!, // refusals are not drops
        movingOut: moving?.get(id)?.out ?? 0, movingIn: moving?.get(id)?.in ?? 0,
      });
    }
    const keyOrder = this.#fences?.stats() ?? { enabled: false, waitingSlots: 0, oldestWaitMs: 0, longestWaitMs: 0, movedSlots: 0, refused: 0 };
    const drops = {
      newest: totals[Total.DroppedNewest]!, oldest: totals[Total.Evicted]!,
      sampled: totals[Total.Sampled]!, refused: totals[Total.Refused]!, moving: keyOrder.refused,
    };
    return {
      pushed: totals[Total.Pushed]!, delivered: totals[Total.Delivered]!,
      // failProducer refuses moving keys (the caller keeps them); the other modes discard them.
      dropped: drops.newest + drops.oldest + drops.sampled + (this.backpressure.kind === 'failProducer' ? 0 : drops.moving),
      keyOrder,
      unrouted: abi.unroutedTotal(), drops,
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
    this.#watchStalls();
    this.#pool?.checkHeartbeats(this.#clock(), this.#consumerStallMs);
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
    this.#timer = setInterval(() => {
      try {
        this.tick();
      } catch (error) {
        if (this.#onEvent) this.#emit({ type: 'tickError', error: error as Error, at: this.#clock() });
        else console.error('shard-mapper: the scaling loop failed; it keeps running:', error);
      }
    }, this.mapper.policy().metricsWindowMs);
    (this.#timer as { unref?: () => void }).unref?.();
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
    return (await this.manualScaleUp(1))[0]!;
  }

  /** Add n shards with one forced provisioning call, then wire and activate each. */
  async manualScaleUp(n: number): Promise<number[]> {
    this.#assertOpen('manualScaleUp');
    checkInteger('n', n, 0, 0xffff);
    const ids = this.mapper.scaleUpProvisioningForce(n);
    this.#activateAll(ids);
    return ids;
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
        if (slot === undefined) { pending.delete(id); continue; }
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
   */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    this.stop();
    this.#stopFenceTimer();
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
      for (;;) {
        this.#watchStalls();
        let busy = false;
        for (const slot of this.#slots.values()) {
          if (!this.#drained(slot)) { busy = true; break; }
        }
        if (!busy) break;
        await sleep(WAIT_STEP_MS);
      }
      await pool.close();
    })();
    return this.#closing;
  }

  /** Skip reservations that producers left unwritten for producerStallMs (see StallWatchdog). */
  /** The poll calls look only at the ring they take from; tick, removal and close at all. */
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
    return createWritable(this, () => this.#closed, options);
  }

  /** The same as a WHATWG WritableStream (browsers, Deno, Node): a write's promise settles
   *  once the record is in a ring, and the writer's `ready` waits while the queue is full. */
  writableStream(options?: WritableOptions): WritableStream<ManagerRecord> {
    return createWritableStream(this, () => this.#closed, options);
  }

  /** `for await (const batch of manager.batches(id))`: the shard's records in push order, as
   *  poll() takes them (they count as delivered). Ends once the manager is closed or the
   *  shard drained, after every record it accepted was yielded. */
  batches(shardId: number, options?: BatchesOptions): AsyncIterableIterator<Uint8Array[]> {
    return shardBatches(this, shardId, () => this.#closed, options);
  }
}
