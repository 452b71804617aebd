// ringbuf.js consumer thread: pops whole events (up to `batch` at a time) from its SPSC ring,
// touches the first and last byte of each, and publishes how many it consumed.
// ringbuf.js has no wake-up mechanism: an empty ring is polled, and after a while of
// emptiness the thread sleeps 1 ms at a time (the producer wakes it at the start of a run).
import { parentPort, workerData } from 'node:worker_threads';
import { RingBuffer } from 'ringbuf.js';

const { sab, ctlSab, index, size, batch } = workerData;
const ctl = new Int32Array(ctlSab); // [0] stop, [1] wake generation, [2 + i] consumed by consumer i
const rb = new RingBuffer(sab, Uint8Array);
const buf = new Uint8Array(batch * size);
let x = 0;
let idle = 0;
parentPort.postMessage({ type: 'ready' });
for (;;) {
  let n = Math.floor(rb.available_read() / size);
  if (n > 0) {
    if (n > batch) n = batch;
    rb.pop(buf, n * size);
    for (let k = 0; k < n; k++) x = (x + buf[k * size] + buf[k * size + size - 1]) | 0;
    Atomics.add(ctl, 2 + index, n);
    idle = 0;
  } else {
    if (Atomics.load(ctl, 0) !== 0) break;
    if (++idle > 4096) {
      Atomics.wait(ctl, 1, Atomics.load(ctl, 1), 1);
      idle = 0;
    }
  }
}
parentPort.postMessage({ type: 'done', checksum: x });
