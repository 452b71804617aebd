// Key order across moves for a Redis node (routing 'affinity', keyOrder): when a table this
// node adopts moves a slot from shard A to shard B, the slot's new events are held in the node
// until A's consumers acknowledged every frame this node made for A up to the move (the
// per-(shard, node) position the consumers commit with each XACK, src/redis/progress.ts).
// Slots that did not move are never held. See docs/CONTRACT.md (Redis mode, key order).
import { PROGRESS } from './progress.js';
import type { KeyOrderWaits } from '../key-order.js';

/** An accepted event held back (or routed again) in the node: its key hash, accept index, bytes. */
export interface HeldEvent {
  hash: number;
  index: number;
  bytes: Buffer;
}

/** What the key-order fence needs from its node. */
export interface KeyOrderHost {
  /** Close the shard's open frame (so the mark is a frame that will be sent) and return the
   *  sequence of the last frame this node made for it; undefined when it made none. (dropOldest
   *  may empty the mark's frame, so it is never sent; but only a newer push to that shard
   *  evicts, and its later frame, sent after, carries the position past the mark.) */
  markFor(shard: number): number | undefined;
  /** Whether the node still has a send queue for the shard (frames unsent or in flight). */
  hasQueue(shard: number): boolean;
  inTable(shard: number): boolean;
  /** Per shard, the frame sequence of this node's newest frame acknowledged there (-1: none). */
  ackedFrames(shards: number[]): Promise<number[]>;
  /** Put a waiting slot's held events, oldest first, into the shard's send queue. */
  release(shard: number, events: HeldEvent[]): void;
  /** A failed read of the acknowledged positions (retried). */
  error(error: unknown): void;
  now(): number;
}

interface SlotWait {
  /** Old shards to wait for: shard → the mark (frame sequence) to see acknowledged. */
  fences: Map<number, number>;
  /** The shard the slot routes to now (where its held events go). */
  target: number;
  since: number;
  held: HeldEvent[];
  heldBytes: number;
}

/** The node's key-order stats: what ShardManager says too, and what the node holds. */
export interface RedisKeyOrderStats extends KeyOrderWaits {
  /** Events held now (accepted, counted in `buffered`). */
  held: number;
  /** Shards whose acknowledgements some waiting slot waits for now. */
  waitingOn: number[];
}

const POLL_MS = 5;
const POLL_RETRY_MS = 100;

export class KeyOrder {
  readonly enabled: boolean;
  readonly #host: KeyOrderHost;
  /** The last non-empty route adopted (affinity: a slot table of fixed length). */
  #route: readonly number[];
  readonly #waits = new Map<number, SlotWait>();
  /** Per target shard: events and payload bytes held for it. */
  readonly #heldBy = new Map<number, { events: number; bytes: number }>();
  /** Per shard, the newest acknowledged frame of this node seen (marks at or below need no wait). */
  readonly #acked = new Map<number, number>();
  #heldTotal = 0;
  #movedSlots = 0;
  #longestWaitMs = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #polling = false;
  #closed = false;

  constructor(enabled: boolean, route: readonly number[], host: KeyOrderHost) {
    this.enabled = enabled;
    this.#route = route;
    this.#host = host;
  }

