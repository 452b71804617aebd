// Scenario 4 — across threads: one producer (the main thread) and 1 or 2 consumer worker
// threads, 16- and 256-byte payloads. shard-mapper's routed push (ShardManager with
// worker-thread consumers) against ringbuf.js over a SharedArrayBuffer (one SPSC ring per
// consumer, routed by the same hash), postMessage per event, postMessage of batches
// (transferred), and the physical limit: a plain Uint8Array.set copy of the same bytes.
//
// One run = N events, timed from the first event produced to the last one consumed (the
// consumers publish their counts; the main thread checks every 1 ms). Within a table the
// implementations' runs are interleaved (A B C D E, A B C D E, …) and the median run is
// reported. A full ring makes the producer retry (counted as "stalls"): no event is lost.
import { RingBuffer } from 'ringbuf.js';
import { Piscina } from 'piscina';
import { ShardManager, BackpressureError } from 'shard-mapper';
import { randomHashes } from '../shared/seeded-random.mjs';
import { measureOps, summarizeRuns, withRatios, row, goal, consume, check, sleep, fmtRatio, fmtNs, fmtRate, startWorker } from './lib.mjs';

export const id = 's4';
export const title = '4. Across threads: one producer, 1–2 consumer workers';

const RING_EVENTS = 1 << 16; // ring capacity in events, for shard-mapper and ringbuf.js alike
const POOL = 1024;
const HMASK = (1 << 16) - 1;
const BATCH = 256; // events per pushBatch call / per postMessage batch / per consumer pop
const TWO_POW_MINUS_32 = 2 ** -32;
const dbg = process.env.BENCH_DEBUG ? (...a) => console.error('[s4]', ...a) : () => {};
const workerUrl = (name) => new URL(`./workers/${name}`, import.meta.url);

/** Stop consumer threads: listen first, then signal (a thread may finish at once). */
function stopWorkers(workers, ctl) {
  const done = workers.map((w) => new Promise((resolve) => {
    let checksum = 0;
    w.on('message', (m) => { if (m?.type === 'done') { checksum = m.checksum; void w.terminate(); } });
    w.once('exit', () => resolve(checksum));
  }));
  if (ctl) { Atomics.store(ctl, 0, 1); Atomics.add(ctl, 1, 1); Atomics.notify(ctl, 1); }
  else for (const w of workers) w.postMessage({ type: 'stop' });
  return Promise.all(done);
}

async function waitCount(read, target) {
  while (read() < target) await sleep(1);
}

/**
 * Push m events with a batch call that may stop at a full ring (failProducer): resume after
 * the accepted prefix until all are in. `push(done)` pushes events done…m-1. Returns the
 * number of full-ring retries.
 */
function pushAllWithRetry(m, push, lib = PACKAGE) {
  let done = 0;
  let stalls = 0;
  while (done < m) {
    try {
      done += push(done);
    } catch (error) {
      if (!(error instanceof lib.BackpressureError)) throw error;
      done += error.accepted; // the events before the full ring went in, in order
      stalls++;
    }
  }
  return stalls;
}

// ---- the implementations: setup() → { once(n), teardown() } ---------------------------------

/** The package the shard-mapper rows run; bench/compare-threads.mjs passes another build. */
const PACKAGE = { ShardManager, BackpressureError };

/** The manager every shard-mapper row uses: one shard and one consumer thread per consumer. */
function smManager(size, consumers, backpressure, batch = false, lib = PACKAGE) {
  return lib.ShardManager.create({
    initialShards: consumers, ringBufferCapacity: RING_EVENTS, maxPayloadBytes: size,
    backpressure: { kind: backpressure }, policy: { autoScale: false, maxShards: consumers },
    consumer: batch
      ? { module: workerUrl('sm-batch-consumer.mjs'), threads: consumers, batch: true }
      : { module: workerUrl('sm-consumer.mjs'), threads: consumers },
  });
}

