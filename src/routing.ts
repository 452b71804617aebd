// Routing modes beyond the least-loaded rule of docs/CONTRACT.md §5. Each builds a table of a fixed number of
// slots that may name a shard many times; selection reads table[floor(hash · T / 2^32)], the
// same single read as the least-loaded candidate list. Everything here is plain data in,
// plain data out (no shared memory, no clock, no randomness), so a distributed node builds
// the same table as its peers from the same inputs: see createTableBuilder.
import { describe, invalid } from './errors.js';

export type RoutingMode = 'leastLoaded' | 'balanced' | 'affinity';
export const ROUTING_MODES: readonly RoutingMode[] = Object.freeze(['leastLoaded', 'balanced', 'affinity']);
/** The bound of affinity routing when `loadBound` is not given. */
export const DEFAULT_LOAD_BOUND = 0.25;

/** An Active shard as the table builders see it: its id and what its last window showed. */
export interface RoutedShard {
  id: number;
  /** Undefined until the shard's first collection (a new shard: treated as empty and idle).
   *  `bufferLen` (records in the ring) lets 'balanced' measure how fast the shard drains. */
  metrics: { fillRatio: number; eventRate: number; bufferLen?: number } | undefined;
}

/** The mode of the runtimes (ShardManager and the Redis node) when none is given: even
 *  load. `ShardMapper` alone keeps the contract's 'leastLoaded' (checkRouting's default). */
export const RUNTIME_DEFAULT_ROUTING: RoutingMode = 'balanced';

/** Refuses anything but the three modes (a ScalingError of kind InvalidPolicy); undefined is
 *  `fallback` ('leastLoaded', ShardMapper's default, unless a runtime gives its own). */
export function checkRouting(name: string, value: unknown, fallback: RoutingMode = 'leastLoaded'): RoutingMode {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !(ROUTING_MODES as readonly string[]).includes(value)) {
    throw invalid(`${name} must be 'leastLoaded', 'balanced' or 'affinity', got ${describe(value)}`);
  }
  return value as RoutingMode;
}

/** ε of affinity routing: a finite number > 0. */
export function checkLoadBound(name: string, value: unknown): number {
  if (value === undefined) return DEFAULT_LOAD_BOUND;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw invalid(`${name} must be a finite number > 0, got ${describe(value)}`);
  }
  return value;
}

/**
 * Slots of a balanced or affinity table: at least 4096 and about 8 per possible shard, so a
 * shard's share moves in steps of at most 1/8 of a fair share (capped at 2^19 slots, 2 MiB
 * per table).
 */
export function routingSlots(maxShards: number): number {
  const perShard = 2 ** Math.ceil(Math.log2(Math.max(1, maxShards))) * 8;
  return Math.min(1 << 19, Math.max(4096, perShard));
}

/** Entries the shared selection table must hold for a mode (the one place this is decided). */
export function tableCapacity(mode: RoutingMode, maxShards: number): number {
  return mode === 'leastLoaded' ? maxShards : Math.max(maxShards, routingSlots(maxShards));
}

// ---- hashing for affinity ------------------------------------------------------------------

/** murmur3's 32-bit finalizer: a bijection with full avalanche. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

const slotKey = (slot: number) => fmix32((slot + 0x9e3779b9) >>> 0);
const idKey = (id: number) => fmix32(Math.imul(id + 1, 0x27d4eb2f) >>> 0);
/** Rendezvous score of a shard for a slot: the slot's owner is the shard that scores highest. */
const score = (sk: number, ik: number) => fmix32((sk ^ ik) >>> 0);
/** Does (score a, id a) beat (score b, id b)? Ties (rare) go to the higher id. */
const beats = (a: number, ia: number, b: number, ib: number) => a > b || (a === b && ia > ib);

/**
 * The home owner of every slot by rendezvous hashing: a function of the slot and the set of
 * ids alone (their order does not matter). `out[s]` is an id; `slots` entries.
 */
export function affinityHomes(ids: readonly number[], slots: number): Uint16Array {
  const out = new Uint16Array(slots);
  const keys = ids.map(idKey);
  for (let s = 0; s < slots; s++) {
    const sk = slotKey(s);
    let best = -1;
    let bestId = -1;
    for (let k = 0; k < ids.length; k++) {
      const v = score(sk, keys[k]!);
      if (beats(v, ids[k]!, best, bestId)) {
        best = v;
        bestId = ids[k]!;
      }
    }
    out[s] = bestId;
  }
  return out;
}

