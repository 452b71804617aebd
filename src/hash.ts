// hashKey: xxHash32 (seed 0) over a key's bytes, UTF-8 for strings. Written for short keys
// on the hot path: strings are encoded into one reused buffer, no allocation per call.
const P1 = 2654435761;
const P2 = 2246822519;
const P3 = 3266489917;
const P4 = 668265263;
const P5 = 374761393;

let buffer = new Uint8Array(256);
const encoder = new TextEncoder();

const rotl = (x: number, r: number) => (x << r) | (x >>> (32 - r));
const round = (acc: number, lane: number) => Math.imul(rotl((acc + Math.imul(lane, P2)) | 0, 13), P1);
const u32At = (b: Uint8Array, i: number) => b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24);

function xxh32(b: Uint8Array, len: number): number {
  let i = 0;
  let h: number;
  if (len >= 16) {
    let v1 = (P1 + P2) | 0;
    let v2 = P2 | 0;
    let v3 = 0;
    let v4 = -P1 | 0;
    for (const limit = len - 16; i <= limit; i += 16) {
      v1 = round(v1, u32At(b, i));
      v2 = round(v2, u32At(b, i + 4));
      v3 = round(v3, u32At(b, i + 8));
      v4 = round(v4, u32At(b, i + 12));
    }
    h = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) | 0;
  } else {
    h = P5;
  }
  h = (h + len) | 0;
  for (; i + 4 <= len; i += 4) h = Math.imul(rotl((h + Math.imul(u32At(b, i), P3)) | 0, 17), P4);
  for (; i < len; i++) h = Math.imul(rotl((h + Math.imul(b[i]!, P5)) | 0, 11), P1);
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h >>> 0;
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
    // Encode first: utf8Into may replace `buffer` with a larger one, so it must not be read
    // before the call (as an argument evaluated ahead of it would be).
    const len = utf8Into(key);
    return xxh32(buffer, len);
  }
  if (key instanceof Uint8Array) return xxh32(key, key.length);
  throw new TypeError(`hashKey: key must be a string or a Uint8Array, got ${key === null ? 'null' : typeof key}`);
}
