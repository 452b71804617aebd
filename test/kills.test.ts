// Kill tests with real threads (issue: dead threads must not wedge a ring). Producer threads
// are terminated at random moments inside push, pushBatch and pushFixed loops; consumer
// threads are terminated while they hold batches of a full ring whose slots producers keep
// reusing; close() runs while producer threads are still pushing. Under every backpressure
// mode. After each: every push that returned true is delivered exactly once (at least once
// across a consumer crash), the rings drain, removeShard and close resolve, and each test
// checks that its fault really hit the state it aims at.
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { Worker } from 'node:worker_threads';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ShardManager, ShardMetricsCollector, ShardProducer, type BackpressureMode, type ManagerEvent } from 'shard-mapper';
import { DeliveryLog, expectExactlyOnce, seqPayload, sleep, onThisLogsChannel, within } from './helpers/delivery.js';
import { SharedCore } from '../dist/core.js';
import { R_CURSOR, R_TAIL, REC_END, REC_LEN, REC_OFF, REC_SEQ, SEQ_WRITING } from '../dist/layout.generated.js';
import { prng, withEnv } from './helpers/index.js';

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url);
const seqConsumer = () => onThisLogsChannel(fixture('seq-consumer.mjs'));

type Mode = 'push' | 'batch' | 'fixed';

const MODES: [string, BackpressureMode][] = [
  ['failProducer', { kind: 'failProducer' }],
  ['dropNewest', { kind: 'dropNewest' }],
  ['dropOldest', { kind: 'dropOldest' }],
  ['sample', { kind: 'sample', rate: 3 }],
];

let log: DeliveryLog | undefined;
afterEach(() => { log?.close(); log = undefined; });

/** One producer thread of test/fixtures/kill-producer.mjs, with what it has said in shared memory. */
class KillableProducer {
  readonly worker: Worker;
  readonly progress = new Int32Array(new SharedArrayBuffer(16)); // see kill-producer.mjs
  readonly #packed = new BigInt64Array(this.progress.buffer, 0, 1);
  readonly accepted: Uint8Array;
  readonly started: Promise<void>;
  readonly exited: Promise<number>;

  constructor(m: ShardManager, readonly producer: number, readonly mode: Mode, readonly count: number, readonly exact: boolean,
    shape: { payloadBytes: number; batch: number; mixed?: { min: number; max: number }; scatter?: boolean } = { payloadBytes: 16, batch: 512 }) {
    this.accepted = new Uint8Array(new SharedArrayBuffer(count));
    this.worker = new Worker(fixture('kill-producer.mjs'), {
      workerData: {
        handle: m.producerHandle(), producer, mode, count, ...shape,
        progress: this.progress.buffer, accepted: this.accepted.buffer, exact,
      },
    });
    this.started = new Promise((resolve, reject) => {
      this.worker.once('message', () => resolve());
      this.worker.once('error', reject);
    });
    this.exited = new Promise((resolve) => this.worker.once('exit', resolve));
  }

