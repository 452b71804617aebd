// Byte rings (issue 14), deterministic cases: the edges of the payload area (a record that
// exactly fills the rest of it, one larger than the free space under each backpressure mode),
// the quarter rule for maxPayloadBytes, bad ringBufferBytes, the defaults, the byte fill a
// collector reports, and the memory the table is about.
import { describe, expect, it } from 'vitest';
import { BackpressureError, ScalingError, ShardManager, type BackpressureMode, type ManagerEvent, type RecordBatch, type ShardManagerOptions } from 'shard-mapper';
import { prng } from './helpers/index.js';

const align8 = (n: number) => Math.ceil(n / 8) * 8;
const PAGE = 65536;
const MiB = 1024 * 1024;

/** A payload of `size` bytes whose bytes say which one it is. */
const payload = (id: number, size: number) => Uint8Array.from({ length: size }, (_, i) => (id * 37 + i) & 0xff);

/** One shard, consumed with poll (no threads), everything to shard 0. */
async function oneShard(options: Partial<ShardManagerOptions>): Promise<ShardManager> {
  return ShardManager.create({ initialShards: 1, ringBufferCapacity: 16, policy: { minShards: 1, maxShards: 1, autoScale: false }, ...options });
}

/** The next batch's records as payload-area offsets (relative to the first record's) and its regions. */
function layout(m: ShardManager, max?: number, take = false): { offsets: number[]; regions: number[]; records: Uint8Array[] } {
  let out = { offsets: [] as number[], regions: [] as number[], records: [] as Uint8Array[] };
  const look = (b: RecordBatch) => {
    out = {
      offsets: Array.from(b.offsets.subarray(0, b.length), (o) => o - b.offsets[0]!),
      regions: b.regions.map((r) => r.count),
      records: b.toArray().map((r) => r.slice()),
    };
    if (!take) throw new Error('look only');
  };
  try { m.pollBatch(0, look, max); } catch (e) { if ((e as Error).message !== 'look only') throw e; }
  return out;
}

