// The consumer thread the manager starts for `options.consumer.module`: loads the user's
// module (its default export is the consumer function) and runs the consumer loop.
// Workers that bring their own function use `serveConsumer` from 'shard-mapper/worker'.
import { runConsumer, type ConsumerFunction } from './consumer-runtime.js';

export type { ConsumerFunction };

void runConsumer(async (init) => {
  const mod = (await import(/* @vite-ignore */ /* webpackIgnore: true */ init.module)) as { default?: unknown };
  if (typeof mod.default !== 'function')
    throw new TypeError(`consumer module ${init.module} must default-export a function (records, shardId) => void | Promise<void>`);
  return mod.default as ConsumerFunction;
});
// A failure to start was already posted as 'fatal'; the rejection then ends a Node worker
// thread with an error, as an uncaught top-level throw did.