/** Check the row really delivered every accepted event, then close the manager. */
async function smTeardown(mgr, label) {
  const s = mgr.stats();
  check(s.pushed === s.delivered && s.unrouted === 0, `${label} delivered every accepted event (${s.pushed} pushed, ${s.delivered} delivered)`);
  consume(s.delivered);
  await mgr.close();
}

export function smPush(size, consumers, payloads, hashes, batch = false, lib = PACKAGE) {
  return {
    id: batch ? 'sm-push-rb' : 'sm-push', ref: !batch,
    name: batch ? 'shard-mapper push → batch consumer' : 'shard-mapper push (routed, per event)',
    note: batch ? 'consumer takes a RecordBatch (options.consumer.batch)' : 'consumer takes Uint8Array[]',
    async setup() {
      const mgr = await smManager(size, consumers, 'dropNewest', batch, lib);
      return {
        async once(n) {
          const before = mgr.stats().delivered;
          let stalls = 0;
          const t0 = performance.now();
          for (let i = 0; i < n; i++) {
            const h = hashes[i & HMASK];
            const p = payloads[i & (POOL - 1)];
            while (!mgr.push(h, p)) stalls++; // dropNewest: false = ring full, retry
          }
          await waitCount(() => mgr.stats().delivered - before, n);
          return { ms: performance.now() - t0, events: n, bytes: n * size, extra: { stalls } };
        },
        teardown: () => smTeardown(mgr, 'shard-mapper'),
      };
    },
  };
}

function smPushBatch(size, consumers, payloads, hashes) {
  return {
    id: 'sm-pushBatch', name: `shard-mapper pushBatch(${BATCH})`,
    async setup() {
      const mgr = await smManager(size, consumers, 'failProducer');
      const keys = new Array(BATCH);
      const data = new Array(BATCH);
      return {
        async once(n) {
          const before = mgr.stats().delivered;
          let stalls = 0;
          const t0 = performance.now();
          for (let i = 0; i < n; i += BATCH) {
            const m = Math.min(BATCH, n - i);
            for (let k = 0; k < m; k++) { keys[k] = hashes[(i + k) & HMASK]; data[k] = payloads[(i + k) & (POOL - 1)]; }
            keys.length = m; data.length = m;
            stalls += pushAllWithRetry(m, (done) => mgr.pushBatch(done === 0 ? keys : keys.slice(done), done === 0 ? data : data.slice(done)));
          }
          await waitCount(() => mgr.stats().delivered - before, n);
          return { ms: performance.now() - t0, events: n, bytes: n * size, extra: { stalls } };
        },
        teardown: () => smTeardown(mgr, 'shard-mapper (batch)'),
      };
    },
  };
}

export function smPushFixed(size, consumers, payloads, hashes, batch = false, lib = PACKAGE) {
  return {
    id: batch ? 'sm-pushFixed-rb' : 'sm-pushFixed',
    name: batch ? `shard-mapper pushFixed(${BATCH}) → batch consumer` : `shard-mapper pushFixed(${BATCH})`,
    note: `records already contiguous (the API's premise); consumer takes ${batch ? 'a RecordBatch' : 'Uint8Array[]'}`,
    async setup() {
      const mgr = await smManager(size, consumers, 'failProducer', batch, lib);
      // The same events as the other rows, laid out as pushFixed takes them: for every batch
      // offset in the payload pool, BATCH records back to back (built before timing: a user
      // of pushFixed already holds its records in one buffer).
      const blocks = [];
      for (let b = 0; b < POOL; b += BATCH) {
        const block = new Uint8Array(BATCH * size);
        for (let k = 0; k < BATCH; k++) block.set(payloads[(b + k) & (POOL - 1)], k * size);
        blocks.push(block);
      }
      return {
        async once(n) {
          const before = mgr.stats().delivered;
          let stalls = 0;
          const t0 = performance.now();
          for (let i = 0; i < n; i += BATCH) {
            const m = Math.min(BATCH, n - i);
            const h = hashes.subarray(i & HMASK, (i & HMASK) + m);
            const block = blocks[(i & (POOL - 1)) / BATCH].subarray(0, m * size);
            stalls += pushAllWithRetry(m, (done) => mgr.pushFixed(h.subarray(done), block.subarray(done * size), size), lib);
          }
          await waitCount(() => mgr.stats().delivered - before, n);
          return { ms: performance.now() - t0, events: n, bytes: n * size, extra: { stalls } };
        },
        teardown: () => smTeardown(mgr, 'shard-mapper (fixed)'),
      };
    },
  };
}

