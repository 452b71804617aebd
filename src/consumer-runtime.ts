// The consumer thread's loop: attaches to the manager's memory and feeds a consumer function
// batches read in place from the rings of the shards it owns. A batch is acknowledged (its
// records freed and counted as delivered) only after the function returns or its promise
// resolves; a throw rewinds the ring so the same records come again.
//
// No top-level await here or in the entries that start it: bundlers emit workers as classic
// scripts by default (Vite's worker.format is 'iife'), where top-level await does not parse.
import { SharedCore, type CoreHandle } from './core.js';
import type { FromConsumer, ToConsumer } from './consumer-messages.js';
import { workerEndpoint, yieldToEventLoop } from '#platform';
import { REC_LEN, REC_OFF } from './layout.generated.js';
import { RecordBatch } from './record-batch.js';
import { unrefTimer } from './sleep.js';

/** What the manager sends a consumer worker when it starts. @internal */
export interface ConsumerInit {
  core: CoreHandle;
  /** URL of the consumer module ('' when the worker brings its own function: serveConsumer). */
  module: string;
  batchSize: number;
  /** Call the function with one RecordBatch per batch instead of an array of views. */
  batch?: boolean;
  /** Poll this long (µs) before parking, and poll instead of sleeping while gathering (0: sleep). */
  spinUs?: number;
  /** The lane the manager claimed for this thread (and releases when the thread exits). */
  lane: number;
}

/**
 * A consumer: called with a batch of records of one shard, in push order. Returning (or the
 * promise resolving) acknowledges the batch; throwing retries it.
 *
 * The records are views into the shared memory, valid only during the call: copy what you
 * keep (`record.slice()`). Browsers' `TextDecoder.decode` refuses views of shared memory,
 * so decode a copy: `decoder.decode(record.slice())`.
 */
export type ConsumerFunction = (records: Uint8Array[], shardId: number) => void | Promise<void>;

/**
 * A batch consumer (`options.consumer.batch: true`, or `serveConsumer(fn, { batch: true })`):
 * called with one RecordBatch per batch of one shard, in push order, with no view made per
 * record. The same rules: returning acknowledges, throwing retries, the memory is valid only
 * during the call.
 */
export type BatchConsumerFunction = (batch: RecordBatch, shardId: number) => void | Promise<void>;

/** How the worker's function wants its records. @internal */
export interface ConsumerShape {
  /** true: a BatchConsumerFunction; false: a ConsumerFunction; undefined: as the manager says. */
  batch?: boolean;
}

interface Owned {
  shardId: number;
  slot: number;
}

const PARK_TIMEOUT_MS = 50;
/**
 * Under a steady flow a consumer that claims as soon as records appear chases the producer
 * record by record: each claim reads descriptor and payload lines the producer is still
 * writing, both threads pay a cache-line transfer every few records, and the consumer
 * empties the ring and parks thousands of times a second, each park costing the producer a
 * wake-up call (measured: push went from 48 ns per event alone to 126 ns with a chasing
 * consumer). So after a pass that found a partial batch of at least GATHER_MIN_RECORDS, and
 * after the first empty pass that follows one, the thread sleeps this long (a blocking wait: nothing to run meanwhile)
 * and claims a fuller batch after. A record is never held back once claimed; one arriving
 * during the sleep waits at most this long.
 */
const GATHER_MS = 0.05;
/** A pass with fewer records than this is a slow flow: no gathering (a parked consumer is
 *  woken by the next push, so single events are not held back by the sleep). */
const GATHER_MIN_RECORDS = 16;
/** Rings smaller than this many batches never gather: the sleep (milliseconds, not 50 µs, on
 *  a loaded machine) would fill them and stall the producers (seen: 256-record rings with
 *  32-record batches slowed test/faults.test.ts's consumer-kill test past its timeout). */
const GATHER_MIN_RING_BATCHES = 16;
/** How often the thread bumps its heartbeat (ConsumerPool replaces a thread whose heartbeat stops). */
const HEARTBEAT_MS = 100;
const RETRY_BACKOFF_MS = 10;
/** While busy with full batches, the event loop gets a turn this often (ms): assign/release/
 *  stop messages and the heartbeat timer run there (after every gathering sleep too). */
const YIELD_EVERY_MS = 1;
/** ... and at least every this many busy passes (the consumer-kill fault test needs the
 *  turns that often to finish in time on a loaded machine). */
const YIELD_EVERY_BATCHES = 32;
const PARK_SPINS = 64;

