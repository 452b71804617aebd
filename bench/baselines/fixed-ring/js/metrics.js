import { SharedCore as Core } from './core.js';
import { COLLECT_BUFFER_LEN, COLLECT_EVENTS, COLLECT_LATENCY_COUNT, COLLECT_LATENCY_SUM, COLLECT_FLUSH_COUNT, COLLECT_FLUSH_SUM, } from './layout.generated.js';
const U32_MAX = 4294967295;
function sample(name, value) {
    if (typeof value !== 'number' || Number.isNaN(value) || value < 0) {
        throw new RangeError(`${name} must be a number >= 0, got ${typeof value === 'number' ? value : typeof value}`);
    }
    return value >= U32_MAX ? U32_MAX : Math.floor(value);
}
export class ShardMetricsCollector {
    shardId;
    #core;
    #slot;
    #clock;
    /** The capacity the fill ratio divides by. */
    capacity;
    #retired = false;
    /** Made by attach(): it holds a lane of its own. */
    #attached = false;
    /** @internal Collectors come from `ShardMapper.metricsCollector(id)` or `attach`. */
    constructor(core, slot, shardId, clock) {
        this.#core = core;
        this.#slot = slot;
        this.shardId = shardId;
        this.#clock = clock;
        this.capacity = core.abi.capacityOf(slot) >>> 0;
    }
    /** Attach to a collector from another thread (worker_threads, Web Workers). */
    static async attach(handle, clock = () => performance.now()) {
        const core = await Core.attach(handle.core);
        const collector = new ShardMetricsCollector(core, handle.slot, handle.shardId, clock);
        collector.#attached = true;
        return collector;
    }
    /** Give back the lane an attached collector holds (one per thread that may attach at
     *  once, options.maxThreads); it ignores recordings afterwards. A no-op for the mapper's own. */
    detach() {
        if (!this.#attached)
            return;
        this.#attached = false;
        this.#retired = true;
        this.#core.detach();
    }
    handle() {
        return { core: this.#core.handle(), slot: this.#slot, shardId: this.shardId };
    }
    recordBufferLen(len) {
        if (!this.#retired)
            this.#core.abi.recordBufferLen(this.#slot, sample('len', len));
    }
    /** One event and one latency sample (ns). */
    recordPush(latencyNs) {
        if (!this.#retired)
            this.#core.abi.recordPush(this.#slot, sample('latencyNs', latencyNs));
    }
    /** Bumps events-in-window and pushes-since-drain-start. */
    recordEventOnly() {
        if (!this.#retired)
            this.#core.abi.recordEventOnly(this.#slot);
    }
    recordLatencySample(latencyNs) {
        if (!this.#retired)
            this.#core.abi.recordLatencySample(this.#slot, sample('latencyNs', latencyNs));
    }
    /** One consumer batch that took `us` microseconds. */
    recordFlush(us) {
        if (!this.#retired)
            this.#core.abi.recordFlush(this.#slot, sample('us', us));
    }
    setDraining(draining) {
        if (typeof draining !== 'boolean')
            throw new TypeError(`draining must be a boolean, got ${typeof draining}`);
        if (!this.#retired)
            this.#core.abi.setDraining(this.#slot, draining ? 1 : 0);
    }
    isDraining() {
        return !this.#retired && this.#core.abi.isDraining(this.#slot) !== 0;
    }
    pushesSinceDrainStart() {
        return this.#retired ? 0 : this.#core.abi.pushesSinceDrainStart(this.#slot) >>> 0;
    }
    bufferLen() {
        return this.#retired ? 0 : this.#core.abi.bufferLen(this.#slot) >>> 0;
    }
    /** Read the window and start a new one. */
    collectAndReset() {
        const core = this.#core;
        if (this.#retired) {
            return { shardId: this.shardId, bufferLen: 0, capacity: 0, fillRatio: 0, avgPushLatencyNs: 0,
                avgFlushLatencyUs: 0, eventRate: 0, lastUpdated: this.#clock(), draining: false, weight: 0 };
        }
        core.abi.collectAndReset(this.#slot, core.result);
        const u32 = core.u32;
        const word = (offset) => u32[(core.result + offset) >>> 2];
        const bufferLen = word(COLLECT_BUFFER_LEN);
        const eventRate = word(COLLECT_EVENTS);
        const latencyCount = word(COLLECT_LATENCY_COUNT);
        const latencySum = word(COLLECT_LATENCY_SUM);
        const flushCount = word(COLLECT_FLUSH_COUNT);
        const flushSum = word(COLLECT_FLUSH_SUM);
        const capacity = this.capacity;
        const fillRatio = capacity === 0 ? 0 : bufferLen / capacity;
        const avgPushLatencyNs = latencyCount === 0 ? 0 : Math.floor(latencySum / latencyCount);
        const avgFlushLatencyUs = flushCount === 0 ? 0 : Math.floor(flushSum / flushCount);
        const draining = this.isDraining();
        const weight = draining
            ? Number.MAX_VALUE
            : fillRatio * 100 + avgPushLatencyNs / 10 + eventRate / 1e6;
        return {
            shardId: this.shardId, bufferLen, capacity, fillRatio, avgPushLatencyNs, avgFlushLatencyUs,
            eventRate, lastUpdated: this.#clock(), draining, weight,
        };
    }
    /** @internal The shard was removed: later recordings are ignored (its slot may be reused). */
    retire() {
        this.#retired = true;
    }
}