  /** The waiting slot of a key hash, if its slot waits (one Map size check otherwise). */
  waiting(hash: number): number | undefined {
    if (this.#waits.size === 0) return undefined;
    const slot = this.#slotOf(hash);
    return this.#waits.has(slot) ? slot : undefined;
  }

  /** Hold a newly accepted event of a waiting slot (after every event held before it). */
  hold(slot: number, event: HeldEvent): void {
    const w = this.#waits.get(slot)!;
    w.held.push(event);
    this.#count(w, event, 1);
  }

  /** Hold an event routed again from a removed shard's queue: it was accepted before any
   *  event held for its slot (those came after the slot moved off that shard), so it goes
   *  before them, after events routed again before it (indexes never fall between them). */
  holdEarlier(slot: number, event: HeldEvent): void {
    const w = this.#waits.get(slot)!;
    let at = w.held.findIndex((e) => e.index > event.index);
    if (at < 0) at = w.held.length;
    w.held.splice(at, 0, event);
    this.#count(w, event, 1);
  }

  heldEvents(shard: number): number {
    return this.#heldTotal === 0 ? 0 : (this.#heldBy.get(shard)?.events ?? 0);
  }

  heldBytes(shard: number): number {
    return this.#heldTotal === 0 ? 0 : (this.#heldBy.get(shard)?.bytes ?? 0);
  }

  /** The oldest accept index held (Infinity when none): flush() waits for it. */
  oldestIndex(): number {
    let min = Infinity;
    for (const w of this.#waits.values()) if (w.held.length > 0 && w.held[0]!.index < min) min = w.held[0]!.index;
    return min;
  }

  /**
   * A new table's route, compared slot by slot with the last one. A slot that moved from A
   * waits for A's mark unless this node made nothing for A or A already acknowledged the
   * mark. A slot already waiting moves its held events to its new shard; it needs no fence on
   * the shard it leaves (none of its events went there while it waited) and none on the
   * shard it goes back to (its old events there come first in that stream anyway).
   */
  adopt(route: readonly number[]): void {
    if (!this.enabled || route.length === 0) return;
    const old = this.#route;
    this.#route = route;
    if (old.length !== route.length) return;
    const marks = new Map<number, number | undefined>();
    const now = this.#host.now();
    for (let slot = 0; slot < route.length; slot++) {
      const from = old[slot]!;
      const to = route[slot]!;
      if (from === to) continue;
      const w = this.#waits.get(slot);
      if (w) {
        this.#retarget(w, to);
        w.fences.delete(to);
        if (w.fences.size === 0) this.#release(slot, w);
        continue;
      }
      if (!marks.has(from)) marks.set(from, this.#host.markFor(from));
      const mark = marks.get(from);
      if (mark === undefined || mark <= (this.#acked.get(from) ?? -1)) continue;
      this.#waits.set(slot, { fences: new Map([[from, mark]]), target: to, since: now, held: [], heldBytes: 0 });
      this.#movedSlots++;
    }
    this.#schedule();
  }

  /** Redis lost data (the table's next generation): the positions waited on may be gone with
   *  it and would never pass their marks, so every wait ends now and its held events go on.
   *  Order across such a loss is not kept (the README's "key order" row says so). */
  releaseAll(): void {
    for (const [slot, w] of [...this.#waits]) this.#release(slot, w);
    this.#acked.clear();
  }

  stats(): RedisKeyOrderStats {
    const now = this.#host.now();
    let oldest = 0;
    const on = new Set<number>();
    for (const w of this.#waits.values()) {
      oldest = Math.max(oldest, now - w.since);
      for (const s of w.fences.keys()) on.add(s);
    }
    return {
      enabled: this.enabled,
      waitingSlots: this.#waits.size,
      oldestWaitMs: oldest,
      longestWaitMs: this.#longestWaitMs,
      movedSlots: this.#movedSlots,
      held: this.#heldTotal,
      waitingOn: [...on].sort((a, b) => a - b),
    };
  }

  close(): void {
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #slotOf(hash: number): number {
    return Math.floor(((hash >>> 0) * this.#route.length) / 0x1_0000_0000);
  }

  #count(w: SlotWait, event: HeldEvent, sign: 1 | -1): void {
    const n = event.bytes.length * sign;
    w.heldBytes += n;
    let c = this.#heldBy.get(w.target);
    if (!c) this.#heldBy.set(w.target, (c = { events: 0, bytes: 0 }));
    c.events += sign;
    c.bytes += n;
    this.#heldTotal += sign;
    if (c.events === 0) this.#heldBy.delete(w.target);
  }

  #retarget(w: SlotWait, to: number): void {
    if (w.held.length > 0) {
      const c = this.#heldBy.get(w.target)!;
      c.events -= w.held.length;
      c.bytes -= w.heldBytes;
      if (c.events === 0) this.#heldBy.delete(w.target);
      let d = this.#heldBy.get(to);
      if (!d) this.#heldBy.set(to, (d = { events: 0, bytes: 0 }));
      d.events += w.held.length;
      d.bytes += w.heldBytes;
    }
    w.target = to;
  }

  #release(slot: number, w: SlotWait): void {
    this.#waits.delete(slot);
    this.#longestWaitMs = Math.max(this.#longestWaitMs, this.#host.now() - w.since);
    if (w.held.length === 0) return;
    const c = this.#heldBy.get(w.target)!;
    c.events -= w.held.length;
    c.bytes -= w.heldBytes;
    if (c.events === 0) this.#heldBy.delete(w.target);
    this.#heldTotal -= w.held.length;
    this.#host.release(w.target, w.held);
  }

  #schedule(delay = POLL_MS): void {
    if (this.#closed || this.#timer !== undefined || this.#polling || this.#waits.size === 0) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.#poll();
    }, delay);
    // Held events keep the process alive (flush() waits for them); bare fences do not.
    if (this.#heldTotal === 0) (this.#timer as { unref?: () => void }).unref?.();
  }

  /** Read the acknowledged positions of the shards waited on and lift the fences they pass. */
  async #poll(): Promise<void> {
    this.#polling = true;
    let delay = POLL_MS;
    try {
      const shards = new Set<number>();
      for (const w of this.#waits.values()) for (const s of w.fences.keys()) shards.add(s);
      const done = new Set<number>();
      const ask: number[] = [];
      for (const s of shards) {
        // Removed (its progress hash goes with it; removal waits for its stream to be
        // acknowledged) and nothing of ours still on the way to it.
        if (!this.#host.inTable(s) && !this.#host.hasQueue(s)) done.add(s);
        else ask.push(s);
      }
      if (ask.length > 0) {
        try {
          const acked = await this.#host.ackedFrames(ask);
          ask.forEach((s, i) => this.#acked.set(s, Math.max(this.#acked.get(s) ?? -1, acked[i]!)));
        } catch (error) {
          this.#host.error(error);
          delay = POLL_RETRY_MS;
        }
      }
      for (const s of [...this.#acked.keys()]) if (!this.#host.inTable(s) && !this.#host.hasQueue(s)) this.#acked.delete(s);
      for (const [slot, w] of [...this.#waits]) {
        for (const [s, mark] of [...w.fences]) {
          if (done.has(s) || (this.#acked.get(s) ?? -1) >= mark) w.fences.delete(s);
        }
        if (w.fences.size === 0) this.#release(slot, w);
      }
    } finally {
      this.#polling = false;
      this.#schedule(delay);
    }
  }
}

/** The field of a node's mark in a shard's progress hash. */
export function markField(nodeId: string): string {
  return `${PROGRESS.markPrefix}${nodeId}`;
}
