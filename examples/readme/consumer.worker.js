// The README's Web Worker consumer ("In the browser"), started by ./main.js, which checks that
// the event was acknowledged.
// #region readme
// consumer.worker.js — call serveConsumer once (after an await is fine)
import { serveConsumer } from 'shard-mapper/worker';
const decoder = new TextDecoder();
const handle = (shardId, text) => console.log(`shard ${shardId}: ${text}`); // your application
serveConsumer((records, shardId) => {
  // Records are views of shared memory; Chrome's TextDecoder refuses those: copy first.
  for (const r of records) handle(shardId, decoder.decode(r.slice()));
});
// #endregion readme
