// Faults: consumer threads that throw, crash, are terminated or never start; callbacks that
// throw (or call back in); producer threads that keep pushing into a shard while it is
// drained and removed. In every case nothing accepted is lost and the mapper stays
// consistent.
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { Worker } from 'node:worker_threads';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BackpressureError, ManagerClosedError, ShardManager, ShardMapper, type ManagerEvent,
} from 'shard-mapper';
import { DeliveryLog, seqPayload, sleep, pushWithRetry, expectExactlyOnce, onThisLogsChannel, settledFlag } from './helpers/delivery.js';
import { prng, withEnv } from './helpers/index.js';
import { SharedCore } from '../dist/core.js';
import { CLAIM_START, M_DELIVERED, M_EVICTED, R_CURSOR } from '../dist/layout.generated.js';

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url);
const seqConsumer = () => onThisLogsChannel(fixture('seq-consumer.mjs'));
const producerModule = fixture('seq-producer.mjs');

class Boom extends Error {}


function startProducers(m: ShardManager, count: number, perProducer: number) {
  const workers = Array.from({ length: count }, (_, producer) =>
    new Worker(producerModule, { workerData: { handle: m.producerHandle(), producer, count: perProducer, payloadBytes: 16 } }));
  const done = Promise.all(workers.map((w) => new Promise<void>((resolve, reject) => {
    w.once('message', () => resolve());
    w.once('error', reject);
  })));
  const producing = settledFlag(done);
  return { workers, done, get finished() { return producing.settled; } };
}


/** The mapper's view is coherent: counts match states, no Active id is missing from routing. */
function expectConsistent(m: ShardMapper): void {
  const all = m.allShardIds();
  expect(m.activeShardCount()).toBe(all.filter((id) => m.shardState(id) === 'active').length);
  expect(m.activeShardIds()).toEqual(all.filter((id) => m.shardState(id) === 'active'));
  expect(m.activeShardCount()).toBeLessThanOrEqual(m.policy().maxShards);
  const routed = new Set(Array.from({ length: 64 }, (_, i) => m.selectShard(Math.floor((i * 2 ** 32) / 64))));
  for (const id of routed) expect(m.shardState(id), `selectShard answered ${id}`).toBe('active');
}

let log: DeliveryLog | undefined;
afterEach(() => { log?.close(); log = undefined; });

