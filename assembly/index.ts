// The numeric-only ABI of the WebAssembly core. Every export takes and returns i32/u32/f64
// (no i64 crosses the boundary); scripts/build.mjs generates src/abi.generated.ts, the typed
// interface of this list, from the compiled module's signatures.
import { LAYOUT_BASE, H_LANE_FLAGS, L_RESULT, L_SCRATCH, L_DOORBELL, L_OWNER, L_HEARTBEAT, L_PARKS } from "./layout";
import {
  slotStrideFor, slotsOffset, slotAddr, laneAddr, laneCount, payloadOffset, ringCapacity, ringLimit, ringBytes,
  slotCount, maxPayload,
} from "./config";

export { configure, attach } from "./config";
export { select, selectBatch, tableBuildAddress, tablePublish } from "./select";
export {
  recordEventOnly, recordLatencySample, recordPush, recordFlush, recordBufferLen, bufferLen,
  setDraining, isDraining, pushesSinceDrainStart, capacityOf, collectAndReset,
} from "./metrics";
export {
  push, pushBatch, pushFixedBatch, ringLen, ringClaim, ringAck, ringRewind, ringClose, ringIsClosed,
  ringAllPublished, ringSetDoorbell, ringStalledAt, ringSkipStalled, ringBytesUsed, slotInit, total, unroutedTotal, owedRepushedTotal, blocksRacedTotal, stopPushes,
  growthWaitsTotal,
} from "./ring";
export {
  fenceBegin, fenceSet, fenceSource, fenceEnd, ringTailCount, ringHeadCount, movingTotal,
} from "./fence";

// ---- layout queries (pure: usable before the memory is configured) -----------------------
export function layoutSlotStride(ringCap: u32, ringBytesEach: u32): f64 { return slotStrideFor(ringCap, ringBytesEach); }
export function layoutSlotsOffset(tableCap: u32, lanes: u32, laneBytes: u32): f64 { return <f64>slotsOffset(tableCap, lanes, laneBytes); }

// ---- addresses (after attach) -------------------------------------------------------------
export function slotAddress(slot: u32): u32 { return <u32>slotAddr(slot); }
export function laneScratchAddress(lane: u32): u32 { return <u32>(laneAddr(lane) + L_SCRATCH); }
export function laneResultAddress(lane: u32): u32 { return <u32>(laneAddr(lane) + L_RESULT); }
export function laneDoorbellAddress(lane: u32): u32 { return <u32>(laneAddr(lane) + L_DOORBELL); }
export function laneHeartbeatAddress(lane: u32): u32 { return <u32>(laneAddr(lane) + L_HEARTBEAT); }
export function laneParksAddress(lane: u32): u32 { return <u32>(laneAddr(lane) + L_PARKS); }
export function ringPayloadOffset(): u32 { return payloadOffset; }
export function ringBytesEach(): u32 { return ringBytes; }
export function ringCapacityRecords(): u32 { return ringCapacity; }
export function ringLimitRecords(): u32 { return ringLimit; }
export function slotCountConfigured(): u32 { return slotCount; }
export function maxPayloadBytesConfigured(): u32 { return maxPayload; }

// ---- lanes: one per attached thread, claimed with a CAS ---------------------------------
export function laneClaim(): i32 {
  for (let i: u32 = 0; i < laneCount; i++) {
    const flag = <usize>LAYOUT_BASE + H_LANE_FLAGS + (<usize>i << 2);
    if (atomic.cmpxchg<u32>(flag, 0, 1) == 0) return <i32>i;
  }
  return -1;
}
export function laneRelease(lane: u32): void {
  atomic.store<u32>(laneAddr(lane) + L_OWNER, 0);
  atomic.store<u32>(<usize>LAYOUT_BASE + H_LANE_FLAGS + (<usize>lane << 2), 0);
}
export function laneIsClaimed(lane: u32): i32 {
  return atomic.load<u32>(<usize>LAYOUT_BASE + H_LANE_FLAGS + (<usize>lane << 2)) != 0 ? 1 : 0;
}
// Who holds a lane: 1 + its worker_threads threadId (0 = not said), so the thread that owns
// the memory can give back the lanes of threads that exited without detach().
export function laneSetOwner(lane: u32, owner: u32): void { atomic.store<u32>(laneAddr(lane) + L_OWNER, owner); }
export function laneOwner(lane: u32): u32 { return atomic.load<u32>(laneAddr(lane) + L_OWNER); }
export function laneCountConfigured(): u32 { return laneCount; }
