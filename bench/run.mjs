#!/usr/bin/env node
// The one entry of the benchmark suite: `npm run bench` (builds first), or
//   node bench/run.mjs [--quick] [--only s1,s4] [--list]
// Runs every scenario in this one process, prints one table per scenario, then the goals of
// issues #2, #3 and #5. A full run writes bench/results/latest.md and latest.json (quoted by
// BENCHMARKS.md); --quick / --only runs write bench/results/partial.*.tmp instead, so a
// development run never overwrites the published numbers.
import { writeFileSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { PROFILES, machine, sink, tableMarkdown, tableText, tableJson, fmtRatio } from './lib.mjs';
import * as s1 from './s1-select.mjs';
import * as s2 from './s2-batch.mjs';
import * as s3 from './s3-ring.mjs';
import * as s4 from './s4-threads.mjs';
import * as s5 from './s5-scaling.mjs';
import * as s6 from './s6-growth.mjs';
import * as s7 from './s7-routing.mjs';
import * as s8 from './s8-redis.mjs';
import * as s9 from './s9-bytes.mjs';
import * as s10 from './s10-latency.mjs';
import * as s11 from './s11-key-order.mjs';

export const SCENARIOS = [s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11];

function parseArgs(argv) {
  const args = { profile: 'full', only: undefined, list: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') args.profile = 'quick';
    else if (a === '--tiny') args.profile = 'tiny';
    else if (a === '--list') args.list = true;
    else if (a === '--only') args.only = (argv[++i] ?? '').split(',').map((s) => s.trim()).filter(Boolean);
    else if (a.startsWith('--only=')) args.only = a.slice(7).split(',').map((s) => s.trim()).filter(Boolean);
    else throw new Error(`unknown argument ${a} (use --quick, --only s1,s2, --list)`);
  }
  return args;
}

function goalLine(g) {
  const v = g.unit === '×' ? fmtRatio(g.value) : `${g.value.toFixed(1)} ${g.unit}`;
  const t = g.unit === '×' ? `${g.target}×` : `${g.target} ${g.unit}`;
  const q = g.value / g.target;
  const pct = (x) => `${(100 * x).toFixed(0)}%`;
  const how = g.op === '>='
    ? (g.met ? `met (${fmtRatio(q)} the target)` : `MISSED (${pct(q)} of the target)`)
    : (g.met ? `met (${pct(q)} of the limit)` : `MISSED (${pct(q - 1)} over the limit)`);
  return { cells: [g.issue, g.text, `${g.op} ${t}`, v, how, g.detail ?? ''] };
}

function goalsMarkdown(goals) {
  const lines = ['| issue | goal | target | measured | verdict | detail |', '| --- | --- | ---: | ---: | --- | --- |'];
  for (const g of goals) lines.push(`| ${goalLine(g).cells.join(' | ')} |`);
  return lines.join('\n');
}

export async function main(argv = process.argv.slice(2)) {
  const args = parseArgs(argv);
  if (args.list) {
    for (const s of SCENARIOS) console.log(`${s.id}  ${s.title}`);
    return;
  }
  const profile = PROFILES[args.profile];
  const chosen = args.only ? SCENARIOS.filter((s) => args.only.includes(s.id)) : SCENARIOS;
  if (args.only && chosen.length !== args.only.length) {
    throw new Error(`--only: unknown scenario in ${args.only.join(',')} (known: ${SCENARIOS.map((s) => s.id).join(', ')})`);
  }
  const info = machine();
  console.log(`shard-mapper benchmarks — ${info.cpu}, ${info.cores} cores, Node ${info.node}, profile ${profile.name}, ${info.date}`);
  console.log('Ratios: this row\'s time per operation ÷ shard-mapper\'s (bold row); above 1 = shard-mapper is faster.\n');

  // ShardManager's consumer threads are unref'd (they never keep a process alive), so while
  // the main thread only awaits them (their start-up, their deliveries) nothing else would
  // hold the event loop open: this timer does, until the run is over.
  const keepAlive = setInterval(() => {}, 1 << 30);
  const results = [];
  const started = performance.now();
  for (const s of chosen) {
    const t0 = performance.now();
    console.log(`== ${s.title}`);
    const r = await s.run(profile);
    const secs = (performance.now() - t0) / 1000;
    if (r.intro) console.log(r.intro);
    for (const t of r.tables) {
      console.log(`\n${t.title}\n${tableText(t)}`);
      if (t.legend) console.log(t.legend);
    }
    console.log(`(${secs.toFixed(1)} s)\n`);
    results.push({ scenario: s, result: r, seconds: secs });
  }
  clearInterval(keepAlive);
  const goals = results.flatMap((x) => x.result.goals ?? []);
  if (goals.length > 0) {
    console.log('== Goals');
    for (const g of goals) {
      const c = goalLine(g).cells;
      console.log(`${g.met ? 'met   ' : 'MISSED'}  ${c[1]}: ${c[3]} (target ${c[2]}) — ${c[4]}; ${c[5]}`);
    }
  }
  const total = (performance.now() - started) / 1000;
  const { checksum, folds } = sink();
  console.log(`\nsink: checksum ${checksum} over ${folds} results (printed so no result can be optimized away)`);
  console.log(`total ${total.toFixed(1)} s`);

  // ---- write results ------------------------------------------------------------------------
  const md = [];
  md.push('# shard-mapper benchmark results');
  md.push('');
  md.push(`- machine: ${info.cpu}, ${info.cores} cores, ${info.memoryGiB} GiB (${info.platform})`);
  md.push(`- Node ${info.node} (V8 ${info.v8})`);
  md.push(`- date: ${info.date}`);
  md.push(`- profile: ${profile.name} (${profile.rounds} rounds × ${profile.time} ms per task after ${profile.warmupTime} ms warm-up), total ${total.toFixed(0)} s`);
  md.push(`- ratio column: the row's time per operation ÷ shard-mapper's (bold row); above 1 = shard-mapper is faster`);
  md.push(`- ns-scale tables: each task runs in ${profile.rounds} interleaved rounds, recompiled every round (machine-code placement alone moves a tight loop between ~2.2 and ~4.3 ns here); ns/op is the median of the task's best round, and ± says how much slower its median round was`);
  md.push('- timed runs (scenario 4): see its introduction');
  md.push('');
  for (const { scenario, result, seconds } of results) {
    md.push(`## ${scenario.title}`);
    md.push('');
    if (result.intro) { md.push(result.intro); md.push(''); }
    for (const t of result.tables) {
      md.push(`### ${t.title}`);
      md.push('');
      md.push(tableMarkdown(t));
      md.push('');
      if (t.legend) { md.push(t.legend); md.push(''); }
    }
    md.push(`_(${seconds.toFixed(1)} s)_`);
    md.push('');
  }
  if (goals.length > 0) {
    md.push('## Goals');
    md.push('');
    md.push(goalsMarkdown(goals));
    md.push('');
  }
  md.push(`sink checksum: ${checksum} (${folds} results folded)`);
  md.push('');
  const json = {
    machine: info, profile, totalSeconds: total, sink: { checksum, folds },
    scenarios: results.map(({ scenario, result, seconds }) => ({
      id: scenario.id, title: scenario.title, seconds, tables: result.tables.map(tableJson),
    })),
    goals,
  };
  const dir = join(dirname(fileURLToPath(import.meta.url)), 'results');
  mkdirSync(dir, { recursive: true });
  const full = profile.name === 'full' && !args.only;
  const base = full ? 'latest' : 'partial';
  const ext = full ? '' : '.tmp';
  writeFileSync(join(dir, `${base}.md${ext}`), md.join('\n'));
  writeFileSync(join(dir, `${base}.json${ext}`), `${JSON.stringify(json, null, 2)}\n`);
  console.log(`wrote bench/results/${base}.md${ext} and ${base}.json${ext}`);
  return json;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().then(
    () => process.exit(0), // consumer threads are unref'd; exit at once rather than wait for GC
    (error) => { console.error(error); process.exit(1); },
  );
}
