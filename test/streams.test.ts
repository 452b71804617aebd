// manager.writable() (Node Writable), manager.writableStream() (WHATWG) and manager.batches()
// (async iterator for poll users): backpressure that really stops the writer, nothing lost,
// per-shard order kept, iterators that end, and bad input refused with nothing written.
import { afterEach, describe, expect, it } from 'vitest';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { once } from 'node:events';
import { ManagerClosedError, ScalingError, ShardManager, type ShardManagerOptions } from 'shard-mapper';

const text = new TextDecoder();
const managers: ShardManager[] = [];

/** A manager without consumer threads or timer: nothing moves unless the test polls or ticks. */
async function manager(options: Partial<ShardManagerOptions> = {}): Promise<ShardManager> {
  const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, clock: () => 0, ...options });
  managers.push(m);
  return m;
}

afterEach(async () => {
  for (const m of managers.splice(0)) await m.close();
});

const pollAll = (m: ShardManager, id: number) => m.poll(id).map((r) => text.decode(r));
const names = (n: number, from = 0) => Array.from({ length: n }, (_, i) => `e${from + i}`);

describe('manager.writable()', () => {
  it('returns false from write() once a full ring holds it back, emits drain after a consumer made room, and loses nothing', async () => {
    const m = await manager();
    const stream = m.writable({ highWaterMark: 4 });
    expect(stream.writableObjectMode).toBe(true);
    let firstFalse = -1;
    for (let i = 0; i < 100 && firstFalse < 0; i++) {
      if (!stream.write({ key: 7, payload: `e${i}` })) firstFalse = i;
    }
    // 8 records fill the ring; the 9th waits for room; 3 more fill the stream's buffer of 4.
    expect(firstFalse).toBe(m.ringCapacity + 4 - 1);
    expect(m.ringLength(0)).toBe(m.ringCapacity);
    expect(stream.writableNeedDrain).toBe(true);
    let drained = false;
    const drain = once(stream, 'drain').then(() => { drained = true; });
    await new Promise((r) => setTimeout(r, 20)); // the ring is still full: no drain
    expect(drained).toBe(false);

    const got = pollAll(m, 0); // a consumer makes room
    await drain;
    expect(m.stats().drops.refused).toBe(1); // one refusal, then it watched the ring instead of pushing again
    stream.end();
    await once(stream, 'finish');
    got.push(...pollAll(m, 0));
    expect(got).toEqual(names(firstFalse + 1));
    expect(m.stats().pushed).toBe(firstFalse + 1);
  });

  it('a held write follows the routing when it moves away from the full ring', async () => {
    const m = await manager({ initialShards: 2 });
    const stream = m.writable({ highWaterMark: 2 });
    const key = 7; // below 2^31: shard 0 of the two
    expect(m.mapper.selectShard(key)).toBe(0);
    for (let i = 0; i < m.ringCapacity; i++) stream.write({ key, payload: `e${i}` });
    let written = false;
    const held = new Promise<void>((resolve, reject) => {
      stream.write({ key, payload: `e${m.ringCapacity}` }, (error) => { if (error) reject(error); else { written = true; resolve(); } });
    });
    expect(m.ringLength(0)).toBe(m.ringCapacity);
    expect(m.ringLength(1)).toBe(0);
    await new Promise((r) => setTimeout(r, 20)); // shard 0 is full and still routed to: it waits
    expect(written).toBe(false);
    await m.drainShard(0); // nobody consumes shard 0, but new pushes now go to shard 1
    await held;
    stream.end();
    await once(stream, 'finish');
    expect(pollAll(m, 1)).toEqual([`e${m.ringCapacity}`]);
    expect(pollAll(m, 0)).toEqual(names(m.ringCapacity));
  });

  it('carries a pipeline end to end with a slow consumer: every record once, in push order per shard', async () => {
    const m = await manager({ initialShards: 2, ringBufferCapacity: 16 });
    const N = 2_000;
    const source = Readable.from((function* () {
      for (let i = 0; i < N; i++) yield { key: (i * 2654435761) >>> 0, payload: `e${i}` };
    })());
    const perShard = new Map<number, number[]>();
    const consume = async (id: number) => {
      const seen: number[] = [];
      perShard.set(id, seen);
      for await (const batch of m.batches(id, { max: 5 })) {
        for (const r of batch) seen.push(Number(text.decode(r).slice(1)));
        await new Promise((r) => setTimeout(r, 0)); // slower than the producer
      }
    };
    const consumers = [consume(0), consume(1)];
    await pipeline(source, m.writable());
    await m.close(); // the iterators end once they have taken what is left
    await Promise.all(consumers);

    const all = [...perShard.values()].flat().sort((a, b) => a - b);
    expect(all).toEqual(Array.from({ length: N }, (_, i) => i));
    for (const seen of perShard.values()) {
      expect(seen.length).toBeGreaterThan(0);
      expect(seen).toEqual([...seen].sort((a, b) => a - b)); // push order within a shard
    }
    const stats = m.stats();
    expect(stats.pushed).toBe(N);
    expect(stats.delivered).toBe(N);
    expect(stats.drops.refused).toBeGreaterThan(0); // the rings did push back
  });

  it('refuses a bad record with a clear error and writes nothing', async () => {
    const m = await manager();
    await expect(pipeline(Readable.from([5]), m.writable())).rejects.toThrow(/writable: each record must be \{ key, payload \}, got 5/);
    await expect(pipeline(Readable.from([{ key: 1 }]), m.writable())).rejects.toThrow(/writable: each record must be \{ key, payload \}, got an object \(no payload field\)/);
    await expect(pipeline(Readable.from([{ key: 1, payload: 'x'.repeat(1000) }]), m.writable())).rejects.toThrow(/push: payload is 1000 bytes/);
    await expect(pipeline(Readable.from([{ key: null, payload: 'x' }]), m.writable())).rejects.toThrow(/key must be/);
    expect(m.stats().pushed).toBe(0);
    expect(m.ringLength(0)).toBe(0);
  });

  it('refuses bad options', async () => {
    const m = await manager();
    expect(() => m.writable({ highWaterMark: 0 })).toThrow(ScalingError);
    expect(() => m.writable({ highWaterMark: 1.5 })).toThrow(/options.highWaterMark must be an integer/);
    expect(() => m.writable({ retryMs: -1 })).toThrow(/options.retryMs must be an integer/);
    expect(() => m.writable(5 as never)).toThrow(/writable: options must be an object, got 5/);
  });

  it('errors with ManagerClosedError once the manager is closed, also while waiting for room', async () => {
    const m = await manager();
    const stream = m.writable();
    for (let i = 0; i < m.ringCapacity + 1; i++) stream.write({ key: 1, payload: `e${i}` }); // the last one waits
    const failed = once(stream, 'error');
    await m.close();
    const [error] = await failed;
    expect(error).toBeInstanceOf(ManagerClosedError);
    expect(pollAll(m, 0)).toEqual(names(m.ringCapacity)); // what was accepted is still there

    const late = m.writable();
    const lateError = once(late, 'error');
    late.write({ key: 1, payload: 'x' });
    expect((await lateError)[0]).toBeInstanceOf(ManagerClosedError);
  });
});