describe('faults: consumer threads', () => {
  it('a consumer that throws on every 5th batch: each batch is retried until acknowledged; exactly once, in order, while shards come and go', async () => {
    log = new DeliveryLog();
    const errors: number[] = [];
    const m = await ShardManager.create({
      initialShards: 2, ringBufferCapacity: 256, policy: { maxShards: 5, autoScale: false },
      consumer: { module: fixture('sometimes-throwing-consumer.mjs'), threads: 2, batchSize: 64 },
      onConsumerError: (e, id) => { expect(e.message).toMatch(/sometimes-throwing consumer/); errors.push(id); },
    });
    const producers = startProducers(m, 2, 60_000);
    const random = prng(7);
    const removals: Promise<void>[] = [];
    while (!producers.finished) {
      await sleep(10);
      const active = m.mapper.activeShardIds();
      if (random() < 0.5 && active.length < 5) await m.addShard();
      else if (active.length > 2) removals.push(m.removeShard(active[Math.floor(random() * active.length)]!));
      expectConsistent(m.mapper);
    }
    await producers.done;
    await Promise.all(removals);
    await m.close();
    await log.waitFor(120_000);
    await Promise.all(producers.workers.map((w) => w.terminate()));
    expect(errors.length).toBeGreaterThan(10);
    expect(m.stats()).toMatchObject({ pushed: 120_000, delivered: 120_000, inFlight: 0 });
    expectExactlyOnce(log, 2, 60_000);
  });

  it('a consumer thread that exits by itself mid-stream: a fresh thread takes over from the last acknowledgement, nothing lost or duplicated', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shard-mapper-crash-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    await withEnv({ SM_TEST_CRASH_MARKER: join(dir, 'crashed'), SM_TEST_CRASH_AFTER: '30' }, async () => {
      log = new DeliveryLog();
      const restarted: ManagerEvent[] = [];
      const m = await ShardManager.create({
        initialShards: 3, ringBufferCapacity: 128, policy: { maxShards: 4, autoScale: false },
        consumer: { module: fixture('crash-once-consumer.mjs'), threads: 2, batchSize: 16 },
        onEvent: (e) => { if (e.type === 'consumerRestarted') restarted.push(e); },
      });
      const total = 30_000;
      for (let seq = 0; seq < total; seq++) await pushWithRetry(m, seq * 2654435761, seqPayload(0, seq));
      await log.waitFor(total);
      expect(m.consumers().map((c) => c.alive)).toEqual([true, true]); // the dead one was replaced
      await m.close();
      expect(restarted).toHaveLength(1);
      expect(restarted[0]).toMatchObject({ exitCode: 7 });
      // it died before reporting its batch, so every record was reported exactly once
      expectExactlyOnce(log, 1, total);
      expect(m.stats()).toMatchObject({ pushed: total, delivered: total, inFlight: 0 });
    });
  });

  it('a consumer thread terminated inside its acknowledgement, on a full ring whose freed slots producers reuse: the rewind frees the rest, nothing is stuck or counted twice', async () => {
    // What worker.terminate() can leave when it stops the thread inside ringAck (WASM stops
    // at a loop back-edge): the batch committed (cursor and delivered count move together,
    // in straight-line code), only its first slots freed. Producers on the full ring reuse
    // the freed slots at once; the rest stay taken until the rewind frees them.
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 16 });
    const cap = m.ringCapacity;
    for (let i = 0; i < cap; i++) expect(m.push(0, `a${i}`)).toBe(true);
    expect(() => m.push(0, 'full')).toThrow(BackpressureError);
    const core = SharedCore.attachSync(m.producerHandle().core);
    const slot = m.mapper.slotOf(0)!;
    const base = core.abi.slotAddress(slot);
    expect(core.abi.ringClaim(slot, cap, core.result)).toBe(cap);
    const start = core.u32[(core.result + CLAIM_START) >>> 2]!;
    // ringAck's commit: delivered += cap, then head = claimed = start + cap ...
    const delivered = (base + M_DELIVERED) >>> 2;
    core.u32[delivered] = core.u32[delivered]! + cap;
    core.u32[(base + R_CURSOR) >>> 2] = (start + cap) >>> 0;
    core.u32[((base + R_CURSOR) >>> 2) + 1] = (start + cap) >>> 0;
    // ... then the first 6 slots freed, and the thread stops
    for (let i = 0; i < 6; i++) core.u32[core.recordAt(base, start + i) >>> 2] = (start + i + cap) >>> 0;
    for (let i = 0; i < 6; i++) expect(m.push(0, `b${i}`)).toBe(true); // reuse the freed slots
    expect(() => m.push(0, 'b6')).toThrow(BackpressureError); // the unfreed ones are not free yet
    expect(core.abi.ringRewind(slot)).toBe(0); // what the pool does when the thread's exit is seen: nothing was in flight
    for (let i = 6; i < cap; i++) expect(m.push(0, `b${i}`)).toBe(true);
    expect(m.poll(0).map((r) => new TextDecoder().decode(r))).toEqual(Array.from({ length: cap }, (_, i) => `b${i}`));
    expect(m.stats()).toMatchObject({ pushed: 2 * cap, delivered: 2 * cap, inFlight: 0 });
    expect(m.ringLength(0)).toBe(0);
    core.detach();
  });

  it('byte rings: an evictor terminated between its commit and its byte-head update leaves an empty ring that still looks full by bytes; the next push catches the byte head up', async () => {
    // What worker.terminate() can leave when it stops a dropOldest producer inside its
    // eviction (at a retry of the byte head's CAS): the records are evicted and their
    // descriptors freed, but the byte head never moved. With nothing left to acknowledge or
    // evict, only the push itself can see that the ring is empty and its bytes free.
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 16, maxPayloadBytes: 64, ringBufferBytes: 256, backpressure: { kind: 'dropOldest' } });
    const cap = m.ringCapacity;
    const big = (tag: number) => new Uint8Array(64).fill(tag);
    for (let i = 0; i < 4; i++) expect(m.push(0, big(i))).toBe(true);
    expect(m.ringBytesUsed(0)).toBe(256); // full by bytes, 4 of 16 records
    const core = SharedCore.attachSync(m.producerHandle().core);
    const slot = m.mapper.slotOf(0)!;
    const base = core.abi.slotAddress(slot);
    const cursor = (base + R_CURSOR) >>> 2;
    const start = core.u32[cursor]!;
    // the evictions' commits: evicted += 4, head = claimed = start + 4; descriptors freed
    const evicted = (base + M_EVICTED) >>> 2;
    core.u32[evicted] = core.u32[evicted]! + 4;
    core.u32[cursor] = (start + 4) >>> 0;
    core.u32[cursor + 1] = (start + 4) >>> 0;
    for (let i = 0; i < 4; i++) core.u32[core.recordAt(base, start + i) >>> 2] = (start + i + cap) >>> 0;
    expect(m.ringLength(0)).toBe(0);
    expect(m.ringBytesUsed(0)).toBe(256); // the byte head stayed behind
    expect(m.push(0, big(9))).toBe(true); // caught up: accepted, nothing else evicted or dropped
    expect(m.ringBytesUsed(0)).toBe(64);
    expect(m.poll(0)).toEqual([big(9)]);
    expect(m.stats()).toMatchObject({ pushed: 5, delivered: 1, inFlight: 0, drops: { oldest: 4, newest: 0 } });
    core.detach();
  });

  it('a consumer that dies holding a batch on a full ring whose slots producers keep reusing: the rewind hands the batch out again and the ring keeps flowing', async () => {
    // The reviewer's case: a rewind that expected one exact sequence value in a freed slot
    // stopped when a producer had already reused it. Here the batch is rewound after several
    // laps of reuse of every other slot.
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8 });
    const core = SharedCore.attachSync(m.producerHandle().core);
    const slot = m.mapper.slotOf(0)!;
    const got: string[] = [];
    let pushed = 0;
    const pushUntilFull = () => { for (;;) { try { m.push(0, `e${pushed}`); pushed++; } catch { return; } } };
    pushUntilFull();
    for (let lap = 0; lap < 5; lap++) {
      // take 3 and acknowledge them (as poll does), producers refill
      for (const r of m.poll(0, 3)) got.push(new TextDecoder().decode(r));
      pushUntilFull();
    }
    // a consumer claims 5 and dies before acknowledging
    expect(core.abi.ringClaim(slot, 5, core.result)).toBe(5);
    expect(core.abi.ringRewind(slot)).toBe(5);
    for (let round = 0; round < 10; round++) {
      for (const r of m.poll(0, 3)) got.push(new TextDecoder().decode(r));
      pushUntilFull();
    }
    for (const r of m.poll(0)) got.push(new TextDecoder().decode(r));
    expect(got).toEqual(Array.from({ length: pushed }, (_, i) => `e${i}`));
    expect(m.stats()).toMatchObject({ pushed, delivered: pushed, inFlight: 0 });
    core.detach();
  });

  it('consumer threads terminated from outside while producer threads push and shards are being removed: nothing lost, removals resolve', async () => {
    log = new DeliveryLog();
    const m = await ShardManager.create({
      initialShards: 3, ringBufferCapacity: 256, policy: { maxShards: 6, autoScale: false },
      consumer: { module: seqConsumer(), threads: 2, batchSize: 32 },
    });
    const producers = startProducers(m, 2, 200_000);
    const random = prng(11);
    let kills = 0;
    const removals: Promise<void>[] = [];
    while (!producers.finished) {
      await sleep(8);
      const active = m.mapper.activeShardIds();
      try {
        if (active.length < 6) await m.addShard();
      } catch (error) {
        // every shard still draining holds a slot until its consumer is done with it
        if ((error as { kind?: string }).kind !== 'ShardCreationFailed') throw error;
      }
      if (active.length > 2) {
        const victim = active[Math.floor(random() * active.length)]!;
        removals.push(m.removeShard(victim));
        // kill the thread that owns the shard being removed, half the time
        const owner = m.consumers().find((c) => c.alive && c.shards.includes(victim));
        // the first three times for sure (so the run exercises it however fast pushes are), then half the time
        if (owner && (kills < 3 || random() < 0.5)) { await m.terminateConsumer(owner.index); kills++; }
      }
      expectConsistent(m.mapper);
    }
    await producers.done;
    await Promise.all(removals);
    await m.close();
    await log.waitFor(400_000);
    await Promise.all(producers.workers.map((w) => w.terminate()));
    expect(kills).toBeGreaterThan(2);
    // at-least-once across a crash: a batch handed to a killed thread comes again
    expect(log.problems(2, 200_000).missing).toBe(0);
    expect(m.stats()).toMatchObject({ pushed: 400_000, delivered: 400_000, inFlight: 0 }); // acknowledged once each
  });

  it('a consumer module that fails to load: create() rejects with its error, no thread is restarted, nothing is left unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      for (const threads of [1, 2]) {
        const restarted: ManagerEvent[] = [];
        await expect(ShardManager.create({
          initialShards: 1, ringBufferCapacity: 8, consumer: { module: fixture('broken-consumer.mjs'), threads },
          onEvent: (e) => restarted.push(e),
        })).rejects.toThrow(/consumer worker failed to start: broken consumer module: fails while loading/);
        await sleep(300); // a restarted thread would fail again within this
        expect(restarted).toEqual([]);
      }
      // Regression: the pool took the failed thread's exit for a crash and started a
      // replacement, whose own failure was an unhandled rejection that ended the process.
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('a consumer module with a syntax error: the error names the module (V8 says only "Unexpected token")', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shard-mapper-syntax-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    // Written here, not kept as a fixture: the linter would refuse to parse it.
    const path = join(dir, 'syntax-error-consumer.mjs');
    writeFileSync(path, 'export default function consume(records {\n}\n');
    const error = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, consumer: { module: path, threads: 1 } }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(error?.message).toMatch(/^consumer worker failed to start: .*Unexpected token.* \(consumer module file:\/\/.*syntax-error-consumer\.mjs\)$/);
  });

  it('a consumer thread that ends before it is ready: create() rejects saying so (it used to wait forever), restarting nothing', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const cases = [
        { consumer: { module: fixture('exit-while-loading-consumer.mjs'), threads: 2 }, error: /the consumer thread for .*exit-while-loading-consumer\.mjs ended before it was ready.*\(exit code 0\)/ },
        { consumer: { worker: () => new Worker(fixture('never-serves-worker.mjs')), threads: 1 }, error: /options\.consumer\.worker ended before it was ready: its script must call serveConsumer/ },
      ];
      for (const { consumer, error } of cases) {
        const events: ManagerEvent[] = [];
        let spawned = 0;
        const counted = 'worker' in consumer ? { ...consumer, worker: () => { spawned++; return consumer.worker(); } } : consumer;
        const outcome = await Promise.race([
          ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, consumer: counted, onEvent: (e) => events.push(e) }).then(
            (m) => { void m.close({ timeoutMs: 1000 }); return 'created'; },
            (e: Error) => e,
          ),
          sleep(10_000).then(() => 'still waiting after 10 s'),
        ]);
        expect(outcome).toBeInstanceOf(Error);
        expect((outcome as Error).message).toMatch(error);
        await sleep(300); // a restarted thread would be spawned, and fail again, within this
        expect(events).toEqual([]);
        if ('worker' in consumer) expect(spawned).toBe(1);
      }
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('a replacement that dies before it is ready while create() still waits for another thread is restarted (it used to be taken for a failed start and dropped)', async () => {
    const roles = ['serve-then-exit', 'slow-serve', 'exit']; // then 'serve' for every later spawn
    let spawned = 0;
    const m = await ShardManager.create({
      initialShards: 4, ringBufferCapacity: 64,
      consumer: { worker: () => new Worker(fixture('start-roles-worker.mjs'), { workerData: { role: roles[spawned++] ?? 'serve' } }), threads: 2 },
    });
    // the fault hit the state it aims at: by the time create() resolved, the first thread had
    // died after its start and its replacement had died before being ready
    expect(spawned).toBeGreaterThanOrEqual(3);
    const deadline = performance.now() + 10_000;
    while (m.consumers().filter((c) => c.alive && c.ready).length < 2 && performance.now() < deadline) await sleep(20);
    expect(m.consumers().filter((c) => c.alive && c.ready).length).toBe(2);
    expect(spawned).toBe(4);
    for (let i = 0; i < 100; i++) await pushWithRetry(m, i * 2654435761, `e${i}`);
    await m.close();
    expect(m.stats()).toMatchObject({ pushed: 100, delivered: 100, inFlight: 0 });
  });

  it('after close(), scale-ups through manager.mapper are refused before any change (with consumer threads they used to half-allocate)', async () => {
    const m = await ShardManager.create({ initialShards: 2, ringBufferCapacity: 8, policy: { maxShards: 4 }, consumer: { module: seqConsumer(), threads: 1 } });
    await m.close();
    const before = [m.mapper.activeShardIds(), m.mapper.allShardIds(), m.mapper.totalShardCount(), m.mapper.activeShardCount()];
    for (const call of [() => m.mapper.scaleUp(1), () => m.mapper.scaleUpProvisioning(1), () => m.mapper.scaleUpProvisioningForce(2)]) {
      expect(call).toThrow(ManagerClosedError);
      expect([m.mapper.activeShardIds(), m.mapper.allShardIds(), m.mapper.totalShardCount(), m.mapper.activeShardCount()]).toEqual(before);
    }
    expectConsistent(m.mapper);
  });
});

