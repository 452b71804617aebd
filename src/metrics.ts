// ShardMetricsCollector: a thin handle on one shard's counters in the shared memory. All
// counting happens inside WebAssembly with atomics, so any attached thread may call it.
import type { SharedCore, CoreHandle } from './core.js';
import { SharedCore as Core, hasCoreHandle } from './core.js';
import {
  COLLECT_BUFFER_LEN,
  COLLECT_BYTES_USED,
  COLLECT_EVENTS,
  COLLECT_LATENCY_COUNT,
  COLLECT_LATENCY_SUM,
  COLLECT_FLUSH_COUNT,
  COLLECT_FLUSH_SUM,
  NO_SHARD,
} from './layout.generated.js';
import { checkInteger, describe, invalid } from './errors.js';

export interface ShardMetrics {
  shardId: number;
  /** Records in the ring when the window was collected (a standalone mapper's collectors:
   *  what recordBufferLen last stored). */
  bufferLen: number;
  capacity: number;
  /** bufferLen / capacity (0 when capacity is 0), or the ring's byte fill (payload bytes held
   *  / ringBufferBytes) when that is larger. */
  fillRatio: number;
  /** Integer average of the latency samples in the window (ns); 0 without samples. */
  avgPushLatencyNs: number;
  /** Integer average of the consumer batch times in the window (µs); 0 without samples. */
  avgFlushLatencyUs: number;
  /** Events recorded in the window. */
  eventRate: number;
  /** clock() when collected. */
  lastUpdated: number;
  /** The shard was draining when collected (its weight is then Number.MAX_VALUE). */
  draining: boolean;
  /** Routing weight: lower is preferred; Number.MAX_VALUE while draining. */
  weight: number;
}

/** What another thread needs to attach to one collector: structured-cloneable. */
export interface CollectorHandle {
  core: CoreHandle;
  slot: number;
  shardId: number;
}

const U32_MAX = 4294967295;

function sample(name: string, value: unknown): number {
  if (typeof value !== 'number' || Number.isNaN(value) || value < 0) {
    throw new RangeError(`${name} must be a number >= 0, got ${typeof value === 'number' ? value : typeof value}`);
  }
  return value >= U32_MAX ? U32_MAX : Math.floor(value);
}

export class ShardMetricsCollector {
  readonly shardId: number;
  readonly #core: SharedCore;
  readonly #slot: number;
  readonly #clock: () => number;
  /** The capacity the fill ratio divides by. */
  readonly capacity: number;
  #retired = false;
  /** Made by attach(): it holds a lane of its own. */
  #attached = false;

  /** @hidden Collectors come from `ShardMapper.metricsCollector(id)` or `attach`. Hidden from
   *  the docs but kept in the .d.ts: stripped, the class would seem constructible without arguments. */
  constructor(core: SharedCore, slot: number, shardId: number, clock: () => number) {
    this.#core = core;
    this.#slot = slot;
    this.shardId = shardId;
    this.#clock = clock;
    this.capacity = core.abi.capacityOf(slot) >>> 0;
  }

  /** Attach to a collector from another thread (worker_threads, Web Workers). */
  static async attach(handle: CollectorHandle, clock: () => number = () => performance.now()): Promise<ShardMetricsCollector> {
    const where = 'ShardMetricsCollector.attach';
    if (!hasCoreHandle(handle)) {
      throw new TypeError(`${where}: handle must be what collector.handle() returns, got ${describe(handle)}`);
    }
    if (typeof clock !== 'function') throw new TypeError(`${where}: clock must be a function, got ${describe(clock)}`);
    checkInteger(`${where}: handle.shardId`, handle.shardId, 0, NO_SHARD - 1);
    const core = await Core.attach(handle.core);
    // A slot past the configured ones would address memory of another kind (a lane, the
    // header): checked once the memory's configuration can be read, and the lane given back.
    if (typeof handle.slot !== 'number' || !Number.isInteger(handle.slot) || handle.slot < 0 || handle.slot >= core.slotCount) {
      core.detach();
      throw invalid(`${where}: handle.slot must be an integer in [0, ${core.slotCount - 1}], got ${describe(handle.slot)}`);
    }
    const collector = new ShardMetricsCollector(core, handle.slot, handle.shardId, clock);
    collector.#attached = true;
    return collector;
  }

