// ShardMapper (docs/CONTRACT.md §5): lifecycle, gates, scaling decisions, selection and callbacks, all on
// an injected clock (`clock.t`), with no sleeps.
import { describe, it, expect } from 'vitest';
import { ShardMapper, ScalingError, NO_SHARD, hashKey, ShardState, ShardMetricsCollector } from 'shard-mapper';
import { candidateIndexes, WIRING, ShardMapper as InternalMapper } from '../dist/mapper.js';
import { SharedCore } from '../dist/core.js';
import { setup, scalingError, routable, rng } from './helpers/index.js';

const TWO32 = 2 ** 32;

/** evenly spaced hashes ceil(i·2^32/N): with N = n·2^k they split exactly evenly over n candidates */
function evenHashes(count: number): Uint32Array {
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.ceil((i * TWO32) / count);
  return out;
}

function randomHashes(count: number, seed: number): Uint32Array {
  const next = rng(seed);
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = next();
  out[0] = 0;
  out[1] = 0xffffffff;
  return out;
}

/** The batch path must agree with the single path (table rebuilt into shared memory). */
function expectBatchAgrees(m: ShardMapper, hashes = randomHashes(5000, 7)): void {
  const batch = m.selectShards(hashes);
  for (let i = 0; i < hashes.length; i++) {
    if (batch[i] !== m.selectShard(hashes[i]!)) expect({ hash: hashes[i], batch: batch[i] }).toEqual({ hash: hashes[i], batch: m.selectShard(hashes[i]!) });
  }
}

/** A full ring: fill ratio 1 > 0.7, so overloaded (capacity 100 in these tests). */
const overload = (m: ShardMapper, id: number) => m.metricsCollector(id)!.recordBufferLen(100);
/** An event in the window: not idle, not overloaded. */
const busy = (m: ShardMapper, id: number) => m.metricsCollector(id)!.recordEventOnly();

describe('exports', () => {
  it('NO_SHARD and ShardState', () => {
    expect(NO_SHARD).toBe(0xffff);
    expect(ShardState).toEqual({ Provisioning: 'provisioning', Active: 'active', Draining: 'draining', Stopped: 'stopped' });
  });
});

describe('creation', () => {
  it('creates shards 0..n-1 Active, with collectors; unknown ids answer undefined', async () => {
    const { mapper: m } = await setup(3, 64, { maxShards: 8 });
    expect(m.activeShardCount()).toBe(3);
    expect(m.totalShardCount()).toBe(3);
    expect(m.activeShardIds()).toEqual([0, 1, 2]);
    expect(m.allShardIds()).toEqual([0, 1, 2]);
    for (const id of [0, 1, 2]) {
      expect(m.shardState(id)).toBe('active');
      const c = m.metricsCollector(id);
      expect(c).toBeInstanceOf(ShardMetricsCollector);
      expect(c!.shardId).toBe(id);
      expect(c!.capacity).toBe(64);
    }
    expect(new Set([0, 1, 2].map((id) => m.metricsCollector(id))).size).toBe(3);
    for (const id of [3, -1, 0.5, 65535, NO_SHARD]) {
      expect(m.metricsCollector(id)).toBeUndefined();
      expect(m.shardState(id)).toBeUndefined();
    }
    expect(routable(m)).toEqual([0, 1, 2]);
  });

  it('the next id is initialShards', async () => {
    const { mapper: m } = await setup(3, 64, { maxShards: 8 });
    expect(m.scaleUp(2)).toEqual([3, 4]);
  });

  it('the synchronous constructor builds the same mapper', () => {
    let t = 0;
    const m = new ShardMapper(2, 16, { maxShards: 4 }, { clock: () => t });
    expect(m.activeShardIds()).toEqual([0, 1]);
    expect(routable(m)).toEqual([0, 1]);
    t = 5;
    expect(m.scaleUp(1)).toEqual([2]);
    expect(routable(m)).toEqual([0, 1, 2]);
  });

  it('initialShards 0: nothing is routable until a shard is activated', async () => {
    const { mapper: m } = await setup(0, 16, { maxShards: 4 });
    expect(m.activeShardCount()).toBe(0);
    expect(m.totalShardCount()).toBe(0);
    expect(m.activeShardIds()).toEqual([]);
    expect(m.selectShard(0)).toBe(NO_SHARD);
    expect(m.selectShard(0xffffffff)).toBe(NO_SHARD);
    expect(m.selectShardBig(123n)).toBe(NO_SHARD);
    expect(m.selectShardForKey('k')).toBe(NO_SHARD);
    expect([...m.selectShards(new Uint32Array([0, 1, 0xffffffff]))]).toEqual([NO_SHARD, NO_SHARD, NO_SHARD]);
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    expect(m.collectMetrics()).toEqual([]);
    const [id] = m.scaleUpProvisioning(1);
    expect(id).toBe(0);
    expect(m.selectShard(7)).toBe(NO_SHARD);
    expect(m.activate(0)).toBe(true);
    expect(m.selectShard(7)).toBe(0);
    expect([...m.selectShards(new Uint32Array([0, 0xffffffff]))]).toEqual([0, 0]);
  });

  it('initial shards count as activated long ago: evaluated at once (no warm-up skip)', async () => {
    const { mapper: m } = await setup(2, 100, { maxShards: 4 });
    overload(m, 0);
    overload(m, 1);
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'scaleUp', count: 1 });
  });

  it('an external core with fewer slots than initialShards: ShardCreationFailed (internal wiring)', () => {
    const core = smallCore(2);
    expect(() => new InternalMapper(3, 16, { maxShards: 8 }, { [WIRING]: wiringFor(core) } as object)).toThrow(ScalingError);
    scalingError(() => new InternalMapper(3, 16, { maxShards: 8 }, { [WIRING]: wiringFor(smallCore(2)) } as object), 'ShardCreationFailed', /3/);
  });
});

function smallCore(maxSlots: number): SharedCore {
  return SharedCore.createSync({
    kind: 'shared', tableCapacity: 8, maxSlots, initialSlots: maxSlots, ringCapacity: 0, maxPayload: 0,
    lanes: 2, laneBytes: 65536, backpressure: 0, sampleRate: 1, sampleFill: 1,
  });
}
function wiringFor(core: SharedCore) {
  return { core, onAllocated() {}, onDraining() {}, onActivated() {}, onStopped() {}, onRemoved() {} };
}

