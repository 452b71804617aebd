// ShardMetricsCollector (docs/CONTRACT.md §4), driven on the main thread with an injected clock.
import { describe, it, expect } from 'vitest';
import { type ShardMapper, ShardMetricsCollector } from 'shard-mapper';
import { SharedCore } from '../dist/core.js';
import { M_LATENCY, M_FLUSH } from '../dist/layout.generated.js';
import { setup } from './helpers/index.js';

const U32_MAX = 2 ** 32 - 1;

async function collectorOf(capacity = 100): Promise<{ c: ShardMetricsCollector; clock: { t: number }; mapper: ShardMapper }> {
  const { mapper, clock } = await setup(1, capacity, { maxShards: 4 });
  return { c: mapper.metricsCollector(0)!, clock, mapper };
}

const ZERO_WINDOW = { bufferLen: 0, fillRatio: 0, avgPushLatencyNs: 0, avgFlushLatencyUs: 0, eventRate: 0, draining: false, weight: 0 };

/** Read a (count, sum) word of a collector straight from the shared memory. */
function withPairWord<T>(c: ShardMetricsCollector, offset: number, fn: (word: BigUint64Array, index: number) => T): T {
  const handle = c.handle();
  const core = SharedCore.attachSync(handle.core);
  try {
    const addr = core.abi.slotAddress(handle.slot) + offset;
    expect(addr % 8).toBe(0);
    return fn(new BigUint64Array(core.memory.buffer), addr / 8);
  } finally {
    core.detach();
  }
}

describe('window counters and collectAndReset', () => {
  it('a fresh collector reads all zeros', async () => {
    const { c, clock } = await collectorOf();
    clock.t = 42;
    expect(c.collectAndReset()).toEqual({ shardId: 0, capacity: 100, lastUpdated: 42, ...ZERO_WINDOW });
    expect(c.shardId).toBe(0);
    expect(c.capacity).toBe(100);
  });

  it('counts events, averages with integer division, and stamps clock()', async () => {
    const { c, clock } = await collectorOf(8);
    c.recordBufferLen(3);
    c.recordPush(1);
    c.recordPush(2);
    c.recordLatencySample(2); // latency: 1 + 2 + 2 = 5 over 3 → 1
    c.recordEventOnly();
    c.recordFlush(10);
    c.recordFlush(11); // 21 / 2 → 10
    clock.t = 1234.5;
    const m = c.collectAndReset();
    expect(m).toEqual({
      shardId: 0,
      bufferLen: 3,
      capacity: 8,
      fillRatio: 3 / 8,
      avgPushLatencyNs: 1,
      avgFlushLatencyUs: 10,
      eventRate: 3,
      lastUpdated: 1234.5,
      draining: false,
      weight: expect.any(Number),
    });
  });

  it('collectAndReset zeroes the window (events and both pairs) but keeps the buffer length gauge', async () => {
    const { c } = await collectorOf(10);
    c.recordBufferLen(4);
    c.recordPush(9);
    c.recordFlush(9);
    c.recordEventOnly();
    const first = c.collectAndReset();
    expect(first.eventRate).toBe(2);
    expect(first.avgPushLatencyNs).toBe(9);
    expect(first.avgFlushLatencyUs).toBe(9);
    const second = c.collectAndReset();
    expect(second.eventRate).toBe(0);
    expect(second.avgPushLatencyNs).toBe(0);
    expect(second.avgFlushLatencyUs).toBe(0);
    expect(second.bufferLen).toBe(4);
    expect(second.fillRatio).toBe(0.4);
    // the next window counts from zero
    c.recordPush(3);
    const third = c.collectAndReset();
    expect(third.eventRate).toBe(1);
    expect(third.avgPushLatencyNs).toBe(3);
  });

  it('recordBufferLen is a gauge: the last value wins', async () => {
    const { c } = await collectorOf(10);
    c.recordBufferLen(7);
    c.recordBufferLen(2);
    expect(c.bufferLen()).toBe(2);
    expect(c.collectAndReset().bufferLen).toBe(2);
  });

  it('recordEventOnly bumps events but adds no latency sample; recordLatencySample adds no event', async () => {
    const { c } = await collectorOf();
    c.recordEventOnly();
    c.recordEventOnly();
    c.recordLatencySample(40);
    const m = c.collectAndReset();
    expect(m.eventRate).toBe(2);
    expect(m.avgPushLatencyNs).toBe(40); // one sample, not 40/3
    expect(c.pushesSinceDrainStart()).toBe(2);
  });

  it('fillRatio is 0 when the capacity is 0, whatever the length', async () => {
    const { c } = await collectorOf(0);
    c.recordBufferLen(5);
    const m = c.collectAndReset();
    expect(m.capacity).toBe(0);
    expect(m.bufferLen).toBe(5);
    expect(m.fillRatio).toBe(0);
    expect(Number.isNaN(m.weight)).toBe(false);
    expect(m.weight).toBe(0);
  });

  it('fillRatio may exceed 1 when the recorded length does (it is len / capacity)', async () => {
    const { c } = await collectorOf(4);
    c.recordBufferLen(6);
    expect(c.collectAndReset().fillRatio).toBe(1.5);
  });
});

