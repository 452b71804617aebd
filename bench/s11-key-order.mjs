// Scenario 11 (issue 19): key order across moves with routing 'affinity'.
//  a. events consumed before an earlier event of their key, per 10^6, under the issue's churn
//     (512 keys numbered per key, producers on 3 threads faster than consumers on 3 threads,
//     shards added and removed 14 times): affinity without the fence (keyOrder: false, the
//     previous behaviour), ordered affinity (the default) and balanced;
//  b. the price: delivered events/s of ordered vs unfenced affinity on the demo's workload
//     (its producer and consumer threads, policy and autoscaling from one shard);
//  c. push-to-consume latency of keys that moved and of keys that did not, around a shard
//     added while producers run below the consumers' capacity.
// Cross-thread rows: several runs, interleaved, median and range.
import { Worker } from 'node:worker_threads';
import { ShardManager } from 'shard-mapper';
import { goal, check, consume, sleep, fmtRatio } from './lib.mjs';

export const id = 's11';
export const title = 'Scenario 11: key order across moves (routing affinity, worker threads)';

const KEYS = 512;
const hashOf = (key) => Math.imul(key + 1, 0x9e3779b1) >>> 0;
let channels = 0;

/** Consumer threads reporting (key, seq, latency) with a shared ticket; their reports, in order. */
function recorder(batchMs) {
  const name = `shard-mapper-bench-s11-${process.pid}-${++channels}`;
  const tickets = new SharedArrayBuffer(4);
  const batches = [];
  let received = 0;
  let lastAt = performance.now();
  const channel = new BroadcastChannel(name);
  channel.onmessage = (e) => { batches.push(e.data); received += e.data.data.length / 3; lastAt = performance.now(); };
  return {
    worker: () => new Worker(new URL('./workers/key-order-consumer.mjs', import.meta.url), { workerData: { channel: name, tickets, batchMs } }),
    get received() { return received; },
    async settle(total, timeoutMs = 60_000) {
      for (let waited = 0; received < total && waited < timeoutMs; waited += 10) await sleep(10);
      while (performance.now() - lastAt < 200) await sleep(20);
      channel.close();
    },
    /** Events consumed before an earlier one of their key (first sight only), and repeats. */
    order() {
      const sorted = [...batches].sort((a, b) => a.ticket - b.ticket);
      const highest = new Float64Array(KEYS).fill(-1);
      const seen = new Set();
      let outOfOrder = 0;
      let repeats = 0;
      for (const b of sorted) {
        for (let i = 0; i < b.data.length; i += 3) {
          const key = b.data[i];
          const seq = b.data[i + 1];
          const id = key * 2 ** 24 + seq;
          if (seen.has(id)) { repeats++; continue; }
          seen.add(id);
          if (seq < highest[key]) outOfOrder++;
          else highest[key] = seq;
        }
      }
      return { outOfOrder, repeats, unique: seen.size };
    },
    batches,
  };
}

function startProducers(m, producers, perProducerRate) {
  const control = new SharedArrayBuffer(8);
  const ctl = new Int32Array(control);
  Atomics.store(ctl, 0, perProducerRate);
  const workers = Array.from({ length: producers }, (_, producer) => new Worker(new URL('./workers/key-order-producer.mjs', import.meta.url), {
    workerData: { handle: m.producerHandle(), producer, producers, keys: KEYS, control },
  }));
  const ready = Promise.all(workers.map((w) => new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); })));
  // after 'ready', the next message is the producer's totals
  const done = ready.then(() => Promise.all(workers.map((w) => new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); }))));
  return {
    ready,
    async stop() {
      Atomics.store(ctl, 1, 1);
      const r = await done;
      return { accepted: r.reduce((a, x) => a + x.accepted, 0), full: r.reduce((a, x) => a + x.full, 0), moving: r.reduce((a, x) => a + x.moving, 0) };
    },
  };
}

// ---- a. out of key order under churn -----------------------------------------------------------

const CHURN = { producers: 3, perProducer: 20_000, threads: 3, batch: 32, batchMs: 2, ring: 256, changes: 14 };