describe('faults: callbacks that throw', () => {
  it('mapper: a throwing onShardCreated propagates, yet every shard of the scale-up is Active, routable and called back once; the cooldown was stamped', async () => {
    const clock = { t: 0 };
    const mapper = await ShardMapper.create(1, 16, { maxShards: 6, cooldownMs: 1000 }, { clock: () => clock.t });
    const calls: number[] = [];
    mapper.setOnShardCreated((id) => { calls.push(id); if (id === 2) throw new Boom(`created ${id}`); });
    expect(() => mapper.scaleUp(3)).toThrow(Boom);
    expect(calls).toEqual([1, 2, 3]);
    expect(mapper.activeShardIds()).toEqual([0, 1, 2, 3]);
    expectConsistent(mapper);
    expect(() => mapper.scaleUp(1)).toThrow(expect.objectContaining({ kind: 'InCooldown' }));
    // activate() too: the shard is Active when the error reaches the caller
    clock.t = 1000;
    const [p] = mapper.scaleUpProvisioning(1);
    mapper.setOnShardCreated(() => { throw new Boom('activate'); });
    expect(() => mapper.activate(p!)).toThrow(Boom);
    expect(mapper.shardState(p!)).toBe('active');
    expect(mapper.activate(p!)).toBe(false); // and it is not activated (or called back) twice
    expectConsistent(mapper);
  });

  it('mapper: a throwing onShardRemoved propagates from finalizeDraining, every drained shard is Stopped and called once, and can be removed', async () => {
    const clock = { t: 0 };
    const mapper = await ShardMapper.create(4, 16, { maxShards: 4, cooldownMs: 1 }, { clock: () => clock.t, drainGraceMs: 10 });
    mapper.drainSpecific(1);
    mapper.drainSpecific(2);
    mapper.drainSpecific(3);
    const calls: number[] = [];
    mapper.setOnShardRemoved((id) => { calls.push(id); throw new Boom(`removed ${id}`); });
    clock.t = 11;
    expect(() => mapper.finalizeDraining()).toThrow(Boom);
    expect(calls).toEqual([1, 2, 3]);
    expect([1, 2, 3].map((id) => mapper.shardState(id))).toEqual(['stopped', 'stopped', 'stopped']);
    expect(mapper.finalizeDraining()).toEqual([]); // not stopped (or called back) twice
    expect(mapper.removeStoppedShards()).toEqual([1, 2, 3]);
    expect(mapper.totalShardCount()).toBe(1);
    expectConsistent(mapper);
  });

  it('mapper: callbacks may call back into the mapper (drain, remove, select) and leave it consistent', async () => {
    const clock = { t: 0 };
    const mapper = await ShardMapper.create(2, 16, { maxShards: 4, cooldownMs: 1 }, { clock: () => clock.t, drainGraceMs: 0 });
    const seen: string[] = [];
    mapper.setOnShardCreated((id) => {
      seen.push(`created ${id}: routes to ${mapper.selectShard(0xffffffff)}`);
      if (id === 2) mapper.drainSpecific(0); // re-entrant scale-down from inside a scale-up callback
    });
    mapper.setOnShardRemoved((id) => {
      seen.push(`removed ${id}: ${mapper.shardState(id)}`);
      expect(mapper.removeSpecificStoppedShard(id)).toBe(true); // remove itself right away
    });
    mapper.scaleUp(2);
    expect(mapper.shardState(0)).toBe('draining');
    clock.t = 5;
    expect(mapper.finalizeDraining()).toEqual([0]);
    expect(mapper.shardState(0)).toBeUndefined();
    expect(seen).toEqual(['created 2: routes to 3', 'created 3: routes to 3', 'removed 0: stopped']);
    expect(mapper.allShardIds()).toEqual([1, 2, 3]);
    expectConsistent(mapper);
  });

  it('manager: manualScaleUp with a throwing onShardCreated rejects with its error, but no shard is left Provisioning', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, policy: { maxShards: 6 } });
    m.mapper.setOnShardCreated((id) => { throw new Boom(`created ${id}`); });
    await expect(m.manualScaleUp(3)).rejects.toThrow(Boom);
    // Regression: the first callback error stopped the activation loop, leaving shards
    // 2 and 3 Provisioning for good (never routable, their slots held).
    expect([1, 2, 3].map((id) => m.mapper.shardState(id))).toEqual(['active', 'active', 'active']);
    expectConsistent(m.mapper);
    for (let i = 0; i < 24; i++) m.push(Math.ceil((i * 2 ** 32) / 24), `e${i}`); // spread over the 4 shards
    expect([0, 1, 2, 3].map((id) => m.poll(id).length)).toEqual([6, 6, 6, 6]);
  });

  it('manager: a throwing onShardRemoved makes removeShard and tick reject, but the shards are removed and the totals kept', async () => {
    const clock = { t: 0 };
    const m = await ShardManager.create({ initialShards: 4, ringBufferCapacity: 8, clock: () => clock.t, drainGraceMs: 10, policy: { maxShards: 4, autoScale: false } });
    for (let i = 0; i < 20; i++) m.push(i * 214748364, `e${i}`);
    const pushed = m.stats().pushed;
    const calls: number[] = [];
    m.mapper.setOnShardRemoved((id) => { calls.push(id); throw new Boom(`removed ${id}`); });
    // removeShard: drained by poll, then stopped (callback throws) — the shard still goes
    const removal = m.removeShard(3);
    m.poll(3);
    await expect(removal).rejects.toThrow(Boom);
    expect(m.mapper.shardState(3)).toBeUndefined();
    // tick: drained shards stopped by finalizeDraining (callback throws) are removed in the same pass
    await m.drainShard(1);
    await m.drainShard(2);
    m.poll(1);
    m.poll(2);
    clock.t = 11;
    expect(() => m.tick()).toThrow(Boom);
    expect(calls).toEqual([3, 1, 2]);
    expect(m.mapper.allShardIds()).toEqual([0]);
    expect(m.mapper.totalShardCount()).toBe(1);
    expect(m.stats()).toMatchObject({ pushed, delivered: pushed - m.ringLength(0) });
    expectConsistent(m.mapper);
  });

  it('manager: under start(), a throwing callback becomes a tickError event and the loop goes on', async () => {
    const events: ManagerEvent[] = [];
    const m = await ShardManager.create({
      initialShards: 3, ringBufferCapacity: 8, drainGraceMs: 0, onEvent: (e) => events.push(e),
      policy: { maxShards: 3, metricsWindowMs: 5, autoScale: false },
    });
    m.mapper.setOnShardRemoved(() => { throw new Boom('removed'); });
    m.start();
    await m.drainShard(2);
    for (let i = 0; i < 100 && m.mapper.shardState(2) !== undefined; i++) await sleep(5);
    m.stop();
    expect(m.mapper.shardState(2)).toBeUndefined();
    expect(events.some((e) => (e.type as string) === 'tickError' || e.type === 'consumerError')).toBe(true);
    expectConsistent(m.mapper);
  });
});

