// Node side of "#spawn" (package.json "imports", condition "node"): the package's own
// consumer worker as a worker_threads Worker.
import { spawnWorker } from './platform-node.js';
export function spawnConsumerWorker(workerData) {
    return spawnWorker(new URL('./consumer-worker.js', import.meta.url), workerData);
}
