// A consumer Web Worker that serves only after a while (as one that loads its config first
// would): the page's first message came before it listened and was dropped, so serveConsumer
// asks the page for its start-up data again.
import { serveConsumer } from 'shard-mapper/worker';

const report = new BroadcastChannel('shard-mapper-example');
setTimeout(() => {
  serveConsumer((records, shardId) => {
    report.postMessage({ from: 'late', shardId, count: records.length, sum: 0, bad: 0 });
  });
}, 300);