describe('scaleUp', () => {
  it('adds Active shards with fresh ids, routable at once, and counts them', async () => {
    const { mapper: m } = await setup(2, 100, { maxShards: 8 });
    expect(m.scaleUp(3)).toEqual([2, 3, 4]);
    expect(m.activeShardCount()).toBe(5);
    expect(m.totalShardCount()).toBe(5);
    expect(m.activeShardIds()).toEqual([0, 1, 2, 3, 4]);
    for (const id of [2, 3, 4]) expect(m.shardState(id)).toBe('active');
    expect(routable(m)).toEqual([0, 1, 2, 3, 4]);
    expectBatchAgrees(m);
  });

  it('count 0 → [] with no side effect, even at maxShards and in cooldown; no cooldown stamp', async () => {
    const { mapper: m, clock } = await setup(2, 100, { maxShards: 3, cooldownMs: 1000 });
    expect(m.scaleUp(0)).toEqual([]);
    expect(m.scaleUpProvisioning(0)).toEqual([]);
    expect(m.scaleUpProvisioningForce(0)).toEqual([]);
    expect(m.scaleDown(0)).toEqual([]);
    // none of them stamped the last scaling: a real scale-up right away is not InCooldown
    expect(m.scaleUp(1)).toEqual([2]);
    // at maxShards and in cooldown, count 0 still answers []
    expect(m.activeShardCount()).toBe(3);
    expect(m.scaleUp(0)).toEqual([]);
    expect(m.scaleUpProvisioning(0)).toEqual([]);
    expect(m.scaleUpProvisioningForce(0)).toEqual([]);
    expect(m.totalShardCount()).toBe(3);
    // and they do not move the last scaling either: 1000 ms after the real one is enough
    clock.t = 999;
    expect(m.scaleDown(0)).toEqual([]);
    expect(m.scaleUp(0)).toEqual([]);
    clock.t = 1000;
    expect(m.scaleDown(1)).toEqual([0]);
  });

  it('AtMaxShards when active + count > maxShards; nothing changes', async () => {
    const { mapper: m } = await setup(2, 100, { maxShards: 4 });
    const e = scalingError(() => m.scaleUp(3), 'AtMaxShards', /maxShards/);
    expect(e.message).toContain('4');
    expect(m.activeShardCount()).toBe(2);
    expect(m.totalShardCount()).toBe(2);
    // the refusal did not stamp the last scaling, and no id was consumed
    expect(m.scaleUp(2)).toEqual([2, 3]);
    expect(m.activeShardCount()).toBe(4);
  });

  it('Provisioning, Draining and Stopped shards do not count against maxShards', async () => {
    const { mapper: m, clock } = await setup(2, 100, { maxShards: 3, cooldownMs: 1000 }, { drainGraceMs: 0 });
    expect(m.scaleUpProvisioning(1)).toEqual([2]);
    clock.t = 1000;
    expect(m.scaleUp(1)).toEqual([3]); // 2 active + 1 ≤ 3 although 4 shards exist
    m.drainSpecific(0);
    clock.t = 2000;
    expect(m.scaleUp(1)).toEqual([4]);
    expect(m.activeShardCount()).toBe(3);
  });

  it('the budget is checked before the cooldown', async () => {
    const { mapper: m, clock } = await setup(2, 100, { maxShards: 3, cooldownMs: 1000 });
    m.scaleUp(1);
    clock.t = 10;
    scalingError(() => m.scaleUp(1), 'AtMaxShards');
    scalingError(() => m.scaleUpProvisioning(1), 'AtMaxShards');
    scalingError(() => m.scaleUpProvisioningForce(1), 'AtMaxShards');
  });

  it('InCooldown until exactly cooldownMs after the last scaling (elapsed == cooldownMs is allowed)', async () => {
    const { mapper: m, clock } = await setup(1, 100, { maxShards: 16, cooldownMs: 1000 });
    clock.t = 500;
    expect(m.scaleUp(1)).toEqual([1]);
    clock.t = 1499;
    const e = scalingError(() => m.scaleUp(1), 'InCooldown', /1000/);
    expect(e.message).toMatch(/999/);
    clock.t = 1500 - 1e-9;
    scalingError(() => m.scaleUp(1), 'InCooldown');
    scalingError(() => m.scaleUpProvisioning(1), 'InCooldown');
    scalingError(() => m.scaleDown(1), 'InCooldown');
    expect(m.activeShardCount()).toBe(2);
    expect(m.totalShardCount()).toBe(2);
    clock.t = 1500;
    expect(m.scaleUp(1)).toEqual([2]); // refusals did not stamp: counted from 500
    clock.t = 2499;
    scalingError(() => m.scaleUp(1), 'InCooldown');
    clock.t = 2500;
    expect(m.scaleUp(2)).toEqual([3, 4]);
  });

  it('a fractional cooldown works at its edge too', async () => {
    const { mapper: m, clock } = await setup(1, 100, { maxShards: 16, cooldownMs: 0.5 });
    m.scaleUp(1);
    clock.t = 0.4999;
    scalingError(() => m.scaleUp(1), 'InCooldown');
    clock.t = 0.5;
    expect(m.scaleUp(1)).toEqual([2]);
  });

  it('refuses a bad count, naming it, and changes nothing', async () => {
    const { mapper: m } = await setup(1, 100, { maxShards: 16 });
    for (const bad of [-1, 1.5, NaN, '1', null, Infinity, 65536]) {
      for (const call of [
        () => m.scaleUp(bad as number),
        () => m.scaleUpProvisioning(bad as number),
        () => m.scaleUpProvisioningForce(bad as number),
        () => m.scaleDown(bad as number),
      ]) {
        scalingError(call, 'InvalidPolicy', /count/);
      }
    }
    expect(m.totalShardCount()).toBe(1);
    expect(m.scaleUp(1)).toEqual([1]);
  });

  it('ids are monotonic and never reused, even after removal', async () => {
    const { mapper: m, clock } = await setup(2, 100, { maxShards: 8, cooldownMs: 10 }, { drainGraceMs: 0 });
    m.scaleUp(1); // 2
    clock.t = 10;
    m.drainSpecific(2);
    clock.t = 20;
    expect(m.finalizeDraining()).toEqual([2]);
    expect(m.removeStoppedShards()).toEqual([2]);
    expect(m.scaleUp(1)).toEqual([3]);
    clock.t = 30;
    expect(m.scaleUpProvisioning(2)).toEqual([4, 5]);
    clock.t = 40;
    expect(m.scaleUpProvisioningForce(1)).toEqual([6]);
    expect(m.allShardIds()).toEqual([0, 1, 3, 4, 5, 6]);
  });
});

describe('ids past 65534', () => {
  it('AtMaxShards when the ids would pass 65534, before the cooldown, for every scale-up path', async () => {
    const { mapper: m, clock } = await setup(65530, 16, { maxShards: 65535, cooldownMs: 1000 }, { drainGraceMs: 0 });
    expect(m.policy().maxShards).toBe(65535);
    expect(m.activeShardCount()).toBe(65530);
    scalingError(() => m.scaleUp(6), 'AtMaxShards');
    expect(m.scaleUp(5)).toEqual([65530, 65531, 65532, 65533, 65534]);
    expect(m.activeShardCount()).toBe(65535);
    expect(m.selectShard(0xffffffff)).toBe(65534);
    clock.t = 10_000;
    scalingError(() => m.scaleUp(1), 'AtMaxShards');

    // Make room under maxShards: the budget is fine now, the id space is not.
    m.drainSpecific(0);
    m.drainSpecific(1);
    clock.t = 20_000;
    expect(m.finalizeDraining()).toEqual([0, 1]);
    expect(m.removeStoppedShards()).toEqual([0, 1]);
    expect(m.activeShardCount()).toBe(65533);
    const e = scalingError(() => m.scaleUp(1), 'AtMaxShards');
    expect(e.message).toMatch(/65534/);
    scalingError(() => m.scaleUp(2), 'AtMaxShards', /65534/);
    scalingError(() => m.scaleUpProvisioning(1), 'AtMaxShards', /65534/);
    scalingError(() => m.scaleUpProvisioningForce(1), 'AtMaxShards', /65534/);
    // checked before the cooldown: stamp a scaling now, the answer is still AtMaxShards
    m.drainSpecific(2);
    scalingError(() => m.scaleUp(1), 'AtMaxShards', /65534/);
    scalingError(() => m.scaleUpProvisioning(1), 'AtMaxShards', /65534/);
    expect(m.scaleUp(0)).toEqual([]);
    expect(m.totalShardCount()).toBe(65533);
    expect(m.activeShardCount()).toBe(65532);
    expect(m.selectShard(0)).toBe(3);
    expect(m.selectShard(0xffffffff)).toBe(65534);
    expect(m.shardState(65535)).toBeUndefined();
  });
});

describe('ShardCreationFailed', () => {
  it('when the memory has no free slot (internal wiring with a 2-slot core); nothing changes', () => {
    let t = 0;
    const m = new InternalMapper(2, 16, { maxShards: 8, cooldownMs: 10 }, { clock: () => t, drainGraceMs: 0, [WIRING]: wiringFor(smallCore(2)) } as object);
    scalingError(() => m.scaleUp(1), 'ShardCreationFailed', /slot/);
    scalingError(() => m.scaleUpProvisioning(1), 'ShardCreationFailed');
    scalingError(() => m.scaleUpProvisioningForce(1), 'ShardCreationFailed');
    expect(m.totalShardCount()).toBe(2);
    expect(m.activeShardCount()).toBe(2);
    // a removed shard frees its slot; the next id is still 2 (refusals consumed none)
    m.drainSpecific(0);
    t = 100;
    m.finalizeDraining();
    m.removeStoppedShards();
    expect(m.scaleUp(1)).toEqual([2]);
    expect(routable(m)).toEqual([1, 2]);
  });
});

