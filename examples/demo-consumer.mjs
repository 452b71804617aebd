// Demo consumer (runs in the manager's worker threads). Simulates a downstream write per
// batch (DEMO_BATCH_MS of I/O wait) and checks that each producer's events arrive in order
// within a shard. Reports its counts to the demo over a BroadcastChannel.
const channel = new BroadcastChannel('shard-mapper-demo');
const batchMs = Number(process.env.DEMO_BATCH_MS ?? 2);
const lastSeq = new Map(); // `${shard}:${producer}` → last sequence number

export default async function consume(records, shardId) {
  let outOfOrder = 0;
  for (const r of records) {
    const producer = r[0] | (r[1] << 8);
    const seq = (r[4] | (r[5] << 8) | (r[6] << 16) | (r[7] << 24)) >>> 0;
    const key = `${shardId}:${producer}`;
    const last = lastSeq.get(key);
    if (last !== undefined && seq <= last) outOfOrder++;
    lastSeq.set(key, seq);
  }
  await new Promise((resolve) => setTimeout(resolve, batchMs));
  channel.postMessage({ consumed: records.length, outOfOrder });
}
