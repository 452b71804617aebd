// Per-shard ring of fixed-size record slots, many producers and one consumer.
//
// Reservation follows the per-slot sequence scheme: record i of the ring carries a
// sequence word; a producer may take index t only while seq == t, takes it with one CAS on
// the tail, copies the payload and publishes with seq = t + 1. The consumer claims
// published records in order, reads them in place, and on acknowledgement frees each with
// seq = t + capacity (so the slot is ready for index t + capacity). Every record is
// contiguous, so consumers get zero-copy views.
//
// The tail word also carries a "closed" bit, flipped when a shard starts draining: a
// producer's CAS then fails, it selects again from the (already rebuilt) table, and no
// reservation can land in a ring after it was closed.
import {
  R_TAIL, R_HEAD, R_CLAIMED, R_DOORBELL, R_BASE, REC_SEQ, REC_LEN, REC_PAYLOAD, LAYOUT_BASE, H_UNROUTED,
  M_DROPPED_NEWEST, M_DROPPED_SAMPLED, M_REFUSED, M_EVICTED,
  M_LATENCY, M_SAMPLE_COUNTER, BP_DROP_OLDEST, BP_FAIL_PRODUCER, BP_SAMPLE,
  PUSH_UNROUTED, PUSH_FULL, PUSH_SAMPLED, PUSH_REFUSED, PUSH_CLOSED, PUSH_STOPPED, L_SCRATCH, L_RESULT,
  L_FAILED_SHARD, H_STOPPED,
  CONTENTION_NS_PER_RETRY, LATENCY_SAMPLE_MASK,
} from "./layout";
import {
  slotAddr, laneAddr, recordAddr, ringCapacity, maxPayload, backpressure, sampleRate, sampleFill,
} from "./config";
import { addToPair, eventsAt, initMetrics } from "./metrics";
import { selectEntry, NO_ENTRY } from "./select";

// Bit 63 of the tail word. The other 63 bits count every reservation ever made, so the
// tail doubles as the shard's accepted-events total (no separate counter on the hot path).
const CLOSED: u64 = 1 << 63;
const COUNT: u64 = ~CLOSED;
const MAX_RESELECT: i32 = 1000;

@inline function lenAt(base: usize): u32 {
  return <u32>atomic.load<u64>(base + R_TAIL) - atomic.load<u32>(base + R_HEAD);
}

// Wake the consumer if it is parked on its doorbell.
@inline function ring(base: usize): void {
  const bell = <usize>load<u32>(base + R_DOORBELL);
  if (bell != 0 && atomic.load<i32>(bell) != 0) {
    atomic.store<i32>(bell, 0);
    atomic.notify(bell, 1);
  }
}

// dropOldest: free the oldest unclaimed record. Only when no batch is in flight with the
// consumer (head == claimed), so records being read in place are never overwritten.
function evictOldest(base: usize): bool {
  const head = atomic.load<u32>(base + R_HEAD);
  const claimed = atomic.load<u32>(base + R_CLAIMED);
  if (head != claimed) return false;
  const rec = recordAddr(base, claimed);
  if (atomic.load<u32>(rec + REC_SEQ) != claimed + 1) return false; // still being written
  if (atomic.cmpxchg<u32>(base + R_CLAIMED, claimed, claimed + 1) != claimed) return true; // raced: retry
  atomic.store<u32>(rec + REC_SEQ, claimed + ringCapacity);
  atomic.add<u64>(base + M_EVICTED, 1); // before the head moves: delivered = head - evicted never overshoots
  advanceHead(base, claimed + 1); // unless an acknowledgement already moved past it
  return true;
}

