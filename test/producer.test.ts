// The producer side (src/producer.ts): push, pushBatch's three forms, pushFixed, and every
// backpressure mode at a full ring, on one thread with poll() (threads: test/kills.test.ts).
import { describe, expect, it } from 'vitest';
import { BackpressureError, ProducerDetachedError, ShardManager, ShardProducer } from 'shard-mapper';

const text = (records: Uint8Array[]) => records.map((r) => new TextDecoder().decode(r));

describe('pushBatch', () => {
  it('pushBatch takes (keys, payloads), [key, payload] pairs or { key, payload } objects', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 16 });
    expect(m.pushBatch(new Uint32Array([1, 2]), ['a', new Uint8Array([98])])).toBe(2);
    expect(m.pushBatch([['k1', 'c'], [3, 'd']])).toBe(2);
    expect(m.pushBatch([{ key: 'k2', payload: 'e' }, { hash: 4, payload: 'f' }])).toBe(2);
    expect(text(m.poll(0))).toEqual(['a', 'b', 'c', 'd', 'e', 'f']);
    expect(() => m.pushBatch([1, 2], ['only one'])).toThrow(/2 keys but 1 payloads/);
    expect(() => m.pushBatch([{ nope: 1 }] as never)).toThrow(/events\[0\]/);
    expect(m.stats().pushed).toBe(6);
  });
});

