// Scenario 3 — ring push/pop on one thread, 16-byte records: shard-mapper (a ShardManager with
// no consumer threads, the honest user path: push, then poll, which copies records out)
// against ringbuf.js, denque and a JS array used as a queue.
import Denque from 'denque';
import { RingBuffer } from 'ringbuf.js';
import { ShardManager } from 'shard-mapper';
import { randomHashes } from './baselines.mjs';
import { measureOps, withRatios, consume, check } from './lib.mjs';

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
  const stats = mgr.stats();
  check(stats.pushed === stats.delivered && stats.dropped === 0 && stats.pushed >= counted.pushed, `every pushed record was polled (${stats.pushed} pushed, ${stats.delivered} delivered)`);
  check(rb.available_read() === 0 && dq.length === 0 && arr.length === 0, 'baselines drained');
  consume(counted.popped);
  await mgr.close();
  return {
    tables: [{ id: 's3', title: '3. One thread, 16-byte records, per event (push + pop)', unit: 'event', rows,
      legend: 'shard-mapper and ringbuf.js copy the bytes in and out of shared memory (usable across threads); denque and the array only move references within one thread.' }],
  };
}
