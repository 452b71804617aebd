// ShardManager with an injected clock and poll() consumption: every step is deterministic.
import { describe, expect, it } from 'vitest';
import { ShardManager, ScalingPolicy, type ManagerEvent } from 'shard-mapper';

const text = (records: Uint8Array[]) => records.map((r) => new TextDecoder().decode(r));

function clock() {
  const c = { t: 0, now: () => c.t };
  return c;
}

const ROUTING_MODES = ['leastLoaded', 'balanced', 'affinity'] as const;

/** The k-th hash from the top of the space that the manager routes to shard `id` now. Under
 *  leastLoaded right after a scale-up the newest shard is the last candidate, so it is
 *  0xffffffff - k there; the other modes spread slots, so look. */
function hashTo(m: ShardManager, id: number, k = 0): number {
  for (let h = 0xffffffff, found = 0; h > 0; h -= 0x10000) {
    if (m.mapper.selectShard(h) === id && found++ === k) return h;
  }
  throw new Error(`no hash routes to shard ${id}`);
}

// Every test runs under each routing mode: lifecycle and delivery must not depend on it.
describe.each(ROUTING_MODES)('ShardManager lifecycle (injected clock, poll consumers, routing %s)', (routing) => {
  it('scales up under load, routes new events to the new shard, and each poll sees exactly its events', async () => {
    const c = clock();
    const events: ManagerEvent[] = [];
    const m = await ShardManager.create({
      routing,
      initialShards: 1, ringBufferCapacity: 16, clock: c.now, onEvent: (e) => events.push(e),
      policy: { minShards: 1, maxShards: 4, cooldownMs: 1000, scaleDownDelayMs: 5000 },
    });
    for (let i = 0; i < 12; i++) expect(m.push(i, `a${i}`)).toBe(true);
    expect(m.ringLength(0)).toBe(12);
    const decision = m.tick(); // fill 12/16 = 0.75 > 0.7 on the only shard
    expect(decision).toEqual({ kind: 'scaleUp', count: 1 });
    expect(m.mapper.activeShardIds()).toEqual([0, 1]);
    expect(events.filter((e) => e.type === 'shardProvisioned' || e.type === 'shardActivated').map((e) => [e.type, (e as { shardId: number }).shardId]))
      .toEqual([['shardProvisioned', 0], ['shardActivated', 0], ['shardProvisioned', 1], ['shardActivated', 1]]);
    // leastLoaded: shard 1 (weight 0) is the only candidate now, every hash goes there; the
    // other modes give it part of the space: push where it routes. (Shard 0 is consumed
    // first: under affinity the hashes that moved to shard 1 wait until it has been; see
    // test/key-order.model.test.ts.)
    expect(text(m.poll(0))).toEqual(Array.from({ length: 12 }, (_, i) => `a${i}`));
    for (let i = 0; i < 5; i++) m.push(hashTo(m, 1, i), `b${i}`);
    expect(text(m.poll(1))).toEqual(['b0', 'b1', 'b2', 'b3', 'b4']);
    // No oscillation: right after the scale-up the cooldown holds every decision.
    c.t = 999;
    expect(m.tick()).toEqual({ kind: 'none' });
    expect(m.stats()).toMatchObject({ pushed: 17, delivered: 17, dropped: 0, unrouted: 0, inFlight: 0 });
  });

  it('scales down an idle shard only after scaleDownDelayMs, drains it, then removes it', async () => {
    const c = clock();
    const events: ManagerEvent[] = [];
    const m = await ShardManager.create({
      routing,
      initialShards: 2, ringBufferCapacity: 8, clock: c.now, drainGraceMs: 50, backpressure: { kind: 'dropNewest' }, onEvent: (e) => events.push(e),
      policy: { minShards: 1, maxShards: 2, cooldownMs: 1000, scaleDownDelayMs: 5000 },
    });
    m.push(1, 'kept');
    expect(m.tick()).toEqual({ kind: 'none' }); // t=0: shard 0 busy (1 event)
    expect(text(m.poll(0))).toEqual(['kept']);
    c.t = 100;
    expect(m.tick()).toEqual({ kind: 'none' }); // both idle from t=100 on
    c.t = 5099;
    expect(m.tick()).toEqual({ kind: 'none' }); // idle for 4999 ms < 5000
    c.t = 5100;
    const d = m.tick();
    expect(d).toEqual({ kind: 'scaleDown', count: 1 });
    const draining = m.mapper.allShardIds().filter((id) => m.mapper.shardState(id) === 'draining');
    expect(draining).toHaveLength(1);
    expect(m.mapper.activeShardCount()).toBe(1);
    // Nothing routes to the draining shard.
    const survivor = m.mapper.activeShardIds()[0]!;
    for (let h = 0; h < 50; h++) m.push(h * 85899345, `x${h}`);
    expect(m.ringLength(survivor)).toBe(8); // ring full: 8 accepted ...
    expect(m.ringLength(draining[0]!)).toBe(0);
    c.t = 5150; m.tick(); // grace is strict: 50 ms is not more than 50
    expect(m.mapper.shardState(draining[0]!)).toBe('draining');
    c.t = 5151; m.tick();
    expect(m.mapper.shardState(draining[0]!)).toBeUndefined(); // stopped and removed in one pass
    expect(events.map((e) => e.type)).toEqual(expect.arrayContaining(['scalingDecision', 'shardDraining', 'shardStopped', 'shardRemoved']));
    expect(m.mapper.totalShardCount()).toBe(1);
  });

  it('with the default policy a lightly loaded manager stays at minShards; a saturated one scales out', async () => {
    const c = clock();
    const cpus = Math.max(2, ScalingPolicy.default().maxShards);
    const light = await ShardManager.create({ routing, initialShards: 1, ringBufferCapacity: 1024, clock: c.now, policy: { maxShards: cpus } });
    for (let round = 0; round < 300; round++) {
      for (let i = 0; i < 50; i++) light.push(round * 50 + i, 'light event');
      light.poll(0);
      c.t += 100;
      light.tick();
      expect(light.mapper.activeShardCount()).toBe(1);
    }
    const heavy = await ShardManager.create({ routing, initialShards: 1, ringBufferCapacity: 1024, clock: c.now, policy: { maxShards: cpus }, backpressure: { kind: 'dropNewest' } });
    for (let round = 0; round < 40 && heavy.mapper.activeShardCount() < cpus; round++) {
      for (let i = 0; i < 2000; i++) heavy.push(i * 2654435761, 'heavy event'); // nobody consumes
      c.t += 1100;
      heavy.tick();
    }
    expect(heavy.mapper.activeShardCount()).toBe(cpus);
  });

  it('counts pushes with no Active shard as unrouted, never as backpressure', async () => {
    const m = await ShardManager.create({ routing, initialShards: 0, ringBufferCapacity: 8 });
    expect(m.push(1, 'lost in space')).toBe(false);
    expect(m.pushBatch([1, 2], ['a', 'b'])).toBe(0);
    expect(m.stats()).toMatchObject({ pushed: 0, dropped: 0, unrouted: 3 });
    const [id] = await m.manualScaleUp(1);
    expect(m.push(1, 'now routed')).toBe(true);
    expect(text(m.poll(id!))).toEqual(['now routed']);
  });

  it('start() runs tick on a timer and reports a failing tick as a tickError event', async () => {
    const events: ManagerEvent[] = [];
    const m = await ShardManager.create({
      routing,
      initialShards: 1, ringBufferCapacity: 4, maxSlots: 1, onEvent: (e) => events.push(e),
      policy: { maxShards: 2, metricsWindowMs: 5 },
    });
    for (let i = 0; i < 4; i++) m.push(i, 'full'); // overloaded: wants a shard it has no slot for
    m.start();
    for (let i = 0; i < 100 && !events.some((e) => e.type === 'tickError'); i++) await new Promise((r) => setTimeout(r, 5));
    m.stop();
    const failure = events.find((e) => e.type === 'tickError') as { error: { kind?: string; message: string } } | undefined;
    expect(failure?.error.kind).toBe('ShardCreationFailed');
    expect(failure?.error.message).toMatch(/slots/);
    expect(m.mapper.totalShardCount()).toBe(1); // nothing half-made
  });

  it('a shard in a reused slot starts its own counts, and gets exactly its own events', async () => {
    const m = await ShardManager.create({ routing, initialShards: 1, ringBufferCapacity: 4, policy: { maxShards: 2 }, backpressure: { kind: 'dropNewest' } });
    let firstSlot: number | undefined;
    for (let lap = 0; lap < 3; lap++) {
      const id = await m.addShard();
      const slot = m.mapper.slotOf(id);
      for (let i = 0; i < 7; i++) m.push(hashTo(m, id), `s${id}-${i}`); // the newest shard (leastLoaded: weight 0, last candidate)
      expect(m.stats().shards.find((x) => x.id === id)).toMatchObject({ pushed: 4, dropped: 3, length: 4 });
      expect(text(m.poll(id))).toEqual([0, 1, 2, 3].map((i) => `s${id}-${i}`));
      await m.removeShard(id);
      if (lap > 0) expect(slot).toBe(firstSlot); // the freed slot is reused ...
      firstSlot ??= slot;
    }
    expect(m.stats()).toMatchObject({ pushed: 12, delivered: 12, dropped: 9 }); // ... and totals add up
  });

  it('keeps totals when shards are removed', async () => {
    const m = await ShardManager.create({ routing, initialShards: 3, ringBufferCapacity: 8, policy: { maxShards: 3 }, backpressure: { kind: 'dropNewest' } });
    for (let i = 0; i < 30; i++) m.push(i * 143165576, `e${i}`); // spread over 3 shards
    const before = m.stats();
    for (const id of [0, 1, 2]) m.poll(id);
    await m.removeShard(0);
    await m.removeShard(1);
    const after = m.stats();
    expect(after.pushed).toBe(before.pushed);
    expect(after.delivered).toBe(before.pushed);
    expect(after.shards.map((s) => s.id)).toEqual([2]);
  });

  it('removeShard rolls back a Provisioning shard, and waits for an Active one to be drained by poll', async () => {
    const m = await ShardManager.create({ routing, initialShards: 2, ringBufferCapacity: 8, policy: { maxShards: 3 } });
    const [p] = m.mapper.scaleUpProvisioning(1);
    await m.removeShard(p!);
    expect(m.mapper.shardState(p!)).toBeUndefined();
    m.push(hashTo(m, 0), 'pending');
    let removed = false;
    const removal = m.removeShard(0).then(() => { removed = true; });
    await new Promise((r) => setTimeout(r, 20));
    expect(removed).toBe(false); // its event is not delivered yet
    expect(m.mapper.shardState(0)).toBe('draining');
    expect(text(m.poll(0))).toEqual(['pending']);
    await removal;
    expect(m.mapper.shardState(0)).toBeUndefined();
    expect(m.stats()).toMatchObject({ pushed: 1, delivered: 1 });
  });

  it('manualScaleUp allocates all n in one forced call, even during cooldown', async () => {
    const c = clock();
    const m = await ShardManager.create({ routing, initialShards: 1, ringBufferCapacity: 8, clock: c.now, policy: { maxShards: 5, cooldownMs: 30000 } });
    m.mapper.scaleUp(1); // starts a cooldown
    expect(() => m.mapper.scaleUp(1)).toThrow(expect.objectContaining({ kind: 'InCooldown' }));
    expect(await m.manualScaleUp(3)).toEqual([2, 3, 4]);
    expect(m.mapper.activeShardCount()).toBe(5);
    await expect(m.manualScaleUp(1)).rejects.toMatchObject({ kind: 'AtMaxShards' });
    expect(await m.manualScaleDown(2)).toHaveLength(2);
    expect(m.mapper.activeShardCount()).toBe(3);
    await expect(m.manualScaleDown(3)).rejects.toMatchObject({ kind: 'AtMinShards' });
  });
});