for (const memory of ['shared', 'single'] as const) {
  describe(`the edges of the payload area (memory: '${memory}')`, () => {
    it('a record that exactly fills the rest of the area goes there (no padding), and the next one starts the next lap at offset 0', async () => {
      const m = await oneShard({ memory, maxPayloadBytes: 16, ringBufferBytes: 64, backpressure: { kind: 'dropNewest' } });
      expect(m.ringBufferBytes).toBe(64);
      for (let i = 0; i < 3; i++) expect(m.push(0, payload(i, 16))).toBe(true);
      // 48 bytes used, 16 left before the end: a 16-byte record fits exactly. Padded to the next
      // lap it would need 16 more bytes than are free, and be refused.
      expect(m.push(0, payload(3, 16))).toBe(true);
      expect(m.mapper.collectMetrics()[0]!.fillRatio).toBe(1); // every byte held, 4 of 16 records
      expect(m.push(0, payload(4, 1))).toBe(false); // no byte left, descriptors free
      expect(m.stats().drops.newest).toBe(1);
      expect(layout(m)).toMatchObject({ offsets: [0, 16, 32, 48], regions: [4] });
      expect(m.poll(0, 1)).toEqual([payload(0, 16)]); // frees [0, 16)
      expect(m.push(0, payload(5, 9))).toBe(true); // extent 16, at offset 0 of the next lap
      expect(m.push(0, payload(6, 1))).toBe(false);
      const l = layout(m);
      expect(l.regions).toEqual([3, 1]);
      expect(l.offsets).toEqual([0, 16, 32, -16]); // the last record is at offset 0, 16 before the first's (16)
      expect(m.poll(0)).toEqual([payload(1, 16), payload(2, 16), payload(3, 16), payload(5, 9)]);
      expect(m.stats()).toMatchObject({ pushed: 5, delivered: 5, inFlight: 0, drops: { newest: 2 } });
      await m.close();
    });

    it('a record that exactly fills the area from an empty ring (the whole quarter-sized record at the last quarter)', async () => {
      const m = await oneShard({ memory, maxPayloadBytes: 32, ringBufferBytes: 128, backpressure: { kind: 'failProducer' } });
      // move the tail to offset 96 and empty the ring
      for (let i = 0; i < 3; i++) expect(m.push(0, payload(i, 32))).toBe(true);
      expect(m.poll(0)).toHaveLength(3);
      expect(m.push(0, payload(9, 32))).toBe(true); // [96, 128)
      for (let i = 10; i < 13; i++) expect(m.push(0, payload(i, 32))).toBe(true); // [0, 96) of the next lap
      expect(layout(m)).toMatchObject({ offsets: [0, -96, -64, -32], regions: [1, 3] });
      expect(() => m.push(0, payload(13, 1))).toThrow(BackpressureError);
      expect(m.poll(0)).toEqual([9, 10, 11, 12].map((i) => payload(i, 32)));
      await m.close();
    });

    const LARGER: [string, BackpressureMode][] = [
      ['dropNewest', { kind: 'dropNewest' }],
      ['failProducer', { kind: 'failProducer' }],
      ['dropOldest', { kind: 'dropOldest' }],
      ['sample', { kind: 'sample', rate: 1 }],
    ];
    for (const [name, backpressure] of LARGER) {
      it(`${name}: a record larger than the free space (descriptors free) is handled as a full ring`, async () => {
        const m = await oneShard({ memory, maxPayloadBytes: 16, ringBufferBytes: 64, backpressure, policy: { minShards: 1, maxShards: 1, autoScale: false, fillRatioThreshold: 0.5 } });
        for (let i = 0; i < 7; i++) expect(m.push(0, payload(i, 8))).toBe(true); // 56 bytes, 7 of 16 records
        // 8 bytes free at the end; a 16-byte record would be padded to the next lap: 24 more
        // bytes than are free
        const big = payload(100, 16);
        const before = m.stats();
        switch (name) {
          case 'dropNewest':
          case 'sample': { // sample keeps 1 in 1 past its threshold, then a full ring drops the newest
            expect(m.push(0, big)).toBe(false);
            expect(m.stats()).toMatchObject({ pushed: 7, drops: { newest: 1, sampled: 0, oldest: 0, refused: 0 } });
            expect(m.poll(0)).toEqual([0, 1, 2, 3, 4, 5, 6].map((i) => payload(i, 8)));
            break;
          }
          case 'failProducer': {
            let error: unknown;
            try { m.push(0, big); } catch (e) { error = e; }
            expect(error).toBeInstanceOf(BackpressureError);
            expect((error as BackpressureError).shardId).toBe(0);
            expect(m.stats()).toMatchObject({ pushed: before.pushed, delivered: 0, inFlight: 7, drops: { refused: 1, newest: 0, oldest: 0 } });
            expect(m.ringLength(0)).toBe(7);
            expect(() => m.pushBatch([0, 0], [payload(101, 8), big])).toThrow(expect.objectContaining({ accepted: 1 }));
            expect(m.poll(0)).toEqual([...[0, 1, 2, 3, 4, 5, 6].map((i) => payload(i, 8)), payload(101, 8)]);
            break;
          }
          case 'dropOldest': {
            // evicted from the head until it fits: the 16 bytes it needs at offset 0 plus the
            // 8 of padding at the end: records 0 and 1
            expect(m.push(0, big)).toBe(true);
            expect(m.stats()).toMatchObject({ pushed: 8, drops: { oldest: 2, newest: 0 } });
            expect(layout(m)).toMatchObject({ offsets: [0, 8, 16, 24, 32, -16], regions: [5, 1] });
            expect(m.poll(0)).toEqual([...[2, 3, 4, 5, 6].map((i) => payload(i, 8)), big]);
            break;
          }
        }
        const s = m.stats();
        expect(s.inFlight).toBe(0);
        expect(s.pushed).toBe(s.delivered + s.drops.oldest);
        await m.close();
      });
    }
  });
}

