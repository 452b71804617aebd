// Filtering repeats yourself, for consumers run with `dedup: false` (who keep the marks with
// their own results, e.g. in the same database transaction). With the default `dedup: true`
// serveShardConsumers already skips every repeat of an acknowledged frame, and this filter
// has nothing left to catch but the repeats the README lists for a consume that had side
// effects and then failed.
//
// A node's frames reach one shard with rising frame numbers, so "at or below the last
// (frame, index) committed from this node on this shard" is exactly "consumed before". Only
// `commit` remembers: call it once the records' work is done (and persisted), never before,
// or a batch whose consume fails half-way would be dropped when it comes again.
import type { ShardRecord } from './entries.js';

export class DedupFilter {
  /** `${shardId}/${node}` → last [frame, index] committed. */
  readonly #last = new Map<string, [number, number]>();

  /** True if this record is at or below what was committed for its node on this shard. */
  isRepeat(record: ShardRecord, shardId: number): boolean {
    const last = this.#last.get(`${shardId}/${record.node}`);
    return last !== undefined && (record.frame < last[0] || (record.frame === last[0] && record.index <= last[1]));
  }

  /** The records of a batch not committed before, in order (a repeat inside the batch too).
   *  Marks nothing: call `commit` after your work succeeded. */
  filter(records: readonly ShardRecord[], shardId: number): ShardRecord[] {
    const seen = new Map<string, [number, number]>();
    return records.filter((r) => {
      if (this.isRepeat(r, shardId)) return false;
      const inBatch = seen.get(r.node);
      if (inBatch && (r.frame < inBatch[0] || (r.frame === inBatch[0] && r.index <= inBatch[1]))) return false;
      seen.set(r.node, [r.frame, r.index]);
      return true;
    });
  }

  /** Remember these records as consumed (the highest (frame, index) per node). */
  commit(records: readonly ShardRecord[], shardId: number): void {
    for (const r of records) {
      if (this.isRepeat(r, shardId)) continue;
      this.#last.set(`${shardId}/${r.node}`, [r.frame, r.index]);
    }
  }

  /** What to persist with your results to filter across consumer restarts (see restore). */
  snapshot(): Record<string, [number, number]> {
    return Object.fromEntries(this.#last);
  }

  restore(state: Record<string, [number, number]>): void {
    for (const [k, v] of Object.entries(state)) this.#last.set(k, [v[0], v[1]]);
  }
}
