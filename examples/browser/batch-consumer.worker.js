// A batch consumer Web Worker (serveConsumer(fn, { batch: true })): each call gets one
// RecordBatch — the shard's records as offsets and lengths into the shared memory, no view per
// record. Reads the number out of each "event:<n>" payload straight from the bytes (no
// TextDecoder, which refuses shared memory in Chrome), checks the filler of an
// "event:<n>|<filler>" payload, and reports the numbers in batch order. A batch holding an
// "event:<n>|hold" payload is held until the page says 'release' (the page's fault test kills
// the worker holding it: a kill that provably hits a batch in flight).
import { serveConsumer } from 'shard-mapper/worker';

const report = new BroadcastChannel('shard-mapper-example');
const PREFIX = 'event:'.length;
const HOLD = [0x68, 0x6f, 0x6c, 0x64]; // "hold"
let released = () => {};
// `paceMs`: wait that long after each batch, so records gather and batches come fuller (the
// page's test needs some to straddle the payload area's end; one record never does)
let paceMs = 0;
report.addEventListener('message', (e) => {
  if (e.data.from === 'page' && e.data.release) released();
  if (e.data.from === 'page' && typeof e.data.paceMs === 'number') paceMs = e.data.paceMs;
});

serveConsumer((batch, shardId) => {
  const { bytes, offsets, lengths, length } = batch;
  const seqs = new Uint32Array(length);
  let bad = 0;
  let holdAt = -1;
  for (let i = 0; i < length; i++) {
    let n = 0;
    const o = offsets[i];
    const end = o + lengths[i];
    if (bytes[o] !== 0x65 /* e */ || lengths[i] <= PREFIX) bad++;
    let k = o + PREFIX;
    for (; k < end && bytes[k] !== 0x7c /* | */; k++) n = n * 10 + (bytes[k] - 0x30);
    const hold = end - k === 5 && HOLD.every((c, j) => bytes[k + 1 + j] === c);
    if (hold) holdAt = n;
    // "event:<n>|" may be followed by filler: every byte is the digit n % 10
    else for (k++; k < end; k++) if (bytes[k] !== 0x30 + (n % 10)) { bad++; break; }
    seqs[i] = n;
  }
  const done = () => report.postMessage({ from: 'batch', shardId, seqs, bad, wrapped: batch.regionCount === 2 });
  if (holdAt < 0) {
    done();
    return paceMs > 0 ? new Promise((resolve) => setTimeout(resolve, paceMs)) : undefined;
  }
  // Hold the batch (unacknowledged, the event loop still turning) until the page releases it.
  report.postMessage({ from: 'batch-hold', shardId, seq: holdAt });
  return new Promise((resolve) => {
    released = () => {
      done();
      resolve();
    };
  });
}, { batch: true });
