// Empty events (a 0-byte Uint8Array or '') are events like any other: the contract allows
// payloads "of any length up to a documented maximum". A key with nothing else to say (a
// tick, a tombstone) is pushed, counted, kept in order and delivered as a 0-byte record by
// every push and every read: poll, pollBatch, pollInto, batches(), the writable stream and
// consumer threads of both kinds. The byte-ring model (byte-ring.property.test.ts) mixes
// them into its random runs; the Redis node is covered in redis-node.test.ts.
import { afterEach, describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ShardManager, type ShardManagerOptions } from 'shard-mapper';
import { sleep, until } from './helpers/delivery.js';

const managers: ShardManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) await m.close();
});

async function manager(options: Partial<ShardManagerOptions> = {}): Promise<ShardManager> {
  const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 64, clock: () => 0, policy: { autoScale: false }, ...options });
  managers.push(m);
  return m;
}

/** Event i: empty when i % 3 === 0 (alternately '' and a 0-byte Uint8Array), else its seq in 4 bytes. */
function eventOf(i: number): Uint8Array | string {
  if (i % 3 === 0) return i % 2 === 0 ? '' : new Uint8Array(0);
  return new Uint8Array(new Uint32Array([i]).buffer);
}
/** What a consumer reports for event i: [length, seq or -1]. */
const expected = (i: number): [number, number] => (i % 3 === 0 ? [0, -1] : [4, i]);
const seqOf = (r: Uint8Array) => (r.length >= 4 ? new DataView(r.buffer, r.byteOffset, 4).getUint32(0, true) : -1);

describe('empty events', () => {
  it('push and pushBatch accept them; poll hands them back as 0-byte records, in order, counted like the others', async () => {
    const m = await manager();
    for (let i = 0; i < 30; i++) expect(m.push(7, eventOf(i))).toBe(true);
    expect(m.pushBatch([7, 7, 7], ['', new Uint8Array(0), 'x'])).toBe(3);
    expect(m.pushBatch([[7, '']])).toBe(1);
    expect(m.stats()).toMatchObject({ pushed: 34, inFlight: 34, dropped: 0 });
    const got = m.poll(0);
    expect(got.map((r) => [r.length, seqOf(r)])).toEqual([
      ...Array.from({ length: 30 }, (_, i) => expected(i)),
      [0, -1], [0, -1], [1, -1], [0, -1],
    ]);
    expect(got.every((r) => r instanceof Uint8Array)).toBe(true);
    expect(m.stats()).toMatchObject({ pushed: 34, delivered: 34, inFlight: 0 });
  });

  it('fill a ring by records though they take no bytes: backpressure applies as to any event', async () => {
    const m = await manager({ ringBufferCapacity: 8, backpressure: { kind: 'dropNewest' } });
    let accepted = 0;
    for (let i = 0; i < 12; i++) if (m.push(1, '')) accepted++;
    expect(accepted).toBe(8);
    expect(m.stats()).toMatchObject({ pushed: 8, dropped: 4 });
    expect(m.poll(0).map((r) => r.length)).toEqual(new Array(8).fill(0));
  });

  it('pollBatch and pollInto read them in place, and a 0-byte target takes empty records only', async () => {
    const m = await manager();
    for (let i = 0; i < 9; i++) m.push(1, eventOf(i));
    const lengths: number[][] = [];
    m.pollBatch(0, (batch) => {
      lengths.push([...batch.lengths.subarray(0, batch.length)]);
      expect([...batch].map(seqOf)).toEqual(Array.from({ length: 9 }, (_, i) => expected(i)[1]));
    }, 9);
    expect(lengths).toEqual([Array.from({ length: 9 }, (_, i) => expected(i)[0])]);

    m.push(1, '');
    m.push(1, new Uint8Array(0));
    m.push(1, 'abc');
    const out = new Uint32Array(4);
    expect(m.pollInto(0, new Uint8Array(0), out)).toBe(2); // the two empty records fit in no bytes
    expect([...out.subarray(0, 2)]).toEqual([0, 0]);
    expect(() => m.pollInto(0, new Uint8Array(0), out)).toThrow(/target has 0 bytes, the next record of shard 0 needs 3; nothing was taken/);
    expect(m.pollInto(0, new Uint8Array(8), out)).toBe(1);
    expect(m.stats()).toMatchObject({ pushed: 12, delivered: 12, inFlight: 0 });
  });

  it('a batch of nothing but empty records: recordSize 0 and stride 0, every length 0', async () => {
    const m = await manager();
    for (let i = 0; i < 5; i++) m.push(1, '');
    m.pollBatch(0, (batch) => {
      expect(batch.length).toBe(5);
      expect([...batch.lengths.subarray(0, 5)]).toEqual([0, 0, 0, 0, 0]);
      expect(batch.recordSize).toBe(0);
      expect(batch.stride).toBe(0);
      expect([...batch].map((r) => r.length)).toEqual([0, 0, 0, 0, 0]);
    });
    expect(m.stats().delivered).toBe(5);
  });

  it('writable() and batches() carry them', async () => {
    const m = await manager();
    await pipeline(Readable.from([{ key: 1, payload: '' }, { key: 1, payload: 'a' }, { key: 1, payload: new Uint8Array(0) }]), m.writable());
    const seen: number[] = [];
    for await (const batch of m.batches(0, { idleMs: 1 })) {
      for (const r of batch) seen.push(r.length);
      if (seen.length >= 3) break;
    }
    expect(seen).toEqual([0, 1, 0]);
  });

  for (const batch of [false, true]) {
    it(`consumer threads (${batch ? 'RecordBatch' : 'Uint8Array[]'}) get every empty event once, in push order per shard`, async () => {
      const channelName = `shard-mapper-empty-${process.pid}-${batch}`;
      const module = new URL('./fixtures/length-seq-consumer.mjs', import.meta.url);
      module.searchParams.set('channel', channelName);
      const channel = new BroadcastChannel(channelName);
      const perShard = new Map<number, [number, number][]>();
      let received = 0;
      channel.onmessage = (e: MessageEvent) => {
        for (const [shard, len, seq] of e.data as [number, number, number][]) {
          if (!perShard.has(shard)) perShard.set(shard, []);
          perShard.get(shard)!.push([len, seq]);
          received++;
        }
      };
      try {
        const m = await manager({
          initialShards: 3, ringBufferCapacity: 256, clock: () => performance.now(), backpressure: { kind: 'dropNewest' },
          consumer: { module, threads: 2, batch },
        });
        const total = 6000;
        const want = new Map<number, [number, number][]>();
        for (let i = 0; i < total; i++) {
          const key = (i * 2654435761) >>> 0;
          const shard = m.mapper.selectShard(key); // autoScale off: the table does not change
          while (!m.push(key, eventOf(i))) await sleep(1); // dropNewest: false while the ring is full
          if (!want.has(shard)) want.set(shard, []);
          want.get(shard)!.push(expected(i));
        }
        await until(() => received >= total, () => `${received} of ${total} delivered`);
        await sleep(300); // a late duplicate would land here
        expect(received).toBe(total);
        for (const [shard, list] of want) expect(perShard.get(shard), `shard ${shard}`).toEqual(list);
        expect(m.stats()).toMatchObject({ pushed: total, delivered: total });
      } finally {
        channel.close();
      }
    });
  }
});
