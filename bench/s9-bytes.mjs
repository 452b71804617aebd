// Scenario 9 — byte rings (issue #14): what sizing rings in bytes costs and saves, against the
// fixed-record ring it replaced, in the same run. The fixed-record ring is the previous build,
// built from git history on first use (bench/fixed-ring-build.mjs); without the history its
// rows are skipped, saying so.
//   a) memory: 4 shards × 4096 mixed-size records in flight, byte rings vs fixed records of
//      maxPayloadBytes;
//   b) 16-byte push and pushFixed on one thread, both builds, interleaved;
//   c) mixed-size events across threads (one producer, one consumer thread) beside ringbuf.js.
import { RingBuffer } from 'ringbuf.js';
import * as byteRing from 'shard-mapper';
import { loadFixedRing } from './fixed-ring-build.mjs';
import { rng, randomHashes } from '../shared/seeded-random.mjs';
import { summarizeRuns, withRatios, goal, consume, check, sleep, fmtNs, fmtRate, fmtRatio, startWorker, medianOf as median } from './lib.mjs';

export const id = 's9';
export const title = '9. Byte rings: memory and push speed vs the fixed-record ring, mixed sizes across threads';

const MiB = 2 ** 20;
const SHARDS = 4;
const CAPACITY = 4096;
const MAX_PAYLOAD = 65536;
const SLOT_HEADER = 512; // bytes of counters and ring words per shard (both builds)
const DESCRIPTOR = 16; // bytes per record descriptor (byte rings)
const FIXED_RECORD_HEADER = 8; // bytes before each payload (fixed-record ring)
/** The byte-ring size of part a and of the "web" mix of part c: about 1.3× the payload bytes
 *  a shard holds there (the fullest of the four held 7.7 MiB with this seed). */
const WEB_RING_BYTES = 10 * MiB;
const SMALL_RING_BYTES = 2 * MiB; // the 16 B–1 KiB mix averages 520 B: ~4000 records
const MEMORY_SEED = 14;
const MIX_SEED = 9;

const align8 = (n) => (n + 7) & ~7;
const align128 = (n) => Math.ceil(n / 128) * 128;
const mib = (bytes) => `${(bytes / MiB).toFixed(1)} MiB`;
const workerUrl = (name) => new URL(`./workers/${name}`, import.meta.url);

/** The size mixes. `web`: 95 % 200 B, 5 % uniform in 1 B–64 KiB; `small`: uniform 16 B–1 KiB. */
const MIXES = {
  web: { label: '95 % 200 B, 5 % 1 B–64 KiB', max: MAX_PAYLOAD, ringBytes: WEB_RING_BYTES,
    size: (next) => (next() % 100 < 95 ? 200 : 1 + (next() % MAX_PAYLOAD)) },
  small: { label: '16 B–1 KiB uniform', max: 1024, ringBytes: SMALL_RING_BYTES,
    size: (next) => 16 + (next() % (1024 - 16 + 1)) },
};

function managerOptions(extra) {
  return { initialShards: SHARDS, ringBufferCapacity: CAPACITY, policy: { autoScale: false, maxShards: SHARDS }, ...extra };
}

// ---- a) memory ----------------------------------------------------------------------------------

/**
 * 4096 records in every one of the 4 shards: hashes drawn from the seeded PRNG, each kept only
 * while the shard it routes to (selectShard; the selection table does not change without
 * tick()) has fewer than 4096; sizes from the web mix.
 */
function memoryEvents(mapper) {
  const next = rng(MEMORY_SEED);
  const perShard = new Map();
  const events = [];
  const ids = mapper.activeShardIds();
  for (const sid of ids) perShard.set(sid, { records: 0, bytes: 0 });
  while (events.length < SHARDS * CAPACITY) {
    const hash = next();
    const size = MIXES.web.size(next);
    const s = perShard.get(mapper.selectShard(hash));
    if (s.records === CAPACITY) continue;
    s.records++;
    s.bytes += align8(size);
    events.push({ hash, size });
  }
  return { events, perShard };
}

