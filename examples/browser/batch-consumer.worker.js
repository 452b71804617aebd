// A batch consumer Web Worker (serveConsumer(fn, { batch: true })): each call gets one
// RecordBatch — the shard's records as offsets and lengths into the shared memory, no view per
// record. Reads the number out of each "event:<n>" payload straight from the bytes (no
// TextDecoder, which refuses shared memory in Chrome), checks the filler of an
// "event:<n>|<filler>" payload, and reports the numbers in batch order.
import { serveConsumer } from 'shard-mapper/worker';

const report = new BroadcastChannel('shard-mapper-example');
const PREFIX = 'event:'.length;

serveConsumer((batch, shardId) => {
  const { bytes, offsets, lengths, length } = batch;
  const seqs = new Uint32Array(length);
  let bad = 0;
  for (let i = 0; i < length; i++) {
    let n = 0;
    const o = offsets[i];
    const end = o + lengths[i];
    if (bytes[o] !== 0x65 /* e */ || lengths[i] <= PREFIX) bad++;
    let k = o + PREFIX;
    for (; k < end && bytes[k] !== 0x7c /* | */; k++) n = n * 10 + (bytes[k] - 0x30);
    // "event:<n>|" may be followed by filler: every byte is the digit n % 10
    for (k++; k < end; k++) if (bytes[k] !== 0x30 + (n % 10)) { bad++; break; }
    seqs[i] = n;
  }
  report.postMessage({ from: 'batch', shardId, seqs, bad, wrapped: batch.regionCount === 2 });
}, { batch: true });
