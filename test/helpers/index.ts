// Shared helpers for the test files (not a test file itself); test/helpers/ is their one home:
// delivery.ts (the delivery checker, expectExactlyOnce), arbitraries.ts (fast-check), find-chromium.ts,
// redis-server.ts, and this file (withEnv, rng, the mapper helpers).
import { expect } from 'vitest';
import { ShardMapper, ScalingError, type ScalingPolicy } from 'shard-mapper';
import { rng } from '../../shared/seeded-random.mjs';

export interface TestClock {
  t: number;
}

/** A mapper over an injected clock that starts at 0 (advance it with `clock.t = ...`). */
export async function setup(
  initialShards: number,
  capacity = 100,
  policy?: Partial<ScalingPolicy>,
  options: { drainGraceMs?: number } = {},
): Promise<{ mapper: ShardMapper; clock: TestClock }> {
  const clock: TestClock = { t: 0 };
  const mapper = await ShardMapper.create(initialShards, capacity, policy, { ...options, clock: () => clock.t });
  return { mapper, clock };
}

/** Run `fn`, expect it to throw a ScalingError of `kind` (and, optionally, a matching message). */
export function scalingError(fn: () => unknown, kind: ScalingError['kind'], message?: RegExp | string): ScalingError {
  let caught: unknown;
  let threw = false;
  try {
    fn();
  } catch (error) {
    threw = true;
    caught = error;
  }
  expect(threw, `expected a ScalingError of kind ${kind}, nothing was thrown`).toBe(true);
  expect(caught).toBeInstanceOf(ScalingError);
  expect(caught).toBeInstanceOf(Error);
  const error = caught as ScalingError;
  expect(error.kind).toBe(kind);
  if (message !== undefined) expect(error.message).toMatch(message);
  return error;
}

/** Same for a promise (ShardMapper.create). */
export async function scalingRejection(p: Promise<unknown>, kind: ScalingError['kind'], message?: RegExp | string): Promise<ScalingError> {
  let caught: unknown;
  let threw = false;
  try {
    await p;
  } catch (error) {
    threw = true;
    caught = error;
  }
  expect(threw, `expected a ScalingError of kind ${kind}, the promise resolved`).toBe(true);
  expect(caught).toBeInstanceOf(ScalingError);
  const error = caught as ScalingError;
  expect(error.kind).toBe(kind);
  if (message !== undefined) expect(error.message).toMatch(message);
  return error;
}

/**
 * The selection table as seen through selectShard: `samples` evenly spaced hashes reach every
 * candidate index when there are at most `samples` candidates; ids in table order.
 */
export function routable(mapper: ShardMapper, samples = 1 << 12): number[] {
  const seen: number[] = [];
  for (let i = 0; i < samples; i++) {
    const id = mapper.selectShard(Math.ceil((i * 2 ** 32) / samples));
    if (seen[seen.length - 1] !== id) seen.push(id);
  }
  return seen;
}

/** Deterministic PRNG (mulberry32): uint32 values; the benchmarks use the same one. */
export { rng };

/** The same generator as floats in [0, 1), so a failing run can be replayed from its seed. */
export function prng(seed: number): () => number {
  const next = rng(seed);
  return () => next() / 2 ** 32;
}

/**
 * Run `fn` with these environment variables set, then put each back as it was (unset stays
 * unset), whether `fn` resolves or throws. The consumer fixtures read their SM_TEST_*
 * settings when a thread starts (a Worker copies process.env then), so `fn` starts the
 * manager inside.
 */
export async function withEnv<T>(vars: Record<string, string>, fn: () => Promise<T> | T): Promise<T> {
  const before = new Map(Object.keys(vars).map((name) => [name, process.env[name]]));
  Object.assign(process.env, vars);
  try {
    return await fn();
  } finally {
    for (const [name, value] of before) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
}
