import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // worker_threads tests share 2 cores with everything else: one file at a time keeps them honest
    fileParallelism: false,
    pool: 'forks',
  },
});
