// The typed mirror of assembly/index.ts: every export of the WebAssembly core, numbers
// only. test/abi.test.ts checks this list against the compiled module's real exports.
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
  total(slot: number, which: number): number;

  push(lane: number, hash: number, len: number): number;
  pushBatch(lane: number, count: number): number;
  pushFixedBatch(lane: number, count: number, size: number, recordsOffset: number): number;
  ringLen(slot: number): number;
  ringClaim(slot: number, max: number, out: number): number;
  ringAck(slot: number, start: number, n: number): void;
  ringRewind(slot: number): void;
  ringClose(slot: number): void;
  ringIsClosed(slot: number): number;
  ringAllPublished(slot: number): number;
  ringSetDoorbell(slot: number, addr: number): void;
  slotInit(slot: number, capacity: number): void;
  unroutedTotal(): number;
  stopPushes(): void;
}

/** Which totals `Abi.total` reads. */
export const Total = { Pushed: 0, Delivered: 1, DroppedNewest: 2, Sampled: 3, Refused: 4, Evicted: 5 } as const;
