// The send buffer of a Redis node: per shard, the events accepted and not yet stored, packed
// into frames (src/redis/frames.ts) that the node's sender appends with XADD, one frame per
// shard in flight. It bounds each shard by events and bytes and applies the backpressure mode,
// routes again the events of a shard that was removed before they were stored, and keeps the
// counters stats() reports. It does no I/O and starts no timer: the node sends what cut()
// hands out, reports each frame's fate back, and runs the backoff timers hold() asks for.
import { BackpressureError } from '../errors.js';
import { NO_SHARD } from '../mapper.js';
import type { BackpressureMode } from '../types.js';
import type { EventPayload } from '../producer.js';
import { FrameBuilder, decodeFrame, dropFirstOfFrame, type Frame } from './frames.js';
import type { HeldEvent, KeyOrder } from './key-order.js';

const FIRST_FRAME_BYTES = 4096;
const BACKOFF_MIN_MS = 20;
const BACKOFF_MAX_MS = 1000;

export interface ShardQueue {
  id: number;
  /** Closed frames, oldest first (not in flight). */
  frames: Frame[];
  open: FrameBuilder | undefined;
  inflight: Frame | undefined;
  /** Events here: frames, open and in flight. */
  events: number;
  /** Their payload bytes. */
  bytes: number;
  sampleTick: number;
  /** Set while this shard waits out a failed send (its own backoff: other shards go on). */
  held: boolean;
  /** The last hold's length (0: the last send succeeded). */
  holdMs: number;
  /** Its missing stream was reported (once until a frame is stored again). */
  missingReported: boolean;
  /** The sequence of the last frame made for this shard (0: none): a key-order mark. */
  lastSeq: number;
}

/** An event of a removed shard waiting to be routed again (no shard is Active yet). */
export type Orphan = HeldEvent;

/** What the buffer needs from its node: the route and table it follows, and the key-order
 *  fence, whose held events count against their shard's bounds and for flush(). */
export interface SendBufferHost {
  /** The shard a key hash routes to now (NO_SHARD: none is Active). */
  select(hash: number): number;
  /** Whether the table the node follows lists the shard. */
  inTable(shard: number): boolean;
  keyOrder: Pick<KeyOrder, 'waiting' | 'hold' | 'holdEarlier' | 'heldEvents' | 'heldBytes' | 'oldestIndex'>;
  /** An event entered a queue: there is something to send. */
  queued(): void;
}

export interface SendBufferLimits {
  /** Events per shard held before they are stored (ringBufferCapacity). */
  events: number;
  /** Payload bytes per shard held before they are stored (ringBufferBytes). */
  bytes: number;
  /** A frame is closed when it reaches this many bytes. */
  maxFrameBytes: number;
}

/** Per shard: events this node accepted for it, stored in it, dropped from it. */
export interface ShardCounts {
  pushed: number;
  stored: number;
  dropped: number;
}

export class SendBuffer {
  readonly #limits: SendBufferLimits;
  readonly #host: SendBufferHost;
  readonly #queues = new Map<number, ShardQueue>();
  #orphans: Orphan[] = [];
  #accepted = 0; // global accept index of the last accepted event
  #frameSeq = 0;
  #buffered = 0;
  #stored = 0;
  #rerouted = 0;
  readonly #drops = { newest: 0, oldest: 0, sampled: 0, refused: 0 };
  readonly #perShard = new Map<number, ShardCounts>();

  constructor(limits: SendBufferLimits, host: SendBufferHost) {
    this.#limits = limits;
    this.#host = host;
  }