describe('scaleUpProvisioning / scaleUpProvisioningForce', () => {
  it('Provisioning shards get ids and collectors but are not routable, not active, and fire no callback', async () => {
    const { mapper: m } = await setup(2, 100, { maxShards: 8 });
    const created: number[] = [];
    m.setOnShardCreated((id) => created.push(id));
    expect(m.scaleUpProvisioning(2)).toEqual([2, 3]);
    expect(created).toEqual([]);
    expect(m.shardState(2)).toBe('provisioning');
    expect(m.shardState(3)).toBe('provisioning');
    expect(m.metricsCollector(2)).toBeInstanceOf(ShardMetricsCollector);
    expect(m.metricsCollector(2)!.capacity).toBe(100);
    expect(m.activeShardCount()).toBe(2);
    expect(m.totalShardCount()).toBe(4);
    expect(m.activeShardIds()).toEqual([0, 1]);
    expect(m.allShardIds()).toEqual([0, 1, 2, 3]);
    expect(routable(m)).toEqual([0, 1]);
    expectBatchAgrees(m);
    expect(m.selectShards(evenHashes(3 << 10)).every((id) => id === 0 || id === 1)).toBe(true);
  });

  it('honours and stamps the cooldown', async () => {
    const { mapper: m, clock } = await setup(1, 100, { maxShards: 8, cooldownMs: 1000 });
    expect(m.scaleUpProvisioning(1)).toEqual([1]);
    clock.t = 999;
    scalingError(() => m.scaleUp(1), 'InCooldown');
    scalingError(() => m.scaleUpProvisioning(1), 'InCooldown');
    clock.t = 1000;
    expect(m.scaleUpProvisioning(1)).toEqual([2]);
    clock.t = 1500;
    scalingError(() => m.scaleUp(1), 'InCooldown');
  });

  it('Force skips the cooldown gate but still stamps it; the budget still applies', async () => {
    const { mapper: m, clock } = await setup(1, 100, { maxShards: 3, cooldownMs: 1000 });
    clock.t = 5000;
    expect(m.scaleUp(1)).toEqual([1]);
    clock.t = 5001;
    expect(m.scaleUpProvisioningForce(1)).toEqual([2]); // in cooldown, allowed
    clock.t = 6000;
    // stamped at 5001: a scale-up at 6000 is still in cooldown
    scalingError(() => m.scaleUp(1), 'InCooldown');
    scalingError(() => m.scaleUpProvisioning(1), 'InCooldown');
    clock.t = 6001;
    expect(m.scaleUpProvisioning(1)).toEqual([3]);
    // 2 active: +2 would pass maxShards 3
    scalingError(() => m.scaleUpProvisioningForce(2), 'AtMaxShards');
    expect(m.scaleUpProvisioningForce(1)).toEqual([4]);
  });

  it('Provisioning shards are not evaluated', async () => {
    const { mapper: m, clock } = await setup(1, 100, { maxShards: 8, cooldownMs: 1000 });
    m.scaleUpProvisioning(1); // id 1, stamped at 0
    overload(m, 1);
    clock.t = 5000;
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'none' }); // 1 active, not overloaded
    // once Active (and past its warm-up) it counts: with shard 0 overloaded too, 2 of 2 are overloaded
    m.activate(1);
    overload(m, 0);
    clock.t = 6000;
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'scaleUp', count: 1 });
  });

  it('Provisioning shards are not evaluated (underutilized side)', async () => {
    const { mapper: m, clock } = await setup(2, 100, { maxShards: 8, cooldownMs: 1000, scaleDownDelayMs: 100 });
    m.scaleUpProvisioning(2); // ids 2, 3: idle
    busy(m, 0);
    m.collectMetrics();
    clock.t = 5000;
    busy(m, 0);
    m.collectMetrics();
    // shard 1 idle, shard 0 busy: 1 of 2 underutilized; counting 2 and 3 would make it 3 of 2
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
  });
});

describe('activate', () => {
  it('Provisioning → Active: true, routable at once, callback once; then false with nothing else', async () => {
    const { mapper: m } = await setup(1, 100, { maxShards: 4 });
    const created: [number, string | undefined][] = [];
    m.setOnShardCreated((id) => created.push([id, m.shardState(id)]));
    m.scaleUpProvisioning(2);
    expect(m.activate(2)).toBe(true);
    expect(m.shardState(2)).toBe('active');
    expect(m.activeShardCount()).toBe(2);
    expect(m.activeShardIds()).toEqual([0, 2]);
    expect(routable(m)).toEqual([0, 2]);
    expect(created).toEqual([[2, 'active']]);
    expect(m.activate(2)).toBe(false);
    expect(m.activate(0)).toBe(false); // an initial shard is Active too
    expect(created).toEqual([[2, 'active']]);
    expect(m.activeShardCount()).toBe(2);
    expect(m.activate(1)).toBe(true);
    expect(routable(m)).toEqual([0, 1, 2]);
    expect(created).toEqual([[2, 'active'], [1, 'active']]);
    expectBatchAgrees(m);
  });

  it('does not stamp the last scaling', async () => {
    const { mapper: m, clock } = await setup(1, 100, { maxShards: 8, cooldownMs: 1000 });
    m.scaleUpProvisioning(1);
    clock.t = 999;
    m.activate(1);
    clock.t = 1000;
    expect(m.scaleUp(1)).toEqual([2]);
  });

  it('unknown, Draining, Stopped (and non-integer ids) → InvalidPolicy, naming the shard', async () => {
    const { mapper: m, clock } = await setup(3, 100, { maxShards: 4 }, { drainGraceMs: 0 });
    scalingError(() => m.activate(9), 'InvalidPolicy', /9/);
    scalingError(() => m.activate(-1), 'InvalidPolicy');
    scalingError(() => m.activate(1.5), 'InvalidPolicy');
    scalingError(() => m.activate('1' as unknown as number), 'InvalidPolicy');
    m.drainSpecific(1);
    const e = scalingError(() => m.activate(1), 'InvalidPolicy', /1/);
    expect(e.message).toMatch(/draining/);
    clock.t = 1;
    expect(m.finalizeDraining()).toEqual([1]);
    scalingError(() => m.activate(1), 'InvalidPolicy', /stopped/);
    expect(m.shardState(1)).toBe('stopped');
    expect(m.activeShardCount()).toBe(2);
  });

  it('AtMaxShards when active is already maxShards; the shard stays Provisioning, no callback', async () => {
    const { mapper: m } = await setup(2, 100, { maxShards: 3 });
    let calls = 0;
    m.setOnShardCreated(() => calls++);
    m.scaleUpProvisioningForce(1); // 2
    m.scaleUpProvisioningForce(1); // 3: still 2 active, so within budget
    expect(m.activate(2)).toBe(true);
    expect(calls).toBe(1);
    scalingError(() => m.activate(3), 'AtMaxShards', /maxShards/);
    expect(m.shardState(3)).toBe('provisioning');
    expect(m.activeShardCount()).toBe(3);
    expect(calls).toBe(1);
    expect(routable(m)).toEqual([0, 1, 2]);
    expect(m.activate(2)).toBe(false); // already Active at maxShards: false, not an error
  });
});

describe('drainSpecific', () => {
  it('Active → Draining: collector draining, not routable, active − 1, stamps the last scaling', async () => {
    const { mapper: m, clock } = await setup(3, 100, { maxShards: 8, cooldownMs: 1000 });
    const c = m.metricsCollector(1)!;
    c.recordEventOnly();
    c.recordEventOnly();
    expect(c.pushesSinceDrainStart()).toBe(2);
    clock.t = 50;
    m.drainSpecific(1);
    expect(m.shardState(1)).toBe('draining');
    expect(c.isDraining()).toBe(true);
    expect(c.pushesSinceDrainStart()).toBe(0);
    expect(m.activeShardCount()).toBe(2);
    expect(m.activeShardIds()).toEqual([0, 2]);
    expect(m.allShardIds()).toEqual([0, 1, 2]);
    expect(m.totalShardCount()).toBe(3);
    expect(routable(m)).toEqual([0, 2]);
    expectBatchAgrees(m);
    clock.t = 1049;
    scalingError(() => m.scaleUp(1), 'InCooldown');
    clock.t = 1050;
    expect(m.scaleUp(1)).toEqual([3]);
  });

  it('is not gated by the cooldown (implementation choice: docs/CONTRACT.md §5 lists no cooldown gate)', async () => {
    const { mapper: m } = await setup(3, 100, { maxShards: 8, cooldownMs: 1000 });
    m.scaleUp(1);
    expect(() => m.drainSpecific(0)).not.toThrow();
    expect(m.shardState(0)).toBe('draining');
  });

  it('AtMinShards is checked first, even for unknown, Provisioning, Draining or bad ids', async () => {
    const { mapper: m } = await setup(3, 100, { minShards: 2, maxShards: 8 });
    m.drainSpecific(0);
    m.scaleUpProvisioningForce(1); // 3
    expect(m.activeShardCount()).toBe(2);
    for (const id of [1, 2, 3, 0, 42, -1, 1.5, NO_SHARD]) {
      const e = scalingError(() => m.drainSpecific(id), 'AtMinShards', /minShards/);
      expect(e.message).toContain('2');
    }
    expect(m.activeShardIds()).toEqual([1, 2]);
  });

  it('unknown, Provisioning or Stopped → InvalidPolicy; Draining → no-op without a cooldown stamp', async () => {
    const { mapper: m, clock } = await setup(4, 100, { maxShards: 8, cooldownMs: 1000 }, { drainGraceMs: 10 });
    scalingError(() => m.drainSpecific(42), 'InvalidPolicy', /42/);
    scalingError(() => m.drainSpecific(0.5), 'InvalidPolicy');
    scalingError(() => m.drainSpecific('1' as unknown as number), 'InvalidPolicy');
    m.scaleUpProvisioning(1); // 4, stamps at 0
    scalingError(() => m.drainSpecific(4), 'InvalidPolicy', /provisioning/);
    m.drainSpecific(0); // stamps at 0
    clock.t = 100;
    expect(m.finalizeDraining()).toEqual([0]);
    scalingError(() => m.drainSpecific(0), 'InvalidPolicy', /stopped/);
    m.drainSpecific(1); // stamps at 100
    clock.t = 1100;
    m.metricsCollector(1)!.recordEventOnly();
    expect(m.drainSpecific(1)).toBeUndefined(); // Draining: no-op
    expect(m.metricsCollector(1)!.pushesSinceDrainStart()).toBe(1); // the drain was not restarted
    expect(m.activeShardCount()).toBe(2);
    expect(m.scaleUp(1)).toEqual([5]); // not stamped at 1100
  });
});

