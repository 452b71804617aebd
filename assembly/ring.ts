// Per-shard ring: many producers, one consumer. Records are reserved by index in a ring of
// fixed-size descriptors, and their payloads by bytes in the slot's payload area, both with
// one compare-and-swap on the tail word (index and byte position share it).
//
// Reservation follows the per-slot sequence scheme: descriptor i carries a sequence word; a
// producer may take index t only while seq == t and the payload's bytes fit before the byte
// head, takes both with one CAS on the tail, marks the record as being written (a CAS: see
// "stalled reservations"), copies the payload and publishes with seq = t + 1 (batch calls
// mark and publish a chunk of up to four records at once: WRITING A RUN). The consumer
// claims published records in order, reads them in place, and acknowledges them: one store
// of the cursor commits the batch, then each descriptor is freed with seq = t + capacity
// (ready for index t + capacity) and the byte head moves past the batch's payloads. Every
// payload is contiguous (none crosses the end of the area), so consumers get zero-copy views.
//
// The byte head only ever moves to positions known for sure: the end a published record
// wrote into its descriptor, or the tail's position when every reserved record has been
// acknowledged. A skipped record's extent is unknown (its producer died holding it), so
// acknowledging one moves the byte head only when it was the last reservation; otherwise the
// next published record's end covers its bytes.
//
// The tail word also carries a "closed" bit, flipped when a shard starts draining (or the
// manager closes): a producer's CAS then fails, it selects again from the (already rebuilt)
// table, and no reservation can land in a ring after it was closed.
//
// Threads die at the wrong moment (worker.terminate() stops WebAssembly at a function entry
// or a loop back-edge, never inside straight-line code). The protocol is built around that:
//  - a commit (reserve, publish, claim, acknowledge, evict, rewind) is one atomic step, with
//    the counters it implies updated in the same straight-line code;
//  - a producer that dies between reserving and writing leaves records in the "free" state
//    behind the tail. The manager's watchdog turns such a stalled reservation into padding
//    with a CAS (free → skipped) that a live-but-slow producer's own CAS (free → writing)
//    excludes: whoever wins owns the record, and a producer that loses pushes its event again.
//    The watchdog skips from the first unclaimed record on and stops at a marked one, so the
//    unmarked records of a chunk behind its marked first one are never taken.
//  - an acknowledgement commits first and frees the descriptors and bytes after, so a
//    consumer that dies in between leaves records behind the head that nobody has freed yet;
//    the rewind frees them. A byte head left behind is only conservative (less room).
import {
  R_TAIL, R_CURSOR, R_DOORBELL, R_BASE, R_BYTE_HEAD, REC_SEQ, REC_LEN, REC_OFF, REC_END, LAYOUT_BASE, H_UNROUTED,
  M_DROPPED_NEWEST, M_DROPPED_SAMPLED, M_REFUSED, M_EVICTED, M_DELIVERED, M_SKIPPED,
  M_LATENCY, M_SAMPLE_COUNTER, BP_DROP_OLDEST, BP_FAIL_PRODUCER, BP_SAMPLE,
  PUSH_UNROUTED, PUSH_FULL, PUSH_SAMPLED, PUSH_REFUSED, PUSH_CLOSED, PUSH_STOPPED, L_SCRATCH, L_RESULT,
  L_FAILED_SHARD, H_STOPPED, SEQ_WRITING, SEQ_SKIPPED,
  BATCH_ACCEPTED, BATCH_UNROUTED, BATCH_FULL, BATCH_SAMPLED, BATCH_STOP, STOP_NONE, STOP_REFUSED, STOP_CLOSED,
  CLAIM_START, CLAIM_SKIPPED, M_WINDOW_TAIL, M_DRAIN_TAIL, M_EVENTS, TOTAL_PUSHED, TOTAL_DELIVERED, TOTAL_DROPPED_NEWEST, TOTAL_SAMPLED,
  TOTAL_REFUSED, TOTAL_EVICTED, TOTAL_SKIPPED,
  CONTENTION_NS_PER_RETRY, LATENCY_SAMPLE_MASK, FENCED_SLOT, PUSH_MOVING, PUSH_MOVING_DROPPED, STOP_MOVING,
  PUSH_NOT_VISIBLE, STOP_NOT_VISIBLE,
  GROUP_MAX, GROUP_BLOCK, G_ENTRY, G_COUNT, G_RESERVED, G_RUN_FIRST, G_RUN_POSITION, G_RETRIES, G_UNWRITTEN,
  G_EXTENTS, G_MAX_EXTENT, G_NEXT, G_BYTES, LIST_BYTES, L_GROUPS, L_LISTS, L_EVENT_AT, H_OWED_REPUSHED, H_BLOCKS_RACED,
  H_GROWTH_WAITS,
} from "./layout";
import {
  slotAddr, laneAddr, recordAddr, payloadAddr, ringCapacity, ringLimit, ringLimited, ringBytes, maxPayload, backpressure,
  sampleRate, sampleFill, keyOrder, slotStride,
} from "./config";
import { addSamplesToPair, addToPair, initMetrics } from "./metrics";
import {
  tailRecords, tailPosition, tailOf, positionAdd, positionsBetween, offsetOf, extentOf, byteHeadOf, bytesUsedAt,
} from "./positions";
import { selectEntry, NO_ENTRY, readLiveTable, liveEntry, liveGen } from "./select";
import { noteRoute, routeMoved, fencedSlot, countMoving, tableGeneration, FENCE_WAIT, FENCE_NONE } from "./fence";

const CLOSED: u64 = 1 << 63;
const MAX_RESELECT: i32 = 1000;

// GROWTH SEEN: a new shard's slot may lie in memory the owning thread grew a moment ago. This
// thread's instance learns the new size only when it next handles an interrupt (V8 does so at
// a function entry or loop header), and until then memory.copy, whose bounds check uses the
// size the instance knows, traps: after a record was marked, which would leave it marked
// forever. So every reservation first checks that the instance sees the whole slot, and if
// not, waits in a loop (its header handles the pending interrupt; memory.size then tells).
// `seenEnd` is this instance's own: the end of memory it has seen, only ever larger. In 64
// bits: a memory of 65 536 pages (4 GiB) ends at 2^32.
let seenEnd: u64 = 0;
const GROWTH_WAIT_ROUNDS: i32 = 1 << 20;
@inline function slotSeen(base: usize): bool {
  const end = <u64>base + <u64>slotStride;
  return end <= seenEnd || awaitGrowth(end);
}
function awaitGrowth(end: u64): bool {
  let size = <u64>memory.size() << 16;
  if (end > size) {
    atomic.add<u64>(<usize>LAYOUT_BASE + H_GROWTH_WAITS, 1);
    for (let round = 0; round < GROWTH_WAIT_ROUNDS && end > size; round++) size = <u64>memory.size() << 16;
    if (end > size) return false;
  }
  seenEnd = size;
  return true;
}
// PLACEMENT: a payload of `extent` bytes (its length rounded up to 8) goes at the offset of
// the byte position the last reservation ended at, or, when it would cross the end of the
// area, at the next lap's offset 0 (the bytes it skips count as its own: `need` below). It
// fits when `need` is at most the room left before the byte head. pushAt and reserveRun each
// do this with running locals (no modular step per record in a run).

// Move the byte head to `position`, as of head index `index`; an older index never wins (a
// descheduled evictor must not move it back).
@inline function advanceByteHead(base: usize, position: u32, index: u32): void {
  let old = atomic.load<u64>(base + R_BYTE_HEAD);
  while (<i32>(index - <u32>(old >>> 32)) > 0) {
    const seen = atomic.cmpxchg<u64>(base + R_BYTE_HEAD, old, <u64>position | (<u64>index << 32));
    if (seen == old) return;
    old = seen;
  }
}

