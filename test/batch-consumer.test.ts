// Batch consumers (one RecordBatch per call, no view per record) on worker threads, and the
// in-thread forms: pollBatch (a RecordBatch read in place) and pollInto (a caller's buffer).
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { Worker } from 'node:worker_threads';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ShardManager, RecordBatch, type ManagerEvent } from 'shard-mapper';
import { churnShards, DeliveryLog, seqPayload, pushWithRetry, sleep, expectExactlyOnce, onThisLogsChannel } from './helpers/delivery.js';
import { prng, withEnv } from './helpers/index.js';

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url);
const batchModule = () => onThisLogsChannel(fixture('seq-batch-consumer.mjs'));

let log: DeliveryLog | undefined;
afterEach(() => log?.close());

/** Counts the fixture's reports of batches that wrapped past the end of a ring. */
function countWraps(channelName: string): { wrapped: number; close(): void } {
  const channel = new BroadcastChannel(channelName);
  const out = { wrapped: 0, close: () => channel.close() };
  channel.onmessage = (e: MessageEvent) => { if ((e.data as { regions: number }).regions === 2) out.wrapped++; };
  return out;
}

function seqOf(record: Uint8Array): number {
  return new DataView(record.buffer, record.byteOffset, record.byteLength).getUint32(4, true);
}

describe('batch consumers on worker threads (options.consumer.batch: true)', () => {
  it('delivers RecordBatches exactly once, in push order, while shards are added, drained and removed, with wrapping batches', async () => {
    const random = prng(0xba7c0001);
    log = new DeliveryLog();
    const wraps = countWraps(log.channelName);
    try {
      const m = await ShardManager.create({
        initialShards: 2, ringBufferCapacity: 256, policy: { minShards: 1, maxShards: 5, autoScale: false },
        consumer: { module: batchModule(), threads: 2, batchSize: 48, batch: true }, // 48 does not divide 256: batches wrap
      });
      const total = 60_000;
      const removals: Promise<void>[] = [];
      let ops = 0;
      for (let seq = 0; seq < total; seq++) {
        // mixed sizes (16 and 24 bytes), so some batches have a recordSize and some do not
        await pushWithRetry(m, Math.floor(random() * 2 ** 32), seqPayload(0, seq, (seq >> 9) % 2 === 0 ? 16 : 24));
        if (seq % 3000 === 2999) {
          ops += await churnShards(m, random, 5, removals);
        }
      }
      await Promise.all(removals);
      await m.close();
      await log.waitFor(total);
      expect(ops).toBeGreaterThan(10);
      expect(m.stats()).toMatchObject({ pushed: total, delivered: total, inFlight: 0 });
      expect(log.received).toBe(total);
      expectExactlyOnce(log, 1, total); // its order check also catches records whose views disagreed (corrupt)
      expect(wraps.wrapped).toBeGreaterThan(0);
    } finally {
      wraps.close();
    }
  });

  it('a batch consumer thread that dies mid-stream, and one that throws every 7th batch: each batch comes again, nothing lost or duplicated', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shard-mapper-batch-crash-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    await withEnv({ SM_TEST_CRASH_MARKER: join(dir, 'crashed'), SM_TEST_CRASH_AFTER: '25', SM_TEST_THROW_EVERY: '7' }, async () => {
      log = new DeliveryLog();
      const events: ManagerEvent[] = [];
      const errors: Error[] = [];
      const m = await ShardManager.create({
        initialShards: 3, ringBufferCapacity: 128, policy: { maxShards: 4, autoScale: false },
        consumer: { module: batchModule(), threads: 2, batchSize: 16, batch: true },
        onEvent: (e) => { if (e.type === 'consumerRestarted') events.push(e); },
        onConsumerError: (e) => errors.push(e),
      });
      const total = 20_000;
      for (let seq = 0; seq < total; seq++) await pushWithRetry(m, seq * 2654435761, seqPayload(0, seq));
      await log.waitFor(total);
      await m.close();
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ exitCode: 7 });
      expect(errors.length).toBeGreaterThan(0);
      expect(errors[0]!.message).toMatch(/refused on purpose/);
      expectExactlyOnce(log, 1, total);
      expect(m.stats()).toMatchObject({ pushed: total, delivered: total, inFlight: 0 });
    });
  });

  it('dropOldest with a slow batch consumer: what is delivered is in order and at most once, and delivered + evicted = pushed', async () => {
    await withEnv({ SM_TEST_SLOW_MS: '1' }, async () => {
      log = new DeliveryLog();
      const m = await ShardManager.create({
        initialShards: 1, ringBufferCapacity: 64, backpressure: { kind: 'dropOldest' }, policy: { maxShards: 1, autoScale: false },
        consumer: { module: batchModule(), threads: 1, batchSize: 24, batch: true },
      });
      const total = 20_000;
      let accepted = 0; // a push finding the oldest record in the consumer's hands is dropped instead (newest)
      for (let seq = 0; seq < total; seq++) {
        if (m.push(7, seqPayload(0, seq))) accepted++;
        // Bursts of 500 into an empty ring: the consumer is parked when a burst starts, so the
        // burst overflows the ring before it holds a batch and evicts (while it holds one, a
        // push to the full ring is dropped as the newest, as docs/architecture.md says).
        if (seq % 500 === 499) while (m.ringLength(0) > 0) await sleep(1);
      }
      await m.close();
      const s = m.stats();
      await log.waitFor(s.delivered);
      expect(s.drops.oldest).toBeGreaterThan(0); // the ring did overflow
      expect(s.pushed).toBe(accepted);
      expect(s.delivered + s.drops.oldest).toBe(accepted);
      expect(log.received).toBe(s.delivered);
      const { duplicated } = log.problems(1, total);
      expect(duplicated).toBe(0);
      expect(log.outOfOrder).toEqual([]);
    });
  });

  it('serveConsumer(fn, { batch: true }) in a worker the application starts', async () => {
    log = new DeliveryLog();
    const m = await ShardManager.create({
      initialShards: 2, ringBufferCapacity: 128, policy: { maxShards: 2, autoScale: false },
      consumer: { worker: () => new Worker(fixture('serve-batch-consumer.mjs')), threads: 1, batchSize: 32 },
    });
    const total = 5000;
    for (let seq = 0; seq < total; seq++) await pushWithRetry(m, seq * 2654435761, seqPayload(0, seq));
    await m.close();
    await log.waitFor(total);
    expectExactlyOnce(log, 1, total);
  });

  it('refuses a consumer.batch that is not a boolean, creating nothing', async () => {
    await expect(ShardManager.create({
      initialShards: 1, ringBufferCapacity: 16, consumer: { module: batchModule(), threads: 1, batch: 'yes' as unknown as boolean },
    })).rejects.toThrow(/options\.consumer\.batch must be a boolean, got/);
  });
});

