// Key-order fences (routing 'affinity'): a table entry that moved from shard A to shard B is
// published with FENCED_SLOT in its slot half, and its fence (one per entry, FENCES in
// layout.ts) names B's slot and the rings whose earlier events of that entry must be
// acknowledged first, each with the record count its tail had at the move. A push of a
// fenced entry goes to B only once every such ring's head (first record not acknowledged)
// has passed its mark; until then it meets backpressure. Heads only move forward (a slot
// reused by a new shard goes on from its old tail), so a fence that passed stays passed.
//
// The owner (the mapper's thread) writes a fence with F_SEQ odd, so a reader that finds it
// mid-write waits, and takes each new mark after the table naming the fence is live (see
// routeMoved for the pushes that selected the old entry just before).
//
// routeMoved closes the one gap: a push that read the old table, then reserved in A after
// the owner took A's mark. After its reservation it looks at the table generation again;
// if a publish came in between and the entry now names another shard, it turns its record
// into padding and selects again (only while key order is on, and only then).
import {
  LAYOUT_BASE, H_TABLE_GEN, H_TABLE_COUNT0, R_CURSOR, R_TAIL, FENCED_SLOT, FH_MOVING, FENCE_HEADER_BYTES,
  F_SEQ, F_TO, F_COUNT, F_SOURCES, FENCE_SOURCES, FENCE_BYTES,
} from "./layout";
import { fencesBase, tableCapacity, slotAddr } from "./config";
import { selectEntry, tableAddr, pick } from "./select";

/** fencedSlot's answer while the key must wait. */
export const FENCE_WAIT: u32 = 0xffffffff;
/** fencedSlot's answer when no shard is routable right now. */
export const FENCE_NONE: u32 = 0xfffffffe;

@inline function fenceAddr(i: u32): usize {
  return fencesBase + FENCE_HEADER_BYTES + <usize>i * FENCE_BYTES;
}

// What the push in progress on this thread selected: the generation read before its
// selection, its hash, and the id its entry named.
let routeGen: u32 = 0;
let routeHash: u32 = 0;
let routeId: u32 = 0;

@inline export function noteRoute(gen: u32, hash: u32, entry: u32): void {
  routeGen = gen;
  routeHash = hash;
  routeId = entry & 0xffff;
}

@inline export function tableGeneration(): u32 {
  return atomic.load<u32>(<usize>LAYOUT_BASE + H_TABLE_GEN);
}

/** After a reservation: did a table published since the selection send this key elsewhere? */
@inline export function routeMoved(): bool {
  return tableGeneration() != routeGen && (selectEntry(routeHash) & 0xffff) != routeId;
}

/** Where fence `i` lets its entry's pushes go now: B's slot, or FENCE_WAIT. */
function fenceVerdict(i: u32): u32 {
  const f = fenceAddr(i);
  const seq = atomic.load<u32>(f + F_SEQ);
  if (seq & 1) return FENCE_WAIT;
  const count = atomic.load<u32>(f + F_COUNT);
  if (count > <u32>FENCE_SOURCES) return FENCE_WAIT; // held by the owner
  const to = atomic.load<u32>(f + F_TO);
  for (let k: u32 = 0; k < count; k++) {
    const at = f + F_SOURCES + (<usize>k << 3);
    const head = <u32>atomic.load<u64>(slotAddr(atomic.load<u32>(at)) + R_CURSOR);
    if (<i32>(head - atomic.load<u32>(at, 4)) < 0) return FENCE_WAIT;
  }
  return atomic.load<u32>(f + F_SEQ) == seq ? to : FENCE_WAIT;
}

/**
 * The slot a push of `hash` may go to when its entry was fenced: read under one table
 * generation with the fence (a seqlock, as selectEntry). Records the route for routeMoved.
 */
export function fencedSlot(hash: u32): u32 {
  const h = <usize>LAYOUT_BASE;
  while (true) {
    const gen = atomic.load<u32>(h + H_TABLE_GEN);
    const n = load<u32>(h + H_TABLE_COUNT0 + ((gen & 1) << 2));
    let entry: u32 = 0;
    let slot = FENCE_NONE;
    if (n != 0 && n <= tableCapacity) {
      const i = pick(hash, n);
      entry = load<u32>(tableAddr(gen) + (<usize>i << 2));
      slot = (entry >>> 16) == <u32>FENCED_SLOT ? fenceVerdict(i) : entry >>> 16;
    }
    if (atomic.load<u32>(h + H_TABLE_GEN) == gen) {
      noteRoute(gen, hash, entry);
      return slot;
    }
  }
}

/** Count a push refused or dropped because its key was moving. */
export function countMoving(): void {
  atomic.add<u64>(fencesBase + FH_MOVING, 1);
}

// ---- the owner's side ---------------------------------------------------------------------

/** Start rewriting fence `i` (readers of it wait until fenceEnd). */
export function fenceBegin(i: u32): void {
  const f = fenceAddr(i);
  const seq = atomic.load<u32>(f + F_SEQ);
  if ((seq & 1) == 0) atomic.store<u32>(f + F_SEQ, seq + 1);
}

/** Fence `i` lets its entry go to slot `to` once `count` sources (fenceSource) have passed. */
export function fenceSet(i: u32, to: u32, count: u32): void {
  const f = fenceAddr(i);
  atomic.store<u32>(f + F_TO, to);
  atomic.store<u32>(f + F_COUNT, count);
}

export function fenceSource(i: u32, k: u32, slot: u32, mark: u32): void {
  const at = fenceAddr(i) + F_SOURCES + (<usize>k << 3);
  atomic.store<u32>(at, slot);
  atomic.store<u32>(at, mark, 4);
}

/** Publish fence `i` as written. */
export function fenceEnd(i: u32): void {
  const f = fenceAddr(i);
  const seq = atomic.load<u32>(f + F_SEQ);
  if (seq & 1) atomic.store<u32>(f + F_SEQ, seq + 1);
}

/** Records ever reserved in a slot's ring (mod 2^32): a source's mark. */
export function ringTailCount(slot: u32): u32 {
  return <u32>atomic.load<u64>(slotAddr(slot) + R_TAIL);
}

/** The first record of a slot's ring not yet acknowledged or evicted (mod 2^32). */
export function ringHeadCount(slot: u32): u32 {
  return <u32>atomic.load<u64>(slotAddr(slot) + R_CURSOR);
}

/** Pushes refused or dropped so far because their key was moving. */
export function movingTotal(): f64 {
  return <f64>atomic.load<u64>(fencesBase + FH_MOVING);
}
