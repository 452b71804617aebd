// ShardManager with consumers (and producers) on real worker threads.
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { Worker } from 'node:worker_threads';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CloseTimeoutError, ShardManager } from 'shard-mapper';
import { churnShards, DeliveryLog, seqPayload, sleep, pushWithRetry, expectExactlyOnce, onThisLogsChannel, settledFlag, within } from './helpers/delivery.js';
import { prng, withEnv } from './helpers/index.js';
import { SharedCore } from '../dist/core.js';

const ROUTING_MODES = ['leastLoaded', 'balanced', 'affinity'] as const;

const consumerModule = () => onThisLogsChannel(new URL('./fixtures/seq-consumer.mjs', import.meta.url));
const flakyModule = new URL('./fixtures/flaky-consumer.mjs', import.meta.url);
const producerModule = new URL('./fixtures/seq-producer.mjs', import.meta.url);

const PRODUCERS_LIMIT_MS = 45_000; // (a run takes 2 to 5 s here; the test timeout is 60 s)

/** Counters and rings, for a failure message. */
function ringsNow(m: ShardManager): string {
  const s = m.stats();
  const shards = s.shards.map((x) => `${x.id} ${x.state} ${x.length} records ${x.bytes} B`).join(', ');
  return `pushed ${s.pushed}, delivered ${s.delivered}, refused ${s.drops.refused}, skipped ${s.skipped}, unrouted ${s.unrouted}; shards: ${shards}; consumers: ${JSON.stringify(m.consumers())}`;
}

/** Until the producer threads are done, every 3 ms: `watch()`, a metrics window (weights move,
 *  so runs go to different shards over time), then a shard added or one removed at random
 *  (2 to 6 Active). Then the removals finish, the manager closes and the threads end. */
async function untilProducersFinish(m: ShardManager, producers: Worker[], random: () => number, watch?: () => void): Promise<void> {
  const done = Promise.all(producers.map((w) => new Promise<void>((resolve, reject) => { w.on('message', () => resolve()); w.on('error', reject); })));
  const producing = settledFlag(done);
  const removals: Promise<void>[] = [];
  const deadline = performance.now() + PRODUCERS_LIMIT_MS;
  while (!producing.settled) {
    // A hang says where it stood (the test timeout alone would not)
    if (performance.now() > deadline) throw new Error(`producer threads still pushing after ${PRODUCERS_LIMIT_MS} ms: ${ringsNow(m)}`);
    await sleep(3);
    watch?.();
    m.mapper.collectMetrics();
    const active = m.mapper.activeShardIds();
    if (random() < 0.5 && active.length < 6) await m.addShard();
    else if (active.length > 2) removals.push(m.removeShard(active[Math.floor(random() * active.length)]!));
  }
  await done;
  await within(Promise.all(removals), 10_000, () => `removals: ${ringsNow(m)}`);
  await within(m.close(), 10_000, () => `close: ${ringsNow(m)}`);
  await Promise.all(producers.map((w) => w.terminate()));
}



let log: DeliveryLog | undefined;
afterEach(() => log?.close());

