// postMessage consumer thread: receives one event per message (a Uint8Array) or a batch
// ({ n, size, buf } with the events back to back, transferred), touches the first and last
// byte of each event, and publishes how many it consumed.
import { parentPort, workerData } from 'node:worker_threads';

const { ctlSab, index } = workerData;
const ctl = new Int32Array(ctlSab); // [2 + i] consumed by consumer i
let x = 0;
parentPort.on('message', (m) => {
  if (m instanceof Uint8Array) {
    x = (x + m[0] + m[m.length - 1]) | 0;
    Atomics.add(ctl, 2 + index, 1);
  } else if (m.type === 'batch') {
    const b = new Uint8Array(m.buf);
    const { n, size } = m;
    for (let k = 0; k < n; k++) x = (x + b[k * size] + b[k * size + size - 1]) | 0;
    Atomics.add(ctl, 2 + index, n);
  } else if (m.type === 'stop') {
    parentPort.postMessage({ type: 'done', checksum: x });
    parentPort.close();
  }
});
parentPort.postMessage({ type: 'ready' });
