// hashKey: xxHash32 (seed 0) over UTF-8 bytes (docs/CONTRACT.md §5, "Keys").
import { describe, it, expect, beforeAll } from 'vitest';
import xxhash from 'xxhash-wasm';
import { hashKey } from 'shard-mapper';
import { rng } from './helpers/index.js';

type XX = Awaited<ReturnType<typeof xxhash>>;
let xx: XX;
beforeAll(async () => {
  xx = await xxhash();
});

const utf8 = (s: string) => new TextEncoder().encode(s);

describe('hashKey reference values', () => {
  it.each([
    ['', 0x02cc5d05],
    ['a', 0x550d7456],
    ['abc', 0x32d153ff],
    ['user-42', 0x61819a7e],
    ['héllo', 0x6207d876],
  ])('%j', (key, expected) => {
    expect(hashKey(key)).toBe(expected);
    expect(hashKey(utf8(key))).toBe(expected);
  });

  it('the independent implementation agrees on the reference values (sanity of the oracle)', () => {
    expect(xx.h32('abc', 0) >>> 0).toBe(0x32d153ff);
    expect(xx.h32Raw(utf8('héllo'), 0) >>> 0).toBe(0x6207d876);
  });
});

describe('hashKey inputs', () => {
  it('returns a uint32', () => {
    for (const k of ['', 'a', 'zz', 'x'.repeat(100), 'π']) {
      const h = hashKey(k);
      expect(Number.isInteger(h)).toBe(true);
      expect(h).toBeGreaterThanOrEqual(0);
      expect(h).toBeLessThanOrEqual(0xffffffff);
    }
  });

  it('a string and its UTF-8 bytes hash the same', () => {
    for (const k of ['', 'a', 'héllo', '日本語キー', '😀 emoji', 'mixed ascii then ü', 'ü then ascii ........']) {
      expect(hashKey(k)).toBe(hashKey(utf8(k)));
    }
  });

  it('hashes UTF-8, not UTF-16 code units or Latin-1', () => {
    // 'é' is 0xC3 0xA9 in UTF-8 but the single code unit 0xE9: the hashes must differ from the latter
    expect(hashKey('é')).toBe(hashKey(new Uint8Array([0xc3, 0xa9])));
    expect(hashKey('é')).not.toBe(hashKey(new Uint8Array([0xe9])));
  });

  it('a Uint8Array view hashes its own bytes only (offset and length respected)', () => {
    const big = new Uint8Array([1, 2, 0x61, 0x62, 0x63, 9, 9]);
    expect(hashKey(big.subarray(2, 5))).toBe(0x32d153ff);
    expect(hashKey(Buffer.from('user-42'))).toBe(0x61819a7e);
    expect(hashKey(new Uint8Array(0))).toBe(0x02cc5d05);
  });

  it('long keys (16..17 bytes, > 256 bytes, > 64 KiB) match the independent implementation', () => {
    for (const len of [15, 16, 17, 31, 32, 33, 255, 256, 257, 1000, 4099, 70_000]) {
      const ascii = 'k'.repeat(len - 1) + String.fromCharCode(33 + (len % 90));
      expect(hashKey(ascii), `ascii ${len}`).toBe(xx.h32Raw(utf8(ascii), 0) >>> 0);
      const wide = 'ж'.repeat(len); // 2 bytes each
      expect(hashKey(wide), `cyrillic ${len}`).toBe(xx.h32Raw(utf8(wide), 0) >>> 0);
      const bytes = new Uint8Array(len).map((_, i) => (i * 31 + 7) & 0xff);
      expect(hashKey(bytes), `bytes ${len}`).toBe(xx.h32Raw(bytes, 0) >>> 0);
    }
  });

  it('a string longer than any before (the internal encode buffer grows) hashes right the first time', () => {
    // Lengths above every other key of this file, each a new maximum, alternating the ASCII
    // fast path and the platform-encoder path.
    let len = 100_000;
    for (let i = 0; i < 6; i++, len *= 2) {
      const s = i % 2 === 0 ? 'g'.repeat(len) : 'ü'.repeat(len);
      expect(hashKey(s), `length ${len}`).toBe(xx.h32Raw(utf8(s), 0) >>> 0);
    }
  });

  it('a long key does not leave state behind for the next short one', () => {
    hashKey('é'.repeat(5000));
    expect(hashKey('a')).toBe(0x550d7456);
    hashKey('q'.repeat(5000));
    expect(hashKey('héllo')).toBe(0x6207d876);
    expect(hashKey('')).toBe(0x02cc5d05);
  });

  it('refuses anything but a string or a Uint8Array with a TypeError', () => {
    for (const bad of [42, null, undefined, {}, [1, 2], new Uint16Array(2), 5n]) {
      expect(() => hashKey(bad as unknown as string)).toThrow(TypeError);
    }
  });
});

describe('hashKey against xxhash-wasm over random keys', () => {
  const next = rng(0xc0ffee);
  const pick = (n: number) => next() % n;
  // Pieces that exercise every UTF-8 length: ASCII, 2-byte, 3-byte (BMP), 4-byte (surrogate
  // pairs), and lone surrogates (which UTF-8 encoding replaces with U+FFFD).
  const alphabet: (() => string)[] = [
    () => String.fromCharCode(32 + pick(95)),
    () => String.fromCharCode(0x80 + pick(0x780)),
    () => String.fromCharCode(0x800 + pick(0xd000 - 0x800)),
    () => String.fromCodePoint(0x10000 + pick(0x100000)),
    () => String.fromCharCode(0xd800 + pick(0x800)),
  ];
  const randomKey = (): string => {
    const len = pick(5) === 0 ? pick(300) : pick(24);
    const asciiOnly = pick(3) === 0;
    let s = '';
    for (let i = 0; i < len; i++) s += asciiOnly ? alphabet[0]!() : alphabet[pick(alphabet.length)]!();
    return s;
  };

  it('strings: hashKey(s) == xxh32(UTF-8 of s) for 4000 keys', () => {
    let nonAscii = 0;
    let surrogatePairs = 0;
    for (let i = 0; i < 4000; i++) {
      const s = randomKey();
      if (/[\u0080-\uffff]/.test(s)) nonAscii++; // any UTF-16 unit above ASCII
      if (/[\ud800-\udbff][\udc00-\udfff]/.test(s)) surrogatePairs++;
      const expected = xx.h32Raw(utf8(s), 0) >>> 0;
      if (hashKey(s) !== expected) expect({ key: s, hash: hashKey(s) }).toEqual({ key: s, hash: expected });
      if (!/[\ud800-\udfff]/.test(s) && xx.h32(s, 0) >>> 0 !== expected) throw new Error('oracle disagrees with itself');
    }
    expect(nonAscii).toBeGreaterThan(1000);
    expect(surrogatePairs).toBeGreaterThan(200);
  });

  it('bytes: hashKey(bytes) == xxh32(bytes) for 2000 random arrays', () => {
    for (let i = 0; i < 2000; i++) {
      const bytes = new Uint8Array(pick(200));
      for (let j = 0; j < bytes.length; j++) bytes[j] = pick(256);
      const expected = xx.h32Raw(bytes, 0) >>> 0;
      if (hashKey(bytes) !== expected) expect({ bytes: [...bytes], hash: hashKey(bytes) }).toEqual({ bytes: [...bytes], hash: expected });
    }
  });
});
