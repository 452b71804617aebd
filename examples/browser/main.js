// shard-mapper in a browser page. Cross-origin isolated (COOP/COEP): events routed here are
// consumed by Web Workers over the shared WebAssembly memory. Not isolated: the single-thread
// fallback routes, scales (driven by an injected clock) and is consumed with poll().
// The outcome is shown on the page and left on globalThis.__shardMapperExample for tests;
// then dashboard.js runs the live view (chart, shards, autoscaling).
import { ShardManager, ShardMapper, BackpressureError, sharedMemorySupported } from 'shard-mapper';
import { startDashboard } from './dashboard.js';

const logEl = document.getElementById('log');
const lines = [];
function log(line) {
  lines.push(line);
  if (logEl) logEl.textContent = lines.join('\n');
}

const EVENTS = 20_000;
const expectedSum = (n) => (n * (n - 1)) / 2;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Listen to what the consumer workers report (BroadcastChannel: no Worker reference needed). */
function reports(from) {
  const channel = new BroadcastChannel('shard-mapper-example');
  const seen = { count: 0, sum: 0, bad: 0, shards: new Set() };
  channel.onmessage = (e) => {
    if (e.data.from !== from) return;
    seen.count += e.data.count;
    seen.sum += e.data.sum;
    seen.bad += e.data.bad;
    seen.shards.add(e.data.shardId);
  };
  return {
    seen,
    async until(n, ms = 10_000) {
      const end = performance.now() + ms;
      while (seen.count < n && performance.now() < end) await sleep(5);
      channel.close();
      return { count: seen.count, sum: seen.sum, bad: seen.bad, shards: [...seen.shards].sort((a, b) => a - b) };
    },
  };
}

let retries = 0;

/** Push events "event:0".."event:n-1" (or `payloadOf(i)`), waiting whenever a ring is full (failProducer). */
async function pushAll(mgr, from, to, between, payloadOf = (i) => `event:${i}`) {
  for (let i = from; i < to; i++) {
    if (between) await between(i);
    const payload = payloadOf(i);
    for (;;) {
      try {
        if (mgr.push(`key-${i}`, payload)) break;
        throw new Error(`push ${i} was not accepted (unrouted?)`);
      } catch (error) {
        if (!(error instanceof BackpressureError)) throw error;
        retries++;
        await sleep(0); // the consumers catch up
      }
    }
  }
}

/** Streams in a page: a WHATWG ReadableStream piped into manager.writableStream() fills a
 *  small ring (failProducer: each write waits while it is full) while manager.batches() takes
 *  the records out; manager.writable() (Node streams) explains that it is not for browsers. */
async function runStreams() {
  log('runStreams: started'); // (a page that times out shows how far it got)
  const mgr = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 16 });
  const events = 500;
  const source = new ReadableStream({
    start(controller) {
      for (let i = 0; i < events; i++) controller.enqueue({ key: i, payload: `s:${i}` });
      controller.close();
    },
  });
  const decoder = new TextDecoder();
  const received = [];
  const taking = (async () => {
    for await (const batch of mgr.batches(0, { max: 7 })) for (const r of batch) received.push(Number(decoder.decode(r).slice(2)));
  })();
  await source.pipeTo(mgr.writableStream());
  await mgr.close(); // batches() ends once it has taken what is left
  await taking;
  let nodeWritable = '';
  try {
    mgr.writable();
  } catch (error) {
    nodeWritable = error.message;
  }
  const stats = mgr.stats();
  log(`streams: piped ${events} records through writableStream(), batches() took ${received.length} in order: ${received.every((v, i) => v === i)}`);
  return { events, received: received.length, inOrder: received.every((v, i) => v === i), pushed: stats.pushed, refused: stats.drops.refused, nodeWritable };
}