describe('weight', () => {
  it('= fillRatio·100 + avgPushLatencyNs/10 + eventRate/1e6 (with the integer average)', async () => {
    const { c } = await collectorOf(200);
    c.recordBufferLen(50); // 0.25 → 25
    c.recordPush(30);
    c.recordPush(41); // avg 71/2 → 35 → 3.5 (not 3.55)
    c.recordEventOnly();
    c.recordEventOnly();
    c.recordEventOnly(); // 5 events → 0.000005
    const m = c.collectAndReset();
    expect(m.avgPushLatencyNs).toBe(35);
    expect(m.eventRate).toBe(5);
    expect(m.weight).toBeCloseTo(28.500005, 9);
  });

  it('flush latency does not enter the weight', async () => {
    const { c } = await collectorOf(100);
    c.recordFlush(5000);
    expect(c.collectAndReset().weight).toBe(0);
  });

  it('event rate alone: 100000 events weigh exactly 0.1', async () => {
    const { c } = await collectorOf(100);
    for (let i = 0; i < 100_000; i++) c.recordEventOnly();
    expect(c.collectAndReset().weight).toBe(0.1);
  });

  it('a draining shard weighs Number.MAX_VALUE, whatever its metrics; undraining restores the formula', async () => {
    const { c } = await collectorOf(100);
    c.setDraining(true);
    expect(c.isDraining()).toBe(true);
    expect(c.collectAndReset().weight).toBe(Number.MAX_VALUE);
    c.recordBufferLen(10);
    c.recordPush(20);
    const m = c.collectAndReset();
    expect(m.weight).toBe(Number.MAX_VALUE);
    expect(m.fillRatio).toBe(0.1); // the other fields are still reported
    expect(m.avgPushLatencyNs).toBe(20);
    c.setDraining(false);
    expect(c.isDraining()).toBe(false);
    c.recordPush(20);
    expect(c.collectAndReset().weight).toBeCloseTo(10 + 2 + 1e-6, 12);
  });
});