// Every test runs under each routing mode: delivery (exactly once, in order per shard) must
// not depend on how hashes are spread.
describe.each(ROUTING_MODES)('ShardManager on worker threads (routing %s)', (routing) => {
  it('delivers 100k sequenced events exactly once, in push order per shard, while shards are added, drained and removed at random', async () => {
    const seed = 0x5eed0001;
    const random = prng(seed);
    log = new DeliveryLog();
    const m = await ShardManager.create({
      routing,
      initialShards: 2, ringBufferCapacity: 512, policy: { minShards: 1, maxShards: 6 },
      consumer: { module: consumerModule(), threads: 2, batchSize: 64 },
    });
    const total = 100_000;
    const removals: Promise<void>[] = [];
    let ops = 0;
    for (let seq = 0; seq < total; seq++) {
      await pushWithRetry(m, Math.floor(random() * 2 ** 32), seqPayload(0, seq));
      if (seq % 2500 === 2499) {
        ops += await churnShards(m, random, 6, removals);
      }
    }
    await Promise.all(removals);
    await m.close();
    await log.waitFor(total);
    const s = m.stats();
    expect(ops, `seed ${seed}`).toBeGreaterThan(20);
    expect(s.pushed).toBe(total);
    expect(s.delivered).toBe(total);
    expect(log.received).toBe(total);
    expectExactlyOnce(log, 1, total);
  });

  it('grows the shared memory for shards added after start-up, and every attached thread uses them', async () => {
    log = new DeliveryLog();
    const m = await ShardManager.create({
      routing,
      // 1 MiB payload areas, given: the default stopped growing with maxPayloadBytes past 256
      // (it would be 512 KiB), and this test is about growth past the initial memory
      initialShards: 1, ringBufferCapacity: 2048, maxPayloadBytes: 512, ringBufferBytes: 2048 * 512, policy: { minShards: 1, maxShards: 8 },
      consumer: { module: consumerModule(), threads: 2, batchSize: 64 },
    });
    const producer = new Worker(producerModule, { workerData: { handle: m.producerHandle(), producer: 1, count: 20_000, payloadBytes: 300 } });
    const producerDone = new Promise<void>((resolve, reject) => { producer.on('message', () => resolve()); producer.on('error', reject); });
    const before = m.memoryBytes;
    const added = await m.manualScaleUp(7); // 7 × ~1 MiB of rings: far past the initial memory
    expect(m.memoryBytes).toBeGreaterThan(before + 7 * 2048 * 512);
    for (let seq = 0; seq < 20_000; seq++) await pushWithRetry(m, seq * 2654435761, seqPayload(0, seq, 300));
    await producerDone;
    const perShard = m.stats().shards;
    for (const id of added) expect(perShard.find((s) => s.id === id)!.pushed, `shard ${id}`).toBeGreaterThan(0);
    await m.close();
    await producer.terminate();
    await log.waitFor(40_000);
    expectExactlyOnce(log, 2, 20_000); // main thread (0) and the producer thread (1)
  });

  it('takes events from 4 producer threads concurrently without corrupting a ring or losing one', async () => {
    log = new DeliveryLog();
    const m = await ShardManager.create({
      routing,
      initialShards: 3, ringBufferCapacity: 256, policy: { minShards: 1, maxShards: 6 },
      consumer: { module: consumerModule(), threads: 2, batchSize: 128 },
    });
    const perProducer = 25_000;
    const producers = [0, 1, 2, 3].map((producer) => new Worker(producerModule, {
      workerData: { handle: m.producerHandle(), producer, count: perProducer, payloadBytes: 24 },
    }));
    const done = producers.map((w) => new Promise<void>((resolve, reject) => {
      w.on('message', () => resolve());
      w.on('error', reject);
    }));
    // Scale while they push.
    const producing = settledFlag(Promise.all(done));
    const random = prng(42);
    const removals: Promise<void>[] = [];
    while (!producing.settled) {
      await sleep(5);
      const active = m.mapper.activeShardIds();
      if (random() < 0.5 && active.length < 6) await m.addShard();
      else if (active.length > 2) removals.push(m.removeShard(active[Math.floor(random() * active.length)]!));
    }
    await Promise.all(done);
    await Promise.all(removals);
    await m.close();
    await Promise.all(producers.map((w) => w.terminate()));
    await log.waitFor(4 * perProducer);
    // failProducer drops nothing: refusals (a full ring, or under affinity a key waiting after a move) were retried, and are not drops
    expect(m.stats()).toMatchObject({ pushed: 4 * perProducer, delivered: 4 * perProducer, dropped: 0 });
    expectExactlyOnce(log, 4, perProducer);
  });

  // Keys close together send a call's events to one shard (the run path); keys spread over
  // the hash space send them to every shard (grouped blocks: docs/architecture.md).
  it.each([
    { name: 'pushBatch', fixed: false, scatter: false, keys: 'close together (one run a call)' },
    { name: 'pushFixed', fixed: true, scatter: false, keys: 'close together (one run a call)' },
    { name: 'pushBatch', fixed: false, scatter: true, keys: 'spread over every shard (grouped blocks)' },
    { name: 'pushFixed', fixed: true, scatter: true, keys: 'spread over every shard (grouped blocks)' },
  ])('takes $name calls with keys $keys from 4 producer threads concurrently: exactly once, in order, while shards change', async ({ name, fixed, scatter }) => {
    log = new DeliveryLog();
    const m = await ShardManager.create({
      routing,
      initialShards: 2, ringBufferCapacity: 512, policy: { minShards: 1, maxShards: 6 },
      consumer: { module: consumerModule(), threads: 2, batchSize: 128 },
    });
    const perProducer = 50_000;
    const producers = [0, 1, 2, 3].map((producer) => new Worker(producerModule, {
      workerData: { handle: m.producerHandle(), producer, count: perProducer, payloadBytes: 16, batch: 200, fixed, scatter },
    }));
    await untilProducersFinish(m, producers, prng(scatter ? 13 : 7));
    await log.waitFor(4 * perProducer);
    // (skipped: records a grouped block reserved past a cut, where a reservation came short in
    // a race with another producer or a closing ring, given up as padding)
    if (scatter) console.log(`grouped blocks, ${routing}, ${name}: skipped ${m.stats().skipped}, refused ${m.stats().drops.refused}`);
    expect(m.stats()).toMatchObject({ pushed: 4 * perProducer, delivered: 4 * perProducer, inFlight: 0 });
    expectExactlyOnce(log, 4, perProducer);
  });

  it.each([['push', 0, false], ['pushBatch', 64, false], ['pushFixed', 64, true]])('rings of 100 records (not a power of two: 128 descriptors, a limit of 100): %s from 4 producer threads fills them to the limit and never past it; exactly once, in order, while shards change', async (_name, batch, fixed) => {
    log = new DeliveryLog();
    const m = await ShardManager.create({
      routing,
      initialShards: 2, ringBufferCapacity: 100, policy: { minShards: 1, maxShards: 6 },
      consumer: { module: consumerModule(), threads: 2, batchSize: 16 },
    });
    const perProducer = 20_000;
    const producers = [0, 1, 2, 3].map((producer) => new Worker(producerModule, {
      workerData: { handle: m.producerHandle(), producer, count: perProducer, payloadBytes: 16, batch, fixed },
    }));
    let longest = 0;
    await untilProducersFinish(m, producers, prng(17), () => {
      for (const sh of m.stats().shards) longest = Math.max(longest, sh.length);
    });
    await log.waitFor(4 * perProducer);
    const s = m.stats();
    expect(s).toMatchObject({ pushed: 4 * perProducer, delivered: 4 * perProducer, inFlight: 0 });
    expectExactlyOnce(log, 4, perProducer);
    // the limit was met (refusals with bytes to spare: 16-byte events in room for 101 of 256)
    // and never passed
    expect(s.drops.refused).toBeGreaterThan(0);
    expect(longest).toBeLessThanOrEqual(100);
  });

  it.each([['push', 0, false], ['pushBatch', 64, false], ['pushFixed', 64, true]])('byte rings: %s of mixed sizes (8 B to 1 KiB) from 4 producer threads into rings full by bytes long before by records: exactly once, in order, while shards change', async (_name, batch, fixed) => {
    log = new DeliveryLog();
    const m = await ShardManager.create({
      routing,
      // 512 descriptors but 8 KiB of payload: about 16 events of the mix fit, so rings fill by bytes
      initialShards: 2, ringBufferCapacity: 512, ringBufferBytes: 8192, maxPayloadBytes: 1024, policy: { minShards: 1, maxShards: 6 },
      consumer: { module: consumerModule(), threads: 2, batchSize: 64 },
    });
    const perProducer = 20_000;
    const producers = [0, 1, 2, 3].map((producer) => new Worker(producerModule, {
      workerData: { handle: m.producerHandle(), producer, count: perProducer, sizes: [8, 1024], batch, fixed },
    }));
    let longest = 0;
    let fullestBytes = 0;
    await untilProducersFinish(m, producers, prng(11), () => {
      for (const s of m.stats().shards) { longest = Math.max(longest, s.length); fullestBytes = Math.max(fullestBytes, s.bytes); }
    });
    await log.waitFor(4 * perProducer);
    const s = m.stats();
    expect(s).toMatchObject({ pushed: 4 * perProducer, delivered: 4 * perProducer, inFlight: 0 });
    expectExactlyOnce(log, 4, perProducer);
    // the rings really were full by bytes: pushes were refused, and no ring came near its 512 records
    expect(s.drops.refused).toBeGreaterThan(0);
    expect(longest).toBeLessThan(512);
    expect(fullestBytes).toBeGreaterThan(8192 / 2);
  });

  it('hands a terminated consumer\'s shards to a fresh thread from the last acknowledgement', async () => {
    log = new DeliveryLog();
    const restarted: number[] = [];
    const m = await ShardManager.create({
      routing,
      initialShards: 2, ringBufferCapacity: 1024, consumer: { module: consumerModule(), threads: 2, batchSize: 32 },
      onEvent: (e) => { if (e.type === 'consumerRestarted') restarted.push(e.worker); },
    });
    const total = 40_000;
    for (let seq = 0; seq < total; seq++) {
      await pushWithRetry(m, seq * 2654435761, seqPayload(0, seq));
      if (seq === 15_000) await m.terminateConsumer(0);
      if (seq === 30_000) await m.terminateConsumer(m.consumers().find((c) => c.alive)!.index);
    }
    await m.close();
    await log.waitFor(total);
    expect(restarted).toHaveLength(2);
    const { missing } = log.problems(1, total);
    expect(missing).toBe(0); // records claimed but never acknowledged come again: at-least-once across a crash
    expect(m.stats().delivered).toBe(total); // acknowledged exactly once each
  });

  it('backs off restarting a consumer thread that keeps dying before it is ready, and recovers without loss', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sm-fragile-'));
    const flag = join(dir, 'fail');
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    await withEnv({ SM_TEST_FAIL_FLAG: flag }, async () => {
      log = new DeliveryLog();
      const restarts: number[] = [];
      const m = await ShardManager.create({
      routing,
        initialShards: 1, ringBufferCapacity: 4096, consumer: { module: new URL('./fixtures/fragile-load-consumer.mjs', import.meta.url), threads: 1 },
        onEvent: (e) => { if (e.type === 'consumerRestarted') restarts.push(e.worker); },
      });
      for (let seq = 0; seq < 1000; seq++) await pushWithRetry(m, seq, seqPayload(0, seq));
      writeFileSync(flag, '');
      await m.terminateConsumer(m.consumers()[0]!.index);
      for (let seq = 1000; seq < 3000; seq++) await pushWithRetry(m, seq, seqPayload(0, seq)); // waits in the ring
      await sleep(700);
      // Without backoff a failing restart loops in milliseconds; with it, a handful in 0.7 s.
      expect(restarts.length).toBeGreaterThanOrEqual(2);
      expect(restarts.length).toBeLessThan(8);
      rmSync(flag);
      await m.close(); // waits for a replacement to start and drain the ring
      await log.waitFor(3000);
      expect(log.problems(1, 3000).missing).toBe(0);
      expect(m.stats().delivered).toBe(3000);
      await expect(m.terminateConsumer(0)).rejects.toThrow(/closed/);
    });
  });

  it('refuses to terminate a consumer thread that does not exist', async () => {
    const m = await ShardManager.create({ routing, initialShards: 1, ringBufferCapacity: 64, consumer: { module: consumerModule(), threads: 1 } });
    await expect(m.terminateConsumer(42)).rejects.toThrow(/no running consumer thread 42/);
    await m.close();
  });

  it('retries a batch whose consumer threw, reports the error, and delivers it once acknowledged', async () => {
    log = new DeliveryLog();
    const errors: [string, number][] = [];
    const m = await ShardManager.create({
      routing,
      initialShards: 2, ringBufferCapacity: 64, consumer: { module: flakyModule, threads: 1 },
      onConsumerError: (e, id) => errors.push([e.message, id]),
    });
    for (let seq = 0; seq < 1000; seq++) await pushWithRetry(m, seq * 2654435761, seqPayload(0, seq));
    await m.close();
    await log.waitFor(1000);
    expect(errors.map(([, id]) => id).sort()).toEqual([0, 1]);
    expect(errors[0]![0]).toMatch(/flaky consumer/);
    expectExactlyOnce(log, 1, 1000);
  });

  it('feeds recordFlush from the consumer so a slow consumer shows flush latency', async () => {
    await withEnv({ SM_TEST_SLOW_MS: '3' }, async () => {
      log = new DeliveryLog();
      let t = 0;
      const m = await ShardManager.create({
      routing,
        initialShards: 1, ringBufferCapacity: 64, clock: () => t, consumer: { module: consumerModule(), threads: 1, batchSize: 8 },
      });
      for (let seq = 0; seq < 64; seq++) await pushWithRetry(m, seq, seqPayload(0, seq));
      await sleep(100);
      const [metrics] = m.mapper.collectMetrics();
      expect(metrics!.avgFlushLatencyUs).toBeGreaterThan(1000); // each batch sleeps 3 ms
      t = 10_000;
      expect(m.mapper.evaluateScaling()).toEqual({ kind: 'scaleUp', count: 1 });
      await m.close();
    });
  });
});