async function runShared() {
  // 1. The bundler-friendly form: the page starts the workers, each runs serveConsumer().
  const fromWorkers = reports('worker');
  const events = [];
  const mgr = await ShardManager.create({
    initialShards: 2,
    ringBufferCapacity: 1024,
    policy: { maxShards: 4 }, // the default is navigator.hardwareConcurrency
    consumer: {
      worker: () => new Worker(new URL('./consumer.worker.js', import.meta.url), { type: 'module' }),
      threads: 2,
    },
    onEvent: (e) => events.push(e.type),
  });
  log(`memory: ${mgr.memoryKind}, consumer workers: ${mgr.consumers().length}`);
  let added = -1;
  retries = 0;
  await pushAll(mgr, 0, EVENTS, async (i) => {
    // Change the shard set while events flow: add one, then remove shard 0 (drained first).
    if (i === EVENTS / 4) added = await mgr.addShard();
    if (i === EVENTS / 2) await mgr.removeShard(0);
  });
  await mgr.close(); // resolves once the workers took every accepted event
  const stats = mgr.stats();
  const firstRetries = retries;
  const seen = await fromWorkers.until(stats.pushed);
  log(`serveConsumer workers: pushed ${stats.pushed}, delivered ${stats.delivered}, workers saw ${seen.count} on shards ${seen.shards}`);

  // 2. options.consumer.module: the package's own worker (bundled by Vite out of the
  //    dependency) imports a consumer module by URL.
  const fromModule = reports('module');
  const mgr2 = await ShardManager.create({
    initialShards: 2,
    ringBufferCapacity: 1024,
    consumer: { module: new URL('./consumer-module.js', import.meta.url), threads: 1 },
  });
  const n2 = 2_000;
  await pushAll(mgr2, 0, n2);
  await mgr2.close();
  const stats2 = mgr2.stats();
  const seen2 = await fromModule.until(stats2.pushed);
  log(`consumer module: pushed ${stats2.pushed}, delivered ${stats2.delivered}, module saw ${seen2.count}`);

  // A worker script that does not load (here a 404): create() says which worker failed. The
  // URL is not a literal, so no bundler tries to bundle the missing file.
  let missingWorker = '';
  const missing = './missing.worker.js';
  try {
    await ShardManager.create({
      initialShards: 1,
      ringBufferCapacity: 8,
      consumer: { worker: () => new Worker(new URL(missing, location.href), { type: 'module' }), threads: 1 },
    });
  } catch (error) {
    missingWorker = error.message;
  }
  log(`a worker script that does not load: ${missingWorker}`);

  // A consumer worker that calls serveConsumer only after a while: it asks for its start-up
  // data, so create() does not wait for ever on the message it missed.
  const fromLate = reports('late');
  const lateStart = performance.now();
  const lateOutcome = await Promise.race([
    ShardManager.create({
      initialShards: 1,
      ringBufferCapacity: 256,
      consumer: { worker: () => new Worker(new URL('./late-consumer.worker.js', import.meta.url), { type: 'module' }), threads: 1 },
    }).then(async (mgrLate) => {
      await pushAll(mgrLate, 0, 500);
      await mgrLate.close();
      const seenLate = await fromLate.until(500);
      return { created: true, pushed: mgrLate.stats().pushed, delivered: mgrLate.stats().delivered, seen: seenLate.count };
    }),
    sleep(10_000).then(() => ({ created: false })),
  ]);
  const lateServe = { ...lateOutcome, ms: Math.round(performance.now() - lateStart) };
  log(`a consumer worker that serves late: ${JSON.stringify(lateServe)}`);

  // 3. A producer Web Worker pushes through ShardProducer.attach(manager.producerHandle())
  //    while the page pushes too; consumer workers take both streams.
  const fromProducers = reports('worker');
  const mgr3 = await ShardManager.create({
    initialShards: 2,
    ringBufferCapacity: 1024,
    consumer: {
      worker: () => new Worker(new URL('./consumer.worker.js', import.meta.url), { type: 'module' }),
      threads: 1,
    },
  });
  const n3 = 10_000;
  const producer = new Worker(new URL('./producer.worker.js', import.meta.url), { type: 'module' });
  const produced = new Promise((resolve, reject) => {
    producer.onmessage = (e) => resolve(e.data);
    producer.onerror = (e) => reject(new Error(`producer worker: ${e.message}`));
  });
  producer.postMessage({ handle: mgr3.producerHandle(), from: n3 / 2, to: n3 });
  await pushAll(mgr3, 0, n3 / 2);
  const fromWorker = await produced;
  producer.terminate();
  await mgr3.close();
  const stats3 = mgr3.stats();
  const seen3 = await fromProducers.until(n3);
  log(`producer worker: pushed ${fromWorker.pushed} there + ${n3 / 2} here, delivered ${stats3.delivered}, consumers saw ${seen3.count}`);

  // 4. A consumer Web Worker that dies sends the page no event. Its heartbeat stops, and
  //    tick() ends and replaces it after consumer.stallMs (by the manager's clock, injected
  //    here): the shard is consumed again, nothing is lost.
  const fromReplaced = reports('worker');
  let now4 = 0;
  const spawned4 = [];
  const events4 = [];
  const mgr4 = await ShardManager.create({
    initialShards: 2,
    ringBufferCapacity: 4096,
    clock: () => now4,
    policy: { autoScale: false },
    consumer: {
      worker: () => {
        const w = new Worker(new URL('./consumer.worker.js', import.meta.url), { type: 'module' });
        spawned4.push(w);
        return w;
      },
      threads: 1,
      stallMs: 1000,
    },
    onEvent: (e) => { if (e.type === 'consumerStalled' || e.type === 'consumerRestarted') events4.push(e.type); },
  });
  const n4 = 4000;
  await pushAll(mgr4, 0, n4 / 2);
  const deadline4 = performance.now() + 20_000; // bounded: a page that never gets there says so below
  while (mgr4.stats().delivered < n4 / 2 && performance.now() < deadline4) await sleep(5);
  spawned4[0].terminate(); // dies silently: no exit event reaches the page
  await pushAll(mgr4, n4 / 2, n4); // waits in the rings
  mgr4.tick(); // heartbeats seen
  await sleep(300);
  now4 += 1001;
  mgr4.tick(); // unchanged for stallMs while its shards have records: replaced
  await mgr4.close();
  const stats4 = mgr4.stats();
  const seen4 = await fromReplaced.until(n4);
  log(`dead consumer worker replaced: ${events4.join(' → ')}; delivered ${stats4.delivered} of ${n4}`);
  // 4b. A consumer Web Worker that dies while its shard is idle: the page is told nothing and
  //     nothing needs replacing, but close() still settles (a worker silent for stallMs is ended).
  const spawned4b = [];
  const mgr4b = await ShardManager.create({
    initialShards: 1,
    ringBufferCapacity: 1024,
    policy: { autoScale: false },
    consumer: {
      worker: () => {
        const w = new Worker(new URL('./consumer.worker.js', import.meta.url), { type: 'module' });
        spawned4b.push(w);
        return w;
      },
      threads: 1,
      stallMs: 300,
    },
  });
  await pushAll(mgr4b, 0, 100);
  const deadline4b = performance.now() + 20_000;
  while (mgr4b.stats().delivered < 100 && performance.now() < deadline4b) await sleep(5);
  spawned4b[0].terminate();
  await sleep(100);
  const start4b = performance.now();
  const close4b = await Promise.race([
    mgr4b.close().then(
      () => 'resolved',
      (e) => `rejected: ${e.message}`,
    ),
    sleep(10_000).then(() => 'still pending after 10 s'),
  ]);
  const idleDeath = { close: close4b, closeMs: Math.round(performance.now() - start4b), delivered: mgr4b.stats().delivered };
  log(`consumer worker dead while idle: close() ${close4b} in ${idleDeath.closeMs} ms`);
  // 5. A batch consumer (serveConsumer(fn, { batch: true })): one RecordBatch per call, while a
  //    shard is added, one removed, and a consumer worker killed (its batch comes again).
  const batchRun = await runBatchConsumer();
  batchRun.dropOldest = await runBatchDropOldest();
  log(`batch consumer: pushed ${batchRun.pushed}, delivered ${batchRun.delivered}, seen ${batchRun.seen}, missing ${batchRun.missing}, repeated ${batchRun.repeated}, wrapped batches ${batchRun.wrapped}`);
  // 6. Byte rings: events of mixed sizes into rings sized in bytes (a few of the larger events
  //    fill one), while a shard is added and one removed.
  const bytesRun = await runByteRings();
  log(`byte rings: pushed ${bytesRun.pushed}, delivered ${bytesRun.delivered}, missing ${bytesRun.missing}, bad ${bytesRun.bad}, waits on a full ring ${bytesRun.retries}, wrapped batches ${bytesRun.wrapped}`);

  return {
    batch: batchRun,
    bytes: bytesRun,
    mode: 'shared',
    missingWorker,
    lateServe,
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    sharedMemorySupported: sharedMemorySupported(),
    memoryKind: mgr.memoryKind,
    pushed: stats.pushed,
    delivered: stats.delivered,
    drops: stats.drops,
    retries: firstRetries,
    unrouted: stats.unrouted,
    consumed: seen,
    expectedSum: expectedSum(EVENTS),
    events: EVENTS,
    added,
    lifecycle: events,
    producer: { pushed: stats3.pushed, delivered: stats3.delivered, inWorker: fromWorker.pushed, consumed: seen3, expectedSum: expectedSum(n3), events: n3 },
    module: { pushed: stats2.pushed, delivered: stats2.delivered, consumed: seen2, expectedSum: expectedSum(n2), events: n2 },
    idleDeath,
    replaced: { events: events4, workersStarted: spawned4.length, pushed: stats4.pushed, delivered: stats4.delivered, inFlight: stats4.inFlight, consumed: seen4, events4: n4 },
  };
}