/** Push every event with failProducer (a full ring throws) and check each shard holds 4096. */
function fillAndCheck(mgr, events, label) {
  const source = new Uint8Array(MAX_PAYLOAD).fill(7);
  let accepted = 0;
  for (const e of events) if (mgr.push(e.hash, source.subarray(0, e.size))) accepted++;
  const lengths = mgr.mapper.activeShardIds().map((sid) => mgr.ringLength(sid));
  check(accepted === events.length && lengths.every((n) => n === CAPACITY) && mgr.stats().dropped === 0,
    `${label}: all ${events.length} records accepted and in flight (accepted ${accepted}, ring lengths ${lengths.join(', ')})`);
  consume(accepted);
}

async function memory(fixedRing) {
  const bytes = await byteRing.ShardManager.create(managerOptions({
    maxPayloadBytes: MAX_PAYLOAD, ringBufferBytes: WEB_RING_BYTES, backpressure: { kind: 'failProducer' },
  }));
  const { events, perShard } = memoryEvents(bytes.mapper);
  fillAndCheck(bytes, events, 'byte rings');
  const fullest = Math.max(...[...perShard.values()].map((s) => s.bytes));
  const held = [...perShard.values()].reduce((a, s) => a + s.bytes, 0);
  const rows = [{
    id: 'bytes', name: `byte rings, ringBufferBytes ${mib(bytes.ringBufferBytes)}`, ref: true,
    ringBytes: bytes.ringBufferBytes, memoryBytes: bytes.memoryBytes,
    layoutBytes: align128(SLOT_HEADER + DESCRIPTOR * CAPACITY + bytes.ringBufferBytes),
    note: `payload bytes held: ${mib(held)} in all, fullest shard ${mib(fullest)} (${((100 * fullest) / bytes.ringBufferBytes).toFixed(0)} % of its ring)`,
  }];
  await bytes.close();

  const fixedLayout = align128(SLOT_HEADER + CAPACITY * align8(FIXED_RECORD_HEADER + MAX_PAYLOAD));
  let fixed;
  if (fixedRing) { // undefined: not built here (no git history), its rows are left out
    try {
      fixed = await fixedRing.ShardManager.create(managerOptions({ maxPayloadBytes: MAX_PAYLOAD, backpressure: { kind: 'failProducer' } }));
    } catch (error) {
      rows.push({ id: 'fixed', name: 'fixed-record ring, maxPayloadBytes 64 KiB', layoutBytes: fixedLayout, memoryBytes: NaN,
        note: `could not be created here (${error.message}); bytes per shard from its layout` });
    }
  }
  if (fixed) {
    fillAndCheck(fixed, events, 'fixed-record ring');
    rows.push({ id: 'fixed', name: 'fixed-record ring, maxPayloadBytes 64 KiB', layoutBytes: fixedLayout, memoryBytes: fixed.memoryBytes,
      note: 'the previous build (commit fc0008f); every record takes a 64 KiB slot' });
    await fixed.close();
  }
  const ref = rows[0];
  for (const r of rows) r.ratio = r.memoryBytes / ref.memoryBytes;
  return rows;
}

function memoryColumns() {
  return [
    { head: 'ring', get: (r) => (r.ref ? `**${r.name}**` : r.name) },
    { head: 'bytes per shard (layout)', get: (r) => `${r.layoutBytes.toLocaleString('en-US')} (${mib(r.layoutBytes)})`, align: 'right' },
    { head: 'manager.memoryBytes', get: (r) => (Number.isFinite(r.memoryBytes) ? `${r.memoryBytes.toLocaleString('en-US')} (${mib(r.memoryBytes)})` : 'n/a'), align: 'right' },
    { head: 'memory ÷ byte rings', get: (r) => fmtRatio(r.ratio), align: 'right' },
    { head: 'note', get: (r) => r.note ?? '' },
  ];
}

// ---- b) push speed against the fixed-record ring -------------------------------------------------

const RUN = 4096; // events per timed call, the same as bench/compare-push.mjs
const SIZE = 16;

