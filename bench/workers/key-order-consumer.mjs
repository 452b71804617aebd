// Consumer thread of bench scenario 11 (options.consumer.worker). Each batch takes a ticket
// from a counter every consumer thread shares before it is acknowledged (a later ticket:
// consumed later), and reports its events as (key, seq, push-to-consume ms) with it; then it
// waits batchMs, the demo's simulated downstream write.
import { workerData } from 'node:worker_threads';
import { serveConsumer } from 'shard-mapper/worker';

const { channel: name, tickets, batchMs } = workerData;
const ticket = new Int32Array(tickets);
const channel = new BroadcastChannel(name);
serveConsumer(async (records, shardId) => {
  const t = Atomics.add(ticket, 0, 1);
  const now = performance.timeOrigin + performance.now();
  const data = new Float64Array(records.length * 3);
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    const v = new DataView(r.buffer, r.byteOffset, r.byteLength);
    data[3 * i] = v.getUint32(0, true);
    data[3 * i + 1] = v.getUint32(4, true);
    data[3 * i + 2] = now - v.getFloat64(8, true);
  }
  channel.postMessage({ ticket: t, shardId, now, data });
  if (batchMs > 0) await new Promise((r) => setTimeout(r, batchMs));
}).then(() => channel.close());
