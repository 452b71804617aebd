// The README's "Streams" snippet, run by test/readme-examples.test.ts. Before the region: a
// manager whose shard 0 takes every event (no consumer threads: batches() polls), a Node
// source and a WHATWG source. `handle` closes the manager once every event came back, which
// ends the batches() loop.
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { ShardManager } from 'shard-mapper';

const manager = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 1024 });
const shardId = manager.mapper.activeShardIds()[0];
const event = (i) => ({ key: `user-${i}`, payload: `event ${i}` });
const source = Readable.from(Array.from({ length: 300 }, (_, i) => event(i)));
const readable = ReadableStream.from(Array.from({ length: 200 }, (_, i) => event(300 + i)));
const seen = [];
const handle = (batch) => {
  for (const record of batch) seen.push(new TextDecoder().decode(record));
  if (seen.length === 500) void manager.close();
};
// #region readme
import { pipeline } from 'node:stream/promises';

await pipeline(source, manager.writable({ highWaterMark: 64 }));   // Node: object-mode { key, payload }
await readable.pipeTo(manager.writableStream());                   // WHATWG streams: browsers, Node, Deno
for await (const batch of manager.batches(shardId, { max: 256 })) handle(batch); // poll users
// #endregion readme

assert.deepEqual(seen, Array.from({ length: 500 }, (_, i) => `event ${i}`), 'every event, in the order written');
console.log('streams: ok', seen.length);
