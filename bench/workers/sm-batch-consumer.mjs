// shard-mapper batch consumer module (options.consumer.batch: true): the same work as
// sm-consumer.mjs — the first and last byte of every record — read through the batch's
// offsets and lengths, with no view made per record.
let x = 0;
export default function consume(batch) {
  const { bytes, offsets, lengths, length } = batch;
  for (let i = 0; i < length; i++) {
    const o = offsets[i];
    x = (x + bytes[o] + bytes[o + lengths[i] - 1]) | 0;
  }
}
export function checksum() {
  return x;
}
