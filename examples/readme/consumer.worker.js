// The README's Web Worker consumer ("In the browser"), started by ./main.js. `handle` stands
// in for the application: it checks that the record decodes to what main.js pushed.
const handle = (shardId, text) => { if (text !== 'clicked' || !(shardId >= 0)) throw new Error(`unexpected record ${text}`); };
// #region readme
// consumer.worker.js — call serveConsumer at the top level, before any await
import { serveConsumer } from 'shard-mapper/worker';
const decoder = new TextDecoder();
serveConsumer((records, shardId) => {
  // Records are views of shared memory; Chrome's TextDecoder refuses those: copy first.
  for (const r of records) handle(shardId, decoder.decode(r.slice()));
});
// #endregion readme
