// Stream entries as consumers read them: a frame of one node (n = node, s = frame sequence,
// c = events, d = the frame's bytes), decoded into records, or the reason it cannot be; and
// the dead-letter entry that keeps an entry no consumer could take.
import { decodeFrame } from './frames.js';
import type { Command } from './connection.js';

/** One event as a consumer receives it. */
export interface ShardRecord {
  payload: Buffer;
  /** `${node}:${frame}:${index}`: the same for every delivery of this event, never shared
   *  by two events. */
  dedupId: string;
  /** The node that pushed it, the node's frame sequence, the event's index in the frame. */
  node: string;
  frame: number;
  index: number;
  /** The stream entry (frame) it came in. */
  entryId: string;
}

/** What a stream entry is: a frame, an entry deleted while pending, or one that cannot be decoded. */
export type Decoded =
  | { kind: 'frame'; node: string; frame: number; records: ShardRecord[] }
  | { kind: 'gone' }
  | { kind: 'undecodable'; error: string; node: string; frame: number; count: number };

export interface ReadEntry {
  id: string;
  /** The raw field / value pairs (empty for a 'gone' entry). */
  fields: Buffer[];
  /** Times Redis handed the entry to a consumer of the group (XPENDING's delivery count). */
  deliveries: number;
  decoded: Decoded;
}

const SEQ = /^\d{1,15}$/;
const COUNT = /^\d{1,9}$/;

/** Entries of an XREADGROUP / XAUTOCLAIM reply, Buffer fields, decoded. */
export function readEntries(raw: unknown): ReadEntry[] {
  if (!Array.isArray(raw)) return [];
  const out: ReadEntry[] = [];
  for (const e of raw as [Buffer, Buffer[] | null][]) {
    if (!e) continue;
    const id = e[0].toString();
    // An entry deleted while pending comes back without fields: it only needs its XACK.
    if (!e[1]) out.push({ id, fields: [], deliveries: 1, decoded: { kind: 'gone' } });
    else out.push({ id, fields: e[1], deliveries: 1, decoded: decodeEntry(id, e[1]) });
  }
  return out;
}

export function decodeEntry(entryId: string, fields: Buffer[]): Decoded {
  let node: string | undefined;
  let seq: string | undefined;
  let count: string | undefined;
  let data: Buffer | undefined;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = fields[i]!.toString();
    if (name === 'n') node = fields[i + 1]!.toString();
    else if (name === 's') seq = fields[i + 1]!.toString();
    else if (name === 'c') count = fields[i + 1]!.toString();
    else if (name === 'd') data = fields[i + 1]!;
  }
  const frame = seq !== undefined && SEQ.test(seq) ? Number(seq) : -1;
  const declared = count !== undefined && COUNT.test(count) ? Number(count) : undefined;
  // What is known of an undecodable frame still moves its node's mark (see progress.ts).
  // An entry no node of ours wrote counts no event (no node counted it in `in`).
  const known = node !== undefined && node !== '' && frame >= 0;
  const fail = (error: string): Decoded => ({
    kind: 'undecodable',
    error: `stream entry ${entryId} cannot be decoded: ${error}`,
    node: known ? node! : '',
    frame: known ? frame : 0,
    count: known ? (declared ?? 0) : 0,
  });
  if (!node) return fail('it has no node field (n)');
  if (frame < 0) return fail(`its frame sequence (s) ${JSON.stringify(seq)} is not a non-negative integer`);
  if (!data) return fail('it has no data field (d)');
  let payloads: Buffer[];
  try {
    payloads = decodeFrame(data);
  } catch (error) {
    return fail((error as Error).message);
  }
  if (declared !== undefined && declared !== payloads.length)
    return fail(`its count field (c) says ${declared} events, its data holds ${payloads.length}`);
  const records = payloads.map(
    (payload, index): ShardRecord => ({ payload, dedupId: `${node}:${frame}:${index}`, node, frame, index, entryId }),
  );
  return { kind: 'frame', node, frame, records };
}

/** Why an entry goes to the dead-letter stream. */
export type DeadReason = 'undecodable' | 'maxDeliveries';

/** The XADD that copies an entry to the dead-letter stream: `dead.*` fields first, then the
 *  entry's own fields unchanged. Never trimmed: what lands there stays until you delete it. */
export function deadLetterCommand(key: string, shardId: number, entry: ReadEntry, reason: DeadReason, error: string): Command {
  return [
    'xadd',
    key,
    '*',
    'dead.shard',
    String(shardId),
    'dead.entry',
    entry.id,
    'dead.reason',
    reason,
    'dead.error',
    error,
    'dead.deliveries',
    String(entry.deliveries),
    ...entry.fields,
  ];
}