async function speedSetup(lib) {
  const m = await lib.ShardManager.create(managerOptions({ maxPayloadBytes: SIZE, backpressure: { kind: 'dropNewest' } }));
  const ids = m.mapper.activeShardIds();
  const drain = () => { for (const sid of ids) while (m.poll(sid, CAPACITY).length > 0); };
  return { m, drain };
}

// Task bodies, compiled afresh for every build and block (see lib.fresh for why placement
// matters): `m`, `hashes`, `payloads`, `block` and RUN come from the compile's scope.
const PUSH_SRC = 'return function push(off) { let ok = 0; for (let i = 0; i < RUN; i++) if (m.push(hashes[(off + i) & 65535], payloads[i & 1023])) ok++; return ok; }';
const FIXED_SRC = 'return function pushFixed(off) { const at = off & (65536 - RUN); return m.pushFixed(hashes.subarray(at, at + RUN), block, 16); }';

/**
 * Both builds, push and pushFixed: `blocks` blocks; in each, every task is compiled anew,
 * warmed, then timed `calls` times, the four tasks interleaved (the order rotating each call).
 * A task's block value is the median of its calls; its ns/event is the median block, its
 * range the fastest and slowest block. The ratio (byte rings ÷ fixed) is taken per block and
 * its median reported, with the range of the per-block ratios.
 */
async function speed(profile, fixedRing) {
  const blocks = profile.name === 'full' ? 15 : profile.name === 'quick' ? 3 : 1;
  const warm = profile.name === 'tiny' ? 2 : 30;
  const calls = profile.name === 'full' ? 60 : profile.name === 'quick' ? 20 : 2;
  const hashes = randomHashes(65536, 29);
  const payloads = Array.from({ length: 1024 }, (_, i) => new Uint8Array(SIZE).fill((i * 7 + 1) & 0xff));
  const block = new Uint8Array(RUN * SIZE);
  for (let i = 0; i < RUN; i++) block.set(payloads[i & 1023], i * SIZE);
  const builds = { bytes: await speedSetup(byteRing) };
  if (fixedRing) builds.fixed = await speedSetup(fixedRing);
  const ringBytes = builds.bytes.m.ringBufferBytes;
  const kinds = [['push', PUSH_SRC], ['pushFixed', FIXED_SRC]];
  const tasks = [];
  for (const [kind, src] of kinds) for (const build of Object.keys(builds)) tasks.push({ key: `${kind}-${build}`, kind, build, src, blocks: [] });
  let off = 0;
  for (let b = 0; b < blocks; b++) {
    const fns = tasks.map((t) => new Function('m', 'hashes', 'payloads', 'block', 'RUN', `/* ${t.key} block ${b} */ ${t.src}`)(builds[t.build].m, hashes, payloads, block, RUN));
    const times = tasks.map(() => []);
    for (let c = 0; c < warm + calls; c++) {
      for (let k = 0; k < tasks.length; k++) {
        const j = (k + c) % tasks.length;
        const t0 = performance.now();
        const ok = fns[j](off);
        const dt = performance.now() - t0;
        check(ok === RUN, `${tasks[j].key}: ${RUN - ok} of ${RUN} events dropped`);
        consume(ok);
        builds[tasks[j].build].drain();
        off = (off + RUN) & 65535;
        if (c >= warm) times[j].push((dt * 1e6) / RUN);
      }
    }
    tasks.forEach((t, k) => t.blocks.push(median(times[k])));
  }
  for (const { m } of Object.values(builds)) {
    const s = m.stats();
    check(s.pushed === s.delivered && s.dropped === 0, `speed: every pushed record was polled (${s.pushed} pushed, ${s.delivered} delivered)`);
    await m.close();
  }
  const rows = [];
  const ratios = {};
  for (const [kind] of kinds) {
    const mine = tasks.find((t) => t.key === `${kind}-bytes`);
    const theirs = tasks.find((t) => t.key === `${kind}-fixed`);
    if (theirs) {
      const per = mine.blocks.map((x, i) => x / theirs.blocks[i]);
      ratios[kind] = { median: median(per), lo: Math.min(...per), hi: Math.max(...per) };
    }
    for (const t of theirs ? [mine, theirs] : [mine]) {
      const ns = median(t.blocks);
      rows.push({
        id: t.key, name: `${t.build === 'bytes' ? 'byte rings' : 'fixed-record ring'}: ${kind === 'push' ? 'push' : `pushFixed(${RUN})`}, 16 B`,
        ref: t.build === 'bytes', ns, opsPerSec: 1e9 / ns, loNs: Math.min(...t.blocks), hiNs: Math.max(...t.blocks),
        blockRatio: t.build === 'bytes' ? ratios[kind] : undefined,
        note: t.build === 'fixed' ? 'previous build, maxPayloadBytes 16' : `ringBufferBytes default (${ringBytes.toLocaleString('en-US')} B)`,
      });
    }
  }
  return { rows, ratios, blocks, calls };
}