/** Collect what batch-consumer workers report: per-number counts, per-shard order. */
function batchReports(n) {
  const counts = new Uint8Array(n);
  const last = new Map(); // shard → last number seen
  const seen = { records: 0, bad: 0, outOfOrder: 0, wrapped: 0 };
  const channel = new BroadcastChannel('shard-mapper-example');
  channel.onmessage = (e) => {
    if (e.data.from !== 'batch') return;
    const { shardId, seqs, bad, wrapped } = e.data;
    seen.bad += bad;
    if (wrapped) seen.wrapped++;
    for (const seq of seqs) {
      seen.records++;
      // a repeat after a killed worker is its rewound batch; a first delivery must be in order
      if (counts[seq] === 0 && seq < (last.get(shardId) ?? -1)) seen.outOfOrder++;
      counts[seq]++;
      last.set(shardId, Math.max(seq, last.get(shardId) ?? -1));
    }
  };
  return {
    async until(total) {
      const end = performance.now() + 10_000;
      while (seen.records < total && performance.now() < end) await sleep(5);
      await sleep(50); // a late repeat would arrive now
      channel.close();
      let missing = 0;
      let repeated = 0;
      for (const c of counts) { if (c === 0) missing++; else repeated += c - 1; }
      return { seen: seen.records, missing, repeated, outOfOrder: seen.outOfOrder, bad: seen.bad, wrapped: seen.wrapped };
    },
  };
}

