// A consumer module for options.consumer.module: the package's own worker imports it by URL
// and calls its default export. It is loaded as is (not bundled), so it imports nothing.
const decoder = new TextDecoder();
const report = new BroadcastChannel('shard-mapper-example');

export default function consume(records, shardId) {
  let sum = 0;
  let bad = 0;
  for (const record of records) {
    const m = /^event:(\d+)$/.exec(decoder.decode(record.slice()));
    if (m) sum += Number(m[1]);
    else bad++;
  }
  report.postMessage({ from: 'module', shardId, count: records.length, sum, bad });
}
