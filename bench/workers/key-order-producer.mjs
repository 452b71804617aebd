// Producer thread of bench scenario 11: pushes at the rate the main thread sets (events/s in
// control[0], stop flag control[1]) over the keys it owns (key % producers === producer).
// Each event is [key u32][seq u32][time f64]: seq counts that key's events, time is when the
// event was first offered (performance.timeOrigin + now, ms), kept across retries, so a
// push-to-consume latency includes any wait for a full ring or a moving key. A full ring:
// yield and offer the same event again. A moving key (routing affinity): go on with other
// keys; that key's event is offered again, with its first time, when the key comes up next.
import { parentPort, workerData } from 'node:worker_threads';
import { ShardProducer, BackpressureError } from 'shard-mapper';

const { handle, producer, producers, keys, control } = workerData;
const ctl = new Int32Array(control);
const p = await ShardProducer.attach(handle);
parentPort.postMessage({ ready: true });
const mine = [];
for (let k = producer; k < keys; k += producers) mine.push(k);
const next = new Uint32Array(keys);
const hashOf = (key) => Math.imul(key + 1, 0x9e3779b1) >>> 0;
const payload = new Uint8Array(16);
const view = new DataView(payload.buffer);
let state = (producer + 1) * 0x9e3779b1 >>> 0;
const random = () => { state = (Math.imul(state ^ (state >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0; return state / 2 ** 32; };
const SLICE_MS = 5;
let accepted = 0;
let full = 0;
let moving = 0;
let pending = -1; // a key whose event met a full ring: it is offered again first
const offeredAt = new Float64Array(keys).fill(NaN); // a moving key's event: when it was first offered
let movingInARow = 0;
while (Atomics.load(ctl, 1) === 0) {
  const began = performance.now();
  const quota = Math.round((Atomics.load(ctl, 0) * SLICE_MS) / 1000);
  for (let i = 0; i < quota && Atomics.load(ctl, 1) === 0;) {
    if (pending < 0) {
      pending = mine[Math.floor(random() * mine.length)];
      if (Number.isNaN(offeredAt[pending])) offeredAt[pending] = performance.timeOrigin + performance.now();
      view.setUint32(0, pending, true);
      view.setUint32(4, next[pending], true);
      view.setFloat64(8, offeredAt[pending], true);
    }
    try {
      if (!p.push(hashOf(pending), payload)) throw new Error('push returned false (unrouted?)');
      next[pending]++;
      offeredAt[pending] = NaN;
      pending = -1;
      accepted++;
      movingInARow = 0;
      i++;
    } catch (e) {
      if (!(e instanceof BackpressureError)) throw e;
      if (e.reason === 'moving') {
        moving++;
        pending = -1; // another key next; this one keeps its event (and its time) for later
        if (++movingInARow < 64) continue;
        movingInARow = 0;
      } else full++;
      await new Promise((r) => setImmediate(r)); // back off; the same event is offered again
    }
  }
  const rest = SLICE_MS - (performance.now() - began);
  if (rest > 0) await new Promise((r) => setTimeout(r, rest));
}
p.detach();
parentPort.postMessage({ accepted, full, moving });