  /** Events accepted so far; also the accept index of the last one (flush() waits up to it). */
  get accepted(): number {
    return this.#accepted;
  }
  /** Accepted events not yet stored: in queues, in flight, waiting to be routed again, or held by the key-order fence. */
  get buffered(): number {
    return this.#buffered;
  }
  /** Events stored in Redis (a retried frame counts once). */
  get stored(): number {
    return this.#stored;
  }
  /** Accepted events of removed shards routed again. */
  get rerouted(): number {
    return this.#rerouted;
  }
  /** Events discarded (newest, oldest, sampled) and pushes refused (failProducer), so far. */
  drops(): { newest: number; oldest: number; sampled: number; refused: number } {
    return { ...this.#drops };
  }

  counts(shard: number): ShardCounts | undefined {
    return this.#perShard.get(shard);
  }

  get(shard: number): ShardQueue | undefined {
    return this.#queues.get(shard);
  }

  has(shard: number): boolean {
    return this.#queues.has(shard);
  }

  /** The shard's queue, made empty if it has none. */
  queue(id: number): ShardQueue {
    let q = this.#queues.get(id);
    if (!q) {
      q = {
        id,
        frames: [],
        open: undefined,
        inflight: undefined,
        events: 0,
        bytes: 0,
        sampleTick: 0,
        held: false,
        holdMs: 0,
        missingReported: false,
        lastSeq: 0,
      };
      this.#queues.set(id, q);
    }
    return q;
  }

  /** Whether an event of `bytes` would meet backpressure in this shard's buffer. */
  full(q: ShardQueue, bytes: number): boolean {
    const keyOrder = this.#host.keyOrder;
    return q.events + keyOrder.heldEvents(q.id) >= this.#limits.events || q.bytes + keyOrder.heldBytes(q.id) + bytes > this.#limits.bytes;
  }

  /**
   * Take an event for `shard` under the backpressure mode: `true` accepted (queued, or held
   * by the key-order fence while its slot waits), `false` discarded (dropNewest, sample; a
   * full dropOldest buffer evicts its oldest unsent events first). Throws BackpressureError
   * under failProducer when the buffer is full (`acceptedBefore`: the batch's accepted ones).
   */
  accept(
    hash: number,
    shard: number,
    payload: EventPayload,
    bytes: number,
    mode: BackpressureMode,
    fillRatioThreshold: number,
    acceptedBefore: number,
  ): boolean {
    const q = this.queue(shard);
    const cap = this.#limits.events;
    const capBytes = this.#limits.bytes;
    const full = () => this.full(q, bytes);
    if (mode.kind === 'sample' && !full() && Math.max(q.events / cap, q.bytes / capBytes) > fillRatioThreshold) {
      if (++q.sampleTick % mode.rate !== 0) {
        this.#drops.sampled++;
        this.#count(shard).dropped++;
        return false;
      }
    }
    if (full()) {
      if (mode.kind === 'failProducer') {
        this.#drops.refused++; // not a drop: the caller keeps the event
        throw new BackpressureError(
          `push refused: shard ${shard}'s send buffer is full (${q.events} events, ${q.bytes} of ${capBytes} payload bytes not yet stored in Redis; backpressure failProducer)`,
          shard,
          acceptedBefore,
        );
      }
      if (mode.kind === 'dropOldest') while (full() && this.#evictOldest(q));
      if (full()) {
        this.#drops.newest++;
        this.#count(shard).dropped++;
        return false;
      }
    }
    const keyOrder = this.#host.keyOrder;
    const slot = keyOrder.waiting(hash);
    if (slot === undefined) this.#append(q, hash, ++this.#accepted, payload, bytes);
    else {
      // Its slot waits for the shard it moved from: accepted, held by the fence (it counts
      // against this shard's bounds), queued after the slot's earlier events were acknowledged.
      const copy = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : Buffer.from(payload);
      keyOrder.hold(slot, { hash, index: ++this.#accepted, bytes: copy });
      this.#buffered++;
    }
    this.#count(shard).pushed++;
    return true;
  }

  /** Queue events the key-order fence held (already accepted and counted), oldest first. */
  release(shard: number, events: HeldEvent[]): void {
    const q = this.queue(shard);
    for (const e of events) {
      this.#buffered--; // #append counts it again
      this.#append(q, e.hash, e.index, e.bytes, e.bytes.length);
    }
  }

  /** A removed shard's queue and counts go (ids are never reused: kept, they would add up
   *  over a long life of scale-ups and removals). */
  #forget(shard: number): void {
    this.#queues.delete(shard);
    this.#perShard.delete(shard);
  }

  #count(shard: number): ShardCounts {
    let c = this.#perShard.get(shard);
    if (!c) this.#perShard.set(shard, (c = { pushed: 0, stored: 0, dropped: 0 }));
    return c;
  }

  #append(q: ShardQueue, hash: number, index: number, payload: EventPayload | Buffer, bytes: number): void {
    let open = q.open;
    if (open && open.count > 0 && open.bytes + 4 + bytes > this.#limits.maxFrameBytes) {
      this.#closeOpen(q);
      open = undefined;
    }
    // Under load (frames already waiting) the next frame will fill up: allocate it whole.
    const size = q.frames.length > 0 ? this.#limits.maxFrameBytes : FIRST_FRAME_BYTES;
    if (!open) q.open = open = new FrameBuilder(Math.max(size, 4 + bytes));
    open.add(hash, index, payload, bytes);
    q.events++;
    q.bytes += bytes;
    this.#buffered++;
    this.#host.queued();
  }

  /** Close a shard's open frame under the next frame sequence. */
  #closeOpen(q: ShardQueue): void {
    q.frames.push(q.open!.close(q.id, (q.lastSeq = ++this.#frameSeq)));
    q.open = undefined;
  }

  /** The key-order mark of a shard: its open frame is closed (so the mark is a frame that
   *  will be sent) and the sequence of the last frame made for it returned (undefined: none). */
  markFor(shard: number): number | undefined {
    const q = this.#queues.get(shard);
    if (!q) return undefined;
    if (q.open && q.open.count > 0) this.#closeOpen(q);
    return q.lastSeq === 0 ? undefined : q.lastSeq;
  }

  /** dropOldest: the oldest event never sent (a frame sent once, even if it failed, may be
   *  stored already and keeps its events). */
  #evictOldest(q: ShardQueue): boolean {
    const at = q.frames.findIndex((f) => !f.attempted);
    const first = at < 0 ? undefined : q.frames[at]!;
    if (first) {
      q.bytes -= first.data.readUInt32LE(0);
      dropFirstOfFrame(first);
      if (first.hashes.length === 0) q.frames.splice(at, 1);
    } else if (q.open && q.open.count > 0) {
      q.bytes -= q.open.buf.readUInt32LE(0);
      q.open.dropFirst();
      // An empty builder would keep its oldest accept index, and flush() would wait for it
      // for ever (an empty frame is never sent).
      if (q.open.count === 0) q.open = undefined;
    } else return false;
    q.events--;
    this.#buffered--;
    this.#drops.oldest++;
    this.#count(q.id).dropped++;
    return true;
  }

  // ---- what the sender takes and reports ------------------------------------------------

  /** The next round: the oldest frame of every shard with none in flight and no hold (an
   *  open frame is closed when nothing else waits), each marked in flight and attempted. */
  cut(): Frame[] {
    const batch: Frame[] = [];
    for (const q of this.#queues.values()) {
      if (q.inflight || q.held) continue;
      if (q.frames.length === 0 && q.open && q.open.count > 0) this.#closeOpen(q);
      const frame = q.frames.shift();
      if (frame) {
        q.inflight = frame;
        frame.attempted = true;
        batch.push(frame);
      }
    }
    return batch;
  }

  /** A frame in flight was stored: its events leave the buffer. Returns how many. */
  frameStored(frame: Frame): number {
    const q = this.#queues.get(frame.shard)!;
    q.inflight = undefined;
    const n = frame.hashes.length;
    q.events -= n;
    q.bytes -= frame.data.length - 4 * n; // each event is a 4-byte length and its payload
    q.holdMs = 0;
    q.missingReported = false;
    this.#buffered -= n;
    this.#stored += n;
    this.#count(frame.shard).stored += n;
    if (q.events === 0 && !q.open && q.frames.length === 0 && !this.#host.inTable(q.id)) this.#forget(q.id);
    return n;
  }

  /** A frame in flight was not stored: it goes back first in its queue, unchanged (per-shard
   *  order holds, and a retry carries the same dedup ids). */
  frameUnsent(frame: Frame): void {
    const q = this.#queues.get(frame.shard)!;
    q.inflight = undefined;
    q.frames.unshift(frame);
  }

  /** Hold a shard whose send failed; returns how long it waits (20 ms, doubling to 1 s,
   *  while its sends keep failing) before unhold(). */
  hold(shard: number): number {
    const q = this.#queues.get(shard)!;
    q.holdMs = q.holdMs === 0 ? BACKOFF_MIN_MS : Math.min(BACKOFF_MAX_MS, 2 * q.holdMs);
    q.held = true;
    return q.holdMs;
  }

  unhold(shard: number): void {
    const q = this.#queues.get(shard);
    if (q) q.held = false;
  }

  anyHeld(): boolean {
    for (const q of this.#queues.values()) if (q.held) return true;
    return false;
  }

  /** Whether some shard has a frame the sender could send now. */
  sendable(): boolean {
    for (const q of this.#queues.values()) {
      if (!q.inflight && !q.held && (q.frames.length > 0 || (q.open !== undefined && q.open.count > 0))) return true;
    }
    return false;
  }

  /** The first time a shard's stream is reported missing (until a frame is stored again). */
  firstMissing(shard: number): boolean {
    const q = this.#queues.get(shard)!;
    if (q.missingReported) return false;
    q.missingReported = true;
    return true;
  }

  /** Shards whose queue has no frame in flight (the ones a table change may reroute now). */
  idleShards(): number[] {
    return [...this.#queues.values()].filter((q) => !q.inflight).map((q) => q.id);
  }

  /** Whether the shard's next frame was sent and never answered (Redis may hold it). */
  headUnanswered(shard: number): boolean {
    return this.#queues.get(shard)?.frames[0]?.unanswered === true;
  }

  /** Take every event of a removed shard's queue (`refused` frames first, in order) and route
   *  it again; the queue is gone afterwards. */
  reroute(shard: number, refused: Frame[]): void {
    const q = this.#queues.get(shard)!;
    const frames = [...refused, ...q.frames];
    if (q.open && q.open.count > 0) frames.push(q.open.close(q.id, 0));
    this.#forget(q.id);
    for (const frame of frames) {
      const events = decodeFrame(frame.data);
      // Still counted in #buffered: as orphans now, then by their new queue.
      // Each keeps the frame's oldest accept index: flush() waits for them as for the oldest.
      for (let k = 0; k < events.length; k++) {
        this.#orphans.push({ hash: frame.hashes[k]!, index: frame.minIndex, bytes: Buffer.from(events[k]!) });
      }
      this.#rerouted += events.length;
    }
    this.placeOrphans();
  }

  /** Route events waiting for a shard again (already accepted: the bounds do not refuse them). */
  placeOrphans(): void {
    if (this.#orphans.length === 0) return;
    const waiting = this.#orphans;
    this.#orphans = [];
    const keyOrder = this.#host.keyOrder;
    for (const o of waiting) {
      const shard = this.#host.select(o.hash);
      if (shard === NO_SHARD) {
        this.#orphans.push(o);
        continue;
      }
      const slot = keyOrder.waiting(o.hash);
      if (slot !== undefined) {
        keyOrder.holdEarlier(slot, o);
        continue;
      } // still counted in #buffered
      this.#buffered--; // #append counts it again
      this.#append(this.queue(shard), o.hash, o.index, o.bytes, o.bytes.length);
    }
  }

  /** The oldest accept index not yet stored (Infinity when everything is). */
  oldestUnstored(): number {
    let min = Infinity;
    for (const q of this.#queues.values()) {
      if (q.inflight && q.inflight.minIndex < min) min = q.inflight.minIndex;
      for (const f of q.frames) if (f.minIndex < min) min = f.minIndex;
      if (q.open && q.open.minIndex < min) min = q.open.minIndex;
    }
    for (const o of this.#orphans) if (o.index < min) min = o.index;
    return Math.min(min, this.#host.keyOrder.oldestIndex());
  }
}