describe('scaleDown', () => {
  it('drains the lowest-weight Active shards and returns their ids', async () => {
    const { mapper: m } = await setup(5, 100, { maxShards: 8 });
    m.metricsCollector(0)!.recordBufferLen(50);
    m.metricsCollector(1)!.recordBufferLen(10);
    m.metricsCollector(2)!.recordBufferLen(40);
    m.metricsCollector(3)!.recordBufferLen(30);
    m.metricsCollector(4)!.recordBufferLen(20);
    m.collectMetrics();
    expect(m.scaleDown(2)).toEqual([1, 4]);
    expect(m.shardState(1)).toBe('draining');
    expect(m.shardState(4)).toBe('draining');
    expect(m.metricsCollector(1)!.isDraining()).toBe(true);
    expect(m.metricsCollector(0)!.isDraining()).toBe(false);
    expect(m.activeShardIds()).toEqual([0, 2, 3]);
    expect(m.activeShardCount()).toBe(3);
  });

  it('is stable: equal weights keep table order', async () => {
    const { mapper: m, clock } = await setup(6, 100, { maxShards: 8, cooldownMs: 1 });
    expect(m.scaleDown(2)).toEqual([0, 1]); // all 0
    clock.t = 1;
    m.metricsCollector(2)!.recordBufferLen(5);
    m.metricsCollector(5)!.recordBufferLen(5);
    m.collectMetrics(); // weights: 2 → 5, 3 → 0, 4 → 0, 5 → 5
    expect(m.scaleDown(3)).toEqual([3, 4, 2]);
    expect(m.activeShardIds()).toEqual([5]);
  });

  it('drains at most active − minShards', async () => {
    const { mapper: m } = await setup(5, 100, { minShards: 3, maxShards: 8 });
    expect(m.scaleDown(10)).toEqual([0, 1]);
    expect(m.activeShardCount()).toBe(3);
  });

  it('AtMinShards when active ≤ minShards, checked before the cooldown; nothing changes', async () => {
    const { mapper: m, clock } = await setup(3, 100, { minShards: 2, maxShards: 8, cooldownMs: 1000 });
    expect(m.scaleDown(1)).toEqual([0]);
    clock.t = 1;
    const e = scalingError(() => m.scaleDown(1), 'AtMinShards', /minShards/);
    expect(e.message).toContain('2');
    clock.t = 5000;
    scalingError(() => m.scaleDown(1), 'AtMinShards');
    expect(m.activeShardIds()).toEqual([1, 2]);
  });

  it('InCooldown after any scaling; stamps once; refusals do not stamp', async () => {
    const { mapper: m, clock } = await setup(6, 100, { maxShards: 8, cooldownMs: 1000 });
    clock.t = 100;
    m.scaleUp(1); // 6
    clock.t = 1099;
    scalingError(() => m.scaleDown(1), 'InCooldown', /1000/);
    clock.t = 1100;
    expect(m.scaleDown(3)).toEqual([0, 1, 2]);
    clock.t = 2099;
    scalingError(() => m.scaleDown(1), 'InCooldown');
    scalingError(() => m.scaleUp(1), 'InCooldown');
    clock.t = 2100;
    expect(m.scaleDown(1)).toEqual([3]);
  });

  it('drained shards stop being routable at once, the rest keep their order', async () => {
    const { mapper: m } = await setup(4, 100, { maxShards: 8 });
    m.scaleDown(2);
    expect(routable(m)).toEqual([2, 3]);
    expectBatchAgrees(m);
  });
});

describe('finalizeDraining', () => {
  it('stops a Draining shard only strictly after drainGraceMs (default 100)', async () => {
    const { mapper: m, clock } = await setup(3, 100, { maxShards: 8 });
    clock.t = 1000;
    m.drainSpecific(1);
    expect(m.finalizeDraining()).toEqual([]);
    clock.t = 1100;
    expect(m.finalizeDraining()).toEqual([]); // exactly the grace: not yet
    expect(m.shardState(1)).toBe('draining');
    clock.t = 1100.001;
    expect(m.finalizeDraining()).toEqual([1]);
    expect(m.shardState(1)).toBe('stopped');
    expect(m.finalizeDraining()).toEqual([]); // only Draining shards are considered
  });

  it('honours a custom drainGraceMs, including 0', async () => {
    const a = await setup(3, 100, { maxShards: 8 }, { drainGraceMs: 250 });
    a.mapper.drainSpecific(0);
    a.clock.t = 250;
    expect(a.mapper.finalizeDraining()).toEqual([]);
    a.clock.t = 250.5;
    expect(a.mapper.finalizeDraining()).toEqual([0]);

    const b = await setup(3, 100, { maxShards: 8 }, { drainGraceMs: 0 });
    b.clock.t = 7;
    b.mapper.drainSpecific(0);
    expect(b.mapper.finalizeDraining()).toEqual([]); // 0 > 0 is false
    b.clock.t = 7.000001;
    expect(b.mapper.finalizeDraining()).toEqual([0]);
  });

  it('a non-empty ring blocks it until the length is 0 again', async () => {
    const { mapper: m, clock } = await setup(3, 100, { maxShards: 8 });
    m.metricsCollector(2)!.recordBufferLen(4);
    m.drainSpecific(2);
    clock.t = 10_000;
    expect(m.finalizeDraining()).toEqual([]);
    m.metricsCollector(2)!.recordBufferLen(1);
    expect(m.finalizeDraining()).toEqual([]);
    m.metricsCollector(2)!.recordBufferLen(0);
    expect(m.finalizeDraining()).toEqual([2]);
  });

  it('a push since the drain started blocks it; pushes before the drain do not', async () => {
    const { mapper: m, clock } = await setup(3, 100, { maxShards: 8 });
    m.metricsCollector(0)!.recordPush(1); // before: forgotten by setDraining(true)
    m.metricsCollector(1)!.recordPush(1);
    m.drainSpecific(0);
    m.drainSpecific(1);
    m.metricsCollector(1)!.recordEventOnly(); // after
    clock.t = 10_000;
    expect(m.finalizeDraining()).toEqual([0]);
    clock.t = 20_000;
    expect(m.finalizeDraining()).toEqual([]);
    expect(m.shardState(1)).toBe('draining');
  });

  it('latency samples and flushes after the drain do not block it', async () => {
    const { mapper: m, clock } = await setup(3, 100, { maxShards: 8 });
    m.drainSpecific(2);
    m.metricsCollector(2)!.recordLatencySample(5);
    m.metricsCollector(2)!.recordFlush(5);
    clock.t = 101;
    expect(m.finalizeDraining()).toEqual([2]);
  });

  it('stops several shards at once, in table order, each on its own conditions', async () => {
    const { mapper: m, clock } = await setup(6, 100, { maxShards: 8, cooldownMs: 1 });
    m.scaleDown(1); // 0 at t=0
    clock.t = 50;
    m.drainSpecific(4);
    m.drainSpecific(2);
    m.drainSpecific(3);
    m.metricsCollector(3)!.recordBufferLen(1);
    clock.t = 150;
    expect(m.finalizeDraining()).toEqual([0]); // 2 and 4 are exactly at their grace
    clock.t = 150.5;
    expect(m.finalizeDraining()).toEqual([2, 4]);
    expect(m.allShardIds()).toEqual([1, 3, 5]);
    expect(m.shardState(3)).toBe('draining');
    expect(m.totalShardCount()).toBe(6);
  });
});