export function ringbuf(size, consumers, payloads, hashes) {
  return {
    id: 'ringbuf', name: 'ringbuf.js (SPSC ring per consumer)', note: 'the hand-written fan-out: one SPSC ring per consumer, same hash split, consumer pops 256 at a time; empty ring polled, then 1 ms sleeps',
    async setup() {
      const ctl = new Int32Array(new SharedArrayBuffer(64));
      const rings = [];
      const workers = [];
      for (let c = 0; c < consumers; c++) {
        const sab = RingBuffer.getStorageForCapacity(RING_EVENTS * size, Uint8Array);
        rings.push(new RingBuffer(sab, Uint8Array));
        const { w, ready } = startWorker('ringbuf-consumer.mjs', { sab, ctlSab: ctl.buffer, index: c, size, batch: BATCH });
        workers.push(w);
        await ready;
      }
      const consumed = () => { let s = 0; for (let c = 0; c < consumers; c++) s += Atomics.load(ctl, 2 + c); return s; };
      return {
        async once(n) {
          const before = consumed();
          let stalls = 0;
          Atomics.add(ctl, 1, 1); Atomics.notify(ctl, 1); // wake sleeping consumers: a run starts
          const t0 = performance.now();
          for (let i = 0; i < n; i++) {
            const h = hashes[i & HMASK];
            const r = rings[(h * consumers * TWO_POW_MINUS_32) | 0];
            while (r.available_write() < size) stalls++; // whole events only
            r.push(payloads[i & (POOL - 1)]);
          }
          await waitCount(() => consumed() - before, n);
          return { ms: performance.now() - t0, events: n, bytes: n * size, extra: { stalls } };
        },
        async teardown() {
          for (const c of await stopWorkers(workers, ctl)) consume(c);
        },
      };
    },
  };
}

function postMessageEach(size, consumers, payloads, hashes) {
  return {
    id: 'pm-event', name: 'postMessage per event', note: 'structured clone of each Uint8Array', perEvent: true,
    async setup() {
      const ctl = new Int32Array(new SharedArrayBuffer(64));
      const workers = [];
      for (let c = 0; c < consumers; c++) {
        const { w, ready } = startWorker('pm-consumer.mjs', { ctlSab: ctl.buffer, index: c });
        workers.push(w);
        await ready;
      }
      const consumed = () => { let s = 0; for (let c = 0; c < consumers; c++) s += Atomics.load(ctl, 2 + c); return s; };
      return {
        async once(n) {
          const before = consumed();
          const t0 = performance.now();
          for (let i = 0; i < n; i++) {
            const h = hashes[i & HMASK];
            workers[(h * consumers * TWO_POW_MINUS_32) | 0].postMessage(payloads[i & (POOL - 1)]);
          }
          await waitCount(() => consumed() - before, n);
          return { ms: performance.now() - t0, events: n, bytes: n * size };
        },
        async teardown() {
          for (const c of await stopWorkers(workers)) consume(c);
        },
      };
    },
  };
}

