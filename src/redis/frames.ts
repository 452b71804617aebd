// Frames: consecutive events of one shard packed into one stream entry. Each event is a
// little-endian u32 byte length followed by its bytes. A frame is the unit of XADD, of
// acknowledgement and of dedup (node number + frame sequence; an event adds its index).

/** A frame being filled: event bytes, each event's hash (so a frame refused by a removed
 *  shard can be routed again) and the oldest accept index in it (for flush()). */
export class FrameBuilder {
  buf: Buffer;
  bytes = 0;
  hashes: number[] = [];
  /** The oldest accept index in the frame. Evicting an event (dropOldest) leaves it as it
   *  was: lower than the truth, so flush() can only wait longer, never resolve early. */
  minIndex = Infinity;

  constructor(initialBytes: number) {
    this.buf = Buffer.allocUnsafe(initialBytes);
  }

  get count(): number {
    return this.hashes.length;
  }

  /** Append one event (its bytes already validated). */
  add(hash: number, index: number, payload: Uint8Array | string, byteLength: number): void {
    const need = this.bytes + 4 + byteLength;
    if (need > this.buf.length) {
      const grown = Buffer.allocUnsafe(Math.max(need, 2 * this.buf.length));
      this.buf.copy(grown, 0, 0, this.bytes);
      this.buf = grown;
    }
    this.buf.writeUInt32LE(byteLength, this.bytes);
    if (typeof payload === 'string') this.buf.write(payload, this.bytes + 4, 'utf8');
    else this.buf.set(payload, this.bytes + 4);
    this.bytes = need;
    this.hashes.push(hash);
    if (index < this.minIndex) this.minIndex = index;
  }

  /** Drop the oldest event (backpressure dropOldest). */
  dropFirst(): void {
    const len = this.buf.readUInt32LE(0);
    this.buf.copy(this.buf, 0, 4 + len, this.bytes);
    this.bytes -= 4 + len;
    this.hashes.shift();
  }

  close(shard: number, seq: number): Frame {
    return {
      shard,
      seq,
      data: this.buf.subarray(0, this.bytes),
      hashes: this.hashes,
      minIndex: this.minIndex,
      attempted: false,
      unanswered: false,
    };
  }
}

export interface Frame {
  shard: number;
  /** The node's frame sequence: with the node number, the dedup id. */
  seq: number;
  data: Buffer;
  hashes: number[];
  /** The oldest accept index in the frame, or lower (flush waits for it). */
  minIndex: number;
  /** Sent at least once. Redis may have stored it (a timeout hides the answer), so it is
   *  never changed again: a retry must carry the same events under the same dedup ids. */
  attempted: boolean;
  /** An XADD of it failed without an answer (a cut, a timeout): Redis may hold it. If its
   *  shard is removed before a retry is answered, the shard's acknowledged marks tell. */
  unanswered: boolean;
}

/** The events of a frame, as views of `data`. */
export function decodeFrame(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  while (at + 4 <= data.length) {
    const len = data.readUInt32LE(at);
    if (at + 4 + len > data.length)
      throw new Error(`shard-mapper/redis: corrupt frame (event of ${len} bytes at ${at} passes the end, ${data.length})`);
    out.push(data.subarray(at + 4, at + 4 + len));
    at += 4 + len;
  }
  if (at !== data.length) throw new Error(`shard-mapper/redis: corrupt frame (${data.length - at} trailing bytes)`);
  return out;
}

/** Remove the first event of a closed frame (dropOldest on a frame not yet sent). */
export function dropFirstOfFrame(frame: Frame): void {
  const len = frame.data.readUInt32LE(0);
  frame.data = frame.data.subarray(4 + len);
  frame.hashes.shift();
}
