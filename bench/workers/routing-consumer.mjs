// Consumer of bench scenario 7b (runs in ShardManager's worker threads): the demo's
// simulated downstream write, a fixed wait per batch (BENCH_BATCH_MS, default 2 ms).
const batchMs = Number(process.env.BENCH_BATCH_MS ?? 2);

export default async function consume() {
  await new Promise((resolve) => setTimeout(resolve, batchMs));
}
