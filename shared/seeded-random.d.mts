// Types of seeded-random.mjs, for the TypeScript tests that import it.
/** Deterministic PRNG (mulberry32): a function returning the next uint32 of `seed`'s sequence. */
export declare function rng(seed: number): () => number;
/** `n` uint32s of `rng(seed)` in a Uint32Array (hashes to route). */
export declare function randomHashes(n: number, seed?: number): Uint32Array;
