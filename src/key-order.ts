// Key order across moves (routing 'affinity'): when a table slot moves from shard A to
// shard B, its events pushed after the move wait until A's consumer acknowledged every event
// pushed to A before it. The waiting itself happens in the push path (assembly/fence.ts):
// a fenced slot's pushes compare A's head with the mark A's tail had at the move. This
// keeper, on the mapper's thread, decides which slots are fenced and with what, takes the
// marks once the table naming them is live, and lifts fences whose every mark was passed so
// those slots go back to the one-read path. Slots that did not move are never touched.
import type { SharedCore } from './core.js';
import { FENCE_SOURCES, FENCE_HELD } from './layout.generated.js';

/** Why a slot moved: the set of Active shards changed, or a slot spilled or came back under the load bound. */
export type MoveCause = 'membership' | 'balance';

/** A live shard as the keeper needs it. */
export interface FenceShard {
  id: number;
  slot: number;
}

interface Source {
  id: number;
  slot: number;
  mark: number;
}
interface Fence {
  toId: number;
  toSlot: number;
  /** Rings to wait for; a new source's mark is set by arm() (NaN until then). */
  sources: Source[];
  /** clock() when the slot first began to wait (kept across moves while it waits). */
  since: number;
}

/** A group of slots that began to wait, by (from, to) (for ManagerEvent 'keysMoving'). */
export interface MovingGroup {
  fromShard: number;
  toShard: number;
  slots: number;
  cause: MoveCause;
}
/** Slots whose wait ended, by destination (for ManagerEvent 'keysMoved'). */
export interface MovedGroup {
  toShard: number;
  slots: number;
  waitedMs: number;
}

/** What both runtimes say about key order across moves (ShardManager, and the Redis node,
 *  whose stats add what it holds). */
export interface KeyOrderWaits {
  /** Key order is kept across moves (routing 'affinity' without keyOrder: false). */
  enabled: boolean;
  /** Table slots (1/slots of the hash space each) whose new events wait for an old shard's consumer now. */
  waitingSlots: number;
  /** How long the slot waiting longest now has waited (ms; 0 when none waits). */
  oldestWaitMs: number;
  /** The longest wait that ended so far, as measured when the manager noticed it end (ms; waits under way: oldestWaitMs). */
  longestWaitMs: number;
  /** Slot moves made with a fence (in memory) or that had to wait (Redis) since creation. */
  movedSlots: number;
}

export interface KeyOrderStats extends KeyOrderWaits {
  /** Pushes refused (failProducer) or dropped (other modes) because their key was waiting. */
  refused: number;
}

export class KeyOrderFences {
  readonly #core: SharedCore;
  readonly #clock: () => number;
  /** slot → its fence, for every slot published fenced in the live table. */
  readonly #fences = new Map<number, Fence>();
  /** Slots whose fence was (re)written in this rebuild: arm() takes their marks. */
  #fresh: number[] = [];
  #groups = new Map<string, MovingGroup>();
  /** The shard each slot routed to last (undefined before the first table). */
  #owner: Uint16Array | undefined;
  #hadOwner = false;
  #moved = 0;
  #longest = 0;
  /** Waits that ended because their slot moved again (a new fence took theirs' place, or
   *  nothing was left to wait for), by destination: reported by the next lifted(). */
  #endedByMove = new Map<number, MovedGroup>();

  constructor(core: SharedCore, clock: () => number) {
    this.#core = core;
    this.#clock = clock;
  }

  /** Is slot s published fenced? */
  isFenced(s: number): boolean {
    return this.#fences.has(s);
  }

