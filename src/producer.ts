// Producer: stages an event in this thread's lane and makes the one WebAssembly call that
// routes it, appends it to the shard's ring and feeds the collector. ShardManager uses one
// on its own thread; worker threads get theirs with `ShardProducer.attach(handle)`.
import { BackpressureError, ManagerClosedError, ProducerDetachedError, describe } from './errors.js';
import { checkPayload, keyHash, largePayloadError, payloadTypeError } from './validate.js';
import { SharedCore, hasCoreHandle, type CoreHandle } from './core.js';
import {
  PUSH_UNROUTED,
  PUSH_FULL,
  PUSH_SAMPLED,
  PUSH_REFUSED,
  PUSH_STOPPED,
  PUSH_MOVING,
  PUSH_MOVING_DROPPED,
  PUSH_NOT_VISIBLE,
  L_FAILED_SHARD,
  L_SCRATCH,
  BATCH_ACCEPTED,
  BATCH_STOP,
  STOP_NONE,
  STOP_CLOSED,
  STOP_MOVING,
  STOP_NOT_VISIBLE,
  LAYOUT_BASE,
  H_STOPPED,
} from './layout.generated.js';

/** A batch call's stop word (BATCH_STOP) as the single-push code #fail reports. */
const PUSH_CODE_OF_STOP: Record<number, number> = {
  [STOP_CLOSED]: PUSH_STOPPED,
  [STOP_MOVING]: PUSH_MOVING,
  [STOP_NOT_VISIBLE]: PUSH_NOT_VISIBLE,
};

export type EventKey = number | string | Uint8Array;
export type EventPayload = Uint8Array | string;
/** One event of `pushBatch(events)`: `[key, payload]`, or an object with `key` or `hash` (one
 *  of them: both is refused) and `payload`. */
export type BatchEvent = readonly [EventKey, EventPayload] | { key?: EventKey; hash?: EventKey; payload: EventPayload };

/** What a worker thread needs to produce into a manager's rings. */
export interface ProducerHandle {
  core: CoreHandle;
  maxPayloadBytes: number;
}

const encoder = new TextEncoder();

/** Chrome's TextEncoder.encodeInto refuses views of shared memory (Node's accepts them):
 *  there, strings are encoded into a private buffer and copied in. */
const ENCODE_INTO_SHARED = (() => {
  if (typeof SharedArrayBuffer === 'undefined') return true; // no shared views to refuse
  try {
    encoder.encodeInto('a', new Uint8Array(new SharedArrayBuffer(4)));
    return true;
  } catch {
    return false;
  }
})();

/** Words written through a Uint32Array land in WebAssembly's (little-endian) byte order. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
/** Payloads up to this size are staged by copyShort. */
const SHORT_PAYLOAD = 32;

/**
 * Stage a short payload at the 4-aligned address `at` of the shared memory, four bytes per
 * store (TypedArray.prototype.set costs a builtin call, ~10 ns, most of the copy at this
 * size), sixteen bytes per loop turn while they last (the unrolled turn took push of a
 * 16-byte event from 44 to 39 ns); the last bytes one by one, so nothing past `len` is written.
 */
function copyShort(core: SharedCore, at: number, payload: Uint8Array, len: number): void {
  const words = core.u32;
  let w = at >>> 2;
  let k = 0;
  for (; k + 16 <= len; k += 16) {
    words[w] = payload[k]! | (payload[k + 1]! << 8) | (payload[k + 2]! << 16) | (payload[k + 3]! << 24);
    words[w + 1] = payload[k + 4]! | (payload[k + 5]! << 8) | (payload[k + 6]! << 16) | (payload[k + 7]! << 24);
    words[w + 2] = payload[k + 8]! | (payload[k + 9]! << 8) | (payload[k + 10]! << 16) | (payload[k + 11]! << 24);
    words[w + 3] = payload[k + 12]! | (payload[k + 13]! << 8) | (payload[k + 14]! << 16) | (payload[k + 15]! << 24);
    w += 4;
  }
  for (; k + 4 <= len; k += 4) words[w++] = payload[k]! | (payload[k + 1]! << 8) | (payload[k + 2]! << 16) | (payload[k + 3]! << 24);
  for (; k < len; k++) core.u8[at + k] = payload[k]!;
}

