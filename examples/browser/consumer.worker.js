// A consumer Web Worker the page starts itself (options.consumer.worker): the bundler sees
// `new Worker(new URL('./consumer.worker.js', import.meta.url), ...)` in main.js and bundles
// this file with its imports. serveConsumer may come after an await (it asks the page for
// its start-up data; see late-consumer.worker.js).
import { serveConsumer } from 'shard-mapper/worker';

const decoder = new TextDecoder();
const report = new BroadcastChannel('shard-mapper-example');

serveConsumer((records, shardId) => {
  let sum = 0;
  let bad = 0;
  for (const record of records) {
    // The records are views into shared memory: Chrome's TextDecoder refuses those, so copy.
    const text = decoder.decode(record.slice());
    const m = /^event:(\d+)$/.exec(text);
    if (m) sum += Number(m[1]);
    else bad++;
  }
  report.postMessage({ from: 'worker', shardId, count: records.length, sum, bad });
});
