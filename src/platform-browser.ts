// Browser side of the platform seam (package.json "imports" → "#platform", default).
import type { SpawnedWorker } from './platform-types.js';

export const platformName = 'browser' as const;

export function cpuCount(): number {
  const n = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency;
  return typeof n === 'number' && n > 0 ? n : 1;
}

export function spawnWorker(url: URL, workerData: unknown): SpawnedWorker {
  const worker = new Worker(url, { type: 'module' });
  const exitListeners: ((code: number) => void)[] = [];
  worker.postMessage({ type: 'init', workerData });
  return {
    postMessage: (message) => worker.postMessage(message),
    onMessage: (fn) => worker.addEventListener('message', (e) => fn((e as MessageEvent).data)),
    onError: (fn) => worker.addEventListener('error', (e) => fn(new Error((e as ErrorEvent).message || 'worker error'))),
    onExit: (fn) => void exitListeners.push(fn),
    terminate: async () => {
      worker.terminate();
      for (const fn of exitListeners) fn(1);
    },
    ref: () => {},
    unref: () => {},
  };
}