function speedColumns() {
  return [
    { head: 'implementation', get: (r) => (r.ref ? `**${r.name}**` : r.name) },
    { head: 'ns/event', get: (r) => fmtNs(r.ns), align: 'right' },
    { head: 'events/s', get: (r) => fmtRate(r.opsPerSec), align: 'right' },
    { head: 'range (ns/event)', get: (r) => `${fmtNs(r.loNs)} – ${fmtNs(r.hiNs)}`, align: 'right' },
    { head: 'byte rings ÷ fixed', get: (r) => (r.blockRatio ? `${fmtRatio(r.blockRatio.median)} (${fmtRatio(r.blockRatio.lo)} – ${fmtRatio(r.blockRatio.hi)})` : ''), align: 'right' },
    { head: 'note', get: (r) => r.note ?? '' },
  ];
}

// ---- c) mixed sizes across threads ---------------------------------------------------------------

const POOL = 4096;
const CHUNK = 256 * 1024; // bytes the ringbuf.js consumer pops at most at once

async function waitCount(read, target) {
  while (read() < target) await sleep(1);
}

function byteRingThreads(mix, batch) {
  return {
    id: batch ? 'sm-push-rb' : 'sm-push', ref: batch,
    name: batch ? 'shard-mapper push → batch consumer' : 'shard-mapper push → Uint8Array[] consumer',
    async setup() {
      const mgr = await byteRing.ShardManager.create({
        initialShards: 1, ringBufferCapacity: CAPACITY, maxPayloadBytes: mix.max, ringBufferBytes: mix.ringBytes,
        backpressure: { kind: 'dropNewest' }, policy: { autoScale: false, maxShards: 1 },
        consumer: { module: workerUrl(batch ? 'sm-batch-consumer.mjs' : 'sm-consumer.mjs'), threads: 1, batch },
      });
      return {
        async once(n, hashes, payloads) {
          const before = mgr.stats().delivered;
          let stalls = 0;
          let bytes = 0;
          const t0 = performance.now();
          for (let i = 0; i < n; i++) {
            const p = payloads[i & (POOL - 1)];
            while (!mgr.push(hashes[i & 65535], p)) stalls++; // dropNewest: false = ring full, retry
            bytes += p.length;
          }
          await waitCount(() => mgr.stats().delivered - before, n);
          return { ms: performance.now() - t0, events: n, bytes, extra: { stalls } };
        },
        async teardown() {
          const s = mgr.stats();
          check(s.pushed === s.delivered && s.dropped === s.drops.newest, `byte rings across threads delivered every accepted event (${s.pushed} pushed, ${s.delivered} delivered)`);
          consume(s.delivered);
          await mgr.close();
        },
      };
    },
  };
}

