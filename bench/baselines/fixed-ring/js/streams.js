import { BackpressureError, checkInteger, describe } from './errors.js';
import { ShardState } from './mapper.js';
import { nodeWritable } from '#platform';
const DEFAULT_HIGH_WATER_MARK = 16;
const DEFAULT_RETRY_MS = 8;
const MAX_WAIT_MS = 60_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nextWait = (wait, cap) => Math.min(cap, Math.max(1, wait * 2));
function checkOptions(method, options) {
    if (options === undefined)
        return { highWaterMark: DEFAULT_HIGH_WATER_MARK, retryMs: DEFAULT_RETRY_MS };
    if (typeof options !== 'object' || options === null)
        throw new TypeError(`${method}: options must be an object, got ${describe(options)}`);
    return {
        highWaterMark: checkInteger(`${method}: options.highWaterMark`, options.highWaterMark ?? DEFAULT_HIGH_WATER_MARK, 1, 0x3fffffff),
        retryMs: checkInteger(`${method}: options.retryMs`, options.retryMs ?? DEFAULT_RETRY_MS, 1, MAX_WAIT_MS),
    };
}
function checkRecord(method, record) {
    if (typeof record !== 'object' || record === null || !('key' in record) || !('payload' in record)) {
        throw new TypeError(`${method}: each record must be { key, payload }, got ${describe(record)}`);
    }
}
/** Push one record: undefined once handled, else the id of the full shard that refused it
 *  (failProducer's BackpressureError). A record dropped by dropNewest/sample, or unrouted,
 *  counts as handled, exactly as push() counts it. */
function tryPush(manager, record) {
    try {
        manager.push(record.key, record.payload);
        return undefined;
    }
    catch (error) {
        if (error instanceof BackpressureError)
            return error.shardId;
        throw error;
    }
}
/** Would a push of this record still meet the same full ring? Reads the route and the ring's
 *  length instead of pushing again, so a stall costs one refusal in stats(), not one per
 *  retry. A route that moved elsewhere, or a removed shard, reads as not full. */
function stillFull(manager, record, shardId) {
    try {
        const key = record.key;
        const route = typeof key === 'number' ? manager.mapper.selectShard(key) : manager.mapper.selectShardForKey(key);
        return route === shardId && manager.ringLength(shardId) >= manager.ringCapacity;
    }
    catch {
        return false;
    }
}
/** Wait for room, then push; resolves false if `cancelled()` says so first. After close()
 *  the push is tried at once, so it throws ManagerClosedError instead of waiting forever. */
async function pushWhenRoom(manager, record, full, retryMs, isClosed, cancelled) {
    let wait = 0;
    for (;;) {
        await sleep(wait);
        if (cancelled())
            return false;
        wait = nextWait(wait, retryMs);
        if (!isClosed() && stillFull(manager, record, full))
            continue;
        const refusedBy = tryPush(manager, record);
        if (refusedBy === undefined)
            return true;
        full = refusedBy;
    }
}
/** A Node Writable in object mode (see ShardManager.writable). */
export function createWritable(manager, isClosed, options) {
    const WritableClass = nodeWritable();
    if (!WritableClass)
        throw new Error('writable: Node streams (node:stream) are not available here; in a browser use manager.writableStream()');
    const { highWaterMark, retryMs } = checkOptions('writable', options);
    let destroyed = false;
    return new WritableClass({
        objectMode: true,
        highWaterMark,
        write(record, _encoding, done) {
            let full;
            try {
                checkRecord('writable', record);
                full = tryPush(manager, record);
                if (full === undefined)
                    return done();
            }
            catch (error) {
                return done(error);
            }
            // The ring is full: hold the callback, so the stream buffers what follows, write()
            // returns false at highWaterMark, and 'drain' fires once the ring took this one.
            pushWhenRoom(manager, record, full, retryMs, isClosed, () => destroyed).then((pushed) => { if (pushed)
                done(); }, (error) => done(error));
        },
        destroy(error, done) {
            destroyed = true;
            done(error);
        },
    });
}
/** A WHATWG WritableStream (see ShardManager.writableStream). */
export function createWritableStream(manager, isClosed, options) {
    const { highWaterMark, retryMs } = checkOptions('writableStream', options);
    let aborted = false;
    return new WritableStream({
        async write(record) {
            checkRecord('writableStream', record);
            const full = tryPush(manager, record);
            if (full !== undefined)
                await pushWhenRoom(manager, record, full, retryMs, isClosed, () => aborted);
        },
        abort() {
            aborted = true;
        },
    }, { highWaterMark, size: () => 1 });
}
/** An async iterator over a shard's records (see ShardManager.batches). */
export function shardBatches(manager, shardId, isClosed, options) {
    manager.ringLength(shardId); // refuses a bad or unknown id now, not at the first next()
    if (manager.consumers().some((c) => c.shards.includes(shardId))) {
        throw new Error(`batches: shard ${shardId} is consumed by worker threads (options.consumer); a ring has one consumer at a time`);
    }
    if (options !== undefined && (typeof options !== 'object' || options === null)) {
        throw new TypeError(`batches: options must be an object, got ${describe(options)}`);
    }
    const max = checkInteger('batches: options.max', options?.max ?? manager.ringCapacity, 1, Number.MAX_SAFE_INTEGER);
    const idleMs = checkInteger('batches: options.idleMs', options?.idleMs ?? DEFAULT_RETRY_MS, 1, MAX_WAIT_MS);
    const gone = () => manager.mapper.shardState(shardId) === undefined;
    return (async function* records() {
        let wait = 0;
        for (;;) {
            if (gone())
                return;
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
            if (finished && manager.ringLength(shardId) === 0)
                return;
            await sleep(wait);
            wait = nextWait(wait, idleMs);
        }
    })();
}
