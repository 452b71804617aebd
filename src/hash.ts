// hashKey: xxHash32 (seed 0) over a key's bytes, UTF-8 for strings. Written for short keys
// on the hot path: ASCII strings are hashed straight from their code units; others are
// encoded into one reused buffer. No allocation per call.
const P1 = 2654435761;
const P2 = 2246822519;
const P3 = 3266489917;
const P4 = 668265263;
const P5 = 374761393;

let buffer = new Uint8Array(256);
let joinedBytes = new Uint8Array(4096); // hashKeys' staging: a batch's keys as one byte run
let joinedWords = new DataView(joinedBytes.buffer); // the same bytes, read 4 at a time (one unaligned load)
const encoder = new TextEncoder();

const rotl = (x: number, r: number) => (x << r) | (x >>> (32 - r));
const round = (acc: number, lane: number) => Math.imul(rotl((acc + Math.imul(lane, P2)) | 0, 13), P1);
const u32At = (b: Uint8Array, i: number) => b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24);
// The four lanes' starting values for seed 0.
const V1 = (P1 + P2) | 0;
const V2 = P2 | 0;
const V3 = 0;
const V4 = -P1 | 0;
const merge = (v1: number, v2: number, v3: number, v4: number) => (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) | 0;
const step4 = (h: number, word: number) => Math.imul(rotl((h + Math.imul(word, P3)) | 0, 17), P4);
const step1 = (h: number, byte: number) => Math.imul(rotl((h + Math.imul(byte, P5)) | 0, 11), P1);

function avalanche(h: number): number {
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h >>> 0;
}

function xxh32(b: Uint8Array, len: number): number {
  let i = 0;
  let h: number;
  if (len >= 16) {
    let v1 = V1,
      v2 = V2,
      v3 = V3,
      v4 = V4;
    for (const limit = len - 16; i <= limit; i += 16) {
      v1 = round(v1, u32At(b, i));
      v2 = round(v2, u32At(b, i + 4));
      v3 = round(v3, u32At(b, i + 8));
      v4 = round(v4, u32At(b, i + 12));
    }
    h = merge(v1, v2, v3, v4);
  } else {
    h = P5;
  }
  h = (h + len) | 0;
  for (; i + 4 <= len; i += 4) h = step4(h, u32At(b, i));
  for (; i < len; i++) h = step1(h, b[i]!);
  return avalanche(h);
}

/**
 * xxHash32 of an ASCII string read straight from its UTF-16 code units (for ASCII they equal
 * the UTF-8 bytes), with no staging copy. Returns -1 at the first non-ASCII unit; the caller
 * then encodes. OR-ing the units of a lane and testing once keeps the check off the hot path.
 */
function xxh32Ascii(s: string): number {
  const len = s.length;
  let i = 0;
  let h: number;
  if (len >= 16) {
    let v1 = V1,
      v2 = V2,
      v3 = V3,
      v4 = V4;
    // biome-ignore format: four characters a line, the way the hash reads them
    for (const limit = len - 16; i <= limit; i += 16) {
      const a0 = s.charCodeAt(i), a1 = s.charCodeAt(i + 1), a2 = s.charCodeAt(i + 2), a3 = s.charCodeAt(i + 3);
      const b0 = s.charCodeAt(i + 4), b1 = s.charCodeAt(i + 5), b2 = s.charCodeAt(i + 6), b3 = s.charCodeAt(i + 7);
      const c0 = s.charCodeAt(i + 8), c1 = s.charCodeAt(i + 9), c2 = s.charCodeAt(i + 10), c3 = s.charCodeAt(i + 11);
      const d0 = s.charCodeAt(i + 12), d1 = s.charCodeAt(i + 13), d2 = s.charCodeAt(i + 14), d3 = s.charCodeAt(i + 15);
      if ((a0 | a1 | a2 | a3 | b0 | b1 | b2 | b3 | c0 | c1 | c2 | c3 | d0 | d1 | d2 | d3) >= 0x80) return -1;
      v1 = round(v1, a0 | (a1 << 8) | (a2 << 16) | (a3 << 24));
      v2 = round(v2, b0 | (b1 << 8) | (b2 << 16) | (b3 << 24));
      v3 = round(v3, c0 | (c1 << 8) | (c2 << 16) | (c3 << 24));
      v4 = round(v4, d0 | (d1 << 8) | (d2 << 16) | (d3 << 24));
    }
    h = merge(v1, v2, v3, v4);
  } else {
    h = P5;
  }
  h = (h + len) | 0;
  for (; i + 4 <= len; i += 4) {
    const a = s.charCodeAt(i),
      b = s.charCodeAt(i + 1),
      c = s.charCodeAt(i + 2),
      d = s.charCodeAt(i + 3);
    if ((a | b | c | d) >= 0x80) return -1;
    h = step4(h, a | (b << 8) | (c << 16) | (d << 24));
  }
  for (; i < len; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x80) return -1;
    h = step1(h, c);
  }
  return avalanche(h);
}