// ---- balanced ------------------------------------------------------------------------------

/** The weight every shard keeps whatever its fill, so none is all or nothing. */
const BALANCED_FLOOR = 0.05;
/** A shard with at least this fill has a backlog: what it drained is what it can drain. */
const BACKLOG_FILL = 0.02;
/** Headroom of a drain-rate cap: a shard with a small backlog may take 10 % more than it
 *  drained; the cap shrinks by BACKLOG_PULL × fill / threshold, so it balances with the ring
 *  a third of the way to the threshold and a ring at the threshold drains 20 % faster than
 *  it fills. A gentle pull keeps the share steady while a backlog is worked off. */
const CAP_HEADROOM = 1.1;
const BACKLOG_PULL = 0.3;
/** How far a window's target moves the shares (the rest is the previous window's). */
const BALANCED_SMOOTHING = 0.7;

/** A shard's desired weight: a floor plus its spare capacity below the fill threshold. */
export function spareWeight(metrics: RoutedShard['metrics'], fillRatioThreshold: number): number {
  if (!metrics) return BALANCED_FLOOR + 1;
  const fill = metrics.fillRatio;
  const spare = Number.isFinite(fill) ? Math.min(1, Math.max(0, 1 - fill / fillRatioThreshold)) : 0;
  return BALANCED_FLOOR + spare;
}

/**
 * Whole slot counts for real shares (summing to 1) by largest remainder, every shard at least
 * one slot. Ties in the remainder go to the earlier shard.
 */
export function slotCounts(shares: readonly number[], slots: number): number[] {
  const n = shares.length;
  if (n === 0) return [];
  if (n > slots) throw new RangeError(`slotCounts: ${n} shards do not fit in ${slots} slots`);
  const free = slots - n; // one slot each is reserved
  const counts = new Array<number>(n);
  const rest = new Float64Array(n);
  let left = free;
  for (let i = 0; i < n; i++) {
    const exact = shares[i]! * free;
    counts[i] = Math.floor(exact);
    rest[i] = exact - counts[i]!;
    left -= counts[i]!;
  }
  // The `left` largest remainders get one more (ties: the earlier shard). Bucket them first
  // (linear), then order exactly only the bucket where the cut falls.
  if (left > 0) {
    const B = 1024;
    const bucketOf = (r: number) => Math.min(B - 1, Math.floor(r * B));
    const perBucket = new Int32Array(B);
    for (let i = 0; i < n; i++) perBucket[bucketOf(rest[i]!)]!++;
    let cut = B - 1;
    let above = 0; // shards in buckets above `cut`
    while (cut > 0 && above + perBucket[cut]! < left) above += perBucket[cut--]!;
    const edge: number[] = [];
    for (let i = 0; i < n; i++) {
      const b = bucketOf(rest[i]!);
      if (b > cut) counts[i]!++;
      else if (b === cut) edge.push(i);
    }
    edge.sort((a, b) => rest[b]! - rest[a]! || a - b);
    let more = left - above;
    for (let k = 0; more > 0 && edge.length > 0; k = (k + 1) % edge.length, more--) counts[edge[k]!]!++;
    // (Only if the shares did not add up to 1: spread what is left so the counts still do.)
    for (let i = 0; more > 0; i = (i + 1) % n, more--) counts[i]!++;
  }
  for (let i = 0; i < n; i++) counts[i]!++;
  return counts;
}

/**
 * Move the fewest slots so that shard `ids[i]` owns exactly `counts[i]` slots: a slot keeps
 * its owner while that owner is still wanted and under its count; the freed slots go to the
 * shards short of theirs, in slot order. `previous` may name shards that are gone.
 */
export function reassignSlots(
  previous: Uint16Array | undefined,
  ids: readonly number[],
  counts: readonly number[],
  slots: number,
): Uint16Array {
  const out = new Uint16Array(slots);
  const index = idIndex;
  ids.forEach((id, i) => {
    index[id] = i;
  });
  const kept = new Int32Array(ids.length);
  if (freeScratch.length < slots) freeScratch = new Int32Array(slots);
  const free = freeScratch;
  let freeCount = 0;
  for (let s = 0; s < slots; s++) {
    const i = previous ? index[previous[s]!]! : -1;
    if (i >= 0 && kept[i]! < counts[i]!) {
      kept[i]!++;
      out[s] = ids[i]!;
    } else free[freeCount++] = s;
  }
  for (const id of ids) index[id] = -1;
  let f = 0;
  for (let i = 0; i < ids.length; i++) {
    for (let k = kept[i]!; k < counts[i]!; k++) out[free[f++]!] = ids[i]!;
  }
  return out;
}