describe('manager.writableStream()', () => {
  it('holds the writer back while a ring is full and delivers every record in order', async () => {
    const m = await manager();
    const writer = m.writableStream({ highWaterMark: 2 }).getWriter();
    const writes: Promise<void>[] = [];
    for (let i = 0; i < m.ringCapacity; i++) writes.push(writer.write({ key: 3, payload: `e${i}` }));
    await Promise.all(writes);
    expect(m.ringLength(0)).toBe(m.ringCapacity);
    // The ring is full: the next write stays pending and the queue fills.
    let ninthDone = false;
    const ninth = writer.write({ key: 3, payload: `e${m.ringCapacity}` }).then(() => { ninthDone = true; });
    const tenth = writer.write({ key: 3, payload: `e${m.ringCapacity + 1}` });
    expect(writer.desiredSize).toBe(0);
    await new Promise((r) => setTimeout(r, 20));
    expect(ninthDone).toBe(false);
    const got = pollAll(m, 0);
    await ninth;
    await tenth;
    await writer.close();
    got.push(...pollAll(m, 0));
    expect(got).toEqual(names(m.ringCapacity + 2));
  });

  it('rejects a bad record with a TypeError and writes nothing', async () => {
    const m = await manager();
    const writer = m.writableStream().getWriter();
    await expect(writer.write(null as never)).rejects.toThrow(/writableStream: each record must be \{ key, payload \}, got null/);
    expect(m.stats().pushed).toBe(0);
    expect(() => m.writableStream({ highWaterMark: -1 })).toThrow(ScalingError);
  });
});

