// hashKeys (batch hashKey) and ShardMapper.selectShardsForKeys: the same answers as the
// per-key calls, for ASCII batches (hashed from one joined copy), non-ASCII and mixed ones.
import { describe, it, expect, beforeAll } from 'vitest';
import xxhash from 'xxhash-wasm';
import { hashKey, hashKeys, ShardMapper } from 'shard-mapper';
import { rng } from './helpers/index.js';

let h32: (s: string) => number;
beforeAll(async () => {
  ({ h32 } = await xxhash());
});

function asciiKeys(n: number, seed: number): string[] {
  const next = rng(seed);
  // lengths 0 … 70: every tail length, one to four 16-byte stripes
  return Array.from({ length: n }, (_, i) => Array.from({ length: (i * 7 + next()) % 71 }, () => String.fromCharCode(32 + (next() % 95))).join(''));
}

describe('hashKeys', () => {
  it('equals hashKey (and xxhash-wasm) key for key on ASCII batches of every length, from cons and flat strings', () => {
    const keys = asciiKeys(3000, 5);
    keys.push(...Array.from({ length: 500 }, (_, i) => `user-${i * 7919}-session`)); // template strings
    const out = hashKeys(keys);
    expect(out).toBeInstanceOf(Uint32Array);
    for (let i = 0; i < keys.length; i++) {
      expect(out[i], JSON.stringify(keys[i])).toBe(hashKey(keys[i]!));
      expect(out[i]).toBe(h32(keys[i]!));
    }
  });

  it('falls back key by key for non-ASCII strings and Uint8Array keys, with the same answers; short batches too', () => {
    const keys: (string | Uint8Array)[] = [...asciiKeys(40, 9), 'clé-ü', '日本語キー', '😀-emoji', new TextEncoder().encode('bytes-key'), ''];
    const out = new Uint32Array(keys.length + 3);
    expect(hashKeys(keys, out)).toBe(out);
    keys.forEach((k, i) => expect(out[i]).toBe(hashKey(k)));
    const short = ['a', 'bb', 'ccc'];
    expect([...hashKeys(short)]).toEqual(short.map((k) => hashKey(k)));
    const nonAsciiOnlyLate = [...asciiKeys(100, 3), 'ß'];
    expect([...hashKeys(nonAsciiOnlyLate)]).toEqual(nonAsciiOnlyLate.map((k) => hashKey(k)));
  });

  it('refuses bad input with a clear error', () => {
    expect(() => hashKeys(null as unknown as string[])).toThrow(/hashKeys: keys must be an array/);
    expect(() => hashKeys(['a', 3 as unknown as string])).toThrow(/hashKeys: keys\[1\] must be a string or a Uint8Array, got number/);
    expect(() => hashKeys(['a', 'b'], new Uint32Array(1))).toThrow(/out has 1 entries, needs 2/);
    expect(() => hashKeys(['a'], new Int32Array(1) as unknown as Uint32Array)).toThrow(/out must be a Uint32Array/);
  });
});

describe('ShardMapper.selectShardsForKeys', () => {
  it('answers selectShardForKey for every key and fills the given out', async () => {
    const mapper = await ShardMapper.create(5, 100, { maxShards: 8, autoScale: false });
    const keys = [...asciiKeys(1000, 21), 'clé', new Uint8Array([1, 2, 3])];
    const out = new Uint16Array(keys.length);
    expect(mapper.selectShardsForKeys(keys, out)).toBe(out);
    keys.forEach((k, i) => expect(out[i]).toBe(mapper.selectShardForKey(k)));
    expect(new Set(out).size).toBe(5);
    expect(() => mapper.selectShardsForKeys(keys, new Uint16Array(2))).toThrow(/out has 2 entries/);
    expect(() => mapper.selectShardsForKeys('abc' as unknown as string[])).toThrow(/keys must be an array/);
  });
});