describe('(count, sum) pairs saturate at 2^32-1', () => {
  it('a sample above 2^32-1 is clamped to 2^32-1 (not wrapped)', async () => {
    const { c } = await collectorOf();
    c.recordLatencySample(2 ** 32 + 5);
    c.recordFlush(1e20);
    const m = c.collectAndReset();
    expect(m.avgPushLatencyNs).toBe(U32_MAX);
    expect(m.avgFlushLatencyUs).toBe(U32_MAX);
    c.recordLatencySample(Infinity);
    c.recordFlush(U32_MAX);
    const n = c.collectAndReset();
    expect(n.avgPushLatencyNs).toBe(U32_MAX);
    expect(n.avgFlushLatencyUs).toBe(U32_MAX);
  });

  it('the sum saturates instead of carrying into the count', async () => {
    const { c } = await collectorOf();
    c.recordLatencySample(U32_MAX);
    c.recordLatencySample(1);
    c.recordLatencySample(U32_MAX);
    c.recordFlush(U32_MAX - 1);
    c.recordFlush(7);
    const m = c.collectAndReset();
    expect(m.avgPushLatencyNs).toBe(Math.floor(U32_MAX / 3));
    expect(m.avgFlushLatencyUs).toBe(Math.floor(U32_MAX / 2));
  });

  it('the count saturates at 2^32-1 (word primed near the limit in shared memory)', async () => {
    const { c } = await collectorOf();
    for (const [offset, record] of [
      [M_LATENCY, (v: number) => c.recordLatencySample(v)],
      [M_FLUSH, (v: number) => c.recordFlush(v)],
    ] as const) {
      withPairWord(c, offset, (w, i) => {
        w[i] = ((2n ** 32n - 2n) << 32n) | 10n; // count 2^32-2, sum 10
      });
      record(5); // count 2^32-1, sum 15
      record(5); // count stays, sum 20
      record(5);
      const [count, sum] = withPairWord(c, offset, (w, i) => [Number(w[i]! >> 32n), Number(w[i]! & 0xffffffffn)]);
      expect(count).toBe(U32_MAX);
      expect(sum).toBe(25);
    }
    const m = c.collectAndReset();
    expect(m.avgPushLatencyNs).toBe(0); // 25 / (2^32-1)
    expect(m.avgFlushLatencyUs).toBe(0);
    // both words were swapped to zero
    expect(withPairWord(c, M_LATENCY, (w, i) => w[i])).toBe(0n);
    expect(withPairWord(c, M_FLUSH, (w, i) => w[i])).toBe(0n);
  });

  it('fractional samples are truncated (implementation choice)', async () => {
    const { c } = await collectorOf();
    c.recordLatencySample(2.9);
    c.recordLatencySample(2.9);
    expect(c.collectAndReset().avgPushLatencyNs).toBe(2);
  });
});

describe('bad samples', () => {
  const BAD: unknown[] = [NaN, -1, -Infinity, -0.5, 'x', '5', undefined, null, 5n, {}];
  const methods: [string, (c: ShardMetricsCollector, v: unknown) => void][] = [
    ['recordBufferLen', (c, v) => c.recordBufferLen(v as number)],
    ['recordPush', (c, v) => c.recordPush(v as number)],
    ['recordLatencySample', (c, v) => c.recordLatencySample(v as number)],
    ['recordFlush', (c, v) => c.recordFlush(v as number)],
  ];
  for (const [name, call] of methods) {
    it(`${name} throws RangeError and changes nothing`, async () => {
      const { c } = await collectorOf(10);
      c.recordBufferLen(2);
      for (const v of BAD) expect(() => call(c, v), `${name}(${String(v)})`).toThrow(RangeError);
      const m = c.collectAndReset();
      expect(m).toMatchObject({ bufferLen: 2, eventRate: 0, avgPushLatencyNs: 0, avgFlushLatencyUs: 0 });
      expect(c.pushesSinceDrainStart()).toBe(0);
      // and a later good sample is counted alone
      call(c, 4);
      const n = c.collectAndReset();
      if (name === 'recordBufferLen') expect(n.bufferLen).toBe(4);
      if (name === 'recordPush') expect([n.eventRate, n.avgPushLatencyNs]).toEqual([1, 4]);
      if (name === 'recordLatencySample') expect([n.eventRate, n.avgPushLatencyNs]).toEqual([0, 4]);
      if (name === 'recordFlush') expect(n.avgFlushLatencyUs).toBe(4);
    });
  }

  it('setDraining refuses a non-boolean (TypeError) and keeps its flag', async () => {
    const { c } = await collectorOf();
    for (const v of [1, 0, 'true', undefined]) expect(() => c.setDraining(v as unknown as boolean)).toThrow(TypeError);
    expect(c.isDraining()).toBe(false);
  });
});