describe('faults: producers racing drain and removal', () => {
  it('producer threads keep pushing into a shard while it is drained and removed, 40+ times: nothing lost or duplicated, in order, mapper consistent', async () => {
    log = new DeliveryLog();
    const perShard = new Map<number, number>();
    const tap = new BroadcastChannel(log.channelName);
    tap.onmessage = (e: MessageEvent) => {
      const { shardId, pairs } = e.data as { shardId: number; pairs: Uint32Array };
      perShard.set(shardId, (perShard.get(shardId) ?? 0) + pairs.length / 2);
    };
    try {
      const m = await ShardManager.create({
        initialShards: 2, ringBufferCapacity: 512, drainGraceMs: 1,
        policy: { minShards: 1, maxShards: 4, autoScale: false },
        consumer: { module: seqConsumer(), threads: 2, batchSize: 64 },
      });
      const PRODUCERS = 4;
      const PER_PRODUCER = 200_000;
      const producers = startProducers(m, PRODUCERS, PER_PRODUCER);
      const victims: number[] = [];
      let cycle = 0;
      while (!producers.finished) {
        // A new shard has weight 0: until the next collection it is the one every producer
        // routes to. Drain and remove it while they hammer it.
        const id = await m.addShard();
        await sleep(1);
        if (cycle++ % 2 === 0) {
          await m.removeShard(id); // waits for the closed ring to be fully acknowledged
        } else {
          await m.drainShard(id); // the scaling loop's way: finalizeDraining after the grace
          while (m.mapper.shardState(id) !== undefined) { await sleep(1); m.tick(); }
        }
        victims.push(id);
        expect(m.mapper.shardState(id)).toBeUndefined();
        expect(m.mapper.metricsCollector(id)).toBeUndefined();
        expectConsistent(m.mapper);
        m.mapper.collectMetrics(); // let the weights settle, as a tick would
      }
      await producers.done;
      await m.close();
      const total = PRODUCERS * PER_PRODUCER;
      await log.waitFor(total, 60_000);
      await Promise.all(producers.workers.map((w) => w.terminate()));
      expect(victims.length).toBeGreaterThanOrEqual(40);
      // victims really took events right up to their drain and removal
      const busyVictims = victims.filter((id) => (perShard.get(id) ?? 0) > 0).length;
      expect(busyVictims).toBeGreaterThanOrEqual(20);
      expect(m.stats()).toMatchObject({ pushed: total, delivered: total, inFlight: 0, unrouted: 0 });
      expectExactlyOnce(log, PRODUCERS, PER_PRODUCER);
    } finally {
      tap.close();
    }
  });

  it("an operator's scale-up waits for a consumer thread busy in its function to let go of a removed shard's slot, instead of refusing", async () => {
    // A removed shard's slot is free only once its consumer thread answers the release, between
    // two batches. Rapid add/remove cycles under load saw addShard refuse with every slot held
    // that way (the racing test above, while other suites ran).
    await withEnv({ SM_TEST_SLOW_MS: '500' }, async () => {
      log = new DeliveryLog();
      const m = await ShardManager.create({
        initialShards: 1, maxSlots: 2, ringBufferCapacity: 64, drainGraceMs: 0,
        policy: { minShards: 1, maxShards: 2, autoScale: false },
        consumer: { module: seqConsumer(), threads: 1, batchSize: 8 },
      });
      onTestFinished(() => m.close());
      const id = await m.addShard(); // both slots in use
      const toShard0 = (seq: number) => {
        let h = 1;
        while (m.mapper.selectShard(h) !== 0) h++;
        expect(m.push(h, seqPayload(0, seq))).toBe(true);
      };
      toShard0(0);
      await log.waitFor(1, 10_000, 10); // the thread is up and owns shard 0
      toShard0(1);
      await sleep(100); // it claimed event 1 and sleeps 500 ms inside the function
      await m.removeShard(id); // empty: gone at once; the release waits for the batch to end
      expect(log.received).toBe(1); // still inside the batch: the slot is held
      const next = await m.addShard();
      expect(log.received).toBe(2); // the call waited for the batch, then for the release
      expect(next).toBeGreaterThan(id);
      expect(m.mapper.shardState(next)).toBe('active');
      await m.close();
      expect(m.stats()).toMatchObject({ pushed: 2, delivered: 2 });
    });
  });

  it('a drain that races a producer thread: every push that returned true lands before the ring closes (and is delivered once) or is re-routed', async () => {
    const m = await ShardManager.create({
      initialShards: 2, ringBufferCapacity: 1 << 16, policy: { maxShards: 3, autoScale: false }, backpressure: { kind: 'dropNewest' },
      // leastLoaded: a new shard (weight 0) takes every push until the next collection, so
      // each drain closes a ring the producer is pushing into (balanced would share the load
      // by the others' last metrics and could leave the new shard idle)
      routing: 'leastLoaded',
    });
    const count = 8_000_000;
    const accepted = new Uint8Array(new SharedArrayBuffer(count));
    const progress = new Int32Array(new SharedArrayBuffer(16)); // see kill-producer.mjs
    const packed = new BigInt64Array(progress.buffer, 0, 1);
    const acceptedSoFar = () => Number(Atomics.load(packed, 0) & 0xffffffffn);
    const producer = new Worker(fixture('kill-producer.mjs'), {
      // the top of the hash range: the newest shard while it is a candidate (last in table order)
      workerData: { handle: m.producerHandle(), producer: 0, mode: 'push', count, payloadBytes: 16, batch: 1, hash: 0xffffffff, progress: progress.buffer, accepted: accepted.buffer, exact: true },
    });
    const exited = new Promise((resolve) => producer.once('exit', resolve));
    await new Promise((resolve) => producer.once('message', resolve)); // attached, pushing
    const delivered = new Uint8Array(count);
    const take = (id: number) => {
      let n = 0;
      for (const r of m.poll(id)) {
        const seq = r[4]! | (r[5]! << 8) | (r[6]! << 16) | (r[7]! << 24);
        delivered[seq]!++;
        n++;
      }
      return n;
    };
    let rounds = 0;
    let racedDrains = 0; // the drained shard took events right up to its drain, while others got the rest
    // Rounds until 21 drains really raced the thread (bounded: at most 300 rounds; on a loaded
    // machine the producer thread is sometimes descheduled through a whole round).
    while (racedDrains <= 20 && rounds < 300) {
      const id = await m.addShard(); // weight 0: every push goes to it until the next collection
      for (let waited = 0; m.ringLength(id) === 0 && waited < 100; waited++) await sleep(1); // the thread pushes into it
      const before = acceptedSoFar();
      await m.drainShard(id); // closes its ring while the thread pushes
      let inVictim = take(id);
      const removal = m.removeShard(id); // resolves once its ring is closed, published and empty
      while (m.mapper.shardState(id) !== undefined) { inVictim += take(id); await sleep(1); }
      for (const other of m.mapper.activeShardIds()) take(other);
      await removal;
      if (inVictim > 0 && acceptedSoFar() > before) racedDrains++;
      expect(m.mapper.shardState(id)).toBeUndefined();
      expectConsistent(m.mapper);
      m.mapper.collectMetrics();
      rounds++;
    }
    await producer.terminate(); // a single push is one straight-line step: it ends before or after one
    await exited;
    for (const id of m.mapper.activeShardIds()) take(id);
    const mark = Number(Atomics.load(packed, 0) >> 32n); // every push below it had returned
    const problems: string[] = [];
    let taken = 0;
    for (let seq = 0; seq < count; seq++) {
      taken += delivered[seq]!;
      if (delivered[seq]! > 1) problems.push(`seq ${seq}: delivered ${delivered[seq]} times`);
      if (seq >= mark) continue;
      if (accepted[seq] && delivered[seq] !== 1) problems.push(`seq ${seq}: returned true, never delivered`);
      if (!accepted[seq] && delivered[seq] !== 0) problems.push(`seq ${seq}: dropped, yet delivered`);
    }
    expect(problems.slice(0, 5)).toEqual([]);
    expect(racedDrains).toBeGreaterThan(20);
    expect(m.stats()).toMatchObject({ pushed: taken, delivered: taken, inFlight: 0, unrouted: 0 });
  });

  it('close() closes every ring after the stopped flag: a reservation after close() can only fail', async () => {
    const m = await ShardManager.create({ initialShards: 3, ringBufferCapacity: 64 });
    const core = SharedCore.attachSync(m.producerHandle().core);
    for (const id of m.mapper.allShardIds()) expect(core.abi.ringIsClosed(m.mapper.slotOf(id)!)).toBe(0);
    m.push(1, 'in');
    await m.close();
    for (const id of m.mapper.allShardIds()) expect(core.abi.ringIsClosed(m.mapper.slotOf(id)!)).toBe(1);
    expect(() => m.push(1, 'late')).toThrow(ManagerClosedError);
    expect(m.stats()).toMatchObject({ pushed: 1, inFlight: 1 }); // no consumer threads: poll() takes it
    expect(m.poll(m.mapper.allShardIds().find((id) => m.ringLength(id) === 1)!)).toHaveLength(1);
    core.detach();
  });
});
