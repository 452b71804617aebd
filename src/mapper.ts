// ShardMapper: shard table, lifecycle, scaling decisions and the selection table.
// Runs on one thread (the owner); the selection table and collectors it maintains live in
// shared memory, so producers on other threads route through the same table.
import { SharedCore } from './core.js';
import { ScalingError, checkClock, checkFinite, checkInteger, describe, given, invalid } from './errors.js';
import { hashKey, hashKeys } from './hash.js';
import { checkKnownKeys } from './validate.js';
import { ShardMetricsCollector, type ShardMetrics } from './metrics.js';
import { resolvePolicy, type ScalingPolicy } from './policy.js';
import { checkMemoryKind, compileAsync, sharedMemorySupported, type MemoryKind } from './wasm.js';
import { DEFAULT_LANE_BYTES, FENCED_SLOT, MAX_LANES, NO_SHARD as LAYOUT_NO_SHARD } from './layout.generated.js';
import type { KeyOrderFences, MovedGroup, MovingGroup } from './key-order.js';

/** How long a drained shard must stay empty before finalizeDraining stops it (ms). */
const DEFAULT_DRAIN_GRACE_MS = 100;
import {
  checkLoadBound,
  checkRouting,
  createTableBuilder,
  tableCapacity,
  type RoutedShard,
  type RoutingMode,
  type TableBuilder,
} from './routing.js';

/** The "no shard" sentinel (65535), never allocated: selectShard's answer when no shard is Active. */
export const NO_SHARD: number = LAYOUT_NO_SHARD;
/** The highest shard id that is ever allocated. */
export const MAX_SHARD_ID = 0xfffe;

/** Shard ids left when the next new one would be `nextId` (a mapper's, or a Redis namespace's table). */
export function shardIdsLeftFrom(nextId: number): number {
  return MAX_SHARD_ID + 1 - nextId;
}

export const ShardState = {
  Provisioning: 'provisioning',
  Active: 'active',
  Draining: 'draining',
  Stopped: 'stopped',
} as const;
export type ShardState = (typeof ShardState)[keyof typeof ShardState];

export type ScalingDecision = { kind: 'none' } | { kind: 'scaleUp'; count: number } | { kind: 'scaleDown'; count: number };

export interface ShardMapperOptions {
  /** Monotonic milliseconds; the only time source the mapper reads. Default performance.now(). */
  clock?: () => number;
  /** How long a drained shard must stay empty before finalizeDraining stops it (ms, default 100). */
  drainGraceMs?: number;
  /** 'shared' (default where SharedArrayBuffer works) or 'single' (one thread, no sharing). */
  memory?: MemoryKind;
  /** How hashes are spread over Active shards (default 'leastLoaded', the rule of docs/CONTRACT.md §5). */
  routing?: RoutingMode;
  /** ε of 'affinity': a shard above (1 + ε)/n of the window's events spills (default 0.25). */
  loadBound?: number;
}

/** Every option the constructor reads (the Record type keeps the list complete). */
const MAPPER_OPTIONS: Record<keyof ShardMapperOptions, true> = {
  clock: true,
  drainGraceMs: true,
  memory: true,
  routing: true,
  loadBound: true,
};

/** @internal How ShardManager builds a mapper over its own memory and follows its lifecycle. */
export interface MapperWiring {
  core: SharedCore;
  /** Throws if the table may no longer change (the manager is closed): called first by the
   *  calls that add, activate or drain shards. */
  assertOpen?(method: string): void;
  /** A shard got a slot (any state): give it a consumer before anything can route to it. */
  onAllocated(id: number, slot: number): void;
  /** A shard left the selection table for Draining: close its ring. */
  onDraining(id: number, slot: number): void;
  /** A shard became routable (created Active, or activated). */
  onActivated(id: number): void;
  /** A Draining shard became Stopped. */
  onStopped(id: number): void;
  /** A Stopped shard left the table, or a Provisioning one was rolled back. */
  onRemoved(id: number, slot: number): void;
  /** 'affinity' with key order: fences moved slots (see src/key-order.ts). */
  keyOrder?: KeyOrderFences;
  /** Slots moved with a fence (their new events wait for the old shard's consumer). */
  onKeysMoving?(groups: MovingGroup[]): void;
  /** Fences lifted: those slots' events flow to their new shard unchecked again. */
  onKeysMoved?(groups: MovedGroup[]): void;
}
/** @internal The ShardMapperOptions key under which ShardManager passes its MapperWiring. */
export const WIRING = Symbol('shard-mapper wiring');