/** options.consumer for batch-consumer.worker.js Web Workers (serveConsumer(fn, { batch: true })). */
function batchConsumerWorkers(threads, batchSize) {
  return { worker: () => new Worker(new URL('./batch-consumer.worker.js', import.meta.url), { type: 'module' }), threads, batchSize };
}

/** dropOldest with a batch consumer that cannot keep up: what arrives is in order and once. */
async function runBatchDropOldest() {
  log('runBatchDropOldest: started'); // (a page that times out shows how far it got)
  const n = 20_000;
  const reports = batchReports(n);
  const mgr = await ShardManager.create({
    initialShards: 1,
    ringBufferCapacity: 64,
    backpressure: { kind: 'dropOldest' },
    policy: { maxShards: 1 },
    consumer: batchConsumerWorkers(1, 24),
  });
  let accepted = 0;
  for (let i = 0; i < n; i++) if (mgr.push(7, `event:${i}`)) accepted++; // no pause: the ring overflows
  await mgr.close();
  const stats = mgr.stats();
  const r = await reports.until(stats.delivered);
  return { events: n, accepted, pushed: stats.pushed, delivered: stats.delivered, evicted: stats.drops.oldest, ...r };
}

/** Mixed sizes (10 B to 2 KiB) through rings of 512 records but only 16 KiB of payload each:
 *  "event:<n>|" then filler bytes that depend on n, which the batch worker checks. */
