// A producer node process for bench scenario 8's end-to-end rows: waits for 'go', pushes
// `count` 64-byte events (retrying refusals), flushes, reports, closes.
// argv: url namespace count
import { BackpressureError } from 'shard-mapper';
import { RedisShardManager } from 'shard-mapper/redis';

const [url, namespace, count] = process.argv.slice(2);
const n = Number(count);
const node = await RedisShardManager.create({ redis: url, namespace, controller: false });
const payload = new Uint8Array(64).fill(7);
process.on('disconnect', () => process.exit(1)); // the parent is gone: so are we
process.on('message', async (m) => {
  if (m !== 'go') return;
  let refused = 0;
  for (let i = 0; i < n; i++) {
    const hash = Math.imul(i + 1 + process.pid * 7919, 2654435761) >>> 0;
    for (;;) {
      try { if (node.push(hash, payload)) break; } catch (e) { if (!(e instanceof BackpressureError)) throw e; }
      refused++;
      await new Promise((r) => setTimeout(r, 1));
    }
    if ((i & 4095) === 4095) await new Promise((r) => setImmediate(r));
  }
  await node.flush();
  process.send({ type: 'done', refused }, async () => { await node.close(); process.exit(0); });
});
process.send({ type: 'ready' });