export class ShardProducer {
  readonly maxPayloadBytes: number;
  readonly #core: SharedCore;
  #scratch: Uint8Array;
  /** Reused by pushBatch for the hashes of non-numeric keys. */
  #hashes = new Uint32Array(256);
  #bounce: Uint8Array | undefined;
  readonly #owned: boolean;
  #detached = false;

  /** @hidden Kept in the .d.ts: stripped, the class would seem constructible without arguments. */
  constructor(core: SharedCore, maxPayloadBytes: number, owned: boolean) {
    this.#core = core;
    this.maxPayloadBytes = maxPayloadBytes;
    this.#owned = owned;
    this.#scratch = core.u8.subarray(core.scratch, core.scratch + core.scratchBytes);
  }

  /** Attach from a worker thread; call `detach()` when done to free the lane. */
  static async attach(handle: ProducerHandle): Promise<ShardProducer> {
    if (!hasCoreHandle(handle) || typeof handle.maxPayloadBytes !== 'number') {
      throw new TypeError(`ShardProducer.attach: handle must be what manager.producerHandle() returns, got ${describe(handle)}`);
    }
    const core = await SharedCore.attach(handle.core);
    // Pushes are checked against the handle's limit before the WebAssembly side checks the
    // memory's: a larger one would let an oversized payload through to a false "ring is full"
    // (a smaller one is a tighter limit for this thread, and fine).
    const limit = handle.maxPayloadBytes;
    if (!Number.isInteger(limit) || limit < 1 || limit > core.maxPayloadBytes) {
      core.detach();
      throw new TypeError(
        `ShardProducer.attach: handle.maxPayloadBytes must be an integer in [1, ${core.maxPayloadBytes}] (its shared memory's maxPayloadBytes), got ${describe(limit)}; pass what manager.producerHandle() returns`,
      );
    }
    return new ShardProducer(core, handle.maxPayloadBytes, true);
  }

