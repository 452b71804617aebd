// ShardManager's options: what each means, its default, and the checks that refuse a bad one
// before any memory is made or thread started. The checks it shares with the Redis node are in
// src/validate.ts, so both refuse a bad value with the same words.
import { payloadExtent } from './core.js';
import type { ConsumerOptions } from './consumer-pool.js';
import { checkClock, checkFinite, checkFunction, checkInteger, describe, given, invalid } from './errors.js';
import { resolvePolicy, type ScalingPolicy } from './policy.js';
import { RUNTIME_DEFAULT_ROUTING, checkLoadBound, checkRouting, type RoutingMode } from './routing.js';
import { BackpressureMode, type ManagerEvent } from './types.js';
import { checkBackpressure, checkKnownKeys, checkMaxPayloadBytes, checkOptionalBoolean } from './validate.js';
import { checkMemoryKind, sharedMemorySupported, type MemoryKind } from './wasm.js';
import { cpuCount } from '#platform';
import {
  BP_DROP_NEWEST,
  BP_DROP_OLDEST,
  BP_FAIL_PRODUCER,
  BP_SAMPLE,
  MAX_LANES,
  PAYLOAD_ALIGN,
  MAX_RING_BYTES,
} from './layout.generated.js';

export interface ShardManagerOptions {
  initialShards: number;
  /** Records each shard's ring holds at once (1 to 2^24, exactly as given). */
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
  /** How hashes are spread over Active shards (default 'balanced': RUNTIME_DEFAULT_ROUTING). */
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

/** The options checked, defaults applied. */
export interface ManagerSettings {
  initialShards: number;
  /** Descriptors per ring: ringBufferCapacity rounded up to a power of two (at least 2). */
  ringCapacity: number;
  /** Records a ring holds at once: ringBufferCapacity as given. */
  ringLimit: number;
  /** Each ring's payload area in bytes. */
  ringBytes: number;
  maxPayload: number;
  /** As given (or failProducer): the manager shows it as `manager.backpressure`. */
  backpressure: BackpressureMode;
  /** The mode as the rings take it. */
  bp: { code: number; rate: number };
  policy: ScalingPolicy;
  routing: RoutingMode;
  loadBound: number;
  keyOrder: boolean;
  maxSlots: number;
  kind: MemoryKind;
  producerStallMs: number;
  /** Consumer threads (0 without options.consumer), their batch size and stall limit. */
  threads: number;
  batchSize: number;
  /** options.consumer.spinUs (0 without consumer threads). */
  consumerSpinUs: number;
  consumerStallMs: number;
  maxThreads: number;
}

const MAX_RING_CAPACITY = 1 << 24;
const DEFAULT_MAX_THREADS = 64;
const DEFAULT_PRODUCER_STALL_MS = 1000;
const DEFAULT_CONSUMER_STALL_MS = 10_000;
/** options.consumer.spinUs at most: a second of polling before a thread parks. */
const MAX_CONSUMER_SPIN_US = 1_000_000;

/** Every option ShardManager.create reads. A key outside these is refused: a misspelled option
 *  (`ringBufferSize` for `ringBufferBytes`) would otherwise be ignored without a word. The
 *  Record type keeps the list complete: a new option must be added here to compile. */
const MANAGER_OPTIONS: Record<keyof ShardManagerOptions, true> = {
  initialShards: true,
  ringBufferCapacity: true,
  policy: true,
  backpressure: true,
  clock: true,
  drainGraceMs: true,
  producerStallMs: true,
  maxPayloadBytes: true,
  ringBufferBytes: true,
  consumer: true,
  onConsumerError: true,
  onEvent: true,
  maxSlots: true,
  memory: true,
  maxThreads: true,
  routing: true,
  loadBound: true,
  keyOrder: true,
};
const CONSUMER_OPTIONS: Record<keyof ConsumerOptions, true> = {
  module: true,
  worker: true,
  threads: true,
  batchSize: true,
  stallMs: true,
  batch: true,
  spinUs: true,
};

/** The ring's code for a backpressure mode (checked first: bad modes are refused by name). */
function backpressureCode(mode: unknown): { code: number; rate: number } {
  const checked = checkBackpressure(mode);
  switch (checked.kind) {
    case 'dropNewest':
      return { code: BP_DROP_NEWEST, rate: 1 };
    case 'dropOldest':
      return { code: BP_DROP_OLDEST, rate: 1 };
    case 'failProducer':
      return { code: BP_FAIL_PRODUCER, rate: 1 };
    case 'sample':
      return { code: BP_SAMPLE, rate: checked.rate };
  }
}

const nextPowerOfTwo = (n: number) => 2 ** Math.ceil(Math.log2(Math.max(1, n)));

/** The event size the default payload area is made for: raising maxPayloadBytes for a rare
 *  large event must not multiply every ring's memory (64 KiB × 4096 records is 256 MiB a
 *  shard, fatal in a browser tab). */
const TYPICAL_EVENT_BYTES = 256;

/** Each ring's payload area: `options.ringBufferBytes` (rounded up to 8), or room for
 *  ringCapacity (the records a ring holds) payloads of the typical size (the largest one when that is smaller) plus one
 *  more: a payload never wraps, and the padding in front of one that would have crossed the
 *  end is shorter than a payload, so with maxPayloadBytes up to the typical size ringCapacity
 *  records of any sizes always fit. The largest payload may be at most a quarter of the area
 *  (its padding then costs at most a quarter too), so the default is at least 4 of them. */
function ringBytesFor(requested: unknown, ringCapacity: number, maxPayload: number): number {
  const extent = payloadExtent(maxPayload);
  const typical = Math.min(extent, TYPICAL_EVENT_BYTES);
  const ringBytes =
    requested === undefined
      ? Math.min(MAX_RING_BYTES, Math.max((ringCapacity + 1) * typical, 4 * extent))
      : payloadExtent(checkInteger('options.ringBufferBytes', requested, 1, MAX_RING_BYTES));
  if (4 * extent > ringBytes) {
    throw invalid(
      `options.maxPayloadBytes (${maxPayload}) may be at most a quarter of options.ringBufferBytes (${ringBytes}): ` +
        `raise ringBufferBytes to at least ${4 * extent} or lower maxPayloadBytes to ${Math.floor(ringBytes / 4 / PAYLOAD_ALIGN) * PAYLOAD_ALIGN}`,
    );
  }
  return ringBytes;
}

/** Check every option, in the order the errors name them. */
export function checkManagerOptions(options: ShardManagerOptions): ManagerSettings {
  if (typeof options !== 'object' || options === null) throw invalid(`options must be an object, got ${describe(options)}`);
  checkKnownKeys('options', options, MANAGER_OPTIONS);
  const initialShards = checkInteger('options.initialShards', options.initialShards, 0, 0xffff);
  const requested = checkInteger('options.ringBufferCapacity', options.ringBufferCapacity, 1, MAX_RING_CAPACITY);
  const maxPayload = checkMaxPayloadBytes(options.maxPayloadBytes);
  // At least 2: with one record the sequence word of a published record (index + 1)
  // equals the free mark of the next index, so a second push would overwrite the first.
  const ringCapacity = nextPowerOfTwo(Math.max(2, requested));
  const ringBytes = ringBytesFor(options.ringBufferBytes, requested, maxPayload);
  const backpressure = given(options.backpressure, BackpressureMode.FailProducer);
  const bp = backpressureCode(backpressure);
  const policy = resolvePolicy(options.policy, initialShards);
  const routing = checkRouting('options.routing', options.routing, RUNTIME_DEFAULT_ROUTING);
  const loadBound = checkLoadBound('options.loadBound', options.loadBound);
  checkOptionalBoolean('options.keyOrder', options.keyOrder);
  if (options.keyOrder === true && routing !== 'affinity') {
    throw invalid(
      `options.keyOrder applies to routing 'affinity' only (routing is '${routing}': a hash may go to another shard at each window by design)`,
    );
  }
  const keyOrder = routing === 'affinity' && options.keyOrder !== false;
  const defaultSlots = Math.min(0xffff, Math.max(2 * policy.maxShards, policy.maxShards + 16, initialShards));
  const maxSlots = checkInteger('options.maxSlots', given(options.maxSlots, defaultSlots), Math.max(1, initialShards), 0xffff);
  const kind = checkMemoryKind(options.memory);
  if (options.clock !== undefined) checkClock('options.clock', options.clock);
  if (options.drainGraceMs !== undefined) checkFinite('options.drainGraceMs', options.drainGraceMs, 0);
  const producerStallMs = checkFinite('options.producerStallMs', given(options.producerStallMs, DEFAULT_PRODUCER_STALL_MS), 0);
  for (const name of ['onEvent', 'onConsumerError'] as const) {
    if (options[name] !== undefined) checkFunction(`options.${name}`, options[name]);
  }
  let threads = 0;
  let batchSize = 0;
  let consumerStallMs = DEFAULT_CONSUMER_STALL_MS;
  let consumerSpinUs = 0;
  if (options.consumer !== undefined) {
    const c = options.consumer;
    if (typeof c !== 'object' || c === null) {
      throw invalid(`options.consumer must be an object ({ module } or { worker }), got ${describe(c)}`);
    }
    checkKnownKeys('options.consumer', c, CONSUMER_OPTIONS); // first: a misspelled module is named as such
    if (c.worker === undefined && !((typeof c.module === 'string' && c.module !== '') || c.module instanceof URL)) {
      throw invalid(`options.consumer.module must be a path or URL, got ${describe(c.module)}`);
    }
    if (c.worker !== undefined && c.module !== undefined) {
      throw invalid('options.consumer: give module or worker, not both (worker starts a thread that brings its own function)');
    }
    if (c.worker !== undefined && typeof c.worker !== 'function') {
      throw invalid(`options.consumer.worker must be a function returning a Worker, got ${describe(c.worker)}`);
    }
    if (kind !== 'shared')
      throw invalid(
        sharedMemorySupported()
          ? "options.consumer needs shared memory, and options.memory is 'single': drop it, or consume with poll()"
          : 'options.consumer needs shared memory (SharedArrayBuffer), which this page does not have: serve it with ' +
              'Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp (cross-origin ' +
              'isolation), or, in the single-thread fallback, consume with poll()',
      );
    threads = checkInteger('options.consumer.threads', given(c.threads, cpuCount()), 1, MAX_LANES - 2);
    batchSize = checkInteger('options.consumer.batchSize', given(c.batchSize, 256), 1, MAX_RING_CAPACITY);
    consumerStallMs = checkFinite('options.consumer.stallMs', given(c.stallMs, DEFAULT_CONSUMER_STALL_MS), 0, true);
    consumerSpinUs = checkInteger('options.consumer.spinUs', given(c.spinUs, 0), 0, MAX_CONSUMER_SPIN_US);
    checkOptionalBoolean('options.consumer.batch', c.batch);
  }
  // One lane per attached thread: this one, each consumer thread, each producer thread.
  const maxThreads = checkInteger(
    'options.maxThreads',
    given(options.maxThreads, Math.min(MAX_LANES, Math.max(DEFAULT_MAX_THREADS, threads + 8))),
    threads + 1,
    MAX_LANES,
  );
  return {
    initialShards,
    ringCapacity,
    ringLimit: requested,
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
    producerStallMs,
    threads,
    batchSize,
    consumerStallMs,
    consumerSpinUs,
    maxThreads,
  };
}