describe('maxPayloadBytes and ringBufferBytes', () => {
  it('maxPayloadBytes exactly a quarter of ringBufferBytes is accepted, and such records go round the area many times', async () => {
    const m = await oneShard({ ringBufferCapacity: 4, maxPayloadBytes: 1024, ringBufferBytes: 4096, backpressure: { kind: 'failProducer' } });
    expect(m.ringBufferBytes).toBe(4096);
    const random = prng(14);
    let id = 0;
    let sent: Uint8Array[] = [];
    let bytes = 0;
    for (let round = 0; round < 90; round++) {
      // largest records mostly, with odd sizes that leave padding before the end; at most
      // three at a time: three records and the padding (< one record) always fit in four
      const sizes = [1024, 1 + Math.floor(random() * 1024), 1024].slice(0, 1 + (round % 3));
      for (const size of sizes) {
        const p = payload(id++, size);
        expect(m.push(0, p), `round ${round}`).toBe(true);
        sent.push(p);
        bytes += align8(size);
      }
      expect(m.poll(0)).toEqual(sent);
      sent = [];
    }
    expect(bytes).toBeGreaterThan(20 * 4096); // over 20 laps of the area
    expect(m.stats()).toMatchObject({ pushed: id, delivered: id, dropped: 0, inFlight: 0 });
    // Four of the largest fill the area exactly only from offset 0; from offset 512 the fourth
    // would need padding the area does not have (the price of the quarter rule, which the
    // default ringBufferBytes, one record more than the capacity, pays for).
    await m.close();
    const fresh = await oneShard({ ringBufferCapacity: 8, maxPayloadBytes: 1024, ringBufferBytes: 4096, backpressure: { kind: 'failProducer' } });
    for (let i = 0; i < 4; i++) expect(fresh.push(0, payload(i, 1024)), `record ${i} from offset 0`).toBe(true);
    expect(() => fresh.push(0, payload(4, 8))).toThrow(BackpressureError); // bytes full, 4 descriptors free
    expect(fresh.poll(0)).toHaveLength(4);
    expect(fresh.push(0, payload(5, 512))).toBe(true);
    fresh.poll(0); // the tail at offset 512, the ring empty
    for (let i = 0; i < 3; i++) expect(fresh.push(0, payload(i, 1024))).toBe(true);
    expect(() => fresh.push(0, payload(3, 1024))).toThrow(BackpressureError);
    await fresh.close();
  });

  for (const maxPayloadBytes of [1032, 1025]) {
    it(`maxPayloadBytes ${maxPayloadBytes} (rounded to 8: ${align8(maxPayloadBytes)}, over a quarter of 4096) is refused, naming both options; nothing is created`, async () => {
      const events: ManagerEvent[] = [];
      const created = ShardManager.create({
        initialShards: 2, ringBufferCapacity: 4, maxPayloadBytes, ringBufferBytes: 4096, onEvent: (e) => events.push(e),
      });
      await expect(created).rejects.toBeInstanceOf(ScalingError);
      const error = (await created.catch((e: unknown) => e)) as ScalingError;
      expect(error.kind).toBe('InvalidPolicy');
      expect(error.message).toMatch(/options\.maxPayloadBytes/);
      expect(error.message).toMatch(/options\.ringBufferBytes/);
      expect(error.message).toContain(String(maxPayloadBytes));
      expect(error.message).toContain('4096');
      expect(events).toEqual([]); // no shard was ever provisioned
    });
  }

  it('the default payload size with a tiny ringBufferBytes is refused the same way (rounded up to 8 first)', async () => {
    const error = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 4, ringBufferBytes: 1 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ScalingError);
    expect((error as ScalingError).message).toMatch(/options\.maxPayloadBytes \(256\) may be at most a quarter of options\.ringBufferBytes \(8\)/);
  });

  const BAD: [string, unknown][] = [
    ['NaN', NaN], ['Infinity', Infinity], ['-1', -1], ['0', 0], ['1.5', 1.5], ["'1024'", '1024'], ['null', null], ['2^30 + 1', 2 ** 30 + 1],
  ];
  for (const [label, value] of BAD) {
    it(`ringBufferBytes ${label} is refused with an error that names the option and the value`, async () => {
      const events: ManagerEvent[] = [];
      const error = await ShardManager.create({
        initialShards: 1, ringBufferCapacity: 4, maxPayloadBytes: 8, ringBufferBytes: value as number, onEvent: (e) => events.push(e),
      }).then(() => undefined, (e: unknown) => e);
      expect(error, label).toBeInstanceOf(ScalingError);
      expect((error as ScalingError).kind).toBe('InvalidPolicy');
      expect((error as ScalingError).message).toMatch(/options\.ringBufferBytes must be an integer in \[1, 1073741824\]/);
      expect((error as ScalingError).message).toContain(typeof value === 'string' ? value : String(value));
      expect(events).toEqual([]);
    });
  }

  it('ringBufferBytes is rounded up to a multiple of 8', async () => {
    const m = await oneShard({ maxPayloadBytes: 8, ringBufferBytes: 33 });
    expect(m.ringBufferBytes).toBe(40);
    await m.close();
  });

  // capacity requested, maxPayloadBytes → the default area: max((capacity + 1) × min(align8(max), 256), 4 × align8(max))
  const DEFAULTS: [number, number | undefined, number][] = [
    [4096, undefined, 4097 * 256], // the default maxPayloadBytes (256)
    [2, 256, 4 * 256], // capacity 2: (2 + 1) × 256 is under the quarter rule's 4 × 256
    [1, 100, 4 * 104], // 100 rounds up to 104; (1 + 1) × 104 is under the quarter rule
    [3, 8, 4 * 8], // (3 + 1) × 8: a ring holds the records asked for, not the next power of two
    [100, 7, 101 * 8], // 7 rounds up to 8
    // past the typical event size (256 B) the area is sized for typical events, not the largest:
    [64, 1000, 65 * 256], // was 65 × 1000 before the default followed typical events
    [4096, 65536, 4097 * 256], // 1 MiB, not 256 MiB
    [64, 65536, 4 * 65536], // the quarter rule's floor: 4 of the largest
  ];
  for (const [capacity, maxPayloadBytes, want] of DEFAULTS) {
    it(`default ringBufferBytes for capacity ${capacity}, maxPayloadBytes ${maxPayloadBytes ?? 'default'}: ${want}`, async () => {
      const m = await oneShard({ ringBufferCapacity: capacity, ...(maxPayloadBytes === undefined ? {} : { maxPayloadBytes }) });
      expect(m.ringBufferBytes).toBe(want);
      await m.close();
    });
  }

  it('with the default ringBufferBytes, ringCapacity records of any sizes always fit, from any starting offset', async () => {
    const random = prng(1414);
    for (const [capacity, maxPayloadBytes] of [[2, 8], [4, 100], [8, 9], [16, 256], [32, 17]] as const) {
      const m = await oneShard({ ringBufferCapacity: capacity, maxPayloadBytes, backpressure: { kind: 'failProducer' } });
      for (let trial = 0; trial < 40; trial++) {
        // move the tail somewhere, empty the ring, then fill every descriptor
        const shift = 1 + Math.floor(random() * capacity);
        for (let i = 0; i < shift; i++) m.push(0, payload(i, 1 + Math.floor(random() * maxPayloadBytes)));
        m.poll(0);
        const sizes = Array.from({ length: capacity }, () => (random() < 0.5 ? maxPayloadBytes : 1 + Math.floor(random() * maxPayloadBytes)));
        for (const [k, size] of sizes.entries()) expect(m.push(0, payload(k, size)), `capacity ${capacity}, sizes ${sizes}`).toBe(true);
        expect(m.poll(0).map((r) => r.length)).toEqual(sizes);
      }
      expect(m.stats().drops.refused).toBe(0);
      await m.close();
    }
  });
});