function ringbufThreads(mix) {
  return {
    id: 'ringbuf', name: 'ringbuf.js, 4-byte length + payload per event',
    async setup() {
      const ctl = new Int32Array(new SharedArrayBuffer(64));
      const sab = RingBuffer.getStorageForCapacity(mix.ringBytes, Uint8Array);
      const rb = new RingBuffer(sab, Uint8Array);
      const { w, ready } = startWorker('ringbuf-framed-consumer.mjs', { sab, ctlSab: ctl.buffer, index: 0, chunk: CHUNK, maxPayload: mix.max });
      await ready;
      const header = new Uint8Array(4);
      return {
        async once(n, _hashes, payloads) { // ringbuf.js has no shards: the hashes go unused
          const before = Atomics.load(ctl, 2);
          let stalls = 0;
          let bytes = 0;
          Atomics.add(ctl, 1, 1); Atomics.notify(ctl, 1); // wake a sleeping consumer: a run starts
          const t0 = performance.now();
          for (let i = 0; i < n; i++) {
            const p = payloads[i & (POOL - 1)];
            const len = p.length;
            while (rb.available_write() < 4 + len) stalls++; // whole frames only
            header[0] = len; header[1] = len >>> 8; header[2] = len >>> 16; header[3] = len >>> 24;
            rb.push(header);
            rb.push(p);
            bytes += len;
          }
          await waitCount(() => Atomics.load(ctl, 2) - before, n);
          return { ms: performance.now() - t0, events: n, bytes, extra: { stalls } };
        },
        async teardown() {
          const done = new Promise((resolve) => {
            let checksum = 0;
            w.on('message', (m) => { if (m?.type === 'done') { checksum = m.checksum; void w.terminate(); } });
            w.once('exit', () => resolve(checksum));
          });
          Atomics.store(ctl, 0, 1); Atomics.add(ctl, 1, 1); Atomics.notify(ctl, 1);
          consume(await done);
          check(rb.available_read() === 0, 'ringbuf.js ring drained');
        },
      };
    },
  };
}

async function threads(profile, mixName) {
  const mix = MIXES[mixName];
  const next = rng(MIX_SEED);
  const payloads = Array.from({ length: POOL }, (_, i) => new Uint8Array(mix.size(next)).fill((i % 251) + 1));
  const hashes = randomHashes(65536, 31);
  const avg = payloads.reduce((a, p) => a + p.length, 0) / POOL;
  const n = Math.max(1024, Math.round((mixName === 'web' ? 200_000 : 1_000_000) * profile.scale));
  const reps = profile.name === 'full' ? 7 : profile.name === 'quick' ? 3 : 1;
  const warm = profile.name === 'tiny' ? 0 : 1;
  const impls = [byteRingThreads(mix, true), byteRingThreads(mix, false), ringbufThreads(mix)];
  const live = [];
  for (const impl of impls) live.push(await impl.setup());
  const runs = impls.map(() => []);
  for (let w = 0; w < warm; w++) for (const l of live) await l.once(Math.min(n, 50_000), hashes, payloads);
  for (let r = 0; r < reps; r++) for (let k = 0; k < impls.length; k++) runs[k].push(await live[k].once(n, hashes, payloads));
  for (const l of live) await l.teardown();
  const rows = impls.map((impl, k) => {
    const m = summarizeRuns(runs[k]);
    const stalls = m.extra?.stalls;
    return { id: impl.id, name: impl.name, ref: !!impl.ref, ...m, runs: reps,
      note: stalls ? `${stalls.toLocaleString('en-US')} full-ring retries (median run)` : '' };
  });
  withRatios(rows);
  return {
    rows,
    table: {
      id: `s9-threads-${mixName}`, unit: 'event', rows, columns: threadColumns(),
      title: `9c. ${mix.label} (mean ${Math.round(avg).toLocaleString('en-US')} B), 1 producer → 1 consumer thread, ${n.toLocaleString('en-US')} events per run, ${reps} run${reps > 1 ? 's' : ''}; rings of ${mib(mix.ringBytes)}`,
    },
  };
}

function threadColumns() {
  return [
    { head: 'implementation', get: (r) => (r.ref ? `**${r.name}**` : r.name) },
    { head: 'ns/event', get: (r) => fmtNs(r.ns), align: 'right' },
    { head: 'events/s', get: (r) => fmtRate(r.opsPerSec), align: 'right' },
    { head: 'GB/s', get: (r) => (r.gbPerSec === undefined ? '' : r.gbPerSec.toFixed(2)), align: 'right' },
    { head: 'time ÷ shard-mapper', get: (r) => fmtRatio(r.ratio), align: 'right' },
    { head: 'range (events/s)', get: (r) => `${fmtRate(r.loPerSec)} – ${fmtRate(r.hiPerSec)}`, align: 'right' },
    { head: 'note', get: (r) => r.note ?? '' },
  ];
}