  /** Give back the lane an attached collector holds (one per thread that may attach at
   *  once, options.maxThreads); it ignores recordings afterwards. A no-op for the mapper's own. */
  detach(): void {
    if (!this.#attached) return;
    this.#attached = false;
    this.#retired = true;
    this.#core.detach();
  }

  handle(): CollectorHandle {
    return { core: this.#core.handle(), slot: this.#slot, shardId: this.shardId };
  }

  recordBufferLen(len: number): void {
    if (!this.#retired) this.#core.abi.recordBufferLen(this.#slot, sample('len', len));
  }

  /** One event and one latency sample (ns). */
  recordPush(latencyNs: number): void {
    if (!this.#retired) this.#core.abi.recordPush(this.#slot, sample('latencyNs', latencyNs));
  }

  /** Bumps events-in-window and pushes-since-drain-start. */
  recordEventOnly(): void {
    if (!this.#retired) this.#core.abi.recordEventOnly(this.#slot);
  }

  recordLatencySample(latencyNs: number): void {
    if (!this.#retired) this.#core.abi.recordLatencySample(this.#slot, sample('latencyNs', latencyNs));
  }

  /** One consumer batch that took `us` microseconds. */
  recordFlush(us: number): void {
    if (!this.#retired) this.#core.abi.recordFlush(this.#slot, sample('us', us));
  }

  setDraining(draining: boolean): void {
    if (typeof draining !== 'boolean') throw new TypeError(`draining must be a boolean, got ${typeof draining}`);
    if (!this.#retired) this.#core.abi.setDraining(this.#slot, draining ? 1 : 0);
  }

  isDraining(): boolean {
    return !this.#retired && this.#core.abi.isDraining(this.#slot) !== 0;
  }

  pushesSinceDrainStart(): number {
    return this.#retired ? 0 : this.#core.abi.pushesSinceDrainStart(this.#slot) >>> 0;
  }

  bufferLen(): number {
    return this.#retired ? 0 : this.#core.abi.bufferLen(this.#slot) >>> 0;
  }

  /** Read the window and start a new one. */
  collectAndReset(): ShardMetrics {
    const core = this.#core;
    if (this.#retired) {
      return {
        shardId: this.shardId,
        bufferLen: 0,
        capacity: 0,
        fillRatio: 0,
        avgPushLatencyNs: 0,
        avgFlushLatencyUs: 0,
        eventRate: 0,
        lastUpdated: this.#clock(),
        draining: false,
        weight: 0,
      };
    }
    core.abi.collectAndReset(this.#slot, core.result);
    const u32 = core.u32;
    const word = (offset: number) => u32[(core.result + offset) >>> 2]!;
    const bufferLen = word(COLLECT_BUFFER_LEN);
    const eventRate = word(COLLECT_EVENTS);
    const latencyCount = word(COLLECT_LATENCY_COUNT);
    const latencySum = word(COLLECT_LATENCY_SUM);
    const flushCount = word(COLLECT_FLUSH_COUNT);
    const flushSum = word(COLLECT_FLUSH_SUM);
    const capacity = this.capacity;
    // A ring fills by records or by payload bytes, whichever is nearer full: a ring of a few
    // large events must trigger a scale-up as surely as one of many small ones.
    const byteFill = core.ringBytes === 0 ? 0 : word(COLLECT_BYTES_USED) / core.ringBytes;
    const fillRatio = Math.max(capacity === 0 ? 0 : bufferLen / capacity, byteFill);
    const avgPushLatencyNs = latencyCount === 0 ? 0 : Math.floor(latencySum / latencyCount);
    const avgFlushLatencyUs = flushCount === 0 ? 0 : Math.floor(flushSum / flushCount);
    const draining = this.isDraining();
    const weight = draining ? Number.MAX_VALUE : fillRatio * 100 + avgPushLatencyNs / 10 + eventRate / 1e6;
    return {
      shardId: this.shardId,
      bufferLen,
      capacity,
      fillRatio,
      avgPushLatencyNs,
      avgFlushLatencyUs,
      eventRate,
      lastUpdated: this.#clock(),
      draining,
      weight,
    };
  }

  /** @internal The shard was removed: later recordings are ignored (its slot may be reused). */
  retire(): void {
    this.#retired = true;
  }
}
