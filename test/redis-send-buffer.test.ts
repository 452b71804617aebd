// The Redis node's send buffer (src/redis/send-buffer.ts) on its own, without a server: per
// shard order through frames, dropOldest eviction (never of a frame sent once), failProducer
// and sample under the bounds, the events of a removed shard routed again (refused frame
// first), and the oldest accept index not yet stored, which flush() waits for. The node's
// sender is played here by hand: cut() a round, then report each frame stored or unsent.
import { describe, expect, it } from 'vitest';
import { BackpressureError, NO_SHARD, type BackpressureMode } from 'shard-mapper';
import { SendBuffer, type SendBufferHost } from '../dist/redis/send-buffer.js';
import { decodeFrame, type Frame } from '../dist/redis/frames.js';

const FAIL: BackpressureMode = { kind: 'failProducer' };
const DROP_OLDEST: BackpressureMode = { kind: 'dropOldest' };

/** A host whose route and table the test sets: `route` maps a hash to its shard (default:
 *  hash % shards), `held` plays the key-order fence's held events (none unless set). */
function fixture(limits: { events?: number; bytes?: number; maxFrameBytes?: number } = {}) {
  const state = { shards: [0, 1], route: undefined as ((hash: number) => number) | undefined, heldOldest: Infinity, queued: 0 };
  const host: SendBufferHost = {
    select: (hash) => state.route?.(hash) ?? (state.shards.length === 0 ? NO_SHARD : state.shards[hash % state.shards.length]!),
    inTable: (shard) => state.shards.includes(shard),
    keyOrder: {
      waiting: () => undefined,
      hold: () => { throw new Error('no slot waits in this fixture'); },
      holdEarlier: () => { throw new Error('no slot waits in this fixture'); },
      heldEvents: () => 0,
      heldBytes: () => 0,
      oldestIndex: () => state.heldOldest,
    },
    queued: () => { state.queued++; },
  };
  const buffer = new SendBuffer({ events: limits.events ?? 1000, bytes: limits.bytes ?? 1_000_000, maxFrameBytes: limits.maxFrameBytes ?? 64 }, host);
  /** Push `payload` with key hash `hash` to the shard the host routes it to. */
  const push = (hash: number, payload: string, mode: BackpressureMode = FAIL) =>
    buffer.accept(hash, host.select(hash), payload, Buffer.byteLength(payload), mode, 0.9, 0);
  return { buffer, host, state, push };
}

const text = (frame: Frame) => decodeFrame(frame.data).map((b) => b.toString());

/** Send everything as a sender with no failures would: rounds of cut(), each frame stored.
 *  Returns, per shard, the payloads in the order they were stored. */
function drain(buffer: SendBuffer): Map<number, string[]> {
  const out = new Map<number, string[]>();
  for (let rounds = 0; rounds < 10_000; rounds++) {
    const batch = buffer.cut();
    if (batch.length === 0) return out;
    const shards = batch.map((f) => f.shard);
    expect(new Set(shards).size, 'one frame per shard in flight').toBe(shards.length);
    expect(buffer.cut(), 'nothing more while every shard has a frame in flight').toEqual([]);
    for (const frame of batch) {
      out.set(frame.shard, [...(out.get(frame.shard) ?? []), ...text(frame)]);
      buffer.frameStored(frame);
    }
  }
  throw new Error('the buffer never emptied');
}

describe('SendBuffer: per-shard order through frames', () => {
  it('stores each shard\'s events in push order, one frame per shard in flight, and counts them', () => {
    const { buffer, push, state } = fixture({ maxFrameBytes: 64 }); // a few events a frame
    const pushed = new Map<number, string[]>([[0, []], [1, []]]);
    for (let i = 0; i < 200; i++) {
      const hash = (i * 7) % 5;
      const payload = `event-${i}`;
      expect(push(hash, payload)).toBe(true);
      pushed.get(hash % 2)!.push(payload);
    }
    expect(state.queued).toBe(200);
    expect(buffer.accepted).toBe(200);
    expect(buffer.buffered).toBe(200);
    const stored = drain(buffer);
    expect(stored.get(0)).toEqual(pushed.get(0));
    expect(stored.get(1)).toEqual(pushed.get(1));
    expect(buffer.buffered).toBe(0);
    expect(buffer.stored).toBe(200);
    expect(buffer.counts(0)).toEqual({ pushed: pushed.get(0)!.length, stored: pushed.get(0)!.length, dropped: 0 });
  });

  it('a frame that was not stored goes back first, unchanged (same sequence), and its shard alone waits out a backoff', () => {
    const { buffer, push } = fixture({ maxFrameBytes: 64 });
    for (let i = 0; i < 20; i++) push(i % 2, `e${i}`);
    const [first, other] = buffer.cut();
    expect(first!.shard).toBe(0);
    const seq = first!.seq;
    const events = text(first!);
    buffer.frameUnsent(first!);
    expect([buffer.hold(0), buffer.hold(0), buffer.hold(0)]).toEqual([20, 40, 80]);
    buffer.frameStored(other!);
    expect(buffer.cut().map((f) => f.shard), 'shard 0 is held, shard 1 goes on').toEqual([1]);
    expect(buffer.anyHeld()).toBe(true);
    buffer.unhold(0);
    const [again] = buffer.cut();
    expect(again!.shard).toBe(0);
    expect(again!.seq).toBe(seq);
    expect(text(again!)).toEqual(events);
    buffer.frameStored(again!);
    expect(buffer.hold(0), 'a stored frame resets the backoff').toBe(20);
  });
});