describe('manager.batches()', () => {
  it('yields what was pushed before and after it started, in order, and ends when the manager closes', async () => {
    const m = await manager({ ringBufferCapacity: 64 });
    for (const p of names(5)) m.push(1, p);
    const got: string[] = [];
    let ended = false;
    const loop = (async () => {
      for await (const batch of m.batches(0, { max: 3 })) {
        expect(batch.length).toBeLessThanOrEqual(3);
        got.push(...batch.map((r) => text.decode(r)));
      }
      ended = true;
    })();
    while (got.length < 5) await new Promise((r) => setTimeout(r, 1));
    for (const p of names(5, 5)) m.push(1, p);
    while (got.length < 10) await new Promise((r) => setTimeout(r, 1));
    expect(ended).toBe(false); // an idle open manager keeps the iterator waiting
    for (const p of names(3, 10)) m.push(1, p);
    await m.close(); // the last three are still in the ring: yielded before the end
    await loop;
    expect(ended).toBe(true);
    expect(got).toEqual(names(13));
  });

  it('ends when its shard is drained and removed, after yielding every record the shard accepted', async () => {
    const m = await manager({ initialShards: 2, ringBufferCapacity: 64 });
    for (let i = 0; i < 40; i++) m.push(i * 0x9e3779b1, `e${i}`);
    const inShard1 = m.stats().shards.find((s) => s.id === 1)!.pushed;
    expect(inShard1).toBeGreaterThan(0);
    const got: string[] = [];
    const loop = (async () => { for await (const b of m.batches(1)) got.push(...b.map((r) => text.decode(r))); })();
    await m.removeShard(1); // resolves once the iterator took the ring's records
    await loop;
    expect(got).toHaveLength(inShard1);
    expect(m.mapper.shardState(1)).toBeUndefined();
  });

  it('refuses a bad or unknown shard id and bad options at the call, not at the first next()', async () => {
    const m = await manager();
    expect(() => m.batches(99)).toThrow(/batches: unknown shard 99/);
    expect(() => m.batches(1.5)).toThrow(/shard id must be an integer, got 1.5/);
    expect(() => m.batches('0' as never)).toThrow(ScalingError);
    expect(() => m.batches(0, { max: 0 })).toThrow(/batches: options.max must be an integer in \[1, /);
    expect(() => m.batches(0, { idleMs: Infinity })).toThrow(/batches: options.idleMs must be an integer/);
    expect(() => m.batches(0, null as never)).toThrow(/batches: options must be an object, got null/);
  });

  it('refuses a shard whose ring is consumed by worker threads', async () => {
    const m = await manager({
      consumer: { module: new URL('./fixtures/count-consumer.mjs', import.meta.url), threads: 1 },
    });
    expect(() => m.batches(0)).toThrow(/batches: shard 0 is consumed by worker threads/);
  });
});

describe('Writable is a real Node stream', () => {
  it('is an instance of stream.Writable, so stream utilities accept it', async () => {
    const m = await manager();
    expect(m.writable()).toBeInstanceOf(Writable);
  });
});

describe('stream writers and key order across moves (routing affinity)', () => {
  for (const kind of ['writable', 'writableStream'] as const) {
    it(`${kind}(): a write whose key is moving waits without pushing again (one refusal for the stall), then goes in once the shard it left delivered`, async () => {
      const m = await manager({ routing: 'affinity', ringBufferCapacity: 64, policy: { maxShards: 4, autoScale: false } });
      for (let k = 0; k < 32; k++) expect(m.push(k * 0x8000000, `old${k}`)).toBe(true); // all on shard 0
      const id = await m.addShard();
      let key = -1;
      for (let k = 0; k < 32 && key < 0; k++) if (m.mapper.selectShard(k * 0x8000000) === id) key = k * 0x8000000;
      expect(key, 'a key that moved to the new shard').toBeGreaterThanOrEqual(0);
      const before = m.stats();
      let done = false;
      if (kind === 'writable') m.writable().write({ key, payload: 'moved' }, () => { done = true; });
      else void m.writableStream().getWriter().write({ key, payload: 'moved' }).then(() => { done = true; });
      await new Promise((r) => setTimeout(r, 300)); // dozens of the writer's checks (pauses up to 8 ms)
      expect(done).toBe(false); // the key waits for shard 0's 32 events
      const held = m.stats();
      expect(held.keyOrder.refused - before.keyOrder.refused).toBe(1); // the code before: ~200 here, one per retry
      expect(held.drops.moving - before.drops.moving).toBe(1);
      expect(pollAll(m, 0)).toEqual(Array.from({ length: 32 }, (_, k) => `old${k}`)); // delivered: the fence passes
      for (let i = 0; i < 200 && !done; i++) await new Promise((r) => setTimeout(r, 5));
      expect(done).toBe(true);
      expect(pollAll(m, id)).toEqual(['moved']);
      expect(m.stats().keyOrder.refused - before.keyOrder.refused).toBe(1);
    });
  }
});