describe('removal of Stopped shards', () => {
  it('removeSpecificStoppedShard removes only a Stopped shard', async () => {
    const { mapper: m, clock } = await setup(4, 100, { maxShards: 8 }, { drainGraceMs: 0 });
    m.scaleUpProvisioning(1); // 4
    m.drainSpecific(1);
    m.drainSpecific(2);
    clock.t = 1;
    m.metricsCollector(2)!.recordEventOnly(); // keeps 2 Draining
    expect(m.finalizeDraining()).toEqual([1]);
    for (const id of [0, 2, 3, 4, 99, -1]) expect(m.removeSpecificStoppedShard(id)).toBe(false);
    expect(m.totalShardCount()).toBe(5);
    expect(m.shardState(1)).toBe('stopped');
    expect(m.metricsCollector(1)).toBeDefined(); // Stopped, still in the table
    expect(m.removeSpecificStoppedShard(1)).toBe(true);
    expect(m.removeSpecificStoppedShard(1)).toBe(false);
    expect(m.shardState(1)).toBeUndefined();
    expect(m.metricsCollector(1)).toBeUndefined();
    expect(m.totalShardCount()).toBe(4);
    expect(m.allShardIds()).toEqual([0, 2, 3, 4]);
    expect(m.shardState(2)).toBe('draining');
    expect(m.shardState(4)).toBe('provisioning');
  });

  it('removeStoppedShards removes every Stopped shard and returns their ids', async () => {
    const { mapper: m, clock } = await setup(5, 100, { maxShards: 8 }, { drainGraceMs: 0 });
    expect(m.removeStoppedShards()).toEqual([]);
    m.drainSpecific(3);
    m.drainSpecific(1);
    m.drainSpecific(2);
    m.metricsCollector(2)!.recordBufferLen(3);
    clock.t = 1;
    expect(m.finalizeDraining()).toEqual([1, 3]);
    // Stopped shards count in totalShardCount until removed, but not in allShardIds
    expect(m.totalShardCount()).toBe(5);
    expect(m.allShardIds()).toEqual([0, 2, 4]);
    expect(m.activeShardIds()).toEqual([0, 4]);
    expect(m.removeStoppedShards()).toEqual([1, 3]);
    expect(m.totalShardCount()).toBe(3);
    expect(m.allShardIds()).toEqual([0, 2, 4]);
    expect(m.removeStoppedShards()).toEqual([]);
    expect(routable(m)).toEqual([0, 4]);
    expectBatchAgrees(m);
  });

  it("a removed shard's collector is retired: it cannot touch the shard that reuses its slot", async () => {
    const { mapper: m, clock } = await setup(2, 100, { maxShards: 8, cooldownMs: 1 }, { drainGraceMs: 0 });
    const old = m.metricsCollector(1)!;
    const oldSlot = m.slotOf(1);
    m.drainSpecific(1);
    clock.t = 1;
    m.finalizeDraining();
    m.removeSpecificStoppedShard(1);
    expect(m.scaleUp(1)).toEqual([2]);
    expect(m.slotOf(2)).toBe(oldSlot); // the slot was reused
    old.recordBufferLen(60);
    old.recordPush(9);
    old.recordFlush(9);
    old.setDraining(true);
    const fresh = m.metricsCollector(2)!;
    expect(fresh.isDraining()).toBe(false);
    expect(fresh.collectAndReset()).toMatchObject({ shardId: 2, bufferLen: 0, eventRate: 0, avgPushLatencyNs: 0, avgFlushLatencyUs: 0, weight: 0 });
  });
});

describe('queries', () => {
  it('activeShardIds / allShardIds / totalShardCount across every state, in table order', async () => {
    const { mapper: m, clock } = await setup(4, 100, { maxShards: 8 }, { drainGraceMs: 0 });
    m.scaleUpProvisioning(1); // 4 provisioning
    m.drainSpecific(2); // draining
    m.drainSpecific(0);
    clock.t = 1;
    m.metricsCollector(0)!.recordBufferLen(1);
    m.finalizeDraining(); // 2 stopped, 0 still draining
    expect(m.shardState(0)).toBe('draining');
    expect(m.shardState(1)).toBe('active');
    expect(m.shardState(2)).toBe('stopped');
    expect(m.shardState(3)).toBe('active');
    expect(m.shardState(4)).toBe('provisioning');
    expect(m.activeShardIds()).toEqual([1, 3]);
    expect(m.activeShardCount()).toBe(2);
    expect(m.allShardIds()).toEqual([0, 1, 3, 4]);
    expect(m.totalShardCount()).toBe(5);
    // the arrays are copies
    m.activeShardIds().push(99);
    expect(m.activeShardIds()).toEqual([1, 3]);
  });

  it('collectMetrics collects every shard in table order and stores the last metrics', async () => {
    const { mapper: m, clock } = await setup(3, 100, { maxShards: 8 });
    m.scaleUpProvisioning(1);
    m.metricsCollector(1)!.recordBufferLen(20);
    m.metricsCollector(3)!.recordPush(4);
    clock.t = 77;
    const all = m.collectMetrics();
    expect(all.map((x) => x.shardId)).toEqual([0, 1, 2, 3]);
    expect(all[1]).toMatchObject({ bufferLen: 20, fillRatio: 0.2, weight: 20, lastUpdated: 77 });
    expect(all[3]).toMatchObject({ eventRate: 1, avgPushLatencyNs: 4 });
    expect(m.lastMetrics(1)).toEqual(all[1]);
    // the window was reset
    expect(m.collectMetrics()[3]).toMatchObject({ eventRate: 0, avgPushLatencyNs: 0 });
  });
});

