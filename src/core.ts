// SharedCore: one WebAssembly memory laid out by assembly/layout.ts, one instance of the
// core per thread, typed-array views that follow memory growth, this thread's lane, and
// (on the owning thread) the slot pool that gives every live shard its metrics and ring.
import type { Abi } from './abi.js';
import { compileAsync, compileSync, instantiate, type MemoryKind } from './wasm.js';
import {
  CLAIM_SKIPPED,
  CLAIM_START,
  MAX_LANES,
  L_SCRATCH,
  PAYLOAD_ALIGN,
  R_RECORDS,
  RECORD_BYTES,
  REC_LEN,
  REC_OFF,
} from './layout.generated.js';
import { currentThreadId } from '#platform';

/** The bytes a payload of `length` takes in a ring's payload area (rounded up to PAYLOAD_ALIGN). */
export const payloadExtent = (length: number): number => Math.ceil(length / PAYLOAD_ALIGN) * PAYLOAD_ALIGN;

const PAGE = 65536;
const MAX_PAGES = 65536; // wasm32: 4 GiB

export interface CoreConfig {
  kind: MemoryKind;
  /** Entries per selection table: the most shards that can be Active at once. */
  tableCapacity: number;
  /** Slots the memory may ever hold (live shards of any state, including draining ones). */
  maxSlots: number;
  /** Slots to provision memory for up front. */
  initialSlots: number;
  /** Descriptors per ring (a power of two), or 0 for collectors only. */
  ringCapacity: number;
  /** Records a ring may hold at once (the capacity asked for, ≤ ringCapacity; default ringCapacity). */
  ringLimit?: number;
  /** Bytes of each ring's payload area (a multiple of 8), or 0 for collectors only. */
  ringBytes: number;
  maxPayload: number;
  lanes: number;
  laneBytes: number;
  backpressure: number;
  sampleRate: number;
  sampleFill: number;
  /** Fence moved table entries so a key's events keep their order (routing 'affinity'). */
  keyOrder?: boolean;
}

/** What another thread needs to attach: structured-cloneable. */
export interface CoreHandle {
  memory: WebAssembly.Memory;
  kind: MemoryKind;
}

/** An object whose `core` is a CoreHandle (a producer's or a collector's handle, as structured
 *  clone hands it to another thread). */
export function hasCoreHandle(handle: unknown): handle is { core: CoreHandle } {
  const core = (handle as { core?: unknown } | null)?.core as { memory?: unknown } | null | undefined;
  return (
    typeof handle === 'object' && handle !== null && typeof core === 'object' && core !== null && core.memory instanceof WebAssembly.Memory
  );
}

/** A byte address from a WebAssembly export: its u32 reaches JavaScript as a signed i32, so an
 *  address past 2 GiB (a memory that large: big rings or a large maxPayloadBytes) reads negative. */
function address(fromWasm: number): number {
  return fromWasm >>> 0;
}

export class SharedCore {
  readonly abi: Abi;
  readonly memory: WebAssembly.Memory;
  readonly kind: MemoryKind;
  /** This thread's lane: scratch for staging payloads and batch results. */
  readonly lane: number;
  readonly scratch: number;
  readonly scratchBytes: number;
  readonly result: number;
  /** The first ring index of the records the last claim() handed out. */
  claimStart = 0;
  /** The byte address of the slot the last claimInView() took records from. */
  claimBase = 0;
  readonly slotStride: number;
  /** The byte address of slot 0: slots follow it every slotStride bytes. */
  readonly #slotsBase: number;
  readonly ringCapacity: number;
  /** Records a ring holds at once (the capacity asked for; ringCapacity's descriptors index them). */
  readonly ringLimit: number;
  /** Bytes of each ring's payload area. */
  readonly ringBytes: number;
  /** Slots the memory was configured for (shards that may exist at once). */
  readonly slotCount: number;
  /** The largest payload a push may write, as configured (options.maxPayloadBytes). */
  readonly maxPayloadBytes: number;
  /** From a slot's base to its payload area. */
  readonly payloadOffset: number;
  u8: Uint8Array;
  u16: Uint16Array;
  u32: Uint32Array;
  i32: Int32Array;