function postMessageBatch(size, consumers, payloads, hashes) {
  return {
    id: 'pm-batch', name: `postMessage of ${BATCH}-event batches`, note: 'events copied into a buffer, transferred',
    async setup() {
      const ctl = new Int32Array(new SharedArrayBuffer(64));
      const workers = [];
      for (let c = 0; c < consumers; c++) {
        const { w, ready } = startWorker('pm-consumer.mjs', { ctlSab: ctl.buffer, index: c });
        workers.push(w);
        await ready;
      }
      const consumed = () => { let s = 0; for (let c = 0; c < consumers; c++) s += Atomics.load(ctl, 2 + c); return s; };
      return {
        async once(n) {
          const before = consumed();
          const t0 = performance.now();
          const bufs = workers.map(() => new Uint8Array(BATCH * size));
          const fill = workers.map(() => 0);
          for (let i = 0; i < n; i++) {
            const h = hashes[i & HMASK];
            const c = (h * consumers * TWO_POW_MINUS_32) | 0;
            bufs[c].set(payloads[i & (POOL - 1)], fill[c] * size);
            if (++fill[c] === BATCH) {
              workers[c].postMessage({ type: 'batch', n: BATCH, size, buf: bufs[c].buffer }, [bufs[c].buffer]);
              bufs[c] = new Uint8Array(BATCH * size);
              fill[c] = 0;
            }
          }
          for (let c = 0; c < consumers; c++) {
            if (fill[c] > 0) workers[c].postMessage({ type: 'batch', n: fill[c], size, buf: bufs[c].buffer }, [bufs[c].buffer]);
          }
          await waitCount(() => consumed() - before, n);
          return { ms: performance.now() - t0, events: n, bytes: n * size };
        },
        async teardown() {
          for (const c of await stopWorkers(workers)) consume(c);
        },
      };
    },
  };
}

/** piscina, the worker-thread pool users fan work out with: `consumers` threads, one task per
 *  event or one per `BATCH` events (copied into a buffer and transferred). It routes nothing:
 *  a task goes to whichever thread is free, so events of one key are not kept in order. */
function piscinaRow(size, consumers, payloads, batched) {
  return {
    id: batched ? 'piscina-batch' : 'piscina-event', perEvent: !batched, slow: !batched,
    name: batched ? `piscina, ${BATCH} events per task` : 'piscina, one task per event',
    note: batched ? 'events copied into a buffer, transferred; any free thread (no per-key order)' : 'pool.run per event; any free thread (no per-key order)',
    async setup() {
      const pool = new Piscina({ filename: workerUrl('piscina-task.mjs').href, minThreads: consumers, maxThreads: consumers, idleTimeout: 60_000 });
      await Promise.all(Array.from({ length: consumers * 2 }, () => pool.run(new Uint8Array(size).fill(1)))); // threads up
      let sum = 0;
      return {
        async once(n) {
          const t0 = performance.now();
          const pending = [];
          if (!batched) {
            for (let i = 0; i < n; i++) pending.push(pool.run(payloads[i & (POOL - 1)]));
          } else {
            for (let i = 0; i < n; i += BATCH) {
              const m = Math.min(BATCH, n - i);
              const buf = new Uint8Array(m * size);
              for (let k = 0; k < m; k++) buf.set(payloads[(i + k) & (POOL - 1)], k * size);
              pending.push(pool.run({ n: m, size, buf: buf.buffer }, { transferList: [buf.buffer] }));
            }
          }
          for (const r of await Promise.all(pending)) sum = (sum + r) | 0;
          return { ms: performance.now() - t0, events: n, bytes: n * size };
        },
        async teardown() {
          consume(sum);
          await pool.destroy();
        },
      };
    },
  };
}

// ---- the copy limit ---------------------------------------------------------------------------