describe('SendBuffer: bounds and backpressure', () => {
  it('dropOldest evicts the oldest unsent events until the new one fits, and counts them', () => {
    const { buffer, push } = fixture({ events: 3 });
    for (let i = 1; i <= 5; i++) expect(push(0, `e${i}`, DROP_OLDEST)).toBe(true);
    expect(buffer.buffered).toBe(3);
    expect(buffer.drops()).toEqual({ newest: 0, oldest: 2, sampled: 0, refused: 0 });
    expect(buffer.counts(0)).toEqual({ pushed: 5, stored: 0, dropped: 2 });
    expect(drain(buffer).get(0)).toEqual(['e3', 'e4', 'e5']);
  });

  it('dropOldest never evicts from a frame sent once (Redis may hold it): it evicts the next ones, else drops the newest', () => {
    const { buffer, push } = fixture({ events: 3 });
    push(0, 'a1', DROP_OLDEST);
    push(0, 'a2', DROP_OLDEST);
    const [sent] = buffer.cut();
    buffer.frameUnsent(sent!); // attempted: kept whole
    push(0, 'b1', DROP_OLDEST);
    expect(push(0, 'b2', DROP_OLDEST)).toBe(true); // evicts b1, not a1
    expect(buffer.drops()).toMatchObject({ oldest: 1, newest: 0 });
    const [again] = buffer.cut();
    expect(text(again!)).toEqual(['a1', 'a2']);
    expect(buffer.cut()).toEqual([]); // in flight: nothing more of shard 0
    expect(push(0, 'b3', DROP_OLDEST)).toBe(true); // evicts b2
    buffer.frameStored(again!);
    expect(drain(buffer).get(0)).toEqual(['b3']);
    // Everything left unsent was attempted: nothing to evict, the newest is dropped.
    push(0, 'c1', DROP_OLDEST); push(0, 'c2', DROP_OLDEST); push(0, 'c3', DROP_OLDEST);
    const [full] = buffer.cut();
    buffer.frameUnsent(full!);
    expect(push(0, 'c4', DROP_OLDEST)).toBe(false);
    expect(buffer.drops()).toMatchObject({ oldest: 2, newest: 1 });
  });

  it('the byte bound counts payload bytes; failProducer refuses (not a drop) and sample keeps one in rate past the threshold', () => {
    const { buffer, push } = fixture({ bytes: 10 });
    expect(push(0, '12345')).toBe(true);
    expect(push(0, '12345')).toBe(true);
    let refused: unknown;
    try { push(0, 'x'); } catch (error) { refused = error; }
    expect(refused).toBeInstanceOf(BackpressureError);
    expect((refused as BackpressureError).shardId).toBe(0);
    expect((refused as Error).message).toBe("push refused: shard 0's send buffer is full (2 events, 10 of 10 payload bytes not yet stored in Redis; backpressure failProducer)");
    expect(buffer.drops()).toEqual({ newest: 0, oldest: 0, sampled: 0, refused: 1 });
    expect(buffer.accepted).toBe(2);

    const sampled = fixture({ events: 20 });
    const kept: boolean[] = [];
    for (let i = 0; i < 23; i++) kept.push(sampled.push(0, `s${i}`, { kind: 'sample', rate: 2 }));
    // Past 18 of 20 (fill threshold 0.9) one event in two is kept; at 20 the buffer is full,
    // and the newest is dropped.
    expect(kept).toEqual([...Array<boolean>(19).fill(true), false, true, false, false]);
    expect(sampled.buffer.drops()).toEqual({ newest: 2, oldest: 0, sampled: 1, refused: 0 });
  });
});

