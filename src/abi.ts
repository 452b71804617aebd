// The typed mirror of assembly/index.ts: every export of the WebAssembly core, numbers
// only. test/abi.test.ts checks this list against the compiled module's real exports.
import {
  TOTAL_PUSHED, TOTAL_DELIVERED, TOTAL_DROPPED_NEWEST, TOTAL_SAMPLED, TOTAL_REFUSED, TOTAL_EVICTED, TOTAL_SKIPPED, TOTAL_COUNT,
} from './layout.generated.js';

export interface Abi {
  configure(tableCap: number, slots: number, ringCap: number, maxPayload: number, lanes: number,
    laneBytes: number, mode: number, sampleRate: number, sampleFill: number): void;
  attach(): number;
  layoutSlotStride(ringCap: number, maxPayload: number): number;
  layoutSlotsOffset(tableCap: number, lanes: number, laneBytes: number): number;
  slotAddress(slot: number): number;
  laneScratchAddress(lane: number): number;
  laneResultAddress(lane: number): number;
  laneDoorbellAddress(lane: number): number;
  recordStrideBytes(): number;
  ringCapacityRecords(): number;
  laneClaim(): number;
  laneRelease(lane: number): void;
  laneIsClaimed(lane: number): number;
  laneSetOwner(lane: number, owner: number): void;
  laneOwner(lane: number): number;
  laneCountConfigured(): number;

  select(hash: number): number;
  selectBatch(src: number, dst: number, n: number): void;
  tableBuildAddress(): number;
  tablePublish(count: number): void;

  recordEventOnly(slot: number): void;
  recordLatencySample(slot: number, ns: number): void;
  recordPush(slot: number, ns: number): void;
  recordFlush(slot: number, us: number): void;
  recordBufferLen(slot: number, len: number): void;
  bufferLen(slot: number): number;
  setDraining(slot: number, on: number): void;
  isDraining(slot: number): number;
  pushesSinceDrainStart(slot: number): number;
  capacityOf(slot: number): number;
  collectAndReset(slot: number, out: number): void;

  push(lane: number, hash: number, len: number): number;
  pushBatch(lane: number, count: number): number;
  pushFixedBatch(lane: number, count: number, size: number, recordsOffset: number): number;
  ringLen(slot: number): number;
  ringClaim(slot: number, max: number, out: number): number;
  ringAck(slot: number, start: number, n: number, delivered: number): void;
  ringRewind(slot: number): number;
  ringClose(slot: number): void;
  ringIsClosed(slot: number): number;
  ringAllPublished(slot: number): number;
  ringSetDoorbell(slot: number, addr: number): void;
  ringStalledAt(slot: number): number;
  ringSkipStalled(slot: number, index: number): number;
  total(slot: number, which: number): number;
  slotInit(slot: number, capacity: number): void;
  unroutedTotal(): number;
  stopPushes(): void;
}

/** Which totals `Abi.total` reads (codes from assembly/layout.ts). */
export const Total = {
  Pushed: TOTAL_PUSHED, Delivered: TOTAL_DELIVERED, DroppedNewest: TOTAL_DROPPED_NEWEST, Sampled: TOTAL_SAMPLED,
  Refused: TOTAL_REFUSED, Evicted: TOTAL_EVICTED, Skipped: TOTAL_SKIPPED,
} as const;
export const TOTALS = TOTAL_COUNT;