async function runByteRings() {
  log('runByteRings: started'); // (a page that times out shows how far it got)
  const n = 6_000;
  const reports = batchReports(n);
  const mgr = await ShardManager.create({
    initialShards: 2,
    ringBufferCapacity: 512,
    ringBufferBytes: 16 * 1024,
    maxPayloadBytes: 2048,
    policy: { maxShards: 4 },
    consumer: batchConsumerWorkers(2, 64),
  });
  const payloadOf = (i) => {
    const head = `event:${i}|`;
    const size = Math.max(head.length, 10 + ((i * 7919) % 2038));
    return head + String(i % 10).repeat(size - head.length);
  };
  retries = 0;
  await pushAll(mgr, 0, n, async (i) => {
    if (i === n / 3) await mgr.addShard();
    if (i === n / 2) await mgr.removeShard(0);
  }, payloadOf);
  const waits = retries;
  await mgr.close();
  const stats = mgr.stats();
  const r = await reports.until(stats.delivered);
  return { events: n, pushed: stats.pushed, delivered: stats.delivered, ringBufferBytes: mgr.ringBufferBytes, retries: waits, ...r };
}

async function runBatchConsumer() {
  log('runBatchConsumer: started'); // (a page that times out shows how far it got)
  const n = 10_000;
  const reports = batchReports(n);
  const restarts = [];
  const mgr = await ShardManager.create({
    initialShards: 2,
    ringBufferCapacity: 256,
    // 4 KiB of payload area: these ~16-byte events wrap past its end every ~256 events of a
    // shard, so some batches straddle the end (two regions), which the test checks happened
    // (with the default area, 64 KiB, a shard wrapped at most once in the run)
    ringBufferBytes: 4096,
    policy: { maxShards: 4 },
    consumer: batchConsumerWorkers(2, 100),
    onEvent: (e) => { if (e.type === 'consumerRestarted') restarts.push(e.rewound); },
  });
  // The kill must hit a batch in flight: event 3n/4 carries "hold", and the worker that gets it
  // holds its batch until released. The first holder is killed; its replacement gets the same
  // batch again (rewound), holds it too, and is released.
  const channel = new BroadcastChannel('shard-mapper-example');
  // Paced workers take fuller batches, so more of them straddle the payload area's end; a
  // worker that keeps up takes one record at a time, and one record never does.
  channel.postMessage({ from: 'page', paceMs: 2 });
  const holders = [];
  let killedHolding = false;
  channel.onmessage = (e) => {
    if (e.data.from !== 'batch-hold') return;
    holders.push(e.data.shardId);
    if (holders.length === 1) {
      const owner = mgr.consumers().find((c) => c.shards.includes(e.data.shardId));
      void mgr.terminateConsumer(owner.index).then(() => { killedHolding = true; });
    } else channel.postMessage({ from: 'page', release: true });
  };
  const hold = (3 * n) / 4;
  await pushAll(
    mgr,
    0,
    n,
    async (i) => {
      if (i === n / 4) await mgr.addShard();
      if (i === n / 2) await mgr.removeShard(0);
    },
    (i) => (i === hold ? `event:${i}|hold` : `event:${i}`),
  );
  const holdDeadline = performance.now() + 20_000; // bounded: the test reports how far it got
  while (holders.length < 2 && performance.now() < holdDeadline) await sleep(5);
  channel.postMessage({ from: 'page', paceMs: 0 });
  channel.close();
  await mgr.close();
  const stats = mgr.stats();
  const r = await reports.until(stats.delivered);
  return {
    events: n, pushed: stats.pushed, delivered: stats.delivered, ...r,
    rewound: restarts.reduce((a, b) => a + b, 0), restarts: restarts.length,
    holders: holders.length, killedHolding,
  };
}