// The head just passed to `head`: its last record was published (its end is known) or skipped
// (then only an empty ring tells where the bytes end: at the tail's position).
@inline function settleByteHead(base: usize, head: u32, published: bool, end: u32): void {
  if (published) {
    advanceByteHead(base, end, head);
  } else {
    const tail = atomic.load<u64>(base + R_TAIL);
    if (tailRecords(tail) == head) advanceByteHead(base, tailPosition(tail), head);
  }
}

// ---- the cursor: head (low half) and claimed (high half) in one word ----------------------
@inline function headOf(cursor: u64): u32 { return <u32>cursor; }
@inline function claimedOf(cursor: u64): u32 { return <u32>(cursor >>> 32); }
@inline function cursorOf(head: u32, claimed: u32): u64 { return <u64>head | (<u64>claimed << 32); }

@inline function lenAt(base: usize): u32 {
  return tailRecords(atomic.load<u64>(base + R_TAIL)) - headOf(atomic.load<u64>(base + R_CURSOR));
}

// Wake the consumer if it is parked on its doorbell.
@inline function ringDoorbell(base: usize): void {
  const bell = <usize>load<u32>(base + R_DOORBELL);
  if (bell != 0 && atomic.load<i32>(bell) != 0) {
    atomic.store<i32>(bell, 0);
    atomic.notify(bell, 1);
  }
}

// No room for the bytes, though the ring may hold no record at all: an evictor that was
// terminated between its commit and its byte-head update leaves the byte head behind, and
// with nothing left to acknowledge or evict nobody else would move it. An empty ring's bytes
// are all free up to the tail's position. Returns true when it moved the byte head. (`tail`
// is read before the cursor: a head that reached its record count had acknowledged every
// record before that position.)
function catchUpByteHead(base: usize, tail: u64): bool {
  const head = headOf(atomic.load<u64>(base + R_CURSOR));
  const position = tailPosition(tail);
  if (head != tailRecords(tail) || byteHeadOf(base) == position) return false;
  advanceByteHead(base, position, head);
  return byteHeadOf(base) == position;
}

// dropOldest: evict the oldest record not handed out. Only possible while no batch is in
// flight with the consumer (head == claimed): a record being read in place is never
// overwritten. Returns true when the caller should look at the tail again (evicted, or raced).
function evictOldest(base: usize): bool {
  const cursor = atomic.load<u64>(base + R_CURSOR);
  const c = claimedOf(cursor);
  if (headOf(cursor) != c) return false;
  const rec = recordAddr(base, c);
  const seq = atomic.load<u32>(rec + REC_SEQ);
  const published = seq == c + 1;
  if (!published && seq != c + <u32>SEQ_SKIPPED) return false; // still being written, or nothing there
  const end = load<u32>(rec + REC_END); // stays put while the record is published and unclaimed
  // Counted before the commit (and taken back if it fails), so the totals never miss an
  // eviction that already happened.
  if (published) atomic.add<u64>(base + M_EVICTED, 1);
  if (atomic.cmpxchg<u64>(base + R_CURSOR, cursor, cursorOf(c + 1, c + 1)) != cursor) {
    if (published) atomic.sub<u64>(base + M_EVICTED, 1);
    return true;
  }
  freeBehindHead(rec, c, seq);
  settleByteHead(base, c + 1, published, end);
  return true;
}

// Free a descriptor the head has passed, if it still holds `seq` for `index`. A CAS, because
// two threads may free the same one (an evictor that was descheduled, and a rewind), and
// the later one must not clobber a producer that already took it for the next lap.
@inline function freeBehindHead(rec: usize, index: u32, seq: u32): void {
  atomic.cmpxchg<u32>(rec + REC_SEQ, seq, index + ringCapacity);
}

// Take record `index` for writing. False when the watchdog skipped it first.
@inline function beginWrite(rec: usize, index: u32): bool {
  return atomic.cmpxchg<u32>(rec + REC_SEQ, index, index + <u32>SEQ_WRITING) == index;
}

// memory.copy on a shared memory costs a call out of the generated code (tens of ns for a
// 16-byte event, more than the rest of a push): payloads up to 32 bytes are copied here, 8
// bytes at a time, rounded up to whole words. That stays inside the record's extent (its
// length rounded up to 8) and reads at most 7 bytes past the source, still inside the lane's
// scratch; the bytes past `len` are never read back. No loop: this runs between a record's
// mark and its publish, which must stay straight-line code (a terminated thread stops at
// loop back-edges).
const INLINE_COPY_MAX: u32 = 32;
@inline function copyPayload(dst: usize, src: usize, len: u32): void {
  if (len <= INLINE_COPY_MAX) {
    if (len == 0) return; // an empty payload has no extent: not even one word is its own
    store<u64>(dst, load<u64>(src));
    if (len > 8) {
      store<u64>(dst, load<u64>(src, 8), 8);
      if (len > 16) {
        store<u64>(dst, load<u64>(src, 16), 16);
        if (len > 24) store<u64>(dst, load<u64>(src, 24), 24);
      }
    }
  } else {
    memory.copy(dst, src, len);
  }
}

// Copy and publish record `index` (taken with beginWrite): its payload at `off` in the
// payload area, ending at byte position `end`. Straight-line: no thread stops between the
// mark and the publish.
@inline function writeRecord(base: usize, rec: usize, index: u32, src: usize, len: u32, off: u32, end: u32): void {
  copyPayload(payloadAddr(base) + off, src, len);
  store<u32>(rec + REC_LEN, len);
  store<u32>(rec + REC_OFF, off);
  store<u32>(rec + REC_END, end);
  atomic.store<u32>(rec + REC_SEQ, index + 1); // publish
}

// This window's events before the one reserved at `index`: the tail's progress since the
// window began, plus events recorded by hand through the collector (plain reads: it only
// picks which pushes carry a latency sample).
@inline function eventsBefore(base: usize, index: u32): u32 {
  return index - <u32>load<u64>(base + M_WINDOW_TAIL) + load<u32>(base + M_EVENTS);
}

// Sample mode sheds load once the ring's fill passes the threshold: by records or by bytes.
@inline function pastSampleFill(base: usize): bool {
  return <f64>lenAt(base) > sampleFill * <f64>ringLimit || <f64>bytesUsedAt(base) > sampleFill * <f64>ringBytes;
}

// A ring whose capacity is not a power of two holds ringLimit records at once, in
// ringCapacity descriptors: full once the records reserved and not yet acknowledged (or
// evicted) reach the limit. The head shares its cache line with the byte head, which every
// reservation reads anyway. Records held from `index` on the caller's tail: the head is read
// after the tail and only moves forward, so a head read late finds the ring fuller than it
// was, except past a stale tail, where the count goes negative (the CAS then fails and the
// caller reads the tail again): never a refusal the ring did not earn.
@inline function heldBefore(base: usize, index: u32): i32 {
  return <i32>(index - headOf(atomic.load<u64>(base + R_CURSOR)));
}
@inline function atFillLimit(base: usize, index: u32): bool {
  return heldBefore(base, index) >= <i32>ringLimit;
}