describe('fill ratio', () => {
  it('a collector reports the byte fill when a few large events are held (records fill far less)', async () => {
    const m = await oneShard({ ringBufferCapacity: 64, maxPayloadBytes: 1024, ringBufferBytes: 4096 });
    for (let i = 0; i < 3; i++) expect(m.push(0, payload(i, 1000))).toBe(true);
    let [metrics] = m.mapper.collectMetrics();
    expect(metrics!.bufferLen).toBe(3);
    expect(metrics!.fillRatio).toBeCloseTo(3000 / 4096, 12); // not 3 / 64
    m.poll(0, 1);
    [metrics] = m.mapper.collectMetrics();
    expect(metrics!.fillRatio).toBeCloseTo(2000 / 4096, 12);
    // padding counts as held: records at [1000, 3000), one more at [3000, 4000); the next
    // would cross the end, so it skips the last 96 bytes and starts the next lap: every byte
    // from 1000 round to 1000 is held, by 4 of 64 records
    expect(m.push(0, payload(8, 1000))).toBe(true);
    expect(m.push(0, payload(9, 1000))).toBe(true);
    [metrics] = m.mapper.collectMetrics();
    expect(metrics!.bufferLen).toBe(4);
    expect(metrics!.fillRatio).toBe(1);
    expect(() => m.push(0, payload(10, 1))).toThrow(BackpressureError);
    // and the record fill wins when many small events are held
    m.poll(0);
    for (let i = 0; i < 40; i++) m.push(0, payload(i, 8));
    [metrics] = m.mapper.collectMetrics();
    expect(metrics!.fillRatio).toBeCloseTo(40 / 64, 12);
    await m.close();
  });
});