describe('selection', () => {
  it('selectShard(0) is the first candidate and selectShard(0xffffffff) the last', async () => {
    const { mapper: m } = await setup(3, 100, { maxShards: 8 });
    expect(m.selectShard(0)).toBe(0);
    expect(m.selectShard(0xffffffff)).toBe(2);
    m.drainSpecific(0);
    m.scaleUpProvisioningForce(1);
    m.activate(3);
    expect(m.selectShard(0)).toBe(1);
    expect(m.selectShard(0xffffffff)).toBe(3);
  });

  it('index = floor(hash · n / 2^32) exactly at the boundaries', async () => {
    const { mapper: m } = await setup(3, 100, { maxShards: 8 });
    // 2^32/3 = 1431655765.33, 2·2^32/3 = 2863311530.67
    expect(m.selectShard(1431655765)).toBe(0);
    expect(m.selectShard(1431655766)).toBe(1);
    expect(m.selectShard(2863311530)).toBe(1);
    expect(m.selectShard(2863311531)).toBe(2);
    const batch = m.selectShards(new Uint32Array([1431655765, 1431655766, 2863311530, 2863311531]));
    expect([...batch]).toEqual([0, 1, 1, 2]);
    // a hash % n scheme would send 3 (3 % 3 = 0) and 4 elsewhere; the range split of docs/CONTRACT.md §5 keeps them on 0
    expect(m.selectShard(4)).toBe(0);
  });

  it('reduces other numbers with >>> 0 (NaN, negatives, fractions, ≥ 2^32, ±Infinity)', async () => {
    const { mapper: m } = await setup(3, 100, { maxShards: 8 });
    const cases: [number, number][] = [
      [NaN, 0],
      [Infinity, 0],
      [-Infinity, 0],
      [-1, 2], // → 0xffffffff
      [-TWO32 + 1, 0], // → 1
      [-(2 ** 31), 1], // → 2^31
      [0.9, 0],
      [2863311530.7, 1], // → 2863311530, not rounded up into shard 2
      [1431655765.99, 0],
      [TWO32, 0],
      [TWO32 + 5, 0],
      [2 * TWO32 - 1, 2], // → 0xffffffff
      [TWO32 + 2863311531, 2],
      [2 ** 53, 0],
      [-0, 0],
    ];
    for (const [hash, expected] of cases) {
      expect(m.selectShard(hash), String(hash)).toBe(expected);
      expect(m.selectShard(hash)).toBe(m.selectShard(hash >>> 0));
    }
  });

  it('refuses a non-number with a TypeError', async () => {
    const { mapper: m } = await setup(3, 100, { maxShards: 8 });
    for (const bad of ['5', 5n, null, undefined, {}, [1]]) expect(() => m.selectShard(bad as number)).toThrow(TypeError);
    for (const bad of [5, '5', null]) expect(() => m.selectShardBig(bad as unknown as bigint)).toThrow(TypeError);
    for (const bad of [[1, 2], new Int32Array(2), new Uint16Array(2), null]) expect(() => m.selectShards(bad as unknown as Uint32Array)).toThrow(TypeError);
    expect(() => m.selectShards(new Uint32Array(2), new Uint32Array(2) as unknown as Uint16Array)).toThrow(TypeError);
    expect(() => m.selectShardForKey(5 as unknown as string)).toThrow(TypeError);
  });

  it('is unbiased: 3·2^16 evenly spaced hashes split exactly evenly over 3 candidates (and 7·2^14 over 7)', async () => {
    for (const n of [3, 7]) {
      const { mapper: m } = await setup(n, 100, { maxShards: 8 });
      const k = n === 3 ? 16 : 14;
      const hashes = evenHashes(n * 2 ** k);
      const counts = new Map<number, number>();
      const out = m.selectShards(hashes);
      for (const id of out) counts.set(id, (counts.get(id) ?? 0) + 1);
      expect([...counts.keys()].sort((a, b) => a - b)).toEqual([...Array(n).keys()]);
      for (const c of counts.values()) expect(c).toBe(2 ** k);
      // the single path on a subsample agrees
      for (let i = 0; i < hashes.length; i += 97) expect(m.selectShard(hashes[i]!)).toBe(out[i]);
    }
  });

  it('random hashes spread evenly within 1.5%', async () => {
    const { mapper: m } = await setup(3, 100, { maxShards: 8 });
    const hashes = randomHashes(300_000, 99);
    const counts = [0, 0, 0];
    for (const id of m.selectShards(hashes)) counts[id]!++;
    for (const c of counts) expect(Math.abs(c - 100_000)).toBeLessThan(1500);
  });

  it('candidates are the Active shards within 0.1 of the lowest weight, after collectMetrics', async () => {
    const { mapper: m, clock } = await setup(3, 100, { maxShards: 8, cooldownMs: 1 });
    m.metricsCollector(1)!.recordLatencySample(2); // weight 0.2
    expect(routable(m)).toEqual([0, 1, 2]); // not collected yet
    m.collectMetrics();
    expect(routable(m)).toEqual([0, 2]);
    expect(m.selectShard(0xffffffff)).toBe(2);
    expectBatchAgrees(m);
    // the table is rebuilt on a state change with the stored weights: shard 1 stays out
    expect(m.scaleUp(1)).toEqual([3]);
    expect(routable(m)).toEqual([0, 2, 3]);
    // exactly 0.1 above the minimum is still a candidate
    m.metricsCollector(1)!.recordLatencySample(1); // weight 0.1
    m.collectMetrics();
    expect(routable(m)).toEqual([0, 1, 2, 3]);
    // the minimum need not be 0: 2 and 2.05 are candidates, 2.7 and 60 are not
    for (const id of [0, 1, 2]) m.metricsCollector(id)!.recordBufferLen(2); // fill 0.02 → 2
    m.metricsCollector(3)!.recordBufferLen(60); // 60
    for (let i = 0; i < 50_000; i++) m.metricsCollector(1)!.recordEventOnly(); // + 0.05
    m.metricsCollector(2)!.recordLatencySample(7); // + 0.7
    clock.t = 5;
    const w = m.collectMetrics().map((x) => x.weight);
    expect(w[0]).toBeCloseTo(2, 12);
    expect(w[1]).toBeCloseTo(2.05, 12);
    expect(w[2]).toBeCloseTo(2.7, 12);
    expect(w[3]).toBe(60);
    expect(routable(m)).toEqual([0, 1]);
    // when everyone is equally heavy, everyone is a candidate
    for (const id of [0, 1, 2, 3]) m.metricsCollector(id)!.recordBufferLen(90);
    m.collectMetrics();
    expect(routable(m)).toEqual([0, 1, 2, 3]);
    expectBatchAgrees(m);
  });

  it('selectShardBig: index (hash · n) >> 64n, hash reduced modulo 2^64', async () => {
    const { mapper: m } = await setup(3, 100, { maxShards: 8 });
    const U64 = 2n ** 64n;
    expect(m.selectShardBig(0n)).toBe(0);
    expect(m.selectShardBig(U64 - 1n)).toBe(2);
    expect(m.selectShardBig(6148914691236517205n)).toBe(0); // floor(2^64/3)
    expect(m.selectShardBig(6148914691236517206n)).toBe(1);
    expect(m.selectShardBig(12297829382473034410n)).toBe(1);
    expect(m.selectShardBig(12297829382473034411n)).toBe(2);
    expect(m.selectShardBig(U64)).toBe(0);
    expect(m.selectShardBig(-1n)).toBe(2);
    // a u32 hash in the high half selects like selectShard
    const next = rng(5);
    for (let i = 0; i < 10_000; i++) {
      const h = next();
      const big = (BigInt(h) << 32n) | BigInt(next());
      expect(m.selectShardBig(big)).toBe(m.selectShard(h));
    }
    m.drainSpecific(0);
    expect(m.selectShardBig(0n)).toBe(1);
    expect(m.selectShardBig(U64 - 1n)).toBe(2);
  });

  it('selectShards equals selectShard element-wise for 100k random hashes, with and without `out`', async () => {
    const { mapper: m, clock } = await setup(7, 100, { maxShards: 16, cooldownMs: 1 });
    m.drainSpecific(3);
    m.metricsCollector(5)!.recordBufferLen(50);
    m.collectMetrics();
    clock.t = 1;
    m.scaleUp(2);
    const candidates = routable(m);
    expect(candidates).toEqual([0, 1, 2, 4, 6, 7, 8]);
    const hashes = randomHashes(100_000, 1234);
    const expected = new Uint16Array(hashes.length);
    for (let i = 0; i < hashes.length; i++) expected[i] = m.selectShard(hashes[i]!);
    expect(new Set(expected)).toEqual(new Set(candidates));

    const a = m.selectShards(hashes);
    expect(a).toBeInstanceOf(Uint16Array);
    expect(a.length).toBe(hashes.length);
    expect(Buffer.compare(Buffer.from(a.buffer), Buffer.from(expected.buffer))).toBe(0);

    const out = new Uint16Array(hashes.length + 3).fill(0xabcd);
    const b = m.selectShards(hashes, out);
    expect(b).toBe(out);
    expect(Buffer.compare(Buffer.from(out.buffer, 0, hashes.length * 2), Buffer.from(expected.buffer))).toBe(0);
    expect([...out.subarray(hashes.length)]).toEqual([0xabcd, 0xabcd, 0xabcd]); // untouched

    expect(() => m.selectShards(hashes, new Uint16Array(hashes.length - 1))).toThrow(RangeError);
    expect(m.selectShards(new Uint32Array(0)).length).toBe(0);
  });

  it('selectShards fills NO_SHARD when nothing is Active (and only the first n entries of `out`)', async () => {
    const { mapper: m } = await setup(0, 100, { maxShards: 4 });
    const out = new Uint16Array(4).fill(7);
    expect([...m.selectShards(new Uint32Array([1, 2, 3]), out)]).toEqual([NO_SHARD, NO_SHARD, NO_SHARD, 7]);
  });

  it('selectShardForKey(key) == selectShard(hashKey(key)) for strings and bytes', async () => {
    const { mapper: m } = await setup(5, 100, { maxShards: 8 });
    const seen = new Set<number>();
    for (let i = 0; i < 500; i++) {
      const key = `user-${i}-é`;
      const id = m.selectShardForKey(key);
      expect(id).toBe(m.selectShard(hashKey(key)));
      expect(m.selectShardForKey(new TextEncoder().encode(key))).toBe(id);
      seen.add(id);
    }
    expect(seen.size).toBe(5);
    expect(m.selectShardForKey('abc')).toBe(Math.floor((0x32d153ff * 5) / TWO32));
  });

  it('follows every state change at once', async () => {
    const { mapper: m, clock } = await setup(3, 100, { maxShards: 8, cooldownMs: 10 }, { drainGraceMs: 0 });
    const step = (expected: number[]) => {
      expect(routable(m)).toEqual(expected);
      expect(m.activeShardIds()).toEqual(expected); // weights are all 0: every Active shard is a candidate
      expectBatchAgrees(m);
    };
    step([0, 1, 2]);
    m.scaleUp(2);
    step([0, 1, 2, 3, 4]);
    clock.t = 10;
    m.scaleUpProvisioning(1); // 5
    step([0, 1, 2, 3, 4]);
    m.activate(5);
    step([0, 1, 2, 3, 4, 5]);
    m.drainSpecific(1);
    step([0, 2, 3, 4, 5]);
    clock.t = 20;
    m.scaleDown(2);
    step([3, 4, 5]);
    clock.t = 21;
    expect(m.finalizeDraining()).toEqual([0, 1, 2]);
    step([3, 4, 5]);
    m.removeStoppedShards();
    step([3, 4, 5]);
    clock.t = 30;
    m.scaleUp(1);
    step([3, 4, 5, 6]);
  });
});

