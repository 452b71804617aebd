// A process of `npm run demo:redis`: a producer node or a consumer, told what to do over IPC.
// argv: node <url> <namespace> <index> <maxShards>   |   consumer <url> <namespace> <index>
import { BackpressureError } from 'shard-mapper';
import { RedisShardManager, serveShardConsumers } from 'shard-mapper/redis';

const [role, url, namespace, indexArg, maxShardsArg] = process.argv.slice(2);
const index = Number(indexArg);
const send = (m) => new Promise((resolve) => process.send(m, resolve));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
process.on('disconnect', () => process.exit(1)); // the demo is gone: so are we

if (role === 'node') {
  const decisions = [];
  const node = await RedisShardManager.create({
    redis: url, namespace, initialShards: 1, ringBufferCapacity: 4096,
    policy: { minShards: 1, maxShards: Number(maxShardsArg), fillRatioThreshold: 0.5, cooldownMs: 1500, scaleDownDelayMs: 3000, metricsWindowMs: 250 },
    onEvent: (e) => { if (e.type === 'scalingDecision') decisions.push(`${e.decision.kind}(${e.decision.count})`); },
  });
  let rate = 0;
  let stop = false;
  let seq = 0;
  let refused = 0;
  process.on('message', (m) => { if (m.rate !== undefined) rate = m.rate; if (m === 'stop') stop = true; });
  const status = setInterval(() => {
    void send({ type: 'status', index, stats: node.stats(), controller: node.isController, table: node.table(), decisions: decisions.splice(0) });
  }, 250);
  // Push at `rate` events/s in 10 ms steps; a refused push (failProducer) is retried.
  let last = performance.now();
  let owed = 0;
  while (!stop) {
    await sleep(10);
    const now = performance.now();
    owed += (rate * (now - last)) / 1000;
    last = now;
    for (; owed >= 1; owed--) {
      const payload = `${index}:${seq}`;
      try {
        if (node.push(`user-${seq % 10_000}`, payload)) seq++;
      } catch (e) {
        if (!(e instanceof BackpressureError)) throw e;
        refused++;
        break;
      }
    }
  }
  clearInterval(status);
  await node.close(); // everything accepted is stored first
  await send({ type: 'done', index, accepted: seq, refused, stats: node.stats() });
  process.exit(0);
}

if (role === 'consumer') {
  let work = [];
  const consumers = await serveShardConsumers({
    redis: url, namespace, leaseMs: 1500, batchSize: 16,
    consume: async (records, shardId) => {
      await sleep(records.length / 64); // a downstream write: ~1 ms per 64 events
      const pairs = new Array(records.length * 2);
      records.forEach((r, i) => { const [n, s] = r.payload.toString().split(':'); pairs[2 * i] = Number(n); pairs[2 * i + 1] = Number(s); });
      work.push({ shardId, pairs });
    },
  });
  const flushWork = async () => { const w = work; work = []; await send({ type: 'got', index, owned: consumers.owned(), work: w }); };
  const timer = setInterval(() => { void flushWork(); }, 200);
  process.on('message', async (m) => {
    if (m !== 'stop') return;
    clearInterval(timer);
    await consumers.close();
    await flushWork();
    await send({ type: 'done', index });
    process.exit(0);
  });
  await send({ type: 'ready', index });
}