  /** False when the lane was claimed for this thread by another (see attach). */
  readonly #ownsLane: boolean;
  #detached = false;

  // Slot pool, used only by the thread that owns the mapper.
  #maxSlots = 0;
  #nextFresh = 0;
  readonly #free: number[] = [];
  readonly #refs = new Map<number, number>();

  private constructor(abi: Abi, memory: WebAssembly.Memory, kind: MemoryKind, maxSlots: number, givenLane?: number) {
    this.abi = abi;
    this.memory = memory;
    this.kind = kind;
    this.#maxSlots = maxSlots;
    if (abi.attach() !== 0) throw new Error('shard-mapper: the shared memory was never configured');
    this.#ownsLane = givenLane === undefined;
    const lane = givenLane ?? abi.laneClaim();
    if (lane < 0) {
      throw new Error(
        `shard-mapper: every lane of the shared memory is taken (${abi.laneCountConfigured()} threads may attach at once, options.maxThreads, the manager's own thread and its consumer threads included; ` +
          'detach() the producers and collectors you no longer use; a worker thread that exits gives its lane back by itself)',
      );
    }
    // Say who holds it, so the owning thread can take it back if this thread exits
    // without detach(). A lane claimed for a thread by its owner (consumers) says nothing.
    if (this.#ownsLane) abi.laneSetOwner(lane, currentThreadId() + 1);
    this.lane = lane;
    this.scratch = address(abi.laneScratchAddress(lane));
    this.result = address(abi.laneResultAddress(lane));
    this.#slotsBase = address(abi.slotAddress(0));
    this.slotStride = address(abi.slotAddress(1)) - this.#slotsBase;
    this.ringCapacity = abi.ringCapacityRecords();
    this.ringLimit = abi.ringLimitRecords();
    this.ringBytes = abi.ringBytesEach();
    this.slotCount = abi.slotCountConfigured();
    this.maxPayloadBytes = abi.maxPayloadBytesConfigured();
    this.payloadOffset = abi.ringPayloadOffset();
    this.scratchBytes = address(abi.laneScratchAddress(1)) - address(abi.laneScratchAddress(0)) - L_SCRATCH;
    this.u8 = new Uint8Array(memory.buffer);
    this.u16 = new Uint16Array(memory.buffer);
    this.u32 = new Uint32Array(memory.buffer);
    this.i32 = new Int32Array(memory.buffer);
  }

  static #plan(config: CoreConfig, abi: Abi) {
    const stride = abi.layoutSlotStride(config.ringCapacity, config.ringBytes);
    const slotsOffset = abi.layoutSlotsOffset(config.tableCapacity, config.lanes, config.laneBytes);
    const fit = Math.floor((MAX_PAGES * PAGE - slotsOffset) / stride);
    const maxSlots = Math.max(0, Math.min(config.maxSlots, fit));
    if (maxSlots < 1)
      throw new RangeError(
        `shard-mapper: one shard needs ${stride} bytes of ring, more than a 4 GiB memory can hold; lower ringBufferCapacity or ringBufferBytes`,
      );
    const maximum = Math.min(MAX_PAGES, Math.ceil((slotsOffset + maxSlots * stride) / PAGE));
    const initial = Math.min(maximum, Math.ceil((slotsOffset + Math.min(maxSlots, Math.max(1, config.initialSlots)) * stride) / PAGE));
    return { maxSlots, maximum, initial };
  }