describe('pollBatch: a RecordBatch read in place on this thread', () => {
  it('gives records in push order as offsets and lengths, one region, or two when the batch wraps the ring', async () => {
    // 8 records of at most 24 bytes in a 192-byte payload area
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, maxPayloadBytes: 24, ringBufferBytes: 192, backpressure: { kind: 'failProducer' }, policy: { maxShards: 1 } });
    expect(m.ringBufferBytes).toBe(192);
    const id = m.mapper.activeShardIds()[0]!;
    let next = 0;
    const seen: number[] = [];
    const shapes: { length: number; regions: number[]; regionBytes: number[]; recordSize: number; stride: number }[] = [];
    const take = (max: number) => m.pollBatch(id, (batch, shardId) => {
      expect(batch).toBeInstanceOf(RecordBatch);
      expect(shardId).toBe(id);
      const viaOffsets: number[] = [];
      for (let i = 0; i < batch.length; i++) {
        viaOffsets.push(new DataView(batch.bytes.buffer, batch.bytes.byteOffset + batch.offsets[i]!, batch.lengths[i]).getUint32(4, true));
      }
      const viaRegions: number[] = [];
      let k = 0;
      for (const r of batch.regions) {
        const first = batch.offsets[k]!;
        for (let j = 0; j < r.count; j++, k++) viaRegions.push(seqOf(r.bytes.subarray(batch.offsets[k]! - first)));
      }
      expect(viaRegions).toEqual(viaOffsets);
      expect([...batch].map(seqOf)).toEqual(viaOffsets);
      expect(batch.toArray().map((r) => r.length)).toEqual(Array.from(batch.lengths.subarray(0, batch.length)));
      shapes.push({
        length: batch.length, regions: batch.regions.map((r) => r.count), regionBytes: batch.regions.map((r) => r.bytes.length),
        recordSize: batch.recordSize, stride: batch.stride,
      });
      seen.push(...viaOffsets);
    }, max);
    for (let i = 0; i < 6; i++) m.push(1, seqPayload(0, next++)); // 16 bytes each: bytes 0-96
    expect(take(5)).toBe(5); // indexes 0-4
    // 6-8: 16 bytes (96-144); 9, 10: 20 bytes in 24 (144-168, 168-192: exactly up to the end);
    // 11: does not fit before the end, so it starts the next lap at offset 0
    for (let i = 0; i < 6; i++) m.push(1, seqPayload(0, next++, i < 3 ? 16 : 20));
    expect(take(100)).toBe(7); // index 5 … 11
    expect(take(100)).toBe(0);
    expect(seen).toEqual(Array.from({ length: 12 }, (_, i) => i));
    expect(shapes).toEqual([
      { length: 5, regions: [5], regionBytes: [4 * 16 + 16], recordSize: 16, stride: 16 },
      // records 5 … 10 from byte 80 to 188 | record 11 at 0; sizes 16 and 20
      { length: 7, regions: [6, 1], regionBytes: [188 - 80, 20], recordSize: 0, stride: 0 },
    ]);
    expect(m.stats()).toMatchObject({ pushed: 12, delivered: 12 });
  });

  it('a throwing function leaves the batch first in line; a promise is refused the same way; bad arguments change nothing', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 16, policy: { maxShards: 1 } });
    const id = m.mapper.activeShardIds()[0]!;
    for (let i = 0; i < 4; i++) m.push(1, seqPayload(0, i));
    expect(() => m.pollBatch(id, () => { throw new Error('boom'); })).toThrow('boom');
    expect(() => m.pollBatch(id, (async () => {}) as unknown as () => void)).toThrow(/must be synchronous/);
    expect(() => m.pollBatch(id, 'x' as unknown as () => void)).toThrow(/consume must be a function/);
    expect(() => m.pollBatch(99, () => {})).toThrow(/unknown shard 99/);
    expect(() => m.pollBatch(id, () => {}, 0)).toThrow(/max/);
    expect(m.ringLength(id)).toBe(4);
    const got: number[] = [];
    expect(m.pollBatch(id, (b) => { for (const r of b) got.push(seqOf(r)); })).toBe(4);
    expect(got).toEqual([0, 1, 2, 3]);
    expect(m.stats()).toMatchObject({ pushed: 4, delivered: 4 });
  });
});

