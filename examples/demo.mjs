#!/usr/bin/env node
// npm start: a live demo of shard-mapper routing and autoscaling on real worker threads.
// Producer threads ramp their load up and down; consumer threads simulate a downstream
// write per batch; the manager scales out while rings fill and back in when they idle.
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import logUpdate from 'log-update';
import asciichart from 'asciichart';
import pc from 'picocolors';
import { ShardManager } from 'shard-mapper';
import { numberFlag, targetRate as loadAt } from './demo-shared.mjs';

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '30' },
    producers: { type: 'string', default: '2' },
    payload: { type: 'string', default: '64' },
    peak: { type: 'string', default: '150000' },
    'max-shards': { type: 'string', default: '4' },
    routing: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log(`usage: npm start -- [--duration s] [--producers n] [--payload bytes] [--peak events/s] [--max-shards n] [--routing mode]
  --duration    seconds to run, 5 to 3600 (default 30)
  --producers   producer threads, 1 to 16 (default 2)
  --payload     bytes per event, 8 to 4096 (default 64); a range MIN-MAX within 8-65536,
                such as 64-16384, sends mixed sizes into rings sized in bytes (ringBufferBytes)
  --peak        total events/s at the top of the ramp, 1000 to 10000000 (default 150000); the
                live view's "target" is the ramp's rate at that moment, "pushed" what was accepted
  --max-shards  upper bound for autoscaling, 1 to 64 (default 4)
  --routing     leastLoaded, balanced or affinity (default: ShardManager's, balanced);
                affinity keeps each key's order when keys move between shards`);
  process.exit(0);
}
const num = (name, min, max) => numberFlag(args, name, min, max);
const durationS = num('duration', 5, 3600);
const producers = Math.round(num('producers', 1, 16));
// --payload N, or MIN-MAX: each event's size then varies between the two (rings sized in bytes)
const payloadRange = /^(\d+)-(\d+)$/.exec(args.payload ?? '');
const [minPayload, payloadBytes] = payloadRange
  ? [Number(payloadRange[1]), Number(payloadRange[2])]
  : [Math.round(num('payload', 8, 4096)), Math.round(num('payload', 8, 4096))];
if (!(minPayload >= 8 && payloadBytes >= minPayload && payloadBytes <= 65536)) {
  console.error(`--payload must be bytes in [8, 4096] or a range MIN-MAX within [8, 65536], got ${args.payload}`);
  process.exit(2);
}
const RING_RECORDS = 4096;
// A range sizes each ring for its records at the average size (and a little more), not at the
// largest; one fixed size up to 256 bytes gets the default (room for RING_RECORDS of them), a
// larger one room for RING_RECORDS of its own size (the default is made for 256-byte events).
const ringBufferBytes = payloadRange ? Math.max(4 * payloadBytes, Math.ceil(1.25 * RING_RECORDS * (minPayload + payloadBytes) / 2))
  : payloadBytes > 256 ? (RING_RECORDS + 1) * Math.ceil(payloadBytes / 8) * 8 : undefined;
const peak = num('peak', 1000, 10_000_000);
const maxShards = Math.round(num('max-shards', 1, 64));
const LOW = Math.min(2000, peak / 10);
const ROUTINGS = ['leastLoaded', 'balanced', 'affinity'];
if (args.routing !== undefined && !ROUTINGS.includes(args.routing)) {
  console.error(`--routing must be one of ${ROUTINGS.join(', ')}, got ${args.routing}`);
  process.exit(2);
}

// Load profile as a fraction of the run: quiet, ramp up, peak, ramp down, idle.
const targetRate = (f) => loadAt(f, peak, LOW);
// What the live view's numbers mean (printed with them: target is not what was pushed).
const TARGET_MEANS = 'target: the load the producers are asked for at this moment (the ramp of --peak); pushed, delivered: '
  + 'averages over the last 0.25 s, so they trail target on the ramps, and fall below it while full rings push back';

