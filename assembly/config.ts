// Per-instance view of the layout: the config words are written once into the header by
// `configure` and every instance (main thread or worker) caches them in its own globals
// with `attach`, so hot paths never re-read them from shared memory.
import {
  LAYOUT_BASE, HEADER_BYTES, CACHE_LINE, MAGIC, H_MAGIC, H_TABLE_CAPACITY, H_SLOT_COUNT,
  H_RING_CAPACITY, H_MAX_PAYLOAD, H_LANE_COUNT, H_LANE_BYTES, H_BACKPRESSURE, H_SAMPLE_RATE,
  H_SAMPLE_FILL, H_RING_BYTES, H_KEY_ORDER, H_RING_LIMIT, FENCE_HEADER_BYTES, FENCE_BYTES, SLOT_HEADER_BYTES, RECORD_BYTES, LANE_HEADER_BYTES, MAX_LANES,
} from "./layout";

export let tableCapacity: u32 = 0;
export let slotCount: u32 = 0;
export let ringCapacity: u32 = 0;
export let ringMask: u32 = 0;
// Records a ring may hold at once (the capacity asked for); below ringCapacity only when that
// was not a power of two, and then every reservation checks it against the head.
export let ringLimit: u32 = 0;
export let ringLimited: bool = false;
export let maxPayload: u32 = 0;
export let laneCount: u32 = 0;
export let laneBytes: u32 = 0;
export let backpressure: i32 = 0;
export let sampleRate: u32 = 1;
export let sampleFill: f64 = 1.0;
export let ringBytes: u32 = 0;    // payload area of each ring
export let ringSpan: u32 = 0;     // byte positions run modulo this (2 × ringBytes, see layout.ts)
export let payloadOffset: u32 = 0; // from a slot's base to its payload area
export let slotStride: u32 = 0;
export let tablesBase: usize = 0;
export let lanesBase: usize = 0;
export let slotsBase: usize = 0;
export let fencesBase: usize = 0; // the fence region's header; fence i at fencesBase + FENCE_HEADER_BYTES + i × FENCE_BYTES
export let keyOrder: bool = false; // fenced entries exist (routing 'affinity' with key order)

@inline function alignUp(n: u64, a: u64): u64 { return (n + a - 1) & ~(a - 1); }

export function slotStrideFor(ringCap: u32, ringBytesEach: u32): f64 {
  return <f64>alignUp(<u64>SLOT_HEADER_BYTES + <u64>ringCap * RECORD_BYTES + ringBytesEach, CACHE_LINE);
}

// Byte offsets of the regions after the header; slots come last so they can grow.
export function tablesOffset(): u64 { return <u64>LAYOUT_BASE + HEADER_BYTES; }
export function fencesOffset(tableCap: u32): u64 {
  return alignUp(tablesOffset() + <u64>2 * 4 * tableCap, CACHE_LINE);
}
export function lanesOffset(tableCap: u32): u64 {
  return alignUp(fencesOffset(tableCap) + <u64>FENCE_HEADER_BYTES + <u64>tableCap * FENCE_BYTES, CACHE_LINE);
}
export function slotsOffset(tableCap: u32, lanes: u32, laneSize: u32): u64 {
  return alignUp(lanesOffset(tableCap) + <u64>lanes * laneSize, CACHE_LINE);
}

export function configure(
  tableCap: u32, slots: u32, ringCap: u32, ringBytesEach: u32, maxPayloadBytes: u32, lanes: u32, laneSize: u32,
  mode: i32, rate: u32, fill: f64, fenced: u32, ringLimitRecords: u32,
): void {
  const h = <usize>LAYOUT_BASE;
  store<u32>(h + H_TABLE_CAPACITY, tableCap);
  store<u32>(h + H_SLOT_COUNT, slots);
  store<u32>(h + H_RING_CAPACITY, ringCap);
  store<u32>(h + H_RING_LIMIT, ringLimitRecords < ringCap ? ringLimitRecords : ringCap);
  store<u32>(h + H_RING_BYTES, ringBytesEach);
  store<u32>(h + H_MAX_PAYLOAD, maxPayloadBytes);
  store<u32>(h + H_LANE_COUNT, lanes < <u32>MAX_LANES ? lanes : <u32>MAX_LANES);
  store<u32>(h + H_LANE_BYTES, laneSize);
  store<i32>(h + H_BACKPRESSURE, mode);
  store<u32>(h + H_SAMPLE_RATE, rate == 0 ? 1 : rate);
  store<f64>(h + H_SAMPLE_FILL, fill);
  store<u32>(h + H_KEY_ORDER, fenced);
  atomic.store<u32>(h + H_MAGIC, MAGIC); // publish last
}

// Returns 0 on success, -1 when the memory was never configured.
export function attach(): i32 {
  const h = <usize>LAYOUT_BASE;
  if (atomic.load<u32>(h + H_MAGIC) != MAGIC) return -1;
  tableCapacity = load<u32>(h + H_TABLE_CAPACITY);
  slotCount = load<u32>(h + H_SLOT_COUNT);
  ringCapacity = load<u32>(h + H_RING_CAPACITY);
  ringMask = ringCapacity == 0 ? 0 : ringCapacity - 1;
  ringLimit = load<u32>(h + H_RING_LIMIT);
  ringLimited = ringLimit < ringCapacity;
  maxPayload = load<u32>(h + H_MAX_PAYLOAD);
  laneCount = load<u32>(h + H_LANE_COUNT);
  laneBytes = load<u32>(h + H_LANE_BYTES);
  backpressure = load<i32>(h + H_BACKPRESSURE);
  sampleRate = load<u32>(h + H_SAMPLE_RATE);
  sampleFill = load<f64>(h + H_SAMPLE_FILL);
  ringBytes = load<u32>(h + H_RING_BYTES);
  ringSpan = ringBytes << 1;
  payloadOffset = <u32>SLOT_HEADER_BYTES + ringCapacity * <u32>RECORD_BYTES;
  slotStride = <u32>slotStrideFor(ringCapacity, ringBytes);
  tablesBase = <usize>tablesOffset();
  lanesBase = <usize>lanesOffset(tableCapacity);
  fencesBase = <usize>fencesOffset(tableCapacity);
  keyOrder = load<u32>(h + H_KEY_ORDER) != 0;
  slotsBase = <usize>slotsOffset(tableCapacity, laneCount, laneBytes);
  return 0;
}

@inline export function slotAddr(slot: u32): usize {
  return slotsBase + <usize>slot * slotStride;
}
@inline export function laneAddr(lane: u32): usize {
  return lanesBase + <usize>lane * laneBytes;
}
@inline export function recordAddr(slotBase: usize, index: u32): usize {
  return slotBase + SLOT_HEADER_BYTES + <usize>(index & ringMask) * RECORD_BYTES;
}
@inline export function payloadAddr(slotBase: usize): usize {
  return slotBase + payloadOffset;
}