describe('pollInto: records copied into the caller\'s buffer', () => {
  it('fills target and lengths in push order, across the ring\'s wrap, taking only whole records that fit', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, maxPayloadBytes: 64, policy: { maxShards: 1 } });
    const id = m.mapper.activeShardIds()[0]!;
    const target = new Uint8Array(100);
    const lengths = new Uint32Array(16);
    for (let i = 0; i < 6; i++) m.push(1, seqPayload(0, i, 16));
    expect(m.pollInto(id, target, lengths)).toBe(6); // 96 bytes
    for (let i = 0; i < 6; i++) expect(seqOf(target.subarray(16 * i, 16 * i + 16))).toBe(i);
    expect(Array.from(lengths.subarray(0, 6))).toEqual([16, 16, 16, 16, 16, 16]);
    // indexes 6 … 12 wrap at 8; sizes 8 … 56 bytes
    const sizes = [8, 40, 24, 56, 16, 32, 48];
    sizes.forEach((size, k) => m.push(1, seqPayload(0, 6 + k, size)));
    lengths.fill(0);
    expect(m.pollInto(id, target, lengths)).toBe(3); // 8 + 40 + 24 = 72; the 56-byte record does not fit
    expect(Array.from(lengths.subarray(0, 4))).toEqual([8, 40, 24, 0]);
    expect([0, 8, 48].map((at) => seqOf(target.subarray(at)))).toEqual([6, 7, 8]);
    expect(m.ringLength(id)).toBe(4); // the rest stays, first in line
    const small = new Uint32Array(2);
    expect(m.pollInto(id, target, small)).toBe(2); // at most lengths.length records
    expect(Array.from(small)).toEqual([56, 16]);
    expect([0, 56].map((at) => seqOf(target.subarray(at)))).toEqual([9, 10]);
    expect(m.pollInto(id, target, lengths)).toBe(2);
    expect([0, 32].map((at) => seqOf(target.subarray(at)))).toEqual([11, 12]);
    expect(m.pollInto(id, target, lengths)).toBe(0); // empty ring
    expect(m.stats()).toMatchObject({ pushed: 13, delivered: 13, inFlight: 0 });
  });

  it('gives back every payload byte for byte, lengths 1 … 40 (push stages short payloads by word), strings and batches too', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 128, maxPayloadBytes: 40, policy: { maxShards: 1 } });
    const id = m.mapper.activeShardIds()[0]!;
    const sent: Uint8Array[] = [];
    for (let len = 1; len <= 40; len++) {
      const p = Uint8Array.from({ length: len }, (_, i) => (len * 31 + i * 7 + 1) & 0xff);
      sent.push(p);
      m.push(len, new Uint8Array(p.buffer, 0, len)); // a view at offset 0 of a longer-lived buffer
      const offset = new Uint8Array(len + 3);
      offset.set(p, 3);
      sent.push(p);
      m.push(len, offset.subarray(3)); // an unaligned view
    }
    m.push(1, 'héllo'); sent.push(new TextEncoder().encode('héllo'));
    m.pushBatch([1, 2], [sent[0]!, sent[5]!]); sent.push(sent[0]!, sent[5]!);
    const target = new Uint8Array(4096);
    const lengths = new Uint32Array(128);
    expect(m.pollInto(id, target, lengths)).toBe(sent.length);
    let at = 0;
    sent.forEach((p, i) => {
      expect(lengths[i], `record ${i}`).toBe(p.length);
      expect([...target.subarray(at, at + p.length)], `record ${i}`).toEqual([...p]);
      at += p.length;
    });
  });

  it('a target too small for the next record throws and takes nothing (a 0-byte one too); no lengths and bad types are refused', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, policy: { maxShards: 1 } });
    const id = m.mapper.activeShardIds()[0]!;
    m.push(1, seqPayload(0, 0, 32));
    m.push(1, seqPayload(0, 1, 8));
    expect(() => m.pollInto(id, new Uint8Array(31), new Uint32Array(4))).toThrow(/target has 31 bytes, the next record of shard \d+ needs 32; nothing was taken/);
    expect(() => m.pollInto(id, new Uint8Array(0), new Uint32Array(4))).toThrow(/target has 0 bytes, the next record of shard \d+ needs 32; nothing was taken/);
    expect(() => m.pollInto(id, new Uint8Array(64), new Uint32Array(0))).toThrow(/lengths is empty/);
    expect(() => m.pollInto(id, [1, 2] as unknown as Uint8Array, new Uint32Array(4))).toThrow(/target must be a Uint8Array, got/);
    expect(() => m.pollInto(id, new Uint8Array(64), new Int32Array(4) as unknown as Uint32Array)).toThrow(/lengths must be a Uint32Array, got/);
    expect(() => m.pollInto(42, new Uint8Array(64), new Uint32Array(4))).toThrow(/unknown shard 42/);
    expect(m.ringLength(id)).toBe(2);
    expect(m.stats().delivered).toBe(0);
    const target = new Uint8Array(64);
    const lengths = new Uint32Array(4);
    expect(m.pollInto(id, target, lengths)).toBe(2);
    expect([seqOf(target), seqOf(target.subarray(32))]).toEqual([0, 1]);
  });

  it('under dropOldest, pollInto after evictions gives the newest records in order (a partial take leaves the ring evictable)', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 4, backpressure: { kind: 'dropOldest' }, policy: { maxShards: 1 } });
    const id = m.mapper.activeShardIds()[0]!;
    for (let i = 0; i < 10; i++) expect(m.push(1, seqPayload(0, i))).toBe(true);
    const target = new Uint8Array(40); // two 16-byte records fit
    const lengths = new Uint32Array(8);
    expect(m.pollInto(id, target, lengths)).toBe(2);
    expect([seqOf(target), seqOf(target.subarray(16))]).toEqual([6, 7]);
    for (let i = 10; i < 14; i++) expect(m.push(1, seqPayload(0, i))).toBe(true); // evicts 8, 9
    expect(m.pollInto(id, new Uint8Array(256), lengths)).toBe(4);
    expect(m.stats()).toMatchObject({ pushed: 14, delivered: 6, drops: { oldest: 8 } });
  });
});