const KEYS_PER_PRODUCER = 1024; // each producer numbers its events per key
const decisions = [];
const moves = { moving: 0, slots: 0, balance: 0, ended: 0, log: [] }; // routing affinity: keysMoving / keysMoved events
const started = performance.now();
// The next seq of every key (producer · KEYS_PER_PRODUCER + key), shared by the consumer threads.
const nextSeq = new SharedArrayBuffer(4 * 16 * KEYS_PER_PRODUCER);
const elapsed = () => (performance.now() - started) / 1000;
const manager = await ShardManager.create({
  initialShards: 1,
  ringBufferCapacity: RING_RECORDS,
  ringBufferBytes, // undefined: the default, room for RING_RECORDS events of up to 256 bytes
  routing: args.routing, // undefined: ShardManager's default
  maxPayloadBytes: Math.max(payloadBytes, 64),
  // flushLatencyThresholdUs: a consumer batch that takes longer than this counts as overloaded.
  // The demo's consumer waits ~2 ms per batch (DEMO_BATCH_MS), over the default 1000 µs, which
  // would scale out in the quiet phase; at 50 ms the scale-outs come from rings filling.
  policy: { minShards: 1, maxShards, fillRatioThreshold: 0.5, flushLatencyThresholdUs: 50_000, cooldownMs: 1500, scaleDownDelayMs: 3000, metricsWindowMs: 250 },
  consumer: {
    // the demo's own worker: it gets the per-key table shared by every consumer thread
    worker: () => new Worker(new URL('./demo-consumer.mjs', import.meta.url), { workerData: { keysPerProducer: KEYS_PER_PRODUCER, next: nextSeq } }),
    threads: maxShards, batchSize: 128,
  },
  onEvent: (e) => {
    if (e.type === 'scalingDecision') decisions.push(`${elapsed().toFixed(1)}s ${e.decision.kind}(${e.decision.count})`);
    if (e.type === 'keysMoving') {
      moves.moving++;
      moves.slots += e.slots;
      if (e.cause === 'balance') moves.balance += e.slots;
      moves.log.push(`${elapsed().toFixed(1)}s ${e.slots} slot${e.slots === 1 ? '' : 's'} ${e.fromShard}→${e.toShard}${e.cause === 'balance' ? ' (load)' : ''}`);
      if (moves.log.length > 4) moves.log.shift();
    }
    if (e.type === 'keysMoved') moves.ended += e.slots;
  },
});
manager.start();

let consumed = 0;
let outOfOrder = 0;
let outOfKeyOrder = 0;
const channel = new BroadcastChannel('shard-mapper-demo');
channel.onmessage = (e) => { consumed += e.data.consumed; outOfOrder += e.data.outOfOrder; outOfKeyOrder += e.data.outOfKeyOrder; };

const control = new SharedArrayBuffer(8);
const ctl = new Int32Array(control);
const counters = new SharedArrayBuffer(16 * producers);
const threads = Array.from({ length: producers }, (_, producer) => new Worker(new URL('./demo-producer.mjs', import.meta.url), {
  workerData: { handle: manager.producerHandle(), producer, minPayload, payloadBytes, control, counters, keysPerProducer: KEYS_PER_PRODUCER },
}));
const finished = threads.map((w) => new Promise((resolve, reject) => { w.on('message', resolve); w.on('error', reject); }));

// ---- the live view ---------------------------------------------------------------------
const tty = process.stdout.isTTY;
const history = { pushed: [], delivered: [], shards: [] };
let lastPushed = 0;
let lastDelivered = 0;
const lastShardPushed = new Map(); // shard id → its pushed count at the last sample
let shareOf = new Map(); // shard id → its share of the events pushed since the last sample
let lastAt = performance.now();
const stateColour = { active: pc.green, provisioning: pc.cyan, draining: pc.yellow, stopped: pc.gray };
const bar = (ratio, width = 24) => {
  const full = Math.round(Math.min(1, ratio) * width);
  const colour = ratio > 0.5 ? pc.red : ratio > 0.2 ? pc.yellow : pc.green;
  return colour('█'.repeat(full)) + pc.gray('░'.repeat(width - full));
};
const fmt = (n) => Math.round(n).toLocaleString('en-US');
const shareBar = (share, width = 10) => {
  const full = Math.round(Math.min(1, share) * width);
  return '▮'.repeat(full) + pc.gray('·'.repeat(width - full));
};

// Two series on one scale, told apart by their glyphs (not only by colour): the first is
// drawn with box-drawing lines, the second with dots on top of it.
const DOTS = ['┼', '┤', '•', '•', '•', '•', '•', '•', '•', '•'];
function twoSeriesChart(first, second) {
  const max = Math.max(1, ...first, ...second);
  const cfg = { height: 10, min: 0, max, format: (x) => fmt(x).padStart(9) };
  const a = asciichart.plot(first, cfg).split('\n');
  const b = asciichart.plot(second, { ...cfg, symbols: DOTS }).split('\n');
  return a.map((row, r) => {
    const other = b[r] ?? '';
    const axis = Math.max(row.search(/[┤┼]/), 0) + 1;
    let out = row.slice(0, axis);
    for (let i = axis; i < Math.max(row.length, other.length); i++) {
      const dot = other[i] ?? ' ';
      const line = row[i] ?? ' ';
      out += dot !== ' ' ? pc.magenta(dot) : line !== ' ' ? pc.cyan(line) : ' ';
    }
    return out;
  }).join('\n');
}