/** @internal The clocks behind cooldown, warm-up and idle streaks, read and restored by the
 *  Redis controller, which keeps them in Redis so a new controller (or one that rebuilt its
 *  mapper after an error) goes on from them instead of starting afresh. Values are clock()
 *  readings; -Infinity is "long ago", undefined "not idle". */
export const DECISION_CLOCKS = Symbol('shard-mapper decision clocks');
export interface DecisionClocks {
  lastScalingAt: number;
  shards: Map<number, { activatedAt: number; idleSince: number | undefined }>;
}

interface MappedShard {
  id: number;
  slot: number;
  state: ShardState;
  collector: ShardMetricsCollector;
  weight: number;
  lastMetrics: ShardMetrics | undefined;
  activatedAt: number;
  drainStartedAt: number;
  /** clock() of the first collection of the current idle streak. */
  idleSince: number | undefined;
}

const NONE: ScalingDecision = Object.freeze({ kind: 'none' });
const TWO_POW_MINUS_32 = 2 ** -32;
/** Candidates are the Active shards whose weight is within this of the lowest (plus a
 *  hair, so 1.1 vs 1.0 counts as within 0.1 despite binary floating point). */
const WEIGHT_TOLERANCE = 0.1 + 1e-9;

/**
 * @internal Which of `weights` are routing candidates: within 0.1 of the lowest; all of them
 * when that leaves none (NaN weights). Exported for the Redis table and the tests.
 */
export function candidateIndexes(weights: readonly number[]): number[] {
  let min = Infinity;
  for (const w of weights) if (w < min) min = w;
  const out: number[] = [];
  weights.forEach((w, i) => {
    if (w - min <= WEIGHT_TOLERANCE) out.push(i);
  });
  return out.length > 0 ? out : weights.map((_, i) => i);
}

export class ShardMapper {
  readonly #core: SharedCore;
  readonly #policy: Readonly<ScalingPolicy>;
  readonly #clock: () => number;
  readonly #drainGraceMs: number;
  readonly #capacity: number;
  readonly #wiring: MapperWiring | undefined;
  readonly #shards: MappedShard[] = [];
  readonly #byId = new Map<number, MappedShard>();
  #activeCount = 0;
  #nextId = 0;
  #lastScalingAt = -Infinity;
  #onCreated: ((id: number) => void) | undefined;
  #onRemoved: ((id: number) => void) | undefined;
  // The live selection table, mirrored in this thread's heap for the fastest selectShard.
  readonly #candidates: Uint16Array;
  #candidateCount = 0;
  readonly #routing: RoutingMode;
  readonly #loadBound: number;
  /** balanced / affinity: builds the slot table (undefined for leastLoaded). */
  readonly #builder: TableBuilder | undefined;
  /** balanced / affinity: id → its table entry (id | slot << 16), filled at each rebuild. */
  #entryOf: Uint32Array | undefined;
  /** balanced / affinity: u32 index of the table this mapper published last (-1: none). */
  #liveTable = -1;
  /** Reused by selectShardsForKeys. */
  #keyHashes = new Uint32Array(256);

