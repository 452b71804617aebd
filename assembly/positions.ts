// The tail word and byte positions, read by the ring (assembly/ring.ts) and by the
// collector (assembly/metrics.ts).
//
// The tail word holds the record count (low half, mod 2^32: it indexes the descriptors), the
// byte position after the last reservation (bits 32-62) and the closed bit (bit 63), so one
// CAS reserves records and bytes together. Byte positions run modulo ringSpan = 2 × ringBytes
// (layout.ts, BYTE POSITIONS).
import { R_TAIL, R_BYTE_HEAD, PAYLOAD_ALIGN } from "./layout";
import { ringBytes, ringSpan } from "./config";

@inline export function tailRecords(tail: u64): u32 { return <u32>tail; }
@inline export function tailPosition(tail: u64): u32 { return <u32>(tail >>> 32) & 0x7fffffff; }
@inline export function tailOf(records: u32, position: u32): u64 { return <u64>records | (<u64>position << 32); }

@inline export function positionAdd(p: u32, n: u32): u32 { const r = p + n; return r >= ringSpan ? r - ringSpan : r; }
@inline export function positionsBetween(from: u32, to: u32): u32 { return to >= from ? to - from : to + ringSpan - from; }
@inline export function offsetOf(p: u32): u32 { return p >= ringBytes ? p - ringBytes : p; }
@inline export function extentOf(len: u32): u32 { return (len + <u32>(PAYLOAD_ALIGN - 1)) & ~<u32>(PAYLOAD_ALIGN - 1); }

@inline export function byteHeadOf(base: usize): u32 { return <u32>atomic.load<u64>(base + R_BYTE_HEAD); }

// Payload bytes held (reserved and not yet freed), up to ringBytes. Read head first: it only
// moves towards the tail, so the distance is never taken across a lap.
@inline export function bytesUsedAt(base: usize): u32 {
  const head = byteHeadOf(base);
  return positionsBetween(head, tailPosition(atomic.load<u64>(base + R_TAIL)));
}
