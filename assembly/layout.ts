// The one memory layout of shard-mapper's shared linear memory.
//
// Everything both sides need to agree on lives here. AssemblyScript reads these constants
// directly; TypeScript reads the static ones from src/layout.generated.ts (generated from
// this file by scripts/build.mjs) and the dynamic ones by calling the exported functions
// of assembly/index.ts, so no offset is ever written twice.
//
// Memory map (addresses grow downwards):
//   [0, LAYOUT_BASE)                 AssemblyScript's own static region (kept empty; the
//                                    build checks the module has no data segments)
//   HEADER      at LAYOUT_BASE       config words, selection-table generation, counters
//   TABLES      2 × tableCapacity u32 double-buffered selection tables
//   FENCES      FENCE_HEADER_BYTES, then tableCapacity key-order fences (one per table entry)
//   LANES       laneCount × laneBytes per-thread scratch (payload staging, results)
//   SLOTS       slotCount × slotStride per-shard metrics + ring (grown on demand)
//
// One slot: SLOT_HEADER_BYTES of counters and ring words, then ringCapacity record
// descriptors (RECORD_BYTES each), then the ring's payload area (ringBytes bytes), in which
// payloads lie one after another (each rounded up to 8 bytes, none crossing the end).
//
// Hot words written by different threads sit on separate 128-byte lines (two 64-byte lines,
// so the adjacent-line prefetcher does not pair them either).

export const CACHE_LINE: i32 = 128;
export const LAYOUT_BASE: i32 = 1024;

// ---- header (offsets from LAYOUT_BASE) --------------------------------------------------
export const H_MAGIC: i32 = 0;            // u32, MAGIC once configured
export const H_TABLE_CAPACITY: i32 = 4;   // u32, entries per selection table
export const H_SLOT_COUNT: i32 = 8;       // u32, maximum number of slots
export const H_RING_CAPACITY: i32 = 12;   // u32, record descriptors per ring (a power of two, or 0); H_RING_LIMIT records at once
export const H_MAX_PAYLOAD: i32 = 16;     // u32, bytes
export const H_LANE_COUNT: i32 = 20;      // u32
export const H_LANE_BYTES: i32 = 24;      // u32
export const H_BACKPRESSURE: i32 = 28;    // u32, BP_* mode
export const H_SAMPLE_RATE: i32 = 32;     // u32, keep 1 in N once past the threshold
export const H_RING_BYTES: i32 = 36;      // u32, bytes of each ring's payload area (a multiple of 8, or 0)
export const H_SAMPLE_FILL: i32 = 40;     // f64, fill ratio where sampling starts
export const H_KEY_ORDER: i32 = 48;       // u32, 1: moved table entries are fenced (routing 'affinity', see FENCES)
export const H_RING_LIMIT: i32 = 52;      // u32, records a ring may hold at once: ringBufferCapacity as given (the
                                          //   descriptors are H_RING_CAPACITY, its power of two at least 2)
// second line: written by the mapper thread whenever the selection table changes
export const H_TABLE_GEN: i32 = 128;      // u32, generation; table (gen & 1) is live
export const H_TABLE_COUNT0: i32 = 132;   // u32 × 2, entries in table 0 and in table 1
export const H_STOPPED: i32 = 140;        // u32, 1 once the manager closed: pushes are refused
// third line: counters bumped by every producer thread
export const H_UNROUTED: i32 = 256;       // i64, pushes made while no shard was Active
export const H_OWED_REPUSHED: i32 = 264;  // i64, events a grouped batch block pushed again after the watchdog took their records (ring.ts, GROUPED WRITES)
export const H_BLOCKS_RACED: i32 = 272;   // i64, grouped blocks given up under key order because a table was published while they reserved (ring.ts, GROUPED WRITES)
export const H_GROWTH_WAITS: i32 = 280;   // i64, reservations that found their slot past the memory size their thread's instance knew, and waited (ring.ts, GROWTH SEEN)
export const H_LANE_FLAGS: i32 = 384;     // u32 × MAX_LANES, 1 = lane claimed
export const MAX_LANES: i32 = 256;
export const HEADER_BYTES: i32 = H_LANE_FLAGS + MAX_LANES * 4;

