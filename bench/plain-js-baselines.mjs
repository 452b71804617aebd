// Baselines written here because no npm package gives a fair one.
//
// - jumpHash: Lamping & Veach's jump consistent hash. The npm ports (@subspace/jump-consistent-hash,
//   jump-gouache) compute its 64-bit LCG with BigInt / Long objects, hundreds of ns per call:
//   a straw man. This one does the exact 64-bit arithmetic in 32-bit halves (no BigInt, no
//   allocation), as a careful plain-JS implementation would; test/bench-smoke.test.ts checks
//   it against a BigInt transcription of the paper's C++.
// - PlainWeightedMapper: shard-mapper's selection rule written in plain TypeScript-style JS
//   (no WebAssembly, no shared memory): the Active shards whose weight is within 0.1 of the
//   lowest are the candidates, in table order (all of them when that leaves none: NaN
//   weights), and a uint32 hash picks candidates[floor(hash · n / 2^32)]. It is what a user
//   would write instead of adopting the package; the .mjs is exactly what tsc emits for it.

const C_HI = 0x27bb2ee6; // 2862933555777941757 = 0x27BB2EE6_87B0B0FD
const C_LO = 0x87b0b0fd;
const C_LO0 = C_LO & 0xffff;
const C_LO1 = C_LO >>> 16;

/** Jump consistent hash of a 64-bit key given as (hi, lo) uint32 halves; `key` alone = (0, key). */
export function jumpHash(key, buckets, keyHi = 0) {
  let lo = key >>> 0;
  let hi = keyHi >>> 0;
  let b = -1;
  let j = 0;
  while (j < buckets) {
    b = j;
    // key = key * C + 1 (mod 2^64), in 16-bit limbs so every partial product is exact.
    const a0 = lo & 0xffff;
    const a1 = lo >>> 16;
    const p00 = a0 * C_LO0;
    const p01 = a0 * C_LO1;
    const p10 = a1 * C_LO0;
    const mid = (p00 >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
    const newLo = (((mid & 0xffff) << 16) | (p00 & 0xffff)) >>> 0;
    const carry = a1 * C_LO1 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16);
    hi = (carry + Math.imul(hi, C_LO) + Math.imul(lo, C_HI)) >>> 0;
    lo = newLo;
    if (lo === 0xffffffff) { lo = 0; hi = (hi + 1) >>> 0; } else lo += 1;
    // j = (b + 1) * (2^31 / ((key >> 33) + 1)), in doubles as in the paper
    j = Math.floor((b + 1) * (2147483648 / ((hi >>> 1) + 1)));
  }
  return b;
}

/** The paper's C++, transcribed with BigInt: the reference the fast version is checked against. */
export function jumpHashBigInt(key, buckets) {
  let k = BigInt.asUintN(64, BigInt(key));
  let b = -1n;
  let j = 0n;
  while (j < BigInt(buckets)) {
    b = j;
    k = BigInt.asUintN(64, k * 2862933555777941757n + 1n);
    j = BigInt(Math.floor(Number(b + 1n) * (Number(1n << 31n) / Number((k >> 33n) + 1n))));
  }
  return Number(b);
}

export const NO_SHARD = 0xffff;
const WEIGHT_TOLERANCE = 0.1;

export class PlainWeightedMapper {
  /** @param {number} shards Active shards 0..shards-1, weight 0 */
  constructor(shards) {
    /** @type {{ id: number, active: boolean, weight: number }[]} */
    this.shards = [];
    for (let id = 0; id < shards; id++) this.shards.push({ id, active: true, weight: 0 });
    /** @type {number[]} */
    this.candidates = [];
    this.rebuild();
  }

  setWeight(id, weight) {
    const s = this.shards.find((x) => x.id === id);
    if (s) s.weight = weight;
    this.rebuild();
  }

  rebuild() {
    const active = this.shards.filter((s) => s.active);
    let min = Infinity;
    for (const s of active) if (s.weight < min) min = s.weight;
    const chosen = active.filter((s) => s.weight - min <= WEIGHT_TOLERANCE).map((s) => s.id);
    this.candidates = chosen.length > 0 ? chosen : active.map((s) => s.id);
  }

  selectShard(hash) {
    const c = this.candidates;
    const n = c.length;
    if (n === 0) return NO_SHARD;
    return c[Math.floor(((hash >>> 0) * n) / 4294967296)];
  }

  /** Batch form: a loop over selectShard's arithmetic. */
  selectShards(hashes, out = new Uint16Array(hashes.length)) {
    const c = this.candidates;
    const n = c.length;
    if (n === 0) return out.fill(NO_SHARD, 0, hashes.length);
    for (let i = 0; i < hashes.length; i++) out[i] = c[Math.floor((hashes[i] * n) / 4294967296)];
    return out;
  }
}
