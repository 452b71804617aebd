// Producer of bench scenario 7b: the demo's producer thread. Pushes at the rate the main
// thread sets in shared memory (ctl[0] events/s), in 5 ms slices; a full ring (failProducer)
// makes it back off 1 ms and push the same event again, so nothing is lost.
import { parentPort, workerData } from 'node:worker_threads';
import { ShardProducer, BackpressureError } from 'shard-mapper';

const { handle, producer, payloadBytes, control } = workerData;
const ctl = new Int32Array(control); // [0] events/s for this producer, [1] stop flag
const p = await ShardProducer.attach(handle);
const payload = new Uint8Array(payloadBytes);
const view = new DataView(payload.buffer);
view.setUint16(0, producer, true);

const SLICE_MS = 5;
let seq = 0;
let refused = 0;
while (Atomics.load(ctl, 1) === 0) {
  const began = performance.now();
  const quota = Math.round((Atomics.load(ctl, 0) * SLICE_MS) / 1000);
  for (let i = 0; i < quota && Atomics.load(ctl, 1) === 0; ) {
    view.setUint32(4, seq, true);
    try {
      if (p.push((Math.imul(seq, 2654435761) ^ producer) >>> 0, payload)) { seq++; i++; }
    } catch (error) {
      if (!(error instanceof BackpressureError)) throw error;
      refused++;
      await new Promise((r) => setTimeout(r, 1));
    }
  }
  const rest = SLICE_MS - (performance.now() - began);
  await new Promise((r) => setTimeout(r, Math.max(0, rest)));
}
p.detach();
parentPort.postMessage({ accepted: seq, refused });