  /** Give the lane back (its number goes to the next thread that attaches). Every push
   *  afterwards throws ProducerDetachedError; a second detach() does nothing. A no-op for the
   *  manager's own producer. */
  detach(): void {
    if (!this.#owned || this.#detached) return;
    this.#detached = true;
    // An empty scratch sends every push to #view(), which refuses: the lane may already be
    // another thread's, and staging into it would mix two threads' events.
    this.#scratch = new Uint8Array(0);
    this.#core.detach();
  }

  /** The lane's scratch, re-made if a non-shared memory grew (its buffer is replaced). */
  #view(method: string): Uint8Array {
    const core = this.#core;
    if (this.#scratch.length === 0) {
      if (this.#detached) throw new ProducerDetachedError(method);
      // the buffer was detached: only a non-shared memory's growth does that
      core.refreshViews();
      this.#scratch = core.u8.subarray(core.scratch, core.scratch + core.scratchBytes);
    }
    return this.#scratch;
  }

  /** Copy a payload to `at` in the scratch; returns its byte length. Throws, writing nothing
   *  to any ring, if the payload is too large or not bytes/string (an empty one is an event too). */
  #stage(payload: EventPayload, at: number, room: number, index = -1): number {
    const scratch = this.#view(index < 0 ? 'push' : 'pushBatch');
    const max = this.maxPayloadBytes;
    if (payload instanceof Uint8Array) {
      const len = payload.length;
      if (len > max) throw largePayloadError(index, len, max, false);
      if (len > room) return -1;
      if (len <= SHORT_PAYLOAD && (at & 3) === 0 && LITTLE_ENDIAN) {
        copyShort(this.#core, this.#core.scratch + at, payload, len);
      } else {
        scratch.set(payload, at);
      }
      return len;
    }
    if (typeof payload === 'string') {
      const n = payload.length;
      if (n <= room && n <= max) {
        // Short ASCII strings (the common case) are copied char by char: cheaper than
        // encodeInto plus a subarray per push. The first non-ASCII char hands over.
        let i = 0;
        for (; i < n; i++) {
          const c = payload.charCodeAt(i);
          if (c >= 0x80) break;
          scratch[at + i] = c;
        }
        if (i === n) return n;
      }
      const limit = Math.min(max, room);
      const r = this.#encode(payload, scratch.subarray(at, at + limit));
      if (r.read < payload.length) {
        const bytes = encoder.encode(payload).length;
        if (bytes > max) throw largePayloadError(index, bytes, max, true);
        return -1; // fits the limit, not the room left in this batch
      }
      return r.written;
    }
    throw payloadTypeError(index, payload);
  }

  #encode(text: string, target: Uint8Array): { read: number; written: number } {
    if (ENCODE_INTO_SHARED || !(target.buffer instanceof SharedArrayBuffer)) return encoder.encodeInto(text, target);
    if (this.#bounce === undefined || this.#bounce.length < target.length) this.#bounce = new Uint8Array(target.length);
    const r = encoder.encodeInto(text, this.#bounce.subarray(0, target.length));
    target.set(this.#bounce.subarray(0, r.written));
    return r;
  }

  /**
   * Route one event and append it. `true`: accepted. `false`: dropped (dropNewest, sample,
   * or no Active shard: counted as unrouted). Throws BackpressureError under failProducer.
   */
  push(key: EventKey, payload: EventPayload): boolean {
    const hash = typeof key === 'number' ? key >>> 0 : keyHash(key, 'push');
    const core = this.#core;
    let len: number;
    if (
      payload instanceof Uint8Array &&
      (len = payload.length) <= SHORT_PAYLOAD &&
      len <= this.maxPayloadBytes &&
      LITTLE_ENDIAN &&
      this.#scratch.length !== 0
    ) {
      // The common small binary event, staged right here (the general path is #stage).
      copyShort(core, core.scratch, payload, len);
    } else {
      len = this.#stage(payload, 0, core.scratchBytes);
    }
    const r = core.abi.push(core.lane, hash, len);
    if (r >= 0) return true;
    if (r === PUSH_UNROUTED || r === PUSH_FULL || r === PUSH_SAMPLED || r === PUSH_MOVING_DROPPED) return false;
    return this.#fail(r, 0);
  }

  /** Read a batch call's result words: how many it accepted; throws if it stopped early. */
  #batchAccepted(acceptedBefore: number, method: string): number {
    const core = this.#core;
    const accepted = core.u32[(core.result + BATCH_ACCEPTED) >>> 2]!;
    const stop = core.u32[(core.result + BATCH_STOP) >>> 2]!;
    if (stop !== STOP_NONE) this.#fail(PUSH_CODE_OF_STOP[stop] ?? PUSH_REFUSED, acceptedBefore + accepted, method);
    return accepted;
  }

  /** An empty batch call after close() is refused like any other (the WebAssembly side,
   *  which refuses the others, is not called for it). */
  #refuseIfClosed(method: string): void {
    if (Atomics.load(this.#core.i32, (LAYOUT_BASE + H_STOPPED) >>> 2) !== 0) throw new ManagerClosedError(method);
  }

  #fail(code: number, accepted: number, method = 'push'): never {
    if (code === PUSH_STOPPED) throw new ManagerClosedError(method);
    // the shard the refused event was bound for, left by the WebAssembly side
    const shard = this.#core.u32[(this.#core.scratch - L_SCRATCH + L_FAILED_SHARD) >>> 2]!;
    if (code === PUSH_MOVING) {
      throw new BackpressureError(
        `push refused: the key just moved to shard ${shard} and waits until the shard it left has delivered its earlier events (routing affinity keeps each key's order; backpressure failProducer: retry)`,
        shard,
        accepted,
        'moving',
      );
    }
    if (code === PUSH_REFUSED) {
      throw new BackpressureError(`push refused: shard ${shard}'s ring is full (backpressure failProducer)`, shard, accepted);
    }
    if (code === PUSH_NOT_VISIBLE) {
      // The WebAssembly side waited for this thread to see the memory grow (see "GROWTH SEEN"
      // in assembly/ring.ts); an engine that never tells it is not one this was built for.
      throw new Error(
        `shard-mapper: ${method} could not write to shard ${shard}: this thread's WebAssembly instance has not seen the shared memory grow to hold that shard's ring, so that event was not written${accepted > 0 ? ` (${accepted} events of this call were accepted)` : ''}; push it again.`,
      );
    }
    throw new Error(`shard-mapper: unexpected push result ${code}`);
  }

  /**
   * Push many events with one WebAssembly call per scratch-full. Returns how many were
   * accepted. Every payload is checked before anything is written; under failProducer a
   * full ring throws BackpressureError whose `accepted` counts the events before it.
   */
  pushBatch(keys: ArrayLike<EventKey>, payloads: ArrayLike<EventPayload>): number;
  /** The same with events as `[key, payload]` pairs or `{ key, payload }` objects. */
  pushBatch(events: ArrayLike<BatchEvent>): number;
  pushBatch(keysOrEvents: ArrayLike<EventKey> | ArrayLike<BatchEvent>, maybePayloads?: ArrayLike<EventPayload>): number {
    if (this.#detached) throw new ProducerDetachedError('pushBatch'); // an empty batch too
    const [keys, payloads] = batchArguments(keysOrEvents, maybePayloads);
    const n = keys.length;
    if (n === 0) this.#refuseIfClosed('pushBatch'); // (a call with events learns it from the WebAssembly side)
    // Nothing may be written if any event is bad. A batch sure to fit one staging chunk is
    // checked by the staging itself before the one WebAssembly call; a longer one is checked
    // here first, as its first chunks are pushed before its last ones are staged.
    let bound = 0; // staged bytes at most (a string's UTF-8 is at most 3 bytes a unit)
    for (let i = 0; i < n; i++) {
      const p = payloads[i] as { length?: number } | null | undefined;
      bound += 11 + (typeof p === 'string' ? 3 * (p as string).length : (p?.length ?? Infinity));
    }
    const oneChunk = bound <= this.#core.scratchBytes; // false for anything odd: checked below
    for (let i = 0; i < n && !oneChunk; i++) checkPayload(payloads[i], this.maxPayloadBytes, i);
    let hashes: Uint32Array;
    if (keys instanceof Uint32Array)
      hashes = keys; // already hashes: no pass over them
    else {
      if (this.#hashes.length < n) this.#hashes = new Uint32Array(Math.max(n, 2 * this.#hashes.length));
      hashes = this.#hashes;
      for (let i = 0; i < n; i++) hashes[i] = keyHash(keys[i]!, 'pushBatch', i);
    }

    const core = this.#core;
    const room = core.scratchBytes;
    let accepted = 0;
    let i = 0;
    while (i < n) {
      this.#view('pushBatch'); // re-makes the core's views too if a non-shared memory grew
      const words = core.u32;
      const base = core.scratch >>> 2; // the scratch and every staged header are 4-byte aligned
      let at = 0;
      let count = 0;
      for (; i < n; i++, count++) {
        if (at + 8 > room) break;
        const len = this.#stage(payloads[i]!, at + 8, room - at - 8, i);
        if (len < 0) break;
        words[base + (at >>> 2)] = hashes[i]!;
        words[base + (at >>> 2) + 1] = len;
        at += 8 + ((len + 3) & ~3);
      }
      if (count === 0) throw new RangeError('pushBatch: an event does not fit the lane scratch');
      const consumed = core.abi.pushBatch(core.lane, count);
      accepted += this.#batchAccepted(accepted, 'pushBatch');
      if (consumed !== count) throw new Error('shard-mapper: pushBatch consumed fewer events than staged');
    }
    return accepted;
  }

  /**
   * Push fixed-size binary records: `records` holds `hashes.length` records of `recordSize`
   * bytes back to back. The fastest path: two bulk copies into this thread's lane per
   * scratch-full and one WebAssembly call, with no per-event JavaScript. Returns how many were
   * accepted; under failProducer a full ring throws BackpressureError (with `accepted`, the
   * records before it stay pushed).
   */
  pushFixed(hashes: Uint32Array, records: Uint8Array, recordSize: number): number {
    if (this.#detached) throw new ProducerDetachedError('pushFixed'); // an empty call too
    if (!(hashes instanceof Uint32Array))
      throw new TypeError(`pushFixed: hashes must be a Uint32Array, got ${hashes === null ? 'null' : typeof hashes}`);
    if (!(records instanceof Uint8Array))
      throw new TypeError(`pushFixed: records must be a Uint8Array, got ${records === null ? 'null' : typeof records}`);
    if (typeof recordSize !== 'number' || !Number.isInteger(recordSize) || recordSize < 1 || recordSize > this.maxPayloadBytes) {
      throw new RangeError(
        `pushFixed: recordSize must be an integer in [1, ${this.maxPayloadBytes}] (maxPayloadBytes), got ${String(recordSize)}`,
      );
    }
    const n = hashes.length;
    if (records.length !== n * recordSize) {
      throw new RangeError(
        `pushFixed: records has ${records.length} bytes, ${n} hashes × recordSize ${recordSize} needs ${n * recordSize}`,
      );
    }
    if (n === 0) this.#refuseIfClosed('pushFixed');
    const core = this.#core;
    // per event: a 4-byte hash and the record; the records start 8-aligned after the hashes
    const chunk = Math.max(1, Math.floor((core.scratchBytes - 8) / (4 + recordSize)));
    let accepted = 0;
    for (let i = 0; i < n; i += chunk) {
      const c = Math.min(chunk, n - i);
      const recordsOffset = (c * 4 + 7) & ~7;
      this.#view('pushFixed'); // re-makes the core's views too if a non-shared memory grew
      core.u32.set(hashes.subarray(i, i + c), core.scratch >>> 2);
      core.u8.set(records.subarray(i * recordSize, (i + c) * recordSize), core.scratch + recordsOffset);
      const consumed = core.abi.pushFixedBatch(core.lane, c, recordSize, recordsOffset);
      accepted += this.#batchAccepted(accepted, 'pushFixed');
      if (consumed !== c) throw new Error('shard-mapper: pushFixed consumed fewer events than staged');
    }
    return accepted;
  }
}

/** pushBatch's arguments, either form, as (keys, payloads) of equal length; throws on bad shapes. */
export function batchArguments(
  keysOrEvents: ArrayLike<EventKey> | ArrayLike<BatchEvent>,
  maybePayloads?: ArrayLike<EventPayload>,
): [ArrayLike<EventKey>, ArrayLike<EventPayload>] {
  let keys = keysOrEvents as ArrayLike<EventKey>;
  let payloads = maybePayloads as ArrayLike<EventPayload>;
  if (maybePayloads === undefined) [keys, payloads] = splitEvents(keysOrEvents as ArrayLike<BatchEvent>);
  if (keys === null || typeof keys !== 'object' || typeof keys.length !== 'number')
    throw new TypeError('pushBatch: keys must be an array or a Uint32Array');
  if (payloads === null || typeof payloads !== 'object' || typeof payloads.length !== 'number')
    throw new TypeError('pushBatch: payloads must be an array');
  if (payloads.length !== keys.length) throw new RangeError(`pushBatch: ${keys.length} keys but ${payloads.length} payloads`);
  return [keys, payloads];
}

/** pushBatch's one-array form: `[key, payload]` pairs or `{ key, payload }` objects, split in two. */
function splitEvents(events: ArrayLike<BatchEvent>): [EventKey[], EventPayload[]] {
  if (events === null || typeof events !== 'object' || typeof events.length !== 'number') {
    throw new TypeError('pushBatch: expected (keys, payloads) or an array of [key, payload] / { key, payload } events');
  }
  const keys: EventKey[] = new Array(events.length);
  const payloads: EventPayload[] = new Array(events.length);
  for (let i = 0; i < events.length; i++) {
    const e = events[i] as unknown;
    if (Array.isArray(e) && e.length === 2) {
      keys[i] = e[0];
      payloads[i] = e[1];
    } else if (e !== null && typeof e === 'object' && 'payload' in e) {
      const o = e as { key?: EventKey; hash?: EventKey; payload: EventPayload };
      if (o.key !== undefined && o.hash !== undefined) throw new TypeError(`pushBatch: events[${i}] has both key and hash; give one`);
      keys[i] = (o.key ?? o.hash)!;
      payloads[i] = o.payload;
    } else throw new TypeError(`pushBatch: events[${i}] must be [key, payload] or { key, payload }`);
  }
  return [keys, payloads];
}