// Append `len` bytes from `src` to the ring at `base`. Returns 0 or a PUSH_* code.
// (`countRefusal` false: a caller that retries a refusal until it goes in, see pushOwed.)
export function pushAt(base: usize, src: usize, len: u32, countRefusal: bool = true): i32 {
  if (!slotSeen(base)) return PUSH_NOT_VISIBLE;
  if (backpressure == BP_SAMPLE && pastSampleFill(base)) {
    if (atomic.add<u32>(base + M_SAMPLE_COUNTER, 1) % sampleRate != 0) {
      atomic.add<u64>(base + M_DROPPED_SAMPLED, 1);
      return PUSH_SAMPLED;
    }
  }
  const extent = extentOf(len);
  let retries: u32 = 0;
  let tail = atomic.load<u64>(base + R_TAIL);
  while (true) {
    if (tail & CLOSED) return PUSH_CLOSED;
    const index = tailRecords(tail);
    const rec = recordAddr(base, index);
    const seq = atomic.load<u32>(rec + REC_SEQ);
    const diff = <i32>(seq - index);
    if (diff > 0) { // another producer took this index first
      retries++;
      tail = atomic.load<u64>(base + R_TAIL);
      continue;
    }
    if (diff == 0 && !(ringLimited && atFillLimit(base, index))) {
      // PLACEMENT (above)
      const position = tailPosition(tail);
      let off = offsetOf(position);
      let need = extent;
      if (off + extent > ringBytes) {
        need += ringBytes - off;
        off = 0;
      }
      if (need <= ringBytes - positionsBetween(byteHeadOf(base), position)) {
        const end = positionAdd(position, need);
        const seen = atomic.cmpxchg<u64>(base + R_TAIL, tail, tailOf(index + 1, end));
        if (seen == tail) {
          // Key order: a table published since the selection sent this key elsewhere (the
          // move's mark may not cover this record): give the record up as padding, select again.
          if (keyOrder && routeMoved()) {
            abandonRun(base, index, index + 1);
            return PUSH_CLOSED;
          }
          // reserved: from here to the publish is straight-line code
          if (beginWrite(rec, index)) {
            writeRecord(base, rec, index, src, len, off, end);
            // No event counter to bump: the collector counts a ring's events from its tail.
            if ((eventsBefore(base, index) & LATENCY_SAMPLE_MASK) == 0) addToPair(base + M_LATENCY, retries * CONTENTION_NS_PER_RETRY);
            ringDoorbell(base); // the ring length is not stored: collectors read it from tail and head
            return 0;
          }
          // We stalled long enough for the watchdog to turn the reservation into padding:
          // nothing was written, so push again.
          retries++;
          tail = atomic.load<u64>(base + R_TAIL);
          continue;
        }
        tail = seen;
        retries++;
        continue;
      }
      if (catchUpByteHead(base, tail)) {
        tail = atomic.load<u64>(base + R_TAIL);
        continue;
      }
    }
    // full: the descriptor still holds index - capacity, or the payload does not fit
    if (backpressure == BP_DROP_OLDEST && evictOldest(base)) {
      retries++;
      tail = atomic.load<u64>(base + R_TAIL);
      continue;
    }
    if (backpressure == BP_FAIL_PRODUCER) {
      if (countRefusal) atomic.add<u64>(base + M_REFUSED, 1);
      return PUSH_REFUSED;
    }
    atomic.add<u64>(base + M_DROPPED_NEWEST, 1);
    return PUSH_FULL;
  }
  return PUSH_FULL; // not reached
}