/** Run the consumer loop in this worker until the manager says stop. @internal */
export async function runConsumer(
  resolve: (init: ConsumerInit) => ConsumerFunction | BatchConsumerFunction | Promise<ConsumerFunction | BatchConsumerFunction>,
  shape: ConsumerShape = {},
): Promise<void> {
  const endpoint = await workerEndpoint();
  const post = (message: FromConsumer) => endpoint.post(message);
  const init = endpoint.data as ConsumerInit;
  const owned = new Map<number, Owned>();
  const releases: number[] = [];
  let order: Owned[] = [];
  let running = true;
  let wake = (): void => {};

  // Listen before anything is awaited, so an early 'assign' is never missed.
  endpoint.onMessage((msg: ToConsumer) => {
    if (msg.type === 'assign') {
      owned.set(msg.shardId, { shardId: msg.shardId, slot: msg.slot });
      order = [...owned.values()];
      wake();
    } else if (msg.type === 'release') {
      releases.push(msg.shardId); // applied between batches, never under one
      wake();
    } else if (msg.type === 'stop') {
      running = false;
      wake();
    }
  });

  let core: SharedCore;
  let consume: ConsumerFunction;
  let consumeBatch: BatchConsumerFunction | undefined;
  try {
    core = await SharedCore.attach(init.core, init.lane);
    const fn = await resolve(init);
    if (typeof fn !== 'function') throw new TypeError('the consumer must be a function (records, shardId) => void | Promise<void>');
    if (shape.batch ?? init.batch ?? false) consumeBatch = fn as BatchConsumerFunction;
    consume = fn as ConsumerFunction;
  } catch (error) {
    post({ type: 'fatal', message: (error as Error)?.message ?? String(error), stack: (error as Error)?.stack });
    throw error;
  }
  const bell = core.abi.laneDoorbellAddress(core.lane) >>> 2;
  const parks = core.abi.laneParksAddress(core.lane) >>> 2;
  const spinMs = (init.spinUs ?? 0) / 1000;
  // A timer, not the loop: it runs while a consumer function awaits, and stops when the
  // thread dies or its event loop is blocked — the two things the pool must notice. In
  // browsers, where a Web Worker that dies tells the page nothing, it is the only signal.
  const heartbeat = core.abi.laneHeartbeatAddress(core.lane) >>> 2;
  const beat = unrefTimer(setInterval(() => Atomics.add(core.i32, heartbeat, 1), HEARTBEAT_MS));
  wake = () => {
    Atomics.store(core.i32, bell, 0);
    Atomics.notify(core.i32, bell);
  };
  post({ type: 'ready', lane: core.lane, doorbell: bell << 2 });

  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  type WaitAsync = (a: Int32Array, i: number, v: number, t: number) => { async: boolean; value: Promise<string> | string };
  const waitAsync = (Atomics as unknown as { waitAsync?: WaitAsync }).waitAsync;

  /** Does an owned ring hold at least `records` records (published, or reserved and not yet
   *  published)? */
  function ringsHold(records: number): boolean {
    for (const s of order) if (core.abi.ringLen(s.slot) >= records) return true;
    return false;
  }
  const ringsHoldRecords = () => ringsHold(1);

  /** options.consumer.spinUs: poll until some ring holds `records` records (true) or `ms` have
   *  passed (false), giving the event loop its turns meanwhile. */
  async function spinFor(ms: number, records: number): Promise<boolean> {
    const until = performance.now() + ms;
    while (true) {
      if (ringsHold(records)) return true;
      if (releases.length > 0 || !running) return false;
      const now = performance.now();
      if (now >= until) return false;
      if (now - yielded >= YIELD_EVERY_MS) {
        await yieldToEventLoop();
        yielded = performance.now();
      }
    }
  }

  async function park(): Promise<void> {
    // Look again a few times first: records that arrive within a microsecond or two are
    // taken without sleeping, and the producer is spared the wake-up (a futex call) it
    // makes for a sleeping consumer. With spinUs, look for that long.
    for (let spin = 0; spin < PARK_SPINS; spin++) if (ringsHoldRecords()) return;
    if (spinMs > 0 && (await spinFor(spinMs, 1))) return;
    Atomics.store(core.i32, bell, 1); // producers that see 1 will notify
    // Records that came before the bell was up, or a message to handle: no sleep.
    if (ringsHoldRecords() || releases.length > 0 || !running) {
      Atomics.store(core.i32, bell, 0);
      return;
    }
    Atomics.add(core.i32, parks, 1);
    if (waitAsync) {
      const w = waitAsync(core.i32, bell, 1, PARK_TIMEOUT_MS);
      if (w.async) await w.value;
    } else {
      await sleep(1); // engines without Atomics.waitAsync: poll
    }
    Atomics.store(core.i32, bell, 0);
  }

  function applyReleases(): void {
    if (releases.length === 0) return;
    for (const id of releases.splice(0)) {
      owned.delete(id);
      post({ type: 'released', shardId: id });
    }
    order = [...owned.values()];
  }

  let batch: RecordBatch | undefined; // one per thread, refilled for every batch

  /** Take, hand over and acknowledge one batch of `s`; a number when the consumer was
   *  synchronous, a promise when it returned one (or threw). */
  function consumeOne(s: Owned): number | Promise<number> {
    const n = core.claimInView(s.slot, init.batchSize); // views made to reach the slot (growth)
    if (n === 0) return 0;
    const start = core.claimStart;
    const base = core.claimBase;
    let records: Uint8Array[] | undefined;
    if (consumeBatch) {
      batch ??= new RecordBatch(init.batchSize);
      batch.fill(s.shardId, core.u8, core.u32, base, core.ringCapacity, base + core.payloadOffset, start, n);
    } else {
      const buffer = core.u8.buffer;
      const u32 = core.u32;
      const payloads = base + core.payloadOffset;
      records = new Array(n);
      for (let k = 0; k < n; k++) {
        const rec = core.recordAt(base, start + k);
        // The constructor is ~15 ns cheaper per record than u8.subarray (no species lookup).
        records[k] = new Uint8Array(buffer, payloads + u32[(rec + REC_OFF) >>> 2]!, u32[(rec + REC_LEN) >>> 2]!);
      }
    }
    const began = performance.now(); // worker-local timing: a clock function cannot cross threads
    let r: void | Promise<void>;
    try {
      r = consumeBatch ? consumeBatch(batch!, s.shardId) : consume(records!, s.shardId);
    } catch (error) {
      return failed(s, error);
    }
    // A synchronous consumer is acknowledged right here: no promise, no microtask per batch.
    if (r && typeof (r as Promise<void>).then === 'function') {
      return (r as Promise<void>).then(
        () => acknowledge(s, start, n, began),
        (error: unknown) => failed(s, error),
      );
    }
    return acknowledge(s, start, n, began);
  }

  function acknowledge(s: Owned, start: number, n: number, began: number): number {
    const us = Math.round((performance.now() - began) * 1000);
    core.abi.ringAck(s.slot, start, n, n);
    core.abi.recordFlush(s.slot, Math.min(us, 0xffffffff));
    return n;
  }

  // The batch comes again: rewound at once (before anything is awaited), then a pause.
  async function failed(s: Owned, error: unknown): Promise<number> {
    core.abi.ringRewind(s.slot);
    const e = error as Error | undefined;
    post({ type: 'error', shardId: s.shardId, message: e?.message ?? String(error), stack: e?.stack, name: e?.name });
    await sleep(RETRY_BACKOFF_MS);
    return 0;
  }

  // A word nobody notifies: the gathering sleep waits on it for its timeout. The event loop
  // gets its turn right after (a release waits for it, and a shard's removal for the release).
  const gatherWord = new Int32Array(new SharedArrayBuffer(4));
  const gathering = core.ringLimit >= GATHER_MIN_RING_BATCHES * init.batchSize;
  async function gather(): Promise<void> {
    if (spinMs > 0) await spinFor(GATHER_MS, init.batchSize);
    else Atomics.wait(gatherWord, 0, 0, GATHER_MS);
    await yieldToEventLoop();
    yielded = performance.now();
  }
  let yielded = performance.now();
  let batches = 0;
  let movedBefore = 0;
  while (true) {
    applyReleases();
    let moved = 0;
    let backlog = false; // some ring gave a full batch: more is waiting, no gathering
    for (const s of order) {
      const r = consumeOne(s);
      const n = typeof r === 'number' ? r : await r;
      moved += n;
      if (n === init.batchSize) backlog = true;
    }
    if (moved === 0) {
      if (!running) break;
      // Sleep the gathering time and look again, instead of parking, when
      // - records came right before: the flow most likely goes on (a parked consumer costs
      //   the producer a wake-up call);
      // - the rings hold records this pass could not claim (reserved, not yet published: a
      //   producer is writing them, or stalled holding them until the watchdog skips them).
      //   Parking would return at once and spin without ever giving the event loop a turn:
      //   no heartbeat, no stop or release message. The gathering sleep yields.
      const lookAgain = (gathering && movedBefore >= GATHER_MIN_RECORDS) || ringsHoldRecords();
      if (releases.length === 0 && lookAgain) await gather();
      else await park();
    } else if (gathering && !backlog && moved >= GATHER_MIN_RECORDS && running) {
      await gather();
    } else if (++batches % YIELD_EVERY_BATCHES === 0 || performance.now() - yielded >= YIELD_EVERY_MS) {
      await yieldToEventLoop(); // let assign/release/stop messages in while busy
      yielded = performance.now();
    }
    movedBefore = moved;
  }
  applyReleases();
  clearInterval(beat);
  core.detach();
  post({ type: 'stopped' });
}