describe('options.consumer.spinUs', () => {
  /** Times the manager's consumer threads parked on their doorbells so far (every lane). */
  function parksSoFar(core: SharedCore): number {
    let sum = 0;
    for (let lane = 0; lane < core.abi.laneCountConfigured(); lane++) sum += core.u32[core.abi.laneParksAddress(lane) >>> 2]!;
    return sum;
  }

  /** One event delivered first (the thread is past its start-up), then 30 bursts of 100 events
   *  10 ms apart; returns how often the consumer thread parked during the bursts. */
  async function parksDuringBursts(spinUs: number | undefined): Promise<number> {
    log = new DeliveryLog();
    const m = await ShardManager.create({
      initialShards: 2, ringBufferCapacity: 4096, // 16 batches: the thread gathers between them too
      consumer: { module: consumerModule(), threads: 1, ...(spinUs === undefined ? {} : { spinUs }) },
    });
    await pushWithRetry(m, 0, seqPayload(0, 0));
    await log.waitFor(1);
    const core = SharedCore.attachSync(m.producerHandle().core);
    const before = parksSoFar(core);
    let seq = 1;
    for (let burst = 0; burst < 30; burst++) {
      for (let k = 0; k < 100; k++, seq++) await pushWithRetry(m, seq * 2654435761, seqPayload(0, seq));
      await sleep(10);
    }
    await log.waitFor(seq);
    const parked = parksSoFar(core) - before;
    await m.close();
    expectExactlyOnce(log, 1, seq);
    return parked;
  }

  it('a consumer thread polls instead of parking while events come more often than spinUs; every event once, in order', async () => {
    expect(await parksDuringBursts(1_000_000)).toBe(0);
  });

  it('without it the same thread parks between the bursts (the counter the test above reads moves)', async () => {
    expect(await parksDuringBursts(undefined)).toBeGreaterThan(0);
  });
});