let freeScratch = new Int32Array(0);
/** id → position scratch for reassignSlots (ids are uint16); -1 everywhere between calls. */
const idIndex = new Int32Array(65536).fill(-1);

/**
 * Shares proportional to `weights`, none above its cap; what a capped shard may not take goes
 * to the others in proportion to their weights. When the caps add up to less than the whole,
 * every share is its cap scaled up to fill it.
 */
export function waterFill(weights: readonly number[], caps: readonly number[]): number[] {
  const n = weights.length;
  const out = new Array<number>(n).fill(0);
  const fixed = new Array<boolean>(n).fill(false);
  let left = 1;
  for (let round = 0; round < n; round++) {
    let w = 0;
    for (let i = 0; i < n; i++) if (!fixed[i]) w += weights[i]!;
    if (w <= 0) break;
    let capped = false;
    for (let i = 0; i < n; i++) {
      if (fixed[i]) continue;
      const want = (left * weights[i]!) / w;
      if (want > caps[i]!) {
        out[i] = caps[i]!;
        fixed[i] = true;
        capped = true;
      }
    }
    if (!capped) {
      for (let i = 0; i < n; i++) if (!fixed[i]) out[i] = (left * weights[i]!) / w;
      return out;
    }
    left = 1;
    for (let i = 0; i < n; i++) if (fixed[i]) left -= out[i]!;
    if (left <= 0) break;
  }
  // Every shard is at its cap and they cover less than the whole (or more): scale to 1.
  const sum = out.reduce((a, b) => a + b, 0);
  return sum > 0 ? out.map((x) => x / sum) : weights.map(() => 1 / n);
}

/**
 * 'balanced': each Active shard's share of the slots follows its spare capacity, smoothed
 * across windows; a rebuild moves only the slots whose owner must change.
 */
export class BalancedTable {
  readonly slots: number;
  readonly #threshold: number;
  #table: Uint16Array | undefined;
  // Per Active shard, at the positions of #ids (the order of the last build's input):
  // its smoothed share, its ring length at the last window, and the rate it is known to
  // drain at (Infinity until a window shows it; NaN share: a shard not seen before).
  #ids: number[] = [];
  #share = new Float64Array(0);
  #len = new Float64Array(0);
  #rate = new Float64Array(0);
  /** The slots each shard owns (at the positions of #ids), last taken first when it shrinks. */
  #owned: number[][] = [];
  /** Slots whose owner left and that nobody took yet. */
  #orphans: number[] = [];
  /** Slots the last build changed; null when it built the table afresh. */
  #changed: number[] | null = null;

  constructor(slots: number, fillRatioThreshold: number) {
    this.slots = slots;
    this.#threshold = fillRatioThreshold;
  }

  /** The current table (ids), or undefined before the first build or with no Active shard. */
  get table(): Uint16Array | undefined {
    return this.#table;
  }

  /** The slots the last build changed (empty: the table stands), or null: all of them. */
  changedSlots(): readonly number[] | null {
    return this.#changed;
  }

  /** The smoothed share of the hash space each shard was given by the last build. */
  shares(): Map<number, number> {
    return new Map(this.#ids.map((id, i) => [id, this.#share[i]!]));
  }

  /** Line the per-shard state up with `active` (cheap when the order is unchanged). */
  #align(active: readonly RoutedShard[]): void {
    const ids = this.#ids;
    if (active.length === ids.length && active.every((s, i) => s.id === ids[i])) return;
    const n = active.length;
    const share = new Float64Array(n).fill(NaN);
    const len = new Float64Array(n).fill(NaN);
    const rate = new Float64Array(n).fill(Infinity);
    const owned: number[][] = active.map(() => []);
    const index = idIndex;
    ids.forEach((id) => {
      index[id] = -1;
    });
    active.forEach((s, i) => {
      index[s.id] = i;
    });
    ids.forEach((id, j) => {
      const i = index[id]!;
      if (i >= 0) {
        share[i] = this.#share[j]!;
        len[i] = this.#len[j]!;
        rate[i] = this.#rate[j]!;
        owned[i] = this.#owned[j]!;
      } else this.#orphans.push(...(this.#owned[j] ?? []));
    });
    for (const s of active) index[s.id] = -1;
    this.#ids = active.map((s) => s.id);
    this.#share = share;
    this.#len = len;
    this.#rate = rate;
    this.#owned = owned;
  }

