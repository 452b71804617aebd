// Per-shard collector counters. A (count, sum) pair is one 64-bit word updated with a
// compare-and-swap, so a reader that swaps it out always gets a sum with its own count.
// Both halves saturate at 2^32 - 1 instead of wrapping.
import {
  M_LATENCY, M_EVENTS, M_DRAIN_PUSHES, M_BUFFER_LEN, M_FLUSH, M_DRAINING, M_CAPACITY,
  CACHE_LINE, R_TAIL, R_CURSOR, M_WINDOW_TAIL, M_DRAIN_TAIL, COLLECT_BUFFER_LEN, COLLECT_EVENTS, COLLECT_LATENCY_COUNT,
  COLLECT_LATENCY_SUM, COLLECT_FLUSH_COUNT, COLLECT_FLUSH_SUM, COLLECT_BYTES_USED,
} from "./layout";
import { slotAddr, ringCapacity } from "./config";
import { bytesUsedAt, tailRecords } from "./positions";

const U32_MAX: u64 = 0xffffffff;

// `n` samples of `sample` each (a batch run's sampled events share one reservation, so one
// contention figure), both halves saturating.
@inline function addSamples(addr: usize, n: u32, sample: u32): void {
  let old = atomic.load<u64>(addr);
  while (true) {
    let count = (old >>> 32) + <u64>n;
    let sum = (old & U32_MAX) + <u64>n * <u64>sample;
    if (count > U32_MAX) count = U32_MAX;
    if (sum > U32_MAX) sum = U32_MAX;
    const seen = atomic.cmpxchg<u64>(addr, old, (count << 32) | sum);
    if (seen == old) return;
    old = seen;
  }
}

@inline export function addToPair(addr: usize, sample: u32): void { addSamples(addr, 1, sample); }
export function addSamplesToPair(addr: usize, n: u32, sample: u32): void { addSamples(addr, n, sample); }

// Events-in-window (low half) and pushes-since-drain-start (high half) share one 64-bit
// word, so a recorded event bumps both with a single atomic add. Returns the previous event
// count. A ring's pushes do not come through here: the ring's tail already counts every
// reservation, so a window's events are the tail's progress since the window began
// (M_WINDOW_TAIL) and the drain's pushes its progress since draining began (M_DRAIN_TAIL):
// one locked instruction fewer per push. Both are added to what this word holds (events
// recorded by hand through a collector).
const EVENT_AND_DRAIN_PUSH: u64 = 0x0000000100000001;
const LOW_HALF: u64 = 0x00000000ffffffff;
const HIGH_HALF: u64 = 0xffffffff00000000;

// `n` events at once (one push, or a batch run): one atomic add for both halves.
@inline export function eventsAt(base: usize, n: u32): u32 {
  return <u32>atomic.add<u64>(base + M_EVENTS, EVENT_AND_DRAIN_PUSH * <u64>n);
}

export function recordEventOnly(slot: u32): void { eventsAt(slotAddr(slot), 1); }
export function recordLatencySample(slot: u32, ns: u32): void { addToPair(slotAddr(slot) + M_LATENCY, ns); }
export function recordPush(slot: u32, ns: u32): void {
  const base = slotAddr(slot);
  eventsAt(base, 1);
  addToPair(base + M_LATENCY, ns);
}
export function recordFlush(slot: u32, us: u32): void { addToPair(slotAddr(slot) + M_FLUSH, us); }
export function recordBufferLen(slot: u32, len: u32): void { atomic.store<u32>(slotAddr(slot) + M_BUFFER_LEN, len); }

// A shard with a ring reports the ring's true length (reserved, not yet acknowledged):
// pushes and acknowledgements then need not store it, which keeps the consumer off the
// producers' line. Collectors without a ring report what recordBufferLen stored.
@inline function bufferLenAt(base: usize): u32 {
  if (ringCapacity == 0) return atomic.load<u32>(base + M_BUFFER_LEN);
  return <u32>atomic.load<u64>(base + R_TAIL) - <u32>atomic.load<u64>(base + R_CURSOR); // tail − head
}
export function bufferLen(slot: u32): u32 { return bufferLenAt(slotAddr(slot)); }

// The ring's reservation count mod 2^32 (0 for collectors without a ring): only differences
// of it are used.
@inline function tailCount(base: usize): u64 {
  return ringCapacity == 0 ? 0 : <u64>tailRecords(atomic.load<u64>(base + R_TAIL));
}

// Zero the drain counter before publishing the flag, so a push that sees the flag is
// always counted after the reset.
export function setDraining(slot: u32, on: i32): void {
  const base = slotAddr(slot);
  if (on) {
    atomic.and<u64>(base + M_EVENTS, LOW_HALF); // zero the drain half only
    atomic.store<u64>(base + M_DRAIN_TAIL, tailCount(base));
  }
  atomic.store<u32>(base + M_DRAINING, on ? 1 : 0);
}
export function isDraining(slot: u32): i32 { return atomic.load<u32>(slotAddr(slot) + M_DRAINING) != 0 ? 1 : 0; }
export function pushesSinceDrainStart(slot: u32): u32 {
  const base = slotAddr(slot);
  return atomic.load<u32>(base + M_DRAIN_PUSHES) + <u32>(tailCount(base) - atomic.load<u64>(base + M_DRAIN_TAIL));
}
export function capacityOf(slot: u32): u32 { return load<u32>(slotAddr(slot) + M_CAPACITY); }

// Swap the window counters to zero and write the window (COLLECT_* words) at `out`.
export function collectAndReset(slot: u32, out: usize): void {
  const base = slotAddr(slot);
  const latency = atomic.xchg<u64>(base + M_LATENCY, 0);
  const flush = atomic.xchg<u64>(base + M_FLUSH, 0);
  store<u32>(out + COLLECT_BUFFER_LEN, bufferLenAt(base));
  store<u32>(out + COLLECT_BYTES_USED, ringCapacity == 0 ? 0 : bytesUsedAt(base));
  const tail = tailCount(base);
  const ringEvents = <u32>(tail - atomic.load<u64>(base + M_WINDOW_TAIL));
  atomic.store<u64>(base + M_WINDOW_TAIL, tail);
  store<u32>(out + COLLECT_EVENTS, <u32>atomic.and<u64>(base + M_EVENTS, HIGH_HALF) + ringEvents); // take and zero events
  store<u32>(out + COLLECT_LATENCY_COUNT, <u32>(latency >>> 32));
  store<u32>(out + COLLECT_LATENCY_SUM, <u32>latency);
  store<u32>(out + COLLECT_FLUSH_COUNT, <u32>(flush >>> 32));
  store<u32>(out + COLLECT_FLUSH_SUM, <u32>flush);
}

// Zero every metrics word of a slot (the two metric lines) and set its capacity.
export function initMetrics(slot: u32, capacity: u32): void {
  const base = slotAddr(slot);
  memory.fill(base, 0, 2 * CACHE_LINE);
  store<u32>(base + M_CAPACITY, capacity);
}
