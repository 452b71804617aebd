// Shard ids are never reused and stop at 65534 (the contract), so a long-running manager
// whose shard count goes up and down spends them for good: shardIdsLeft() says how many are
// left. And a scaling loop that fails the same way every window (ids used up, no memory slot
// left) writes that to the console once, not once per metrics window.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BackpressureError, ShardManager, ShardMapper } from 'shard-mapper';

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

describe('shard ids', () => {
  it('shardIdsLeft() counts the ids a mapper can still hand out; removing a shard gives none back', async () => {
    const clock = { t: 0 };
    const mapper = await ShardMapper.create(4, 1024, { maxShards: 16, cooldownMs: 1 }, { clock: () => clock.t, drainGraceMs: 10 });
    expect(mapper.shardIdsLeft()).toBe(65535 - 4);
    expect(mapper.scaleUp(2)).toEqual([4, 5]);
    expect(mapper.shardIdsLeft()).toBe(65535 - 6);
    mapper.drainSpecific(5);
    clock.t += 1000;
    mapper.finalizeDraining();
    expect(mapper.removeStoppedShards()).toEqual([5]);
    expect(mapper.totalShardCount()).toBe(5);
    expect(mapper.shardIdsLeft()).toBe(65535 - 6);
    expect(mapper.scaleUp(1)).toEqual([6]); // 5 is not handed out again
  });
});

describe("start()'s loop on a failure that repeats every window", () => {
  it('logs it once while it repeats, and again after a pass that succeeded', async () => {
    const clock = { t: 0 };
    // Two memory slots for two shards: every scale-up fails (ShardCreationFailed), every window.
    const manager = await ShardManager.create({
      initialShards: 2,
      maxSlots: 2,
      ringBufferCapacity: 2,
      maxPayloadBytes: 16,
      policy: { minShards: 1, maxShards: 4, cooldownMs: 1000, scaleDownDelayMs: 3_600_000 },
      clock: () => clock.t,
    });
    try {
      for (let key = 0; key < 1000; key++) {
        try {
          manager.push((key * 2654435761) >>> 0, 'x');
        } catch (error) {
          if (!(error instanceof BackpressureError)) throw error;
        }
      }
      clock.t += 2000;
      expect(() => manager.tick()).toThrow(/ShardCreationFailed|slot/i); // the failure is real
      const errors = vi.spyOn(console, 'error').mockImplementation(() => {});
      vi.useFakeTimers();
      const window = manager.mapper.policy().metricsWindowMs;
      manager.start();
      for (let w = 0; w < 10; w++) {
        clock.t += 2000;
        vi.advanceTimersByTime(window);
      }
      expect(errors).toHaveBeenCalledTimes(1);
      expect(String(errors.mock.calls[0]![1])).toMatch(/ShardCreationFailed|slot/i);
      // The rings emptied: a pass succeeds (nothing to add); a later failure is news again.
      manager.poll(0);
      manager.poll(1);
      clock.t += 2000;
      vi.advanceTimersByTime(window);
      expect(errors).toHaveBeenCalledTimes(1);
      for (let key = 0; key < 1000; key++) {
        try {
          manager.push((key * 2654435761) >>> 0, 'x');
        } catch (error) {
          if (!(error instanceof BackpressureError)) throw error;
        }
      }
      for (let w = 0; w < 5; w++) {
        clock.t += 2000;
        vi.advanceTimersByTime(window);
      }
      expect(errors).toHaveBeenCalledTimes(2);
      manager.stop();
    } finally {
      vi.useRealTimers();
      await manager.close();
    }
  });
});
