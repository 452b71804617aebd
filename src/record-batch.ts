// RecordBatch: one shard's claimed records, read in place, described without a view per
// record. A ring's payloads lie one after another in its payload area (each rounded up to 8
// bytes), so a batch is one contiguous run of payloads, or two when it wraps past the area's
// end: `regions`. Each record's payload offset (into `bytes`, the whole memory) and length sit
// in typed arrays the batch reuses from one batch to the next, so filling a batch allocates
// nothing per record.
import { R_RECORDS, RECORD_BYTES, REC_LEN, REC_OFF } from './layout.generated.js';
import { payloadExtent } from './core.js';

/** One contiguous run of payloads. */
export interface BatchRegion {
  /** From the region's first payload to the end of its last one. */
  readonly bytes: Uint8Array;
  /** Records in this region. */
  readonly count: number;
}

/**
 * A batch of one shard's records, in push order, valid only until the consumer function
 * returns (or its promise settles): the memory is the ring's and is reused afterwards.
 * Copy what you keep (`batch.bytes.slice(offset, offset + length)`).
 *
 * - `offsets[i]` / `lengths[i]` (for `i < length`): record i is
 *   `bytes.subarray(offsets[i], offsets[i] + lengths[i])`. The arrays are longer than
 *   `length` and reused: read only the first `length` entries.
 * - `recordSize`: every record's length when they all have the same one, else 0. Then
 *   `stride` is that length rounded up to 8 and record k of a region is
 *   `region.bytes.subarray(k * stride, k * stride + recordSize)`: a fixed-size layout to read
 *   records from without looking at `lengths`.
 * - Iterating (`for (const record of batch)`) or `toArray()` gives one `Uint8Array` view per
 *   record, as consumers without `batch: true` get them.
 */
export class RecordBatch implements Iterable<Uint8Array> {
  /** The shard the records came from. */
  shardId = -1;
  /** Records in the batch. */
  length = 0;
  /** The whole shared memory (or the single-thread memory): offsets index into it. */
  bytes: Uint8Array = new Uint8Array(0);
  /** Payload offset of each record in `bytes` (first `length` entries). */
  offsets: Uint32Array;
  /** Payload length of each record in bytes (first `length` entries). */
  lengths: Uint32Array;
  /** With `recordSize` > 0, the bytes from one record's payload to the next within a region
   *  (recordSize rounded up to 8); 0 when the records' lengths differ (use `offsets`). */
  stride = 0;
  /** The common length of every record when they are all the same, else 0. */
  recordSize = 0;
  /** 1, or 2 when the batch wraps past the end of the ring's payload area. */
  regionCount = 0;
  /** Records in the first region (the rest are in the second). */
  #firstRegionRecords = 0;

  /** @hidden The package makes these. Kept in the .d.ts: stripped, the class would seem
   *  constructible without arguments. */
  constructor(capacity: number) {
    this.offsets = new Uint32Array(Math.max(1, capacity));
    this.lengths = new Uint32Array(Math.max(1, capacity));
  }

