// What a push of a key whose slot is waiting gets, in every backpressure mode (docs/routing.md, Key
// order across moves): failProducer throws BackpressureError (reason 'moving'); dropNewest,
// dropOldest and sample return false, count it in drops.moving and evict nothing. Once the
// old shard's consumer took its backlog, the same push is accepted, and the key's events come
// out in push order. One thread, poll consumers.
import { describe, expect, it } from 'vitest';
import { BackpressureError, ShardManager, type BackpressureMode } from 'shard-mapper';

const MODES: [string, BackpressureMode][] = [
  ['failProducer', { kind: 'failProducer' }],
  ['dropNewest', { kind: 'dropNewest' }],
  ['dropOldest', { kind: 'dropOldest' }],
  ['sample', { kind: 'sample', rate: 2 }],
];
const hashes = Array.from({ length: 64 }, (_, i) => Math.imul(i + 1, 0x9e3779b1) >>> 0);
const text = (records: Uint8Array[]) => records.map((r) => new TextDecoder().decode(r));

describe.each(MODES)('a push of a moving key under %s', (name, backpressure) => {
  it('is not accepted while the old shard holds its backlog, counts as drops.moving, evicts nothing; accepted once the backlog is consumed, in order', async () => {
    const m = await ShardManager.create({
      routing: 'affinity', initialShards: 1, ringBufferCapacity: 256, backpressure,
      policy: { minShards: 1, maxShards: 2, autoScale: false, fillRatioThreshold: 0.9 },
    });
    for (const [i, h] of hashes.entries()) expect(m.push(h, `a${i}`)).toBe(true);
    const added = await m.addShard();
    const movedAt = hashes.map((h, i) => [h, i] as const).filter(([h]) => m.mapper.selectShard(h) === added);
    const stayedAt = hashes.map((h, i) => [h, i] as const).filter(([h]) => m.mapper.selectShard(h) !== added);
    expect(movedAt.length).toBeGreaterThan(0);
    expect(stayedAt.length).toBeGreaterThan(0);
    const [h, i] = movedAt[0]!;
    const before = m.stats();
    if (name === 'failProducer') {
      let error: unknown;
      try { m.push(h, `b${i}`); } catch (e) { error = e; }
      expect(error).toBeInstanceOf(BackpressureError);
      expect((error as BackpressureError).reason).toBe('moving');
      expect((error as BackpressureError).shardId).toBe(added);
      expect((error as Error).message).toMatch(new RegExp(`moved to shard ${added}.*waits`));
    } else {
      expect(m.push(h, `b${i}`)).toBe(false);
    }
    const after = m.stats();
    expect(after.drops.moving).toBe(before.drops.moving! + 1);
    expect(after.dropped).toBe(before.dropped + (name === 'failProducer' ? 0 : 1)); // a refusal is not a drop
    expect(after.drops.oldest).toBe(0); // nothing evicted for it
    expect(after.pushed).toBe(hashes.length);
    expect(after.keyOrder!.waitingSlots).toBeGreaterThan(0);
    expect(m.ringLength(0)).toBe(hashes.length);
    // A key that did not move is accepted at once.
    expect(m.push(stayedAt[0]![0], 'stayed')).toBe(true);
    // The old shard's consumer takes its backlog: the wait is over, the same push is accepted.
    const first = text(m.poll(0));
    expect(first.slice(0, hashes.length)).toEqual(hashes.map((_, k) => `a${k}`));
    expect(m.push(h, `b${i}`)).toBe(true);
    expect(text(m.poll(added))).toEqual([`b${i}`]);
    expect(m.stats().keyOrder!.waitingSlots).toBe(0);
    await m.close();
  });
});

it('keyOrder: false gives the previous behaviour: the moved key is accepted at once', async () => {
  const m = await ShardManager.create({ routing: 'affinity', keyOrder: false, initialShards: 1, ringBufferCapacity: 256, policy: { minShards: 1, maxShards: 2, autoScale: false } });
  for (const [i, h] of hashes.entries()) m.push(h, `a${i}`);
  const added = await m.addShard();
  const h = hashes.find((x) => m.mapper.selectShard(x) === added)!;
  expect(m.push(h, 'b')).toBe(true);
  expect(m.stats().keyOrder).toMatchObject({ enabled: false, waitingSlots: 0, refused: 0 });
  await m.close();
});

it('every slot that starts to wait (keysMoving) ends its wait with a keysMoved, also when it moves again while it waits', async () => {
  const events: { type: string; slots?: number }[] = [];
  const m = await ShardManager.create({
    routing: 'affinity', initialShards: 1, ringBufferCapacity: 256, clock: () => 0,
    policy: { minShards: 1, maxShards: 4, autoScale: false }, onEvent: (e) => events.push(e),
  });
  const sum = (type: string) => events.filter((e) => e.type === type).reduce((n, e) => n + e.slots!, 0);
  for (const [i, h] of hashes.entries()) expect(m.push(h, `a${i}`)).toBe(true);
  const b = await m.addShard(); // slots move 0 → b and wait for shard 0
  const c = await m.addShard(); // while they wait, some move again (b → c), others 0 → c
  expect(m.stats().keyOrder!.waitingSlots).toBeGreaterThan(0);
  const movedTwice = events.filter((e) => e.type === 'keysMoving').length;
  expect(movedTwice, 'moves in both rebuilds').toBeGreaterThanOrEqual(2);
  await m.drainShard(c); // and back: c's slots move to the others while they still wait
  for (const id of [0, b, c]) m.poll(id); // the backlog is consumed: every wait can end
  const stats = m.stats(); // lifts the fences whose wait is over
  expect(stats.keyOrder!.waitingSlots).toBe(0);
  expect(sum('keysMoving')).toBeGreaterThan(0);
  expect(sum('keysMoved')).toBe(sum('keysMoving'));
  await m.close();
});

it('stats().keyOrder: oldestWaitMs is the wait under way, longestWaitMs the longest wait that ended (same as the Redis node)', async () => {
  let now = 1000;
  const m = await ShardManager.create({
    routing: 'affinity', initialShards: 1, ringBufferCapacity: 256, clock: () => now,
    policy: { minShards: 1, maxShards: 2, autoScale: false },
  });
  for (const [i, h] of hashes.entries()) expect(m.push(h, `a${i}`)).toBe(true);
  await m.addShard();
  now += 40;
  const waiting = m.stats().keyOrder!;
  expect(waiting.waitingSlots).toBeGreaterThan(0);
  expect(waiting.oldestWaitMs).toBe(40);
  expect(waiting.longestWaitMs, 'no wait has ended yet').toBe(0);
  m.poll(0); // the old shard's backlog is consumed: the waits can end
  now += 25;
  const ended = m.stats().keyOrder!; // lifts the fences whose wait is over
  expect(ended.waitingSlots).toBe(0);
  expect(ended.oldestWaitMs).toBe(0);
  expect(ended.longestWaitMs).toBe(65);
  await m.close();
});