async function copyLimit(profile, size, payloads) {
  const dst = new Uint8Array(RING_EVENTS * size);
  const EMASK = RING_EVENTS - 1;
  const OPS = 4096;
  const cur = { at: 0 };
  const big = new Uint8Array(BATCH * size * 16);
  big.fill(3);
  const bigDst = new Uint8Array(dst.buffer, 0, big.length);
  const BIG_EVENTS = big.length / size;
  const E = { dst, payloads, cur, big, bigDst, OPS, POOL, EMASK, size }; // see lib.fresh
  const rows = await measureOps(profile, [
    { id: 'copy-event', name: 'copy limit: Uint8Array.set per event', ops: OPS, note: `one thread, into a ${RING_EVENTS}-event buffer`, env: E, fn: () => {
      const at = cur.at;
      for (let i = 0; i < OPS; i++) dst.set(payloads[i & (POOL - 1)], ((at + i) & EMASK) * size);
      cur.at = (at + OPS) & EMASK;
      return dst[cur.at * size];
    } },
    { id: 'copy-bulk', name: `bulk memcpy: one set of ${BIG_EVENTS} events`, ops: BIG_EVENTS, note: 'memory bandwidth, not per-event', env: E, fn: () => {
      bigDst.set(big);
      return bigDst[bigDst.length - 1];
    } },
  ]);
  for (const r of rows) r.gbPerSec = size / r.ns;
  return rows;
}

// ---- the scenario -----------------------------------------------------------------------------