  /** Has every source of this fence passed its mark? (A source not armed yet has not.) */
  #passed(f: Fence): boolean {
    const abi = this.#core.abi;
    for (const src of f.sources) {
      if (Number.isNaN(src.mark) || ((abi.ringHeadCount(src.slot) - src.mark) | 0) < 0) return false;
    }
    return true;
  }

  /**
   * A new table is about to be published: `ids[s]` is the shard of every slot; `changed`
   * lists the slots that may have moved (null: any). `shard(id)` finds a live shard (one
   * that still has a ring). Fences the slots that moved; returns them (the table must name
   * them fenced). Their fences read as "wait" until arm().
   */
  plan(ids: Uint16Array, changed: readonly number[] | null, cause: MoveCause, shard: (id: number) => FenceShard | undefined): number[] {
    const owner = this.#owner;
    const out: number[] = [];
    if (owner === undefined || owner.length !== ids.length) {
      this.#owner = new Uint16Array(ids);
      this.#hadOwner = true;
      return out;
    }
    const check = (s: number) => {
      const from = owner[s]!;
      const to = ids[s]!;
      if (from === to) return;
      owner[s] = to;
      if (this.#fence(s, from, to, cause, shard)) out.push(s);
    };
    if (changed === null) for (let s = 0; s < ids.length; s++) check(s);
    else for (const s of changed) check(s);
    return out;
  }

  #fence(s: number, fromId: number, toId: number, cause: MoveCause, shard: (id: number) => FenceShard | undefined): boolean {
    const to = shard(toId)!;
    const before = this.#fences.get(s);
    // Earlier moves this slot still waits for stay (their rings may still hold its events),
    // except the ring it now moves to: those events are ahead of it in that ring anyway.
    const sources = (before && !this.#passed(before) ? before.sources : []).filter(
      (src) => src.slot !== to.slot && (Number.isNaN(src.mark) || ((this.#core.abi.ringHeadCount(src.slot) - src.mark) | 0) < 0),
    );
    // Its wait for `before.toId` ends here (it goes on, if at all, as a wait for `toId`): each
    // keysMoving gets its keysMoved.
    if (before) this.#addEnded(this.#endedByMove, before.toId, this.#clock() - before.since);
    const from = shard(fromId);
    if (from && from.slot !== to.slot && !sources.some((src) => src.slot === from.slot))
      sources.push({ id: from.id, slot: from.slot, mark: NaN });
    if (sources.length === 0) {
      // Nothing can be ahead of it anywhere (its old shard is gone, emptied): no wait.
      if (before) this.#fences.delete(s);
      return false;
    }
    const abi = this.#core.abi;
    abi.fenceBegin(s); // readers wait from here until arm() publishes it
    this.#fences.set(s, { toId, toSlot: to.slot, sources, since: before && this.#fencedSince(before) ? before.since : this.#clock() });
    this.#fresh.push(s);
    this.#moved++;
    if (from) {
      const key = `${from.id}>${toId}`;
      const g = this.#groups.get(key);
      if (g) g.slots++;
      else this.#groups.set(key, { fromShard: from.id, toShard: toId, slots: 1, cause });
    }
    return true;
  }

  #fencedSince(f: Fence): boolean {
    return !this.#passed(f);
  }

  /**
   * The table naming the new fences is live: take each new source's mark (its tail now, so
   * every push that reserved there before the publish is behind it) and open the fences.
   * Returns the groups of slots that began to wait.
   */
  arm(): MovingGroup[] {
    const abi = this.#core.abi;
    for (const s of this.#fresh) {
      const f = this.#fences.get(s);
      if (!f) continue;
      for (const src of f.sources) if (Number.isNaN(src.mark)) src.mark = abi.ringTailCount(src.slot);
      if (f.sources.length > FENCE_SOURCES) {
        abi.fenceSet(s, f.toSlot, FENCE_HELD); // more rings than a fence holds: wait until some pass (lift())
      } else {
        f.sources.forEach((src, k) => abi.fenceSource(s, k, src.slot, src.mark));
        abi.fenceSet(s, f.toSlot, f.sources.length);
      }
      abi.fenceEnd(s);
    }
    this.#fresh = [];
    const groups = [...this.#groups.values()];
    this.#groups.clear();
    return groups;
  }

  /**
   * Fences whose every source passed: the mapper publishes these slots unfenced, then calls
   * lifted(). Also shrinks held fences (more sources than FENCE_SOURCES) as sources pass.
   */
  passedSlots(): number[] {
    const out: number[] = [];
    const abi = this.#core.abi;
    for (const [s, f] of this.#fences) {
      if (this.#passed(f)) {
        out.push(s);
        continue;
      }
      if (f.sources.length > FENCE_SOURCES) {
        const left = f.sources.filter((src) => ((abi.ringHeadCount(src.slot) - src.mark) | 0) < 0);
        if (left.length <= FENCE_SOURCES) {
          abi.fenceBegin(s);
          f.sources = left;
          left.forEach((src, k) => abi.fenceSource(s, k, src.slot, src.mark));
          abi.fenceSet(s, f.toSlot, left.length);
          abi.fenceEnd(s);
        }
      }
    }
    return out;
  }

  /** These slots are published unfenced now. Returns the waits that ended, by destination
   *  (with those that ended when their slot moved again since the last call). */
  lifted(slots: readonly number[]): MovedGroup[] {
    const now = this.#clock();
    const byTo = this.#endedByMove;
    this.#endedByMove = new Map();
    for (const s of slots) {
      const f = this.#fences.get(s);
      if (!f) continue;
      this.#fences.delete(s);
      this.#addEnded(byTo, f.toId, now - f.since);
    }
    return [...byTo.values()];
  }

  #addEnded(byTo: Map<number, MovedGroup>, toId: number, waited: number): void {
    if (waited > this.#longest) this.#longest = waited;
    const g = byTo.get(toId);
    if (g) {
      g.slots++;
      g.waitedMs = Math.max(g.waitedMs, waited);
    } else byTo.set(toId, { toShard: toId, slots: 1, waitedMs: waited });
  }

  /** Per live shard: slots waiting for its consumer (out) and slots moved to it that wait (in). */
  perShard(): Map<number, { out: number; in: number }> {
    const m = new Map<number, { out: number; in: number }>();
    const get = (id: number) => {
      let v = m.get(id);
      if (!v) m.set(id, (v = { out: 0, in: 0 }));
      return v;
    };
    const abi = this.#core.abi;
    for (const f of this.#fences.values()) {
      let waiting = false;
      for (const src of f.sources) {
        if (Number.isNaN(src.mark) || ((abi.ringHeadCount(src.slot) - src.mark) | 0) < 0) {
          get(src.id).out++;
          waiting = true;
        }
      }
      if (waiting) get(f.toId).in++;
    }
    return m;
  }

  stats(enabled = true): KeyOrderStats {
    const now = this.#clock();
    let waiting = 0;
    let oldest = 0;
    for (const f of this.#fences.values()) {
      if (this.#passed(f)) continue;
      waiting++;
      oldest = Math.max(oldest, now - f.since);
    }
    return {
      enabled,
      waitingSlots: waiting,
      oldestWaitMs: oldest,
      longestWaitMs: this.#longest,
      movedSlots: this.#moved,
      refused: this.#core.abi.movingTotal(),
    };
  }

  get hadTable(): boolean {
    return this.#hadOwner;
  }

  /** Would a push of `hash` wait for a fence now? (The slot as the last planned table cuts
   *  the hash space, as pick() in assembly/select.ts; a stream writer asks this instead of
   *  pushing again, see streams.ts.) */
  waits(hash: number): boolean {
    const n = this.#owner?.length ?? 0;
    if (n === 0) return false;
    const f = this.#fences.get(Math.floor(((hash >>> 0) * n) / 2 ** 32));
    return f !== undefined && !this.#passed(f);
  }

  /** Slots published fenced now (waiting, or passed and not lifted yet). */
  get fencedCount(): number {
    return this.#fences.size;
  }
}