export const MAGIC: u32 = 0x53484d31;    // "SHM1"

// ---- one lane (per-thread scratch) ------------------------------------------------------
export const L_DOORBELL: i32 = 0;         // i32, 1 while this lane's consumer sleeps
export const L_OWNER: i32 = 4;            // u32, 1 + the worker_threads threadId that holds the lane (0: unknown)
export const L_HEARTBEAT: i32 = 8;        // u32, bumped by a consumer thread's timer while its event loop runs
export const L_PARKS: i32 = 12;           // u32, times this lane's consumer thread parked on its doorbell (a diagnostic: tests read it)
export const L_RESULT: i32 = 64;          // 32 bytes of call results: BATCH_*, CLAIM_* or COLLECT_* words (below)
export const L_FAILED_SHARD: i32 = L_RESULT + 32; // u32: shard id of the last push refused under failProducer
// a batch call's grouping of its events by shard (assembly/ring.ts, GROUPED WRITES): a table
// of up to GROUP_MAX groups, each group's list of its events, and where each event is staged
export const GROUP_MAX: i32 = 8;
export const GROUP_BLOCK: i32 = 256;      // events a block groups at most
export const G_ENTRY: i32 = 0;            // u32, the table entry (id | slot << 16) its events route to
export const G_COUNT: i32 = 4;            // u32, its events in the block
export const G_RESERVED: i32 = 8;         // u32, records reserved for it
export const G_RUN_FIRST: i32 = 12;       // u32, ring index of its first reserved record
export const G_RUN_POSITION: i32 = 16;    // u32, byte position its first payload is placed from
export const G_RETRIES: i32 = 20;         // u32, failed CAS attempts of its reservation
export const G_UNWRITTEN: i32 = 24;       // u32, its list position of the first event left unwritten (the watchdog took its record)
export const G_EXTENTS: i32 = 28;         // u32, its payloads' extents added up (pushBatch)
export const G_MAX_EXTENT: i32 = 32;      // u32, its largest payload extent (pushBatch)
export const G_NEXT: i32 = 36;            // u32, scratch for walks over every group in batch order
export const G_BYTES: i32 = 40;
export const LIST_BYTES: i32 = (GROUP_BLOCK + 1) * 2; // u16 block indexes, ascending, then the block's end
export const L_GROUPS: i32 = 128;                                  // GROUP_MAX × G_BYTES
export const L_LISTS: i32 = L_GROUPS + GROUP_MAX * G_BYTES;        // GROUP_MAX × LIST_BYTES
export const L_EVENT_AT: i32 = L_LISTS + GROUP_MAX * LIST_BYTES;   // u32 × (GROUP_BLOCK + 1): each event's offset in the scratch (pushBatch), then the block end's
export const L_SCRATCH: i32 = (L_EVENT_AT + (GROUP_BLOCK + 2) * 4 + 63) & ~63; // staging area, up to laneBytes (cache-line aligned)
export const LANE_HEADER_BYTES: i32 = L_SCRATCH;
export const DEFAULT_LANE_BYTES: i32 = 16384; // a lane's size unless payloads need more (its scratch: this less LANE_HEADER_BYTES)

// ---- one slot: metrics + ring (offsets from the slot base) ------------------------------
// line 0: written by producers
export const M_LATENCY: i32 = 0;          // i64, (count << 32) | sum, one atomic word
export const M_EVENTS: i32 = 8;           // u32, events in the current window (low half of an i64)
export const M_DRAIN_PUSHES: i32 = 12;    // u32, pushes since drain start (high half of that i64)
export const M_BUFFER_LEN: i32 = 16;      // u32, recorded length (collectors without a ring; a ring reports its own)
export const M_SAMPLE_COUNTER: i32 = 20;  // u32, sample-mode counter
export const M_DROPPED_NEWEST: i32 = 32;  // i64, refused because the ring was full
export const M_DROPPED_SAMPLED: i32 = 40; // i64, shed by sample mode
export const M_REFUSED: i32 = 48;         // i64, refused under failProducer
export const M_EVICTED: i32 = 56;         // i64, evicted by dropOldest
// line 1: written by the consumer / the mapper thread
export const M_FLUSH: i32 = 128;          // i64, (count << 32) | sum
export const M_DRAINING: i32 = 144;       // u32, 1 while draining
export const M_CAPACITY: i32 = 148;       // u32, capacity the fill ratio divides by
export const M_SKIPPED: i32 = 152;        // i64, reserved records never written (their producer died or stalled)
export const M_WINDOW_TAIL: i32 = 160;    // u64, the tail count when the current metrics window began (ring shards
                                          //   count their window's events as tail − this: no counter bumped per push)
