// A producer Web Worker: attaches to the manager's memory with the handle the page posts,
// pushes events straight into the shared rings (no postMessage per event), then detaches.
import { ShardProducer, BackpressureError } from 'shard-mapper';

self.onmessage = async ({ data: { handle, from, to } }) => {
  const producer = await ShardProducer.attach(handle);
  let retries = 0;
  for (let i = from; i < to; i++) {
    for (;;) {
      try {
        if (producer.push(`key-${i}`, `event:${i}`)) break;
      } catch (error) {
        if (!(error instanceof BackpressureError)) throw error;
      }
      retries++;
      await new Promise((r) => setTimeout(r, 0)); // let the consumers catch up
    }
  }
  producer.detach();
  self.postMessage({ done: true, pushed: to - from, retries });
};