describe('consumer errors without onConsumerError', () => {
  it('go to the console once per shard per 5 s of the manager clock, with a count of those left out; the batch is retried until it goes through', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sm-throw-until-'));
    const stopFile = join(dir, 'stop');
    const logged: string[] = [];
    const consoleError = console.error;
    console.error = (...args: unknown[]) => void logged.push(args.map(String).join(' '));
    try {
      await withEnv({ SM_TEST_STOP_THROWING: stopFile }, async () => {
        let t = 0;
        let errors = 0;
        let first: Error | undefined;
        const m = await ShardManager.create({
          initialShards: 1, ringBufferCapacity: 64, clock: () => t, policy: { autoScale: false },
          consumer: { module: new URL('./fixtures/throw-until-consumer.mjs', import.meta.url), threads: 1 },
          onEvent: (e) => { if (e.type === 'consumerError') { errors++; first ??= e.error; } },
        });
        m.push(1, 'a');
        await within((async () => { while (errors < 20) await sleep(5); })(), 20_000, () => `${errors} consumer errors`);
        expect(logged.filter((l) => l.includes('consumer of shard 0 threw'))).toHaveLength(1); // 20 errors, one line
        expect(logged[0]).toMatch(/the batch will be retried; pass options.onConsumerError/);
        // the consumer threw a TypeError: it arrives as one, with the thread's message and stack
        expect(first).toBeInstanceOf(TypeError);
        expect(first!.message).toBe('throw-until consumer: batch of 1 of shard 0');
        expect(first!.stack).toMatch(/throw-until-consumer\.mjs/);
        const before = errors;
        t = 5000; // the manager's clock moves on: the next error is logged, with the count since
        await within((async () => { while (errors < before + 2) await sleep(5); })(), 20_000, () => `${errors} consumer errors`);
        const lines = logged.filter((l) => l.includes('consumer of shard 0 threw'));
        expect(lines).toHaveLength(2);
        expect(lines[1]).toMatch(/\((\d+) more errors of this shard since the last one logged\)/);
        expect(Number(/\((\d+) more errors/.exec(lines[1]!)![1])).toBeGreaterThanOrEqual(before - 1);
        writeFileSync(stopFile, '');
        await within(m.close(), 20_000, () => 'close() once the consumer stopped throwing');
        expect(m.stats()).toMatchObject({ pushed: 1, delivered: 1 });
      });
    } finally {
      console.error = consoleError;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('close({ timeoutMs })', () => {
  it('past the deadline (manager clock) ends a consumer thread that holds a batch it never acknowledges; rejects counting what is left, which poll() still reads in push order', async () => {
    await withEnv({ SM_TEST_STOP_THROWING: join(tmpdir(), `sm-never-${process.pid}-${Date.now()}`) }, async () => {
      let t = 0;
      let errors = 0;
      const m = await ShardManager.create({
        initialShards: 1, ringBufferCapacity: 64, clock: () => t, policy: { autoScale: false },
        consumer: { module: new URL('./fixtures/throw-until-consumer.mjs', import.meta.url), threads: 1 },
        onConsumerError: () => errors++,
      });
      for (let seq = 0; seq < 5; seq++) expect(m.push(1, seqPayload(0, seq))).toBe(true);
      // the fault hits the state it aims at: the thread took the batch (and threw) again and again
      await within((async () => { while (errors < 3) await sleep(5); })(), 20_000, () => `${errors} consumer errors`);
      expect(m.consumers().map((c) => c.alive)).toEqual([true]);
      let settled = false;
      const closing = m.close({ timeoutMs: 1000 });
      closing.then(() => (settled = true), () => (settled = true));
      await sleep(100);
      expect(settled, 'close waits while the deadline is ahead').toBe(false);
      expect(m.close({ timeoutMs: 5 }), 'a second call returns the first one').toBe(closing);
      t = 1000; // the deadline
      const error = await closing.then(() => undefined, (e: unknown) => e);
      expect(error).toBeInstanceOf(CloseTimeoutError);
      expect((error as CloseTimeoutError).undelivered).toBe(5);
      expect((error as Error).message).toMatch(/did not take every event within 1000 ms; they were ended with 5 accepted event\(s\) undelivered/);
      expect(m.consumers().every((c) => !c.alive), 'the consumer thread was ended').toBe(true);
      expect(m.stats()).toMatchObject({ pushed: 5, delivered: 0 });
      // what the ended thread held is first in line again, in push order, for poll()
      expect(m.poll(0).map((r) => new DataView(r.buffer, r.byteOffset).getUint32(4, true))).toEqual([0, 1, 2, 3, 4]);
      expect(m.stats()).toMatchObject({ pushed: 5, delivered: 5, inFlight: 0 });
    });
  });

  it('with consumers that keep up, resolves as close() does, delivering everything', async () => {
    const log = new DeliveryLog();
    try {
      const m = await ShardManager.create({ initialShards: 2, ringBufferCapacity: 64, consumer: { module: onThisLogsChannel(new URL('./fixtures/seq-consumer.mjs', import.meta.url)), threads: 2 } });
      for (let seq = 0; seq < 500; seq++) await pushWithRetry(m, Math.imul(seq + 1, 2654435761) >>> 0, seqPayload(0, seq));
      await expect(m.close({ timeoutMs: 30_000 })).resolves.toBeUndefined();
      await log.waitFor(500);
      expectExactlyOnce(log, 1, 500);
    } finally {
      log.close();
    }
  });
});

describe('a Node process with consumer threads', () => {
  // What the README promises: the threads keep the process running until close() (a process
  // that left with events in the rings would lose them); after close() it exits by itself.
  const script = (close: boolean) => `
    import { ShardManager } from ${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)};
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 64,
      consumer: { module: ${JSON.stringify(new URL('./fixtures/count-consumer.mjs', import.meta.url).href)}, threads: 1 } });
    m.push(1, 'x');
    ${close ? 'await m.close();' : ''}
    console.log('ready');`;
  async function exitsWithin(close: boolean, ms: number): Promise<boolean> {
    const { spawn } = await import('node:child_process');
    const dir = mkdtempSync(join(tmpdir(), 'sm-exit-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'main.mjs');
    writeFileSync(file, script(close));
    const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const exited = new Promise<boolean>((resolve) => child.once('exit', () => resolve(true)));
    const result = await Promise.race([exited, sleep(ms).then(() => false)]);
    if (!result) child.kill('SIGKILL');
    expect(out).toContain('ready'); // the script ran to its end either way
    return result;
  }
  it('keeps running without close(), and exits by itself after it', async () => {
    expect(await exitsWithin(true, 15_000), 'exits after close()').toBe(true);
    expect(await exitsWithin(false, 3_000), 'still running 3 s after its script ended, without close()').toBe(false);
  }, 30_000);
});