describe('candidateIndexes (internal)', () => {
  it('within 0.1 of the minimum, in order', () => {
    expect(candidateIndexes([0, 0.1, 0.2, 0.05])).toEqual([0, 1, 3]);
    // 1.1 - 1.0 is 0.10000000000000009 in binary floating point: still within 0.1
    expect(candidateIndexes([1.0, 1.1, 1.2])).toEqual([0, 1]);
    expect(candidateIndexes([5, 1, 1.05, 3])).toEqual([1, 2]);
    expect(candidateIndexes([])).toEqual([]);
    expect(candidateIndexes([Number.MAX_VALUE, 2])).toEqual([1]);
  });

  it('falls back to every index when the rule selects none (NaN weights)', () => {
    expect(candidateIndexes([NaN])).toEqual([0]);
    expect(candidateIndexes([NaN, NaN, NaN])).toEqual([0, 1, 2]);
    expect(candidateIndexes([Infinity, Infinity])).toEqual([0, 1]);
  });

  it('a NaN weight among numbers is just never a candidate', () => {
    expect(candidateIndexes([NaN, 1, 1.05, NaN, 3])).toEqual([1, 2]);
  });
});

describe('evaluateScaling', () => {
  const policy = { cooldownMs: 1000, scaleDownDelayMs: 10_000 };

  it('autoScale false → none, whatever the metrics', async () => {
    const { mapper: m, clock } = await setup(4, 100, { ...policy, maxShards: 8, autoScale: false });
    for (const id of [0, 1, 2, 3]) overload(m, id);
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    for (const id of [0, 1, 2, 3]) m.metricsCollector(id)!.recordBufferLen(0);
    m.collectMetrics();
    clock.t = 1e9;
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
  });

  it.each([
    // a, overloaded, maxShards, expected count (0 = none)
    [1, 1, 4, 1],
    [2, 1, 4, 0],
    [2, 2, 4, 1],
    [3, 2, 8, 1],
    [4, 2, 16, 0],
    [4, 3, 16, 1],
    [5, 5, 16, 2],
    [8, 5, 64, 2],
    [8, 8, 64, 4],
    [8, 8, 10, 2],
    [9, 9, 100, 4],
    [9, 9, 10, 1],
    [5, 3, 5, 0],
  ])('a=%i, %i overloaded, maxShards %i → scaleUp(%i)', async (a, over, maxShards, count) => {
    const { mapper: m } = await setup(a, 100, { ...policy, maxShards });
    for (let id = 0; id < over; id++) overload(m, id);
    for (let id = over; id < a; id++) busy(m, id);
    m.collectMetrics();
    const decision = m.evaluateScaling();
    expect(decision).toEqual(count === 0 ? { kind: 'none' } : { kind: 'scaleUp', count });
    expect(m.activeShardCount()).toBe(a); // decides, never acts
  });

  it.each([
    // a, underutilized, minShards, expected count (0 = none)
    [2, 2, 1, 1],
    [2, 1, 1, 0],
    [3, 2, 1, 1],
    [4, 2, 1, 0],
    [4, 3, 1, 1],
    [4, 4, 1, 2],
    [6, 6, 5, 1],
    [8, 8, 1, 4],
    [8, 8, 6, 2],
    [2, 2, 2, 0],
    [1, 1, 1, 0],
  ])('a=%i, %i underutilized, minShards %i → scaleDown(%i)', async (a, under, minShards, count) => {
    const { mapper: m, clock } = await setup(a, 100, { ...policy, minShards, maxShards: 16 });
    const round = () => {
      for (let id = under; id < a; id++) busy(m, id);
      m.collectMetrics();
    };
    round();
    clock.t = 10_000;
    round();
    const decision = m.evaluateScaling();
    expect(decision).toEqual(count === 0 ? { kind: 'none' } : { kind: 'scaleDown', count });
    expect(m.activeShardCount()).toBe(a);
  });

  it('overloaded via the fill ratio: strictly above fillRatioThreshold', async () => {
    const { mapper: m } = await setup(1, 100, { ...policy, maxShards: 4 });
    m.metricsCollector(0)!.recordBufferLen(70); // 0.7: not above
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    m.metricsCollector(0)!.recordBufferLen(71);
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'scaleUp', count: 1 });
  });

  it('overloaded via avgPushLatencyNs: strictly above, on the integer average', async () => {
    const { mapper: m } = await setup(1, 100, { ...policy, maxShards: 4 });
    const c = m.metricsCollector(0)!;
    c.recordPush(5);
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    c.recordPush(5);
    c.recordPush(6); // 5.5 → 5
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    c.recordPush(6);
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'scaleUp', count: 1 });
    m.collectMetrics(); // an empty window: average 0 again
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
  });

  it('overloaded via avgFlushLatencyUs: strictly above, on the integer average', async () => {
    const { mapper: m } = await setup(1, 100, { ...policy, maxShards: 4, flushLatencyThresholdUs: 1000 });
    const c = m.metricsCollector(0)!;
    c.recordFlush(1000);
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    c.recordFlush(1000);
    c.recordFlush(1001); // 1000.5 → 1000
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    c.recordFlush(1001);
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'scaleUp', count: 1 });
  });

  it('uses the policy thresholds, not the defaults', async () => {
    const { mapper: m } = await setup(1, 100, { ...policy, maxShards: 4, fillRatioThreshold: 0.3, pushLatencyThresholdNs: 50, flushLatencyThresholdUs: 10 });
    const c = m.metricsCollector(0)!;
    c.recordPush(40); // under 50 (over the default 5)
    c.recordBufferLen(30); // 0.3: not above 0.3
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    c.recordFlush(11);
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'scaleUp', count: 1 });
  });

  it('none while in cooldown after any scaling (scaleUp, provisioning, drain), by the exact edge', async () => {
    const { mapper: m, clock } = await setup(2, 100, { ...policy, maxShards: 8 });
    overload(m, 0);
    overload(m, 1);
    m.collectMetrics();
    const up = { kind: 'scaleUp', count: 1 };
    expect(m.evaluateScaling()).toEqual(up);
    m.scaleUp(1); // t=0
    clock.t = 999;
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    clock.t = 1000;
    expect(m.evaluateScaling()).toEqual(up); // 2 of 3 overloaded
    m.scaleUpProvisioningForce(1); // stamps 1000
    clock.t = 1999.5;
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    clock.t = 2000;
    expect(m.evaluateScaling()).toEqual(up);
    m.drainSpecific(2); // stamps 2000
    clock.t = 2999;
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    clock.t = 3000;
    expect(m.evaluateScaling()).toEqual(up); // 2 of 2 overloaded → max(1, 1)
  });

  it('evaluating does not stamp the cooldown', async () => {
    const { mapper: m } = await setup(2, 100, { ...policy, maxShards: 8 });
    overload(m, 0);
    overload(m, 1);
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'scaleUp', count: 1 });
    expect(m.scaleUp(1)).toEqual([2]);
  });

  it('warm-up: shards activated less than cooldownMs ago are skipped (overload side)', async () => {
    const { mapper: m, clock } = await setup(1, 100, { ...policy, maxShards: 4 });
    m.scaleUpProvisioning(1); // id 1, stamp 0
    clock.t = 500;
    m.activate(1); // activated at 500
    overload(m, 0);
    overload(m, 1);
    clock.t = 1000;
    m.collectMetrics();
    // a = 2: only shard 0 counts → 1 overloaded, not > 1
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    clock.t = 1499;
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    clock.t = 1500;
    expect(m.evaluateScaling()).toEqual({ kind: 'scaleUp', count: 1 });
  });

  it('warm-up applies to underutilized shards too', async () => {
    const { mapper: m, clock } = await setup(1, 100, { cooldownMs: 1000, scaleDownDelayMs: 100, maxShards: 4 });
    m.scaleUpProvisioning(1); // stamp 0
    m.collectMetrics(); // both idle from 0
    clock.t = 5000;
    m.activate(1);
    m.collectMetrics();
    clock.t = 5999;
    expect(m.evaluateScaling()).toEqual({ kind: 'none' }); // only shard 0 counts
    clock.t = 6000;
    expect(m.evaluateScaling()).toEqual({ kind: 'scaleDown', count: 1 });
  });

  it('scale-down delay: idle in every collection for ≥ scaleDownDelayMs; a busy collection resets it', async () => {
    const { mapper: m, clock } = await setup(2, 100, { ...policy, maxShards: 4 });
    const down = { kind: 'scaleDown', count: 1 };
    expect(m.evaluateScaling()).toEqual({ kind: 'none' }); // never collected
    m.collectMetrics(); // idle since 0
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    clock.t = 5000;
    m.collectMetrics();
    clock.t = 9999;
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    clock.t = 10_000;
    expect(m.evaluateScaling()).toEqual(down);

    // shard 0 has an event in the next window: its idle streak restarts at the next idle collection
    busy(m, 0);
    m.collectMetrics(); // t = 10000: shard 0 busy
    expect(m.evaluateScaling()).toEqual({ kind: 'none' }); // only shard 1 is underutilized
    clock.t = 11_000;
    m.collectMetrics(); // shard 0 idle since 11000
    clock.t = 20_999;
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    clock.t = 21_000;
    expect(m.evaluateScaling()).toEqual(down);

    // a fill ratio at the threshold (0.1, not below it) is busy too
    m.metricsCollector(1)!.recordBufferLen(10);
    m.collectMetrics(); // t = 21000
    m.metricsCollector(1)!.recordBufferLen(9); // 0.09: idle again
    clock.t = 22_000;
    m.collectMetrics(); // shard 1 idle since 22000
    clock.t = 31_999;
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    clock.t = 32_000;
    expect(m.evaluateScaling()).toEqual(down);
  });

  it('the idle test uses the latest collection: a busy last window is not underutilized', async () => {
    const { mapper: m, clock } = await setup(2, 100, { ...policy, maxShards: 4 });
    m.collectMetrics();
    clock.t = 20_000;
    busy(m, 0);
    busy(m, 1);
    m.collectMetrics();
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
  });

  it('Draining shards are not evaluated', async () => {
    const { mapper: m, clock } = await setup(3, 100, { ...policy, maxShards: 8 });
    m.drainSpecific(2);
    const round = () => {
      busy(m, 1);
      m.collectMetrics();
    };
    round();
    clock.t = 20_000;
    round();
    // shard 0 idle, shard 1 busy, shard 2 idle but Draining: 1 of 2, not > 1
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
    overload(m, 0);
    overload(m, 2);
    round();
    expect(m.evaluateScaling()).toEqual({ kind: 'none' });
  });

  it('overloaded takes precedence; at maxShards the scale-down branch is still considered', async () => {
    // latency samples without events: overloaded (latency) and underutilized (no events, empty ring)
    const make = async (maxShards: number) => {
      const { mapper: m, clock } = await setup(2, 100, { ...policy, maxShards });
      const round = () => {
        for (const id of [0, 1]) m.metricsCollector(id)!.recordLatencySample(100);
        m.collectMetrics();
      };
      round();
      clock.t = 10_000;
      round();
      return m.evaluateScaling();
    };
    expect(await make(4)).toEqual({ kind: 'scaleUp', count: 1 });
    expect(await make(2)).toEqual({ kind: 'scaleDown', count: 1 });
  });
});

