// What the fast-check property tests share: their run parameters (FC_RUNS, FC_SEED, FC_PATH)
// and the arbitraries more than one of them draws from.
import fc from 'fast-check';
import type { BackpressureMode } from 'shard-mapper';

/**
 * fast-check's parameters for a property: FC_RUNS runs (else `defaultRuns`), and FC_SEED /
 * FC_PATH when set, which replay a failure from the seed and path fast-check printed.
 */
export function fcRunParams(defaultRuns: number): { numRuns: number; seed?: number; path?: string } {
  return {
    numRuns: Number(process.env.FC_RUNS ?? defaultRuns),
    ...(process.env.FC_SEED ? { seed: Number(process.env.FC_SEED) } : {}),
    ...(process.env.FC_PATH ? { path: process.env.FC_PATH } : {}),
  };
}

/** Every backpressure mode, `sample` at rates 1 to 3. */
export const backpressureArb: fc.Arbitrary<BackpressureMode> = fc.oneof(
  fc.constant({ kind: 'failProducer' } as BackpressureMode),
  fc.constant({ kind: 'dropNewest' } as BackpressureMode),
  fc.constant({ kind: 'dropOldest' } as BackpressureMode),
  fc.integer({ min: 1, max: 3 }).map((rate) => ({ kind: 'sample', rate }) as BackpressureMode),
);
