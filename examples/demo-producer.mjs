// Demo producer thread: pushes at the rate the main thread sets in shared memory, never
// dropping. Each event belongs to one of `keysPerProducer` keys of this producer:
// [producer u16][key u16][seq u32][filler], seq counting that key's events, of payloadBytes,
// or of a size between minPayload and payloadBytes that varies with the event's number.
// A full ring: back off 1 ms and offer the same event again. A key that is moving (routing
// affinity: its shard changed and it waits for the old shard's consumer): go on with other
// keys; that key's next event is offered again the next time the key comes up, so each key's
// events still go out in order and the producer does not stall on one key.
import { parentPort, workerData } from 'node:worker_threads';
import { ShardProducer, BackpressureError } from 'shard-mapper';
import { paceCredit } from './demo-shared.mjs';

const { handle, producer, minPayload = workerData.payloadBytes, payloadBytes, control, counters, keysPerProducer = 1024 } = workerData;
const ctl = new Int32Array(control); // [0] events/s for this producer, [1] stop flag
const count = new Float64Array(counters); // [2·producer] accepted, [2·producer + 1] refused
const p = await ShardProducer.attach(handle);
const payload = new Uint8Array(payloadBytes);
const view = new DataView(payload.buffer);
view.setUint16(0, producer, true);
for (let i = 8; i < payloadBytes; i++) payload[i] = i & 0xff;

/** A key's hash: murmur3's finalizer over (producer, key), so keys spread over the table. */
const hashOf = (key) => {
  let h = Math.imul(producer + 1, 0x10000) + key;
  h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b); h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35); h ^= h >>> 16;
  return h >>> 0;
};
const keySeq = new Uint32Array(keysPerProducer);
const SLICE_MS = 5;
let seq = 0; // events accepted
let refused = 0;
let moving = 0; // of which the key was moving (routing affinity)
let pick = 0; // draws of a key (one per attempt)
let movingInARow = 0;
let credit = 0; // events owed to the rate the main thread asks for (see paceCredit)
let last = performance.now();
while (Atomics.load(ctl, 1) === 0) {
  const began = performance.now();
  credit = paceCredit(credit, Atomics.load(ctl, 0), began - last);
  last = began;
  const quota = Math.floor(credit);
  let i = 0;
  for (; i < quota && Atomics.load(ctl, 1) === 0; ) {
    const key = (Math.imul(pick + 1, 2654435761) >>> 0) % keysPerProducer;
    view.setUint16(2, key, true);
    view.setUint32(4, keySeq[key], true);
    try {
      const size = minPayload === payloadBytes ? payloadBytes : minPayload + (Math.imul(seq + 1, 2246822519) >>> 0) % (payloadBytes - minPayload + 1);
      if (p.push(hashOf(key), size === payloadBytes ? payload : payload.subarray(0, size))) { keySeq[key]++; seq++; i++; pick++; movingInARow = 0; }
    } catch (error) {
      if (!(error instanceof BackpressureError)) throw error;
      refused++;
      if (error.reason === 'moving') {
        moving++;
        pick++; // another key next
        if (++movingInARow < 64) continue;
        movingInARow = 0;
      }
      await new Promise((r) => setTimeout(r, 1)); // back off; the event is pushed again
    }
  }
  credit -= i;
  count[2 * producer] = seq;
  count[2 * producer + 1] = refused;
  const rest = SLICE_MS - (performance.now() - began);
  await new Promise((r) => setTimeout(r, Math.max(0, rest)));
}
p.detach();
parentPort.postMessage({ accepted: seq, refused, moving });
