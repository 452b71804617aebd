// A BullMQ Worker process for bench scenario 8's end-to-end rows: processes the jobs of
// queue `name` (each a 64-byte event, base64 in its data), touching the first and last
// byte as every consumer of the bench does, and reports its count to the parent every 10 ms.
// argv: port name concurrency
import { Worker } from 'bullmq';

const [port, name, concurrency] = process.argv.slice(2);
let processed = 0;
let x = 0;
const worker = new Worker(name, async (job) => {
  const b = Buffer.from(job.data.d, 'base64');
  x = (x + b[0] + b[b.length - 1]) | 0;
  processed++;
}, { connection: { host: '127.0.0.1', port: Number(port), maxRetriesPerRequest: null }, concurrency: Number(concurrency), autorun: false });
process.on('disconnect', () => process.exit(1)); // the parent is gone: so are we
const report = setInterval(() => process.send({ type: 'count', processed, x }), 10);
process.on('message', async (m) => {
  if (m === 'stop') {
    clearInterval(report);
    await worker.close();
    process.send({ type: 'stopped', processed, x }, () => process.exit(0));
  }
});
await worker.waitUntilReady();
process.send({ type: 'ready' });
void worker.run();
