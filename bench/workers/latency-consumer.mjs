// Latency consumers (bench scenario 10). Every event's first 8 bytes are the producer's
// process.hrtime.bigint() at push, as a float64 (ns; exact below 2^53); the consumer records
// now − that for each event and, asked over a BroadcastChannel, hands its samples over.
//   - default export: a shard-mapper batch consumer (options.consumer.module, batch: true);
//   - started as a plain worker with workerData.kind 'ringbuf' or 'postMessage': the
//     ringbuf.js consumer of scenario 4 (polls, then 1 ms sleeps) or a postMessage listener.
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { RingBuffer } from 'ringbuf.js';

const MAX_SAMPLES = 1 << 21;
const samples = new Float64Array(MAX_SAMPLES);
let count = 0;
const stampOf = (view, at) => view.getFloat64(at, true);
const record = (sentNs) => {
  if (count < MAX_SAMPLES) samples[count++] = Number(process.hrtime.bigint()) - sentNs;
};

const channel = new BroadcastChannel('shard-mapper-bench-latency');
channel.onmessage = (e) => {
  if (e.data?.type !== 'report') return;
  channel.postMessage({ type: 'samples', id: e.data.id, samples: samples.slice(0, count) });
  count = 0;
};
(channel).unref?.();

export default function consume(batch) {
  const { bytes, offsets, length } = batch;
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  for (let i = 0; i < length; i++) record(stampOf(view, offsets[i]));
}

if (!isMainThread && workerData?.kind === 'ringbuf') {
  const { sab, ctlSab, size, batch } = workerData;
  const ctl = new Int32Array(ctlSab); // [0] stop, [1] wake generation
  const rb = new RingBuffer(sab, Uint8Array);
  const buf = new Uint8Array(batch * size);
  const view = new DataView(buf.buffer);
  let idle = 0;
  parentPort.postMessage({ type: 'ready' });
  const loop = () => {
    for (let spins = 0; spins < 1 << 16; spins++) {
      let n = Math.floor(rb.available_read() / size);
      if (n > 0) {
        if (n > batch) n = batch;
        rb.pop(buf, n * size);
        for (let k = 0; k < n; k++) record(stampOf(view, k * size));
        idle = 0;
      } else {
        if (Atomics.load(ctl, 0) !== 0) { channel.close(); return; }
        if (++idle > 4096) { Atomics.wait(ctl, 1, Atomics.load(ctl, 1), 1); idle = 0; }
      }
    }
    setImmediate(loop); // let the BroadcastChannel's report request in
  };
  loop();
} else if (!isMainThread && workerData?.kind === 'postMessage') {
  parentPort.on('message', (m) => {
    if (m instanceof Uint8Array) record(stampOf(new DataView(m.buffer, m.byteOffset), 0));
    else if (m?.type === 'stop') { channel.close(); parentPort.close(); }
  });
  parentPort.postMessage({ type: 'ready' });
}