export const M_DRAIN_TAIL: i32 = 168;     // u64, the tail count when draining started (pushes since = tail − this)
// line 2: ring tail, written by producers
export const R_TAIL: i32 = 256;           // u64, bits 0-31: records ever reserved, mod 2^32 (they index the descriptors);
                                          //   bits 32-62: the byte position after the last reservation (see BYTE POSITIONS);
                                          //   bit 63: closed. One word, so one CAS reserves records and bytes together.
export const R_DOORBELL: i32 = 264;       // u32, address of the consumer's doorbell, 0 = none
export const R_BASE: i32 = 272;           // u32, the tail's record count when this shard got the slot
                                          //   (read by every push: kept off the consumer's line)
// line 3: ring head side, written by the consumer (and by evictors under dropOldest)
export const R_CURSOR: i32 = 384;         // u64, head index (low 32 bits: first record not yet acknowledged or
                                          //   evicted) | claimed index << 32 (first record not yet handed out);
                                          //   one word, so claim, acknowledge, evict and rewind are each one atomic step
export const M_DELIVERED: i32 = 392;      // i64, records acknowledged by a consumer (skipped ones excluded)
export const R_BYTE_HEAD: i32 = 400;      // u64, low half: a byte position before which every payload byte is free again;
                                          //   high half: the head index it was taken at (later indexes win: it never goes back)
export const R_RECORDS: i32 = 512;        // first record
export const SLOT_HEADER_BYTES: i32 = R_RECORDS;

// ---- one record descriptor --------------------------------------------------------------
// The sequence word says what the descriptor holds for the index i it serves: i (free, may be
// reserved for i), i + SEQ_WRITING (a producer is copying into it), i + 1 (published),
// i + SEQ_SKIPPED (reserved but never written: padding), i + capacity (free for the next lap).
// The payload itself lies in the slot's payload area, REC_OFF bytes from its start.
export const REC_SEQ: i32 = 0;            // u32, see above
export const REC_LEN: i32 = 4;            // u32, payload bytes
export const REC_OFF: i32 = 8;            // u32, payload offset in the payload area (a multiple of 8)
export const REC_END: i32 = 12;           // u32, byte position right after this record (its wrap padding included)
export const RECORD_BYTES: i32 = 16;
// BYTE POSITIONS count payload bytes modulo 2 × ringBytes: position p is offset p mod ringBytes
// of the payload area, and the extra lap bit tells a full area from an empty one. A record
// of e bytes (its length rounded up to 8) that would cross the end starts at the next lap's
// offset 0 instead; the bytes it skips count as its own. So a record never wraps, and may be
// at most a quarter of the area (then the padding costs at most a quarter too).
export const PAYLOAD_ALIGN: i32 = 8;
export const MAX_RING_BYTES: i32 = 0x40000000; // 1 GiB: twice it must fit the tail's 31 position bits
export const SEQ_WRITING: i32 = 0x40000000;
export const SEQ_SKIPPED: i32 = 0x20000000;