  /** Every event below it belongs to a call that returned. */
  get watermark(): number { return Number(Atomics.load(this.#packed, 0) >> 32n); }
  /** Events accepted by the calls below the watermark. */
  get acceptedCount(): number { return Number(Atomics.load(this.#packed, 0) & 0xffffffffn); }
  get stoppedByClose(): boolean { return Atomics.load(this.progress, 2) === 2; }
}

/**
 * Check one producer's events against the log. `exact`: the accepted bitmap names every
 * accepted event of the returned calls. `evictions`: dropOldest may drop accepted events.
 */
function checkProducer(p: KillableProducer, log: DeliveryLog, evictions: boolean): { delivered: number } {
  const mark = p.watermark;
  let delivered = 0;
  let deliveredConfirmed = 0;
  const problems: string[] = [];
  for (let seq = 0; seq < p.count; seq++) {
    const n = log.counts.count(p.producer, seq);
    delivered += n;
    if (n > 1) problems.push(`seq ${seq} delivered ${n} times`);
    if (seq >= mark) continue; // the call in progress when it died: at most once
    deliveredConfirmed += n;
    if (!p.exact) continue;
    if (p.accepted[seq] === 1 && n === 0 && !evictions) problems.push(`seq ${seq} returned true and was never delivered`);
    if (p.accepted[seq] === 0 && n > 0) problems.push(`seq ${seq} was not accepted but was delivered`);
  }
  // Accepted by the calls that returned: all delivered (dropOldest: at most all).
  if (evictions) expect(deliveredConfirmed).toBeLessThanOrEqual(p.acceptedCount);
  else expect(deliveredConfirmed, `producer ${p.producer} (${p.mode})`).toBe(p.acceptedCount);
  expect(problems.slice(0, 5), `producer ${p.producer} (${p.mode})`).toEqual([]);
  return { delivered };
}

/** Tick (the watchdog runs in tick) until every ring is empty. */
async function drain(m: ShardManager, timeoutMs = 20_000): Promise<void> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    m.tick();
    if (m.mapper.allShardIds().every((id) => m.ringLength(id) === 0)) return;
    if (performance.now() > until) throw new Error(`rings did not drain: ${m.mapper.allShardIds().map((id) => `${id}:${m.ringLength(id)}`).join(' ')}`);
    await sleep(5);
  }
}

type Shape = ConstructorParameters<typeof KillableProducer>[5];

/** The next group of producers of `mode`: one push producer, or three batch/fixed ones (more
 *  chances that a kill lands inside a run). Batches report exactly which events they accepted
 *  only under failProducer (a prefix). */
async function startGroup(m: ShardManager, producers: KillableProducer[], mode: Mode, backpressure: BackpressureMode, shape: Shape): Promise<KillableProducer[]> {
  const exact = mode === 'push' || backpressure.kind === 'failProducer';
  const group = Array.from({ length: mode === 'push' ? 1 : 3 }, (_, i) => new KillableProducer(m, producers.length + i, mode, 1_000_000, exact, shape));
  producers.push(...group);
  await Promise.all(group.map((p) => p.started));
  return group;
}

/** Kill `group` (each at a random moment within 3 ms), drain, and count the mode in
 *  `stalledBy` when the watchdog had to skip records a kill left unwritten (its own event:
 *  stats().skipped also counts padding a batch gives up itself after losing a race). */
async function killGroup(m: ShardManager, group: KillableProducer[], mode: Mode, random: () => number, stalledBy: Map<Mode, number>, events: ManagerEvent[]): Promise<void> {
  const stallsBefore = events.filter((e) => e.type === 'producerStallSkipped').length;
  await Promise.all(group.map(async (p) => { await sleep(Math.floor(random() * 3)); await p.worker.terminate(); }));
  await drain(m);
  if (events.filter((e) => e.type === 'producerStallSkipped').length > stallsBefore) stalledBy.set(mode, stalledBy.get(mode)! + 1);
}

/** The faults hit what they aim at: a kill inside a run left reserved, unwritten records
 *  (skipped by the watchdog) for pushBatch and for pushFixed; a single push is one
 *  straight-line step and never does. Sample mode sends batches event by event: no runs. */
function expectKillsInsideRuns(m: ShardManager, backpressure: BackpressureMode, stalledBy: Map<Mode, number>, events: ManagerEvent[]): void {
  if (backpressure.kind !== 'sample') {
    expect(stalledBy.get('batch'), 'a pushBatch producer killed inside a run').toBeGreaterThan(0);
    expect(stalledBy.get('fixed'), 'a pushFixed producer killed inside a run').toBeGreaterThan(0);
    expect(events.some((e) => e.type === 'producerStallSkipped')).toBe(true);
  } else {
    expect(m.stats().skipped).toBe(0);
  }
  expect(stalledBy.get('push')).toBe(0);
}

/** The rings still work (a shard with a dead producer's padding drains and is removed), and
 *  every producer's events were delivered as checkProducer says, in order. */
async function closeAndCheckProducers(m: ShardManager, producers: KillableProducer[], backpressure: BackpressureMode): Promise<void> {
  const victim = m.mapper.activeShardIds()[0]!;
  await m.removeShard(victim);
  await m.close();
  await log!.settle(300);
  const evictions = backpressure.kind === 'dropOldest';
  let delivered = 0;
  for (const p of producers) delivered += checkProducer(p, log!, evictions).delivered;
  expect(log!.outOfOrder).toEqual([]);
  const s = m.stats();
  expect(s.inFlight).toBe(0);
  expect(s.delivered).toBe(delivered);
  expect(s.pushed).toBe(s.delivered + s.drops.oldest);
  if (!evictions) expect(s.drops.oldest).toBe(0);
  expect(producers.reduce((a, p) => a + p.acceptedCount, 0)).toBeGreaterThan(1000);
}

/** Producers of each kind started three at a time and killed at random moments, round after
 *  round, until a kill of a batch and of a fixed producer left reserved records unwritten
 *  (the state these tests aim at); then the rings must still work and every producer's
 *  events arrive as checkProducer says. */
async function killProducersInsideCalls(name: string, backpressure: BackpressureMode, shape: Shape, seed: number, routing?: 'affinity'): Promise<void> {
  log = new DeliveryLog();
  const events: ManagerEvent[] = [];
  // Large rings (rarely full) and 64-byte records: producers spend most of their time
  // inside runs, where a kill leaves reserved records unwritten.
  const m = await ShardManager.create({
    initialShards: 2, ringBufferCapacity: 1 << 15, maxPayloadBytes: 64, backpressure, producerStallMs: 20,
    ...(routing ? { routing } : {}),
    // A clock of our own: the watchdog then runs only in drain()'s tick(), after a kill (no
    // housekeeping timer while producers live), so each skip it makes is a kill's doing.
    clock: () => performance.now(),
    policy: { minShards: 1, maxShards: 3, autoScale: false },
    consumer: { module: seqConsumer(), threads: 2, batchSize: 256 },
    onEvent: (e) => events.push(e),
  });
  const random = prng(name.length * seed);
  const producers: KillableProducer[] = [];
  const stalledBy = new Map<Mode, number>([['push', 0], ['batch', 0], ['fixed', 0]]);
  const runs = backpressure.kind !== 'sample';
  // Kill each kind of producer a few times; keep killing batch and fixed producers until
  // a kill lands inside a run: three at a time, up to 50 rounds of each (how often a kill
  // lands inside a run depends on the machine's load).
  for (let round = 0; round < 150; round++) {
    const mode: Mode = (['push', 'batch', 'fixed'] as const)[round % 3]!;
    if (round >= 9 && (!runs || mode === 'push' || stalledBy.get(mode)! > 0)) continue;
    if (producers.length + 3 > 255) break; // the delivery log tells producers 0-255 apart
    const group = await startGroup(m, producers, mode, backpressure, shape);
    await sleep(2 + Math.floor(random() * 30));
    await killGroup(m, group, mode, random, stalledBy, events);
  }
  expectKillsInsideRuns(m, backpressure, stalledBy, events);
  await closeAndCheckProducers(m, producers, backpressure);
}

describe('kills: producer threads terminated mid-call', () => {
  for (const [name, backpressure] of MODES) {
    it(`${name}: producers killed at random moments inside push, pushBatch and pushFixed loops; a killed run never wedges its ring`, async () => {
      // keys close together: a call's events go to one shard, in long runs
      await killProducersInsideCalls(name, backpressure, { payloadBytes: 64, batch: 200 }, 7919);
    });
  }
});

describe('kills: producer threads terminated inside grouped batch blocks', () => {
  // Keys spread over the hash space: every batch call of 200 events routes to both shards,
  // so it is written in grouped blocks (docs/architecture.md, Grouped writes), each shard's
  // events reserved before any is written. A kill there leaves reservations on several rings.
  for (const [name, backpressure] of MODES.filter(([, b]) => b.kind !== 'sample')) {
    it(`${name}: producers killed inside blocks that reserved every shard's events; no ring wedges, nothing accepted is lost or doubled`, async () => {
      await killProducersInsideCalls(name, backpressure, { payloadBytes: 64, batch: 200, scatter: true }, 4507);
    });
  }
  // Under key order a block also checks the table generation after reserving (and gives its
  // reservations up if a table was published): a kill can land there too.
  it('failProducer, routing affinity (key order on): producers killed inside grouped blocks; no ring wedges, nothing accepted is lost or doubled', async () => {
    await killProducersInsideCalls('failProducer affinity', { kind: 'failProducer' }, { payloadBytes: 64, batch: 200, scatter: true }, 4507, 'affinity');
  });
});

describe('kills: producer threads terminated mid-call on byte rings of mixed sizes', () => {
  for (const [name, backpressure] of MODES) {
    it(`${name}: payloads of 8 to 256 bytes in a 1 MiB ring (byte-full long before descriptor-full); producers killed inside push, pushBatch and pushFixed loops`, async () => {
      log = new DeliveryLog();
      const events: ManagerEvent[] = [];
      // 32768 descriptors but only 1 MiB of payload area: about 7700 events of these sizes
      // fit, so a full ring is almost always full by bytes; large enough that batches go in
      // long runs (a kill lands inside one often enough). Every payload starts [producer][seq]
      // (8 bytes), so sizes start at 8: sizes 1-7 take the same 8-byte extent in the ring and
      // are covered by test/byte-ring.property.test.ts.
      const m = await ShardManager.create({
        initialShards: 2, ringBufferCapacity: 1 << 15, maxPayloadBytes: 256, ringBufferBytes: 1024 * 1024, backpressure, producerStallMs: 20,
        clock: () => performance.now(), // the watchdog only in drain()'s tick(): each skip is a kill's (above)
        policy: { minShards: 1, maxShards: 3, autoScale: false },
        consumer: { module: seqConsumer(), threads: 2, batchSize: 256 },
        onEvent: (e) => events.push(e),
      });
      const random = prng(name.length * 6151);
      const producers: KillableProducer[] = [];
      const stalledBy = new Map<Mode, number>([['push', 0], ['batch', 0], ['fixed', 0]]);
      const runs = backpressure.kind !== 'sample';
      let byteFull = 0; // samples of a ring at least 90 % full by bytes, under 90 % by records
      let recordFull = 0; // samples at least 90 % full by records
      const sample = () => m.mapper.collectMetrics().map((s) => {
        const recordFill = s.bufferLen / s.capacity;
        if (recordFill >= 0.9) recordFull++;
        else if (s.fillRatio >= 0.9) byteFull++;
        return s.fillRatio;
      });
      // Rounds go on (for the modes not hit yet) until the delivery log's 256 producers are used.
      for (let round = 0; round < 600; round++) {
        const mode: Mode = (['push', 'batch', 'fixed'] as const)[round % 3]!;
        if (round >= 9 && (!runs || mode === 'push' || stalledBy.get(mode)! > 0)) continue;
        if (producers.length + 3 > 255) break; // the delivery log tells producers 0-255 apart
        const group = await startGroup(m, producers, mode, backpressure, { payloadBytes: 256, batch: 200, mixed: { min: 8, max: 256 } });
        // Let them fill the rings a while, then kill at a moment every ring has room: then the
        // batch producers are inside runs (a full ring sends each event the single-event way).
        const wait = 2 + Math.floor(random() * 30);
        for (let waited = 0; waited < wait + 50; waited += 1) {
          const fills = sample();
          if (waited >= wait && fills.every((f) => f < 0.8)) break;
          await sleep(1);
        }
        await killGroup(m, group, mode, random, stalledBy, events);
        // Empty rings hold no bytes: a skipped record's bytes are freed once the ring empties
        // (the last acknowledgement settles the byte head a moment after the cursor moves).
        const until = performance.now() + 2000;
        let fills = m.mapper.collectMetrics().map((s) => s.fillRatio);
        while (fills.some((f) => f !== 0) && performance.now() < until) { await sleep(2); fills = m.mapper.collectMetrics().map((s) => s.fillRatio); }
        expect(fills, `round ${round} (${mode}): bytes still held by empty rings`).toEqual(fills.map(() => 0));
      }
      console.log(`mixed sizes, ${name}: ${producers.length} producers killed; kills inside a run (push/batch/fixed): ` +
        `${stalledBy.get('push')}/${stalledBy.get('batch')}/${stalledBy.get('fixed')}; samples byte-full ${byteFull}, record-full ${recordFull}; ` +
        `stats ${JSON.stringify({ ...m.stats(), shards: undefined })}`);
      expectKillsInsideRuns(m, backpressure, stalledBy, events);
      // The rings were full (events dropped, or refused under failProducer), and full by bytes far more often than by records.
      expect(m.stats().dropped + m.stats().drops.refused).toBeGreaterThan(0);
      expect(byteFull).toBeGreaterThan(recordFull);
      await closeAndCheckProducers(m, producers, backpressure);
    });
  }
});

describe('kills: consumer threads terminated while holding batches', () => {
  for (const [name, backpressure] of MODES) {
    it(`${name}: consumers killed while producers keep a full ring's slots in reuse; each killed thread held an unacknowledged batch`, async () => {
      process.env.SM_TEST_SLOW_MS = '2'; // consumers hold each batch a while: the ring stays full
      try {
        log = new DeliveryLog();
        const restarts: Extract<ManagerEvent, { type: 'consumerRestarted' }>[] = [];
        const m = await ShardManager.create({
          initialShards: 2, ringBufferCapacity: 64, backpressure, producerStallMs: 20,
          policy: { minShards: 1, maxShards: 3, autoScale: false },
          consumer: { module: seqConsumer(), threads: 2, batchSize: 16 },
          onEvent: (e) => { if (e.type === 'consumerRestarted') restarts.push(e); },
        });
        const exact = backpressure.kind === 'failProducer';
        const producers = [0, 1].map((i) => new KillableProducer(m, i, i === 0 ? 'push' : 'fixed', 4_000_000, i === 0 || exact));
        await Promise.all(producers.map((p) => p.started));
        const random = prng(name.length * 104729);
        // Kill a thread when one of its shards has records claimed and not acknowledged
        // (read from the ring's cursor); it may acknowledge in between, so each kill's
        // consumerRestarted.rewound says whether it really died holding them.
        const core = SharedCore.attachSync(m.producerHandle().core);
        const holding = (shards: number[]) => shards.some((id) => {
          const cursor = (core.abi.slotAddress(m.mapper.slotOf(id)!) + R_CURSOR) >>> 2;
          return Atomics.load(core.u32, cursor) !== Atomics.load(core.u32, cursor + 1); // head != claimed
        });
        let kills = 0;
        let full = 0;
        while (kills < 30 && restarts.filter((r) => r.rewound > 0).length < 8) {
          await sleep(1 + Math.floor(random() * 5));
          const lengths = m.mapper.allShardIds().map((id) => m.ringLength(id));
          if (lengths.some((n) => n === m.ringCapacity)) full++;
          // a thread that is up and holding a batch (a replacement still loading holds nothing)
          const victim = m.consumers().find((c) => c.ready && holding(c.shards));
          if (!victim) continue;
          await m.terminateConsumer(victim.index);
          kills++;
          // let the replacement load and take its shards before the next kill
          while (!m.consumers().every((c) => c.ready)) await sleep(2);
        }
        core.detach();
        await Promise.all(producers.map((p) => p.worker.terminate()));
        await drain(m);
        await m.close();
        await log.settle(300);
        // The state aimed at: rings were full while consumers died, and the killed threads held
        // records they had not acknowledged (handed out again by the rewind).
        expect(full).toBeGreaterThan(0);
        expect(restarts).toHaveLength(kills);
        expect(restarts.filter((r) => r.rewound > 0).length).toBeGreaterThanOrEqual(8);
        const rewound = restarts.reduce((a, r) => a + r.rewound, 0);
        // At least once across a consumer crash: nothing accepted is missing; a repeat is only
        // ever a record of a rewound batch; each record is acknowledged once.
        let repeats = 0;
        for (const p of producers) {
          const mark = p.watermark;
          for (let seq = 0; seq < p.count; seq++) {
            const n = log.counts.count(p.producer, seq);
            if (n > 1) repeats += n - 1;
            if (seq < mark && p.exact && p.accepted[seq] === 1 && backpressure.kind !== 'dropOldest') expect(n, `producer ${p.producer} seq ${seq}`).toBeGreaterThan(0);
          }
        }
        expect(repeats).toBeLessThanOrEqual(rewound);
        const s = m.stats();
        expect(s.inFlight).toBe(0);
        expect(s.pushed).toBe(s.delivered + s.drops.oldest);
        if (backpressure.kind === 'dropOldest') {
          // a batch a thread reported and died before acknowledging may be evicted before it
          // comes again: reported once, counted as evicted, not delivered
          expect(log.received - repeats).toBeGreaterThanOrEqual(s.delivered);
          expect(log.received - repeats).toBeLessThanOrEqual(s.delivered + s.drops.oldest);
        } else {
          expect(s.delivered).toBe(log.received - repeats);
        }
      } finally {
        delete process.env.SM_TEST_SLOW_MS;
      }
    });
  }
});

describe('kills: close() while producer threads push', () => {
  for (const [name, backpressure] of MODES) {
    it(`${name}: close() racing producer threads: nothing is accepted once it resolved, and every true is delivered exactly once`, async () => {
      process.env.SM_TEST_SLOW_MS = '1'; // consumers lag: close() has a backlog to wait for
      onTestFinished(() => { delete process.env.SM_TEST_SLOW_MS; });
      log = new DeliveryLog();
      const m = await ShardManager.create({
        initialShards: 2, ringBufferCapacity: 128, backpressure, producerStallMs: 20,
        policy: { autoScale: false },
        consumer: { module: seqConsumer(), threads: 2, batchSize: 32 },
      });
      const exact = backpressure.kind === 'failProducer';
      // enough events that no producer runs out before close() (sample mode sheds fast)
      const producers = (['push', 'push', 'batch', 'fixed'] as const).map((mode, i) => new KillableProducer(m, i, mode, 16_000_000, mode === 'push' || exact));
      await Promise.all(producers.map((p) => p.started));
      // Close the moment producers are seen accepting (a few ms apart) while the rings hold
      // events (bounded wait: a moment with empty rings is waited past, not closed on).
      let accepting = false;
      let inRings = 0;
      for (let tries = 0; !(accepting && inRings > 0) && tries < 400; tries++) {
        const before = producers.map((p) => p.acceptedCount);
        await sleep(5);
        accepting = producers.some((p, i) => p.acceptedCount > before[i]!);
        inRings = m.mapper.allShardIds().reduce((a, id) => a + m.ringLength(id), 0);
      }
      await m.close();
      const pushedAtClose = m.stats().pushed;
      // The race was real: producers were accepting events right up to close(), and close()
      // had accepted events to wait for.
      expect(accepting).toBe(true);
      expect(inRings).toBeGreaterThan(0);
      const codes = await Promise.all(producers.map((p) => p.exited));
      expect(codes).toEqual([0, 0, 0, 0]); // each stopped on ManagerClosedError, nothing else
      for (const p of producers) expect(p.stoppedByClose).toBe(true);
      // Nothing was accepted after close() resolved. (A call may *return* later — its thread
      // can be descheduled between reserving and returning — but what it accepted was reserved
      // before the rings closed, and close() waited for it: checked just below.)
      expect(m.stats().pushed).toBe(pushedAtClose);
      await log.settle(300);
      let delivered = 0;
      for (const p of producers) delivered += checkProducer(p, log, backpressure.kind === 'dropOldest').delivered;
      expect(log.outOfOrder).toEqual([]);
      const s = m.stats();
      expect(s).toMatchObject({ inFlight: 0, delivered });
      expect(s.pushed).toBe(s.delivered + s.drops.oldest);
    });
  }
});

describe('lanes come back', () => {
  const attachAndExit = fixture('attach-and-exit.mjs');
  const runThread = (workerData: object) => new Promise<void>((resolve, reject) => {
    const w = new Worker(attachAndExit, { workerData });
    let attached = false;
    w.once('message', () => { attached = true; });
    w.once('error', reject);
    w.once('exit', (code) => (attached && code === 0 ? resolve() : reject(new Error(`thread exited with ${code} before attaching`))));
  });

  it('producer and collector threads that exit without detach() give their lanes back (maxThreads: 4, 30 threads)', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 1024, maxThreads: 4 });
    const collector = m.mapper.metricsCollector(0)!.handle();
    for (let round = 0; round < 10; round++) {
      // three at once: with this thread's lane, every lane is taken while they live
      await Promise.all([
        runThread({ handle: m.producerHandle(), hash: round }),
        runThread({ handle: m.producerHandle(), hash: round + 1, holdMs: 5 }),
        runThread({ collector }),
      ]);
    }
    expect(m.poll(0)).toHaveLength(20);
    // and the limit is still the limit, with an error that names it
    const held = await Promise.all([0, 1, 2].map(() => ShardProducer.attach(m.producerHandle())));
    await expect(ShardProducer.attach(m.producerHandle())).rejects.toThrow(/4 threads may attach at once, options\.maxThreads/);
    held[0]!.detach();
    const again = await ShardProducer.attach(m.producerHandle());
    again.detach();
    for (const p of held.slice(1)) p.detach();
    await m.close();
  });

  it('ShardMetricsCollector.detach() gives an attached collector\'s lane back; later recordings are ignored', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 64, maxThreads: 2 });
    const handle = m.mapper.metricsCollector(0)!.handle();
    const c = await ShardMetricsCollector.attach(handle);
    await expect(ShardMetricsCollector.attach(handle)).rejects.toThrow(/2 threads may attach at once/);
    c.recordPush(3);
    c.detach();
    c.recordPush(5); // ignored: the lane is gone
    const d = await ShardMetricsCollector.attach(handle);
    expect(d.collectAndReset()).toMatchObject({ eventRate: 1, avgPushLatencyNs: 3 });
    d.detach();
    m.mapper.metricsCollector(0)!.detach(); // the mapper's own: a no-op
    expect(m.mapper.metricsCollector(0)!.isDraining()).toBe(false);
    await m.close();
  });

  it('a consumer replacement that finds no free lane is retried (a tickError event), never thrown inside a timer; its shard is delivered once a lane frees', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shard-mapper-lanes-'));
    const flag = join(dir, 'fail');
    process.env.SM_TEST_FAIL_FLAG = flag;
    const uncaught: unknown[] = [];
    const onUncaught = (e: unknown) => uncaught.push(e);
    process.on('uncaughtException', onUncaught);
    try {
      log = new DeliveryLog();
      const tickErrors: Error[] = [];
      // lanes: this thread, one consumer thread, one spare
      const m = await ShardManager.create({
        initialShards: 1, ringBufferCapacity: 4096, maxThreads: 3,
        consumer: { module: fixture('fragile-load-consumer.mjs'), threads: 1 },
        onEvent: (e) => { if (e.type === 'tickError') tickErrors.push(e.error); },
      });
      writeFileSync(flag, '');
      await m.terminateConsumer(m.consumers()[0]!.index); // its replacement fails to load, then waits out a backoff
      while (m.consumers().some((c) => c.alive)) await sleep(2);
      // meanwhile two producers take every free lane
      const producers = await Promise.all([0, 1].map(() => ShardProducer.attach(m.producerHandle())));
      for (let seq = 0; seq < 500; seq++) expect(producers[seq % 2]!.push(seq, seqPayload(0, seq))).toBe(true);
      const until = performance.now() + 20_000;
      while (tickErrors.length === 0 && performance.now() < until) await sleep(10);
      expect(tickErrors[0]?.message).toMatch(/no free lane for a consumer thread \(all 3 are taken/);
      rmSync(flag);
      producers[0]!.detach(); // a lane frees: the next retry starts a consumer that loads
      while (!m.consumers().some((c) => c.ready)) await sleep(10);
      await log.waitFor(500);
      expect(log.problems(1, 500)).toEqual({ missing: 0, duplicated: 0 });
      producers[1]!.detach();
      await m.close();
      expect(uncaught).toEqual([]);
    } finally {
      process.off('uncaughtException', onUncaught);
      delete process.env.SM_TEST_FAIL_FLAG;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('consumer assignment races', () => {
  it('a shard removed while its new consumer thread is still loading is never assigned to it afterwards (its slot may already serve another shard)', async () => {
    log = new DeliveryLog();
    const seenShards = new Set<number>();
    const tap = new BroadcastChannel(log.channelName);
    tap.onmessage = (e: MessageEvent) => { seenShards.add((e.data as { shardId: number }).shardId); };
    try {
      const m = await ShardManager.create({
        initialShards: 2, ringBufferCapacity: 256, routing: 'leastLoaded', policy: { minShards: 1, maxShards: 3, autoScale: false },
        consumer: { module: seqConsumer(), threads: 2, batchSize: 8 },
      });
      const owner = m.consumers().find((c) => c.shards.includes(1))!;
      await m.terminateConsumer(owner.index); // its replacement starts loading, and owns shard 1
      const replacement = m.consumers().find((c) => c.shards.includes(1))!;
      expect(replacement.ready).toBe(false); // the state this test aims at
      await m.removeShard(1); // empty ring: removed at once, released while the thread loads
      while (!m.consumers().every((c) => c.ready)) await sleep(2);
      const added = await m.addShard(); // takes the freed slot
      expect(added).toBe(2);
      const hashes: number[] = [];
      for (let h = 0; hashes.length < 200; h += 0x01000193) if (m.mapper.selectShard(h >>> 0) === 2) hashes.push(h >>> 0);
      for (let seq = 0; seq < hashes.length; seq++) expect(m.push(hashes[seq]!, seqPayload(0, seq))).toBe(true);
      await log.waitFor(hashes.length, 10_000);
      await m.close();
      expect(log.problems(1, hashes.length)).toEqual({ missing: 0, duplicated: 0 });
      expect([...seenShards]).toEqual([2]); // never reported under the removed shard's id
    } finally {
      tap.close();
    }
  });
});

/** Run `fn` with hang-once-consumer.mjs threads set to hang on their third batch (once per marker file). */
async function withConsumerHangingOnce<T>(fn: () => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'shard-mapper-hang-'));
  try {
    return await withEnv({ SM_TEST_HANG_MARKER: join(dir, 'hung'), SM_TEST_HANG_AFTER: '3' }, fn);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('consumer heartbeats', () => {
  it('a consumer thread stuck in a synchronous consumer is ended and replaced once its heartbeat stops (stallMs by the manager clock); nothing lost', async () => {
    await withConsumerHangingOnce(async () => {
      log = new DeliveryLog();
      const clock = { t: 0 };
      const events: ManagerEvent[] = [];
      const m = await ShardManager.create({
        initialShards: 2, ringBufferCapacity: 4096, clock: () => clock.t, policy: { autoScale: false },
        consumer: { module: fixture('hang-once-consumer.mjs'), threads: 2, batchSize: 16, stallMs: 1000 },
        onEvent: (e) => { if (e.type.startsWith('consumer')) events.push(e); },
      });
      const total = 3000;
      for (let seq = 0; seq < total; seq++) expect(m.push(seq * 2654435761, seqPayload(0, seq))).toBe(true);
      // one thread hangs on its third batch: its shard stops moving
      await log.settle(400);
      expect(log.received).toBeLessThan(total);
      m.tick(); // heartbeats seen
      await sleep(300); // the live thread's timer beats; the stuck one's cannot
      clock.t += 999;
      m.tick();
      expect(events).toEqual([]); // not yet: under stallMs
      clock.t += 2;
      m.tick();
      expect(events[0]).toMatchObject({ type: 'consumerStalled' });
      await log.waitFor(total, 20_000);
      expect(events.map((e) => e.type)).toEqual(['consumerStalled', 'consumerRestarted']);
      expect((events[1] as { rewound: number }).rewound).toBeGreaterThan(0); // it died holding its batch
      expect(log.problems(1, total)).toEqual({ missing: 0, duplicated: 0 }); // it hung before reporting
      await m.close();
      expect(m.stats()).toMatchObject({ pushed: total, delivered: total, inFlight: 0 });
    });
  });

  /** Every lane's heartbeat word (consumer threads beat theirs every 100 ms while their event loop turns). */
  const heartbeats = (m: ShardManager) => {
    const core = SharedCore.attachSync(m.producerHandle().core);
    return Array.from({ length: core.abi.laneCountConfigured() }, (_, lane) => Atomics.load(core.i32, core.abi.laneHeartbeatAddress(lane) >>> 2));
  };

  it('close() after every consumer thread hung while idle (no heartbeat, no answer to stop, no exit event: what a Web Worker that died gives a page): events pushed meanwhile are delivered by replacements, and close resolves once the silent threads are ended', async () => {
    log = new DeliveryLog();
    const m = await ShardManager.create({
      initialShards: 2, ringBufferCapacity: 1024, policy: { autoScale: false },
      consumer: { module: fixture('hang-when-idle-consumer.mjs'), threads: 2, batchSize: 16, stallMs: 300 },
    });
    for (let seq = 0; seq < 200; seq++) expect(m.push(seq * 2654435761, seqPayload(0, seq))).toBe(true);
    await log.waitFor(200, 10_000);
    expect(m.consumers().every((c) => c.shards.length > 0)).toBe(true); // both threads had a batch: both hang
    await sleep(150);
    const first = heartbeats(m);
    await sleep(400);
    // The fault hit what it aims at: no thread beats any more, and the manager (idle
    // shards) has not noticed: both still read alive.
    expect(heartbeats(m)).toEqual(first);
    expect(m.consumers().map((c) => c.alive)).toEqual([true, true]);
    // Events for the hung threads' shards, then close() at once.
    for (let seq = 200; seq < 250; seq++) expect(m.push(seq * 2654435761, seqPayload(0, seq))).toBe(true);
    await within(m.close(), 20_000, () => `close() still waiting: ${JSON.stringify(m.stats().shards.map((s) => s.length))} records in the rings`);
    await log.waitFor(250, 10_000);
    expectExactlyOnce(log, 1, 250, 'hung threads replaced during close');
    expect(m.stats()).toMatchObject({ pushed: 250, delivered: 250, inFlight: 0 });
  });

  it('close({ timeoutMs }) after consumer threads hung while idle ends them at its deadline, even when their stallMs is longer; nothing was left to deliver, so it resolves', async () => {
    log = new DeliveryLog();
    const m = await ShardManager.create({
      initialShards: 2, ringBufferCapacity: 1024, policy: { autoScale: false },
      consumer: { module: fixture('hang-when-idle-consumer.mjs'), threads: 2, batchSize: 16, stallMs: 600_000 },
    });
    for (let seq = 0; seq < 100; seq++) expect(m.push(seq * 2654435761, seqPayload(0, seq))).toBe(true);
    await log.waitFor(100, 10_000);
    await sleep(150);
    const first = heartbeats(m);
    await sleep(300);
    expect(heartbeats(m)).toEqual(first); // hung
    const t0 = performance.now();
    await within(m.close({ timeoutMs: 500 }), 20_000, () => 'close({ timeoutMs: 500 }) still waiting');
    expect(performance.now() - t0).toBeGreaterThanOrEqual(450); // it waited for the threads up to its deadline
    expectExactlyOnce(log, 1, 100, 'idle hang');
  });

  it('a consumer thread waiting on a stalled reservation (a producer that reserved and never wrote) keeps its event loop turning: it beats, is not replaced, and delivers everything once the watchdog skips the record', async () => {
    log = new DeliveryLog();
    const clock = { t: 0 };
    const events: ManagerEvent[] = [];
    const m = await ShardManager.create({
      initialShards: 1, ringBufferCapacity: 4096, maxPayloadBytes: 64, clock: () => clock.t, policy: { autoScale: false },
      producerStallMs: 5000,
      consumer: { module: seqConsumer(), threads: 1, batchSize: 16, stallMs: 1000 },
      onEvent: (e) => { if (e.type.startsWith('consumer') || e.type === 'producerStallSkipped') events.push(e); },
    });
    onTestFinished(() => m.close());
    for (let seq = 0; seq < 10; seq++) expect(m.push(0, seqPayload(0, seq))).toBe(true);
    await log.waitFor(10, 10_000);
    // What a producer terminated between its reservation and its write leaves: the tail moved
    // past a record (and 16 bytes) that nobody will publish. The next events queue behind it.
    const core = SharedCore.attachSync(m.producerHandle().core);
    const tail = (core.abi.slotAddress(m.mapper.slotOf(0)!) + R_TAIL) >>> 2;
    expect(m.ringLength(0)).toBe(0);
    core.u32[tail + 1] = core.u32[tail + 1]! + 16; // byte position (far from the end of the area)
    core.u32[tail] = core.u32[tail]! + 1; // record count
    for (let seq = 10; seq < 20; seq++) expect(m.push(0, seqPayload(0, seq))).toBe(true);
    expect(m.ringLength(0)).toBe(11);
    // The consumer thread finds records it cannot claim. Its heartbeat timer must keep running
    // (it ran only when the event loop got a turn, and a thread looping on the ring never gave one).
    let beatsBefore = 0;
    const beats = () => {
      let sum = 0;
      for (let lane = 0; lane < core.abi.laneCountConfigured(); lane++) sum += core.u32[core.abi.laneHeartbeatAddress(lane) >>> 2]!;
      return sum;
    };
    const waitForBeats = async (n: number) => {
      const from = beats();
      for (let waited = 0; beats() - from < n; waited += 20) {
        if (waited > 10_000) throw new Error(`the consumer thread's heartbeat stayed at ${from - beatsBefore} beats while a reservation was stalled`);
        await sleep(20);
      }
    };
    beatsBefore = beats();
    await waitForBeats(3);
    m.tick(); // heartbeats seen at t = 0
    await waitForBeats(2);
    clock.t += 1001;
    m.tick(); // past the consumer's stallMs: its heartbeat moved, so it is not stalled
    expect(events).toEqual([]);
    expect(log.received).toBe(10);
    // The watchdog skips the record after producerStallMs; the ten events behind it arrive.
    clock.t += 5000;
    await waitForBeats(2);
    m.tick();
    await log.waitFor(20, 10_000);
    expect(events.map((e) => e.type)).toEqual(['producerStallSkipped']);
    expect(log.problems(1, 20)).toEqual({ missing: 0, duplicated: 0 });
    expect(m.stats()).toMatchObject({ pushed: 20, delivered: 20, skipped: 1 });
    core.detach();
  });

  it('a consumer that is only slow (awaiting inside its function) keeps beating and is never replaced', async () => {
    process.env.SM_TEST_SLOW_MS = '600';
    try {
      log = new DeliveryLog();
      const clock = { t: 0 };
      const events: ManagerEvent[] = [];
      const m = await ShardManager.create({
        initialShards: 1, ringBufferCapacity: 64, clock: () => clock.t, policy: { autoScale: false },
        consumer: { module: seqConsumer(), threads: 1, batchSize: 4, stallMs: 1000 },
        onEvent: (e) => { if (e.type.startsWith('consumer')) events.push(e); },
      });
      for (let seq = 0; seq < 12; seq++) m.push(seq, seqPayload(0, seq));
      for (let i = 0; i < 6; i++) { // 6 × 20 s of manager clock while batches take 600 ms each
        m.tick();
        await sleep(250);
        clock.t += 20_000;
      }
      expect(events).toEqual([]);
      await log.waitFor(12, 10_000);
      await m.close();
      expect(log.problems(1, 12)).toEqual({ missing: 0, duplicated: 0 });
    } finally {
      delete process.env.SM_TEST_SLOW_MS;
    }
  });

  // The two checks above, with no scaling loop and no hand on the clock: a manager with
  // consumer threads runs them on its own (a housekeeping timer) while start() was not called.
  it('without start() and without options.clock, a reservation left unwritten is skipped after producerStallMs on its own: no tick() call', async () => {
    log = new DeliveryLog();
    const events: ManagerEvent[] = [];
    const m = await ShardManager.create({
      initialShards: 1, ringBufferCapacity: 4096, maxPayloadBytes: 64, policy: { autoScale: false }, producerStallMs: 200,
      consumer: { module: seqConsumer(), threads: 1, batchSize: 16 },
      onEvent: (e) => { if (e.type.startsWith('consumer') || e.type === 'producerStallSkipped') events.push(e); },
    });
    onTestFinished(() => m.close());
    for (let seq = 0; seq < 10; seq++) expect(m.push(0, seqPayload(0, seq))).toBe(true);
    await log.waitFor(10, 10_000);
    // a reservation nobody will write (as a producer terminated inside a batch leaves it), then ten events behind it
    const core = SharedCore.attachSync(m.producerHandle().core);
    onTestFinished(() => core.detach());
    const tail = (core.abi.slotAddress(m.mapper.slotOf(0)!) + R_TAIL) >>> 2;
    core.u32[tail + 1] = core.u32[tail + 1]! + 16;
    core.u32[tail] = core.u32[tail]! + 1;
    for (let seq = 10; seq < 20; seq++) expect(m.push(0, seqPayload(0, seq))).toBe(true);
    expect(m.ringLength(0), 'the ten events wait behind the unwritten record').toBe(11);
    await log.waitFor(20, 10_000);
    expect(log.received, 'delivered once the record was skipped, with no tick()').toBe(20);
    expect(events.map((e) => e.type)).toEqual(['producerStallSkipped']);
    expect(log.problems(1, 20)).toEqual({ missing: 0, duplicated: 0 });
    expect(m.stats()).toMatchObject({ pushed: 20, delivered: 20, skipped: 1 });
  });

  it('without start() and without options.clock, a consumer thread stuck in a synchronous consumer is replaced after its stallMs on its own; nothing lost', async () => {
    await withConsumerHangingOnce(async () => {
      log = new DeliveryLog();
      const events: ManagerEvent[] = [];
      const m = await ShardManager.create({
        initialShards: 2, ringBufferCapacity: 4096, policy: { autoScale: false },
        consumer: { module: fixture('hang-once-consumer.mjs'), threads: 2, batchSize: 16, stallMs: 500 },
        onEvent: (e) => { if (e.type.startsWith('consumer')) events.push(e); },
      });
      onTestFinished(() => m.close());
      const total = 3000;
      for (let seq = 0; seq < total; seq++) expect(m.push(seq * 2654435761, seqPayload(0, seq))).toBe(true);
      await log.waitFor(total, 20_000);
      expect(events.map((e) => e.type), 'the stuck thread was ended and replaced, with no tick()').toEqual(['consumerStalled', 'consumerRestarted']);
      expect((events[1] as { rewound: number }).rewound, 'it hung holding a batch').toBeGreaterThan(0);
      expect(log.problems(1, total)).toEqual({ missing: 0, duplicated: 0 });
    });
  });
});

describe('a batch run is written in chunks: one mark covers up to four records', () => {
  // pushBatch / pushFixed mark only a chunk's first record, write the others with plain stores
  // and publish the first last (assembly/ring.ts, WRITING A RUN). That is crash-safe only if
  // nothing touches the records behind a marked one. The state below is a chunk whose producer
  // stopped (or stalls) between its mark and its publish, laid out by hand.
  it('while the first record is marked, the watchdog skips none of the unmarked records behind it; once published, the chunk arrives whole and in order', async () => {
    const clock = { t: 0 };
    const events: ManagerEvent[] = [];
    const m = await ShardManager.create({
      initialShards: 1, ringBufferCapacity: 64, maxPayloadBytes: 16, clock: () => clock.t, policy: { autoScale: false },
      producerStallMs: 1000,
      onEvent: (e) => { if (e.type === 'producerStallSkipped') events.push(e); },
    });
    onTestFinished(() => m.close());
    const id = m.mapper.activeShardIds()[0]!;
    const bytes = (v: number) => new Uint8Array(16).fill(v);
    expect(m.push(0, bytes(1))).toBe(true);
    expect(m.poll(id, 10)).toHaveLength(1);
    const core = SharedCore.attachSync(m.producerHandle().core);
    onTestFinished(() => core.detach());
    const base = core.abi.slotAddress(m.mapper.slotOf(id)!);
    const tail = (base + R_TAIL) >>> 2;
    const first = core.u32[tail]!;
    const position = core.u32[tail + 1]!;
    const ringBytes = core.abi.ringBytesEach();
    expect(position % ringBytes).toBe(16);
    expect(ringBytes).toBeGreaterThanOrEqual(16 + 4 * 16); // the chunk does not wrap
    // Reserved: four 16-byte records with one compare-and-swap of the tail. Marked: the first.
    core.u32[tail + 1] = position + 64;
    core.u32[tail] = first + 4;
    const rec = (k: number) => core.recordAt(base, first + k);
    expect(core.u32[(rec(1) + REC_SEQ) >>> 2]).toBe(first + 1); // free for this lap, as the others
    Atomics.store(core.u32, (rec(0) + REC_SEQ) >>> 2, first + SEQ_WRITING);
    expect(m.push(0, bytes(9))).toBe(true); // queued behind the chunk
    for (let k = 0; k < 5; k++) {
      clock.t += 1000; // five times producerStallMs
      m.tick();
      expect(m.poll(id, 10)).toEqual([]);
    }
    expect(events).toEqual([]);
    expect(m.stats()).toMatchObject({ skipped: 0, inFlight: 5 });
    // The producer goes on: the records behind the mark with plain stores, then the publish.
    const write = (k: number) => {
      const off = (position + 16 * k) % ringBytes;
      core.u8.set(bytes(2 + k), base + core.payloadOffset + off);
      core.u32[(rec(k) + REC_LEN) >>> 2] = 16;
      core.u32[(rec(k) + REC_OFF) >>> 2] = off;
      core.u32[(rec(k) + REC_END) >>> 2] = position + 16 * (k + 1);
    };
    for (let k = 1; k < 4; k++) {
      write(k);
      core.u32[(rec(k) + REC_SEQ) >>> 2] = first + k + 1;
    }
    expect(m.poll(id, 10)).toEqual([]); // nothing is handed out before the first record is published
    write(0);
    Atomics.store(core.u32, (rec(0) + REC_SEQ) >>> 2, first + 1);
    expect(m.poll(id, 10).map((r) => r[0])).toEqual([2, 3, 4, 5, 9]);
    expect(m.stats()).toMatchObject({ pushed: 6, delivered: 6, skipped: 0, inFlight: 0 });
  });
});