// Append `len` bytes from `src` to the ring at `base`. Returns 0 or a PUSH_* code.
export function pushAt(base: usize, src: usize, len: u32): i32 {
  if (backpressure == BP_SAMPLE && <f64>lenAt(base) > sampleFill * <f64>ringCapacity) {
    if (atomic.add<u32>(base + M_SAMPLE_COUNTER, 1) % sampleRate != 0) {
      atomic.add<u64>(base + M_DROPPED_SAMPLED, 1);
      return PUSH_SAMPLED;
    }
  }
  let retries: u32 = 0;
  let tail = atomic.load<u64>(base + R_TAIL);
  let index: u32 = 0;
  while (true) {
    if (tail & CLOSED) return PUSH_CLOSED;
    index = <u32>tail;
    const seq = atomic.load<u32>(recordAddr(base, index) + REC_SEQ);
    const diff = <i32>(seq - index);
    if (diff == 0) {
      const seen = atomic.cmpxchg<u64>(base + R_TAIL, tail, tail + 1);
      if (seen == tail) break;
      tail = seen;
      retries++;
    } else if (diff < 0) { // full: the slot still holds index - capacity
      if (backpressure == BP_DROP_OLDEST && evictOldest(base)) {
        retries++;
        tail = atomic.load<u64>(base + R_TAIL);
        continue;
      }
      if (backpressure == BP_FAIL_PRODUCER) {
        atomic.add<u64>(base + M_REFUSED, 1);
        return PUSH_REFUSED;
      }
      atomic.add<u64>(base + M_DROPPED_NEWEST, 1);
      return PUSH_FULL;
    } else { // another producer took this index first
      retries++;
      tail = atomic.load<u64>(base + R_TAIL);
    }
  }
  const rec = recordAddr(base, index);
  memory.copy(rec + REC_PAYLOAD, src, len);
  store<u32>(rec + REC_LEN, len);
  atomic.store<u32>(rec + REC_SEQ, index + 1); // publish
  const nth = eventsAt(base, 1);
  if ((nth & LATENCY_SAMPLE_MASK) == 0) addToPair(base + M_LATENCY, retries * CONTENTION_NS_PER_RETRY);
  ring(base); // the ring length is not stored: collectors read it from tail and head

  return 0;
}

// Route by hash and append. Returns the shard id (≥ 0) or a PUSH_* code; on a refusal the
// shard id is left in the lane's L_FAILED_SHARD word.
function routeAndPush(lane: usize, hash: u32, src: usize, len: u32): i32 {
  if (atomic.load<u32>(<usize>LAYOUT_BASE + H_STOPPED) != 0) return PUSH_STOPPED;
  for (let attempt = 0; attempt < MAX_RESELECT; attempt++) {
    const entry = selectEntry(hash);
    if (entry == NO_ENTRY) break;
    const r = pushAt(slotAddr(entry >>> 16), src, len);
    if (r == 0) return <i32>(entry & 0xffff);
    if (r != PUSH_CLOSED) {
      store<u32>(lane + L_FAILED_SHARD, entry & 0xffff);
      return r;
    }
  }
  atomic.add<u64>(<usize>LAYOUT_BASE + H_UNROUTED, 1);
  return PUSH_UNROUTED;
}

// One event staged at the lane's scratch.
export function push(lane: u32, hash: u32, len: u32): i32 {
  const lb = laneAddr(lane);
  if (len > maxPayload) return PUSH_REFUSED;
  return routeAndPush(lb, hash, lb + L_SCRATCH, len);
}

// ---- batches ------------------------------------------------------------------------------
// Consecutive events of a batch that route to the same shard form a run. A run is reserved
// with one CAS on the tail (as many records as are free from the tail on, each slot checked:
// under dropOldest an evictor may free an older slot after the consumer freed a newer one),
// copied and published record by record, counted with one atomic add, and rings the
// doorbell once. Whatever a run cannot take (full or closed ring, sample mode, no shard)
// goes through the single-event path, which applies backpressure exactly as push does.

const MAX_RUN: u32 = 1024;
let runFirst: u32 = 0;   // first index reserved by the last reserveRun
let runRetries: u32 = 0; // failed CAS attempts of the last reserveRun

function reserveRun(base: usize, k: u32): u32 {
  runRetries = 0;
  for (let attempt = 0; attempt < 16; attempt++) {
    const tail = atomic.load<u64>(base + R_TAIL);
    if (tail & CLOSED) return 0;
    const t = <u32>tail;
    let free: u32 = 0;
    while (free < k && atomic.load<u32>(recordAddr(base, t + free) + REC_SEQ) == t + free) free++;
    if (free == 0) return 0;
    if (atomic.cmpxchg<u64>(base + R_TAIL, tail, tail + <u64>free) == tail) {
      runFirst = t;
      return free;
    }
    runRetries++;
  }
  return 0;
}

// Two ways a batch is staged in the lane's scratch:
//   variable (pushBatch):      [hash u32][len u32][bytes, padded to 4], event after event
//   fixed (pushFixedBatch):    count hashes (u32), then count records of `fixedSize` bytes
// The loop below reads events through these helpers: in fixed mode `p` is unused.
let fixedSize: u32 = 0;
let fixedHashes: usize = 0;
let fixedRecords: usize = 0;

@inline function evHash(p: usize, i: u32): u32 { return fixedSize ? load<u32>(fixedHashes + (<usize>i << 2)) : load<u32>(p); }
@inline function evLen(p: usize): u32 { return fixedSize ? fixedSize : load<u32>(p + 4); }
@inline function evData(p: usize, i: u32): usize { return fixedSize ? fixedRecords + <usize>i * fixedSize : p + 8; }
@inline function evNext(p: usize): usize { return fixedSize ? p : p + 8 + ((<usize>load<u32>(p + 4) + 3) & ~3); }

