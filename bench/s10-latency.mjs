// Scenario 10 — push-to-consume latency: one producer (the main thread) paces 16-byte events
// at 1 k, 100 k and 1 M events/s into one consumer thread; each event carries its push time
// (process.hrtime.bigint(), the same monotonic clock in every thread) and the consumer
// records now − push time. shard-mapper (a batch consumer thread) against ringbuf.js (the
// scenario 4 consumer: polls, then sleeps 1 ms at a time) and postMessage per event.
import { Worker } from 'node:worker_threads';
import { RingBuffer } from 'ringbuf.js';
import { ShardManager } from 'shard-mapper';
import { consume, check, sleep } from './lib.mjs';

export const id = 's10';
export const title = '10. Push-to-consume latency (one producer, one consumer thread, 16 B)';

const SIZE = 16;
/** The spinning consumer's row: polls up to 1 ms once its ring is empty (above 1 k/s, it never sleeps). */
const SPIN_US = 1000;
const RING_EVENTS = 1 << 16;
const workerUrl = new URL('./workers/latency-consumer.mjs', import.meta.url);
const nowNs = () => Number(process.hrtime.bigint());
const channel = new BroadcastChannel('shard-mapper-bench-latency');

/** Ask every latency consumer for its samples until `n` have come (bounded: 20 s). */
async function collect(n) {
  const got = [];
  let total = 0;
  const onMessage = (e) => { if (e.data?.type === 'samples') { got.push(e.data.samples); total += e.data.samples.length; } };
  channel.addEventListener('message', onMessage);
  const until = performance.now() + 20_000;
  while (total < n && performance.now() < until) {
    channel.postMessage({ type: 'report' });
    await sleep(20);
  }
  channel.removeEventListener('message', onMessage);
  const all = new Float64Array(total);
  let at = 0;
  for (const s of got) { all.set(s, at); at += s.length; }
  return all;
}

/** Pace n events at `rate` per second through `send(payload)`; returns the achieved rate. */
function pace(n, rate, send) {
  const payload = new Uint8Array(SIZE).fill(7);
  const view = new DataView(payload.buffer);
  const period = 1e9 / rate;
  const nap = new Int32Array(new SharedArrayBuffer(4));
  const start = nowNs();
  for (let i = 0; i < n; i++) {
    const due = start + i * period;
    let now = nowNs();
    if (due - now > 200_000) Atomics.wait(nap, 0, 0, (due - now - 100_000) / 1e6); // long gaps: sleep most of it
    while ((now = nowNs()) < due) { /* spin the rest */ }
    view.setFloat64(0, now, true);
    send(payload);
  }
  return n / ((nowNs() - start) / 1e9);
}

/** spinUs: options.consumer.spinUs (the thread polls instead of sleeping; 0 = the default). */
function smImpl(spinUs = 0) {
  return {
    id: spinUs > 0 ? `sm-spin${spinUs}` : 'sm',
    name: spinUs > 0 ? `shard-mapper, consumer.spinUs ${spinUs.toLocaleString('en-US')}` : 'shard-mapper push → batch consumer thread',
    async setup() {
      const mgr = await ShardManager.create({
        initialShards: 1, ringBufferCapacity: RING_EVENTS, maxPayloadBytes: SIZE, backpressure: { kind: 'dropNewest' },
        policy: { autoScale: false, maxShards: 1 }, consumer: { module: workerUrl, threads: 1, batch: true, spinUs },
      });
      let full = 0;
      return {
        send: (p) => { while (!mgr.push(0, p)) full++; },
        async teardown() {
          const s = mgr.stats();
          check(s.pushed === s.delivered, `latency: shard-mapper delivered every event (${s.pushed} pushed, ${s.delivered} delivered)`);
          consume(full);
          await mgr.close();
        },
      };
    },
  };
}

function ringbufImpl() {
  return {
    id: 'ringbuf', name: 'ringbuf.js (SPSC ring, polled, then 1 ms sleeps)',
    async setup() {
      const ctl = new Int32Array(new SharedArrayBuffer(64));
      const sab = RingBuffer.getStorageForCapacity(RING_EVENTS * SIZE, Uint8Array);
      const ring = new RingBuffer(sab, Uint8Array);
      const w = new Worker(workerUrl, { workerData: { kind: 'ringbuf', sab, ctlSab: ctl.buffer, size: SIZE, batch: 256 } });
      await new Promise((resolve) => w.on('message', (m) => { if (m?.type === 'ready') resolve(); }));
      return {
        send: (p) => { while (ring.available_write() < SIZE) { /* full: wait */ } ring.push(p); },
        start: () => { Atomics.add(ctl, 1, 1); Atomics.notify(ctl, 1); },
        async teardown() { Atomics.store(ctl, 0, 1); Atomics.notify(ctl, 1); await w.terminate(); },
      };
    },
  };
}

