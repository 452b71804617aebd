// What a shard holds and what its consumers have acknowledged, as Redis states it: the
// shard's progress hash (keys.progress(id), under the stream's hash tag), written by the nodes
// (`in`, in the pipeline of each XADD) and by the smCommit script together with the XACK that
// acknowledges entries.
//
//   n:<node>  "<frame>:<index>"  the last event of that node's newest frame acknowledged here
//   acked     events acknowledged (a repeat of an acknowledged frame is not counted again)
//   in        events appended (counted by the node just before each XADD; a frame stored
//             twice counts twice)
//   out       events of the entries acknowledged (repeats included), counted in the script
//             that acknowledges them; set to `in` when the stream empties. `in` − `out` is
//             the backlog: a consumer that dies changes neither, a producer node that dies
//             leaves at most the one frame it had counted and not appended, until the stream
//             next empties
//   batches   consume calls acknowledged;  us: their total time (µs)
//
// A node's frames reach one shard with rising frame numbers and a consumer acknowledges a
// stream in order, so a mark at frame F means every frame that node sent to the shard up to F
// was acknowledged: consumed, skipped as a repeat, or moved to the dead-letter stream. A mark
// always closes a frame (a batch is whole stream entries, one entry is one frame), so a frame
// some of whose events were skipped as repeats counts once the entry carrying it is committed.
import type { Keys } from './keys.js';
import type { RedisClient } from './connection.js';

export interface AckedPosition {
  /** The node's newest frame acknowledged on the shard: every frame up to it is acknowledged. */
  frame: number;
  /** The index of that frame's last event (-1 for a frame without events). */
  index: number;
}

/** How long a removed shard's progress hash is kept (one hour): a node cut off from Redis
 *  for less than this, whose frame to the shard went unanswered, learns there whether the
 *  frame was consumed before the removal. */
export const PROGRESS_RETAIN_MS = 3_600_000;

/** Field names of the progress hash. */
export const PROGRESS = { markPrefix: 'n:', acked: 'acked', in: 'in', out: 'out', batches: 'batches', us: 'us' } as const;

const MARK = /^(\d+):(-?\d+)$/;

/** The marks of an HGETALL reply of a progress hash (ioredis gives an object). */
export function marksOf(reply: unknown): Map<string, AckedPosition> {
  const out = new Map<string, AckedPosition>();
  const entries: [string, unknown][] = Array.isArray(reply)
    ? Array.from({ length: Math.floor(reply.length / 2) }, (_, i) => [String(reply[2 * i]), reply[2 * i + 1]])
    : reply && typeof reply === 'object'
      ? Object.entries(reply)
      : [];
  for (const [field, value] of entries) {
    if (!field.startsWith(PROGRESS.markPrefix)) continue;
    const m = MARK.exec(String(value));
    if (m) out.set(field.slice(PROGRESS.markPrefix.length), { frame: Number(m[1]), index: Number(m[2]) });
  }
  return out;
}

/**
 * Per node (its id as the stream entries carry it), the acknowledged position on one shard.
 * A node absent from the map has had nothing acknowledged there. "Acknowledged every frame
 * this node sent to the shard up to frame F" is `position.frame >= F`.
 */
export async function readAckedPositions(client: RedisClient, keys: Keys, shardId: number): Promise<Map<string, AckedPosition>> {
  return marksOf(await client.hgetall(keys.progress(shardId)));
}