async function churnRun(routing, keyOrder, seconds, seed) {
  const rec = recorder(CHURN.batchMs);
  const m = await ShardManager.create({
    routing, ...(routing === 'affinity' ? { keyOrder } : {}), initialShards: 3, ringBufferCapacity: CHURN.ring,
    policy: { minShards: 1, maxShards: 8, autoScale: false },
    consumer: { worker: rec.worker, threads: CHURN.threads, batchSize: CHURN.batch },
  });
  const producers = startProducers(m, CHURN.producers, CHURN.perProducer);
  await producers.ready; // attached (on a loaded machine that takes a while): the churn starts with the load
  let state = seed >>> 0;
  const random = () => { state = (Math.imul(state ^ (state >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0; return state / 2 ** 32; };
  const removals = [];
  const stepMs = (seconds * 1000) / (CHURN.changes + 1);
  const t0 = performance.now();
  let changes = 0;
  while (performance.now() - t0 < seconds * 1000) {
    await sleep(50);
    m.mapper.collectMetrics(); // a metrics window: slots may spill and come back as well
    if (changes < CHURN.changes && performance.now() - t0 >= (changes + 1) * stepMs) {
      const active = m.mapper.activeShardIds();
      if (active.length <= 2 || (active.length < 6 && random() < 0.5)) await m.addShard();
      else removals.push(m.removeShard(active[Math.floor(random() * active.length)]));
      changes++;
    }
  }
  const produced = await producers.stop();
  await Promise.all(removals);
  await rec.settle(produced.accepted);
  const stats = m.stats();
  await m.close();
  const o = rec.order();
  check(o.unique === produced.accepted && o.repeats === 0, `s11a ${routing}${keyOrder === false ? ' unfenced' : ''}: every accepted event consumed once (${produced.accepted} accepted, ${o.unique} seen, ${o.repeats} repeats)`);
  consume(o.unique);
  return { ms: performance.now() - t0, consumed: o.unique, outOfOrder: o.outOfOrder, perMillion: (1e6 * o.outOfOrder) / Math.max(1, o.unique), changes, moved: stats.keyOrder.movedSlots, held: produced.moving };
}

// ---- b. throughput on the demo's workload ----------------------------------------------------

const DEMO = { producers: 2, peak: 150_000, ring: 4096, payload: 64, maxShards: 4, batch: 128, keysPerProducer: 1024 };

async function demoThroughput(keyOrder, seconds) {
  const next = new SharedArrayBuffer(4 * DEMO.producers * DEMO.keysPerProducer);
  const m = await ShardManager.create({
    routing: 'affinity', keyOrder, initialShards: 1, ringBufferCapacity: DEMO.ring, maxPayloadBytes: DEMO.payload,
    policy: { minShards: 1, maxShards: DEMO.maxShards, fillRatioThreshold: 0.5, cooldownMs: 1500, scaleDownDelayMs: 3000, metricsWindowMs: 250 },
    consumer: {
      worker: () => new Worker(new URL('../examples/demo-consumer.mjs', import.meta.url), { workerData: { keysPerProducer: DEMO.keysPerProducer, next } }),
      threads: DEMO.maxShards, batchSize: DEMO.batch,
    },
  });
  m.start();
  const control = new SharedArrayBuffer(8);
  const ctl = new Int32Array(control);
  Atomics.store(ctl, 0, Math.round(DEMO.peak / DEMO.producers));
  const counters = new SharedArrayBuffer(16 * DEMO.producers);
  const workers = Array.from({ length: DEMO.producers }, (_, producer) => new Worker(new URL('../examples/demo-producer.mjs', import.meta.url), {
    workerData: { handle: m.producerHandle(), producer, payloadBytes: DEMO.payload, control, counters, keysPerProducer: DEMO.keysPerProducer },
  }));
  const done = workers.map((w) => new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); }));
  for (let waited = 0; m.stats().pushed === 0 && waited < 30_000; waited += 10) await sleep(10); // producers attached
  await sleep(1000);
  const s0 = m.stats();
  const t0 = performance.now();
  await sleep(seconds * 1000);
  const s1 = m.stats();
  const ms = performance.now() - t0;
  Atomics.store(ctl, 1, 1);
  const produced = await Promise.all(done);
  await m.close();
  const s = m.stats();
  const accepted = produced.reduce((a, p) => a + p.accepted, 0);
  check(s.delivered === accepted, `s11b: every accepted event delivered (${accepted} accepted, ${s.delivered} delivered)`);
  consume(s.delivered);
  return { ms, events: s1.delivered - s0.delivered, moved: s.keyOrder.movedSlots, held: produced.reduce((a, p) => a + (p.moving ?? 0), 0), shards: m.mapper.activeShardCount() };
}

