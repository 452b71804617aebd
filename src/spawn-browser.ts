// Browser side of "#spawn" (package.json "imports"): starts the package's own consumer worker.
// The call is written literally as `new Worker(new URL('./consumer-worker.js',
// import.meta.url), { type: 'module' })` because that is the pattern Vite and webpack 5 look
// for to bundle a worker entry (with its imports) out of a dependency. It lives apart from
// "#platform" so the worker's own bundle (which imports "#platform") does not contain it.
import { adoptWorker } from './platform-browser.js';
import type { SpawnedWorker } from './platform-types.js';

export function spawnConsumerWorker(workerData: unknown): SpawnedWorker {
  return adoptWorker(
    new Worker(new URL('./consumer-worker.js', import.meta.url), { type: 'module' }),
    workerData,
    "shard-mapper's own consumer worker (consumer-worker.js, which the bundle must hold next to it: with esbuild, the entry consumer-worker=shard-mapper/consumer-worker)",
  );
}
