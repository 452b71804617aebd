// A collector shared with a worker thread (docs/CONTRACT.md §4): a (count, sum) pair is one atomic word,
// so a window collected while another thread records never has a sum without its count, and
// nothing recorded is lost between windows.
import { Worker } from 'node:worker_threads';
import { describe, it, expect } from 'vitest';
import { ShardMapper, type ShardMetricsCollector } from 'shard-mapper';
import { SharedCore } from '../dist/core.js';

const ITERATIONS = 1_500_000;
const WORKER = new URL('./fixtures/collector-hammer.mjs', import.meta.url);

interface Report { latency: number; flush: number; events: number }

/**
 * Start the hammering worker on `collector`, call `collect` in a tight loop on this thread
 * while it runs, then once more after it is done; resolves with the worker's report.
 */
async function hammer(collector: ShardMetricsCollector, collect: () => void): Promise<{ report: Report; rounds: number }> {
  const control = new SharedArrayBuffer(4);
  const flags = new Int32Array(control);
  const worker = new Worker(WORKER, { workerData: { handle: collector.handle(), control, iterations: ITERATIONS } });
  try {
    const messages: unknown[] = [];
    let failure: unknown;
    let notify: (() => void) | undefined;
    worker.on('message', (m) => { messages.push(m); notify?.(); });
    worker.on('error', (e) => { failure = e; notify?.(); });
    const next = async (): Promise<unknown> => {
      while (messages.length === 0) {
        if (failure) throw failure;
        await new Promise<void>((resolve) => { notify = resolve; });
      }
      return messages.shift();
    };
    expect(await next()).toEqual({ ready: true });

    Atomics.store(flags, 0, 2); // go
    Atomics.notify(flags, 0);
    let rounds = 0;
    // A wall-clock guard only so a crashed worker fails the test instead of hanging it.
    const deadline = performance.now() + 60_000;
    while (Atomics.load(flags, 0) !== 3) {
      collect();
      rounds++;
      if ((rounds & 1023) === 0 && performance.now() > deadline) throw new Error('the worker never finished');
    }
    collect(); // whatever was recorded after the last collection in the loop
    const report = (await next()) as Report;
    return { report, rounds };
  } finally {
    await worker.terminate();
  }
}

describe('collector counters shared with a worker thread', () => {
  it('every raw window has sum === 7·count (latency) and 3·count (flush), and the windows add up', async () => {
    const mapper = await ShardMapper.create(1, 100, { maxShards: 2 }, { clock: () => 0 });
    const collector = mapper.metricsCollector(0)!;
    // Read the windows exactly as collectAndReset does (one WASM call that swaps each pair
    // out as one word), but keep the raw counts and sums, which ShardMetrics only reports
    // as averages.
    const handle = collector.handle();
    const core = SharedCore.attachSync(handle.core);
    const totals = { latencyCount: 0, latencySum: 0, flushCount: 0, flushSum: 0, events: 0 };
    let windowsWithSamples = 0;
    const bad: string[] = [];
    try {
      const { report, rounds } = await hammer(collector, () => {
        core.abi.collectAndReset(handle.slot, core.result);
        const r = core.result >>> 2;
        const [events, lc, ls, fc, fs] = [core.u32[r + 1]!, core.u32[r + 2]!, core.u32[r + 3]!, core.u32[r + 4]!, core.u32[r + 5]!];
        if (ls !== 7 * lc || fs !== 3 * fc) bad.push(`latency ${lc}/${ls}, flush ${fc}/${fs}`);
        if (lc > 0) windowsWithSamples++;
        totals.latencyCount += lc;
        totals.latencySum += ls;
        totals.flushCount += fc;
        totals.flushSum += fs;
        totals.events += events;
      });
      expect(bad.slice(0, 5)).toEqual([]);
      expect(report).toEqual({ latency: ITERATIONS, flush: ITERATIONS / 2, events: ITERATIONS / 4 });
      expect(totals).toEqual({
        latencyCount: report.latency,
        latencySum: 7 * report.latency,
        flushCount: report.flush,
        flushSum: 3 * report.flush,
        events: report.events,
      });
      // the collections really overlapped the recording
      expect(rounds).toBeGreaterThan(1);
      expect(windowsWithSamples).toBeGreaterThan(1);
    } finally {
      core.detach();
    }
  });

  it('collectAndReset() windows always average exactly 7 / 3 (or 0 when empty), and the event counts add up', async () => {
    let t = 0;
    const mapper = await ShardMapper.create(1, 100, { maxShards: 2 }, { clock: () => t });
    const collector = mapper.metricsCollector(0)!;
    let events = 0;
    let windows = 0;
    let windowsWithSamples = 0;
    const bad: string[] = [];
    const { report } = await hammer(collector, () => {
      t++;
      const m = collector.collectAndReset();
      windows++;
      if (m.lastUpdated !== t) bad.push(`lastUpdated ${m.lastUpdated} at ${t}`);
      if (m.avgPushLatencyNs !== 0 && m.avgPushLatencyNs !== 7) bad.push(`avg push ${m.avgPushLatencyNs}`);
      if (m.avgFlushLatencyUs !== 0 && m.avgFlushLatencyUs !== 3) bad.push(`avg flush ${m.avgFlushLatencyUs}`);
      if (m.avgPushLatencyNs === 7) windowsWithSamples++;
      events += m.eventRate;
    });
    expect(bad.slice(0, 5)).toEqual([]);
    expect(events).toBe(report.events);
    expect(windows).toBeGreaterThan(1);
    expect(windowsWithSamples).toBeGreaterThan(1);
    // the worker's events also count as pushes since the (never started) drain
    expect(collector.pushesSinceDrainStart()).toBe(report.events);
    const last = collector.collectAndReset();
    expect([last.eventRate, last.avgPushLatencyNs, last.avgFlushLatencyUs]).toEqual([0, 0, 0]);
  });
});