// ---- the scenario --------------------------------------------------------------------------------

export async function run(profile) {
  const baseline = await loadFixedRing();
  if (baseline.skipped) console.log(`${baseline.skipped} Scenario 9 reports byte rings alone.`);
  const fixedRing = baseline.lib;
  const memRows = await memory(fixedRing);
  const sp = await speed(profile, fixedRing);
  const web = await threads(profile, 'web');
  const small = await threads(profile, 'small');
  const mine = memRows[0];
  const fixed = memRows.find((r) => r.id === 'fixed');
  const goals = [
    goal({ id: 'bytes-memory', issue: '#14', text: '4 shards × 4096 mixed-size records in flight: memoryBytes ≤ 64 MiB',
      value: mine.memoryBytes / MiB, target: 64, op: '<=', unit: 'MiB',
      detail: `ringBufferBytes ${mib(mine.ringBytes)}; the fixed-record ring at maxPayloadBytes 64 KiB: ${!fixed ? 'not built here' : Number.isFinite(fixed.memoryBytes) ? mib(fixed.memoryBytes) : `${mib(SHARDS * fixed.layoutBytes)} of rings (layout)`}` }),
  ];
  for (const kind of ['push', 'pushFixed']) {
    const r = sp.ratios[kind];
    if (!r) continue; // no fixed-record ring here: nothing to compare with
    goals.push(goal({ id: `bytes-${kind}-16`, issue: '#14', text: `${kind} 16 B, one thread: byte rings within 5 % of the fixed-record ring`,
      value: r.median, target: 1.05, op: '<=',
      detail: `byte rings ÷ fixed, median of ${sp.blocks} blocks ${fmtRatio(r.median)} (range ${fmtRatio(r.lo)} – ${fmtRatio(r.hi)})` }));
  }
  return {
    intro: `${baseline.skipped ? `${baseline.skipped} ` : ''}Byte rings against the fixed-record ring they replaced (the previous build, commit fc0008f, built from git history by bench/fixed-ring-build.mjs), in this one process. `
      + `9a fills 4 shards with ${CAPACITY} records each (seeded sizes, ${MIXES.web.label}), consuming none (failProducer; every record is checked in), and reads manager.memoryBytes. `
      + `9b times 16-byte push and pushFixed(${RUN}) of both builds in ${sp.blocks} block${sp.blocks > 1 ? 's' : ''}, each compiling every task anew and running the four interleaved (${sp.calls} timed calls of ${RUN} events each after a warm-up; rings emptied untimed); a row is the median block, with the fastest and slowest block as its range; the ratio is taken within each block. `
      + '9c moves mixed-size events from the main thread to one consumer thread, timed from the first push to the last event consumed; runs interleaved, the median run reported with the slowest and fastest as the range. ringbuf.js carries bytes, not messages: each event goes in as a 4-byte length and its payload, and its consumer walks the frames.',
    tables: [
      { id: 's9-memory', title: `9a. Memory, ${SHARDS} shards × ${CAPACITY} records in flight (${MIXES.web.label}; maxPayloadBytes 64 KiB)`, unit: 'shard', rows: memRows, columns: memoryColumns(),
        legend: `Bytes per shard: 512 B header + ${DESCRIPTOR} B × ringBufferCapacity + ringBufferBytes for byte rings; 512 B + ringBufferCapacity × (8 B + maxPayloadBytes) for fixed records (each rounded up to 128 B). memoryBytes adds the manager's tables and thread lanes.` },
      { id: 's9-push', title: `9b. push and pushFixed, 16 B, one thread, 4 shards, per event (byte rings vs the fixed-record ring)`, unit: 'event', rows: sp.rows, columns: speedColumns() },
      web.table,
      small.table,
    ],
    goals,
  };
}
