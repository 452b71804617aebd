// ConsumerPool: the manager's side of the consumer threads. Spawns them, gives each shard
// exactly one owner, moves a dead worker's shards (rewound to their last acknowledgement)
// to a fresh worker, and stops them all on close.
import type { SharedCore } from './core.js';
import type { SpawnedWorker } from './platform-types.js';
import type { ConsumerInit } from './consumer-runtime.js';
import type { FromConsumer, ToConsumer } from './consumer-messages.js';
import { adoptWorker, moduleUrl } from '#platform';
import { spawnConsumerWorker } from '#spawn';
import { sleep, unrefTimer } from './sleep.js';

/** A worker the application started: a Web Worker, or a Node `worker_threads` Worker. */
export interface ConsumerWorker {
  postMessage(message: any): void;
  terminate(): unknown;
}

export interface ConsumerOptions {
  /**
   * Path or URL of a module whose default export is `(records, shardId) => void | Promise<void>`,
   * loaded by the package's own worker. Give this or `worker`. A relative path is resolved
   * against the process's working directory (as `node ./x.mjs` would), not the calling file:
   * `new URL('./consumer.mjs', import.meta.url)` names a file beside yours wherever you run.
   */
  module?: string | URL;
  /**
   * Start one consumer worker yourself; the module it runs calls `serveConsumer(fn)` from
   * 'shard-mapper/worker' at its top level. This is the bundler-friendly form: write it as
   * `() => new Worker(new URL('./consumer.worker.js', import.meta.url), { type: 'module' })`
   * so Vite/webpack bundle the worker. Called once per thread (and again after a crash).
   * A Node worker of the first set that ends without calling serveConsumer makes `create()`
   * reject (later, a replacement that does is restarted with backoff); a Web Worker sends no
   * such event, so in a browser `create()` waits for it.
   */
  worker?: () => ConsumerWorker;
  /** Most worker threads to run (default: CPU count). A worker may own several shards. */
  threads?: number;
  /** Most records handed to one call (default 256). */
  batchSize?: number;
  /**
   * A thread whose heartbeat (a timer in its event loop, every 100 ms) has not moved for this
   * long, by the manager's clock, while its shards have records, is ended and replaced, like a
   * thread that exited (default 10 000 ms). It catches Web Workers that died (browsers send no
   * exit event) and threads stuck in a synchronous consumer function. Checked by `tick()`.
   */
  stallMs?: number;
  /**
   * true: the consumer function takes one `RecordBatch` per call (offsets and lengths in
   * typed arrays, no view per record) instead of `Uint8Array[]`. Default false, so existing
   * modules keep working. A worker started with `serveConsumer(fn, { batch })` decides itself.
   */
  batch?: boolean;
  /**
   * Microseconds a consumer thread keeps polling its rings once they are empty before it
   * parks, and polls instead of sleeping while it gathers a fuller batch (0 to 1 000 000;
   * default 0: it sleeps at once, leaving the core to your producers). A thread that polls
   * does not wait to be woken: on a virtual machine whose host is busy a sleeping thread can
   * wake ~100 ms late (README, Limitations). The price is a core kept busy while events come
   * at least this often.
   */
  spinUs?: number;
}

interface WorkerState {
  index: number;
  worker: SpawnedWorker;
  /** The heartbeat value seen last, and when (manager clock) it was first seen. */
  beat: { value: number; since: number } | undefined;
  ready: Promise<void>;
  lane: number;
  doorbell: number;
  shards: Map<number, number>; // shardId → slot
  releasing: Map<number, () => void>;
  exited: boolean;
  stopping: boolean;
  /** It reported 'ready' (its module loaded). */
  started: boolean;
  /** Ended by terminateWorker (an operator's kill is not a failed start). */
  killed: boolean;
  /** One of the threads start() waits for: its failure to start fails create(). */
  initial: boolean;
  /** Dead, its replacement waiting out a restart backoff; shards given to it meanwhile
   *  go to the replacement. */
  respawnPending: boolean;
}