  /**
   * This window's target shares: spare capacity below the fill threshold, except that a
   * shard with a backlog gets at most what its consumer drained in the window (with a little
   * headroom that shrinks as the backlog grows) — so a slow consumer's share drops to its
   * rate within a window or two instead of waiting for its ring to fill. What one shard may
   * not take is spread over the others by their spare capacity.
   */
  #targets(active: readonly RoutedShard[], fresh: boolean): number[] {
    const thr = this.#threshold;
    const n = active.length;
    const weights = new Array<number>(n);
    const caps = new Array<number>(n);
    let events = 0;
    for (let i = 0; i < n; i++) events += active[i]!.metrics?.eventRate ?? 0;
    for (let i = 0; i < n; i++) {
      const m = active[i]!.metrics;
      weights[i] = spareWeight(m, thr);
      caps[i] = Infinity;
      if (!m || m.bufferLen === undefined) continue;
      if (fresh) {
        const before = this.#len[i]!;
        if (!Number.isNaN(before)) {
          const drained = Math.max(0, m.eventRate - (m.bufferLen - before));
          // With a backlog the consumer was busy all window: that is its rate. Without one
          // it could have taken more: let the estimate grow.
          this.#rate[i] = m.fillRatio >= BACKLOG_FILL ? drained : Math.max(drained, this.#rate[i]! * CAP_HEADROOM);
        }
        this.#len[i] = m.bufferLen;
      }
      const rate = this.#rate[i]!; // Infinity: not measured yet, no cap
      if (Number.isFinite(rate) && events > 0) caps[i] = (rate * Math.max(0, CAP_HEADROOM - (BACKLOG_PULL * m.fillRatio) / thr)) / events;
    }
    return waterFill(weights, caps);
  }

  /**
   * Rebuild for these Active shards. `fresh` is true when their metrics are a new window
   * (the shares move toward the new targets); otherwise only membership changed and the
   * shares of the shards that stay are kept.
   */
  build(active: readonly RoutedShard[], fresh: boolean): Uint16Array | undefined {
    this.#align(active);
    const n = active.length;
    if (n === 0) {
      this.#table = undefined;
      this.#orphans = [];
      this.#changed = null;
      return undefined;
    }
    const targets = this.#targets(active, fresh);
    // Shards that stay move toward their target (when the window is new); a newcomer starts
    // at its target and the others make room in proportion to what they had.
    const share = this.#share;
    let newcomers = 0;
    let keptSum = 0;
    for (let i = 0; i < n; i++) {
      const prev = share[i]!;
      if (Number.isNaN(prev)) {
        newcomers += targets[i]!;
        continue;
      }
      share[i] = fresh ? prev + BALANCED_SMOOTHING * (targets[i]! - prev) : prev;
      keptSum += share[i]!;
    }
    const room = 1 - Math.min(newcomers, 1);
    const out = new Array<number>(n);
    for (let i = 0; i < n; i++) {
      if (Number.isNaN(share[i]!)) share[i] = targets[i]!;
      else share[i] = keptSum > 0 ? (share[i]! / keptSum) * room : room / n;
      out[i] = share[i]!;
    }
    const counts = slotCounts(out, this.slots);
    this.#table = this.#moveSlots(counts);
    return this.#table;
  }

  /**
   * Give shard i exactly counts[i] slots, moving the fewest: shards over their count give up
   * their most recently taken slots, which (with the slots of shards that left) go to the
   * shards under theirs. Linear in the slots that move, not in the table.
   */
  #moveSlots(counts: readonly number[]): Uint16Array {
    const ids = this.#ids;
    const owned = this.#owned;
    if (!this.#table) {
      // First table: contiguous ranges in input order.
      const table = new Uint16Array(this.slots);
      let s = 0;
      ids.forEach((id, i) => {
        for (let k = 0; k < counts[i]!; k++, s++) {
          table[s] = id;
          owned[i]!.push(s);
        }
      });
      this.#orphans = [];
      this.#changed = null;
      return table;
    }
    const table = this.#table;
    const free = this.#orphans;
    for (let i = 0; i < ids.length; i++) {
      const mine = owned[i]!;
      while (mine.length > counts[i]!) free.push(mine.pop()!);
    }
    const changed = free.slice();
    for (let i = 0; i < ids.length; i++) {
      const mine = owned[i]!;
      while (mine.length < counts[i]!) {
        const s = free.pop()!;
        table[s] = ids[i]!;
        mine.push(s);
      }
    }
    this.#orphans = free; // empty: the counts add up to the table
    this.#changed = changed;
    return table;
  }
}

