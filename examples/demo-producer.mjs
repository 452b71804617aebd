// Demo producer thread: pushes at the rate the main thread sets in shared memory, retrying
// (never dropping) when a ring is full. Payload: [producer u16][0 u16][seq u32][filler], of
// payloadBytes, or of a size between minPayload and payloadBytes that varies with seq.
import { parentPort, workerData } from 'node:worker_threads';
import { ShardProducer, BackpressureError } from 'shard-mapper';

const { handle, producer, minPayload = workerData.payloadBytes, payloadBytes, control, counters } = workerData;
const ctl = new Int32Array(control); // [0] events/s for this producer, [1] stop flag
const count = new Float64Array(counters); // [2·producer] accepted, [2·producer + 1] refused
const p = await ShardProducer.attach(handle);
const payload = new Uint8Array(payloadBytes);
const view = new DataView(payload.buffer);
view.setUint16(0, producer, true);
for (let i = 8; i < payloadBytes; i++) payload[i] = i & 0xff;

const SLICE_MS = 5;
let seq = 0;
let refused = 0;
while (Atomics.load(ctl, 1) === 0) {
  const began = performance.now();
  const quota = Math.round((Atomics.load(ctl, 0) * SLICE_MS) / 1000);
  for (let i = 0; i < quota && Atomics.load(ctl, 1) === 0; ) {
    view.setUint32(4, seq, true);
    try {
      const size = minPayload === payloadBytes ? payloadBytes : minPayload + (Math.imul(seq + 1, 2246822519) >>> 0) % (payloadBytes - minPayload + 1);
      if (p.push((Math.imul(seq, 2654435761) ^ producer) >>> 0, size === payloadBytes ? payload : payload.subarray(0, size))) { seq++; i++; }
    } catch (error) {
      if (!(error instanceof BackpressureError)) throw error;
      refused++;
      await new Promise((r) => setTimeout(r, 1)); // back off; the event is pushed again
    }
  }
  count[2 * producer] = seq;
  count[2 * producer + 1] = refused;
  const rest = SLICE_MS - (performance.now() - began);
  await new Promise((r) => setTimeout(r, Math.max(0, rest)));
}
p.detach();
parentPort.postMessage({ accepted: seq, refused });
