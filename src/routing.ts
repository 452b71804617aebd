// Routing modes beyond the SPEC's least-loaded rule. Each builds a table of a fixed number of
// slots that may name a shard many times; selection reads table[floor(hash · T / 2^32)], the
// same single read as the least-loaded candidate list. Everything here is plain data in,
// plain data out (no memory, no clock), so a distributed node can build the same table from
// the same active ids and metrics.
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

/** Refuses anything but the three modes (a ScalingError of kind InvalidPolicy). */
export function checkRouting(name: string, value: unknown): RoutingMode {
  if (value === undefined) return 'leastLoaded';
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
      if (beats(v, ids[k]!, best, bestId)) { best = v; bestId = ids[k]!; }
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
const BALANCED_SMOOTHING = 0.6;

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
  const exact = shares.map((s) => s * free);
  const counts = exact.map((e) => Math.floor(e));
  let left = free - counts.reduce((a, b) => a + b, 0);
  const order = exact.map((e, i) => i).sort((a, b) => (exact[b]! - counts[b]!) - (exact[a]! - counts[a]!) || a - b);
  for (let k = 0; left > 0; k = (k + 1) % n, left--) counts[order[k]!]!++;
  return counts.map((c) => c + 1);
}

/**
 * Move the fewest slots so that shard `ids[i]` owns exactly `counts[i]` slots: a slot keeps
 * its owner while that owner is still wanted and under its count; the freed slots go to the
 * shards short of theirs, in slot order. `previous` may name shards that are gone.
 */
