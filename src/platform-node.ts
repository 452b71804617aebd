// Node side of the platform seam (package.json "imports" → "#platform", condition "node").
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Writable } from 'node:stream';
import { Worker, parentPort, workerData, threadId } from 'node:worker_threads';
import type { SpawnedWorker, WorkerEndpoint } from './platform-types.js';

/** This thread's worker_threads id (0 on the main thread). */
export function currentThreadId(): number {
  return threadId;
}

// Every worker thread started in this thread after the package was loaded: when one exits,
// its id goes to the listeners (the managers, which give back the lanes it held). Held
// weakly, each by the manager that registered it: a manager dropped without close() must
// not be kept alive, memory and all, by this module-wide set.
type ExitListener = (threadId: number) => void;
const exitListeners = new Set<WeakRef<ExitListener>>();
const forgetCollected = new FinalizationRegistry<WeakRef<ExitListener>>((ref) => exitListeners.delete(ref));
process.on('worker', (worker: Worker) => {
  const id = worker.threadId; // read now: it reads -1 once the thread is gone
  worker.once('exit', () => {
    for (const ref of exitListeners) ref.deref()?.(id);
  });
});

/** Call `listener` with the id of each worker thread (started here) that exits, for as long
 *  as the caller keeps `listener` reachable (it is held weakly); returns an unsubscribe. */
export function onThreadExit(listener: ExitListener): () => void {
  const ref = new WeakRef(listener);
  exitListeners.add(ref);
  forgetCollected.register(listener, ref, ref);
  return () => {
    exitListeners.delete(ref);
    forgetCollected.unregister(ref);
  };
}

export function cpuCount(): number {
  return availableParallelism();
}

export function spawnWorker(url: URL, workerData: unknown): SpawnedWorker {
  return wrap(new Worker(url, { workerData }));
}

/** Wrap a worker thread the caller started (options.consumer.worker) and send it its start-up data. */
export function adoptWorker(candidate: unknown, workerData: unknown): SpawnedWorker {
  if (!(candidate instanceof Worker)) throw new TypeError('options.consumer.worker must return a worker_threads Worker');
  candidate.postMessage({ type: 'init', workerData });
  return wrap(candidate);
}

// A consumer thread keeps the process alive until close() ends it (its message listener refs
// the worker's port): a process that left while events sat in the rings would lose them.
function wrap(worker: Worker): SpawnedWorker {
  return {
    postMessage: (message) => worker.postMessage(message),
    onMessage: (fn) => void worker.on('message', fn),
    onError: (fn) => void worker.on('error', fn),
    onExit: (fn) => void worker.on('exit', fn),
    terminate: async () => void (await worker.terminate()),
  };
}

/** A consumer module given as a path (relative to the working directory) or a URL. */
export function moduleUrl(module: string | URL): string {
  if (module instanceof URL) return module.href;
  if (/^(file|data|https?|node):/i.test(module)) return module;
  return pathToFileURL(resolve(module)).href;
}

/** Whether this code runs in a worker thread (one with a port to the thread that started it). */
export function inWorkerThread(): boolean {
  return parentPort !== null;
}

export async function workerEndpoint(): Promise<WorkerEndpoint> {
  if (!parentPort) throw new Error('shard-mapper: the consumer worker must run in a worker thread');
  const port = parentPort;
  const endpoint = (data: unknown): WorkerEndpoint => ({
    data,
    post: (m) => port.postMessage(m),
    onMessage: (fn) => void port.on('message', fn),
  });
  const wd = workerData as { core?: unknown; batchSize?: unknown } | null | undefined;
  if (typeof wd === 'object' && wd !== null && 'core' in wd && 'batchSize' in wd) return endpoint(wd);
  // Started by the application (options.consumer.worker): the data comes as a first message.
  return new Promise((resolveEndpoint) => {
    const first = (m: { type?: string; workerData?: unknown } | undefined) => {
      if (m?.type !== 'init') return;
      port.off('message', first);
      resolveEndpoint(endpoint(m.workerData));
    };
    port.on('message', first);
  });
}

/** Let queued messages run: setImmediate is a macrotask without setTimeout's 1 ms floor. */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

/** Node's Writable, for manager.writable() (src/streams.ts); browser bundles never load node:stream. */
export function nodeWritable(): typeof Writable | undefined {
  return Writable;
}