async function runFallback() {
  let now = 0; // an injected clock: scaling is driven by tick(), not by wall time
  const decisions = [];
  const policy = {
    minShards: 1, maxShards: 4, fillRatioThreshold: 0.5, cooldownMs: 100, scaleDownDelayMs: 500, metricsWindowMs: 100,
  };
  const mgr = await ShardManager.create({
    initialShards: 1,
    ringBufferCapacity: 64,
    policy,
    backpressure: { kind: 'dropNewest' },
    clock: () => now,
    drainGraceMs: 50,
    onEvent: (e) => { if (e.type === 'scalingDecision') decisions.push(`${e.decision.kind}(${e.decision.count})`); },
  });
  log(`memory: ${mgr.memoryKind} (SharedArrayBuffer: ${typeof SharedArrayBuffer}, crossOriginIsolated: ${globalThis.crossOriginIsolated})`);

  let consumerRefused = '';
  try {
    await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, consumer: { module: './nowhere.js' } });
  } catch (error) {
    consumerRefused = error.message;
  }
  // Another mapper: the fallback warning is printed once per page, not once per instance.
  const mapper = await ShardMapper.create(2, 16, { maxShards: 2 });

  let pushed = 0;
  let delivered = 0;
  const drain = () => { for (const id of mgr.mapper.allShardIds()) delivered += mgr.poll(id).length; };
  // Overload: fill the only ring past the threshold, then let the scaling loop see it.
  for (let i = 0; i < 60; i++) if (mgr.push(`key-${i}`, `event:${i}`)) pushed++;
  let maxActive = mgr.mapper.activeShardCount();
  for (let k = 0; k < 6; k++) {
    now += 150;
    mgr.tick();
    maxActive = Math.max(maxActive, mgr.mapper.activeShardCount());
    for (let i = 0; i < 60; i++) if (mgr.push(`key-${k}-${i}`, `event:${i}`)) pushed++;
  }
  const scaledUpTo = maxActive;
  drain();
  // Idle: after scaleDownDelayMs of empty windows the loop drains shards back to minShards.
  for (let k = 0; k < 40 && (mgr.mapper.activeShardCount() > 1 || mgr.mapper.totalShardCount() > 1); k++) {
    now += 150;
    mgr.tick();
    drain();
  }
  const routedAfter = mgr.push('after', 'event:after');
  if (routedAfter) pushed++;
  drain();
  const stats = mgr.stats();
  log(`decisions: ${decisions.join(', ')}; shards: up to ${scaledUpTo}, now ${mgr.mapper.activeShardCount()} active`);
  log(`pushed ${stats.pushed}, delivered ${stats.delivered}, dropped ${stats.dropped}`);
  return {
    mode: 'single',
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    sharedMemorySupported: sharedMemorySupported(),
    sharedArrayBuffer: typeof SharedArrayBuffer,
    memoryKind: mgr.memoryKind,
    consumerRefused,
    mapperActive: mapper.activeShardCount(),
    decisions,
    scaledUpTo,
    activeAtEnd: mgr.mapper.activeShardCount(),
    totalAtEnd: mgr.mapper.totalShardCount(),
    routedAfter,
    pushed: stats.pushed,
    countedPushed: pushed,
    delivered: stats.delivered,
    polled: delivered,
    dropped: stats.dropped,
  };
}

(sharedMemorySupported() ? runShared() : runFallback()).then(
  async (result) => {
    const streams = await runStreams();
    globalThis.__shardMapperExample = { ok: true, ...result, streams };
    log('done');
    // Then the live view, on a manager of its own (the checks above are finished by now).
    startDashboard({ shared: result.mode === 'shared' }).catch((error) => log(`live view failed: ${error?.stack ?? error}`));
  },
  (error) => {
    globalThis.__shardMapperExample = { ok: false, error: String(error?.stack ?? error) };
    log(`failed: ${error?.stack ?? error}`);
  },
);
