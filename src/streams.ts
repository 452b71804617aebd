// Stream interfaces over a ShardManager: a Node Writable and a WHATWG WritableStream that
// push `{ key, payload }` records and, while a ring is full, wait instead of failing (so the
// stream's own buffer fills and its writer is told to stop), and an async iterator over one
// shard's records for applications that consume with poll().
import type { Writable } from 'node:stream';
import { BackpressureError, checkInteger, describe, given } from './errors.js';
import type { EventKey, EventPayload } from './producer.js';
import type { ShardManager } from './manager.js';
import { ShardState } from './mapper.js';
import { payloadExtent } from './core.js';
import { nodeWritable } from '#platform';
import { sleep } from './sleep.js';
import { checkKnownKeys } from './validate.js';

/** One event for `manager.writable()` / `manager.writableStream()`. */
export interface ManagerRecord {
  key: EventKey;
  payload: EventPayload;
}

export interface WritableOptions {
  /** Records the stream holds before `write()` returns false (Node) or `desiredSize` drops to 0
   *  (WHATWG). Default 16. One of them may be waiting for room in a full ring. */
  highWaterMark?: number;
  /** Longest pause between two tries while a ring is full, in ms (default 8). The pauses
   *  start at 0 and double, so a ring that frees quickly is retried at once. (A Redis node
   *  needs no polling: a waiting write goes on as soon as its shard stored a frame.) */
  retryMs?: number;
}

export interface BatchesOptions {
  /** Most records per batch (default: the ring capacity). */
  max?: number;
  /** Longest pause between two polls of an empty ring, in ms (default 8; pauses double from 0). */
  idleMs?: number;
}

/** The options each call reads (the Record types keep the lists complete): a misspelled or
 *  unsupported one (a `signal`, say) is refused rather than ignored. */
const WRITABLE_OPTIONS: Record<keyof WritableOptions, true> = { highWaterMark: true, retryMs: true };
const BATCHES_OPTIONS: Record<keyof BatchesOptions, true> = { max: true, idleMs: true };

const DEFAULT_HIGH_WATER_MARK = 16;
const DEFAULT_RETRY_MS = 8;
const MAX_WAIT_MS = 60_000;

const nextWait = (wait: number, cap: number) => Math.min(cap, Math.max(1, wait * 2));

function checkOptions(method: string, options: WritableOptions | undefined): { highWaterMark: number; retryMs: number } {
  if (options === undefined) return { highWaterMark: DEFAULT_HIGH_WATER_MARK, retryMs: DEFAULT_RETRY_MS };
  if (typeof options !== 'object' || options === null)
    throw new TypeError(`${method}: options must be an object, got ${describe(options)}`);
  checkKnownKeys(`${method}: options`, options, WRITABLE_OPTIONS);
  return {
    highWaterMark: checkInteger(`${method}: options.highWaterMark`, given(options.highWaterMark, DEFAULT_HIGH_WATER_MARK), 1, 0x3fffffff),
    retryMs: checkInteger(`${method}: options.retryMs`, given(options.retryMs, DEFAULT_RETRY_MS), 1, MAX_WAIT_MS),
  };
}

function checkRecord(method: string, record: unknown): asserts record is ManagerRecord {
  if (typeof record !== 'object' || record === null || !('key' in record) || !('payload' in record)) {
    // an object missing a field says which: "got an object" alone leaves the user guessing
    const missing = typeof record === 'object' && record !== null ? ` (no ${'key' in record ? 'payload' : 'key'} field)` : '';
    throw new TypeError(`${method}: each record must be { key, payload }, got ${describe(record)}${missing}`);
  }
}

/** Whether a push of this key would wait for its key's move now (a manager's key-order fences). */
export type KeyWaits = (key: EventKey) => boolean;

/** What the writers need from a manager (a ShardManager or a Redis node): push, and a wait
 *  for room after a push was refused. */
export interface PushTarget {
  push(key: EventKey, payload: EventPayload): boolean;
  /** Resolves once a push of `record`, refused because shard `shardId` was full, is worth
   *  trying again (at once after close, so the push throws ManagerClosedError), or once
   *  `cancelled()` holds. */
  roomFor(record: ManagerRecord, shardId: number, cancelled: () => boolean): Promise<void>;
}

/** Push one record: undefined once handled, else the id of the full shard that refused it
 *  (failProducer's BackpressureError). A record dropped by dropNewest/sample, or unrouted,
 *  counts as handled, exactly as push() counts it. */
function tryPush(target: PushTarget, record: ManagerRecord): number | undefined {
  try {
    target.push(record.key, record.payload);
    return undefined;
  } catch (error) {
    if (error instanceof BackpressureError) return error.shardId;
    throw error;
  }
}

const utf8 = new TextEncoder();

/** Would a push of this record still be refused? Reads the key's fence (routing 'affinity':
 *  its key moving), the route and the ring's length instead of pushing again, so a stall
 *  costs one refusal in stats(), not one per retry. A route that moved elsewhere, or a
 *  removed shard, reads as not full. */
function stillFull(manager: ShardManager, record: ManagerRecord, shardId: number, keyWaits: KeyWaits): boolean {
  try {
    const key = record.key;
    if (keyWaits(key)) return true;
    const route = typeof key === 'number' ? manager.mapper.selectShard(key) : manager.mapper.selectShardForKey(key);
    if (route !== shardId) return false;
    if (manager.ringLength(shardId) >= manager.ringCapacity) return true;
    // Full by bytes: the payload, and padding shorter than it if it meets the area's end.
    const payload = record.payload;
    const length = typeof payload === 'string' ? utf8.encode(payload).length : payload.byteLength;
    const extent = 2 * payloadExtent(length);
    return manager.ringBytesUsed(shardId) + extent > manager.ringBufferBytes;
  } catch {
    return false;
  }
}