  /**
   * Synchronous constructor: compiles the WebAssembly module synchronously the first time
   * (fine in Node and workers; in a browser main thread prefer `await ShardMapper.create`).
   */
  constructor(initialShards: number, ringBufferCapacity: number, policy?: Partial<ScalingPolicy>, options: ShardMapperOptions = {}) {
    checkInteger('initialShards', initialShards, 0, MAX_SHARD_ID + 1);
    checkInteger('ringBufferCapacity', ringBufferCapacity, 0, 0xffffffff);
    if (typeof options !== 'object' || options === null) throw invalid(`options must be an object, got ${describe(options)}`);
    checkKnownKeys('options', options, MAPPER_OPTIONS);
    const clock = options.clock === undefined ? () => performance.now() : checkClock('options.clock', options.clock);
    const grace = checkFinite('options.drainGraceMs', given(options.drainGraceMs, DEFAULT_DRAIN_GRACE_MS), 0);
    const routing = checkRouting('options.routing', options.routing);
    const loadBound = checkLoadBound('options.loadBound', options.loadBound);
    const full = resolvePolicy(policy, initialShards);
    const capacity = tableCapacity(routing, full.maxShards);

    const wiring = (options as { [WIRING]?: MapperWiring })[WIRING];
    const kind = checkMemoryKind(options.memory);
    this.#wiring = wiring;
    this.#core =
      wiring?.core ??
      SharedCore.createSync({
        // A lane for every thread that may attach (collectors in workers); untouched lanes cost
        // no resident memory.
        kind,
        tableCapacity: capacity,
        maxSlots: MAX_SHARD_ID + 1,
        initialSlots: initialShards,
        ringCapacity: 0,
        ringBytes: 0,
        maxPayload: 0,
        lanes: MAX_LANES,
        laneBytes: DEFAULT_LANE_BYTES,
        backpressure: 0,
        sampleRate: 1,
        sampleFill: 1,
      });
    this.#policy = Object.freeze(full);
    this.#clock = clock;
    this.#drainGraceMs = grace;
    this.#capacity = ringBufferCapacity;
    this.#candidates = new Uint16Array(capacity);
    this.#routing = routing;
    this.#loadBound = loadBound;
    if (routing !== 'leastLoaded') {
      this.#builder = createTableBuilder(routing, { maxShards: full.maxShards, fillRatioThreshold: full.fillRatioThreshold, loadBound });
    }
    if (!this.#core.canAllocate(initialShards)) {
      throw new ScalingError(
        'ShardCreationFailed',
        `cannot provision ${initialShards} initial shards: the memory holds ${this.#core.maxSlots}`,
      );
    }
    // Initial shards count as activated long ago: no warm-up skip.
    const initial = this.#allocate(initialShards, ShardState.Active, -Infinity);
    this.#rebuild();
    for (const id of initial) this.#wiring?.onActivated(id);
  }

  /** Create a mapper; compiles the WebAssembly module without blocking the thread. */
  static async create(
    initialShards: number,
    ringBufferCapacity: number,
    policy?: Partial<ScalingPolicy>,
    options: ShardMapperOptions = {},
  ): Promise<ShardMapper> {
    const kind = options?.memory ?? (sharedMemorySupported() ? 'shared' : 'single');
    if (kind === 'shared' || kind === 'single') await compileAsync(kind);
    return new ShardMapper(initialShards, ringBufferCapacity, policy, options);
  }

  // ---- callbacks ------------------------------------------------------------------------

  setOnShardCreated(callback: ((id: number) => void) | undefined): void {
    if (callback !== undefined && typeof callback !== 'function')
      throw invalid(`onShardCreated must be a function, got ${describe(callback)}`);
    this.#onCreated = callback;
  }

  setOnShardRemoved(callback: ((id: number) => void) | undefined): void {
    if (callback !== undefined && typeof callback !== 'function')
      throw invalid(`onShardRemoved must be a function, got ${describe(callback)}`);
    this.#onRemoved = callback;
  }

