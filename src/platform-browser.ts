// Browser side of the platform seam (package.json "imports" → "#platform", default).
import type { SpawnedWorker, WorkerEndpoint } from './platform-types.js';

/** Web Workers have no thread id a page can watch: lanes are given back by detach(). */
export function currentThreadId(): number {
  return 0;
}

/** Browsers tell a page nothing when a Web Worker it did not start ends: never called. */
export function onThreadExit(_listener: (threadId: number) => void): () => void {
  return () => {};
}

export function cpuCount(): number {
  const n = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency;
  return typeof n === 'number' && n > 0 ? n : 1;
}

export function spawnWorker(url: URL, workerData: unknown): SpawnedWorker {
  return adoptWorker(new Worker(url, { type: 'module' }), workerData, `the worker script ${url.href}`);
}

/** Wrap a Web Worker the caller started (options.consumer.worker) and send it its start-up data.
 *  `what` names it in the error a script that does not load raises (the browser's own error
 *  event for that carries no message). */
export function adoptWorker(
  candidate: unknown,
  workerData: unknown,
  what = 'the Web Worker options.consumer.worker returned',
): SpawnedWorker {
  if (typeof Worker === 'undefined' || !(candidate instanceof Worker)) {
    throw new TypeError("options.consumer.worker must return a Web Worker (new Worker(url, { type: 'module' }))");
  }
  const worker = candidate;
  const exitListeners: ((code: number) => void)[] = [];
  // Sent at once, and again whenever the worker asks: a Web Worker drops messages that arrive
  // before it listens, so a script that awaits something first (its config, another module's
  // set-up) would never get the first one. The worker takes the first init it sees.
  const init = () => worker.postMessage({ type: 'init', workerData });
  worker.addEventListener('message', (e) => {
    if ((e as MessageEvent).data?.type === 'want-init') init();
  });
  init();
  return {
    postMessage: (message) => worker.postMessage(message),
    onMessage: (fn) => worker.addEventListener('message', (e) => fn((e as MessageEvent).data)),
    onError: (fn) =>
      worker.addEventListener('error', (e) => {
        // Handled: create() rejects with it, so the page does not also report it uncaught.
        e.preventDefault();
        fn(
          new Error(
            (e as ErrorEvent).message ||
              `${what} did not load, or failed before it ran: a missing file (404), a wrong MIME type, or a syntax error (the browser console names it)`,
          ),
        );
      }),
    onExit: (fn) => void exitListeners.push(fn),
    terminate: async () => {
      worker.terminate();
      // A Web Worker sends no exit event: report it here, from a task of its own, once the
      // terminated worker is gone (not from inside the caller's terminate()).
      await new Promise((resolve) => setTimeout(resolve, 0));
      for (const fn of exitListeners) fn(1);
    },
  };
}

/** A consumer module given as a URL, or a path resolved against the page. */
export function moduleUrl(module: string | URL): string {
  const base = (globalThis as { location?: { href: string } }).location?.href;
  return new URL(String(module), base).href;
}

/** Whether this code runs in a Web Worker (a dedicated one: it has postMessage and no document). */
export function inWorkerThread(): boolean {
  return typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== 'undefined';
}

export function workerEndpoint(): Promise<WorkerEndpoint> {
  const scope = globalThis as unknown as {
    addEventListener(t: 'message', fn: (e: MessageEvent) => void): void;
    removeEventListener(t: 'message', fn: (e: MessageEvent) => void): void;
    postMessage(m: unknown): void;
  };
  return new Promise((resolveEndpoint) => {
    const first = (e: MessageEvent) => {
      if (e.data?.type !== 'init') return;
      scope.removeEventListener('message', first);
      resolveEndpoint({
        data: e.data.workerData,
        post: (m) => scope.postMessage(m),
        onMessage: (fn) => scope.addEventListener('message', (ev) => fn(ev.data)),
      });
    };
    scope.addEventListener('message', first);
    // The page's first init may have come before this listener (a script that awaited before
    // serveConsumer): ask for it again. A second init, if both arrive, is ignored.
    scope.postMessage({ type: 'want-init' });
  });
}

const channel = typeof MessageChannel === 'undefined' ? undefined : new MessageChannel();
const waiting: (() => void)[] = [];
if (channel) channel.port1.onmessage = () => waiting.shift()?.();

/** Let queued messages run (a MessageChannel round trip avoids setTimeout's clamping). */
export function yieldToEventLoop(): Promise<void> {
  if (!channel) return new Promise((r) => setTimeout(r, 0));
  return new Promise((r) => {
    waiting.push(r);
    channel.port2.postMessage(0);
  });
}

/** No Node streams in a browser: manager.writable() says so; manager.writableStream() is the browser's. */
export function nodeWritable(): undefined {
  return undefined;
}