/** Restarts of threads that died before they were ready back off up to this long. */
const MAX_RESTART_DELAY_MS = 5000;
/** How often close() looks at the heartbeats of threads that have not answered its stop. */
const STOP_CHECK_MS = 10;

/** close()'s limits on the wait for threads to stop: the manager's clock, the heartbeat
 *  stall that ends a silent thread, and when every thread still silent is ended. */
export interface StopWatch {
  now: () => number;
  stallMs: number;
  deadline: number;
}

export interface PoolEvents {
  onError(error: Error, shardId: number): void;
  /** A thread exited unasked; `rewound` records it held unacknowledged will come again. */
  onWorkerExit(index: number, code: number, rewound: number): void;
  /** A replacement thread could not be started (e.g. no free lane); it is tried again. */
  onRestartFailed(error: Error): void;
  /** A thread's heartbeat stopped while it had work: it is ended and replaced. */
  onStalled(index: number): void;
}

export class ConsumerPool {
  readonly #core: SharedCore;
  readonly #init: Omit<ConsumerInit, 'core' | 'lane'>;
  readonly #events: PoolEvents;
  readonly #factory: (() => ConsumerWorker) | undefined;
  readonly #workers: WorkerState[] = [];
  readonly #owner = new Map<number, WorkerState>();
  /** Callers of nextRelease() waiting for a release in flight to land. */
  readonly #releaseWaiters = new Set<() => void>();
  #closing = false;
  #spawned = 0;
  /** Still in start(): its threads' failures reject create() rather than restart. */
  #starting = true;
  /** Replacements in a row that died before becoming ready (a module that stopped loading). */
  #failedStarts = 0;

  private constructor(core: SharedCore, init: Omit<ConsumerInit, 'core' | 'lane'>, events: PoolEvents, factory?: () => ConsumerWorker) {
    this.#core = core;
    this.#factory = factory;
    this.#init = init;
    this.#events = events;
  }