// ---- c. latency around a move ---------------------------------------------------------------

const LAT = { producers: 2, perProducer: 8000, threads: 3, batch: 32, batchMs: 2, ring: 1024 };

const quantile = (xs, q) => {
  if (xs.length === 0) return NaN;
  const s = Float64Array.from(xs).sort();
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

async function latencyRun(keyOrder, seconds) {
  const rec = recorder(LAT.batchMs);
  const m = await ShardManager.create({
    routing: 'affinity', keyOrder, initialShards: 3, ringBufferCapacity: LAT.ring,
    policy: { minShards: 1, maxShards: 8, autoScale: false },
    consumer: { worker: rec.worker, threads: LAT.threads, batchSize: LAT.batch },
  });
  const producers = startProducers(m, LAT.producers, LAT.perProducer);
  await producers.ready;
  const t0 = performance.now();
  await sleep(seconds * 500);
  const before = Array.from({ length: KEYS }, (_, k) => m.mapper.selectShard(hashOf(k)));
  const moveAt = performance.timeOrigin + performance.now();
  await m.addShard();
  const moved = new Uint8Array(KEYS);
  for (let k = 0; k < KEYS; k++) moved[k] = m.mapper.selectShard(hashOf(k)) !== before[k] ? 1 : 0;
  await sleep(seconds * 500);
  const produced = await producers.stop();
  await rec.settle(produced.accepted);
  await m.close();
  // By the time an event was offered: in the half second before the move, or in the 500 ms after it.
  const groups = { before: [], unmoved: [], moved: [] };
  for (const b of rec.batches) {
    for (let i = 0; i < b.data.length; i += 3) {
      const key = b.data[i];
      const latency = b.data[i + 2];
      const offered = b.now - latency;
      if (offered >= moveAt - 500 && offered < moveAt) groups.before.push(latency);
      else if (offered >= moveAt && offered < moveAt + 500) (moved[key] ? groups.moved : groups.unmoved).push(latency);
    }
  }
  consume(rec.received);
  const sum = (xs) => ({ p50: quantile(xs, 0.5), p99: quantile(xs, 0.99), n: xs.length });
  return { ms: performance.now() - t0, before: sum(groups.before), unmoved: sum(groups.unmoved), moved: sum(groups.moved), movedKeys: moved.reduce((a, x) => a + x, 0), held: produced.moving };
}

// ---- the scenario -----------------------------------------------------------------------------

const median = (xs) => [...xs].sort((a, b) => a - b)[(xs.length - 1) >> 1];
const range = (xs, f) => `${f(Math.min(...xs))} – ${f(Math.max(...xs))}`;
const int = (x) => Math.round(x).toLocaleString('en-US');
const ms1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '–');

