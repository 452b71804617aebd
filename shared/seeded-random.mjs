// Seeded pseudo-random uint32s, for the tests and the benchmarks alike (both import this file;
// neither reaches into the other's folder): the same seed gives the same hashes, keys and sizes
// on every run, so a failing run can be replayed from its seed.

/** Deterministic PRNG (mulberry32): a function returning the next uint32 of `seed`'s sequence. */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** `n` uint32s of `rng(seed)` in a Uint32Array (hashes to route). */
export function randomHashes(n, seed = 1) {
  const next = rng(seed);
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = next();
  return out;
}