  static #build(module: WebAssembly.Module, config: CoreConfig): SharedCore {
    // A probe instance over a one-page memory answers the layout questions (pure functions),
    // so the sizes below come from assembly/layout.ts and nowhere else.
    const probeMemory = new WebAssembly.Memory({
      initial: 1,
      maximum: 1,
      shared: config.kind === 'shared',
    } as WebAssembly.MemoryDescriptor);
    const plan = SharedCore.#plan(config, instantiate(module, probeMemory));
    const memory = new WebAssembly.Memory({
      initial: plan.initial,
      maximum: plan.maximum,
      shared: config.kind === 'shared',
    } as WebAssembly.MemoryDescriptor);
    const abi = instantiate(module, memory);
    abi.configure(
      config.tableCapacity,
      plan.maxSlots,
      config.ringCapacity,
      config.ringBytes,
      config.maxPayload,
      Math.min(config.lanes, MAX_LANES),
      config.laneBytes,
      config.backpressure,
      config.sampleRate,
      config.sampleFill,
      config.keyOrder ? 1 : 0,
      config.ringLimit ?? config.ringCapacity,
    );
    return new SharedCore(abi, memory, config.kind, plan.maxSlots);
  }

  static createSync(config: CoreConfig): SharedCore {
    return SharedCore.#build(compileSync(config.kind), config);
  }

  static async create(config: CoreConfig): Promise<SharedCore> {
    return SharedCore.#build(await compileAsync(config.kind), config);
  }

  /**
   * Attach from another thread (or again from this one) to an existing memory. With `lane`,
   * use that lane, claimed for this thread by its owner (who also releases it, even if the
   * thread dies before it could say which lane it took).
   */
  static async attach(handle: CoreHandle, lane?: number): Promise<SharedCore> {
    const module = await compileAsync(handle.kind);
    return new SharedCore(instantiate(module, handle.memory), handle.memory, handle.kind, 0, lane);
  }

  static attachSync(handle: CoreHandle): SharedCore {
    return new SharedCore(instantiate(compileSync(handle.kind), handle.memory), handle.memory, handle.kind, 0);
  }

  handle(): CoreHandle {
    return { memory: this.memory, kind: this.kind };
  }

  /**
   * Take up to `max` published records of a slot's ring for this thread (its one consumer):
   * returns how many, from ring index `claimStart`; read them in place, then acknowledge with
   * `abi.ringAck`. Padding a dead producer left (see StallWatchdog) is acknowledged unread on
   * the way, so callers only ever see records.
   */
  claim(slot: number, max: number): number {
    for (;;) {
      const n = this.abi.ringClaim(slot, max, this.result);
      if (n === 0) return 0;
      this.claimStart = this.u32[(this.result + CLAIM_START) >>> 2]!;
      if (this.u32[(this.result + CLAIM_SKIPPED) >>> 2] === 0) return n;
      this.abi.ringAck(slot, this.claimStart, n, 0);
    }
  }

  /**
   * claim() for a reader of the records: also makes this thread's views reach the slot's ring
   * (after growth it may lie past them). Returns how many, from ring index `claimStart`, in the
   * slot whose byte address is `claimBase`. The manager's poll variants and the consumer
   * threads all take records through here.
   */
  claimInView(slot: number, max: number): number {
    const base = this.slotBase(slot); // in JavaScript: this runs on every poll, idle ones too
    const end = this.recordsEnd(base);
    this.ensureViews(end);
    // This thread may not have seen the memory grow yet (its buffer is refreshed when it
    // next handles an interrupt): claim nothing now rather than read past the views.
    if (end > this.u8.length) return 0;
    const n = this.claim(slot, max);
    if (n === 0) return 0;
    this.claimBase = base;
    return n;
  }

  /** Give the lane back; the core must not be used afterwards. */
  detach(): void {
    // Once only: a second release could free the lane after another thread claimed it.
    if (!this.#ownsLane || this.#detached) return;
    this.#detached = true;
    this.abi.laneRelease(this.lane);
  }

  /** Give back every lane the exited worker thread `threadId` had claimed for itself. */
  releaseLanesOf(threadId: number): number {
    const abi = this.abi;
    let released = 0;
    for (let lane = 0; lane < abi.laneCountConfigured(); lane++) {
      if (abi.laneIsClaimed(lane) && abi.laneOwner(lane) === threadId + 1) {
        abi.laneRelease(lane);
        released++;
      }
    }
    return released;
  }

  /** Byte address of ring record `index`'s descriptor (REC_* words) in the slot at `slotBase`. */
  recordAt(slotBase: number, index: number): number {
    return slotBase + R_RECORDS + (index & (this.ringCapacity - 1)) * RECORD_BYTES;
  }

  /** Byte address of the payload of the record whose descriptor is at `rec`, in the slot at `slotBase`. */
  payloadAt(slotBase: number, rec: number): number {
    return slotBase + this.payloadOffset + this.u32[(rec + REC_OFF) >>> 2]!;
  }

  /** Payload length of the record whose descriptor is at `rec`. */
  lengthAt(rec: number): number {
    return this.u32[(rec + REC_LEN) >>> 2]!;
  }

  /** The byte address of `slot` (the WebAssembly side's slotAddr, computed here). */
  slotBase(slot: number): number {
    return this.#slotsBase + slot * this.slotStride;
  }

  /** The end of the slot's ring (descriptors and payloads): views must reach this far before records are read. */
  recordsEnd(slotBase: number): number {
    return slotBase + this.payloadOffset + this.ringBytes;
  }

  /**
   * Growth protocol: memory only grows, and only on the owning thread. Every thread calls
   * this before touching an address beyond its views; shared views stay valid (just short),
   * a non-shared buffer is replaced, so views are re-made from `memory.buffer`.
   *
   * Cheap guard for hot paths: re-make the views only when they are detached (a non-shared
   * memory grew) or shorter than `end`. Reading `memory.buffer` costs tens of nanoseconds on
   * a shared memory, so it is not done per call.
   */
  ensureViews(end = 0): void {
    if (this.u8.length === 0 || end > this.u8.length) this.refreshViews();
  }

  refreshViews(): void {
    const buffer = this.memory.buffer;
    if (this.u8.buffer !== buffer || this.u8.length !== buffer.byteLength) {
      this.u8 = new Uint8Array(buffer);
      this.u16 = new Uint16Array(buffer);
      this.u32 = new Uint32Array(buffer);
      this.i32 = new Int32Array(buffer);
    }
  }

  /** Select the shard of `n` hashes into `out` through the live table: one WebAssembly call
   *  per chunk of this thread's scratch (4 bytes in and 2 out per hash). */
  selectBatch(hashes: Uint32Array, n: number, out: Uint16Array): void {
    const chunk = Math.floor(this.scratchBytes / 6) & ~7;
    const src = this.scratch;
    const dst = src + chunk * 4;
    for (let i = 0; i < n; i += chunk) {
      const m = Math.min(chunk, n - i);
      this.u32.set(hashes.subarray(i, i + m), src >>> 2);
      this.abi.selectBatch(src, dst, m);
      out.set(this.u16.subarray(dst >>> 1, (dst >>> 1) + m), i);
    }
  }

  get maxSlots(): number {
    return this.#maxSlots;
  }

  /** Whether `count` more slots can be allocated right now. */
  canAllocate(count: number): boolean {
    return this.#free.length + (this.#maxSlots - this.#nextFresh) >= count;
  }

  /** A slot for a new shard, initialised, with one reference; -1 when the pool is exhausted. */
  allocSlot(capacity: number): number {
    let slot = this.#free.shift();
    if (slot === undefined) {
      if (this.#nextFresh >= this.#maxSlots) return -1;
      slot = this.#nextFresh++;
      const end = this.slotBase(slot) + this.slotStride;
      const have = this.memory.buffer.byteLength;
      if (end > have) {
        // Grow by a quarter at least, so a burst of scale-ups does not grow page by page;
        // fall back to the exact need when the maximum is close.
        try {
          this.memory.grow(Math.ceil((Math.max(end, have * 1.25) - have) / PAGE));
        } catch {
          this.memory.grow(Math.ceil((end - have) / PAGE));
        }
        this.refreshViews();
      }
    }
    this.abi.slotInit(slot, capacity >>> 0);
    this.#refs.set(slot, 1);
    return slot;
  }

  /** Hold a slot for one more user (e.g. a consumer that still reads it). */
  retainSlot(slot: number): void {
    const n = this.#refs.get(slot);
    if (n !== undefined) this.#refs.set(slot, n + 1);
  }

  /** Drop one reference; the last one returns the slot to the pool for reuse. */
  releaseSlot(slot: number): void {
    const n = this.#refs.get(slot);
    if (n === undefined) return;
    if (n > 1) this.#refs.set(slot, n - 1);
    else {
      this.#refs.delete(slot);
      this.#free.push(slot);
    }
  }
}