  static async start(
    core: SharedCore,
    options: ConsumerOptions,
    threads: number,
    batchSize: number,
    spinUs: number,
    events: PoolEvents,
  ): Promise<ConsumerPool> {
    const module = options.worker ? '' : moduleUrl(options.module!);
    const pool = new ConsumerPool(core, { module, batchSize, batch: options.batch === true, spinUs }, events, options.worker);
    try {
      // inside the try: a spawn that throws (no free lane, a factory error) ends those before it
      for (let i = 0; i < threads; i++) pool.#workers.push(pool.#spawn(true));
      await Promise.all(pool.#workers.map((w) => w.ready));
      pool.#starting = false;
    } catch (error) {
      // A worker that cannot start (a module that fails to load) is not a crash to recover
      // from: restart none, end them all, and let create() reject.
      pool.#closing = true;
      await Promise.all(pool.#workers.map((w) => w.worker.terminate()));
      throw error;
    }
    return pool;
  }

  #spawn(initial = false): WorkerState {
    // The lane is claimed here, not by the thread: a thread killed before it says 'ready'
    // would otherwise leak the lane it took, and enough such kills starve every replacement.
    const lane = this.#core.abi.laneClaim();
    if (lane < 0) {
      throw new Error(
        `shard-mapper: no free lane for a consumer thread (all ${this.#core.abi.laneCountConfigured()} are taken: raise options.maxThreads, or detach() producers you no longer use)`,
      );
    }
    const init: ConsumerInit = { core: this.#core.handle(), ...this.#init, lane };
    let worker: SpawnedWorker;
    try {
      worker = this.#factory ? adoptWorker(this.#factory(), init) : spawnConsumerWorker(init);
    } catch (error) {
      this.#core.abi.laneRelease(lane);
      throw error;
    }
    let resolveReady!: () => void;
    let rejectReady!: (e: Error) => void;
    const state: WorkerState = {
      index: this.#spawned++,
      worker,
      lane,
      doorbell: 0,
      shards: new Map(),
      releasing: new Map(),
      beat: undefined,
      exited: false,
      stopping: false,
      started: false,
      killed: false,
      initial,
      respawnPending: false,
      ready: new Promise<void>((res, rej) => {
        resolveReady = res;
        rejectReady = rej;
      }),
    };
    state.ready.catch(() => {}); // a replacement nobody awaits must not become an unhandled rejection
    worker.onMessage((msg: FromConsumer) => {
      switch (msg.type) {
        case 'ready':
          state.started = true;
          this.#failedStarts = 0;
          state.doorbell = msg.doorbell;
          resolveReady();
          break;
        case 'fatal':
          rejectReady(this.#startFailure(msg.message, msg.stack));
          break;
        case 'error':
          this.#events.onError(consumerError(msg.message, msg.stack, msg.name), msg.shardId);
          break;
        case 'released': {
          const done = state.releasing.get(msg.shardId);
          state.releasing.delete(msg.shardId);
          done?.();
          this.#releaseSettled();
          break;
        }
      }
    });
    // A module that fails to load may surface as this error event before its 'fatal' message:
    // word both the same way.
    worker.onError((error) => rejectReady(this.#startFailure(error.message, error.stack)));
    worker.onExit((code) => {
      // A thread that ends before it is ready (a worker that never calls serveConsumer, a
      // module that exits while loading) fails its start: create() must not wait for it.
      if (!state.started) rejectReady(new Error(this.#exitBeforeReadyMessage(code)));
      this.#onExit(state, code);
    });
    return state;
  }

  /** Give a shard to the least-loaded live worker. */
  assign(shardId: number, slot: number): void {
    const live = this.#workers.filter((w) => !w.exited && !w.stopping);
    if (live.length === 0) {
      const waiting = this.#workers.find((w) => w.respawnPending);
      if (!waiting) throw new Error('shard-mapper: no consumer worker is running');
      this.#core.retainSlot(slot);
      waiting.shards.set(shardId, slot); // handed over when its replacement starts
      this.#owner.set(shardId, waiting);
      return;
    }
    const target = live.reduce((a, b) => (b.shards.size < a.shards.size ? b : a));
    this.#core.retainSlot(slot); // the worker reads the slot until it confirms the release
    this.#give(target, shardId, slot);
  }

  #give(target: WorkerState, shardId: number, slot: number): void {
    target.shards.set(shardId, slot);
    this.#owner.set(shardId, target);
    const assign = () => {
      // Sent once the thread is ready: by then the shard may have been released (removed) or
      // moved on, its slot freed and reused by another shard. Assigning it then would put a
      // second consumer on that ring.
      if (this.#owner.get(shardId) !== target || target.shards.get(shardId) !== slot) return;
      this.#core.abi.ringSetDoorbell(slot, target.doorbell);
      send(target.worker, { type: 'assign', shardId, slot });
    };
    if (target.started) assign();
    else void target.ready.then(assign, () => {});
  }

  /** The shard is gone and its ring empty: the owner lets go, then the slot is freed. */
  release(shardId: number): void {
    const owner = this.#owner.get(shardId);
    if (!owner) return;
    const slot = owner.shards.get(shardId)!;
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

  /** Removed shards whose thread has not let go of the ring yet: their slots are not free. */
  releasesInFlight(): number {
    let n = 0;
    for (const w of this.#workers) n += w.releasing.size;
    return n;
  }

  /** Resolves when a release in flight frees its slot, or after `limitMs`. */
  nextRelease(limitMs: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#releaseWaiters.delete(done);
        resolve();
      }, limitMs);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#releaseWaiters.add(done);
    });
  }

  #releaseSettled(): void {
    const waiters = [...this.#releaseWaiters];
    this.#releaseWaiters.clear();
    for (const w of waiters) w();
  }

  owns(shardId: number): boolean {
    return this.#owner.has(shardId);
  }

  /** Workers and the shards each owns (for operators and tests). */
  describe(): { index: number; shards: number[]; alive: boolean; ready: boolean }[] {
    return this.#workers.map((w) => ({ index: w.index, shards: [...w.shards.keys()], alive: !w.exited, ready: w.started && !w.exited }));
  }

  /** Kill one worker as a crash would; its shards move on as after any crash. */
  async terminateWorker(index: number): Promise<void> {
    const w = this.#workers.find((x) => x.index === index && !x.exited);
    if (!w)
      throw new RangeError(
        `terminateConsumer: no running consumer thread ${index} (running: ${
          this.#workers
            .filter((x) => !x.exited)
            .map((x) => x.index)
            .join(', ') || 'none'
        })`,
      );
    w.killed = true;
    await w.worker.terminate();
  }

  /**
   * Replace every ready thread whose heartbeat has not moved for `stallMs` while one of its
   * shards has records (an idle thread's timer still beats; a stopped one does not). Returns
   * the indexes of the threads it ended.
   */
  checkHeartbeats(now: number, stallMs: number): number[] {
    const ended: number[] = [];
    const abi = this.#core.abi;
    for (const w of [...this.#workers]) {
      if (w.exited || w.stopping || !w.started || w.killed) continue;
      const busy = [...w.shards.values()].some((slot) => abi.ringLen(slot) !== 0);
      if (!busy) {
        w.beat = { value: this.#heartbeat(w), since: now };
        continue;
      }
      if (!this.#silent(w, now, stallMs)) continue;
      ended.push(w.index);
      this.#events.onStalled(w.index);
      w.killed = true;
      // Rewind and replace only once the thread has really stopped: a thread that was only
      // slow must not acknowledge a batch that was handed out again. Browsers send no exit
      // event (terminate() stops a Web Worker at once); in Node 'exit' may come first.
      void w.worker.terminate().then(
        () => this.#onExit(w, -1),
        () => this.#onExit(w, -1),
      );
    }
    return ended;
  }

  /** Why a thread failed to start, naming the consumer module when the error does not (a
   *  syntax error says only "Unexpected token"). */
  #startFailure(message: string, stack: string | undefined): Error {
    const module = this.#init.module;
    const where = module !== '' && !message.includes(module) ? ` (consumer module ${module})` : '';
    return Object.assign(new Error(`consumer worker failed to start: ${message}${where}`), { stack });
  }

  #exitBeforeReadyMessage(code: number): string {
    const what = this.#factory
      ? 'the worker from options.consumer.worker ended before it was ready: its script must call serveConsumer(fn) from shard-mapper/worker and keep running'
      : `the consumer thread for ${this.#init.module} ended before it was ready: the module must load and default-export the consumer function, without exiting the thread`;
    return `consumer worker failed to start: ${what} (exit code ${code})`;
  }

  #onExit(state: WorkerState, code: number): void {
    if (state.exited) return;
    state.exited = true;
    for (const done of state.releasing.values()) done(); // it reads nothing any more
    state.releasing.clear();
    this.#releaseSettled();
    this.#core.abi.laneRelease(state.lane); // claimed for it in #spawn: released whatever it got to do
    // A thread of the first set that ended before it was ready failed create(): not a crash.
    // (A replacement started meanwhile, for one of them that died after it was ready, is.)
    if (this.#closing || state.stopping || (this.#starting && state.initial && !state.started)) return;
    // A crash: records it had claimed but not acknowledged are handed out again. Its shards
    // wait (their rings keep accepting up to capacity) until the replacement is up; a thread
    // that keeps dying before it is ready is restarted with exponential backoff.
    let rewound = 0;
    for (const slot of state.shards.values()) rewound += this.#core.abi.ringRewind(slot);
    this.#events.onWorkerExit(state.index, code, rewound);
    if (!state.started && !state.killed) this.#failedStarts++;
    const delay = this.#failedStarts === 0 || state.killed ? 0 : Math.min(MAX_RESTART_DELAY_MS, 50 * 2 ** this.#failedStarts);
    this.#scheduleRespawn(state, delay);
  }

  /** Start a replacement for `state` after `delay` ms. One that cannot start (no free lane,
   *  a spawn error) is tried again with backoff: its shards are kept, never dropped. */
  #scheduleRespawn(state: WorkerState, delay: number): void {
    const respawn = () => {
      state.respawnPending = false;
      if (this.#closing) return;
      let replacement: WorkerState;
      try {
        replacement = this.#spawn();
      } catch (error) {
        this.#events.onRestartFailed(error as Error);
        this.#scheduleRespawn(state, Math.min(MAX_RESTART_DELAY_MS, Math.max(50, 2 * delay)));
        return;
      }
      const index = this.#workers.indexOf(state);
      if (index >= 0) this.#workers.splice(index, 1);
      this.#workers.push(replacement);
      for (const [shardId, slot] of state.shards) this.#give(replacement, shardId, slot);
      state.shards.clear();
    };
    if (delay === 0) respawn();
    else {
      state.respawnPending = true;
      unrefTimer(setTimeout(respawn, delay));
    }
  }

  /**
   * Ask every worker to finish what it has and stop, then end the threads. `force`: end them
   * at once, whatever they hold (what they claimed and did not acknowledge stays in the rings).
   * With `watch`, a thread that neither answers nor beats for `stallMs` is ended rather than
   * waited for (a Web Worker that died sends nothing, and an idle one is not replaced while
   * the manager runs: see checkHeartbeats), and every thread still silent at `deadline`.
   */
  async close(force = false, watch?: StopWatch): Promise<void> {
    this.#closing = true;
    const live = this.#workers.filter((w) => !w.exited);
    for (const w of live) w.stopping = true;
    if (!force) {
      const answered = new Set<WorkerState>();
      let all = false;
      const stopped = Promise.all(
        live.map(
          (w) =>
            new Promise<void>((resolve) => {
              const done = () => {
                answered.add(w);
                resolve();
              };
              w.worker.onMessage((msg: FromConsumer) => {
                if (msg.type === 'stopped') done();
              });
              w.worker.onExit(done);
              send(w.worker, { type: 'stop' });
            }),
        ),
      ).then(() => {
        all = true;
      });
      if (watch === undefined) await stopped;
      else {
        for (const w of live) w.beat = undefined;
        while (!all) {
          await Promise.race([stopped, sleep(STOP_CHECK_MS)]);
          const now = watch.now();
          if (all || now >= watch.deadline) break;
          for (const w of live) if (!answered.has(w) && this.#silent(w, now, watch.stallMs)) void w.worker.terminate();
        }
      }
    }
    await Promise.all(live.map((w) => w.worker.terminate()));
    this.#disown();
  }

  #heartbeat(w: WorkerState): number {
    return Atomics.load(this.#core.i32, this.#core.abi.laneHeartbeatAddress(w.lane) >>> 2);
  }

  /** Has the thread's heartbeat stood still for `stallMs` (manager clock)? (checkHeartbeats
   *  and close() both ask.) */
  #silent(w: WorkerState, now: number, stallMs: number): boolean {
    const value = this.#heartbeat(w);
    if (w.beat === undefined || w.beat.value !== value) {
      w.beat = { value, since: now };
      return false;
    }
    return now - w.beat.since >= stallMs;
  }

  /** The threads are gone: no shard is theirs any more (the manager's thread may poll them). */
  #disown(): void {
    this.#owner.clear();
    for (const w of this.#workers) w.shards.clear();
  }
}

/** The built-in error classes a consumer's error is made again as, on this side of the thread
 *  boundary (so `error instanceof TypeError` holds as it did in the consumer). */
const BUILT_IN_ERRORS: Record<string, ErrorConstructor> = { TypeError, RangeError, ReferenceError, SyntaxError, EvalError, URIError };

/** A consumer thread's error as the thread reported it: its class if built in, else an Error
 *  with its name; its message and its stack (which names the thread's frames). */
function consumerError(message: string, stack: string | undefined, name: string | undefined): Error {
  const error = new (name !== undefined && Object.hasOwn(BUILT_IN_ERRORS, name) ? BUILT_IN_ERRORS[name]! : Error)(message);
  if (name && error.name !== name) error.name = name;
  if (stack !== undefined) error.stack = stack;
  return error;
}

function send(worker: SpawnedWorker, message: ToConsumer): void {
  worker.postMessage(message);
}
