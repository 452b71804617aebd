import { adoptWorker, moduleUrl } from '#platform';
import { spawnConsumerWorker } from '#spawn';
/** Restarts of threads that died before they were ready back off up to this long. */
const MAX_RESTART_DELAY_MS = 5000;
export class ConsumerPool {
    #core;
    #init;
    #events;
    #factory;
    #workers = [];
    #owner = new Map();
    #closing = false;
    #spawned = 0;
    /** Replacements in a row that died before becoming ready (a module that stopped loading). */
    #failedStarts = 0;
    constructor(core, init, events, factory) {
        this.#core = core;
        this.#factory = factory;
        this.#init = init;
        this.#events = events;
    }
    static async start(core, options, threads, batchSize, events) {
        const module = options.worker ? '' : moduleUrl(options.module);
        const pool = new ConsumerPool(core, { module, batchSize, batch: options.batch === true }, events, options.worker);
        for (let i = 0; i < threads; i++)
            pool.#workers.push(pool.#spawn());
        try {
            await Promise.all(pool.#workers.map((w) => w.ready));
        }
        catch (error) {
            // A worker that cannot start (a module that fails to load) is not a crash to recover
            // from: restart none, end them all, and let create() reject.
            pool.#closing = true;
            await Promise.all(pool.#workers.map((w) => w.worker.terminate()));
            throw error;
        }
        return pool;
    }
    #spawn() {
        // The lane is claimed here, not by the thread: a thread killed before it says 'ready'
        // would otherwise leak the lane it took, and enough such kills starve every replacement.
        const lane = this.#core.abi.laneClaim();
        if (lane < 0) {
            throw new Error(`shard-mapper: no free lane for a consumer thread (all ${this.#core.abi.laneCountConfigured()} are taken: raise options.maxThreads, or detach() producers you no longer use)`);
        }
        const init = { core: this.#core.handle(), ...this.#init, lane };
        let worker;
        try {
            worker = this.#factory ? adoptWorker(this.#factory(), init) : spawnConsumerWorker(init);
        }
        catch (error) {
            this.#core.abi.laneRelease(lane);
            throw error;
        }
        let resolveReady;
        let rejectReady;
        const state = {
            index: this.#spawned++, worker, lane, doorbell: 0, shards: new Map(), releasing: new Map(), beat: undefined,
            exited: false, stopping: false, started: false, killed: false, respawnPending: false,
            ready: new Promise((res, rej) => { resolveReady = res; rejectReady = rej; }),
        };
        state.ready.catch(() => { }); // a replacement nobody awaits must not become an unhandled rejection
        worker.onMessage((msg) => {
            switch (msg.type) {
                case 'ready':
                    state.started = true;
                    this.#failedStarts = 0;
                    state.doorbell = msg.doorbell;
                    resolveReady();
                    break;
                case 'fatal':
                    rejectReady(Object.assign(new Error(`consumer worker failed to start: ${msg.message}`), { stack: msg.stack }));
                    break;
                case 'error':
                    this.#events.onError(Object.assign(new Error(msg.message), { stack: msg.stack }), msg.shardId);
                    break;
                case 'released': {
                    const done = state.releasing.get(msg.shardId);
                    state.releasing.delete(msg.shardId);
                    done?.();
                    break;
                }
            }
        });
        // A module that fails to load may surface as this error event before its 'fatal' message:
        // word both the same way.
        worker.onError((error) => rejectReady(Object.assign(new Error(`consumer worker failed to start: ${error.message}`), { stack: error.stack })));
        worker.onExit((code) => this.#onExit(state, code));
        return state;
    }
    /** Give a shard to the least-loaded live worker. */
    assign(shardId, slot) {
        const live = this.#workers.filter((w) => !w.exited && !w.stopping);
        if (live.length === 0) {
            const waiting = this.#workers.find((w) => w.respawnPending);
            if (!waiting)
                throw new Error('shard-mapper: no consumer worker is running');
            this.#core.retainSlot(slot);
            waiting.shards.set(shardId, slot); // handed over when its replacement starts
            this.#owner.set(shardId, waiting);
            return;
        }
        const target = live.reduce((a, b) => (b.shards.size < a.shards.size ? b : a));
        this.#core.retainSlot(slot); // the worker reads the slot until it confirms the release
        this.#give(target, shardId, slot);
    }
    #give(target, shardId, slot) {
        target.shards.set(shardId, slot);
        this.#owner.set(shardId, target);
        const assign = () => {
            // Sent once the thread is ready: by then the shard may have been released (removed) or
            // moved on, its slot freed and reused by another shard. Assigning it then would put a
            // second consumer on that ring.
            if (this.#owner.get(shardId) !== target || target.shards.get(shardId) !== slot)
                return;
            this.#core.abi.ringSetDoorbell(slot, target.doorbell);
            send(target.worker, { type: 'assign', shardId, slot });
        };
        if (target.started)
            assign();
        else
            void target.ready.then(assign, () => { });
    }
    /** The shard is gone and its ring empty: the owner lets go, then the slot is freed. */
    release(shardId) {
        const owner = this.#owner.get(shardId);
        if (!owner)
            return;
        const slot = owner.shards.get(shardId);
        this.#owner.delete(shardId);
        owner.shards.delete(shardId);
        const free = () => this.#core.releaseSlot(slot);
        if (owner.exited) {
            free();
            return;
        }
        owner.releasing.set(shardId, free);
        send(owner.worker, { type: 'release', shardId });
    }
    owns(shardId) {
        return this.#owner.has(shardId);
    }
    /** Workers and the shards each owns (for operators and tests). */
    describe() {
        return this.#workers.map((w) => ({ index: w.index, shards: [...w.shards.keys()], alive: !w.exited, ready: w.started && !w.exited }));
    }
    /** Kill one worker as a crash would; its shards move on as after any crash. */
    async terminateWorker(index) {
        const w = this.#workers.find((x) => x.index === index && !x.exited);
        if (!w)
            throw new RangeError(`terminateConsumer: no running consumer thread ${index} (running: ${this.#workers.filter((x) => !x.exited).map((x) => x.index).join(', ') || 'none'})`);
        w.killed = true;
        await w.worker.terminate();
    }
    /**
     * Replace every ready thread whose heartbeat has not moved for `stallMs` while one of its
     * shards has records (an idle thread's timer still beats; a stopped one does not). Returns
     * the indexes of the threads it ended.
     */
    checkHeartbeats(now, stallMs) {
        const ended = [];
        const abi = this.#core.abi;
        for (const w of [...this.#workers]) {
            if (w.exited || w.stopping || !w.started || w.killed)
                continue;
            const value = Atomics.load(this.#core.i32, abi.laneHeartbeatAddress(w.lane) >>> 2);
            const busy = [...w.shards.values()].some((slot) => abi.ringLen(slot) !== 0);
            if (w.beat === undefined || w.beat.value !== value || !busy) {
                w.beat = { value, since: now };
                continue;
            }
            if (now - w.beat.since < stallMs)
                continue;
            ended.push(w.index);
            this.#events.onStalled(w.index);
            w.killed = true;
            // Rewind and replace only once the thread has really stopped: a thread that was only
            // slow must not acknowledge a batch that was handed out again. Browsers send no exit
            // event (terminate() stops a Web Worker at once); in Node 'exit' may come first.
            void w.worker.terminate().then(() => this.#onExit(w, -1), () => this.#onExit(w, -1));
        }
        return ended;
    }
    #onExit(state, code) {
        if (state.exited)
            return;
        state.exited = true;
        for (const done of state.releasing.values())
            done(); // it reads nothing any more
        state.releasing.clear();
        this.#core.abi.laneRelease(state.lane); // claimed for it in #spawn: released whatever it got to do
        if (this.#closing || state.stopping)
            return;
        // A crash: records it had claimed but not acknowledged are handed out again. Its shards
        // wait (their rings keep accepting up to capacity) until the replacement is up; a thread
        // that keeps dying before it is ready is restarted with exponential backoff.
        let rewound = 0;
        for (const slot of state.shards.values())
            rewound += this.#core.abi.ringRewind(slot);
        this.#events.onWorkerExit(state.index, code, rewound);
        if (!state.started && !state.killed)
            this.#failedStarts++;
        const delay = this.#failedStarts === 0 || state.killed ? 0 : Math.min(MAX_RESTART_DELAY_MS, 50 * 2 ** this.#failedStarts);
        this.#scheduleRespawn(state, delay);
    }
    /** Start a replacement for `state` after `delay` ms. One that cannot start (no free lane,
     *  a spawn error) is tried again with backoff: its shards are kept, never dropped. */
    #scheduleRespawn(state, delay) {
        const respawn = () => {
            state.respawnPending = false;
            if (this.#closing)
                return;
            let replacement;
            try {
                replacement = this.#spawn();
            }
            catch (error) {
                this.#events.onRestartFailed(error);
                this.#scheduleRespawn(state, Math.min(MAX_RESTART_DELAY_MS, Math.max(50, 2 * delay)));
                return;
            }
            const index = this.#workers.indexOf(state);
            if (index >= 0)
                this.#workers.splice(index, 1);
            this.#workers.push(replacement);
            for (const [shardId, slot] of state.shards)
                this.#give(replacement, shardId, slot);
            state.shards.clear();
        };
        if (delay === 0)
            respawn();
        else {
            state.respawnPending = true;
            setTimeout(respawn, delay).unref?.();
        }
    }
    /** Ask every worker to finish what it has and stop, then end the threads. */
    async close() {
        this.#closing = true;
        const live = this.#workers.filter((w) => !w.exited);
        await Promise.all(live.map((w) => new Promise((resolve) => {
            w.stopping = true;
            w.worker.onMessage((msg) => { if (msg.type === 'stopped')
                resolve(); });
            w.worker.onExit(() => resolve());
            send(w.worker, { type: 'stop' });
        })));
        await Promise.all(live.map((w) => w.worker.terminate()));
    }
}
function send(worker, message) {
    worker.postMessage(message);
}