describe('SendBuffer: a removed shard\'s events are routed again', () => {
  it('moves every event of the removed shard\'s queue to the shards of the new table, the refused frame first, in order', () => {
    const { buffer, push, state } = fixture({ maxFrameBytes: 64 });
    for (let i = 0; i < 30; i++) push(0, `r${i}`); // all to shard 0 (hash 0)
    const [refused] = buffer.cut(); // in flight when the shard was removed
    state.shards = [1];
    state.route = () => 1;
    expect(buffer.idleShards()).toEqual([]); // in flight: the node's #refused decides, not a table change
    buffer.reroute(0, [refused!]);
    expect(buffer.has(0)).toBe(false);
    expect(buffer.counts(0), 'the removed shard\'s counts go with its queue').toBeUndefined();
    expect(buffer.rerouted).toBe(30);
    expect(buffer.buffered).toBe(30); // still accepted, still not stored
    const stored = drain(buffer);
    expect(stored.get(0)).toBeUndefined();
    expect(stored.get(1)).toEqual(Array.from({ length: 30 }, (_, i) => `r${i}`));
    expect(buffer.stored).toBe(30);
  });

  it('a shard removed while its last frame was in flight: once stored, its queue and counts go (nothing kept per removed shard)', () => {
    const { buffer, push, state } = fixture();
    push(0, 'a');
    push(0, 'b');
    const [frame] = buffer.cut();
    expect(buffer.counts(0)).toEqual({ pushed: 2, stored: 0, dropped: 0 });
    state.shards = [1];
    buffer.frameStored(frame!);
    expect(buffer.stored).toBe(2);
    expect(buffer.has(0)).toBe(false);
    expect(buffer.counts(0)).toBeUndefined();
  });

  it('with no Active shard the events wait, and flush()\'s index waits for them', () => {
    const { buffer, push, state } = fixture();
    push(0, 'o1');
    push(0, 'o2');
    state.shards = [];
    buffer.reroute(0, []);
    expect(buffer.buffered).toBe(2);
    expect(buffer.oldestUnstored()).toBe(1);
    expect(buffer.cut()).toEqual([]);
    state.shards = [5];
    buffer.placeOrphans();
    expect(drain(buffer).get(5)).toEqual(['o1', 'o2']);
    expect(buffer.oldestUnstored()).toBe(Infinity);
  });
});

describe('SendBuffer: the oldest accept index not yet stored', () => {
  it('follows open frames, closed frames, frames in flight and the fence\'s held events', () => {
    const { buffer, push, state } = fixture({ maxFrameBytes: 64 });
    expect(buffer.oldestUnstored()).toBe(Infinity);
    push(0, 'a'); push(1, 'b'); push(0, 'c'); // indexes 1, 2, 3
    expect(buffer.oldestUnstored()).toBe(1);
    const batch = buffer.cut(); // shard 0's frame [1, 3] and shard 1's [2] in flight
    expect(buffer.oldestUnstored()).toBe(1);
    push(0, 'd'); // index 4, open
    buffer.frameStored(batch.find((f) => f.shard === 0)!);
    expect(buffer.oldestUnstored()).toBe(2);
    buffer.frameStored(batch.find((f) => f.shard === 1)!);
    expect(buffer.oldestUnstored()).toBe(4);
    state.heldOldest = 3; // an event the key-order fence holds
    expect(buffer.oldestUnstored()).toBe(3);
    state.heldOldest = Infinity;
    drain(buffer);
    expect(buffer.oldestUnstored()).toBe(Infinity);
  });

  it('an open frame emptied by dropOldest leaves no index behind (else flush() would wait for ever)', () => {
    const { buffer, push } = fixture({ events: 1 });
    push(0, 'gone', DROP_OLDEST); // index 1, then evicted
    push(0, 'kept', DROP_OLDEST); // index 2
    expect(buffer.drops().oldest).toBe(1);
    expect(buffer.oldestUnstored()).toBe(2);
    expect(drain(buffer).get(0)).toEqual(['kept']);
    expect(buffer.oldestUnstored()).toBe(Infinity);
  });

  it('markFor closes the open frame and names the last frame made for the shard', () => {
    const { buffer, push } = fixture();
    expect(buffer.markFor(0)).toBeUndefined();
    push(0, 'm1');
    const mark = buffer.markFor(0);
    expect(mark).toBeGreaterThan(0);
    const [frame] = buffer.cut();
    expect(frame!.seq).toBe(mark);
  });
});