describe('backpressure at a full ring', () => {
  const fill = async (backpressure: Parameters<typeof ShardManager.create>[0]['backpressure'], policy = {}) => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 4, backpressure, policy });
    return m;
  };

  it('dropNewest returns false for the newest and counts it', async () => {
    const m = await fill({ kind: 'dropNewest' });
    expect([1, 2, 3, 4, 5, 6].map((i) => m.push(i, `n${i}`))).toEqual([true, true, true, true, false, false]);
    expect(m.stats().drops).toEqual({ newest: 2, oldest: 0, sampled: 0, refused: 0, moving: 0 });
    expect(text(m.poll(0))).toEqual(['n1', 'n2', 'n3', 'n4']);
  });

  it('dropOldest evicts the oldest records to make room', async () => {
    const m = await fill({ kind: 'dropOldest' });
    expect([1, 2, 3, 4, 5, 6].map((i) => m.push(i, `o${i}`))).toEqual([true, true, true, true, true, true]);
    expect(m.stats()).toMatchObject({ pushed: 6, dropped: 2, drops: { oldest: 2 } });
    expect(text(m.poll(0))).toEqual(['o3', 'o4', 'o5', 'o6']);
    expect(m.stats()).toMatchObject({ delivered: 4, inFlight: 0 });
  });

  it('failProducer (the default) throws BackpressureError and writes nothing', async () => {
    const m = await fill(undefined);
    for (let i = 1; i <= 4; i++) m.push(i, `f${i}`);
    let error: unknown;
    try { m.push(5, 'f5'); } catch (e) { error = e; }
    expect(error).toBeInstanceOf(BackpressureError);
    expect((error as BackpressureError).shardId).toBe(0);
    expect((error as Error).message).toMatch(/shard 0.*full/);
    expect(m.ringLength(0)).toBe(4);
    expect(m.stats().drops.refused).toBe(1);
    // A refusal is not a drop: the caller kept the event (stats().dropped counts only what the package discarded).
    expect(m.stats()).toMatchObject({ dropped: 0 });
    expect(m.stats().shards[0]).toMatchObject({ dropped: 0 });
    expect(text(m.poll(0))).toEqual(['f1', 'f2', 'f3', 'f4']);
    // pushBatch: the accepted prefix stays, the error says how many.
    const m2 = await fill(undefined);
    let batchError: BackpressureError | undefined;
    try { m2.pushBatch([1, 2, 3, 4, 5, 6], ['a', 'b', 'c', 'd', 'e', 'f']); } catch (e) { batchError = e as BackpressureError; }
    expect(batchError?.accepted).toBe(4);
    expect(text(m2.poll(0))).toEqual(['a', 'b', 'c', 'd']);
  });

  it('sample keeps 1 in rate past the fill threshold, and drops the newest when full', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, backpressure: { kind: 'sample', rate: 3 }, policy: { fillRatioThreshold: 0.5 } });
    const accepted = Array.from({ length: 20 }, (_, i) => m.push(i, `s${i}`));
    // 0..4 accepted (fill passes 0.5 once the ring holds 5), then 1 in 3 until full.
    expect(accepted.slice(0, 5)).toEqual([true, true, true, true, true]);
    expect(m.ringLength(0)).toBe(8);
    const s = m.stats();
    expect(s.pushed).toBe(8);
    expect(s.drops.sampled + s.drops.newest).toBe(12);
    expect(s.drops.sampled).toBeGreaterThan(0);
    expect(s.drops.newest).toBeGreaterThan(0);
  });

  it('pushBatch takes what fits as one run and applies the mode to the rest, in order', async () => {
    const batch = (m: ShardManager, from: number, n: number) =>
      m.pushBatch(Array.from({ length: n }, () => 7), Array.from({ length: n }, (_, i) => `r${from + i}`));
    const newest = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, backpressure: { kind: 'dropNewest' } });
    expect(batch(newest, 0, 5)).toBe(5);
    expect(batch(newest, 5, 6)).toBe(3); // 3 fit, 3 dropped
    expect(newest.stats().drops.newest).toBe(3);
    expect(text(newest.poll(0))).toEqual(['r0', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7']);

    const oldest = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, backpressure: { kind: 'dropOldest' } });
    expect(batch(oldest, 0, 5)).toBe(5);
    expect(batch(oldest, 5, 6)).toBe(6); // 3 in the run, 3 more by evicting r0..r2
    expect(oldest.stats().drops.oldest).toBe(3);
    expect(text(oldest.poll(0))).toEqual(['r3', 'r4', 'r5', 'r6', 'r7', 'r8', 'r9', 'r10']);

    const fail = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8 });
    expect(batch(fail, 0, 6)).toBe(6);
    expect(() => batch(fail, 6, 4)).toThrow(expect.objectContaining({ name: 'BackpressureError', accepted: 2 }));
    expect(text(fail.poll(0))).toEqual(['r0', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7']);
    expect(fail.stats()).toMatchObject({ pushed: 8, delivered: 8 });
  });

  it('pushFixed pushes fixed-size records in bulk, in order, across scratch chunks, with every mode', async () => {
    const records = (from: number, n: number, size = 12) => {
      const out = new Uint8Array(n * size);
      const v = new DataView(out.buffer);
      for (let i = 0; i < n; i++) v.setUint32(i * size, from + i, true);
      return out;
    };
    const seqs = (rs: Uint8Array[]) => rs.map((r) => new DataView(r.buffer, r.byteOffset).getUint32(0, true));
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 4096, maxPayloadBytes: 12 });
    expect(m.pushFixed(new Uint32Array(3000).fill(9), records(0, 3000), 12)).toBe(3000); // > one 16 KiB chunk
    const got = m.poll(0);
    expect(got.every((r) => r.length === 12)).toBe(true);
    expect(seqs(got)).toEqual(Array.from({ length: 3000 }, (_, i) => i));

    const newest = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, maxPayloadBytes: 12, backpressure: { kind: 'dropNewest' } });
    expect(newest.pushFixed(new Uint32Array(11), records(0, 11), 12)).toBe(8);
    expect(newest.stats().drops.newest).toBe(3);
    const oldest = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, maxPayloadBytes: 12, backpressure: { kind: 'dropOldest' } });
    expect(oldest.pushFixed(new Uint32Array(11), records(0, 11), 12)).toBe(11);
    expect(seqs(oldest.poll(0))).toEqual([3, 4, 5, 6, 7, 8, 9, 10]);
    const fail = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, maxPayloadBytes: 12 });
    expect(() => fail.pushFixed(new Uint32Array(11), records(0, 11), 12)).toThrow(expect.objectContaining({ name: 'BackpressureError', accepted: 8 }));
    expect(seqs(fail.poll(0))).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);

    expect(() => m.pushFixed([1] as never, records(0, 1), 12)).toThrow(/hashes must be a Uint32Array/);
    expect(() => m.pushFixed(new Uint32Array(2), records(0, 1), 12)).toThrow(/records has 12 bytes, 2 hashes × recordSize 12 needs 24/);
    expect(() => m.pushFixed(new Uint32Array(1), new Uint8Array(13), 13)).toThrow(/recordSize must be an integer in \[1, 12\]/);
    expect(m.stats().pushed).toBe(3000);
  });

  it('refuses bad backpressure modes', async () => {
    await expect(ShardManager.create({ initialShards: 1, ringBufferCapacity: 4, backpressure: { kind: 'sample', rate: 0 } })).rejects.toThrow(/rate/);
    await expect(ShardManager.create({ initialShards: 1, ringBufferCapacity: 4, backpressure: { kind: 'nope' } as never })).rejects.toThrow(/backpressure.kind/);
  });
});

