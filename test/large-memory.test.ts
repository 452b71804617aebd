// A shared memory larger than 2 GiB. WebAssembly hands a u32 to JavaScript as a signed 32-bit
// number, so rings placed past 2 GiB are where an address read without `>>> 0` shows: poll
// read zeros for the pushed bytes, a consumer thread never delivered (and close() waited for
// it forever), and growing the memory for a new shard trapped. Rings of 1 GiB put the third
// shard there; a large maxPayloadBytes puts every ring there (each thread's staging lane holds
// two payloads). The memory is reserved, not written: only the pages the test writes are used.
import { describe, expect, it } from 'vitest';
import { ShardManager } from 'shard-mapper';
import { SharedCore } from '../dist/core.js';
import { DeliveryLog, expectExactlyOnce, onThisLogsChannel, pushWithRetry, seqPayload, within } from './helpers/delivery.js';

const GiB = 2 ** 30;

/** The byte address of every shard's ring, read the way the bug read them wrong (unsigned). */
function ringAddresses(m: ShardManager): number[] {
  const core = SharedCore.attachSync(m.producerHandle().core);
  try {
    const addresses = m.mapper.allShardIds().map((_, slot) => core.abi.slotAddress(slot) >>> 0);
    // the JavaScript side computes slot addresses itself (claimInView runs on every poll)
    expect(addresses.map((_, slot) => core.slotBase(slot))).toEqual(addresses);
    return addresses;
  } finally {
    core.detach();
  }
}

function pushSeq(m: ShardManager, count: number): void {
  for (let seq = 0; seq < count; seq++) expect(m.push(Math.imul(seq + 1, 2654435761) >>> 0, seqPayload(0, seq, 24))).toBe(true);
}

describe('a shared memory larger than 2 GiB', () => {
  it('poll returns the pushed bytes of a ring placed past 2 GiB, in push order', async () => {
    const m = await ShardManager.create({ initialShards: 3, ringBufferCapacity: 64, ringBufferBytes: GiB, policy: { autoScale: false } });
    const addresses = ringAddresses(m);
    expect(addresses.some((a) => a >= 2 * GiB), `ring addresses ${addresses.join(', ')}`).toBe(true);
    pushSeq(m, 150);
    const seen: number[] = [];
    for (const id of m.mapper.allShardIds()) {
      const seqs = m.poll(id).map((r) => {
        const v = new DataView(r.buffer, r.byteOffset, r.byteLength);
        expect(r.length).toBe(24);
        expect(v.getUint32(0, true)).toBe(0); // producer 0: a record read from the wrong place is zeros or garbage
        return v.getUint32(4, true);
      });
      expect(seqs, `shard ${id} in push order`).toEqual([...seqs].sort((a, b) => a - b));
      seen.push(...seqs);
    }
    expect(seen.sort((a, b) => a - b)).toEqual(Array.from({ length: 150 }, (_, i) => i));
    // the shard past 2 GiB got some of them
    expect(m.stats().shards.every((s) => s.delivered > 0)).toBe(true);
    await m.close();
  });

  it('a consumer thread delivers every event of a ring past 2 GiB exactly once, and close() resolves', async () => {
    const log = new DeliveryLog();
    try {
      const m = await ShardManager.create({
        initialShards: 3, ringBufferCapacity: 64, ringBufferBytes: GiB, policy: { autoScale: false },
        consumer: { module: onThisLogsChannel(new URL('./fixtures/seq-consumer.mjs', import.meta.url)).href, threads: 1 },
      });
      expect(ringAddresses(m).some((a) => a >= 2 * GiB)).toBe(true);
      // a ring of 64 records may be full for a moment: pushWithRetry waits for the consumer
      for (let seq = 0; seq < 300; seq++) await pushWithRetry(m, Math.imul(seq + 1, 2654435761) >>> 0, seqPayload(0, seq));
      await log.waitFor(300, 20_000);
      expectExactlyOnce(log, 1, 300);
      expect(m.stats().shards.every((s) => s.delivered > 0), 'every shard, the one past 2 GiB too, delivered').toBe(true);
      await within(m.close(), 20_000, () => 'close() with a ring past 2 GiB');
    } finally {
      log.close();
    }
  }, 60_000);

  it('scaling up into memory past 2 GiB grows it, and the new rings carry whole 16 MiB payloads', async () => {
    const MAX = 2 ** 24;
    const m = await ShardManager.create({
      initialShards: 1, ringBufferCapacity: 8, maxPayloadBytes: MAX, backpressure: { kind: 'failProducer' },
      policy: { autoScale: false, maxShards: 8 },
    });
    const added = await m.manualScaleUp(3);
    expect(added).toHaveLength(3);
    const addresses = ringAddresses(m);
    expect(addresses.filter((a) => a >= 2 * GiB).length, `ring addresses ${addresses.join(', ')}`).toBeGreaterThan(0);
    const big = new Uint8Array(MAX);
    for (let i = 0; i < MAX; i += 4096) big[i] = (i >>> 12) & 0xff;
    big[MAX - 1] = 0x5a;
    let intact = 0;
    for (let i = 0; i < 16; i++) {
      expect(m.push(Math.imul(i + 1, 2654435761) >>> 0, big)).toBe(true);
      for (const id of m.mapper.activeShardIds()) {
        for (const r of m.poll(id)) {
          let same = r.length === MAX && r[MAX - 1] === 0x5a;
          for (let k = 0; same && k < MAX; k += 4096) same = r[k] === ((k >>> 12) & 0xff);
          if (same) intact++;
        }
      }
    }
    expect(intact).toBe(16);
    expect(m.stats().shards.every((s) => s.delivered > 0), 'every shard got some').toBe(true);
    await m.close();
  }, 60_000);
});
