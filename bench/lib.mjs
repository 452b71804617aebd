// Shared helpers of the benchmark suite: run profiles, the ns-scale measurement loop on top
// of tinybench, timed multi-thread runs, the result sink, and table/ratio formatting.
//
// Conventions every scenario follows:
// - A "task" function performs `ops` operations in a loop, accumulates what they produce and
//   returns the accumulator, which the harness folds into the sink (`consume`) after the
//   timed region; nothing it computes is thrown away. (Returning, rather than calling
//   consume() after the loop, matters: V8 optimizes the hot loop on-stack before the call
//   after it ever ran, and that code then deoptimizes at the call on every invocation.)
// - Rounds interleave the tasks of a table (A B C, A B C, …) so a burst of load from another
//   process on this shared 2-core machine hits every task, not just one; every round
//   recompiles each task (see `fresh`); per-operation time is the task's best round (the
//   median of that round's samples). Ratios are only taken between rows of one process run.
// - Ratio column: this row's time per operation ÷ shard-mapper's (the row marked `ref`).
//   Above 1 means shard-mapper is faster by that factor.
import { Bench } from 'tinybench';
import { cpus, availableParallelism, totalmem } from 'node:os';
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';

// ---- profiles ---------------------------------------------------------------------------

/** How long to measure. `tiny` exists for the smoke test: it proves the code runs, nothing more. */
export const PROFILES = {
  full: { name: 'full', rounds: 5, time: 150, warmupTime: 60, scale: 1 },
  quick: { name: 'quick', rounds: 2, time: 25, warmupTime: 20, scale: 0.1 },
  tiny: { name: 'tiny', rounds: 1, time: 0, warmupTime: 0, scale: 0.002 },
};

// ---- the sink ---------------------------------------------------------------------------

let sinkValue = 0;
let sinkCount = 0;

/** Fold a benchmark's result into the global sink (printed at the end of the run). */
export function consume(x) {
  sinkValue = (sinkValue + (typeof x === 'number' ? x : Number(x))) % 0x7fffffff;
  sinkCount++;
}

export function sink() {
  return { checksum: sinkValue, folds: sinkCount };
}

/** Throw if a benchmark did not do the work it claims (e.g. popped fewer than it pushed). */
export function check(condition, message) {
  if (!condition) throw new Error(`bench check failed: ${message}`);
}

// ---- ns-scale measurement ---------------------------------------------------------------

const now = () => performance.now();