// Writes [accepted, unrouted, full, sampled, stop] at the lane's result words and returns
// how many events it consumed. It stops right before an event refused under failProducer
// (stop = 1) or when the manager is closed (stop = 2).
function batchLoop(lane: u32, count: u32): u32 {
  const lb = laneAddr(lane);
  let p = lb + L_SCRATCH;
  let accepted: u32 = 0, unrouted: u32 = 0, full: u32 = 0, sampled: u32 = 0, stop: u32 = 0;
  let i: u32 = 0;
  while (i < count) {
    if (atomic.load<u32>(<usize>LAYOUT_BASE + H_STOPPED) != 0) { stop = 2; break; }
    const entry = selectEntry(evHash(p, i));
    if (entry != NO_ENTRY && backpressure != BP_SAMPLE && evLen(p) <= maxPayload) {
      let k: u32 = 1;
      let q = evNext(p);
      while (i + k < count && k < MAX_RUN && evLen(q) <= maxPayload && selectEntry(evHash(q, i + k)) == entry) {
        q = evNext(q);
        k++;
      }
      const base = slotAddr(entry >>> 16);
      const got = reserveRun(base, k);
      if (got > 0) {
        for (let j: u32 = 0; j < got; j++) {
          const len = evLen(p);
          const rec = recordAddr(base, runFirst + j);
          memory.copy(rec + REC_PAYLOAD, evData(p, i + j), len);
          store<u32>(rec + REC_LEN, len);
          atomic.store<u32>(rec + REC_SEQ, runFirst + j + 1); // publish
          p = evNext(p);
        }
        const before = eventsAt(base, got);
        // one latency sample when the run passes a multiple of 64 events, as single pushes do
        if (((before + LATENCY_SAMPLE_MASK) & ~LATENCY_SAMPLE_MASK) - before < got) {
          addToPair(base + M_LATENCY, runRetries * CONTENTION_NS_PER_RETRY);
        }
        ring(base);
        accepted += got;
        i += got;
        if (got == k) continue;
      }
    }
    // the single-event path for event i
    const len = evLen(p);
    const r = len > maxPayload ? PUSH_REFUSED : routeAndPush(lb, evHash(p, i), evData(p, i), len);
    if (r >= 0) accepted++;
    else if (r == PUSH_UNROUTED) unrouted++;
    else if (r == PUSH_FULL) full++;
    else if (r == PUSH_SAMPLED) sampled++;
    else { stop = r == PUSH_STOPPED ? 2 : 1; break; }
    p = evNext(p);
    i++;
  }
  const out = lb + L_RESULT;
  store<u32>(out, accepted);
  store<u32>(out + 4, unrouted);
  store<u32>(out + 8, full);
  store<u32>(out + 12, sampled);
  store<u32>(out + 16, stop);
  return i;
}

// Events staged in the variable format (see above).
export function pushBatch(lane: u32, count: u32): u32 {
  fixedSize = 0;
  return batchLoop(lane, count);
}

// `count` records of `size` bytes: hashes at the scratch, records at scratch + recordsOffset.
export function pushFixedBatch(lane: u32, count: u32, size: u32, recordsOffset: u32): u32 {
  const scratch = laneAddr(lane) + L_SCRATCH;
  fixedSize = size == 0 ? 1 : size;
  fixedHashes = scratch;
  fixedRecords = scratch + recordsOffset;
  const n = batchLoop(lane, count);
  fixedSize = 0;
  return n;
}

export function ringLen(slot: u32): u32 { return lenAt(slotAddr(slot)); }

// Hand up to `max` published records to the consumer. Writes the first index at `out`
// and returns how many; the consumer reads them in place and then calls ringAck.
export function ringClaim(slot: u32, max: u32, out: usize): u32 {
  const base = slotAddr(slot);
  while (true) {
    const start = atomic.load<u32>(base + R_CLAIMED);
    let n: u32 = 0;
    while (n < max && atomic.load<u32>(recordAddr(base, start + n) + REC_SEQ) == start + n + 1) n++;
    if (n == 0) return 0;
    if (atomic.cmpxchg<u32>(base + R_CLAIMED, start, start + n) == start) {
      store<u32>(out, start);
      return n;
    }
  }
}

// Acknowledge records [start, start + n): free their slots, move the head, count them.
export function ringAck(slot: u32, start: u32, n: u32): void {
  const base = slotAddr(slot);
  // Free the slots in order, then commit with one CAS on the head (which also counts them:
  // delivered is derived from the head). A consumer thread terminated in between leaves a
  // freed prefix behind the head; ringRewind completes it.
  for (let i: u32 = 0; i < n; i++) {
    atomic.store<u32>(recordAddr(base, start + i) + REC_SEQ, start + i + ringCapacity);
  }
  advanceHead(base, start + n);
}