// ---- affinity ------------------------------------------------------------------------------

/** Windows a spilled slot stays away before it may return home (doubles while it flaps). */
const MIN_HOLD = 4;
/** With more than twice this many shards, a spilled slot looks at this many hashed candidates. */
const SPILL_PROBES = 16;
const MAX_HOLD = 64;

interface AffinityShardState {
  key: number;
  /** Fill ratio of the previous window: a full shard whose fill is falling is recovering. */
  lastFill: number;
  /** Windows a slot spilled from this shard must wait before returning. */
  hold: number;
  /** The window of the last slot returned to this shard (for the flap back-off). */
  returnedAt: number;
  /** Overloaded in the previous window (a new episode starts when this was false). */
  over: boolean;
}

/**
 * 'affinity': every slot has a home shard by rendezvous hashing over the Active ids, so a
 * hash's shard depends on the Active set alone. Bounded load: a shard whose fill is above the
 * threshold (and not falling), or whose share of the window's events is above (1 + ε)/n,
 * spills slots to their next choice until it is back under (1 + ε/2)/n; a spilled slot
 * returns once its home can take it without going over (1 + ε)/n again, and not before it has
 * been away for a hold time that doubles when a shard flaps.
 */
export class AffinityTable {
  readonly slots: number;
  readonly #threshold: number;
  readonly #bound: number;
  /** Home owner per slot for #ids; recomputed only when the Active set changes. */
  #homes: Uint16Array = new Uint16Array(0);
  /** Where each slot routes now (home, or a spill target). */
  #route: Uint16Array = new Uint16Array(0);
  /** Window a slot was spilled in (for the hold time); meaningful where route != home. */
  readonly #spilledAt: Int32Array;
  /** A spilled slot's load estimate (its home's events per slot when it left), so its
   *  return is weighed by what it carried rather than by its host's average. */
  readonly #spilledLoad: Float64Array;
  /** The Active ids, ascending, and their state at the same positions. */
  #ids: number[] = [];
  #states: AffinityShardState[] = [];
  /** id → position in #ids (-1: not Active). */
  readonly #index = new Int32Array(65536).fill(-1);
  #window = 0;
  /** Slots currently away from home. */
  #spilled = 0;
  /** Slots the last build moved; null when the Active set changed (everything may have). */
  #changed: number[] | null = [];
  /** Slots that went away from home (may include some back home since: skipped, then dropped). */
  #away: number[] = [];
  /** Which slots are in #away (so a slot is listed once). */
  readonly #listed: Uint8Array;
  /** Slots routed to each shard, at the positions of #ids; kept up to date by every move. */
  #count = new Int32Array(0);
  // Per-window scratch at the positions of #ids: events, fill, overloaded.
  #load = new Float64Array(0);
  #fill = new Float64Array(0);
  #over = new Uint8Array(0);

  constructor(slots: number, fillRatioThreshold: number, loadBound: number) {
    this.slots = slots;
    this.#threshold = fillRatioThreshold;
    this.#bound = loadBound;
    this.#spilledAt = new Int32Array(slots);
    this.#spilledLoad = new Float64Array(slots);
    this.#listed = new Uint8Array(slots);
  }

  /** The current table (ids), or undefined with no Active shard. */
  get table(): Uint16Array | undefined {
    return this.#ids.length === 0 ? undefined : this.#route;
  }

  /** The home table (what routing would be with no shard overloaded). */
  homes(): Uint16Array {
    return this.#homes.slice();
  }

  /** How many slots route away from their home. */
  spilledSlots(): number {
    return this.#spilled;
  }

  /** The slots the last build changed (empty: the table stands), or null: all of them. */
  changedSlots(): readonly number[] | null {
    return this.#changed;
  }