describe('memory (the issue\'s table)', () => {
  // A slot is a 512-byte header, 16 bytes per record descriptor, then the payload area,
  // rounded up to 128 bytes (assembly/layout.ts). Shards' slots are provisioned one after
  // another after the header, tables and lanes, and the memory is whole 64 KiB pages.
  const slotBytes = (capacity: number, ringBytes: number) => Math.ceil((512 + 16 * capacity + ringBytes) / 128) * 128;
  const CASES: { label: string; maxPayloadBytes?: number; ringBufferBytes?: number }[] = [
    { label: 'maxPayloadBytes 256 (default), default ringBufferBytes' },
    { label: 'maxPayloadBytes 65536, default ringBufferBytes', maxPayloadBytes: 65536 },
    { label: 'maxPayloadBytes 65536, ringBufferBytes 16 MiB', maxPayloadBytes: 65536, ringBufferBytes: 16 * MiB },
    { label: 'maxPayloadBytes 1 MiB, ringBufferBytes 8 MiB', maxPayloadBytes: MiB, ringBufferBytes: 8 * MiB },
  ];

  it('4 shards, capacity 4096: memoryBytes grows by one slot (header + descriptors + payload area) per shard', async () => {
    const rows: string[] = [];
    for (const c of CASES) {
      const options = (initialShards: number): ShardManagerOptions => ({
        initialShards, ringBufferCapacity: 4096, policy: { minShards: 1, maxShards: 8, autoScale: false }, maxSlots: 8,
        ...(c.maxPayloadBytes === undefined ? {} : { maxPayloadBytes: c.maxPayloadBytes }),
        ...(c.ringBufferBytes === undefined ? {} : { ringBufferBytes: c.ringBufferBytes }),
      });
      const one = await ShardManager.create(options(1));
      const m1 = one.memoryBytes;
      await one.close();
      const m = await ShardManager.create(options(4));
      const ringBytes = m.ringBufferBytes;
      if (c.ringBufferBytes !== undefined) expect(ringBytes).toBe(c.ringBufferBytes);
      else expect(ringBytes).toBe(Math.max(4097 * 256, 4 * (c.maxPayloadBytes ?? 256)));
      const slot = slotBytes(4096, ringBytes);
      const m4 = m.memoryBytes;
      // whole pages; three more slots than one shard's memory, to within the page rounding
      expect(m4 % PAGE).toBe(0);
      expect(m4 - m1).toBeGreaterThan(3 * slot - PAGE);
      expect(m4 - m1).toBeLessThan(3 * slot + PAGE);
      expect(m4).toBeGreaterThanOrEqual(4 * slot);
      await m.addShard();
      const m5 = m.memoryBytes;
      // a fifth shard grows the memory to hold one more slot (by a quarter at least, so a
      // burst of scale-ups does not grow page by page)
      expect(m5 - m4).toBeGreaterThan(slot - PAGE);
      expect(m5).toBeLessThanOrEqual(Math.max(m4 + slot, 1.25 * m4) + PAGE);
      const fixed = m1 - slot; // header, tables and lanes, to within a page
      rows.push(`| ${c.label} | ${(slot / MiB).toFixed(2)} MiB | ${(m4 / MiB).toFixed(1)} MiB | ${(fixed / MiB).toFixed(1)} MiB |`);
      await m.close();
    }
    console.log(['| 4 shards, ringBufferCapacity 4096 | per shard (slot) | memoryBytes | outside the slots (header, tables, lanes) |', '|---|---|---|---|', ...rows].join('\n'));
  });

  it('maxPayloadBytes 64 KiB for a rare large event, 4 shards × 4096 records, no ringBufferBytes given: at most 64 MiB in all', async () => {
    // Before the default followed typical events it was (4096 + 1) × 64 KiB = 256 MiB a ring,
    // 1 GiB for these four shards.
    const m = await ShardManager.create({
      initialShards: 4, ringBufferCapacity: 4096, maxPayloadBytes: 65536, policy: { minShards: 4, maxShards: 4, autoScale: false },
    });
    expect(m.ringBufferBytes).toBe(4097 * 256);
    expect(m.memoryBytes).toBeLessThanOrEqual(64 * MiB);
    // and the rare large event still goes through, with typical ones around it
    const big = payload(7, 65536);
    for (let i = 0; i < 100; i++) expect(m.push(1, payload(i, 200))).toBe(true);
    expect(m.push(1, big)).toBe(true);
    const shard = m.mapper.selectShard(1);
    const got = m.poll(shard, 1 << 20);
    expect(got).toHaveLength(101);
    expect(Buffer.compare(Buffer.from(got[100]!), Buffer.from(big))).toBe(0);
    console.log(`defaults, maxPayloadBytes 64 KiB: ringBufferBytes ${m.ringBufferBytes}, memoryBytes ${(m.memoryBytes / MiB).toFixed(1)} MiB`);
    await m.close();
  });

  it('the issue\'s mix (95 % of 200 B, 5 % up to 64 KiB), 4096 records in flight in each of 4 shards, fits in 64 MiB in all', async () => {
    const m = await ShardManager.create({
      initialShards: 4, ringBufferCapacity: 4096, maxPayloadBytes: 65536, ringBufferBytes: 10 * MiB, backpressure: { kind: 'failProducer' },
      policy: { minShards: 4, maxShards: 4, autoScale: false },
    });
    const random = prng(95);
    // a key for each shard
    const keys = new Map<number, number>();
    for (let h = 1; keys.size < 4; h = (h * 2654435761 + 12345) >>> 0) if (!keys.has(m.mapper.selectShard(h))) keys.set(m.mapper.selectShard(h), h);
    const sent = new Map<number, Uint8Array[]>();
    let bytes = 0;
    for (const [shard, key] of keys) {
      const list: Uint8Array[] = [];
      for (let i = 0; i < 4096; i++) {
        const size = random() < 0.95 ? 200 : 1 + Math.floor(random() * 65536);
        const p = payload(i, size);
        expect(m.push(key, p), `shard ${shard} record ${i} (${size} bytes)`).toBe(true);
        list.push(p);
        bytes += size;
      }
      sent.set(shard, list);
    }
    expect(m.stats()).toMatchObject({ pushed: 4 * 4096, inFlight: 4 * 4096, dropped: 0 });
    const metrics = m.mapper.collectMetrics();
    for (const s of metrics) expect(s.fillRatio).toBe(1); // every descriptor in use
    expect(m.memoryBytes).toBeLessThanOrEqual(64 * MiB);
    console.log(`issue 14 mix: ${(bytes / MiB).toFixed(1)} MiB of payloads in flight, memoryBytes ${(m.memoryBytes / MiB).toFixed(1)} MiB`);
    for (const [shard, list] of sent) {
      const got = m.poll(shard, 1 << 20);
      expect(got.length).toBe(list.length);
      // compared natively: a deep equal of 28 MiB element by element takes minutes
      const wrong = list.filter((p, i) => Buffer.compare(Buffer.from(p.buffer, p.byteOffset, p.length), Buffer.from(got[i]!.buffer, got[i]!.byteOffset, got[i]!.length)) !== 0);
      expect(wrong.length, `shard ${shard}: records changed`).toBe(0);
    }
    await m.close();
  });
});