export function reassignSlots(previous: Uint16Array | undefined, ids: readonly number[], counts: readonly number[], slots: number): Uint16Array {
  const out = new Uint16Array(slots);
  const index = new Map<number, number>();
  ids.forEach((id, i) => index.set(id, i));
  const kept = new Array<number>(ids.length).fill(0);
  const free: number[] = [];
  for (let s = 0; s < slots; s++) {
    const i = previous ? index.get(previous[s]!) : undefined;
    if (i !== undefined && kept[i]! < counts[i]!) { kept[i]!++; out[s] = ids[i]!; }
    else free.push(s);
  }
  let f = 0;
  for (let i = 0; i < ids.length; i++) {
    for (let k = kept[i]!; k < counts[i]!; k++) out[free[f++]!] = ids[i]!;
  }
  return out;
}

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
      if (want > caps[i]!) { out[i] = caps[i]!; fixed[i] = true; capped = true; }
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
  #shares = new Map<number, number>();
  /** Per shard: its ring length at the last window, and the rate it is known to drain at. */
  #drain = new Map<number, { len: number; rate: number }>();

  constructor(slots: number, fillRatioThreshold: number) {
    this.slots = slots;
    this.#threshold = fillRatioThreshold;
  }

  /** The current table (ids), or undefined before the first build or with no Active shard. */
  get table(): Uint16Array | undefined { return this.#table; }

  /** The smoothed share of the hash space each shard was given by the last build. */
  shares(): Map<number, number> { return new Map(this.#shares); }

  /**
   * This window's target shares: spare capacity below the fill threshold, except that a
   * shard with a backlog gets at most what its consumer drained in the window (with a little
   * headroom that shrinks as the backlog grows) — so a slow consumer's share drops to its
   * rate within a window or two instead of waiting for its ring to fill. What one shard may
   * not take is spread over the others by their spare capacity.
   */
  #targets(active: readonly RoutedShard[], fresh: boolean): number[] {
    const thr = this.#threshold;
    const weights = active.map((s) => spareWeight(s.metrics, thr));
    let events = 0;
    for (const s of active) events += s.metrics?.eventRate ?? 0;
    const caps = active.map((s) => {
      const m = s.metrics;
      if (!m || m.bufferLen === undefined) return Infinity;
      const known = this.#drain.get(s.id);
      if (fresh) {
        if (known === undefined) {
          this.#drain.set(s.id, { len: m.bufferLen, rate: Infinity });
        } else {
          const drained = Math.max(0, m.eventRate - (m.bufferLen - known.len));
          // With a backlog the consumer was busy all window: that is its rate. Without one
          // it could have taken more: let the estimate grow.
          known.rate = m.fillRatio >= BACKLOG_FILL ? drained : Math.max(drained, known.rate * CAP_HEADROOM);
          known.len = m.bufferLen;
        }
      }
      const rate = this.#drain.get(s.id)?.rate ?? Infinity; // not measured yet: no cap
      if (!Number.isFinite(rate) || events <= 0) return Infinity;
      return (rate * Math.max(0, CAP_HEADROOM - (BACKLOG_PULL * m.fillRatio) / thr)) / events;
    });
    if (this.#drain.size > active.length) {
      const live = new Set(active.map((s) => s.id));
      for (const id of [...this.#drain.keys()]) if (!live.has(id)) this.#drain.delete(id);
    }
    return waterFill(weights, caps);
  }

  /**
   * Rebuild for these Active shards. `fresh` is true when their metrics are a new window
   * (the shares move toward the new targets); otherwise only membership changed and the
   * shares of the shards that stay are kept.
   */
  build(active: readonly RoutedShard[], fresh: boolean): Uint16Array | undefined {
    if (active.length === 0) {
      this.#table = undefined;
      this.#shares.clear();
      this.#drain.clear();
      return undefined;
    }
    const targets = this.#targets(active, fresh);
    // Shards that stay move toward their target (when the window is new); a newcomer starts
    // at its target and the others make room in proportion to what they had.
    let newcomers = 0;
    const kept = active.map((s, i) => {
      const prev = this.#shares.get(s.id);
      if (prev === undefined) { newcomers += targets[i]!; return NaN; }
      return fresh ? prev + BALANCED_SMOOTHING * (targets[i]! - prev) : prev;
    });
    const keptSum = kept.reduce((a, k) => (Number.isNaN(k) ? a : a + k), 0);
    const room = 1 - Math.min(newcomers, 1);
    const shares = kept.map((k, i) => {
      if (Number.isNaN(k)) return targets[i]!;
      return keptSum > 0 ? (k / keptSum) * room : room / (active.length || 1);
    });
    this.#shares = new Map(active.map((s, i) => [s.id, shares[i]!]));
    const ids = active.map((s) => s.id);
    this.#table = reassignSlots(this.#table, ids, slotCounts(shares, this.slots), this.slots);
    return this.#table;
  }
}

// ---- affinity ------------------------------------------------------------------------------

/** Windows a spilled slot stays away before it may return home (doubles while it flaps). */
const MIN_HOLD = 4;
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
  #ids: number[] = [];
  #state = new Map<number, AffinityShardState>();
  #window = 0;
  /** Slots currently away from home. */
  #spilled = 0;

  constructor(slots: number, fillRatioThreshold: number, loadBound: number) {
    this.slots = slots;
    this.#threshold = fillRatioThreshold;
    this.#bound = loadBound;
    this.#spilledAt = new Int32Array(slots);
    this.#spilledLoad = new Float64Array(slots);
  }

  /** The current table (ids), or undefined with no Active shard. */
  get table(): Uint16Array | undefined { return this.#ids.length === 0 ? undefined : this.#route; }

  /** The home table (what routing would be with no shard overloaded). */
  homes(): Uint16Array { return this.#homes.slice(); }

  /** How many slots route away from their home. */
  spilledSlots(): number { return this.#spilled; }

  /**
   * Rebuild for these Active shards. Homes change only when the set of ids does (added ids
   * take over the slots they win, removed ids' slots go to their next choice); `fresh` says
   * the metrics are a new window, which is when slots spill and return. Returns whether the
   * table changed.
   */
  build(active: readonly RoutedShard[], fresh: boolean): boolean {
    let changed = this.#membership(active.map((s) => s.id));
    if (fresh && active.length > 1) changed = this.#balance(active) || changed;
    if (fresh) this.#window++;
    return changed;
  }

  #membership(ids: number[]): boolean {
    const next = [...ids].sort((a, b) => a - b);
    const prev = this.#ids;
    if (next.length === prev.length && next.every((id, i) => id === prev[i])) return false;
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
            if (beats(v, next[k]!, best, bestId)) { best = v; bestId = next[k]!; }
          }
          homes[s] = bestId;
          continue;
        }
        if (added.length === 0) continue;
        // The owner stays unless an added id beats it.
        let best = score(sk, idKey(owner));
        for (let k = 0; k < added.length; k++) {
          const v = score(sk, addedKeys[k]!);
          if (beats(v, added[k]!, best, owner)) { best = v; owner = added[k]!; }
        }
        homes[s] = owner;
      }
    }
    // Routes: a spilled slot stays where it is while its host is Active and its home did not
    // change; every other slot routes to its home.
    const nextSet = new Set(next);
    const old = this.#route;
    const route = new Uint16Array(next.length === 0 ? 0 : slots);
    let spilled = 0;
    for (let s = 0; s < route.length; s++) {
      const home = homes[s]!;
      const host = old.length === slots ? old[s]! : home;
      const keep = old.length === slots && oldHomes.length === slots && host !== oldHomes[s] && oldHomes[s] === home && nextSet.has(host);
      route[s] = keep ? host : home;
      if (keep) spilled++;
    }
    this.#homes = homes;
    this.#route = route;
    this.#spilled = spilled;
    const state = new Map<number, AffinityShardState>();
    for (const id of next) state.set(id, this.#state.get(id) ?? { key: idKey(id), lastFill: 0, hold: MIN_HOLD, returnedAt: -Infinity, over: false });
    this.#state = state;
    this.#ids = next;
    return true;
  }

  /** The best-scoring shard for slot s among `eligible` ids (NO choice: -1). */
  #nextChoice(s: number, eligible: (id: number) => boolean): number {
    const sk = slotKey(s);
    let best = -1;
    let bestId = -1;
    for (const id of this.#ids) {
      if (!eligible(id)) continue;
      const v = score(sk, this.#state.get(id)!.key);
      if (beats(v, id, best, bestId)) { best = v; bestId = id; }
    }
    return bestId;
  }

  #balance(active: readonly RoutedShard[]): boolean {
    const n = active.length;
    const slots = this.slots;
    const route = this.#route;
    const homes = this.#homes;
    const load = new Map<number, number>();
    const count = new Map<number, number>();
    const fill = new Map<number, number>();
    let total = 0;
    for (const s of active) {
      const rate = s.metrics?.eventRate ?? 0;
      load.set(s.id, rate);
      count.set(s.id, 0);
      fill.set(s.id, s.metrics?.fillRatio ?? 0);
      total += rate;
    }
    for (let s = 0; s < slots; s++) count.set(route[s]!, count.get(route[s]!)! + 1);
    const mean = total / n;
    const spillAbove = (1 + this.#bound) * mean;
    const settleAt = (1 + this.#bound / 2) * mean;
    const thr = this.#threshold;
    const perSlot = (id: number) => { const c = count.get(id)!; return c === 0 ? 0 : load.get(id)! / c; };
    const fillOver = (id: number) => fill.get(id)! > thr && fill.get(id)! >= this.#state.get(id)!.lastFill;
    const shareOver = (id: number) => total > 0 && load.get(id)! > spillAbove;
    let changed = false;

    const move = (s: number, from: number, to: number, unit: number) => {
      route[s] = to;
      count.set(from, count.get(from)! - 1);
      count.set(to, count.get(to)! + 1);
      load.set(from, load.get(from)! - unit);
      load.set(to, load.get(to)! + unit);
      changed = true;
    };

    // Spill: each overloaded shard sheds slots (those that are guests on it first) to the
    // slot's best-scoring shard that can take them and stay under the settle mark.
    const overloaded = this.#ids.filter((id) => fillOver(id) || shareOver(id));
    const overloadedSet = new Set(overloaded);
    for (const id of overloaded) {
      const cnt = count.get(id)!;
      if (cnt <= 1) continue;
      const unit = perSlot(id);
      let want = shareOver(id) && unit > 0 ? Math.ceil((load.get(id)! - settleAt) / unit) : 0;
      if (fillOver(id)) want = Math.max(want, Math.ceil(cnt / 4));
      want = Math.min(want, cnt - 1);
      const st = this.#state.get(id)!;
      // Overloaded again soon after getting slots back: it flapped, so they stay away longer.
      if (!st.over && this.#window - st.returnedAt <= st.hold) st.hold = Math.min(MAX_HOLD, st.hold * 2);
      const canTake = (other: number) => other !== id && fill.get(other)! <= thr / 2 && !fillOver(other)
        && (total === 0 || load.get(other)! + unit <= settleAt);
      const mine: number[] = [];
      for (let s = 0; s < slots; s++) if (route[s] === id) mine.push(s);
      mine.sort((a, b) => Number(homes[a] === id) - Number(homes[b] === id) || b - a); // guests first
      for (let k = 0; k < mine.length && want > 0; k++) {
        const s = mine[k]!;
        const to = this.#nextChoice(s, canTake);
        if (to < 0) break;
        if (homes[s] === id) { this.#spilledAt[s] = this.#window; this.#spilledLoad[s] = unit; this.#spilled++; }
        else if (homes[s] === to) this.#spilled--;
        move(s, id, to, unit);
        want--;
      }
    }

    // Return: a slot away long enough goes home when its home is calm and stays under the mark.
    if (this.#spilled > 0) {
      for (let s = 0; s < slots; s++) {
        const home = homes[s]!;
        const host = route[s]!;
        if (host === home) continue;
        const st = this.#state.get(home)!;
        if (this.#window - this.#spilledAt[s]! < st.hold) continue;
        if (fill.get(home)! > thr / 2 || fillOver(home) || shareOver(home)) continue;
        // Home again only if that does not overload it: once nothing is overloaded, every slot
        // is back where the Active set alone puts it.
        const unit = Math.max(perSlot(host), this.#spilledLoad[s]!);
        if (total > 0 && load.get(home)! + unit > spillAbove) continue;
        move(s, host, home, unit);
        this.#spilled--;
        st.returnedAt = this.#window;
      }
    }

    for (const s of active) {
      const st = this.#state.get(s.id)!;
      st.over = overloadedSet.has(s.id);
      st.lastFill = fill.get(s.id)!;
      // A shard that stayed calm for a whole hold time earns a shorter one back.
      if (!fillOver(s.id) && !shareOver(s.id) && this.#window - st.returnedAt > st.hold) st.hold = Math.max(MIN_HOLD, st.hold >> 1);
    }
    return changed;
  }
}
