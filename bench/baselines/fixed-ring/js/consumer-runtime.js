// The consumer thread's loop: attaches to the manager's memory and feeds a consumer function
// batches read in place from the rings of the shards it owns. A batch is acknowledged (its
// records freed and counted as delivered) only after the function returns or its promise
// resolves; a throw rewinds the ring so the same records come again.
//
// No top-level await here or in the entries that start it: bundlers emit workers as classic
// scripts by default (Vite's worker.format is 'iife'), where top-level await does not parse.
import { SharedCore } from './core.js';
import { workerEndpoint, yieldToEventLoop } from '#platform';
import { REC_LEN, REC_PAYLOAD } from './layout.generated.js';
import { RecordBatch } from './record-batch.js';
const PARK_TIMEOUT_MS = 50;
/** How often the thread bumps its heartbeat (ConsumerPool replaces a thread whose heartbeat stops). */
const HEARTBEAT_MS = 100;
const RETRY_BACKOFF_MS = 10;
const YIELD_EVERY_BATCHES = 32;
const PARK_SPINS = 64;
/** Run the consumer loop in this worker until the manager says stop. @internal */
export async function runConsumer(resolve, shape = {}) {
    const endpoint = await workerEndpoint();
    const post = (message) => endpoint.post(message);
    const init = endpoint.data;
    const owned = new Map();
    const releases = [];
    let order = [];
    let running = true;
    let wake = () => { };
    // Listen before anything is awaited, so an early 'assign' is never missed.
    endpoint.onMessage((msg) => {
        if (msg.type === 'assign') {
            owned.set(msg.shardId, { shardId: msg.shardId, slot: msg.slot });
            order = [...owned.values()];
            wake();
        }
        else if (msg.type === 'release') {
            releases.push(msg.shardId); // applied between batches, never under one
            wake();
        }
        else if (msg.type === 'stop') {
            running = false;
            wake();
        }
    });
    let core;
    let consume;
    let consumeBatch;
    try {
        core = await SharedCore.attach(init.core, init.lane);
        const fn = await resolve(init);
        if (typeof fn !== 'function')
            throw new TypeError('the consumer must be a function (records, shardId) => void | Promise<void>');
        if (shape.batch ?? init.batch ?? false)
            consumeBatch = fn;
        consume = fn;
    }
    catch (error) {
        post({ type: 'fatal', message: error?.message ?? String(error), stack: error?.stack });
        throw error;
    }
    const bell = core.abi.laneDoorbellAddress(core.lane) >>> 2;
    // A timer, not the loop: it runs while a consumer function awaits, and stops when the
    // thread dies or its event loop is blocked — the two things the pool must notice. In
    // browsers, where a Web Worker that dies tells the page nothing, it is the only signal.
    const heartbeat = core.abi.laneHeartbeatAddress(core.lane) >>> 2;
    const beat = setInterval(() => Atomics.add(core.i32, heartbeat, 1), HEARTBEAT_MS);
    beat.unref?.();
    wake = () => {
        Atomics.store(core.i32, bell, 0);
        Atomics.notify(core.i32, bell);
    };
    post({ type: 'ready', lane: core.lane, doorbell: bell << 2 });
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const waitAsync = Atomics.waitAsync;
    async function park() {
        // Look again a few times first: records that arrive within a microsecond or two are
        // taken without sleeping, and the producer is spared the wake-up (a futex call) it
        // makes for a sleeping consumer.
        for (let spin = 0; spin < PARK_SPINS; spin++) {
            for (const s of order)
                if (core.abi.ringLen(s.slot) !== 0)
                    return;
        }
        Atomics.store(core.i32, bell, 1); // producers that see 1 will notify
        for (const s of order)
            if (core.abi.ringLen(s.slot) !== 0) {
                Atomics.store(core.i32, bell, 0);
                return;
            }
        if (releases.length > 0 || !running) {
            Atomics.store(core.i32, bell, 0);
            return;
        }
        if (waitAsync) {
            const w = waitAsync(core.i32, bell, 1, PARK_TIMEOUT_MS);
            if (w.async)
                await w.value;
        }
        else {
            await sleep(1); // engines without Atomics.waitAsync: poll
        }
        Atomics.store(core.i32, bell, 0);
    }
    function applyReleases() {
        if (releases.length === 0)
            return;
        for (const id of releases.splice(0)) {
            owned.delete(id);
            post({ type: 'released', shardId: id });
        }
        order = [...owned.values()];
    }
    let batch; // one per thread, refilled for every batch
    /** Take, hand over and acknowledge one batch of `s`; a number when the consumer was
     *  synchronous, a promise when it returned one (or threw). */
    function consumeOne(s) {
        const n = core.claim(s.slot, init.batchSize);
        if (n === 0)
            return 0;
        const start = core.claimStart;
        const base = core.abi.slotAddress(s.slot);
        core.ensureViews(core.recordsEnd(base)); // the slot may lie past this thread's views (growth)
        let records;
        if (consumeBatch) {
            batch ??= new RecordBatch(init.batchSize, core.recordStride, core.recordStride - REC_PAYLOAD);
            batch.fill(s.shardId, core.u8, core.u32, base, core.ringCapacity, start, n);
        }
        else {
            const buffer = core.u8.buffer;
            const u32 = core.u32;
            records = new Array(n);
            for (let k = 0; k < n; k++) {
                const at = core.recordAt(base, start + k);
                const len = u32[(at + REC_LEN) >>> 2];
                // The constructor is ~15 ns cheaper per record than u8.subarray (no species lookup).
                records[k] = new Uint8Array(buffer, at + REC_PAYLOAD, len);
            }
        }
        const began = performance.now(); // worker-local timing: a clock function cannot cross threads
        let r;
        try {
            r = consumeBatch ? consumeBatch(batch, s.shardId) : consume(records, s.shardId);
        }
        catch (error) {
            return failed(s, error);
        }
        // A synchronous consumer is acknowledged right here: no promise, no microtask per batch.
        if (r && typeof r.then === 'function') {
            return r.then(() => acknowledge(s, start, n, began), (error) => failed(s, error));
        }
        return acknowledge(s, start, n, began);
    }
    function acknowledge(s, start, n, began) {
        const us = Math.round((performance.now() - began) * 1000);
        core.abi.ringAck(s.slot, start, n, n);
        core.abi.recordFlush(s.slot, Math.min(us, 0xffffffff));
        return n;
    }
    // The batch comes again: rewound at once (before anything is awaited), then a pause.
    async function failed(s, error) {
        core.abi.ringRewind(s.slot);
        post({ type: 'error', shardId: s.shardId, message: error?.message ?? String(error), stack: error?.stack });
        await sleep(RETRY_BACKOFF_MS);
        return 0;
    }
    let batches = 0;
    while (true) {
        applyReleases();
        let moved = 0;
        for (const s of order) {
            const r = consumeOne(s);
            moved += typeof r === 'number' ? r : await r;
        }
        if (moved === 0) {
            if (!running)
                break;
            await park();
        }
        else if (++batches % YIELD_EVERY_BATCHES === 0) {
            await yieldToEventLoop(); // let assign/release/stop messages in while busy
        }
    }
    applyReleases();
    clearInterval(beat);
    core.detach();
    post({ type: 'stopped' });
}
