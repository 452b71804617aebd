/** The little a manager needs from a worker, in Node (worker_threads) and in browsers. */
export interface SpawnedWorker {
  postMessage(message: unknown): void;
  onMessage(fn: (message: any) => void): void;
  onError(fn: (error: Error) => void): void;
  onExit(fn: (code: number) => void): void;
  terminate(): Promise<void>;
}

/** The worker side of the same seam: its start-up data and its channel to the manager. */
export interface WorkerEndpoint {
  data: unknown;
  post(message: unknown): void;
  onMessage(fn: (message: any) => void): void;
}
