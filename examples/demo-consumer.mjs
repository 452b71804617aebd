// Demo consumer thread (started by the demo through options.consumer.worker). Simulates a
// downstream write per batch (DEMO_BATCH_MS of I/O wait) and checks the order of every key:
// each event is [producer u16][key u16][seq u32][filler], seq counting that key's events.
//  - per shard: within one shard a key's events arrive in push order (every routing mode);
//  - across shards: `next` (shared by every consumer thread) holds the next seq each key
//    should see, so an event consumed after a later one of its key is counted wherever it
//    was consumed. Only routing 'affinity' keeps that order when a key's shard changes.
// Reports its counts to the demo over a BroadcastChannel.
import { workerData } from 'node:worker_threads';
import { serveConsumer } from 'shard-mapper/worker';

const channel = new BroadcastChannel('shard-mapper-demo');
const batchMs = Number(process.env.DEMO_BATCH_MS ?? 2);
const { keysPerProducer, next: nextBuffer } = workerData;
const next = new Int32Array(nextBuffer); // producer · keysPerProducer + key → next seq
const lastInShard = new Map(); // shard → Int32Array like `next`, the last seq seen there

serveConsumer(async (records, shardId) => {
  let outOfOrder = 0;
  let outOfKeyOrder = 0;
  let seen = lastInShard.get(shardId);
  if (!seen) lastInShard.set(shardId, seen = new Int32Array(next.length).fill(-1));
  for (const r of records) {
    const producer = r[0] | (r[1] << 8);
    const key = r[2] | (r[3] << 8);
    const seq = (r[4] | (r[5] << 8) | (r[6] << 16) | (r[7] << 24)) >>> 0;
    const at = producer * keysPerProducer + key;
    if (seq <= seen[at]) outOfOrder++;
    seen[at] = seq;
    if (seq < Atomics.load(next, at)) outOfKeyOrder++;
    else Atomics.store(next, at, seq + 1);
  }
  await new Promise((resolve) => setTimeout(resolve, batchMs));
  channel.postMessage({ consumed: records.length, outOfOrder, outOfKeyOrder });
}).then(() => channel.close());