describe('ShardProducer.detach()', () => {
  it('a detached producer refuses to push: the lane it gave back is already the next producer’s (pushes through it used to land in that lane and mix two threads’ bytes)', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 64, maxThreads: 2 });
    const first = await ShardProducer.attach(m.producerHandle());
    first.detach();
    const second = await ShardProducer.attach(m.producerHandle()); // takes the lane `first` gave back
    // `second` stages an event; `first` pushing between its staging and its call would have
    // pushed `second`'s bytes, or overwritten them. Now it cannot push at all.
    expect(() => first.push(1, 'AAAA')).toThrow(ProducerDetachedError);
    expect(() => first.pushBatch([1, 2], ['AAAA', 'AAAA'])).toThrow(/ShardProducer\.pushBatch: this producer was detached/);
    expect(() => first.pushFixed(new Uint32Array([1]), new Uint8Array(4), 4)).toThrow(/ShardProducer\.pushFixed: this producer was detached/);
    // empty calls too: every call after detach() says so, not only those with events
    expect(() => first.pushBatch([], [])).toThrow(ProducerDetachedError);
    expect(() => first.pushFixed(new Uint32Array(0), new Uint8Array(0), 4)).toThrow(ProducerDetachedError);
    expect(m.stats().pushed).toBe(0);
    expect(second.push(1, 'BBBB')).toBe(true);
    expect(m.poll(0).map((r) => new TextDecoder().decode(r))).toEqual(['BBBB']);
    second.detach();
    await m.close();
  });

  it('a second detach() gives nothing back: it used to free the lane again while another producer held it, so two producers shared one', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 64, maxThreads: 2 }); // the manager's lane + one
    const first = await ShardProducer.attach(m.producerHandle());
    first.detach();
    const second = await ShardProducer.attach(m.producerHandle());
    first.detach();
    await expect(ShardProducer.attach(m.producerHandle())).rejects.toThrow(/lane/);
    second.detach();
    const third = await ShardProducer.attach(m.producerHandle()); // the lane is free again
    third.detach();
    await m.close();
  });
});

describe('push-latency sampling (contract §6: 1 push in 64)', () => {
  // A marker sample divisible by every count up to 20 reveals how many samples the pushes
  // took: avgPushLatencyNs = marker / (samples + 1) exactly (uncontended pushes sample 0 ns).
  const MARKER = 232_792_560;
  const samplesTaken = async (n: number, batch: boolean) => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 1024, maxPayloadBytes: 16 });
    m.mapper.collectMetrics(); // a fresh window: the count starts at its first event
    const keys = Array.from({ length: n }, (_, i) => i);
    if (batch) expect(m.pushBatch(keys, keys.map(() => 'x'))).toBe(n);
    else for (const k of keys) expect(m.push(k, 'x')).toBe(true);
    m.mapper.metricsCollector(0)!.recordLatencySample(MARKER);
    const metrics = m.mapper.collectMetrics()[0]!;
    expect(metrics.eventRate).toBe(n);
    await m.close();
    return MARKER / metrics.avgPushLatencyNs - 1;
  };
  for (const n of [1, 63, 64, 65, 128, 129, 640, 1000]) {
    it(`${n} events: ${Math.ceil(n / 64)} samples by push and by pushBatch (a batch run took one sample however long it was)`, async () => {
      expect(await samplesTaken(n, false)).toBe(Math.ceil(n / 64));
      expect(await samplesTaken(n, true)).toBe(Math.ceil(n / 64));
    });
  }
});