export async function run(profile) {
  const scale = profile.scale;
  const nBig = Math.max(2048, Math.round(2_000_000 * scale));
  const nPm = Math.max(512, Math.round(200_000 * scale));
  const nSlow = Math.max(256, Math.round(20_000 * scale)); // piscina, one task per event: ~10 µs a task
  // Thread scheduling on a shared 2-core machine is the noisiest part of the suite: more runs.
  const reps = profile.name === 'full' ? 9 : profile.rounds;
  const warm = profile.name === 'tiny' ? 0 : 1;
  const hashes = randomHashes(HMASK + 1, 11);
  const tables = [];
  const rowsBy = {};
  for (const size of [16, 256]) {
    const payloads = Array.from({ length: POOL }, (_, i) => new Uint8Array(size).fill((i % 251) + 1));
    const copyRows = await copyLimit(profile, size, payloads);
    for (const consumers of [1, 2]) {
      const impls = [smPush, smPushBatch, smPushFixed, ringbuf, postMessageEach, postMessageBatch].map((f) => f(size, consumers, payloads, hashes));
      impls.push(piscinaRow(size, consumers, payloads, false), piscinaRow(size, consumers, payloads, true));
      impls.splice(1, 0, smPush(size, consumers, payloads, hashes, true));
      impls.splice(4, 0, smPushFixed(size, consumers, payloads, hashes, true));
      const live = [];
      for (const impl of impls) { dbg('setup', impl.id, size, consumers); live.push(await impl.setup()); }
      // Warm every implementation, then interleave the measured runs.
      const runs = impls.map(() => []);
      const counts = impls.map((impl) => (impl.slow ? nSlow : impl.perEvent ? nPm : nBig));
      for (let w = 0; w < warm; w++) for (let k = 0; k < impls.length; k++) await live[k].once(Math.min(counts[k], 100_000));
      for (let r = 0; r < reps; r++) for (let k = 0; k < impls.length; k++) { dbg('run', impls[k].id); runs[k].push(await live[k].once(counts[k])); }
      for (let k = 0; k < impls.length; k++) { dbg('teardown', impls[k].id); await live[k].teardown(); }
      const rows = [];
      for (let k = 0; k < impls.length; k++) {
        const m = summarizeRuns(runs[k]);
        const stalls = m.extra?.stalls;
        rows.push({
          id: impls[k].id, name: impls[k].name, ref: !!impls[k].ref, ...m,
          note: [impls[k].note, stalls ? `${stalls.toLocaleString('en-US')} full-ring retries` : ''].filter(Boolean).join('; '),
          events: counts[k],
        });
      }
      rows.push(...copyRows.map((r) => ({ ...r })));
      withRatios(rows);
      rowsBy[`${size}-${consumers}`] = rows;
      tables.push({
        id: `s4-${size}-${consumers}`, title: `4. ${size}-byte payloads, 1 producer → ${consumers} consumer thread${consumers > 1 ? 's' : ''} (${nBig.toLocaleString('en-US')} events per run; postMessage per event ${nPm.toLocaleString('en-US')}; piscina per event ${nSlow.toLocaleString('en-US')})`,
        unit: 'event', rows, columns: columns(),
      });
    }
  }

  // Issue #12's goals. The rows named in a goal are the batch-consumer rows (the API this
  // issue adds); the detail gives the Uint8Array[]-consumer rows of the same run beside them.
  const goals = [];
  const ratio = (a, b) => fmtRatio(a.ns / b.ns);
  const rate = (r) => `${(r.opsPerSec / 1e6).toFixed(2)} M/s`;
  for (const consumers of [1, 2]) {
    const rows = rowsBy[`16-${consumers}`];
    const pm = row(rows, 'pm-event');
    const c = `${consumers} consumer${consumers > 1 ? 's' : ''}`;
    goals.push(goal({ id: `push-vs-postMessage-${consumers}`, issue: '#12', text: `routed push 16 B → ${c} (batch consumer) ≥ 40× postMessage per event`,
      value: pm.ns / row(rows, 'sm-push-rb').ns, target: 40, op: '>=',
      detail: `${rate(row(rows, 'sm-push-rb'))} vs ${rate(pm)}; Uint8Array[] consumer ${ratio(pm, row(rows, 'sm-push'))}; pushBatch ${ratio(pm, row(rows, 'sm-pushBatch'))}` }));
    goals.push(goal({ id: `pushFixed-vs-postMessage-${consumers}`, issue: '#12', text: `routed pushFixed 16 B → ${c} (batch consumer) ≥ 100× postMessage per event`,
      value: pm.ns / row(rows, 'sm-pushFixed-rb').ns, target: 100, op: '>=',
      detail: `${rate(row(rows, 'sm-pushFixed-rb'))} vs ${rate(pm)}; Uint8Array[] consumer ${ratio(pm, row(rows, 'sm-pushFixed'))}` }));
  }
  const SM_ROWS = ['sm-push-rb', 'sm-pushFixed-rb', 'sm-push', 'sm-pushBatch', 'sm-pushFixed'];
  for (const size of [16, 256]) {
    for (const consumers of [1, 2]) {
      const rows = rowsBy[`${size}-${consumers}`];
      const rb = row(rows, 'ringbuf');
      const ratios = SM_ROWS.map((id) => [id, rb.ns / row(rows, id).ns]);
      const worst = ratios.reduce((a, b) => (b[1] < a[1] ? b : a));
      goals.push(goal({ id: `vs-ringbuf-${size}-${consumers}`, issue: '#12', text: `every shard-mapper row ≥ 1.5× ringbuf.js (${size} B, ${consumers} consumer${consumers > 1 ? 's' : ''}; the slowest row counts)`,
        value: worst[1], target: 1.5, op: '>=',
        detail: `ringbuf.js ${rate(rb)}; ${ratios.map(([id, v]) => `${id.replace('sm-', '')} ${fmtRatio(v)}`).join(', ')}` }));
    }
  }
  for (const consumers of [1, 2]) {
    const rows = rowsBy[`256-${consumers}`];
    const limit = row(rows, 'copy-event');
    const pct = (id) => (100 * row(rows, id).opsPerSec) / limit.opsPerSec;
    const c = `${consumers} consumer${consumers > 1 ? 's' : ''}`;
    goals.push(goal({ id: `copy-limit-push-256-${consumers}`, issue: '#12', text: `push 256 B → ${c} (batch consumer) ≥ 35 % of the per-event copy limit`,
      value: pct('sm-push-rb'), target: 35, op: '>=', unit: '%',
      detail: `${rate(row(rows, 'sm-push-rb'))} vs per-event copy ${rate(limit)} (${limit.gbPerSec.toFixed(1)} GB/s); Uint8Array[] consumer ${pct('sm-push').toFixed(1)} %` }));
    goals.push(goal({ id: `copy-limit-pushFixed-256-${consumers}`, issue: '#12', text: `pushFixed 256 B → ${c} (batch consumer) ≥ 50 % of the per-event copy limit`,
      value: pct('sm-pushFixed-rb'), target: 50, op: '>=', unit: '%',
      detail: `${rate(row(rows, 'sm-pushFixed-rb'))}; Uint8Array[] consumer ${pct('sm-pushFixed').toFixed(1)} %` }));
  }
  // Issue #20's goals: the batch consumer is the fast path, against the hand-written ring.
  for (const size of [16, 256]) {
    for (const consumers of [1, 2]) {
      const rows = rowsBy[`${size}-${consumers}`];
      const rb = row(rows, 'ringbuf');
      const c = `${consumers} consumer${consumers > 1 ? 's' : ''}`;
      goals.push(goal({ id: `i20-push-rb-vs-ringbuf-${size}-${consumers}`, issue: '#20', text: `routed push ${size} B → ${c} (batch consumer) ≥ 1.5× ringbuf.js`,
        value: rb.ns / row(rows, 'sm-push-rb').ns, target: 1.5, op: '>=',
        detail: `${rate(row(rows, 'sm-push-rb'))} vs ${rate(rb)}` }));
      goals.push(goal({ id: `i20-pushFixed-rb-vs-ringbuf-${size}-${consumers}`, issue: '#20', text: `pushFixed ${size} B → ${c} (batch consumer) ≥ 3× ringbuf.js`,
        value: rb.ns / row(rows, 'sm-pushFixed-rb').ns, target: 3, op: '>=',
        detail: `${rate(row(rows, 'sm-pushFixed-rb'))} vs ${rate(rb)}` }));
      const pairs = [['sm-push-rb', 'sm-push'], ['sm-pushFixed-rb', 'sm-pushFixed']].map(([b, a]) => [b, row(rows, a).ns / row(rows, b).ns]);
      const worst = pairs.reduce((a, b) => (b[1] < a[1] ? b : a));
      goals.push(goal({ id: `i20-batch-vs-array-${size}-${consumers}`, issue: '#20', text: `batch consumer ≥ 1.3× the Uint8Array[] consumer (${size} B, ${c}; the slower pair counts)`,
        value: worst[1], target: 1.3, op: '>=',
        detail: pairs.map(([id, v]) => `${id.replace('sm-', '').replace('-rb', '')} ${fmtRatio(v)}`).join(', ') }));
    }
  }
  return {
    tables, goals,
    intro: `One run moves N events from the main thread to the consumer thread(s) and is timed from the first event produced to the last one consumed (consumers publish their counts; the main thread looks every 1 ms). The implementations' runs are interleaved (A B C D E, A B C D E, …), ${reps} run${reps > 1 ? "s" : ""} each${warm ? " after a warm-up run" : ""}; a row is the median run, with the slowest and fastest run as its range. A full ring makes the producer retry (counted). With 2 consumers, 3 busy threads share 2 cores.`,
  };
}

function columns() {
  return [
    { head: 'implementation', get: (r) => (r.ref ? `**${r.name}**` : r.name) },
    { head: 'ns/event', get: (r) => fmtNs(r.ns), align: 'right' },
    { head: 'events/s', get: (r) => fmtRate(r.opsPerSec), align: 'right' },
    { head: 'GB/s', get: (r) => (r.gbPerSec === undefined ? '' : r.gbPerSec.toFixed(r.gbPerSec < 1 ? 3 : 2)), align: 'right' },
    { head: 'time ÷ shard-mapper', get: (r) => fmtRatio(r.ratio), align: 'right' },
    { head: 'range (events/s)', get: (r) => (r.loPerSec === undefined ? '' : `${fmtRate(r.loPerSec)} – ${fmtRate(r.hiPerSec)}`), align: 'right' },
    { head: 'note', get: (r) => r.note ?? '' },
  ];
}