describe('callbacks', () => {
  it('onShardCreated runs for each new id, in order, after the state change', async () => {
    const { mapper: m } = await setup(1, 100, { maxShards: 8 });
    const seen: unknown[] = [];
    m.setOnShardCreated((id) => {
      seen.push({ id, state: m.shardState(id), active: m.activeShardCount(), routable: routable(m).includes(id), ids: m.activeShardIds() });
    });
    m.scaleUp(2);
    expect(seen).toEqual([
      { id: 1, state: 'active', active: 3, routable: true, ids: [0, 1, 2] },
      { id: 2, state: 'active', active: 3, routable: true, ids: [0, 1, 2] },
    ]);
  });

  it('onShardRemoved runs from finalizeDraining after the shard is Stopped; draining and removal fire nothing', async () => {
    const { mapper: m, clock } = await setup(4, 100, { maxShards: 8, cooldownMs: 1 });
    const seen: unknown[] = [];
    m.setOnShardRemoved((id) => seen.push({ id, state: m.shardState(id), all: m.allShardIds(), total: m.totalShardCount() }));
    m.drainSpecific(1);
    clock.t = 1;
    m.scaleDown(1); // 0
    expect(seen).toEqual([]);
    clock.t = 200;
    expect(m.finalizeDraining()).toEqual([0, 1]);
    expect(seen).toEqual([
      { id: 0, state: 'stopped', all: [2, 3], total: 4 },
      { id: 1, state: 'stopped', all: [2, 3], total: 4 },
    ]);
    m.removeStoppedShards();
    expect(seen.length).toBe(2);
  });

  it('replacing a callback: only the latest runs; undefined clears it; a non-function is refused', async () => {
    const { mapper: m, clock } = await setup(1, 100, { maxShards: 8, cooldownMs: 1 }, { drainGraceMs: 0 });
    const a: number[] = [];
    const b: number[] = [];
    m.setOnShardCreated((id) => a.push(id));
    m.setOnShardCreated((id) => b.push(id));
    m.scaleUp(1);
    expect(a).toEqual([]);
    expect(b).toEqual([1]);
    scalingError(() => m.setOnShardCreated(5 as unknown as () => void), 'InvalidPolicy', /onShardCreated/);
    clock.t = 1;
    m.scaleUp(1);
    expect(b).toEqual([1, 2]); // the refused one did not replace it
    m.setOnShardCreated(undefined);
    clock.t = 2;
    m.scaleUp(1);
    expect(b).toEqual([1, 2]);

    const r1: number[] = [];
    const r2: number[] = [];
    m.setOnShardRemoved((id) => r1.push(id));
    m.setOnShardRemoved((id) => r2.push(id));
    scalingError(() => m.setOnShardRemoved('x' as unknown as () => void), 'InvalidPolicy', /onShardRemoved/);
    m.drainSpecific(0);
    clock.t = 3;
    m.finalizeDraining();
    expect(r1).toEqual([]);
    expect(r2).toEqual([0]);
  });

  it('may call back into the mapper, even to scale down (re-entrancy)', async () => {
    const { mapper: m, clock } = await setup(2, 100, { minShards: 1, maxShards: 8, cooldownMs: 1000 });
    const drained: number[] = [];
    const views: number[][] = [];
    m.setOnShardCreated((id) => {
      views.push(m.activeShardIds());
      expect(m.activate(id)).toBe(false);
      clock.t += 1000;
      drained.push(...m.scaleDown(1));
    });
    expect(m.scaleUp(2)).toEqual([2, 3]);
    expect(views).toEqual([[0, 1, 2, 3], [1, 2, 3]]);
    expect(drained).toEqual([0, 1]);
    expect(m.activeShardIds()).toEqual([2, 3]);
    expect(m.activeShardCount()).toBe(2);
    expect(routable(m)).toEqual([2, 3]);
    expectBatchAgrees(m);
    // the last scaling is the re-entrant scaleDown at t = 2000
    scalingError(() => m.scaleUp(1), 'InCooldown');
    clock.t = 3000;
    expect(m.scaleUp(1)).toEqual([4]);
  });

  it('a throwing onShardCreated: every id still gets its call, the first error reaches the caller, the mapper stays consistent', async () => {
    const { mapper: m, clock } = await setup(1, 100, { maxShards: 8, cooldownMs: 1000 });
    const calls: number[] = [];
    m.setOnShardCreated((id) => {
      calls.push(id);
      throw new Error(`boom ${id}`);
    });
    expect(() => m.scaleUp(3)).toThrow('boom 1');
    expect(calls).toEqual([1, 2, 3]);
    expect(m.activeShardCount()).toBe(4);
    expect(m.totalShardCount()).toBe(4);
    for (const id of [1, 2, 3]) expect(m.shardState(id)).toBe('active');
    expect(routable(m)).toEqual([0, 1, 2, 3]);
    expectBatchAgrees(m);
    // the scaling happened, so it was stamped
    scalingError(() => m.scaleUp(1), 'InCooldown');
    clock.t = 1000;
    m.setOnShardCreated(undefined);
    expect(m.scaleUp(1)).toEqual([4]); // no id lost or reused

    // activate with a throwing callback
    m.setOnShardCreated(() => {
      throw new TypeError('nope');
    });
    clock.t = 2000;
    m.scaleUpProvisioning(1); // 5
    expect(() => m.activate(5)).toThrow(TypeError);
    expect(m.shardState(5)).toBe('active');
    expect(m.activeShardCount()).toBe(6);
    expect(m.activate(5)).toBe(false);
    expect(routable(m)).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('a throwing onShardRemoved: all stopped shards get the call, the error propagates, states are final', async () => {
    const { mapper: m, clock } = await setup(4, 100, { maxShards: 8 }, { drainGraceMs: 0 });
    const calls: number[] = [];
    m.setOnShardRemoved((id) => {
      calls.push(id);
      if (id === 1) throw new Error('removed-cb');
    });
    m.drainSpecific(1);
    m.drainSpecific(2);
    clock.t = 1;
    expect(() => m.finalizeDraining()).toThrow('removed-cb');
    expect(calls).toEqual([1, 2]);
    expect(m.shardState(1)).toBe('stopped');
    expect(m.shardState(2)).toBe('stopped');
    expect(m.finalizeDraining()).toEqual([]);
    expect(calls).toEqual([1, 2]);
    expect(m.removeStoppedShards()).toEqual([1, 2]);
    expect(m.allShardIds()).toEqual([0, 3]);
    expect(m.activeShardCount()).toBe(2);
    expect(routable(m)).toEqual([0, 3]);
  });
});
