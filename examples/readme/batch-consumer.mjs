// The README's RecordBatch consumer (section "Consumers"), loaded on worker threads by
// ./batch-consumer.run.mjs.
// #region readme
// batch-consumer.mjs — runs in a worker thread, started with consumer: { module, batch: true }
const jsonBytes = new Map();                           // module state: one per consumer thread
export default function consume(batch, shardId) {
  const { bytes, offsets, lengths, length } = batch;  // bytes: the whole shared memory
  let sum = 0;
  for (let i = 0; i < length; i++) {
    const at = offsets[i];                            // record i is bytes[at … at + lengths[i])
    if (bytes[at] === 0x7b) sum += lengths[i];        // '{': read in place, no copy, no view per record
  }
  jsonBytes.set(shardId, (jsonBytes.get(shardId) ?? 0) + sum);
}
// #endregion readme