// ---- codes ------------------------------------------------------------------------------
export const NO_SHARD: i32 = 0xffff;
export const BP_DROP_NEWEST: i32 = 0;
export const BP_DROP_OLDEST: i32 = 1;
export const BP_FAIL_PRODUCER: i32 = 2;
export const BP_SAMPLE: i32 = 3;
// push results (≥ 0 is the shard id that accepted the event)
export const PUSH_UNROUTED: i32 = -1;
export const PUSH_FULL: i32 = -2;
export const PUSH_SAMPLED: i32 = -3;
export const PUSH_REFUSED: i32 = -4;
export const PUSH_CLOSED: i32 = -5;      // internal: ring closed, select again
export const PUSH_STOPPED: i32 = -6;     // the manager is closed
export const PUSH_MOVING: i32 = -7;      // the key's slot is moving and waits (refused under failProducer)
export const PUSH_MOVING_DROPPED: i32 = -8; // the same, dropped (every other backpressure mode)
export const PUSH_NOT_VISIBLE: i32 = -9;  // this thread's instance never saw the memory grow to the shard's slot
// batch results, u32 words at the lane's L_RESULT
export const BATCH_ACCEPTED: i32 = 0;
export const BATCH_UNROUTED: i32 = 4;
export const BATCH_FULL: i32 = 8;
export const BATCH_SAMPLED: i32 = 12;
export const BATCH_STOP: i32 = 16;        // STOP_* below
export const STOP_NONE: i32 = 0;
export const STOP_REFUSED: i32 = 1;       // stopped before an event refused under failProducer
export const STOP_CLOSED: i32 = 2;        // the manager was closed
export const STOP_MOVING: i32 = 3;        // stopped before an event whose key was moving (failProducer)
export const STOP_NOT_VISIBLE: i32 = 4;   // stopped before an event for a slot this thread cannot see yet (PUSH_NOT_VISIBLE)
// totals readable with total(slot, which)
export const TOTAL_PUSHED: i32 = 0;
export const TOTAL_DELIVERED: i32 = 1;
export const TOTAL_DROPPED_NEWEST: i32 = 2;
export const TOTAL_SAMPLED: i32 = 3;
export const TOTAL_REFUSED: i32 = 4;
export const TOTAL_EVICTED: i32 = 5;
export const TOTAL_SKIPPED: i32 = 6;
export const TOTAL_COUNT: i32 = 7;
// collectAndReset's output, u32 words at `out`
export const COLLECT_BUFFER_LEN: i32 = 0;
export const COLLECT_EVENTS: i32 = 4;
export const COLLECT_LATENCY_COUNT: i32 = 8;
export const COLLECT_LATENCY_SUM: i32 = 12;
export const COLLECT_FLUSH_COUNT: i32 = 16;
export const COLLECT_FLUSH_SUM: i32 = 20;
export const COLLECT_BYTES_USED: i32 = 24; // payload bytes the ring holds (its byte fill's numerator)
// ringClaim's output, u32 words at `out`
export const CLAIM_START: i32 = 0;        // first index of the batch
export const CLAIM_SKIPPED: i32 = 4;      // 1: the batch is padding (skipped records), acknowledge it unread
// Push-latency samples measure contention: each failed reservation attempt counts this
// many nanoseconds (about one contended cache-line transfer). An uncontended push is 0 ns.
export const CONTENTION_NS_PER_RETRY: i32 = 50;
export const LATENCY_SAMPLE_MASK: u32 = 63; // 1 sample in 64 pushes

// ---- key-order fences (routing 'affinity'; assembly/fence.ts) -------------------------------
// When a table entry moves from shard A to shard B, the owner publishes it with FENCED_SLOT in
// place of B's slot (the id half still names B) and fills the entry's fence: B's slot, and
// the rings whose earlier events of that entry must be acknowledged first, each with the
// record count its tail had at the move. A push of a fenced entry goes to B only once every
// such ring's head has passed its mark; until then it meets backpressure (PUSH_MOVING*).
// Entries that did not move are read exactly as before: the slot half is never FENCED_SLOT.
export const FENCED_SLOT: i32 = 0xffff;   // in an entry's slot half (bits 16-31): see the fence
export const FH_MOVING: i32 = 0;          // i64, pushes refused or dropped because their key was moving
export const FENCE_HEADER_BYTES: i32 = 128;
export const F_SEQ: i32 = 0;              // u32, odd while the owner rewrites this fence (readers wait)
export const F_TO: i32 = 4;               // u32, the slot of the shard the entry moved to
export const F_COUNT: i32 = 8;            // u32, rings to wait for (FENCE_HELD: wait until the owner says)
export const F_SOURCES: i32 = 16;         // FENCE_SOURCES × (u32 slot, u32 mark)
export const FENCE_SOURCES: i32 = 4;
export const FENCE_HELD: i32 = 0xff;
export const FENCE_BYTES: i32 = F_SOURCES + FENCE_SOURCES * 8;