/** A ShardManager as a PushTarget: its rings are emptied by consumers on other threads,
 *  which tell nobody, so a full ring is polled, with pauses doubling from 0 to `retryMs`. */
function managerTarget(manager: ShardManager, isClosed: () => boolean, keyWaits: KeyWaits, retryMs: number): PushTarget {
  return {
    push: (key, payload) => manager.push(key, payload),
    async roomFor(record, shardId, cancelled) {
      let wait = 0;
      for (;;) {
        await sleep(wait);
        if (cancelled() || isClosed() || !stillFull(manager, record, shardId, keyWaits)) return;
        wait = nextWait(wait, retryMs);
      }
    },
  };
}

/** Wait for room, then push; resolves false if `cancelled()` says so first. */
async function pushWhenRoom(target: PushTarget, record: ManagerRecord, full: number, cancelled: () => boolean): Promise<boolean> {
  for (;;) {
    await target.roomFor(record, full, cancelled);
    if (cancelled()) return false;
    const refusedBy = tryPush(target, record);
    if (refusedBy === undefined) return true;
    full = refusedBy;
  }
}

/** A Node Writable in object mode (see ShardManager.writable). */
export function createWritable(manager: ShardManager, isClosed: () => boolean, keyWaits: KeyWaits, options?: WritableOptions): Writable {
  const { highWaterMark, retryMs } = checkOptions('writable', options);
  return targetWritable(managerTarget(manager, isClosed, keyWaits, retryMs), highWaterMark);
}

/** The same over any PushTarget (a Redis node's `writable()`); `retryMs` is the target's business. */
export function createTargetWritable(target: PushTarget, options?: WritableOptions): Writable {
  return targetWritable(target, checkOptions('writable', options).highWaterMark);
}

function targetWritable(target: PushTarget, highWaterMark: number): Writable {
  const WritableClass = nodeWritable();
  if (!WritableClass)
    throw new Error('writable: Node streams (node:stream) are not available here; in a browser use manager.writableStream()');
  let destroyed = false;
  return new WritableClass({
    objectMode: true,
    highWaterMark,
    write(record: unknown, _encoding, done) {
      let full: number | undefined;
      try {
        checkRecord('writable', record);
        full = tryPush(target, record);
        if (full === undefined) return done();
      } catch (error) {
        return done(error as Error);
      }
      // The ring is full: hold the callback, so the stream buffers what follows, write()
      // returns false at highWaterMark, and 'drain' fires once the ring took this one.
      pushWhenRoom(target, record, full, () => destroyed).then(
        (pushed) => {
          if (pushed) done();
        },
        (error: Error) => done(error),
      );
    },
    destroy(error, done) {
      destroyed = true;
      done(error);
    },
  });
}

/** A WHATWG WritableStream (see ShardManager.writableStream). */
export function createWritableStream(
  manager: ShardManager,
  isClosed: () => boolean,
  keyWaits: KeyWaits,
  options?: WritableOptions,
): WritableStream<ManagerRecord> {
  const { highWaterMark, retryMs } = checkOptions('writableStream', options);
  return targetWritableStream(managerTarget(manager, isClosed, keyWaits, retryMs), highWaterMark);
}

/** The same over any PushTarget (a Redis node's `writableStream()`). */
export function createTargetWritableStream(target: PushTarget, options?: WritableOptions): WritableStream<ManagerRecord> {
  return targetWritableStream(target, checkOptions('writableStream', options).highWaterMark);
}

function targetWritableStream(target: PushTarget, highWaterMark: number): WritableStream<ManagerRecord> {
  let aborted = false;
  return new WritableStream<ManagerRecord>(
    {
      async write(record) {
        checkRecord('writableStream', record);
        const full = tryPush(target, record);
        if (full !== undefined) await pushWhenRoom(target, record, full, () => aborted);
      },
      abort() {
        aborted = true;
      },
    },
    { highWaterMark, size: () => 1 },
  );
}

/** An async iterator over a shard's records (see ShardManager.batches). */
export function shardBatches(
  manager: ShardManager,
  shardId: number,
  isClosed: () => boolean,
  options?: BatchesOptions,
): AsyncIterableIterator<Uint8Array[]> {
  if (manager.consumers().some((c) => c.shards.includes(shardId))) {
    throw new Error(`batches: shard ${shardId} is consumed by worker threads (options.consumer); a ring has one consumer at a time`);
  }
  if (options !== undefined && (typeof options !== 'object' || options === null)) {
    throw new TypeError(`batches: options must be an object, got ${describe(options)}`);
  }
  if (options !== undefined) checkKnownKeys('batches: options', options, BATCHES_OPTIONS);
  const max = checkInteger('batches: options.max', given(options?.max, manager.ringCapacity), 1, Number.MAX_SAFE_INTEGER);
  const idleMs = checkInteger('batches: options.idleMs', given(options?.idleMs, DEFAULT_RETRY_MS), 1, MAX_WAIT_MS);
  const gone = () => manager.mapper.shardState(shardId) === undefined;

  return (async function* records() {
    let wait = 0;
    for (;;) {
      if (gone()) return;
      const batch = manager.poll(shardId, max);
      if (batch.length > 0) {
        wait = 0;
        yield batch;
        continue;
      }
      // Nothing more can arrive once the manager is closed or the shard's ring is closed
      // (draining or stopped) and every reserved record has been taken.
      const state = manager.mapper.shardState(shardId);
      const finished = isClosed() || state === ShardState.Draining || state === ShardState.Stopped;
      if (finished && manager.ringLength(shardId) === 0) return;
      await sleep(wait);
      wait = nextWait(wait, idleMs);
    }
  })();
}
