// Node side of the platform seam (package.json "imports" → "#platform", condition "node").
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { SpawnedWorker } from './platform-types.js';

export const platformName = 'node' as const;

export function cpuCount(): number {
  return availableParallelism();
}

export function spawnWorker(url: URL, workerData: unknown): SpawnedWorker {
  const worker = new Worker(url, { workerData });
  worker.unref(); // a consumer thread never keeps the process alive on its own
  return {
    postMessage: (message) => worker.postMessage(message),
    onMessage: (fn) => void worker.on('message', fn),
    onError: (fn) => void worker.on('error', fn),
    onExit: (fn) => void worker.on('exit', fn),
    terminate: async () => void (await worker.terminate()),
    ref: () => worker.ref(),
    unref: () => worker.unref(),
  };
}