function sample() {
  const now = performance.now();
  const s = manager.stats();
  const dt = (now - lastAt) / 1000;
  const pushRate = (s.pushed - lastPushed) / dt;
  const deliverRate = (s.delivered - lastDelivered) / dt;
  lastPushed = s.pushed; lastDelivered = s.delivered; lastAt = now;
  // Each shard's share of the traffic since the last sample: what the routing mode decides.
  const deltas = s.shards.map((sh) => [sh.id, sh.pushed - (lastShardPushed.get(sh.id) ?? 0)]);
  const sum = deltas.reduce((a, [, d]) => a + d, 0);
  shareOf = new Map(deltas.map(([id, d]) => [id, sum > 0 ? d / sum : 0]));
  lastShardPushed.clear();
  for (const sh of s.shards) lastShardPushed.set(sh.id, sh.pushed);
  for (const [k, v] of [['pushed', pushRate], ['delivered', deliverRate], ['shards', manager.mapper.activeShardCount()]]) {
    history[k].push(v);
    if (history[k].length > 72) history[k].shift();
  }
  return { s, pushRate, deliverRate };
}

const affinity = manager.mapper.routing === 'affinity';
/** Slots waiting for this shard's consumer / slots moved here that wait. */
const movingCell = (out = 0, into = 0) => (out + into === 0 ? pc.gray('      –') : pc.yellow(`${String(out).padStart(5)}/${into}`));

function render({ s, pushRate, deliverRate }) {
  const f = Math.min(1, elapsed() / durationS);
  const lines = [
    pc.bold('shard-mapper live demo') + pc.gray(`  ${elapsed().toFixed(1)} s / ${durationS} s   ${producers} producer threads, ${maxShards} consumer threads, ${minPayload === payloadBytes ? payloadBytes : `${minPayload}–${payloadBytes}`}-byte events, rings of ${(manager.ringBufferBytes / 2 ** 20).toFixed(1)} MiB`),
    `target ${fmt(targetRate(f))} ev/s   pushed ${pc.bold(fmt(pushRate))} ev/s   delivered ${pc.bold(fmt(deliverRate))} ev/s   active shards ${pc.bold(String(manager.mapper.activeShardCount()))} / ${maxShards}`,
    pc.gray(TARGET_MEANS),
    '',
    pc.gray(`  routing ${manager.mapper.routing}`),
    pc.gray(`  id  state          fill                              ring  share of traffic     delivered${affinity ? '  moving out/in' : ''}`),
  ];
  for (const sh of s.shards) {
    const colour = stateColour[sh.state] ?? ((x) => x);
    const ratio = Math.max(sh.length / manager.ringCapacity, sh.bytes / manager.ringBufferBytes); // by records or by bytes
    const share = shareOf.get(sh.id) ?? 0;
    lines.push(`  ${String(sh.id).padStart(2)}  ${colour(sh.state.padEnd(13))}  ${bar(ratio)} ${(ratio * 100).toFixed(0).padStart(3)}%  ${String(sh.length).padStart(6)}  ${shareBar(share)} ${(share * 100).toFixed(0).padStart(3)}%  ${fmt(sh.delivered).padStart(12)}` +
      (affinity ? `  ${movingCell(sh.movingOut, sh.movingIn)}` : ''));
  }
  if (affinity) {
    const k = s.keyOrder;
    lines.push('', `key order: ${k.waitingSlots > 0 ? pc.yellow(`${fmt(k.waitingSlots)} slots waiting`) : pc.green('no slot waiting')}` +
      `${k.waitingSlots > 0 ? ` (oldest ${fmt(k.oldestWaitMs)} ms)` : ''}   moved ${fmt(k.movedSlots)} slots, longest wait ${fmt(k.longestWaitMs)} ms, ` +
      `pushes held back ${fmt(k.refused)}   out of key order ${outOfKeyOrder === 0 ? pc.green('0') : pc.red(fmt(outOfKeyOrder))}`);
    lines.push(pc.gray(`  moves: ${moves.log.join('  ') || 'none yet'}`));
  }
  lines.push('', `events/s — ${pc.cyan('─ pushed')}   ${pc.magenta('• delivered')} ${pc.gray('(• drawn over ─ where they meet)')}`);
  if (history.pushed.length > 1) lines.push(twoSeriesChart(history.pushed, history.delivered));
  lines.push('', pc.gray(`scaling: ${decisions.slice(-6).join('  ') || 'none yet'}`));
  logUpdate(lines.join('\n'));
}