function postMessageImpl() {
  return {
    id: 'pm', name: 'postMessage per event',
    async setup() {
      const w = new Worker(workerUrl, { workerData: { kind: 'postMessage' } });
      await new Promise((resolve) => w.on('message', (m) => { if (m?.type === 'ready') resolve(); }));
      return {
        send: (p) => w.postMessage(p),
        async teardown() { await w.terminate(); },
      };
    },
  };
}

const pct = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
const median = (a) => a.slice().sort((x, y) => x - y)[a.length >> 1];
const fmtUs = (ns) => (ns < 10_000 ? `${(ns / 1000).toFixed(1)} µs` : ns < 10_000_000 ? `${Math.round(ns / 1000)} µs` : `${(ns / 1e6).toFixed(0)} ms`);

export async function run(profile) {
  const tiny = profile.name === 'tiny';
  const quick = profile.name !== 'full';
  const RATES = [[1_000, tiny ? 100 : quick ? 1_000 : 3_000], [100_000, tiny ? 2_000 : quick ? 20_000 : 200_000], [1_000_000, tiny ? 5_000 : quick ? 100_000 : 1_000_000]];
  const rounds = tiny ? 1 : 3;
  const impls = [smImpl(), smImpl(SPIN_US), ringbufImpl(), postMessageImpl()];
  const live = [];
  for (const impl of impls) live.push(await impl.setup());
  await collect(0); // drop anything left over
  const results = impls.map(() => RATES.map(() => []));
  for (let r = 0; r < rounds; r++) {
    for (let j = 0; j < RATES.length; j++) {
      const [rate, n] = RATES[j];
      for (let k = 0; k < impls.length; k++) {
        live[k].start?.();
        const cpu0 = process.cpuUsage(); // every thread of the process
        const t0 = performance.now();
        const achieved = pace(n, rate, live[k].send);
        const used = process.cpuUsage(cpu0);
        const cores = (used.user + used.system) / 1000 / (performance.now() - t0);
        const samples = await collect(n);
        check(samples.length === n, `latency ${impls[k].id} at ${rate}/s: ${samples.length} of ${n} events seen`);
        samples.sort();
        results[k][j].push({ achieved, cores, p50: pct(samples, 0.5), p99: pct(samples, 0.99), p999: pct(samples, 0.999), max: samples[samples.length - 1] });
      }
    }
  }
  for (const l of live) await l.teardown();
  channel.close();
  const rows = [];
  for (let k = 0; k < impls.length; k++) {
    for (let j = 0; j < RATES.length; j++) {
      const runs = results[k][j];
      const m = (key) => median(runs.map((x) => x[key]));
      const range = (key) => `${fmtUs(Math.min(...runs.map((x) => x[key])))} – ${fmtUs(Math.max(...runs.map((x) => x[key])))}`;
      rows.push({ id: `${impls[k].id}-${RATES[j][0]}`, name: impls[k].name, rate: RATES[j][0], events: RATES[j][1], achieved: m('achieved'),
        ns: m('p50'), p50: m('p50'), p99: m('p99'), p999: m('p999'), p99Range: range('p99'), p999Range: range('p999'), cores: m('cores') });
    }
  }
  const columns = [
    { head: 'implementation', get: (r) => r.name },
    { head: 'offered', get: (r) => `${(r.rate / 1000).toLocaleString('en-US')} k/s`, align: 'right' },
    { head: 'achieved', get: (r) => `${(r.achieved / 1000).toFixed(0)} k/s`, align: 'right' },
    { head: 'p50', get: (r) => fmtUs(r.p50), align: 'right' },
    { head: 'p99', get: (r) => fmtUs(r.p99), align: 'right' },
    { head: 'p99.9', get: (r) => fmtUs(r.p999), align: 'right' },
    { head: 'p99 range', get: (r) => r.p99Range, align: 'right' },
    { head: 'p99.9 range', get: (r) => r.p999Range, align: 'right' },
    { head: 'CPU while pacing', get: (r) => `${r.cores.toFixed(2)} cores`, align: 'right' },
  ];
  return {
    tables: [{ id: 's10', title: `10. Push-to-consume latency, 16 B, 1 producer → 1 consumer thread (${RATES.map(([r, n]) => `${n.toLocaleString('en-US')} events at ${(r / 1000).toLocaleString('en-US')} k/s`).join(', ')})`, unit: 'event', rows, columns }],
    goals: [],
    intro: `The producer paces events (sleeping through gaps over 0.2 ms, spinning the rest) and stamps each with process.hrtime.bigint() at push; the consumer thread records the time to when it reads the event. ${rounds} interleaved round${rounds > 1 ? 's' : ''} (each rate, each implementation in turn); a row is the median round's percentile, with the range over rounds. 'achieved' below 'offered' means the producer could not keep the pace (postMessage at 1 M/s): then the queue grows and latency with it. 'CPU while pacing' is the whole process's CPU time over the paced run's wall time (at 100 k/s and 1 M/s the pacing producer spins: about one core of it), median of the rounds; the spinUs row's consumer thread polls instead of sleeping (options.consumer.spinUs).`,
  };
}