// Route by hash and append. Returns the shard id (≥ 0) or a PUSH_* code; on a refusal the
// shard id is left in the lane's L_FAILED_SHARD word. (`countRefusal` false: a caller that
// retries a refusal or a key's move until it goes in, see pushOwed.)
function routeAndPush(lane: usize, hash: u32, src: usize, len: u32, countRefusal: bool = true): i32 {
  for (let attempt = 0; attempt < MAX_RESELECT; attempt++) {
    // Read on every attempt: close() closes every ring after setting the flag, so a push
    // whose reservation failed on a closed ring learns here that the manager is closed.
    if (atomic.load<u32>(<usize>LAYOUT_BASE + H_STOPPED) != 0) return PUSH_STOPPED;
    const gen = keyOrder ? tableGeneration() : 0;
    const entry = selectEntry(hash);
    if (entry == NO_ENTRY) break;
    let slot = entry >>> 16;
    if (keyOrder) {
      if (slot == <u32>FENCED_SLOT) { // the key's slot moved: it goes on once its old shard delivered
        slot = fencedSlot(hash);
        if (slot == FENCE_NONE) continue;
        if (slot == FENCE_WAIT) {
          if (countRefusal) countMoving();
          store<u32>(lane + L_FAILED_SHARD, entry & 0xffff);
          return backpressure == BP_FAIL_PRODUCER ? PUSH_MOVING : PUSH_MOVING_DROPPED;
        }
      } else {
        noteRoute(gen, hash, entry);
      }
    }
    const r = pushAt(slotAddr(slot), src, len, countRefusal);
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
// Consecutive events of a batch that route to the same shard form a run (and the events of
// one shard in a block of a batch form a group, written as one run: GROUPED WRITES, below).
// A run is reserved with one CAS on the tail (as many records as are free from the tail on
// and fit in bytes, each descriptor checked: under dropOldest an evictor may free an older
// one after the consumer freed a newer one), written in chunks (WRITING A RUN), and rings
// the doorbell once. Whatever a run cannot take (full or closed ring, sample mode, no
// shard) goes through the single-event path, which applies backpressure exactly as push
// does.
//
// A run is the one place where a thread can be stopped between reserving and publishing
// (at the back-edge of the copy loop): the records it had not reached stay reserved and
// unwritten until the watchdog skips them. If this thread was only slow and finds one of
// its records skipped, it gives up the rest of the run (skipping them itself, so its events
// keep their order) and pushes those events again.

// Skip reserved, unwritten records from `index` on (at most `max`, never past the tail):
// each becomes padding unless its producer marked it first. Returns how many it skipped.
function skipFrom(base: usize, index: u32, max: u32): u32 {
  const tail = <u32>atomic.load<u64>(base + R_TAIL);
  let n: u32 = 0;
  while (n < max && <i32>(tail - (index + n)) > 0) {
    const i = index + n;
    if (atomic.cmpxchg<u32>(recordAddr(base, i) + REC_SEQ, i, i + <u32>SEQ_SKIPPED) != i) break;
    n++;
  }
  if (n > 0) {
    atomic.add<u64>(base + M_SKIPPED, n);
    ringDoorbell(base);
  }
  return n;
}

// Skip this thread's own reserved records [from, end) (some may be skipped already).
function abandonRun(base: usize, from: u32, end: u32): void {
  let n: u32 = 0;
  for (let i = from; i != end; i++) {
    if (atomic.cmpxchg<u32>(recordAddr(base, i) + REC_SEQ, i, i + <u32>SEQ_SKIPPED) == i) n++;
  }
  atomic.add<u64>(base + M_SKIPPED, n);
  ringDoorbell(base);
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

const MAX_RUN: u32 = 1024;
let runFirst: u32 = 0;    // first index reserved by the last reserveRun
let runPosition: u32 = 0; // byte position its first payload is placed from
let runRetries: u32 = 0;  // failed CAS attempts of the last reserveRun

// THE WALK: the events a run takes, one after another. Outside a grouped block (walkGroup
// < 0) they are consecutive events of the batch; inside one, the events of one group of the
// block, from its list (GROUPED WRITES, below). stepI and stepP step it.
let walkGroup: i32 = -1;
let walkList: usize = 0;    // the group's list of block indexes
let walkK: u32 = 0;         // the current event's place in it
let walkAt: usize = 0;      // the block's staged offsets (pushBatch)
let walkScratch: usize = 0; // the lane's scratch
let walkFirst: u32 = 0;     // batch index of the block's first event
let walkP: usize = 0;      // where writeRun stopped (the plain walk's caller goes on from it)

// The walk's next event after i (its batch index), then its p (given the new index; the old
// p on the plain walk). Two locals, no globals, and `grouped` (walkGroup >= 0) read once
// by the caller: this runs for every record of a run.
@inline function stepI(i: u32, grouped: bool): u32 {
  if (!grouped) return i + 1;
  walkK++;
  return walkFirst + <u32>load<u16>(walkList + (<usize>walkK << 1));
}
@inline function stepP(p: usize, i: u32, grouped: bool): usize {
  return !grouped ? evNext(p) : stagedAt(i - walkFirst);
}
// Where block event j is staged (pushBatch; pushFixed finds a record by its index).
@inline function stagedAt(j: u32): usize { return fixedSize ? 0 : walkScratch + load<u32>(walkAt + (<usize>j << 2)); }

// Reserve up to `k` records for the walk's events from (p, i): as many as have a free
// descriptor and whose payloads fit before the byte head, with one CAS. Returns how many.
function reserveRun(base: usize, k: u32, p: usize, i: u32): u32 {
  runRetries = 0;
  if (!slotSeen(base)) return 0; // the single-event path reports it
  const k0 = walkK; // the walk is looked ahead here and set back after
  const grouped = walkGroup >= 0;
  for (let attempt = 0; attempt < 16; attempt++) {
    const tail = atomic.load<u64>(base + R_TAIL);
    if (tail & CLOSED) return 0;
    const t = tailRecords(tail);
    const position = tailPosition(tail);
    // PLACEMENT (above), one record after another
    let room = ringBytes - positionsBetween(byteHeadOf(base), position);
    let off = offsetOf(position);
    let used: u32 = 0;
    let free: u32 = 0;
    let q = p;
    let qi = i;
    // a ring below its power of two takes no more than its limit leaves (see atFillLimit)
    const most = ringLimited ? min(k, <u32>max(0, <i32>ringLimit - max(0, heldBefore(base, t)))) : k;
    while (free < most && atomic.load<u32>(recordAddr(base, t + free) + REC_SEQ) == t + free) {
      const extent = extentOf(evLen(q));
      let need = extent;
      if (off + extent > ringBytes) need += ringBytes - off; // padded to the next lap's start
      if (need > room) break;
      room -= need;
      used += need;
      off += need;
      if (off >= ringBytes) off -= ringBytes;
      free++;
      if (free < most) {
        qi = stepI(qi, grouped);
        q = stepP(q, qi, grouped);
      }
    }
    walkK = k0;
    if (free == 0) return 0;
    if (atomic.cmpxchg<u64>(base + R_TAIL, tail, tailOf(t + free, positionAdd(position, used))) == tail) {
      runFirst = t;
      runPosition = position;
      return free;
    }
    runRetries++;
  }
  return 0;
}

// Key order: does the live table send any of the `n` events from `p` (event index `i`) to
// another shard than `entry` names? Only asked after a table change raced a run.
function runMoved(p: usize, i: u32, n: u32, entry: u32): bool {
  let q = p;
  for (let k: u32 = 0; k < n; k++) {
    if ((selectEntry(evHash(q, i + k)) & 0xffff) != (entry & 0xffff)) return true;
    q = evNext(q);
  }
  return false;
}

// WRITING A RUN. A reserved run is written in chunks of up to WRITE_CHUNK records, each with
// one mark and one publish (two locked instructions a chunk instead of two a record; a chunk
// of one is written as a single push writes its record). The chunk's first record is marked,
// the others are written and given their published sequence with plain stores, and the first
// is published last, with an atomic store that makes those plain stores visible to whoever
// sees it published. While the first record is marked
// nobody touches the others: the consumer claims in order and stops at it, the head cannot
// pass it, and the watchdog skips from the first unclaimed record on and stops at a marked
// one. From the mark to the publish the code is straight-line (no loop, no call), so a
// thread is never stopped inside and a marked chunk is always published.
const WRITE_CHUNK: u32 = 4;

// PLACEMENT (above) of a payload of `extent` bytes at byte position `position`: its offset in
// the payload area, and the position right after it.
@inline function placedAt(position: u32, extent: u32): u32 {
  const off = offsetOf(position);
  return off + extent > ringBytes ? 0 : off;
}
@inline function placedEnd(position: u32, extent: u32): u32 {
  const off = offsetOf(position);
  return positionAdd(position, off + extent > ringBytes ? ringBytes - off + extent : extent);
}

// A record of a chunk behind its first (marked) one: copied, and its published sequence
// written with a plain store (the chunk's publish orders it).
@inline function writeRecordBehindMark(base: usize, index: u32, src: usize, len: u32, off: u32, end: u32): void {
  const rec = recordAddr(base, index);
  copyPayload(payloadAddr(base) + off, src, len);
  store<u32>(rec + REC_LEN, len);
  store<u32>(rec + REC_OFF, off);
  store<u32>(rec + REC_END, end);
  store<u32>(rec + REC_SEQ, index + 1);
}

// Write the `reserved` records of the last reservation (runFirst, runPosition) with the
// walk's events from (p, i), the same placement reserveRun made. Returns how many it wrote;
// fewer when the watchdog took a record first (the thread stalled past producerStallMs):
// then the rest of the run is given up as padding, and walkP is the first event left
// unwritten. Otherwise it is the event after the run.
function writeRun(base: usize, reserved: u32, p: usize, i: u32): u32 {
  const grouped = walkGroup >= 0;
  let got: u32 = 0;
  let position = runPosition;
  let off = offsetOf(position);
  while (got < reserved) {
    const first = runFirst + got;
    const m = min(reserved - got, WRITE_CHUNK);
    // A run of one (common when a batch spreads over many shards): no chunk to set up, and
    // the running offset kept as before (measured ~2 ns a record cheaper here than placedAt
    // and placedEnd, which the chunk below uses).
    if (m == 1) {
      const rec = recordAddr(base, first);
      if (!beginWrite(rec, first)) break; // skipped by the watchdog
      const len = evLen(p);
      const extent = extentOf(len);
      if (off + extent > ringBytes) { // padded to the next lap's start
        position = positionAdd(position, ringBytes - off);
        off = 0;
      }
      position = positionAdd(position, extent);
      writeRecord(base, rec, first, evData(p, i), len, off, position);
      off += extent;
      if (off >= ringBytes) off -= ringBytes;
      i = stepI(i, grouped);
      p = stepP(p, i, grouped);
      got++;
      continue;
    }
    const chunkP = p, chunkI = i;
    // Everything the chunk's writes need is worked out before its mark (m is 2 to 4).
    const len0 = evLen(p), src0 = evData(p, i), off0 = placedAt(position, extentOf(len0));
    position = placedEnd(position, extentOf(len0));
    const end0 = position;
    i = stepI(i, grouped); p = stepP(p, i, grouped);
    const len1 = evLen(p), src1 = evData(p, i), off1 = placedAt(position, extentOf(len1));
    position = placedEnd(position, extentOf(len1));
    const end1 = position;
    i = stepI(i, grouped); p = stepP(p, i, grouped);
    let len2: u32 = 0, len3: u32 = 0, src2: usize = 0, src3: usize = 0, off2: u32 = 0, off3: u32 = 0, end2: u32 = 0, end3: u32 = 0;
    if (m > 2) {
      len2 = evLen(p); src2 = evData(p, i); off2 = placedAt(position, extentOf(len2));
      position = placedEnd(position, extentOf(len2));
      end2 = position;
      i = stepI(i, grouped); p = stepP(p, i, grouped);
    }
    if (m > 3) {
      len3 = evLen(p); src3 = evData(p, i); off3 = placedAt(position, extentOf(len3));
      position = placedEnd(position, extentOf(len3));
      end3 = position;
      i = stepI(i, grouped); p = stepP(p, i, grouped);
    }
    const rec0 = recordAddr(base, first);
    if (!beginWrite(rec0, first)) { // skipped by the watchdog
      p = chunkP;
      i = chunkI;
      break;
    }
    // from the mark to the publish: straight-line code
    writeRecordBehindMark(base, first + 1, src1, len1, off1, end1);
    if (m > 2) writeRecordBehindMark(base, first + 2, src2, len2, off2, end2);
    if (m > 3) writeRecordBehindMark(base, first + 3, src3, len3, off3, end3);
    writeRecord(base, rec0, first, src0, len0, off0, end0);
    off = offsetOf(position);
    got += m;
  }
  // The watchdog skips every unmarked record from the one it found stalled on, so the rest
  // of the run is padding already; skipping it here too only makes sure.
  if (got < reserved) abandonRun(base, runFirst + got + 1, runFirst + reserved);
  if (got > 0) {
    const before = eventsBefore(base, runFirst); // events are counted from the tail (see pushAt)
    // one latency sample for each multiple of 64 events the run passes, as single pushes
    // take one every 64 (a run of 640 events: 10 samples, each with the run's contention)
    const toFirst = ((before + LATENCY_SAMPLE_MASK) & ~LATENCY_SAMPLE_MASK) - before;
    if (toFirst < got) {
      const samples = 1 + (got - 1 - toFirst) / (LATENCY_SAMPLE_MASK + 1);
      addSamplesToPair(base + M_LATENCY, samples, runRetries * CONTENTION_NS_PER_RETRY);
    }
    ringDoorbell(base);
  }
  walkP = p;
  return got;
}

// GROUPED WRITES. Random keys over a few shards make runs of one or two events, and each run
// costs a reservation (a CAS on a line other threads read), a mark, a doorbell check and the
// latency bookkeeping. So a block of up to GROUP_BLOCK events is written shard by shard
// instead: each shard's events (a group, listed in batch order) are reserved with one CAS on
// that ring, then written as one run. Each shard still gets its events in batch order; only
// the order between shards changes, which no consumer can observe.
//
// What batch calls promise stays as it was: under failProducer the accepted events are a
// prefix of the batch, and an event that has to go to another shard (its ring was closed)
// does not land there after a later event of the batch (but for the case below). So the
// block is cut at the first event that one reservation could not take (a ring full or
// closed by the time of its CAS): records reserved for events from the cut on are given up
// as padding, and those events go the run-by-run way. A look at every ring before reserving
// (room, closed bit) leaves cuts to races with other producers: a ring already full makes
// the block decline at once, and an unroutable or oversized event ends it.
//
// The one case a cut cannot cover: the watchdog took records of a group (the thread stalled
// past producerStallMs between reserving and writing) after other groups' later events were
// written. Those events are pushed again after the block, in batch order, on their shard
// (pushOwed): under failProducer a refusal is retried until the consumer makes room, since
// the events had room reserved once and refusing one now would make the accepted events no
// prefix of the batch. If their shard started draining meanwhile they go where the table
// sends them, where later events of the batch may already be (docs/architecture.md,
// "Grouped writes").
//
// Under key order (KEY-ORDER FENCES, fence.ts) a block ends before an event whose entry is
// fenced (the single-event path waits on its fence), and it is written only if no table was
// published from the selection of its first run to its last reservation: the owner takes a
// move's marks after publishing, so every record the block reserved lies before them. If one
// was, every reservation is given up as padding and the run path, which checks each run
// against the live table, routes the events again. Owed events go through the fence-aware
// single-event path (the key may have moved since the block was grouped).

const GROUP_MIN: u32 = 16;           // a shorter block: the run path does as well
let blockAccepted: u32 = 0;
let blockFull: u32 = 0;
let blockUnrouted: u32 = 0;
let blockStop: u32 = STOP_NONE;
let blockEnd: u32 = 0;  // batch index where a block may start again (past a declined or cut one)
let blockNext: usize = 0; // the staged event after the block's handled ones (pushBatch)
let blockGroups: u32 = 0;

@inline function groupAddr(lb: usize, g: u32): usize { return lb + L_GROUPS + <usize>g * G_BYTES; }
@inline function listAddr(lb: usize, g: u32): usize { return lb + L_LISTS + <usize>g * LIST_BYTES; }
@inline function listAt(lb: usize, g: u32, k: u32): u32 { return <u32>load<u16>(listAddr(lb, g) + (<usize>k << 1)); }

// Set the walk to group `g`'s first event and return its p. (A block of one group is
// consecutive events: the plain walk.)
@inline function walkOfGroup(lb: usize, g: u32): usize {
  walkGroup = blockGroups == 1 ? -1 : <i32>g;
  walkList = listAddr(lb, g);
  walkK = 0;
  return stagedAt(listAt(lb, g, 0));
}

// Will group `g`'s events fit its ring now (descriptors free, bytes before the byte head,
// ring open)? Plain reads: a race only makes the reservation itself come short. The bytes
// are counted with one lap's padding at most (less than the largest extent): a group that
// fits in the room left crosses the end of the area once at most. So near full it may
// decline a group that would just fit; the run path then takes it.
function groupFits(lb: usize, g: u32, base: usize): bool {
  const ga = groupAddr(lb, g);
  const k = load<u32>(ga + G_COUNT);
  if (k > ringLimit) return false;
  const tail = atomic.load<u64>(base + R_TAIL);
  if (tail & CLOSED) return false;
  const t = tailRecords(tail);
  if (ringLimited && heldBefore(base, t) + <i32>k > <i32>ringLimit) return false;
  if (atomic.load<u32>(recordAddr(base, t + k - 1) + REC_SEQ) != t + k - 1) return false;
  const room = ringBytes - positionsBetween(byteHeadOf(base), tailPosition(tail));
  const extent = fixedSize ? <u64>extentOf(fixedSize) : <u64>load<u32>(ga + G_MAX_EXTENT);
  const extents = fixedSize ? <u64>k * extent : <u64>load<u32>(ga + G_EXTENTS);
  return extents + extent <= <u64>room;
}

// Group and write the block of events from (p, i), whose first `run` events route to entry0
// (the batch loop found that run with the table of generation gen0, read before it: key
// order only). Returns how many events it handled (each accepted, or dropped as the
// backpressure mode says), 0 when it declined; blockEnd tells where the next block may
// start, blockNext where the staged events go on.
function groupedBlock(lb: usize, p: usize, i: u32, count: u32, entry0: u32, run: u32, gen0: u32): u32 {
  blockAccepted = 0;
  blockFull = 0;
  blockUnrouted = 0;
  blockStop = STOP_NONE;
  walkScratch = lb + L_SCRATCH;
  walkAt = lb + L_EVENT_AT;
  walkFirst = i;
  // 1. each event into its group's list (up to GROUP_MAX shards); the block ends before an
  //    event the run path must see alone (too large, unroutable, its key fenced)
  const limit = min(count - i, <u32>GROUP_BLOCK);
  let q = p;
  let n: u32 = 0;
  let bad = false;
  // the leading run (the batch loop found it) is group 0
  const ga0 = groupAddr(lb, 0);
  const list0 = listAddr(lb, 0);
  let extents: u32 = 0, largest: u32 = 0;
  for (; n < run; n++) {
    store<u16>(list0 + (<usize>n << 1), <u16>n);
    if (!fixedSize) {
      store<u32>(walkAt + (<usize>n << 2), <u32>(q - walkScratch));
      const extent = extentOf(evLen(q));
      extents += extent;
      if (extent > largest) largest = extent;
    }
    q = evNext(q);
  }
  store<u32>(ga0 + G_ENTRY, entry0);
  store<u32>(ga0 + G_COUNT, run);
  store<u32>(ga0 + G_EXTENTS, extents);
  store<u32>(ga0 + G_MAX_EXTENT, largest);
  let groups: u32 = 1;
  let g: u32 = 0;
  let last = entry0; // the entry of group g
  readLiveTable(); // one table for the block (seqlock: checked once it is grouped)
  for (; n < limit; n++) {
    const len = evLen(q);
    const entry = len <= maxPayload ? liveEntry(evHash(q, i + n)) : NO_ENTRY;
    if (entry != last) {
      if (entry == NO_ENTRY || (entry >>> 16) == <u32>FENCED_SLOT) { bad = true; break; }
      g = 0;
      while (g < groups && load<u32>(groupAddr(lb, g) + G_ENTRY) != entry) g++;
      if (g == groups) {
        if (groups == <u32>GROUP_MAX) break;
        const ga = groupAddr(lb, g);
        store<u32>(ga + G_ENTRY, entry);
        store<u32>(ga + G_COUNT, 0);
        store<u32>(ga + G_EXTENTS, 0);
        store<u32>(ga + G_MAX_EXTENT, 0);
        groups++;
      }
      last = entry;
    }
    const ga = groupAddr(lb, g);
    const k = load<u32>(ga + G_COUNT);
    store<u16>(listAddr(lb, g) + (<usize>k << 1), <u16>n);
    store<u32>(ga + G_COUNT, k + 1);
    if (!fixedSize) {
      store<u32>(walkAt + (<usize>n << 2), <u32>(q - walkScratch));
      const extent = extentOf(len);
      store<u32>(ga + G_EXTENTS, load<u32>(ga + G_EXTENTS) + extent);
      if (extent > load<u32>(ga + G_MAX_EXTENT)) store<u32>(ga + G_MAX_EXTENT, extent);
    }
    q = evNext(q);
  }
  // every list ends with the block's end
  if (!fixedSize) store<u32>(walkAt + (<usize>n << 2), <u32>(q - walkScratch));
  for (g = 0; g < groups; g++) store<u16>(listAddr(lb, g) + (<usize>load<u32>(groupAddr(lb, g) + G_COUNT) << 1), <u16>n);
  blockEnd = i + n + (bad ? 1 : 0);
  if (n < GROUP_MIN) return 0; // too few events: runs do as well
  if (tableGeneration() != liveGen) return 0; // a rebuild raced the grouping: the run path routes these
  if (keyOrder && liveGen != gen0) return 0;   // the leading run may be of an older table
  // 2. every ring has room for its group now, or the block declines
  for (g = 0; g < groups; g++) {
    const base = slotAddr(load<u32>(groupAddr(lb, g) + G_ENTRY) >>> 16);
    if (!slotSeen(base) || !groupFits(lb, g, base)) return 0;
  }
  blockGroups = groups;
  // 3. reserve every group; `cut` is the first event no reservation took
  let cut = n;
  for (g = 0; g < groups; g++) {
    const ga = groupAddr(lb, g);
    const k = load<u32>(ga + G_COUNT);
    const r = reserveRun(slotAddr(load<u32>(ga + G_ENTRY) >>> 16), k, walkOfGroup(lb, g), i + listAt(lb, g, 0));
    store<u32>(ga + G_RESERVED, r);
    store<u32>(ga + G_RUN_FIRST, runFirst);
    store<u32>(ga + G_RUN_POSITION, runPosition);
    store<u32>(ga + G_RETRIES, runRetries);
    if (r < k && listAt(lb, g, r) < cut) cut = listAt(lb, g, r);
  }
  // Key order: a table published since the selection may have moved a key after its mark
  // was taken: give every reservation up, and let the run path route the block again.
  if (keyOrder && tableGeneration() != liveGen) {
    for (g = 0; g < groups; g++) {
      const ga = groupAddr(lb, g);
      const r = load<u32>(ga + G_RESERVED);
      if (r > 0) abandonRun(slotAddr(load<u32>(ga + G_ENTRY) >>> 16), load<u32>(ga + G_RUN_FIRST), load<u32>(ga + G_RUN_FIRST) + r);
    }
    atomic.add<u64>(<usize>LAYOUT_BASE + H_BLOCKS_RACED, 1);
    walkGroup = -1;
    blockEnd = i + n;
    return 0;
  }
  // 4. give up what was reserved for events from the cut on, write the rest
  let owed = false;
  for (g = 0; g < groups; g++) {
    const ga = groupAddr(lb, g);
    const base = slotAddr(load<u32>(ga + G_ENTRY) >>> 16);
    let r = load<u32>(ga + G_RESERVED);
    runFirst = load<u32>(ga + G_RUN_FIRST);
    if (cut < n) {
      let keep: u32 = 0;
      while (keep < r && listAt(lb, g, keep) < cut) keep++;
      if (keep < r) {
        abandonRun(base, runFirst + keep, runFirst + r);
        r = keep;
      }
    }
    store<u32>(ga + G_RESERVED, r); // (what was kept: repushOwed reads it)
    store<u32>(ga + G_UNWRITTEN, r);
    if (r == 0) continue;
    runPosition = load<u32>(ga + G_RUN_POSITION);
    runRetries = load<u32>(ga + G_RETRIES);
    const got = writeRun(base, r, walkOfGroup(lb, g), i + listAt(lb, g, 0));
    blockAccepted += got;
    if (got < r) {
      store<u32>(ga + G_UNWRITTEN, got);
      owed = true;
    }
  }
  walkGroup = -1;
  // 5. events whose records the watchdog took: pushed again, in batch order, on their shard
  if (owed) repushOwed(lb, i, groups);
  blockNext = stagedAt(cut);
  if (cut < n) blockEnd = i + n;
  return cut;
}

// The stop word (BATCH_STOP) for a push code that ends a batch call: PUSH_REFUSED, PUSH_MOVING,
// PUSH_NOT_VISIBLE, or PUSH_STOPPED once the manager is closed.
@inline function stopOf(r: i32): u32 {
  if (r == PUSH_REFUSED) return STOP_REFUSED;
  if (r == PUSH_MOVING) return STOP_MOVING;
  if (r == PUSH_NOT_VISIBLE) return STOP_NOT_VISIBLE;
  return STOP_CLOSED;
}

// GROUPED WRITES, the case a cut cannot cover (above): each group's events from its
// G_UNWRITTEN up to its G_RESERVED (all before the cut) were not written. Merged from the
// groups' lists into batch order.
function repushOwed(lb: usize, i: u32, groups: u32): void {
  for (let g: u32 = 0; g < groups; g++) store<u32>(groupAddr(lb, g) + G_NEXT, load<u32>(groupAddr(lb, g) + G_UNWRITTEN));
  while (true) {
    let best: u32 = GROUP_MAX, bestJ: u32 = 0xffffffff;
    for (let g: u32 = 0; g < groups; g++) {
      const ga = groupAddr(lb, g);
      const k = load<u32>(ga + G_NEXT);
      if (k < load<u32>(ga + G_RESERVED) && listAt(lb, g, k) < bestJ) {
        best = g;
        bestJ = listAt(lb, g, k);
      }
    }
    if (best == GROUP_MAX) return;
    atomic.add<u64>(<usize>LAYOUT_BASE + H_OWED_REPUSHED, 1);
    const ga = groupAddr(lb, best);
    store<u32>(ga + G_NEXT, load<u32>(ga + G_NEXT) + 1);
    const base = slotAddr(load<u32>(ga + G_ENTRY) >>> 16);
    const p = stagedAt(bestJ);
    const res = pushOwed(lb, base, evHash(p, i + bestJ), evData(p, i + bestJ), evLen(p));
    if (res == 0) blockAccepted++;
    else if (res == PUSH_FULL) blockFull++;
    else if (res == PUSH_UNROUTED) blockUnrouted++;
    else if (blockStop == STOP_NONE) blockStop = stopOf(res);
  }
}

// Push an owed event again, on the ring at `base` while it is open, else where the live table
// sends its hash. A refusal (failProducer) is retried until it goes in: the event had room
// reserved once, and later events of its batch are in already, so refusing it would make the
// accepted events no prefix of the batch. Returns 0, PUSH_FULL (dropNewest), PUSH_UNROUTED,
// PUSH_STOPPED once the manager is closed, or PUSH_NOT_VISIBLE (GROWTH SEEN). Under key order the event is routed afresh
// through its key's fence (a key that moved waits like any push of it; `base` is unused).
function pushOwed(lb: usize, base: usize, hash: u32, src: usize, len: u32): i32 {
  while (true) {
    if (atomic.load<u32>(<usize>LAYOUT_BASE + H_STOPPED) != 0) return PUSH_STOPPED;
    if (keyOrder) {
      const routed = routeAndPush(lb, hash, src, len, false);
      if (routed >= 0) return 0;
      if (routed == PUSH_REFUSED || routed == PUSH_MOVING) continue;
      return routed == PUSH_MOVING_DROPPED ? PUSH_FULL : routed; // PUSH_FULL, PUSH_UNROUTED, PUSH_STOPPED, PUSH_NOT_VISIBLE
    }
    const r = pushAt(base, src, len, false);
    if (r == PUSH_CLOSED) { // its shard started draining: route it
      const entry = selectEntry(hash);
      if (entry == NO_ENTRY) {
        atomic.add<u64>(<usize>LAYOUT_BASE + H_UNROUTED, 1);
        return PUSH_UNROUTED;
      }
      base = slotAddr(entry >>> 16);
      store<u32>(lb + L_FAILED_SHARD, entry & 0xffff); // named if this slot is not seen yet
    } else if (r != PUSH_REFUSED) return r;
  }
  return PUSH_STOPPED; // not reached
}

// Writes [accepted, unrouted, full, sampled, stop] at the lane's result words (BATCH_*) and
// returns how many events it consumed. It stops right before an event refused under
// failProducer (STOP_REFUSED), when the manager is closed (STOP_CLOSED), or at an event for a
// slot this thread never saw the memory grow to (STOP_NOT_VISIBLE, GROWTH SEEN).
function batchLoop(lane: u32, count: u32): u32 {
  const lb = laneAddr(lane);
  let p = lb + L_SCRATCH;
  let accepted: u32 = 0, unrouted: u32 = 0, full: u32 = 0, sampled: u32 = 0, stop: u32 = STOP_NONE;
  let i: u32 = 0;
  // GROUPED WRITES apply unless sample mode decides event by event
  const grouping = backpressure != BP_SAMPLE;
  let groupFrom: u32 = 0;
  walkGroup = -1;
  while (i < count) {
    if (atomic.load<u32>(<usize>LAYOUT_BASE + H_STOPPED) != 0) { stop = STOP_CLOSED; break; }
    const gen = keyOrder ? tableGeneration() : 0;
    const entry = selectEntry(evHash(p, i));
    // (a fenced entry takes the single-event path, which waits on its fence)
    if (entry != NO_ENTRY && (entry >>> 16) != <u32>FENCED_SLOT && backpressure != BP_SAMPLE && evLen(p) <= maxPayload) {
      let k: u32 = 1;
      let q = evNext(p);
      while (i + k < count && k < MAX_RUN && evLen(q) <= maxPayload && selectEntry(evHash(q, i + k)) == entry) {
        q = evNext(q);
        k++;
      }
      // A run that ends before the batch does: GROUPED WRITES, with this run as its first group.
      if (grouping && k < <u32>GROUP_BLOCK && i + k < count && i >= groupFrom && count - i >= GROUP_MIN) {
        const handled = groupedBlock(lb, p, i, count, entry, k, gen);
        groupFrom = blockEnd;
        accepted += blockAccepted;
        full += blockFull;
        unrouted += blockUnrouted;
        if (handled > 0) {
          if (!fixedSize) p = blockNext;
          i += handled;
          if (blockStop != STOP_NONE) { stop = blockStop; break; }
          continue;
        }
      }
      const base = slotAddr(entry >>> 16);
      const reserved = reserveRun(base, k, p, i);
      // Key order: a table published since the run was selected may have moved one of its
      // events' slots (see routeMoved): then give the run up as padding and route again.
      if (keyOrder && reserved > 0 && tableGeneration() != gen && runMoved(p, i, reserved, entry)) {
        abandonRun(base, runFirst, runFirst + reserved);
        continue;
      }
      if (reserved > 0) {
        const got = writeRun(base, reserved, p, i);
        p = walkP;
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
    else if (r == PUSH_MOVING_DROPPED) full++;
    else {
      stop = stopOf(r);
      break;
    }
    p = evNext(p);
    i++;
  }
  const out = lb + L_RESULT;
  store<u32>(out + BATCH_ACCEPTED, accepted);
  store<u32>(out + BATCH_UNROUTED, unrouted);
  store<u32>(out + BATCH_FULL, full);
  store<u32>(out + BATCH_SAMPLED, sampled);
  store<u32>(out + BATCH_STOP, stop);
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

// ---- the consumer side ----------------------------------------------------------------------

// Hand up to `max` records to the consumer: writes the first index (CLAIM_START) and whether
// they are padding (CLAIM_SKIPPED) at `out`, and returns how many. A batch is all published
// records or all skipped ones, never a mix. The consumer reads them in place, then ringAck.
export function ringClaim(slot: u32, max: u32, out: usize): u32 {
  const base = slotAddr(slot);
  while (true) {
    const cursor = atomic.load<u64>(base + R_CURSOR);
    const start = claimedOf(cursor);
    const first = atomic.load<u32>(recordAddr(base, start) + REC_SEQ) - start;
    if (first != 1 && first != <u32>SEQ_SKIPPED) return 0;
    let n: u32 = 1;
    while (n < max && atomic.load<u32>(recordAddr(base, start + n) + REC_SEQ) == start + n + first) n++;
    if (atomic.cmpxchg<u64>(base + R_CURSOR, cursor, cursorOf(headOf(cursor), start + n)) == cursor) {
      store<u32>(out + CLAIM_START, start);
      store<u32>(out + CLAIM_SKIPPED, first == <u32>SEQ_SKIPPED ? 1 : 0);
      return n;
    }
  }
}

// Acknowledge records [start, start + n), the oldest claimed batch (`delivered` of them
// count as delivered: 0 for padding). Commit, then free the descriptors, then the bytes.
export function ringAck(slot: u32, start: u32, n: u32, delivered: u32): void {
  if (n == 0) return;
  const base = slotAddr(slot);
  // What the byte head needs is read before anything is freed (a producer may reuse a freed
  // descriptor at once).
  const last = recordAddr(base, start + n - 1);
  const published = atomic.load<u32>(last + REC_SEQ) == start + n;
  const end = load<u32>(last + REC_END);
  // Nothing else moves the cursor while a batch is in flight (evictors wait for head ==
  // claimed, rewinds run only where this consumer cannot), so a store commits. The count
  // goes first, in the same straight-line code: a reader that sees the head move sees it.
  atomic.add<u64>(base + M_DELIVERED, delivered);
  const claimed = claimedOf(atomic.load<u64>(base + R_CURSOR));
  atomic.store<u64>(base + R_CURSOR, cursorOf(start + n, claimed));
  for (let i: u32 = 0; i < n; i++) {
    atomic.store<u32>(recordAddr(base, start + i) + REC_SEQ, start + i + ringCapacity);
  }
  settleByteHead(base, start + n, published, end);
}

// The consumer went away (its thread died, or its function threw): every record it had
// claimed and not acknowledged is handed out again from the head. Records behind the head
// that a dying acknowledgement did not get to free are freed here, and the byte head is
// brought up to the head. Returns how many records were handed back.
export function ringRewind(slot: u32): u32 {
  const base = slotAddr(slot);
  let cursor = atomic.load<u64>(base + R_CURSOR);
  let back: u32 = 0;
  while (true) {
    const h = headOf(cursor);
    back = claimedOf(cursor) - h;
    if (back == 0) break;
    const seen = atomic.cmpxchg<u64>(base + R_CURSOR, cursor, cursorOf(h, h));
    if (seen == cursor) break;
    cursor = seen;
  }
  const h = headOf(atomic.load<u64>(base + R_CURSOR));
  // The record right behind the head still published: its end is where the bytes start.
  const previous = recordAddr(base, h - 1);
  const previousPublished = atomic.load<u32>(previous + REC_SEQ) == h;
  settleByteHead(base, h, previousPublished, load<u32>(previous + REC_END));
  // Free, newest first, what lies behind the head still marked published or skipped.
  for (let i: u32 = 1; i <= ringCapacity; i++) {
    const index = h - i;
    const rec = recordAddr(base, index);
    const seq = atomic.load<u32>(rec + REC_SEQ);
    if (seq != index + 1 && seq != index + <u32>SEQ_SKIPPED) break;
    freeBehindHead(rec, index, seq);
  }
  return back;
}

// ---- the watchdog -------------------------------------------------------------------------

// The index the consumer waits on when it is reserved but unwritten (a producer died or
// stalled inside a reservation), else -1. The manager calls this periodically and, when the
// same index is still stalled after a while, ringSkipStalled.
export function ringStalledAt(slot: u32): f64 {
  const base = slotAddr(slot);
  const c = claimedOf(atomic.load<u64>(base + R_CURSOR));
  const tail = <u32>atomic.load<u64>(base + R_TAIL);
  if (<i32>(tail - c) <= 0) return -1;
  if (atomic.load<u32>(recordAddr(base, c) + REC_SEQ) != c) return -1;
  return <f64>c;
}

// Turn the stalled reservation at `index` (and the unwritten ones right after it) into
// padding. Returns how many records were skipped.
export function ringSkipStalled(slot: u32, index: u32): u32 {
  return skipFrom(slotAddr(slot), index, ringCapacity);
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

// 1 when every reserved record has been published or skipped (no producer is mid-write).
export function ringAllPublished(slot: u32): i32 {
  const base = slotAddr(slot);
  const tail = <u32>atomic.load<u64>(base + R_TAIL);
  for (let i = headOf(atomic.load<u64>(base + R_CURSOR)); i != tail; i++) {
    const seq = atomic.load<u32>(recordAddr(base, i) + REC_SEQ);
    if (seq != i + 1 && seq != i + <u32>SEQ_SKIPPED) return 0;
  }
  return 1;
}

export function ringSetDoorbell(slot: u32, addr: u32): void {
  atomic.store<u32>(slotAddr(slot) + R_DOORBELL, addr);
}

// Prepare a slot for a new shard: metrics zeroed, ring empty and open.
//
// The ring's counts and byte position go on from where the slot's previous shard left them
// (the tail never goes back), so a producer that read the old tail before a long stall
// cannot win its CAS against a reused slot with a stale value: either the tail moved on and
// the CAS fails, or it did not, and the index it reserves is free in the new ring too (its
// sequence word is laid out below for exactly these indexes) and its bytes lie past the new
// byte head. The shard's pushed total is counted from R_BASE.
export function slotInit(slot: u32, capacity: u32): void {
  const base = slotAddr(slot);
  const start = atomic.load<u64>(base + R_TAIL) & ~CLOSED; // 0 for a never-used slot
  atomic.store<u64>(base + R_TAIL, start | CLOSED); // keep stale producers out while resetting
  initMetrics(slot, capacity);
  const first = tailRecords(start);
  for (let i: u32 = 0; i < ringCapacity; i++) atomic.store<u32>(recordAddr(base, first + i) + REC_SEQ, first + i);
  store<u32>(base + R_BASE, first);
  store<u64>(base + M_WINDOW_TAIL, first); // the metrics windows count from here (initMetrics zeroed them)
  store<u64>(base + M_DRAIN_TAIL, first);
  atomic.store<u64>(base + M_DELIVERED, 0);
  atomic.store<u64>(base + R_CURSOR, cursorOf(first, first));
  atomic.store<u64>(base + R_BYTE_HEAD, <u64>tailPosition(start) | (<u64>first << 32)); // empty: all free
  atomic.store<u32>(base + R_DOORBELL, 0);
  atomic.store<u64>(base + R_TAIL, start); // open
}

// Refuse every later push (ShardManager.close; the manager then closes every ring).
export function stopPushes(): void {
  atomic.store<u32>(<usize>LAYOUT_BASE + H_STOPPED, 1);
}

// Events this shard's ring accepted: reservations, less the ones skipped as padding
// (including any still being written). The tail keeps the record count mod 2^32 only; the
// full count is the one congruent to it nearest the records that already left the ring or
// were skipped (delivered + evicted + skipped, read first: that sum never runs ahead of the
// reservations by more than an eviction being counted, nor behind by more than a ring).
export function pushedTotal(slot: u32): f64 {
  const base = slotAddr(slot);
  const skipped = atomic.load<u64>(base + M_SKIPPED);
  const gone = atomic.load<u64>(base + M_DELIVERED) + atomic.load<u64>(base + M_EVICTED) + skipped;
  const reserved32 = tailRecords(atomic.load<u64>(base + R_TAIL)) - load<u32>(base + R_BASE);
  const reserved = gone + <u64><i64><i32>(reserved32 - <u32>gone);
  return <f64>(reserved - skipped);
}

// Payload bytes this shard's ring holds (reserved, not yet freed).
export function ringBytesUsed(slot: u32): u32 { return bytesUsedAt(slotAddr(slot)); }

// Records this shard's consumers acknowledged.
export function deliveredTotal(slot: u32): f64 {
  return <f64>atomic.load<u64>(slotAddr(slot) + M_DELIVERED);
}

// Totals since the slot was initialised, as f64 (exact below 2^53), by TOTAL_* code.
export function total(slot: u32, which: i32): f64 {
  const base = slotAddr(slot);
  switch (which) {
    case TOTAL_PUSHED: return pushedTotal(slot);
    case TOTAL_DELIVERED: return deliveredTotal(slot);
    case TOTAL_DROPPED_NEWEST: return <f64>atomic.load<u64>(base + M_DROPPED_NEWEST);
    case TOTAL_SAMPLED: return <f64>atomic.load<u64>(base + M_DROPPED_SAMPLED);
    case TOTAL_REFUSED: return <f64>atomic.load<u64>(base + M_REFUSED);
    case TOTAL_EVICTED: return <f64>atomic.load<u64>(base + M_EVICTED);
    case TOTAL_SKIPPED: return <f64>atomic.load<u64>(base + M_SKIPPED);
  }
  return 0;
}

export function unroutedTotal(): f64 {
  return <f64>atomic.load<u64>(<usize>LAYOUT_BASE + H_UNROUTED);
}

// Events grouped batch blocks pushed again after the watchdog took their records (a
// diagnostic: tests check their stall faults reached that path).
export function owedRepushedTotal(): f64 {
  return <f64>atomic.load<u64>(<usize>LAYOUT_BASE + H_OWED_REPUSHED);
}

// Grouped blocks given up under key order because a table was published while they
// reserved (a diagnostic: tests check their table churn reached that path).
export function blocksRacedTotal(): f64 {
  return <f64>atomic.load<u64>(<usize>LAYOUT_BASE + H_BLOCKS_RACED);
}

// Reservations that waited for their thread to see the memory grow (GROWTH SEEN; a
// diagnostic: tests check their growth churn reached that state).
export function growthWaitsTotal(): f64 {
  return <f64>atomic.load<u64>(<usize>LAYOUT_BASE + H_GROWTH_WAITS);
}