export async function run(profile) {
  const tiny = profile.name === 'tiny';
  const quick = profile.name === 'quick';
  const reps = tiny ? 1 : 3;
  const tables = [];
  const goals = [];

  // a.
  const configs = [
    { id: 'unfenced', name: 'affinity, keyOrder: false (before issue 19)', routing: 'affinity', keyOrder: false },
    { id: 'ordered', name: '**affinity (ordered, the default)**', routing: 'affinity', keyOrder: true },
    { id: 'balanced', name: 'balanced', routing: 'balanced', keyOrder: undefined },
  ];
  const churnSeconds = tiny ? 0.6 : quick ? 1.5 : 3;
  const churn = new Map(configs.map((c) => [c.id, []]));
  for (let r = 0; r < reps; r++) {
    for (const c of configs) churn.get(c.id).push(await churnRun(c.routing, c.keyOrder, churnSeconds, 0x19 + r));
  }
  const churnRows = configs.map((c) => {
    const runs = churn.get(c.id);
    const per = runs.map((x) => x.perMillion);
    return {
      id: c.id, name: c.name, perMillion: median(per), per, runs, wallMs: runs.reduce((a, x) => a + x.ms, 0),
      consumed: median(runs.map((x) => x.consumed)), held: median(runs.map((x) => x.held)), moved: median(runs.map((x) => x.moved ?? 0)),
    };
  });
  tables.push({
    id: 's11-order',
    title: `11a. Events consumed before an earlier event of their key, per 10^6 consumed (${KEYS} keys, ${CHURN.changes} shard adds/removes in ${churnSeconds} s)`,
    rows: churnRows,
    columns: [
      { head: 'routing', get: (r) => r.name },
      { head: 'out of key order per 10^6 (median)', get: (r) => int(r.perMillion), align: 'right' },
      { head: 'range', get: (r) => range(r.per, int), align: 'right' },
      { head: 'events consumed per run (median)', get: (r) => int(r.consumed), align: 'right' },
      { head: 'slots moved with a wait', get: (r) => (r.id === 'ordered' ? int(r.moved) : ''), align: 'right' },
      { head: 'pushes held back (moving key)', get: (r) => (r.id === 'ordered' ? int(r.held) : ''), align: 'right' },
    ],
    legend: `${reps} run${reps > 1 ? 's' : ''} per row, interleaved. ${CHURN.producers} producer threads asking ${int(CHURN.perProducer)} events/s each over ${KEYS} keys (each event numbered within its key); consumers on ${CHURN.threads} threads take ${CHURN.batch} records per call and wait ${CHURN.batchMs} ms per batch, slower than the producers, so every move finds a backlog; rings of ${CHURN.ring} records, failProducer (refused pushes are retried: nothing lost, checked). Every 50 ms a metrics window (collectMetrics); ${CHURN.changes} times a shard added or a random one removed. Consumption order is the order of tickets the consumer threads take from one shared counter before acknowledging a batch.`,
  });
  if (!tiny) {
    goals.push(goal({ id: 's11-order', issue: '#19', text: 'ordered affinity: events out of key order per 10^6 under churn (median of runs)', value: churnRows[1].perMillion, target: 0, op: '<=', unit: 'per 10^6', detail: `unfenced affinity ${int(churnRows[0].perMillion)}, balanced ${int(churnRows[2].perMillion)}` }));
  }

  // b.
  const tSeconds = tiny ? 0.5 : quick ? 2 : 4;
  const tp = { unfenced: [], ordered: [] };
  for (let r = 0; r < reps; r++) {
    tp.unfenced.push(await demoThroughput(false, tSeconds));
    tp.ordered.push(await demoThroughput(true, tSeconds));
  }
  const rate = (x) => (x.events / x.ms) * 1000;
  const tpRows = [
    { id: 'unfenced', name: 'affinity, keyOrder: false', rates: tp.unfenced.map(rate), runs: tp.unfenced },
    { id: 'ordered', name: '**affinity (ordered)**', rates: tp.ordered.map(rate), runs: tp.ordered },
  ].map((r) => ({ ...r, med: median(r.rates), wallMs: r.runs.reduce((a, x) => a + x.ms, 0) }));
  const tpRatio = tpRows[1].med / tpRows[0].med;
  tables.push({
    id: 's11-throughput',
    title: '11b. The price: delivered events/s on the demo\'s workload (affinity, autoscaling from 1 shard)',
    rows: tpRows,
    columns: [
      { head: 'routing', get: (r) => r.name },
      { head: 'delivered events/s (median)', get: (r) => int(r.med), align: 'right' },
      { head: 'range', get: (r) => range(r.rates, int), align: 'right' },
      { head: '÷ unfenced', get: (r) => fmtRatio(r.med / tpRows[0].med), align: 'right' },
      { head: 'slots moved with a wait (median)', get: (r) => (r.id === 'ordered' ? int(median(r.runs.map((x) => x.moved ?? 0))) : ''), align: 'right' },
      { head: 'pushes held back (median)', get: (r) => int(median(r.runs.map((x) => x.held))), align: 'right' },
    ],
    legend: `${reps} run${reps > 1 ? 's' : ''} per row, interleaved; each measures ${tSeconds} s after 1 s of warm-up. The demo's threads (examples/demo-producer.mjs asking ${int(DEMO.peak)} events/s in total over ${DEMO.keysPerProducer} keys each — a full ring makes it back off 1 ms, a moving key makes it go on with its other keys — examples/demo-consumer.mjs checking key order and waiting 2 ms per batch of ${DEMO.batch}) and policy (fillRatioThreshold 0.5, cooldown 1.5 s, window 250 ms, up to ${DEMO.maxShards} shards), so the shards added while it scales out move slots with a wait.`,
  });
  if (!tiny) goals.push(goal({ id: 's11-price', issue: '#19', text: 'ordered ÷ unfenced affinity, delivered events/s on the demo\'s workload (medians)', value: tpRatio, target: 0.95, op: '>=' }));

  // c.
  const latSeconds = tiny ? 0.4 : 2;
  const lat = { unfenced: [], ordered: [] };
  for (let r = 0; r < reps; r++) {
    lat.unfenced.push(await latencyRun(false, latSeconds));
    lat.ordered.push(await latencyRun(true, latSeconds));
  }
  const latRows = [];
  for (const [cfg, label] of [['unfenced', 'affinity, keyOrder: false'], ['ordered', '**affinity (ordered)**']]) {
    for (const [group, what] of [['before', 'every key, the 0.5 s before the move'], ['unmoved', 'keys that stayed, 0.5 s after'], ['moved', 'keys that moved, 0.5 s after']]) {
      const runs = lat[cfg].map((x) => x[group]);
      latRows.push({ id: `${cfg}-${group}`, name: `${label}: ${what}`, p50: runs.map((x) => x.p50), p99: runs.map((x) => x.p99), n: median(runs.map((x) => x.n)), wallMs: lat[cfg].reduce((a, x) => a + x.ms, 0) });
    }
  }
  tables.push({
    id: 's11-latency',
    title: '11c. Push-to-consume latency (ms) around a shard added (3 → 4 shards), producers below the consumers\' capacity',
    rows: latRows,
    columns: [
      { head: 'routing: events', get: (r) => r.name },
      { head: 'p50 (median)', get: (r) => ms1(median(r.p50)), align: 'right' },
      { head: 'p50 range', get: (r) => range(r.p50, ms1), align: 'right' },
      { head: 'p99 (median)', get: (r) => ms1(median(r.p99)), align: 'right' },
      { head: 'p99 range', get: (r) => range(r.p99, ms1), align: 'right' },
      { head: 'events (median)', get: (r) => int(r.n), align: 'right' },
    ],
    legend: `${reps} run${reps > 1 ? 's' : ''} per routing, interleaved. ${LAT.producers} producer threads asking ${int(LAT.perProducer)} events/s each over ${KEYS} keys; consumers on ${LAT.threads} threads, ${LAT.batch} records per call, ${LAT.batchMs} ms per batch; a shard is added ${latSeconds / 2} s in. Latency runs from when the event was first offered (a refused push keeps its time; a producer that meets a moving key goes on with its other keys) to the consumer's call; grouped by when it was offered. Which keys moved: selectShard before and after the add.`,
  });
  if (!tiny) {
    const p99 = (id) => median(latRows.find((r) => r.id === id).p99);
    const p50 = (id) => median(latRows.find((r) => r.id === id).p50);
    // "Unmoved keys unchanged": the fence must not slow the keys that stay, against the same move unfenced.
    goals.push(goal({ id: 's11-unmoved-p50', issue: '#19', text: 'keys that did not move, 0.5 s after the move: p50 latency, ordered ÷ unfenced affinity', value: p50('ordered-unmoved') / p50('unfenced-unmoved'), target: 1.1, op: '<=', detail: `${ms1(p50('ordered-unmoved'))} vs ${ms1(p50('unfenced-unmoved'))} ms` }));
    goals.push(goal({ id: 's11-unmoved-p99', issue: '#19', text: 'keys that did not move, 0.5 s after the move: p99 latency, ordered ÷ unfenced affinity', value: p99('ordered-unmoved') / p99('unfenced-unmoved'), target: 1.1, op: '<=', detail: `${ms1(p99('ordered-unmoved'))} vs ${ms1(p99('unfenced-unmoved'))} ms; moved keys p99 ${ms1(p99('ordered-moved'))} ms ordered vs ${ms1(p99('unfenced-moved'))} ms unfenced` }));
  }

  return {
    intro: 'Every table of this scenario comes from the same process run; ratios are between its rows. Cross-thread rows on a shared machine: read the ranges.',
    tables, goals,
  };
}
