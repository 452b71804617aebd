// shard-mapper consumer module (ShardManager options.consumer.module): touches the first and
// last byte of every record, the same work the baseline consumers do per event.
let x = 0;
export default function consume(records) {
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    x = (x + r[0] + r[r.length - 1]) | 0;
  }
}
export function checksum() {
  return x;
}
