// The README's "Across machines" snippet, run by test/readme-examples.test.ts with REDIS_URL
// set to a redis-server it started on 127.0.0.1. Before the region: the events and a `db`
// that stands in for the application's database. After it: a bounded wait until the
// consumers stored every event, then the SIGTERM that closes both sides.
import assert from 'node:assert/strict';

const events = Array.from({ length: 40 }, (_, i) => ({ key: `order-${i % 7}`, payload: `event ${i}` }));
const moreEvents = Array.from({ length: 60 }, (_, i) => ({ key: `order-${i % 5}`, payload: `event ${40 + i}` }));
const stored = new Map(); // dedupId → payload
const db = { async upsert(id, payload) { stored.set(id, payload.toString()); } };
// #region readme
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { RedisShardManager, serveShardConsumers } from 'shard-mapper/redis';
// Yours: `events` and `moreEvents` (iterables of { key, payload }), `db` (your database).

const redis = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'; // or an ioredis Redis / Cluster instance
const node = await RedisShardManager.create({
  redis,
  namespace: 'orders', initialShards: 2, policy: { maxShards: 32 },
});
for (const e of events) await node.pushAsync(e.key, e.payload); // waits for room instead of throwing
await pipeline(Readable.from(moreEvents), node.writable());     // or from a stream
await node.flush();                       // every event accepted so far is stored in Redis

const consumers = await serveShardConsumers({
  redis, namespace: 'orders',
  consume: async (records) => {           // one shard's, in push order; repeats already skipped
    for (const r of records) await db.upsert(r.dedupId, r.payload); // idempotent by dedupId; throwing: the batch comes again
  },
});

// Both hold connections open until closed, so shut down when asked to:
process.once('SIGTERM', async () => {
  await consumers.close();                  // finishes the batch in hand, releases its shards
  await node.close({ timeoutMs: 10_000 });  // stores what is buffered (CloseTimeoutError past 10 s)
});
// #endregion readme

for (let waited = 0; stored.size < 100; waited += 20) {
  if (waited > 30_000) throw new Error(`the consumers stored ${stored.size} of 100 events in 30 s`);
  await new Promise((r) => setTimeout(r, 20));
}
assert.deepEqual([...stored.values()].sort(), Array.from({ length: 100 }, (_, i) => `event ${i}`).sort());
console.log('redis: ok', stored.size);
// The region's shutdown: once both are closed nothing keeps the process running (the test
// runs this file with a timeout, so a close that hangs, or a connection left open, fails it).
process.emit('SIGTERM');