describe('draining flag and pushes since drain start', () => {
  it('setDraining(true) zeroes pushesSinceDrainStart, then counts pushes from there', async () => {
    const { c } = await collectorOf();
    c.recordPush(1);
    c.recordEventOnly();
    c.recordEventOnly();
    expect(c.pushesSinceDrainStart()).toBe(3);
    c.setDraining(true);
    expect(c.isDraining()).toBe(true);
    expect(c.pushesSinceDrainStart()).toBe(0);
    c.recordPush(1);
    c.recordEventOnly();
    expect(c.pushesSinceDrainStart()).toBe(2);
    c.recordLatencySample(3); // a sample alone is not a push
    c.recordFlush(3);
    expect(c.pushesSinceDrainStart()).toBe(2);
  });

  it('collectAndReset does not reset pushesSinceDrainStart, and the window keeps its events', async () => {
    const { c } = await collectorOf();
    c.setDraining(true);
    c.recordEventOnly();
    c.recordEventOnly();
    expect(c.collectAndReset().eventRate).toBe(2);
    expect(c.pushesSinceDrainStart()).toBe(2);
    c.recordEventOnly();
    expect(c.pushesSinceDrainStart()).toBe(3);
    expect(c.collectAndReset().eventRate).toBe(1);
  });

  it('setDraining(true) again restarts the count; setDraining(false) keeps it', async () => {
    const { c } = await collectorOf();
    c.setDraining(true);
    c.recordEventOnly();
    c.setDraining(false);
    expect(c.isDraining()).toBe(false);
    expect(c.pushesSinceDrainStart()).toBe(1);
    c.setDraining(true);
    expect(c.pushesSinceDrainStart()).toBe(0);
  });

  it('zeroing the drain counter leaves the window events alone', async () => {
    const { c } = await collectorOf();
    c.recordEventOnly();
    c.recordEventOnly();
    c.setDraining(true);
    expect(c.collectAndReset().eventRate).toBe(2);
  });
});

describe('collectors of different shards are independent', () => {
  it('recording on one shard does not show on another', async () => {
    const { mapper } = await setup(3, 10, { maxShards: 4 });
    const [a, b, c] = [0, 1, 2].map((id) => mapper.metricsCollector(id)!);
    a.recordBufferLen(5);
    a.recordPush(7);
    b.recordFlush(9);
    c.setDraining(true);
    expect(a.collectAndReset()).toMatchObject({ shardId: 0, bufferLen: 5, eventRate: 1, avgPushLatencyNs: 7, avgFlushLatencyUs: 0 });
    expect(b.collectAndReset()).toMatchObject({ shardId: 1, bufferLen: 0, eventRate: 0, avgPushLatencyNs: 0, avgFlushLatencyUs: 9, weight: 0 });
    expect(c.collectAndReset()).toMatchObject({ shardId: 2, bufferLen: 0, weight: Number.MAX_VALUE });
    expect(a.isDraining()).toBe(false);
  });

  it('a collector attached through its handle (same thread) sees and feeds the same counters', async () => {
    const { c, clock } = await collectorOf(10);
    const other = await ShardMetricsCollector.attach(c.handle(), () => clock.t + 1000);
    expect(other.shardId).toBe(0);
    expect(other.capacity).toBe(10);
    other.recordPush(6);
    other.recordBufferLen(5);
    c.recordPush(8);
    const m = c.collectAndReset();
    expect(m).toMatchObject({ eventRate: 2, avgPushLatencyNs: 7, bufferLen: 5, fillRatio: 0.5, lastUpdated: 0 });
    expect(other.collectAndReset()).toMatchObject({ eventRate: 0, bufferLen: 5, lastUpdated: 1000 });
  });
});