  /** Runs after the state change is complete; every id gets its call even if one throws,
   *  then the first error is rethrown to the caller (the mapper itself stays consistent). */
  #fire(callback: ((id: number) => void) | undefined, ids: readonly number[]): void {
    if (!callback || ids.length === 0) return;
    let failed = false;
    let first: unknown;
    for (const id of ids) {
      try {
        callback(id);
      } catch (error) {
        if (!failed) {
          failed = true;
          first = error;
        }
      }
    }
    if (failed) throw first;
  }

  // ---- queries --------------------------------------------------------------------------

  metricsCollector(id: number): ShardMetricsCollector | undefined {
    return this.#byId.get(id)?.collector;
  }

  activeShardCount(): number {
    return this.#activeCount;
  }

  totalShardCount(): number {
    return this.#shards.length;
  }

  /**
   * How many new shard ids this mapper can still hand out: ids are never reused and stop at
   * 65534, so every scale-up spends some for good. Watch it in a long-running service whose
   * shard count goes up and down often (docs/routing.md, "Shard ids run out").
   */
  shardIdsLeft(): number {
    return shardIdsLeftFrom(this.#nextId);
  }

  shardState(id: number): ShardState | undefined {
    return this.#byId.get(id)?.state;
  }

  activeShardIds(): number[] {
    return this.#shards.filter((s) => s.state === ShardState.Active).map((s) => s.id);
  }

  allShardIds(): number[] {
    return this.#shards.filter((s) => s.state !== ShardState.Stopped).map((s) => s.id);
  }

  policy(): Readonly<ScalingPolicy> {
    return this.#policy;
  }

  /** The routing mode chosen at creation. */
  get routing(): RoutingMode {
    return this.#routing;
  }

  /** ε of 'affinity' routing (the option's value, or its default, in every mode). */
  get loadBound(): number {
    return this.#loadBound;
  }

  /** @internal The slot that holds a shard's metrics and ring. */
  slotOf(id: number): number | undefined {
    return this.#byId.get(id)?.slot;
  }

  /** The last metrics collectMetrics stored for a shard. */
  lastMetrics(id: number): ShardMetrics | undefined {
    return this.#byId.get(id)?.lastMetrics;
  }

  // ---- selection (hot path) -------------------------------------------------------------

  /** The shard for a uint32 hash (other numbers are reduced with `>>> 0`), or NO_SHARD. */
  selectShard(hash: number): number {
    if (typeof hash !== 'number') throw new TypeError(`selectShard: hash must be a number, got ${typeof hash}`);
    const n = this.#candidateCount;
    if (n === 0) return NO_SHARD;
    return this.#candidates[((hash >>> 0) * n * TWO_POW_MINUS_32) | 0]!;
  }

  /** The shard for a u64 hash (reduced modulo 2^64). */
  selectShardBig(hash: bigint): number {
    if (typeof hash !== 'bigint') throw new TypeError(`selectShardBig: hash must be a bigint, got ${typeof hash}`);
    const n = this.#candidateCount;
    if (n === 0) return NO_SHARD;
    return this.#candidates[Number((BigInt.asUintN(64, hash) * BigInt(n)) >> 64n)]!;
  }

  /** Batch form of selectShard: one WebAssembly call per chunk of the scratch size. */
  selectShards(hashes: Uint32Array, out?: Uint16Array): Uint16Array {
    if (!(hashes instanceof Uint32Array)) throw new TypeError(`selectShards: hashes must be a Uint32Array, got ${describe(hashes)}`);
    const n = hashes.length;
    if (out === undefined) out = new Uint16Array(n);
    else if (!(out instanceof Uint16Array)) throw new TypeError(`selectShards: out must be a Uint16Array, got ${describe(out)}`);
    else if (out.length < n) throw new RangeError(`selectShards: out has ${out.length} entries, needs ${n}`);
    if (this.#candidateCount === 0) {
      out.fill(NO_SHARD, 0, n);
      return out;
    }
    this.#core.selectBatch(hashes, n, out);
    return out;
  }

  selectShardForKey(key: string | Uint8Array): number {
    return this.selectShard(hashKey(key));
  }

  /** Batch form of selectShardForKey: `out[i]` is the shard for `keys[i]` (see hashKeys). */
  selectShardsForKeys(keys: ArrayLike<string | Uint8Array>, out?: Uint16Array): Uint16Array {
    if (keys === null || typeof keys !== 'object' || typeof keys.length !== 'number')
      throw new TypeError(`selectShardsForKeys: keys must be an array of strings or Uint8Arrays, got ${describe(keys)}`);
    // (an array-like's length: a typed array could not be made for another one)
    if (!Number.isSafeInteger(keys.length) || keys.length < 0 || keys.length > 0xffffffff)
      throw new RangeError(`selectShardsForKeys: keys.length must be an integer in [0, 4294967295], got ${describe(keys.length)}`);
    if (out !== undefined && !(out instanceof Uint16Array))
      throw new TypeError(`selectShardsForKeys: out must be a Uint16Array, got ${describe(out)}`);
    if (out !== undefined && out.length < keys.length)
      throw new RangeError(`selectShardsForKeys: out has ${out.length} entries, needs ${keys.length}`);
    if (this.#keyHashes.length < keys.length) this.#keyHashes = new Uint32Array(Math.max(keys.length, 2 * this.#keyHashes.length));
    const hashes = hashKeys(keys, this.#keyHashes).subarray(0, keys.length);
    if (out === undefined) out = new Uint16Array(keys.length);
    const n = this.#candidateCount;
    const table = this.#candidates;
    for (let i = 0; i < hashes.length; i++) out[i] = n === 0 ? NO_SHARD : table[(hashes[i]! * n * TWO_POW_MINUS_32) | 0]!;
    return out;
  }

  /**
   * Rebuild the selection table (JS mirror and shared copy) from states and weights.
   * `fresh`: the last metrics are a new window (collectMetrics), not just a state change.
   */
  #rebuild(fresh = false): void {
    const active = this.#shards.filter((s) => s.state === ShardState.Active);
    if (this.#routing !== 'leastLoaded') {
      this.#rebuildSlots(active, fresh);
      return;
    }
    const chosen = candidateIndexes(active.map((s) => s.weight));
    const core = this.#core;
    const base = core.abi.tableBuildAddress() >>> 2;
    const table = core.u32;
    for (let i = 0; i < chosen.length; i++) {
      const shard = active[chosen[i]!]!;
      this.#candidates[i] = shard.id;
      table[base + i] = (shard.id | (shard.slot << 16)) >>> 0;
    }
    this.#candidateCount = chosen.length;
    core.abi.tablePublish(chosen.length);
  }

  /** balanced / affinity: a table of slots, many of them naming the same shard. */
  #rebuildSlots(active: MappedShard[], fresh: boolean): void {
    const input: RoutedShard[] = active.map((s) => ({ id: s.id, metrics: s.lastMetrics }));
    const ids = this.#builder!.build(input, fresh);
    const changed = this.#builder!.changedSlots();
    const core = this.#core;
    if (!ids || active.length === 0) {
      this.#candidateCount = 0;
      this.#liveTable = -1;
      core.abi.tablePublish(0);
      return;
    }
    const patch = changed !== null && this.#liveTable >= 0 && this.#candidateCount === ids.length ? changed : null;
    const fences = this.#wiring?.keyOrder;
    if (patch !== null && patch.length === 0) {
      // the live table stands: nothing to publish
      this.#liftFences();
      return;
    }
    // Key order: slots that move get a fence and are published fenced (their id half still
    // names the new shard; selectShard and the mirror are unchanged).
    const fencedNow = fences?.plan(ids, changed, changed === null ? 'membership' : 'balance', (id) => {
      const shard = this.#byId.get(id);
      return shard ? { id, slot: shard.slot } : undefined;
    });
    const entryOf = (this.#entryOf ??= new Uint32Array(MAX_SHARD_ID + 1));
    for (const s of active) entryOf[s.id] = (s.id | (s.slot << 16)) >>> 0;
    const build = core.abi.tableBuildAddress() >>> 2;
    const table = core.u32;
    if (patch !== null) {
      // The build buffer is two publishes old: copy the live table into it, then change only
      // the slots that moved (the live one, this thread's last publish, is never written).
      table.copyWithin(build, this.#liveTable, this.#liveTable + ids.length);
      for (const s of patch) {
        const id = ids[s]!;
        this.#candidates[s] = id;
        table[build + s] = fences?.isFenced(s) ? fencedEntry(id) : entryOf[id]!;
      }
    } else {
      this.#candidates.set(ids);
      for (let i = 0; i < ids.length; i++) table[build + i] = entryOf[ids[i]!]!;
      if (fences) for (let i = 0; i < ids.length; i++) if (fences.isFenced(i)) table[build + i] = fencedEntry(ids[i]!);
    }
    this.#candidateCount = ids.length;
    core.abi.tablePublish(ids.length);
    this.#liveTable = build;
    if (fences && fencedNow) {
      const groups = fences.arm(); // marks taken now that the fenced table is live
      if (groups.length > 0) this.#wiring!.onKeysMoving?.(groups);
      this.#liftFences();
    }
  }

  /** Key order: publish unfenced every slot whose wait is over (one patch of the live table). */
  #liftFences(): void {
    const fences = this.#wiring?.keyOrder;
    if (!fences || this.#liveTable < 0) return;
    const slots = fences.passedSlots();
    if (slots.length > 0) {
      const core = this.#core;
      const n = this.#candidateCount;
      const build = core.abi.tableBuildAddress() >>> 2;
      const table = core.u32;
      table.copyWithin(build, this.#liveTable, this.#liveTable + n);
      const entryOf = this.#entryOf!;
      for (const s of slots) table[build + s] = entryOf[this.#candidates[s]!]!;
      core.abi.tablePublish(n);
      this.#liveTable = build;
    }
    const groups = fences.lifted(slots); // also the waits that ended by moving again
    if (groups.length > 0) this.#wiring!.onKeysMoved?.(groups);
  }

  /** @internal Key order: lift the fences whose wait is over (ShardManager's tick and stats). */
  liftPassedFences(): void {
    if (this.#routing === 'affinity' && this.#candidateCount > 0) this.#liftFences();
  }

  /** @internal See DECISION_CLOCKS: with an argument, restore (shards it names); always returns them. */
  [DECISION_CLOCKS](restore?: DecisionClocks): DecisionClocks {
    if (restore) {
      this.#lastScalingAt = restore.lastScalingAt;
      for (const [id, c] of restore.shards) {
        const shard = this.#byId.get(id);
        if (shard) {
          shard.activatedAt = c.activatedAt;
          shard.idleSince = c.idleSince;
        }
      }
    }
    return {
      lastScalingAt: this.#lastScalingAt,
      shards: new Map(this.#shards.map((s) => [s.id, { activatedAt: s.activatedAt, idleSince: s.idleSince }] as const)),
    };
  }

  // ---- metrics and decisions ------------------------------------------------------------

  collectMetrics(): ShardMetrics[] {
    const out: ShardMetrics[] = [];
    const { underutilizedThreshold } = this.#policy;
    for (const shard of this.#shards) {
      const m = shard.collector.collectAndReset();
      shard.lastMetrics = m;
      shard.weight = m.weight;
      if (m.fillRatio < underutilizedThreshold && m.eventRate === 0) shard.idleSince ??= m.lastUpdated;
      else shard.idleSince = undefined;
      out.push(m);
    }
    this.#rebuild(true);
    return out;
  }

  #inCooldown(now: number): boolean {
    return now - this.#lastScalingAt < this.#policy.cooldownMs;
  }

  evaluateScaling(): ScalingDecision {
    const p = this.#policy;
    if (!p.autoScale) return NONE;
    const now = this.#clock();
    if (this.#inCooldown(now)) return NONE;
    let overloaded = 0;
    let underutilized = 0;
    for (const shard of this.#shards) {
      if (shard.state !== ShardState.Active || now - shard.activatedAt < p.cooldownMs) continue; // warm-up
      const m = shard.lastMetrics;
      if (!m) continue;
      if (
        m.fillRatio > p.fillRatioThreshold ||
        m.avgPushLatencyNs > p.pushLatencyThresholdNs ||
        m.avgFlushLatencyUs > p.flushLatencyThresholdUs
      ) {
        overloaded++;
      }
      if (
        m.fillRatio < p.underutilizedThreshold &&
        m.eventRate === 0 &&
        shard.idleSince !== undefined &&
        now - shard.idleSince >= p.scaleDownDelayMs
      ) {
        underutilized++;
      }
    }
    const a = this.#activeCount;
    const half = Math.floor(a / 2);
    if (overloaded > half && a < p.maxShards) {
      return { kind: 'scaleUp', count: Math.min(Math.max(Math.floor(overloaded / 2), 1), p.maxShards - a) };
    }
    if (underutilized > half && a > p.minShards) {
      return { kind: 'scaleDown', count: Math.min(Math.max(Math.floor(underutilized / 2), 1), a - p.minShards) };
    }
    return NONE;
  }

  // ---- scaling up -----------------------------------------------------------------------

  #checkScaleUp(count: number, honourCooldown: boolean, now: number): void {
    const p = this.#policy;
    if (this.#activeCount + count > p.maxShards) {
      throw new ScalingError(
        'AtMaxShards',
        `cannot add ${count} shard(s): ${this.#activeCount} active + ${count} would exceed maxShards ${p.maxShards}`,
      );
    }
    if (this.#nextId + count - 1 > MAX_SHARD_ID) {
      throw new ScalingError(
        'AtMaxShards',
        `cannot add ${count} shard(s): ids would pass ${MAX_SHARD_ID} (next id ${this.#nextId}; ids are never reused)`,
      );
    }
    if (honourCooldown && this.#inCooldown(now)) {
      throw new ScalingError(
        'InCooldown',
        `cannot scale: the last scaling was ${now - this.#lastScalingAt} ms ago, cooldownMs is ${p.cooldownMs}`,
      );
    }
    if (!this.#core.canAllocate(count)) {
      throw new ScalingError(
        'ShardCreationFailed',
        `cannot add ${count} shard(s): all ${this.#core.maxSlots} shard slots of the memory are in use (draining or stopped shards not yet removed, or removed ones whose consumer thread has not let go of the ring yet)`,
      );
    }
  }

  #allocate(count: number, state: ShardState, activatedAt: number): number[] {
    const ids: number[] = [];
    const made: MappedShard[] = [];
    try {
      for (let i = 0; i < count; i++) {
        const slot = this.#core.allocSlot(this.#capacity);
        if (slot < 0) throw new Error('no free slot');
        const id = this.#nextId + i;
        const shard: MappedShard = {
          id,
          slot,
          state,
          collector: new ShardMetricsCollector(this.#core, slot, id, this.#clock),
          weight: 0,
          lastMetrics: undefined,
          activatedAt,
          drainStartedAt: 0,
          idleSince: undefined,
        };
        made.push(shard);
      }
    } catch (error) {
      for (const s of made) this.#core.releaseSlot(s.slot);
      throw new ScalingError('ShardCreationFailed', `cannot add ${count} shard(s): ${(error as Error).message}`);
    }
    this.#nextId += count;
    for (const shard of made) {
      this.#shards.push(shard);
      this.#byId.set(shard.id, shard);
      if (state === ShardState.Active) this.#activeCount++;
      ids.push(shard.id);
      this.#wiring?.onAllocated(shard.id, shard.slot);
    }
    return ids;
  }

  /** Add `count` Active shards, routable at once. */
  scaleUp(count: number): number[] {
    checkInteger('count', count, 0, MAX_SHARD_ID + 1);
    if (count === 0) return [];
    this.#wiring?.assertOpen?.('scaleUp');
    const now = this.#clock();
    this.#checkScaleUp(count, true, now);
    const ids = this.#allocate(count, ShardState.Active, now);
    this.#lastScalingAt = now;
    this.#rebuild();
    for (const id of ids) this.#wiring?.onActivated(id);
    this.#fire(this.#onCreated, ids);
    return ids;
  }

  /** Add `count` Provisioning shards: ids and collectors, not routable until activate(). */
  scaleUpProvisioning(count: number): number[] {
    return this.#provision(count, true);
  }

  /** As scaleUpProvisioning, without the cooldown gate (operator calls); the budget applies. */
  scaleUpProvisioningForce(count: number): number[] {
    return this.#provision(count, false);
  }

  #provision(count: number, honourCooldown: boolean): number[] {
    checkInteger('count', count, 0, MAX_SHARD_ID + 1);
    if (count === 0) return [];
    this.#wiring?.assertOpen?.(honourCooldown ? 'scaleUpProvisioning' : 'scaleUpProvisioningForce');
    const now = this.#clock();
    this.#checkScaleUp(count, honourCooldown, now);
    const ids = this.#allocate(count, ShardState.Provisioning, 0);
    this.#lastScalingAt = now;
    return ids;
  }

  /** Provisioning → Active. `false` if it was already Active. */
  activate(id: number): boolean {
    this.#wiring?.assertOpen?.('activate');
    const shard = this.#shardForCall('activate', id);
    if (shard.state === ShardState.Active) return false;
    if (shard.state !== ShardState.Provisioning) {
      throw invalid(`activate: shard ${id} is ${shard.state}; only a provisioning shard can be activated`);
    }
    if (this.#activeCount >= this.#policy.maxShards) {
      throw new ScalingError(
        'AtMaxShards',
        `activate: shard ${id} would make ${this.#activeCount + 1} active shards, maxShards is ${this.#policy.maxShards}`,
      );
    }
    shard.state = ShardState.Active;
    shard.activatedAt = this.#clock();
    this.#activeCount++;
    this.#rebuild();
    this.#wiring?.onActivated(id);
    this.#fire(this.#onCreated, [id]);
    return true;
  }

  #shardForCall(method: string, id: number): MappedShard {
    if (typeof id !== 'number' || !Number.isInteger(id)) throw invalid(`${method}: shard id must be an integer, got ${describe(id)}`);
    const shard = this.#byId.get(id);
    if (!shard) throw invalid(`${method}: unknown shard ${id}`);
    return shard;
  }

  // ---- scaling down ---------------------------------------------------------------------

  drainSpecific(id: number): void {
    this.#wiring?.assertOpen?.('drainSpecific');
    if (this.#activeCount <= this.#policy.minShards) {
      throw new ScalingError(
        'AtMinShards',
        `drainSpecific: cannot drain shard ${id}: ${this.#activeCount} active shard(s), minShards is ${this.#policy.minShards}`,
      );
    }
    const shard = this.#shardForCall('drainSpecific', id);
    if (shard.state === ShardState.Draining) return;
    if (shard.state !== ShardState.Active)
      throw invalid(`drainSpecific: shard ${id} is ${shard.state}; only an active shard can be drained`);
    const now = this.#clock();
    this.#startDrain([shard], now);
    this.#lastScalingAt = now;
  }

  #startDrain(shards: MappedShard[], now: number): void {
    for (const shard of shards) {
      shard.state = ShardState.Draining;
      shard.drainStartedAt = now;
      shard.collector.setDraining(true);
      this.#activeCount--;
    }
    this.#rebuild(); // routing stops before the rings close
    for (const shard of shards) this.#wiring?.onDraining(shard.id, shard.slot);
  }

  /** Drain up to `count` of the least-loaded Active shards, keeping minShards. */
  scaleDown(count: number): number[] {
    this.#wiring?.assertOpen?.('scaleDown');
    checkInteger('count', count, 0, MAX_SHARD_ID + 1);
    if (count === 0) return [];
    const p = this.#policy;
    if (this.#activeCount <= p.minShards) {
      throw new ScalingError('AtMinShards', `scaleDown: ${this.#activeCount} active shard(s), minShards is ${p.minShards}`);
    }
    const now = this.#clock();
    if (this.#inCooldown(now)) {
      throw new ScalingError(
        'InCooldown',
        `cannot scale: the last scaling was ${now - this.#lastScalingAt} ms ago, cooldownMs is ${p.cooldownMs}`,
      );
    }
    const chosen = this.#leastLoaded(Math.min(count, this.#activeCount - p.minShards));
    this.#startDrain(chosen, now);
    this.#lastScalingAt = now;
    return chosen.map((s) => s.id);
  }

  /** The n Active shards with the lowest last weight (stable: ties keep table order). */
  #leastLoaded(n: number): MappedShard[] {
    return this.#shards
      .filter((s) => s.state === ShardState.Active)
      .sort((a, b) => weightOrder(a.weight) - weightOrder(b.weight))
      .slice(0, n);
  }

  /** @internal The ids scaleDown(n) would drain now, for operator calls that skip its gates. */
  leastLoadedIds(n: number): number[] {
    return this.#leastLoaded(n).map((s) => s.id);
  }

  /** Stop every Draining shard that is empty, saw no push since its drain, and is past the grace. */
  finalizeDraining(): number[] {
    const now = this.#clock();
    const stopped: number[] = [];
    for (const shard of this.#shards) {
      if (shard.state !== ShardState.Draining) continue;
      const c = shard.collector;
      if (c.bufferLen() === 0 && c.pushesSinceDrainStart() === 0 && now - shard.drainStartedAt > this.#drainGraceMs) {
        shard.state = ShardState.Stopped;
        stopped.push(shard.id);
      }
    }
    for (const id of stopped) this.#wiring?.onStopped(id);
    this.#fire(this.#onRemoved, stopped);
    return stopped;
  }

  /**
   * @internal Stop one Draining shard without the grace period. ShardManager calls it once
   * the shard's ring is closed and every record in it is acknowledged: closing makes late
   * pushes impossible, which is what the grace period guards against.
   */
  stopDrained(id: number): boolean {
    const shard = this.#byId.get(id);
    if (!shard || shard.state !== ShardState.Draining) return false;
    shard.state = ShardState.Stopped;
    this.#wiring?.onStopped(id);
    this.#fire(this.#onRemoved, [id]);
    return true;
  }

  removeSpecificStoppedShard(id: number): boolean {
    const shard = this.#byId.get(id);
    if (!shard || shard.state !== ShardState.Stopped) return false;
    this.#remove([shard]);
    return true;
  }

  removeStoppedShards(): number[] {
    const stopped = this.#shards.filter((s) => s.state === ShardState.Stopped);
    this.#remove(stopped);
    return stopped.map((s) => s.id);
  }

  /** @internal Roll back a Provisioning shard (ShardManager.removeShard). */
  discardProvisioning(id: number): boolean {
    const shard = this.#byId.get(id);
    if (!shard || shard.state !== ShardState.Provisioning) return false;
    this.#remove([shard]);
    return true;
  }

  #remove(shards: MappedShard[]): void {
    if (shards.length === 0) return;
    const gone = new Set(shards);
    for (let i = this.#shards.length - 1; i >= 0; i--) if (gone.has(this.#shards[i]!)) this.#shards.splice(i, 1);
    for (const shard of shards) {
      this.#byId.delete(shard.id);
      shard.collector.retire();
      this.#wiring?.onRemoved(shard.id, shard.slot);
      this.#core.releaseSlot(shard.slot);
    }
  }
}

/** A table entry routed to `id` through its fence (assembly/fence.ts): the slot half says "fenced". */
function fencedEntry(id: number): number {
  return (id | (FENCED_SLOT << 16)) >>> 0;
}

/** NaN weights sort last. */
function weightOrder(w: number): number {
  return Number.isNaN(w) ? Infinity : w;
}
