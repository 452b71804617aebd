// Concurrency stress on worker_threads: producer threads and consumer threads share the
// manager's memory while the main thread adds, drains and removes shards at random; and
// collectors hammered from several threads while the main thread collects.
import { afterEach, describe, expect, it } from 'vitest';
import { Worker } from 'node:worker_threads';
import { ShardManager, ShardMapper } from 'shard-mapper';
import { SharedCore } from '../dist/core.js';
import { DeliveryLog, sleep, expectExactlyOnce, onThisLogsChannel } from './helpers/delivery.js';
import { prng } from './helpers/index.js';

const consumerModule = () => onThisLogsChannel(new URL('./fixtures/seq-consumer.mjs', import.meta.url));
const producerModule = new URL('./fixtures/seq-producer.mjs', import.meta.url);
const hammerModule = new URL('./fixtures/collector-hammer.mjs', import.meta.url);


function startWorker(url: URL, workerData: unknown): { worker: Worker; message: Promise<unknown> } {
  const worker = new Worker(url, { workerData });
  const message = new Promise<unknown>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`worker exited with ${code} before reporting`)));
  });
  return { worker, message };
}

let log: DeliveryLog | undefined;
afterEach(() => log?.close());

describe('stress: producers and consumers on worker threads while shards come and go', () => {
  it('delivers 6·10^6 sequenced events from 6 producer threads exactly once, in order per shard, with shards added and removed at random', async () => {
    const seed = Number(process.env.STRESS_SEED ?? 0x57e55);
    const random = prng(seed);
    const PRODUCERS = 6;
    const PER_PRODUCER = 1_000_000;
    const TOTAL = PRODUCERS * PER_PRODUCER;
    const MAX_SHARDS = 8;
    log = new DeliveryLog();
    const m = await ShardManager.create({
      initialShards: 3, ringBufferCapacity: 1024, drainGraceMs: 5,
      policy: { minShards: 1, maxShards: MAX_SHARDS, autoScale: false },
      consumer: { module: consumerModule(), threads: 2, batchSize: 256 },
    });
    const started = performance.now();
    const producers = Array.from({ length: PRODUCERS }, (_, producer) =>
      startWorker(producerModule, { handle: m.producerHandle(), producer, count: PER_PRODUCER, payloadBytes: 16 }));
    let finished = false;
    const done = Promise.all(producers.map((p) => p.message)).finally(() => { finished = true; });
    done.catch(() => {}); // awaited below; a failure must not be unhandled meanwhile

    const ops = { added: 0, removed: 0, drained: 0, ticks: 0, refusedAdds: 0 };
    const removals: Promise<void>[] = [];
    const pick = (ids: number[]) => ids[Math.floor(random() * ids.length)]!;
    while (!finished) {
      await sleep(2);
      const active = m.mapper.activeShardIds();
      const r = random();
      try {
        if (r < 0.4 && active.length < MAX_SHARDS) { await m.addShard(); ops.added++; }
        else if (r < 0.7 && active.length > 2) { removals.push(m.removeShard(pick(active))); ops.removed++; }
        else if (r < 0.8 && active.length > 2) { await m.drainShard(pick(active)); ops.drained++; }
        else { m.tick(); ops.ticks++; }
      } catch (error) {
        // every draining shard holds a slot until its consumer is done with it
        if ((error as { kind?: string }).kind !== 'ShardCreationFailed') throw error;
        ops.refusedAdds++;
      }
      // the mapper stays consistent while everything runs
      const states = m.mapper.allShardIds().map((id) => m.mapper.shardState(id));
      expect(m.mapper.activeShardCount()).toBe(states.filter((s) => s === 'active').length);
      expect(m.mapper.activeShardCount()).toBeLessThanOrEqual(MAX_SHARDS);
    }
    const reports = (await done) as { refused: number }[];
    await Promise.all(removals);
    // shards drained with drainShard are stopped and removed by the scaling loop
    for (let i = 0; i < 500 && m.mapper.allShardIds().some((id) => m.mapper.shardState(id) !== 'active'); i++) {
      await sleep(10);
      m.tick();
    }
    await m.close();
    await log.waitFor(TOTAL, 60_000);
    const elapsed = performance.now() - started;
    await Promise.all(producers.map((p) => p.worker.terminate()));

    const s = m.stats();
    const context = `seed ${seed}, ops ${JSON.stringify(ops)}, ${Math.round(elapsed)} ms`;
    console.log(`stress: ${TOTAL} events, ${context}, producer refusals ${reports.map((x) => x.refused).join('/')}`);
    expect(ops.added, context).toBeGreaterThanOrEqual(20);
    expect(ops.removed + ops.drained, context).toBeGreaterThanOrEqual(20);
    expect(s.pushed, context).toBe(TOTAL);
    expect(s.delivered, context).toBe(TOTAL);
    expect(s.inFlight, context).toBe(0);
    expect(s.unrouted, context).toBe(0);
    expect(s.drops.newest + s.drops.oldest + s.drops.sampled, context).toBe(0);
    expect(log.received, context).toBe(TOTAL);
    expectExactlyOnce(log, PRODUCERS, PER_PRODUCER, context);
    expect(m.mapper.allShardIds(), context).toEqual(m.mapper.activeShardIds());
  }, 120_000);
  it('keeps delivery exact while its own scaling loop (start(), real clock) scales under 4 producer threads and random operator adds/removes', async () => {
    const seed = Number(process.env.STRESS_SEED ?? 0xa070);
    const random = prng(seed);
    const PRODUCERS = 4;
    const PER_PRODUCER = 500_000;
    const TOTAL = PRODUCERS * PER_PRODUCER;
    log = new DeliveryLog();
    const decisions: string[] = [];
    const m = await ShardManager.create({
      initialShards: 2, ringBufferCapacity: 256, drainGraceMs: 2,
      policy: { minShards: 1, maxShards: 6, cooldownMs: 10, scaleDownDelayMs: 20, metricsWindowMs: 3, fillRatioThreshold: 0.5 },
      consumer: { module: consumerModule(), threads: 2, batchSize: 64 },
      onEvent: (e) => { if (e.type === 'scalingDecision') decisions.push(e.decision.kind); },
    });
    m.start();
    const producers = Array.from({ length: PRODUCERS }, (_, producer) =>
      startWorker(producerModule, { handle: m.producerHandle(), producer, count: PER_PRODUCER, payloadBytes: 24 }));
    let finished = false;
    const done = Promise.all(producers.map((p) => p.message)).finally(() => { finished = true; });
    done.catch(() => {});
    const removals: Promise<void>[] = [];
    let operatorCalls = 0;
    while (!finished) {
      await sleep(4);
      const active = m.mapper.activeShardIds();
      try {
        if (random() < 0.5 && active.length < 6) await m.addShard();
        else if (active.length > 1) removals.push(m.removeShard(active[Math.floor(random() * active.length)]!).catch((e) => {
          if ((e as { kind?: string }).kind !== 'AtMinShards') throw e; // the loop drained one meanwhile
        }));
        operatorCalls++;
      } catch (error) {
        const kind = (error as { kind?: string }).kind;
        if (kind !== 'AtMinShards' && kind !== 'AtMaxShards' && kind !== 'ShardCreationFailed') throw error;
      }
    }
    await done;
    await Promise.all(removals);
    await m.close();
    await log.waitFor(TOTAL, 60_000);
    await Promise.all(producers.map((p) => p.worker.terminate()));
    const s = m.stats();
    const context = `seed ${seed}, ${operatorCalls} operator calls, decisions ${decisions.filter((d) => d === 'scaleUp').length} up / ${decisions.filter((d) => d === 'scaleDown').length} down`;
    console.log(`stress (scaling loop): ${TOTAL} events, ${context}`);
    expect(operatorCalls, context).toBeGreaterThan(10);
    expect(decisions.length, context).toBeGreaterThan(0);
    expect([s.pushed, s.delivered, s.inFlight, s.unrouted], context).toEqual([TOTAL, TOTAL, 0, 0]);
    expect(log.received, context).toBe(TOTAL);
    expectExactlyOnce(log, PRODUCERS, PER_PRODUCER, context);
  }, 120_000);
});