  /**
   * Rebuild for these Active shards. Homes change only when the set of ids does (added ids
   * take over the slots they win, removed ids' slots go to their next choice); `fresh` says
   * the metrics are a new window, which is when slots spill and return. Returns whether the
   * table changed.
   */
  build(active: readonly RoutedShard[], fresh: boolean): boolean {
    this.#changed = [];
    let changed = this.#membership(active.map((s) => s.id));
    if (changed) this.#changed = null;
    if (fresh && active.length > 1) changed = this.#balance(active) || changed;
    if (fresh) this.#window++;
    return changed;
  }

  #membership(ids: number[]): boolean {
    const prev = this.#ids;
    if (ids.length === prev.length && ids.every((id) => this.#index[id]! >= 0)) return false; // same set
    const next = [...ids].sort((a, b) => a - b);
    const slots = this.slots;
    const oldHomes = this.#homes;
    let homes: Uint16Array;
    if (prev.length === 0 || next.length === 0) {
      homes = next.length === 0 ? new Uint16Array(0) : affinityHomes(next, slots);
    } else {
      homes = new Uint16Array(oldHomes);
      const nextSet = new Set(next);
      const prevSet = new Set(prev);
      const added = next.filter((id) => !prevSet.has(id));
      const addedKeys = added.map(idKey);
      const removed = prev.some((id) => !nextSet.has(id));
      const keys = next.map(idKey);
      for (let s = 0; s < slots; s++) {
        const sk = slotKey(s);
        let owner = homes[s]!;
        if (removed && !nextSet.has(owner)) {
          // Its owner left: the best of the rest (the added ones included).
          let best = -1;
          let bestId = -1;
          for (let k = 0; k < next.length; k++) {
            const v = score(sk, keys[k]!);
            if (beats(v, next[k]!, best, bestId)) {
              best = v;
              bestId = next[k]!;
            }
          }
          homes[s] = bestId;
          continue;
        }
        if (added.length === 0) continue;
        // The owner stays unless an added id beats it.
        let best = score(sk, idKey(owner));
        for (let k = 0; k < added.length; k++) {
          const v = score(sk, addedKeys[k]!);
          if (beats(v, added[k]!, best, owner)) {
            best = v;
            owner = added[k]!;
          }
        }
        homes[s] = owner;
      }
    }
    // Routes: a spilled slot stays where it is while its host is Active and its home did not
    // change; every other slot routes to its home.
    const nextSet = new Set(next);
    const prevRoute = this.#route;
    const route = new Uint16Array(next.length === 0 ? 0 : slots);
    let spilled = 0;
    const away: number[] = [];
    this.#listed.fill(0);
    for (let s = 0; s < route.length; s++) {
      const home = homes[s]!;
      const host = prevRoute.length === slots ? prevRoute[s]! : home;
      const keep =
        prevRoute.length === slots && oldHomes.length === slots && host !== oldHomes[s] && oldHomes[s] === home && nextSet.has(host);
      route[s] = keep ? host : home;
      if (keep) {
        spilled++;
        away.push(s);
        this.#listed[s] = 1;
      }
    }
    this.#away = away;
    this.#homes = homes;
    this.#route = route;
    this.#spilled = spilled;
    const old = new Map(this.#ids.map((id, k) => [id, this.#states[k]!]));
    this.#states = next.map((id) => old.get(id) ?? { key: idKey(id), lastFill: 0, hold: MIN_HOLD, returnedAt: -Infinity, over: false });
    for (const id of this.#ids) this.#index[id] = -1;
    next.forEach((id, k) => {
      this.#index[id] = k;
    });
    this.#ids = next;
    const count = new Int32Array(next.length);
    for (let s = 0; s < route.length; s++) count[this.#index[route[s]!]!]!++;
    this.#count = count;
    return true;
  }

  /**
   * Where slot s spills: the position (in #ids) of the best-scoring eligible shard, or -1.
   * With many shards only a few candidates picked by hashing the slot are scored (a spill is
   * temporary, and scoring every shard for every spilled slot would make a window of
   * overloads cost slots × shards); all of them when none of those can take it.
   */
  #nextChoice(s: number, eligible: (k: number) => boolean): number {
    const sk = slotKey(s);
    const ids = this.#ids;
    const states = this.#states;
    const n = ids.length;
    let best = -1;
    let bestId = -1;
    let bestK = -1;
    const consider = (k: number) => {
      if (!eligible(k)) return;
      const v = score(sk, states[k]!.key);
      if (beats(v, ids[k]!, best, bestId)) {
        best = v;
        bestId = ids[k]!;
        bestK = k;
      }
    };
    if (n > SPILL_PROBES * 2) {
      for (let j = 0; j < SPILL_PROBES; j++) consider(fmix32((sk + Math.imul(j + 1, 0x9e3779b9)) >>> 0) % n);
      if (bestK >= 0) return bestK;
    }
    for (let k = 0; k < n; k++) consider(k);
    return bestK;
  }

  #balance(active: readonly RoutedShard[]): boolean {
    const ids = this.#ids;
    const n = ids.length;
    const slots = this.slots;
    const route = this.#route;
    const homes = this.#homes;
    const at = this.#index; // id → position in ids (dense arrays below)
    const states = this.#states;
    if (this.#load.length !== n) {
      this.#load = new Float64Array(n);
      this.#fill = new Float64Array(n);
      this.#over = new Uint8Array(n);
    }
    const load = this.#load;
    const count = this.#count;
    const fill = this.#fill;
    const over = this.#over;
    load.fill(0);
    fill.fill(0);
    over.fill(0);
    let total = 0;
    for (const s of active) {
      const k = at[s.id]!;
      const rate = s.metrics?.eventRate ?? 0;
      load[k] = rate;
      fill[k] = s.metrics?.fillRatio ?? 0;
      total += rate;
    }
    const mean = total / n;
    const spillAbove = (1 + this.#bound) * mean;
    const settleAt = (1 + this.#bound / 2) * mean;
    // A share over the bound by less than the window's counting noise (about √ of the
    // events) is not an overload: a window of a handful of events says nothing.
    const noise = 2 * Math.sqrt(spillAbove);
    const thr = this.#threshold;
    const perSlot = (k: number) => (count[k] === 0 ? 0 : load[k]! / count[k]!);
    const fillOver = (k: number) => fill[k]! > thr && fill[k]! >= states[k]!.lastFill;
    const shareOver = (k: number) => total > 0 && load[k]! > spillAbove + noise;
    let changed = false;

    const moved = this.#changed;
    const move = (s: number, from: number, to: number, unit: number) => {
      route[s] = ids[to]!;
      moved?.push(s);
      count[from]!--;
      count[to]!++;
      load[from]! -= unit;
      load[to]! += unit;
      changed = true;
    };

    // Spill: each overloaded shard sheds slots (those that are guests on it first) to the
    // slot's best-scoring shard that can take them and stay under the settle mark.
    let overCount = 0;
    let minLoad = Infinity;
    for (let k = 0; k < n; k++) {
      if (fillOver(k) || shareOver(k)) {
        over[k] = 1;
        overCount++;
      }
      if (load[k]! < minLoad) minLoad = load[k]!;
    }
    // overloaded shard → the slots routed to it (one pass over the table for all of them)
    const slotsOf: (number[] | undefined)[] = new Array(n);
    if (overCount > 0) {
      // Only shards that can shed: some shard could take one of their slots and stay under
      // the settle mark (slot loads are estimated as the shard's mean per slot).
      let shedding = 0;
      for (let k = 0; k < n; k++) {
        if (over[k] && count[k]! > 1 && (total === 0 || minLoad + perSlot(k) <= settleAt)) {
          slotsOf[k] = [];
          shedding++;
        }
      }
      if (shedding > 0) for (let s = 0; s < slots; s++) slotsOf[at[route[s]!]!]?.push(s);
    }
    for (let k = 0; k < n; k++) {
      if (!over[k]) continue;
      const id = ids[k]!;
      const cnt = count[k]!;
      if (cnt <= 1) continue;
      const unit = perSlot(k);
      let want = shareOver(k) && unit > 0 ? Math.ceil((load[k]! - settleAt) / unit) : 0;
      if (fillOver(k)) want = Math.max(want, Math.ceil(cnt / 4));
      want = Math.min(want, cnt - 1);
      const st = states[k]!;
      // Overloaded again soon after getting slots back: it flapped, so they stay away longer.
      if (!st.over && this.#window - st.returnedAt <= st.hold) st.hold = Math.min(MAX_HOLD, st.hold * 2);
      const canTake = (j: number) => j !== k && fill[j]! <= thr / 2 && !fillOver(j) && (total === 0 || load[j]! + unit <= settleAt);
      const mine = slotsOf[k];
      if (!mine) continue;
      mine.sort((a, b) => Number(homes[a] === id) - Number(homes[b] === id) || b - a); // guests first
      for (let m = 0; m < mine.length && want > 0; m++) {
        const s = mine[m]!;
        const to = this.#nextChoice(s, canTake);
        if (to < 0) break;
        if (homes[s] === id) {
          this.#spilledAt[s] = this.#window;
          this.#spilledLoad[s] = unit;
          this.#spilled++;
          if (!this.#listed[s]) {
            this.#listed[s] = 1;
            this.#away.push(s);
          }
        } else if (homes[s] === ids[to]) this.#spilled--;
        move(s, k, to, unit);
        want--;
      }
    }

    // Return: a slot away long enough goes home when its home is calm and stays under the mark.
    if (this.#spilled > 0) {
      const stillAway: number[] = [];
      for (const s of this.#away) {
        const home = at[homes[s]!]!;
        const host = at[route[s]!]!;
        if (host === home) {
          this.#listed[s] = 0;
          continue;
        } // came home by another way
        stillAway.push(s);
        const st = states[home]!;
        if (this.#window - this.#spilledAt[s]! < st.hold) continue;
        if (fill[home]! > thr / 2 || fillOver(home) || shareOver(home)) continue;
        // Home again only if that does not overload it: once nothing is overloaded, every slot
        // is back where the Active set alone puts it.
        const unit = Math.max(perSlot(host), this.#spilledLoad[s]!);
        if (total > 0 && load[home]! + unit > spillAbove) continue;
        move(s, host, home, unit);
        stillAway.pop();
        this.#listed[s] = 0;
        this.#spilled--;
        st.returnedAt = this.#window;
      }
      this.#away = stillAway;
    }

    for (let k = 0; k < n; k++) {
      const st = states[k]!;
      st.over = over[k] === 1;
      st.lastFill = fill[k]!;
      // A shard that stayed calm for a whole hold time earns a shorter one back.
      if (!fillOver(k) && !shareOver(k) && this.#window - st.returnedAt > st.hold) st.hold = Math.max(MIN_HOLD, st.hold >> 1);
    }
    return changed;
  }
}

// ---- one entry point for both builders ---------------------------------------------------------

/** A 'balanced' or 'affinity' table builder, as ShardMapper uses it. */
export interface TableBuilder {
  readonly mode: 'balanced' | 'affinity';
  /** Entries of every table it builds. */
  readonly slots: number;
  /**
   * Rebuild for these Active shards (in the mapper's table order) and return the table: the
   * shard id of every slot, or undefined when none is Active. `fresh` says their metrics are
   * a new window (collectMetrics); false for a change of the Active set only. The returned
   * array may be the builder's own and change at the next call: copy what you keep.
   */
  build(active: readonly RoutedShard[], fresh: boolean): Uint16Array | undefined;
  /** The slots the last build changed (empty: the table stands), or null: any may have. */
  changedSlots(): readonly number[] | null;
}

export interface TableBuilderOptions {
  /** Sizes the table: routingSlots(maxShards) slots. */
  maxShards: number;
  fillRatioThreshold: number;
  /** ε of 'affinity' (default DEFAULT_LOAD_BOUND). */
  loadBound?: number;
}

/**
 * A builder for 'balanced' or 'affinity' tables. Builders are deterministic: the same
 * sequence of build calls (same ids in the same order, same metrics, same `fresh` flags)
 * gives the same tables anywhere, so nodes that see the same windows agree; 'affinity's
 * table with nothing overloaded is affinityHomes(the Active ids) whatever the history.
 */
export function createTableBuilder(mode: 'balanced' | 'affinity', options: TableBuilderOptions): TableBuilder {
  const slots = routingSlots(options.maxShards);
  if (mode === 'balanced') {
    const table = new BalancedTable(slots, options.fillRatioThreshold);
    return { mode, slots, build: (active, fresh) => table.build(active, fresh), changedSlots: () => table.changedSlots() };
  }
  const table = new AffinityTable(slots, options.fillRatioThreshold, options.loadBound ?? DEFAULT_LOAD_BOUND);
  return {
    mode,
    slots,
    build: (active, fresh) => {
      table.build(active, fresh);
      return table.table;
    },
    changedSlots: () => table.changedSlots(),
  };
}
