// Scenario 3 — ring push/pop on one thread, 16-byte records: shard-mapper (a ShardManager with
// no consumer threads, the honest user path: push, then poll, which copies records out)
// against ringbuf.js, denque and a JS array used as a queue.
import Denque from 'denque';
import { RingBuffer } from 'ringbuf.js';
import { ShardManager } from 'shard-mapper';
import { randomHashes } from '../shared/seeded-random.mjs';
import { measureOps, withRatios, consume, check, goal, row } from './lib.mjs';

export const id = 's3';
export const title = '3. Ring push/pop on one thread, 16-byte records';

const SIZE = 16;
const BURST = 256;
const OPS = 1024; // events per timed call (both variants)
const POOL = 1024;

export async function run(profile) {
  const mgr = await ShardManager.create({
    initialShards: 1, ringBufferCapacity: 4096, maxPayloadBytes: SIZE,
    policy: { autoScale: false, maxShards: 1 },
  });
  const payloads = Array.from({ length: POOL }, (_, i) => new Uint8Array(SIZE).fill((i * 7 + 1) & 0xff));
  const hashes = randomHashes(POOL, 5);
  const keys = Array.from(hashes);
  const rb = new RingBuffer(RingBuffer.getStorageForCapacity(4096 * SIZE, Uint8Array), Uint8Array);
  const rbOut = new Uint8Array(BURST * SIZE);
  const dq = new Denque();
  const arr = [];
  const counted = { pushed: 0, popped: 0 };

  // Warm check: a record comes back byte for byte.
  mgr.push(hashes[0], payloads[3]);
  const back = mgr.poll(0, 1);
  check(back.length === 1 && back[0].length === SIZE && back[0][0] === payloads[3][0], 'push/poll round trip');

  const E = { mgr, payloads, hashes, keys, rb, rbOut, dq, arr, counted, POOL, OPS, BURST, SIZE }; // see lib.fresh
  const tasks = [
    { id: 'sm-alt', name: 'shard-mapper push + poll(1), alternating', ref: true, ops: OPS, note: 'routed push (WASM) + poll copies out', env: E, fn: () => {
      let s = 0;
      for (let i = 0; i < OPS; i++) {
        mgr.push(hashes[i & (POOL - 1)], payloads[i & (POOL - 1)]);
        s += mgr.poll(0, 1)[0][0];
      }
      counted.pushed += OPS; counted.popped += OPS;
      return s;
    } },
    { id: 'sm-batch', name: `shard-mapper pushBatch(${BURST}) + poll(${BURST})`, ops: OPS, note: 'one WASM call per batch', env: E, fn: () => {
      let s = 0;
      for (let k = 0; k < OPS; k += BURST) {
        const base = k & (POOL - 1);
        const n = mgr.pushBatch(keys.slice(base, base + BURST), payloads.slice(base, base + BURST));
        const recs = mgr.poll(0, BURST);
        s += n + recs.length + recs[BURST - 1][SIZE - 1];
      }
      return s;
    } },
    { id: 'sm-burst', name: `shard-mapper push ×${BURST} + poll(${BURST})`, ops: OPS, env: E, fn: () => {
      let s = 0;
      for (let k = 0; k < OPS; k += BURST) {
        for (let i = 0; i < BURST; i++) mgr.push(hashes[(k + i) & (POOL - 1)], payloads[(k + i) & (POOL - 1)]);
        const recs = mgr.poll(0, BURST);
        s += recs.length + recs[BURST - 1][SIZE - 1];
      }
      return s;
    } },
    { id: 'ringbuf-alt', name: 'ringbuf.js push + pop, alternating', ops: OPS, note: 'SPSC byte ring on a SharedArrayBuffer', env: E, fn: () => {
      let s = 0;
      for (let i = 0; i < OPS; i++) {
        rb.push(payloads[i & (POOL - 1)]);
        s += rb.pop(rbOut, SIZE) + rbOut[0];
      }
      return s;
    } },
    { id: 'ringbuf-burst', name: `ringbuf.js push ×${BURST} + one pop of ${BURST}`, ops: OPS, env: E, fn: () => {
      let s = 0;
      for (let k = 0; k < OPS; k += BURST) {
        for (let i = 0; i < BURST; i++) rb.push(payloads[(k + i) & (POOL - 1)]);
        s += rb.pop(rbOut, BURST * SIZE) + rbOut[BURST * SIZE - 1];
      }
      return s;
    } },
    { id: 'denque-alt', name: 'denque push + shift, alternating', ops: OPS, note: 'stores references: no copy, one thread only', env: E, fn: () => {
      let s = 0;
      for (let i = 0; i < OPS; i++) {
        dq.push(payloads[i & (POOL - 1)]);
        s += dq.shift()[0];
      }
      return s;
    } },
    { id: 'denque-burst', name: `denque push ×${BURST} + shift ×${BURST}`, ops: OPS, note: 'references', env: E, fn: () => {
      let s = 0;
      for (let k = 0; k < OPS; k += BURST) {
        for (let i = 0; i < BURST; i++) dq.push(payloads[(k + i) & (POOL - 1)]);
        for (let i = 0; i < BURST; i++) s += dq.shift()[0];
      }
      return s;
    } },
    { id: 'array-alt', name: 'JS array push + shift, alternating', ops: OPS, note: 'references', env: E, fn: () => {
      let s = 0;
      for (let i = 0; i < OPS; i++) {
        arr.push(payloads[i & (POOL - 1)]);
        s += arr.shift()[0];
      }
      return s;
    } },
    { id: 'array-burst', name: `JS array push ×${BURST} + shift ×${BURST}`, ops: OPS, note: 'references', env: E, fn: () => {
      let s = 0;
      for (let k = 0; k < OPS; k += BURST) {
        for (let i = 0; i < BURST; i++) arr.push(payloads[(k + i) & (POOL - 1)]);
        for (let i = 0; i < BURST; i++) s += arr.shift()[0];
      }
      return s;
    } },
  ];
  const rows = withRatios(await measureOps(profile, tasks));
  const pushRows = await pushAlone(profile);
  const stats = mgr.stats();
  check(stats.pushed === stats.delivered && stats.dropped === 0 && stats.pushed >= counted.pushed, `every pushed record was polled (${stats.pushed} pushed, ${stats.delivered} delivered)`);
  check(rb.available_read() === 0 && dq.length === 0 && arr.length === 0, 'baselines drained');
  consume(counted.popped);
  await mgr.close();
  return {
    tables: [{ id: 's3', title: '3. One thread, 16-byte records, per event (push + pop)', unit: 'event', rows,
      legend: 'shard-mapper and ringbuf.js copy the bytes in and out of shared memory (usable across threads); denque and the array only move references within one thread.' },
    { id: 's3b', title: `3b. push alone, one thread, per event (${PUSH_RUN} events per timed run; the ring is emptied after each, untimed)`, unit: 'event', rows: pushRows,
      legend: 'Only the producer side is timed: routing, reservation, the copy into the ring and the counters. The copy limit is one Uint8Array.set per event into a plain buffer.' }],
    goals: [goal({ id: 'push-16-one-thread', issue: '#12', text: 'push 16 B, one thread, per event ≤ 25 ns',
      value: row(pushRows, 'push-16').ns, target: 25, op: '<=', unit: 'ns',
      detail: `${row(pushRows, 'push-16').ns.toFixed(1)} ns = ${(row(pushRows, 'push-16').ns / row(pushRows, 'copy-16').ns).toFixed(2)}× one Uint8Array.set of 16 B (${row(pushRows, 'copy-16').ns.toFixed(1)} ns) in this run; pushFixed ${row(pushRows, 'pushFixed-16').ns.toFixed(1)} ns; ringbuf.js push ${row(pushRows, 'ringbuf-16').ns.toFixed(1)} ns` })],
  };
}