  /**
   * Fill the batch with records [start, start + n) of the ring whose slot starts at
   * `slotBase` (`ringCapacity` descriptors, a power of two; payloads from `payloadBase`).
   * `u32` views the same memory as `u8`.
   * @internal
   */
  fill(
    shardId: number,
    u8: Uint8Array,
    u32: Uint32Array,
    slotBase: number,
    ringCapacity: number,
    payloadBase: number,
    start: number,
    n: number,
  ): void {
    if (this.offsets.length < n) {
      this.offsets = new Uint32Array(n);
      this.lengths = new Uint32Array(n);
    }
    const offsets = this.offsets;
    const lengths = this.lengths;
    const descriptors = slotBase + R_RECORDS;
    const mask = ringCapacity - 1;
    const size = n > 0 ? u32[(descriptors + (start & mask) * RECORD_BYTES + REC_LEN) >>> 2]! : 0;
    let same = true;
    let inFirst = n;
    let next = -1; // where the next payload starts if it follows on without wrapping
    for (let k = 0; k < n; k++) {
      const rec = descriptors + ((start + k) & mask) * RECORD_BYTES;
      const len = u32[(rec + REC_LEN) >>> 2]!;
      const at = payloadBase + u32[(rec + REC_OFF) >>> 2]!;
      if (at !== next && k > 0 && inFirst === n) inFirst = k; // wrapped to the area's start
      offsets[k] = at;
      lengths[k] = len;
      if (len !== size) same = false;
      next = at + payloadExtent(len);
    }
    this.shardId = shardId;
    this.length = n;
    this.bytes = u8;
    this.recordSize = same ? size : 0;
    this.stride = same ? payloadExtent(size) : 0;
    this.#firstRegionRecords = inFirst;
    this.regionCount = n === 0 ? 0 : inFirst < n ? 2 : 1;
  }

  /** The batch as one or two contiguous runs of payloads (two views, made on each call). */
  get regions(): BatchRegion[] {
    const out: BatchRegion[] = [];
    if (this.length === 0) return out;
    const split = this.#firstRegionRecords;
    const counts = split < this.length ? [split, this.length - split] : [this.length];
    let k = 0;
    for (const count of counts) {
      const from = this.offsets[k]!;
      const last = k + count - 1;
      const end = this.offsets[last]! + this.lengths[last]!;
      out.push({ bytes: new Uint8Array(this.bytes.buffer, this.bytes.byteOffset + from, end - from), count });
      k += count;
    }
    return out;
  }

  /** Record i as a view (valid as long as the batch is). */
  record(i: number): Uint8Array {
    if (!Number.isInteger(i) || i < 0 || i >= this.length) {
      throw new RangeError(`RecordBatch.record: index must be an integer in [0, ${this.length}), got ${String(i)}`);
    }
    return new Uint8Array(this.bytes.buffer, this.bytes.byteOffset + this.offsets[i]!, this.lengths[i]!);
  }

  /** One view per record, in push order. */
  *[Symbol.iterator](): Iterator<Uint8Array> {
    const buffer = this.bytes.buffer;
    const base = this.bytes.byteOffset;
    for (let i = 0; i < this.length; i++) yield new Uint8Array(buffer, base + this.offsets[i]!, this.lengths[i]!);
  }

  /** One view per record, as an array (what consumers without `batch: true` receive). */
  toArray(): Uint8Array[] {
    const buffer = this.bytes.buffer;
    const base = this.bytes.byteOffset;
    const out: Uint8Array[] = new Array(this.length);
    for (let i = 0; i < this.length; i++) out[i] = new Uint8Array(buffer, base + this.offsets[i]!, this.lengths[i]!);
    return out;
  }

  /** Copy every record, back to back, into `target`; returns the bytes written. Throws
   *  (copying nothing) when `target` is too small. */
  copyTo(target: Uint8Array, at = 0): number {
    let total = 0;
    for (let i = 0; i < this.length; i++) total += this.lengths[i]!;
    if (!(target instanceof Uint8Array)) throw new TypeError('RecordBatch.copyTo: target must be a Uint8Array');
    if (typeof at !== 'number' || !Number.isInteger(at) || at < 0) {
      throw new RangeError(`RecordBatch.copyTo: at must be an integer >= 0, got ${typeof at === 'number' ? at : typeof at}`);
    }
    if (at + total > target.length) {
      throw new RangeError(`RecordBatch.copyTo: the batch has ${total} bytes, target has room for ${Math.max(0, target.length - at)}`);
    }
    let p = at;
    for (let i = 0; i < this.length; i++) {
      const o = this.offsets[i]!;
      const len = this.lengths[i]!;
      target.set(this.bytes.subarray(o, o + len), p);
      p += len;
    }
    return total;
  }
}