function utf8Into(s: string): number {
  const n = s.length;
  if (n * 3 > buffer.length) buffer = new Uint8Array(Math.max(n * 3, buffer.length * 2));
  let p = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) buffer[p++] = c;
    else return encoder.encodeInto(s, buffer).written; // non-ASCII: let the platform encode
  }
  return p;
}

/** xxHash32 (seed 0) of a string (as UTF-8) or of bytes, as a uint32. */
export function hashKey(key: string | Uint8Array): number {
  if (typeof key === 'string') {
    const ascii = xxh32Ascii(key);
    if (ascii >= 0) return ascii;
    // Encode first: utf8Into may replace `buffer` with a larger one, so it must not be read
    // before the call (as an argument evaluated ahead of it would be).
    const len = utf8Into(key);
    return xxh32(buffer, len);
  }
  if (key instanceof Uint8Array) return xxh32(key, key.length);
  throw new TypeError(`hashKey: key must be a string or a Uint8Array, got ${key === null ? 'null' : typeof key}`);
}

/** Batches at least this long are hashed from one joined copy (shorter ones key by key). */
const JOIN_MIN = 16;

/**
 * hashKey of every key, written to `out` (made when absent) and returned. For a batch of
 * ASCII strings the keys are joined and encoded with one call, then hashed from bytes:
 * reading a byte from a Uint8Array is several times cheaper than `charCodeAt`, which is what
 * bounds hashKey on one string. Any other batch (a non-ASCII string, a Uint8Array key) is
 * hashed key by key. The results are hashKey's, key for key.
 */
export function hashKeys(keys: ArrayLike<string | Uint8Array>, out?: Uint32Array): Uint32Array {
  if (keys === null || typeof keys !== 'object' || typeof keys.length !== 'number') {
    throw new TypeError(`hashKeys: keys must be an array of strings or Uint8Arrays, got ${keys === null ? 'null' : typeof keys}`);
  }
  const n = keys.length;
  if (out === undefined) out = new Uint32Array(n);
  else if (!(out instanceof Uint32Array)) throw new TypeError('hashKeys: out must be a Uint32Array');
  else if (out.length < n) throw new RangeError(`hashKeys: out has ${out.length} entries, needs ${n}`);
  let total = 0;
  let allStrings = n >= JOIN_MIN;
  for (let i = 0; i < n && allStrings; i++) {
    const k = keys[i];
    if (typeof k !== 'string') allStrings = false;
    else total += k.length;
  }
  if (allStrings) {
    const joined = Array.prototype.join.call(keys, '');
    if (joinedBytes.length < total + 4) {
      joinedBytes = new Uint8Array(Math.max(total + 4, 2 * joinedBytes.length));
      joinedWords = new DataView(joinedBytes.buffer);
    }
    const r = encoder.encodeInto(joined, joinedBytes);
    if (r.read === total && r.written === total) {
      // every unit ASCII: one byte per unit
      let at = 0;
      for (let i = 0; i < n; i++) {
        const len = (keys[i] as string).length;
        out[i] = xxh32At(joinedWords, joinedBytes, at, len);
        at += len;
      }
      return out;
    }
  }
  for (let i = 0; i < n; i++) {
    const k = keys[i];
    if (typeof k !== 'string' && !(k instanceof Uint8Array))
      throw new TypeError(`hashKeys: keys[${i}] must be a string or a Uint8Array, got ${k === null ? 'null' : typeof k}`);
    out[i] = hashKey(k);
  }
  return out;
}

/** xxh32 of `len` bytes of `b` (also viewed as `w`) from `at`. */
function xxh32At(w: DataView, b: Uint8Array, at: number, len: number): number {
  let i = at;
  const end = at + len;
  let h: number;
  if (len >= 16) {
    let v1 = V1,
      v2 = V2,
      v3 = V3,
      v4 = V4;
    for (const limit = end - 16; i <= limit; i += 16) {
      v1 = round(v1, w.getUint32(i, true));
      v2 = round(v2, w.getUint32(i + 4, true));
      v3 = round(v3, w.getUint32(i + 8, true));
      v4 = round(v4, w.getUint32(i + 12, true));
    }
    h = merge(v1, v2, v3, v4);
  } else {
    h = P5;
  }
  h = (h + len) | 0;
  for (; i + 4 <= end; i += 4) h = step4(h, w.getUint32(i, true));
  for (; i < end; i++) h = step1(h, b[i]!);
  return avalanche(h);
}