const PUSH_RUN = 1024;

/** push timed alone: PUSH_RUN events into a 4-shard manager, then its rings emptied (untimed). */
async function pushAlone(profile) {
  const rows = [];
  for (const size of [16, 256]) {
    const m = await ShardManager.create({
      initialShards: 4, ringBufferCapacity: 4096, maxPayloadBytes: size, backpressure: { kind: 'dropNewest' },
      policy: { autoScale: false, maxShards: 4 },
    });
    const ids = m.mapper.activeShardIds();
    const payloads = Array.from({ length: POOL }, (_, i) => new Uint8Array(size).fill((i * 7 + 1) & 0xff));
    const block = new Uint8Array(PUSH_RUN * size);
    for (let i = 0; i < PUSH_RUN; i++) block.set(payloads[i & (POOL - 1)], i * size);
    const hashes = randomHashes(1 << 16, 23);
    const rb = new RingBuffer(RingBuffer.getStorageForCapacity(4096 * size, Uint8Array), Uint8Array);
    const rbOut = new Uint8Array(4096 * size);
    const dst = new Uint8Array(PUSH_RUN * size);
    const cur = { at: 0, drops: 0, taken: 0 };
    const drain = () => { for (const id of ids) while (m.pollBatch(id, (b) => { cur.taken += b.length; }) > 0); };
    const E = { m, ids, payloads, block, hashes, rb, rbOut, dst, cur, drain, PUSH_RUN, POOL, size };
    const tasks = [
      { id: `push-${size}`, name: `shard-mapper push, ${size} B`, ref: size === 16, ops: PUSH_RUN, selfTimed: true, env: E, fn: () => {
        const at = cur.at;
        const t0 = performance.now();
        for (let i = 0; i < PUSH_RUN; i++) if (!m.push(hashes[(at + i) & 0xffff], payloads[i & (POOL - 1)])) cur.drops++;
        const dt = performance.now() - t0;
        cur.at = (at + PUSH_RUN) & 0xffff;
        drain();
        return dt;
      } },
      { id: `pushFixed-${size}`, name: `shard-mapper pushFixed(${PUSH_RUN}), ${size} B`, ops: PUSH_RUN, selfTimed: true, env: E, fn: () => {
        const at = cur.at & ~(PUSH_RUN - 1);
        const t0 = performance.now();
        const n = m.pushFixed(hashes.subarray(at, at + PUSH_RUN), block, size);
        const dt = performance.now() - t0;
        cur.drops += PUSH_RUN - n;
        cur.at = (at + PUSH_RUN) & 0xffff;
        drain();
        return dt;
      } },
      { id: `ringbuf-${size}`, name: `ringbuf.js push, ${size} B`, ops: PUSH_RUN, selfTimed: true, note: 'one SPSC ring, no routing', env: E, fn: () => {
        const t0 = performance.now();
        for (let i = 0; i < PUSH_RUN; i++) rb.push(payloads[i & (POOL - 1)]);
        const dt = performance.now() - t0;
        rb.pop(rbOut);
        return dt;
      } },
      { id: `copy-${size}`, name: `copy limit: Uint8Array.set, ${size} B`, ops: PUSH_RUN, selfTimed: true, note: 'into a plain buffer', env: E, fn: () => {
        const t0 = performance.now();
        for (let i = 0; i < PUSH_RUN; i++) dst.set(payloads[i & (POOL - 1)], i * size);
        return performance.now() - t0 + (dst[7] & 0) * 0;
      } },
    ];
    rows.push(...(await measureOps(profile, tasks)));
    const s = m.stats();
    check(cur.drops === 0 && s.pushed === s.delivered && s.delivered === cur.taken, `push alone (${size} B): nothing dropped, everything taken (${s.pushed} pushed, ${cur.taken} taken)`);
    await m.close();
  }
  return withRatios(rows);
}