let lastPlain = 0;
if (!tty) {
  // Plain output (CI, a pipe): say once what runs and what each line's fields mean.
  console.log(`shard-mapper live demo: ${producers} producer threads, ${maxShards} consumer threads, ` +
    `${minPayload === payloadBytes ? payloadBytes : `${minPayload}–${payloadBytes}`}-byte events, routing ${manager.mapper.routing}, ` +
    `1 to ${maxShards} shards, ${durationS} s`);
  console.log(TARGET_MEANS);
  console.log(`shards=ID:STATE:LENGTH:SHARE per shard: its id, its state's initial (a active, p provisioning, d draining, ` +
    `s stopped), the records in its ring (of ${fmt(manager.ringCapacity)}), its share of the events pushed over the last 0.25 s` +
    (affinity ? '; waiting: slots whose keys wait for an old shard\'s consumer, moved: slot moves so far, held: pushes held back while their key moved' : ''));
}
const timer = setInterval(() => {
  const f = elapsed() / durationS;
  Atomics.store(ctl, 0, Math.round(targetRate(Math.min(1, f)) / producers));
  const snap = sample();
  if (tty) render(snap);
  else if (elapsed() - lastPlain >= 1) {
    lastPlain = elapsed();
    console.log(`${elapsed().toFixed(1)}s target=${fmt(targetRate(f))}/s pushed=${fmt(snap.pushRate)}/s delivered=${fmt(snap.deliverRate)}/s shards=${snap.s.shards.map((x) => `${x.id}:${x.state[0]}:${x.length}:${((shareOf.get(x.id) ?? 0) * 100).toFixed(0)}%`).join(' ')}` +
      (affinity ? ` waiting=${snap.s.keyOrder.waitingSlots} moved=${snap.s.keyOrder.movedSlots} held=${snap.s.keyOrder.refused}` : ''));
  }
}, 250);

await new Promise((r) => setTimeout(r, durationS * 1000));
Atomics.store(ctl, 1, 1); // producers stop
const produced = await Promise.all(finished);
clearInterval(timer);
if (tty) logUpdate.done();
await manager.close(); // consumers take every accepted event first
for (let waited = 0; consumed < manager.stats().delivered && waited < 3000; waited += 20) await new Promise((r) => setTimeout(r, 20));
channel.close();

const s = manager.stats();
const accepted = produced.reduce((a, p) => a + p.accepted, 0);
const retried = produced.reduce((a, p) => a + p.refused, 0);
const heldMoving = produced.reduce((a, p) => a + (p.moving ?? 0), 0);
const lost = accepted - s.delivered - s.drops.oldest;
const row = (k, v, note = '') => console.log(`  ${k.padEnd(22)} ${fmt(v).padStart(12)}  ${pc.gray(note)}`);
console.log(pc.bold('\nsummary'));
row('pushed (accepted)', s.pushed, `producers counted ${fmt(accepted)}`);
row('delivered', s.delivered, `consumers counted ${fmt(consumed)}`);
row('dropped', s.drops.newest + s.drops.oldest + s.drops.sampled, 'backpressure is failProducer: nothing is dropped');
row('refused, then retried', retried, affinity ? `full rings, and ${fmt(heldMoving)} pushes of keys that were moving, pushed back on the producers` : 'full rings pushed back on the producers');
row('unrouted', s.unrouted);
row('lost', lost, lost === 0 ? 'none' : 'LOST EVENTS');
row('out of key order', outOfKeyOrder, affinity
  ? `each key's events in push order across shards (${fmt(s.keyOrder.movedSlots)} slots moved, ${fmt(moves.balance)} of them by load; longest wait ${fmt(s.keyOrder.longestWaitMs)} ms)`
  : `expected under ${manager.mapper.routing}, nothing lost: a key whose shard changed may be consumed out of order; --routing affinity keeps key order`);
row('out of order', outOfOrder, 'per shard and key');
console.log(pc.gray(`  scaling decisions: ${decisions.join(', ') || 'none'}`));
console.log(pc.gray(`  routing ${manager.mapper.routing}, peak shards ${Math.max(...history.shards, 1)}, final shards ${manager.mapper.activeShardCount()}, ${availableParallelism()} CPUs`));
const perShard = 512 + 16 * RING_RECORDS + manager.ringBufferBytes; // slot header, descriptors, payload area (README: Memory per shard)
console.log(pc.gray(`  memory ${(manager.memoryBytes / 2 ** 20).toFixed(1)} MiB; each shard ring ${(perShard / 2 ** 20).toFixed(1)} MiB` +
  (minPayload === payloadBytes ? '' : `, where ${RING_RECORDS} records of the largest size would take ${((512 + RING_RECORDS * (16 + payloadBytes)) / 2 ** 20).toFixed(1)} MiB`)));
process.exit(lost === 0 && outOfOrder === 0 && (!affinity || outOfKeyOrder === 0) && consumed === s.delivered ? 0 : 1);