function median(sorted) {
  const n = sorted.length;
  if (n === 0) return NaN;
  return n % 2 ? sorted[(n - 1) >> 1] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

/** The median of unsorted values (the mean of the middle two for an even count). */
export function medianOf(values) {
  return median([...values].sort((a, b) => a - b));
}

let freshId = 0;

/**
 * A fresh copy of `fn` — the same source, compiled as a new function whose free variables
 * are bound to `env` (every name the body uses from outside must be in it).
 *
 * Why: a ns-scale loop's speed depends on where V8 happens to place its machine code. On
 * this machine the same loop runs at either ~2.2 or ~4.3 ns per iteration from one process
 * to the next (exactly 2×: a loop-alignment effect; V8 11 has no loop-alignment option), so
 * one compilation per task turns a 1.1× difference into a coin flip. Recompiling per round
 * gives each task several placements; the table reports its best round.
 * Task bodies must name only `env` entries, locals and globals — never an imported binding:
 * a test runner's module transform rewrites those inside the function's source text.
 */
export function fresh(fn, env) {
  const names = Object.keys(env);
  const make = new Function(...names, `"use strict"; /* fresh code #${freshId++} */ return (${fn.toString()});`);
  return make(...names.map((k) => env[k]));
}

/**
 * Measure tasks that each run `ops` operations per call and return what they computed.
 * tasks: [{ id, name, ops, fn, env?, ref?, note? }]. A task with `env` is recompiled every
 * round (see `fresh`). Each round runs every task (interleaved), and a task's time for the
 * round is the median of its samples; ns/op is the best round, and the spread reported is
 * how much slower the median round was.
 */
export async function measureOps(profile, tasks) {
  const rounds = new Map(tasks.map((t) => [t.id, []]));
  const counts = new Map(tasks.map((t) => [t.id, 0]));
  for (let round = 0; round < profile.rounds; round++) {
    const bench = new Bench({
      time: profile.time,
      iterations: profile.name === 'tiny' ? 2 : 10,
      warmup: profile.name !== 'tiny',
      warmupTime: profile.warmupTime,
      warmupIterations: profile.name === 'tiny' ? 0 : 4,
      retainSamples: true,
      throws: true,
    });
    for (const t of tasks) {
      const fn = t.env ? fresh(t.fn, t.env) : t.fn;
      const ops = t.ops;
      bench.add(t.id, () => {
        const t0 = now();
        const result = fn();
        // selfTimed: the task times its measured part itself (and returns the ms) and does
        // untimed upkeep after it, e.g. emptying a ring the measured part filled.
        const dt = t.selfTimed ? result : now() - t0;
        if (result !== undefined) consume(result);
        return { overriddenDuration: dt / ops, overriddenIterationCost: dt };
      }, { async: false });
    }
    bench.runSync();
    for (const task of bench.tasks) {
      const r = task.result;
      if (r.state !== 'completed') throw new Error(`task ${task.name}: ${r.state} ${r.error?.message ?? ''}`);
      const s = [...(r.latency.samples ?? [])].sort((a, b) => a - b);
      rounds.get(task.name).push(median(s));
      counts.set(task.name, counts.get(task.name) + s.length);
    }
  }
  return tasks.map((t) => {
    const perRound = rounds.get(t.id).sort((a, b) => a - b);
    const best = perRound[0];
    const mid = median(perRound);
    const ns = best * 1e6;
    return {
      id: t.id, name: t.name, ref: !!t.ref, note: t.note, ns, opsPerSec: 1e9 / ns,
      spreadPct: best > 0 ? (100 * (mid - best)) / best : 0, samples: counts.get(t.id),
      roundsNs: perRound.map((x) => x * 1e6),
    };
  });
}

// ---- timed runs (multi-thread and other long operations) --------------------------------

/**
 * Run `once()` (async, returns { ms, events, bytes?, extra? }) `reps` times after `warm`
 * unmeasured runs; report the median run. Used where one run moves many events across
 * threads: the run measures itself from the first event produced to the last one consumed.
 */
export async function measureRuns({ reps, warm = 1 }, once) {
  for (let i = 0; i < warm; i++) await once(true);
  const runs = [];
  for (let i = 0; i < reps; i++) runs.push(await once(false));
  return summarizeRuns(runs);
}

/** The median of timed runs ({ ms, events, bytes?, extra? }) by rate, with the spread. */
export function summarizeRuns(runs) {
  const byRate = [...runs].sort((a, b) => a.events / a.ms - b.events / b.ms);
  const mid = byRate[(byRate.length - 1) >> 1];
  const rates = runs.map((r) => (r.events / r.ms) * 1000);
  const lo = Math.min(...rates);
  const hi = Math.max(...rates);
  const med = (mid.events / mid.ms) * 1000;
  return {
    ns: 1e9 / med, opsPerSec: med, gbPerSec: mid.bytes !== undefined ? (mid.bytes / mid.ms) / 1e6 : undefined,
    spreadPct: med > 0 ? (100 * (hi - lo)) / 2 / med : 0, samples: runs.length, extra: mid.extra,
    loPerSec: lo, hiPerSec: hi,
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- ratios and goals -------------------------------------------------------------------

/** Add `ratio` (row ns ÷ reference ns) to every row of a table. */
export function withRatios(rows) {
  const ref = rows.find((r) => r.ref);
  for (const r of rows) r.ratio = ref ? r.ns / ref.ns : undefined;
  return rows;
}

export function row(rows, id) {
  const r = rows.find((x) => x.id === id);
  if (!r) throw new Error(`no row ${id}`);
  return r;
}

/**
 * A goal: `value` compared with `target` ('>=' or '<='); `valueOverTarget` says by how much
 * it is met or missed.
 */
export function goal({ id, issue, text, value, target, op, unit = '×', detail }) {
  const met = op === '>=' ? value >= target : value <= target;
  return { id, issue, text, value, target, op, unit, met, valueOverTarget: value / target, detail };
}

// ---- formatting -------------------------------------------------------------------------

export function fmtNs(ns) {
  if (!Number.isFinite(ns)) return 'n/a';
  if (ns < 10) return ns.toFixed(2);
  if (ns < 100) return ns.toFixed(1);
  return Math.round(ns).toLocaleString('en-US');
}

export function fmtRate(opsPerSec) {
  if (!Number.isFinite(opsPerSec)) return 'n/a';
  if (opsPerSec >= 1e9) return `${(opsPerSec / 1e9).toFixed(2)} G`;
  if (opsPerSec >= 1e6) return `${(opsPerSec / 1e6).toFixed(opsPerSec >= 1e8 ? 0 : 1)} M`;
  if (opsPerSec >= 1e3) return `${(opsPerSec / 1e3).toFixed(1)} k`;
  return opsPerSec.toFixed(1);
}

export function fmtRatio(r) {
  if (r === undefined || !Number.isFinite(r)) return '';
  if (r >= 100) return `${Math.round(r)}×`;
  if (r >= 10) return `${r.toFixed(1)}×`;
  return `${r.toFixed(2)}×`;
}

/**
 * A table: { id, title, unit ('op' | 'event' | 'hash' | …), rows, columns?, legend? }.
 * The default columns are implementation, ns/<unit>, <unit>s/s, ratio, spread, note.
 */
export function defaultColumns(unit) {
  return [
    { head: 'implementation', get: (r) => (r.ref ? `**${r.name}**` : r.name) },
    { head: `ns/${unit}`, get: (r) => fmtNs(r.ns), align: 'right' },
    { head: `${unit === 'hash' ? 'hashes' : `${unit}s`}/s`, get: (r) => fmtRate(r.opsPerSec), align: 'right' },
    { head: 'time ÷ shard-mapper', get: (r) => fmtRatio(r.ratio), align: 'right' },
    { head: '±', get: (r) => (r.spreadPct === undefined ? '' : `${r.spreadPct.toFixed(1)}%`), align: 'right' },
    { head: 'note', get: (r) => r.note ?? '' },
  ];
}

export function tableMarkdown(t) {
  const cols = t.columns ?? defaultColumns(t.unit ?? 'op');
  const cells = t.rows.map((r) => cols.map((c) => String(c.get(r))));
  const lines = [];
  lines.push(`| ${cols.map((c) => c.head).join(' | ')} |`);
  lines.push(`| ${cols.map((c) => (c.align === 'right' ? '---:' : '---')).join(' | ')} |`);
  for (const row of cells) lines.push(`| ${row.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`);
  return lines.join('\n');
}

/** Plain-text table for the terminal. */
export function tableText(t) {
  const cols = t.columns ?? defaultColumns(t.unit ?? 'op');
  const strip = (s) => s.replace(/\*\*/g, '');
  const cells = t.rows.map((r) => cols.map((c) => strip(String(c.get(r)))));
  const widths = cols.map((c, i) => Math.max(c.head.length, ...cells.map((row) => row[i].length)));
  const pad = (s, i) => (cols[i].align === 'right' ? s.padStart(widths[i]) : s.padEnd(widths[i]));
  const out = [];
  out.push(cols.map((c, i) => pad(c.head, i)).join('  '));
  out.push(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of cells) out.push(row.map((c, i) => pad(c, i)).join('  ').trimEnd());
  return out.join('\n');
}

/** JSON-friendly copy of a table (numbers, no formatter functions). */
export function tableJson(t) {
  return {
    id: t.id, title: t.title, unit: t.unit, legend: t.legend,
    rows: t.rows.map(({ id, name, ref, note, ns, opsPerSec, ratio, spreadPct, samples, gbPerSec, ...rest }) => ({
      id, name, ref, note, nsPerOp: ns, opsPerSec, ratioToShardMapper: ratio, spreadPct, samples, gbPerSec, ...rest,
    })),
  };
}

// ---- machine ----------------------------------------------------------------------------

export function machine() {
  let model = cpus()[0]?.model ?? 'unknown';
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const m = /^model name\s*:\s*(.+)$/m.exec(info);
    if (m) model = m[1].trim();
  } catch { /* not Linux */ }
  return {
    cpu: model, cores: availableParallelism(), memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version, v8: process.versions.v8, platform: `${process.platform}-${process.arch}`,
    date: new Date().toISOString(),
  };
}

/** Start bench/workers/<name> with `workerData`; `ready` resolves at its { type: 'ready' } message. */
export function startWorker(name, workerData) {
  const w = new Worker(new URL(`./workers/${name}`, import.meta.url), { workerData });
  const ready = new Promise((resolve, reject) => {
    w.once('error', reject);
    w.on('message', (m) => { if (m?.type === 'ready') resolve(); });
  });
  return { w, ready };
}
