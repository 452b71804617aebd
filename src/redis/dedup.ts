// Filtering repeats. An event can come twice only (1) when a node's XADD failed with a
// network error or timeout after Redis had stored the frame, and the node sent it again, or
// (2) when a consumer took over a shard whose previous owner had consumed entries without
// acknowledging them (it crashed, stalled past its lease, or its consume threw). Both
// repeat whole frames with the same dedup id on the same shard. (The README names one rarer
// case, a removed shard, where a repeat gets a new id on another shard; this cannot see it.) A node's frames reach one shard with rising
// frame numbers, so "at or below the last (frame, index) seen from this node on this shard"
// is exactly "seen before".
import type { ShardRecord } from './consumers.js';

export class DedupFilter {
  /** `${shardId}/${node}` → last [frame, index] let through. */
  readonly #last = new Map<string, [number, number]>();

  /** True if this record was seen before (and is not remembered again). */
  isRepeat(record: ShardRecord, shardId: number): boolean {
    const key = `${shardId}/${record.node}`;
    const last = this.#last.get(key);
    if (last && (record.frame < last[0] || (record.frame === last[0] && record.index <= last[1]))) return true;
    this.#last.set(key, [record.frame, record.index]);
    return false;
  }

  /** The records of a batch not seen before, in order. */
  filter(records: readonly ShardRecord[], shardId: number): ShardRecord[] {
    return records.filter((r) => !this.isRepeat(r, shardId));
  }

  /** What to persist with your results to filter across consumer restarts (see restore). */
  snapshot(): Record<string, [number, number]> {
    return Object.fromEntries(this.#last);
  }

  restore(state: Record<string, [number, number]>): void {
    for (const [k, v] of Object.entries(state)) this.#last.set(k, [v[0], v[1]]);
  }
}
