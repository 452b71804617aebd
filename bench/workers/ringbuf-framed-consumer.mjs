// ringbuf.js consumer thread for variable-size events. ringbuf.js moves bytes, not messages,
// so the producer frames each event as a 4-byte little-endian length and the payload. This
// thread pops whatever bytes are there (up to a chunk), walks the whole frames among them,
// touches the first and last payload byte of each (the work every bench consumer does), and
// keeps a trailing partial frame for the next pop. Idle handling as in ringbuf-consumer.mjs.
import { parentPort, workerData } from 'node:worker_threads';
import { RingBuffer } from 'ringbuf.js';

const { sab, ctlSab, index, chunk, maxPayload } = workerData;
const ctl = new Int32Array(ctlSab); // [0] stop, [1] wake generation, [2 + i] consumed by consumer i
const rb = new RingBuffer(sab, Uint8Array);
// room for a full chunk after the largest partial frame that can be left over
const buf = new Uint8Array(chunk + 4 + maxPayload);
let held = 0;
let x = 0;
let idle = 0;
parentPort.postMessage({ type: 'ready' });
for (;;) {
  const got = rb.pop(buf, Math.min(rb.available_read(), buf.length - held), held);
  if (got > 0) {
    held += got;
    let at = 0;
    let n = 0;
    while (held - at >= 4) {
      const len = buf[at] | (buf[at + 1] << 8) | (buf[at + 2] << 16) | (buf[at + 3] << 24);
      if (held - at - 4 < len) break; // its payload is still being pushed
      x = (x + buf[at + 4] + buf[at + 3 + len]) | 0;
      at += 4 + len;
      n++;
    }
    if (at > 0) { buf.copyWithin(0, at, held); held -= at; }
    if (n > 0) Atomics.add(ctl, 2 + index, n);
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
