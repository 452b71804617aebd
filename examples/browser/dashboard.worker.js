// Consumer Web Worker of the live view (dashboard.js): stands in for a downstream write by
// waiting a little per batch, so a burst fills the rings and the manager has to scale out.
import { serveConsumer } from 'shard-mapper/worker';

const BATCH_WAIT_MS = 2;

serveConsumer(() => new Promise((resolve) => setTimeout(resolve, BATCH_WAIT_MS)));
