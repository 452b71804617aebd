// The consumer thread the manager starts for `options.consumer.module`: loads the user's
// module (its default export is the consumer function) and runs the consumer loop.
// Workers that bring their own function use `serveConsumer` from 'shard-mapper/worker'.
import { inWorkerThread } from '#platform';
import { runConsumer, type ConsumerFunction } from './consumer-runtime.js';

export type { ConsumerFunction };

// Imported anywhere else (the main thread, a page), say so at the import, which the caller
// can catch, rather than with an unhandled rejection that ends the process.
if (!inWorkerThread()) {
  throw new Error(
    "shard-mapper/consumer-worker is the consumer thread's own script (the manager starts it for options.consumer.module); import 'shard-mapper' or, in a worker of your own, 'shard-mapper/worker'",
  );
}

void runConsumer(async (init) => {
  const mod = (await import(/* @vite-ignore */ /* webpackIgnore: true */ init.module)) as { default?: unknown };
  if (typeof mod.default !== 'function')
    throw new TypeError(`consumer module ${init.module} must default-export a function (records, shardId) => void | Promise<void>`);
  return mod.default as ConsumerFunction;
});
// A failure to start was already posted as 'fatal'; the rejection then ends a Node worker
// thread with an error, as an uncaught top-level throw did.