// Move the 64-bit head forward to ring index `end` (never back), with a CAS.
function advanceHead(base: usize, end: u32): void {
  let head = atomic.load<u64>(base + R_HEAD);
  while (<i32>(end - <u32>head) > 0) {
    const seen = atomic.cmpxchg<u64>(base + R_HEAD, head, head + <u64>(end - <u32>head));
    if (seen == head) return;
    head = seen;
  }
}

// Forget a claim that was never acknowledged (its consumer died): the records will be
// handed out again from the last acknowledgement.
export function ringRewind(slot: u32): void {
  const base = slotAddr(slot);
  // A consumer stopped inside ringAck (a thread terminated from outside) may have freed a
  // prefix of its batch without committing it. Those records were consumed (ringAck runs
  // after the consumer returned): commit them, then hand out the rest again.
  const claimed = atomic.load<u32>(base + R_CLAIMED);
  let h = <u32>atomic.load<u64>(base + R_HEAD);
  while (h != claimed && atomic.load<u32>(recordAddr(base, h) + REC_SEQ) == h + ringCapacity) h++;
  advanceHead(base, h);
  atomic.store<u32>(base + R_CLAIMED, <u32>atomic.load<u64>(base + R_HEAD));
}

export function ringClose(slot: u32): void {
  const base = slotAddr(slot);
  let tail = atomic.load<u64>(base + R_TAIL);
  while (!(tail & CLOSED)) {
    const seen = atomic.cmpxchg<u64>(base + R_TAIL, tail, tail | CLOSED);
    if (seen == tail) return;
    tail = seen;
  }
}

export function ringIsClosed(slot: u32): i32 {
  return (atomic.load<u64>(slotAddr(slot) + R_TAIL) & CLOSED) != 0 ? 1 : 0;
}

// 1 when every reserved record has been published (no producer is mid-write).
export function ringAllPublished(slot: u32): i32 {
  const base = slotAddr(slot);
  const tail = <u32>atomic.load<u64>(base + R_TAIL);
  for (let i = atomic.load<u32>(base + R_HEAD); i != tail; i++) {
    const seq = atomic.load<u32>(recordAddr(base, i) + REC_SEQ);
    if (seq != i + 1) return 0;
  }
  return 1;
}

export function ringSetDoorbell(slot: u32, addr: u32): void {
  atomic.store<u32>(slotAddr(slot) + R_DOORBELL, addr);
}

// Prepare a slot for a new shard: metrics zeroed, ring empty and open.
//
// The ring's counts go on from where the slot's previous shard left them (the tail count
// never goes back), so a producer that read the old tail before a long stall cannot win its
// CAS against a reused slot with a stale value: either the tail moved on and the CAS fails,
// or it did not, and the index it reserves is free in the new ring too (its sequence word
// is laid out below for exactly these indexes). The shard's pushed total is counted from
// R_BASE.
export function slotInit(slot: u32, capacity: u32): void {
  const base = slotAddr(slot);
  const start = atomic.load<u64>(base + R_TAIL) & COUNT; // 0 for a never-used slot
  atomic.store<u64>(base + R_TAIL, start | CLOSED); // keep stale producers out while resetting
  initMetrics(slot, capacity);
  const first = <u32>start;
  for (let i: u32 = 0; i < ringCapacity; i++) atomic.store<u32>(recordAddr(base, first + i) + REC_SEQ, first + i);
  store<u64>(base + R_BASE, start);
  atomic.store<u64>(base + R_HEAD, start);
  atomic.store<u32>(base + R_CLAIMED, first);
  atomic.store<u32>(base + R_DOORBELL, 0);
  atomic.store<u64>(base + R_TAIL, start); // open
}

// Refuse every later push (ShardManager.close).
export function stopPushes(): void {
  atomic.store<u32>(<usize>LAYOUT_BASE + H_STOPPED, 1);
}

// Events this shard's ring accepted (reservations, including any still being written).
export function pushedTotal(slot: u32): f64 {
  const base = slotAddr(slot);
  return <f64>((atomic.load<u64>(base + R_TAIL) & COUNT) - load<u64>(base + R_BASE));
}

// Records this shard's consumers acknowledged: the head's advance, less evictions.
export function deliveredTotal(slot: u32): f64 {
  const base = slotAddr(slot);
  return <f64>(atomic.load<u64>(base + R_HEAD) - load<u64>(base + R_BASE) - atomic.load<u64>(base + M_EVICTED));
}

export function unroutedTotal(): f64 {
  return <f64>atomic.load<u64>(<usize>LAYOUT_BASE + H_UNROUTED);
}