describe('stress: one collector hammered from several threads while the main thread collects', () => {
  it('never splits a (count, sum) pair: every raw window has sum = 7·count and 3·count, and the windows add up', async () => {
    const THREADS = 4;
    const ITERATIONS = 2_000_000;
    const mapper = await ShardMapper.create(1, 100, { maxShards: 2 }, { clock: () => 0 });
    const collector = mapper.metricsCollector(0)!;
    const handle = collector.handle();
    const core = SharedCore.attachSync(handle.core);
    const controls = Array.from({ length: THREADS }, () => new Int32Array(new SharedArrayBuffer(4)));
    const workers: Worker[] = [];
    try {
      const ready: Promise<unknown>[] = [];
      const reports: Promise<unknown>[] = [];
      for (const flags of controls) {
        const worker = new Worker(hammerModule, { workerData: { handle, control: flags.buffer, iterations: ITERATIONS } });
        workers.push(worker);
        const messages: unknown[] = [];
        let wake: (() => void) | undefined;
        let failure: unknown;
        worker.on('message', (msg) => { messages.push(msg); wake?.(); });
        worker.on('error', (e) => { failure = e; wake?.(); });
        const next = async () => {
          while (messages.length === 0) {
            if (failure) throw failure;
            await new Promise<void>((r) => { wake = r; });
          }
          return messages.shift();
        };
        const first = next();
        ready.push(first);
        reports.push(first.then(next));
      }
      expect(await Promise.all(ready)).toEqual(controls.map(() => ({ ready: true })));
      for (const flags of controls) { Atomics.store(flags, 0, 2); Atomics.notify(flags, 0); }

      const totals = { latencyCount: 0, latencySum: 0, flushCount: 0, flushSum: 0, events: 0 };
      const bad: string[] = [];
      let windows = 0;
      let busyWindows = 0;
      const collect = () => {
        core.abi.collectAndReset(handle.slot, core.result);
        const r = core.result >>> 2;
        const [events, lc, ls, fc, fs] = [core.u32[r + 1]!, core.u32[r + 2]!, core.u32[r + 3]!, core.u32[r + 4]!, core.u32[r + 5]!];
        if (ls !== 7 * lc || fs !== 3 * fc) bad.push(`window ${windows}: latency ${lc}/${ls}, flush ${fc}/${fs}`);
        windows++;
        if (lc > 0) busyWindows++;
        totals.latencyCount += lc; totals.latencySum += ls;
        totals.flushCount += fc; totals.flushSum += fs;
        totals.events += events;
      };
      const deadline = performance.now() + 60_000; // only so a crashed worker fails instead of hanging
      while (controls.some((f) => Atomics.load(f, 0) !== 3)) {
        collect();
        if ((windows & 1023) === 0) {
          if (performance.now() > deadline) throw new Error('the hammering threads never finished');
          await sleep(0); // let worker messages (errors) in
        }
      }
      collect(); // whatever was recorded after the last collection in the loop
      const report = (await Promise.all(reports)) as { latency: number; flush: number; events: number }[];
      expect(bad.slice(0, 5)).toEqual([]);
      const sum = (k: 'latency' | 'flush' | 'events') => report.reduce((a, x) => a + x[k], 0);
      expect(sum('latency')).toBe(THREADS * ITERATIONS);
      expect(totals).toEqual({
        latencyCount: sum('latency'), latencySum: 7 * sum('latency'),
        flushCount: sum('flush'), flushSum: 3 * sum('flush'), events: sum('events'),
      });
      expect(busyWindows).toBeGreaterThan(10); // the collections really overlapped the recording
      console.log(`collector hammer: ${THREADS} threads × ${ITERATIONS}, ${windows} windows (${busyWindows} with samples)`);
    } finally {
      core.detach();
      await Promise.all(workers.map((w) => w.terminate()));
    }
  }, 90_000);
});
