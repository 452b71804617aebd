// RedisShardManager: a node of a namespace. push() routes with the WebAssembly selection over
// the namespace's one table and appends to a per-shard frame in a bounded local send buffer;
// a sender sends each shard's frames in order with pipelined XADD (one frame per shard in
// flight), retrying on errors, so nothing accepted is lost while Redis is away.
import { randomBytes } from 'node:crypto';
import type { Writable } from 'node:stream';
import { BackpressureError, CloseTimeoutError, MAX_TIMER_MS, ManagerClosedError, checkInteger, describe, invalid } from '../errors.js';
import { NO_SHARD, shardIdsLeftFrom } from '../mapper.js';
import type { ScalingPolicy } from '../policy.js';
import { batchArguments, type BatchEvent, type EventKey, type EventPayload } from '../producer.js';
import { sleep } from '../sleep.js';
import { createTargetWritable, createTargetWritableStream, type ManagerRecord, type PushTarget, type WritableOptions } from '../streams.js';
import type { BackpressureMode, ManagerEvent, ObservedManager } from '../types.js';
import { closeTimeout, keyHash, payloadBytes } from '../validate.js';
import {
  closeConnection,
  connect,
  dropConnection,
  reportedError,
  sendAll,
  subscriber,
  watchAnswers,
  type Command,
  type Connection,
  type RedisClient,
} from './connection.js';
import { Controller, createGroups, type RedisManagerEvent, type RedisNodeEvent } from './controller.js';
import { KeyOrder, markField, type HeldEvent, type RedisKeyOrderStats } from './key-order.js';
import { keysFor, type Keys } from './keys.js';
import { callLimits, OperatorTimeoutError, requestOperation, within, type CallLimits, type OperatorCallOptions } from './operator.js';
import {
  checkAgainstNamespace,
  checkKeyOrderRouting,
  checkLease,
  checkNodeOptions,
  leaseFor,
  type NodeSettings,
  type RedisShardManagerOptions,
} from './options.js';
import { RouteTable } from './route.js';
import { SendBuffer } from './send-buffer.js';
import type { Frame } from './frames.js';
import { PROGRESS, readAckedPositions, type AckedPosition } from './progress.js';
import {
  compareHeads,
  initTable,
  isAhead,
  RouteBuilder,
  readHead,
  readTable,
  type RoutingMode,
  type Table,
  type TableDoc,
  type TableHead,
  type TableState,
} from './table.js';

export interface RedisManagerStats {
  /** Events accepted by push/pushBatch. */
  pushed: number;
  /** Events stored in Redis (XADD confirmed). A retried frame counts once. */
  stored: number;
  /** Accepted events not yet stored (the local send buffer, in flight included). */
  buffered: number;
  /** Events the node discarded under backpressure (dropNewest, dropOldest, sample); pushes
   *  failProducer refused are counted in drops.refused only (the caller keeps them). */
  dropped: number;
  drops: { newest: number; oldest: number; sampled: number; refused: number };
  /** Pushes made while no shard was Active. */
  unrouted: number;
  /** Accepted events sent to a shard that had been removed meanwhile, routed again. */
  rerouted: number;
  /** XADD rounds that failed (Redis away, timeouts) and were retried. */
  retries: number;
  /** Key order across moves (routing 'affinity'): slots waiting, events held, waits. */
  keyOrder: RedisKeyOrderStats;
  shards: { id: number; state: TableState; buffered: number }[];
}

/** A pushAsync waiting for room (with `payload`), or a writable's record waiting for room. */
interface RoomWaiter {
  hash: number;
  bytes: number;
  payload: EventPayload | undefined;
  resolve: (accepted: boolean) => void;
  reject: (error: unknown) => void;
}

/** The routing of a namespace that exists (undefined: none yet, or unreadable). */
async function storedRouting(conn: Connection, keys: Keys): Promise<RoutingMode | undefined> {
  try {
    const doc = await conn.client.hget(keys.table, 'doc');
    return doc === null ? undefined : (JSON.parse(doc) as Partial<TableDoc>).routing;
  } catch {
    return undefined;
  }
}

/** The metricsWindowMs of a namespace that exists, read before the table is created, so a
 *  lease too short for it is refused before anything is written (undefined: none yet, or
 *  not ours, which initTable then explains). */
async function storedWindow(conn: Connection, keys: Keys): Promise<number | undefined> {
  try {
    const doc = await conn.client.hget(keys.table, 'doc');
    const windowMs = doc === null ? undefined : (JSON.parse(doc) as Partial<TableDoc>).policy?.metricsWindowMs;
    return typeof windowMs === 'number' ? windowMs : undefined;
  } catch {
    return undefined;
  }
}

export class RedisShardManager {
  readonly namespace: string;
  /** This node's number in the namespace (the first half of every dedup id). */
  readonly nodeId: string;
  readonly maxPayloadBytes: number;
  readonly ringBufferCapacity: number;
  readonly ringBufferBytes: number;
  readonly backpressure: BackpressureMode;

  readonly #conn: Connection;
  readonly #sub: RedisClient;
  readonly #keys: Keys;
  readonly #route: RouteTable;
  readonly #clock: () => number;
  readonly #onEvent: ((e: ManagerEvent) => void) | undefined;
  readonly #onRedisEvent: ((e: RedisNodeEvent) => void) | undefined;
  readonly #lingerMs: number;
  readonly #controller: Controller | undefined;
  readonly #keyOrder: KeyOrder;
  /** Accepted events not yet stored, per shard, in frames; and the counters of what became of them. */
  readonly #buffer: SendBuffer;
  /** Shards waiting out a failed send: the timer that lets each go again. */
  readonly #holdTimers = new Map<number, ReturnType<typeof setTimeout>>();
  #table: Table;
  /** The highest node number this node saw handed out (its own included): reported if Redis
   *  loses data, so no number is handed out twice. */
  #maxNodeNumber: number;
  /** The highest next shard id of any table this node followed (reported if Redis loses data). */
  #maxNextId = 0;
  /** The table head this node last reported as lost (one redisDataLoss event per loss). */
  #lossSeen: string | undefined;
  /** Operator calls waiting for the next table this node applies. */
  #tableWaiters = new Set<() => void>();
  #unrouted = 0;
  #retries = 0;
  #sending = false;
  #sendTimer: ReturnType<typeof setTimeout> | undefined;
  #windowTimer: ReturnType<typeof setInterval> | undefined;
  #stepping = false;
  #refreshing: Promise<void> | undefined;
  #refreshAgain = false;
  #waiters: { target: number; resolve: () => void; reject: (error: unknown) => void }[] = [];
  /** Pushes and writes waiting for room in a full shard, in call order. */
  #roomWaiters: RoomWaiter[] = [];
  #closed = false;
  #closing: Promise<void> | undefined;
  /** close({ timeoutMs }): the timer that gives up, and when it fires (performance.now()). */
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #closeDeadline = Infinity;
  /** Ends a close under way past its deadline (set while one is). */
  #giveUp: ((timeoutMs: number) => void) | undefined;
  /** Set once a close gave up: nothing is sent any more, no timer is started. */
  #abandoned: CloseTimeoutError | undefined;
  #lastError: string | undefined;
  #hashes = new Uint32Array(256);
  #shards = new Uint16Array(256);

  private constructor(parts: {
    conn: Connection;
    sub: RedisClient;
    keys: Keys;
    table: Table;
    nodeId: string;
    nodeNumber: number;
    settings: NodeSettings;
    leaseMs: number;
    keyOrder: boolean;
    onEvent: ((e: ManagerEvent) => void) | undefined;
    onRedisEvent: ((e: RedisNodeEvent) => void) | undefined;
  }) {
    const settings = parts.settings;
    this.#conn = parts.conn;
    this.#sub = parts.sub;
    this.#keys = parts.keys;
    this.namespace = parts.keys.ns;
    this.nodeId = parts.nodeId;
    this.maxPayloadBytes = settings.maxPayload;
    this.ringBufferCapacity = settings.capacity;
    this.ringBufferBytes = settings.capacityBytes;
    this.backpressure = Object.freeze({ ...settings.backpressure });
    this.#lingerMs = settings.lingerMs;
    this.#clock = settings.clock;
    this.#onEvent = parts.onEvent;
    this.#onRedisEvent = parts.onRedisEvent;
    this.#table = parts.table;
    this.#maxNextId = parts.table.doc.nextId;
    this.#maxNodeNumber = Math.max(parts.nodeNumber, parts.table.nodes);
    this.#route = new RouteTable(parts.table.doc.policy.maxShards);
    this.#route.load(parts.table.doc.route);
    this.#keyOrder = this.#keyOrderFence(parts.keyOrder, parts.table.doc.route);
    this.#buffer = new SendBuffer(
      { events: settings.capacity, bytes: settings.capacityBytes, maxFrameBytes: settings.maxFrameBytes },
      {
        select: (hash) => this.#route.select(hash),
        inTable: (shard) => this.#inTable(shard),
        keyOrder: this.#keyOrder,
        queued: () => this.#kick(),
      },
    );
    this.#controller = settings.controller
      ? new Controller({
          conn: parts.conn,
          keys: parts.keys,
          nodeId: parts.nodeId,
          leaseMs: parts.leaseMs,
          drainGraceMs: settings.drainGraceMs,
          clock: settings.clock,
          emit: (e) => this.#emit(e),
          applyTable: (t) => this.#apply(t),
          report: (e) => this.#redisError(e),
          knownTable: () => this.#table,
        })
      : undefined;
  }

  /**
   * Join (or create) a namespace. Checks every option, connects, creates the table if the
   * namespace is new (initialShards Active shards) or checks that a given policy and routing
   * equal the stored ones, subscribes to table changes, and starts the metrics window loop
   * (table version check, push counts, the controller lease and scaling loop).
   */
  static async create(options: RedisShardManagerOptions): Promise<RedisShardManager> {
    const settings = checkNodeOptions(options);
    const { namespace: ns, initialShards, policy, routing, loadBound, keyOrder, leaseGiven } = settings;
    const keys = keysFor(ns);
    const conn = await connect(options.redis, `namespace "${ns}"`, settings.connectTimeoutMs);
    let sub: RedisClient | undefined;
    try {
      const fresh: TableDoc = {
        nextId: initialShards,
        policy,
        routing,
        loadBound,
        shardCapacity: settings.capacity,
        shards: Array.from({ length: initialShards }, (_, id) => ({ id, state: 'active' as const })),
        route: new RouteBuilder({ routing, loadBound, policy }).build(
          Array.from({ length: initialShards }, (_, id) => id),
          new Map(),
          false,
        ),
      };
      // The window the lease must outlast is the namespace's (the one given if it is new).
      if (leaseGiven !== undefined) checkLease(leaseGiven, (await storedWindow(conn, keys)) ?? policy.metricsWindowMs);
      // keyOrder: true without a routing: the namespace's routing (or the default) decides.
      if (keyOrder === true && options.routing === undefined) checkKeyOrderRouting(settings, await storedRouting(conn, keys));
      const table = await initTable(conn.client, keys, fresh);
      if (table.created)
        await createGroups(
          conn,
          keys,
          fresh.shards.map((s) => s.id),
        );
      if (!table.created) checkAgainstNamespace(settings, options, table.doc);
      const windowMs = table.doc.policy.metricsWindowMs;
      if (leaseGiven !== undefined) checkLease(leaseGiven, windowMs);
      const leaseMs = leaseFor(leaseGiven, windowMs);
      // Node numbers come from Redis, so node ids are unique across machines and restarts; a
      // random tag keeps them unique even when Redis lost the counter (restart without
      // persistence, failover) before a recovering controller raised it again.
      const nodeNumber = Number(
        await conn.client.smJoin(keys.table).catch((error: Error) => {
          throw new Error(
            `shard-mapper/redis: namespace "${ns}": the shard table vanished while this node joined (${error.message}); create the node again`,
          );
        }),
      );
      const nodeId = `${nodeNumber}.${randomBytes(4).toString('hex')}`;
      sub = subscriber(conn);
      await sub.subscribe(keys.changes);
      const node = new RedisShardManager({
        conn,
        sub,
        keys,
        table: { version: table.version, gen: table.gen, epoch: table.epoch, doc: table.doc, nodes: Math.max(table.nodes, nodeNumber) },
        nodeId,
        nodeNumber,
        settings,
        leaseMs,
        onEvent: options.onEvent,
        onRedisEvent: options.onRedisEvent,
        keyOrder: keyOrder ?? table.doc.routing === 'affinity',
      });
      sub.on('message', () => {
        void node.#refresh();
      });
      watchAnswers(
        conn,
        settings.connectTimeoutMs,
        (e) => node.#redisError(e),
        () => {
          node.#lastError = undefined; // answered again: the next stall is news, even with nothing sent between
        },
      );
      node.#start(table.doc.policy.metricsWindowMs);
      return node;
    } catch (error) {
      if (sub) sub.disconnect();
      await closeConnection(conn);
      throw error;
    }
  }

  #start(windowMs: number): void {
    this.#windowTimer = setInterval(() => {
      void this.#window();
    }, windowMs);
    (this.#windowTimer as { unref?: () => void }).unref?.();
  }

  #emit(event: RedisManagerEvent): void {
    try {
      if (event.type === 'controller' || event.type === 'redisError' || event.type === 'redisDataLoss' || event.type === 'streamRecreated')
        this.#onRedisEvent?.(event);
      else this.#onEvent?.(event);
    } catch (error) {
      console.error('shard-mapper/redis: onEvent threw', error);
    }
  }

  #redisError(error: unknown): void {
    const e = reportedError(this.#conn, error, NODE_OUTAGE);
    if (e.message === this.#lastError) return; // once per kind of failure, not once per retry
    this.#lastError = e.message;
    this.#emit({ type: 'redisError', error: e, at: this.#clock() });
  }

  // ---- the table ------------------------------------------------------------------------

  /** The table this node routes with: version, generation (one more each time the namespace
   *  was recovered after Redis lost data), shards and their states, the route. */
  table(): { version: number; generation: number; shards: { id: number; state: TableState }[]; route: number[]; nextId: number } {
    const { version, gen, doc } = this.#table;
    return { version, generation: gen, shards: doc.shards.map((s) => ({ ...s })), route: [...doc.route], nextId: doc.nextId };
  }

  /** The namespace's policy (from Redis). */
  policy(): Readonly<ScalingPolicy> {
    return Object.freeze({ ...this.#table.doc.policy });
  }

  /** Whether this node holds the controller lease right now. */
  get isController(): boolean {
    return this.#controller?.leader ?? false;
  }

  #refresh(): Promise<void> {
    if (this.#refreshing) {
      this.#refreshAgain = true;
      return this.#refreshing;
    }
    this.#refreshing = (async () => {
      try {
        do {
          this.#refreshAgain = false;
          this.#apply(await readTable(this.#conn.client, this.#keys));
        } while (this.#refreshAgain);
      } catch (error) {
        this.#redisError(error);
      } finally {
        this.#refreshing = undefined;
      }
    })();
    return this.#refreshing;
  }

  /** Follow `table` if it is ahead of ours: a higher generation (the namespace recovered
   *  after Redis lost data), or a higher version of the same life. */
  #apply(table: Table): void {
    if (!isAhead(table, this.#table)) return;
    const recovered = table.gen > this.#table.gen;
    this.#table = table;
    this.#maxNextId = Math.max(this.#maxNextId, table.doc.nextId);
    this.#maxNodeNumber = Math.max(this.#maxNodeNumber, table.nodes);
    if (recovered) {
      this.#lossSeen = undefined;
      this.#emit({
        type: 'redisDataLoss',
        stage: 'recovered',
        generation: table.gen,
        at: this.#clock(),
        detail: `this node follows generation ${table.gen} of the table (next shard id ${table.doc.nextId})`,
      });
    }
    for (const wake of this.#tableWaiters) wake();
    this.#route.load(table.doc.route);
    // Before removed shards' queues are routed again: their events then meet the new fences.
    if (recovered) this.#keyOrder.releaseAll();
    this.#keyOrder.adopt(table.doc.route);
    const present = new Set(table.doc.shards.map((s) => s.id));
    // Events queued for a shard that was removed meanwhile go to the shards of the new table.
    // A queue whose next frame was sent without an answer is left to the sender: its retry is
    // refused (no stream) and #refused asks the removed shard's marks whether it was stored.
    for (const id of this.#buffer.idleShards()) if (!present.has(id) && !this.#buffer.headUnanswered(id)) this.#reroute(id, []);
    this.#buffer.placeOrphans();
    if (this.#buffer.buffered > 0) this.#kick();
  }

  /** One metrics window: catch up with the table, run the controller. */
  async #window(): Promise<void> {
    if (this.#stepping) return;
    this.#stepping = true;
    try {
      const head = await readHead(this.#conn.client, this.#keys);
      if (head) this.#maxNodeNumber = Math.max(this.#maxNodeNumber, head.nodes);
      const verdict = compareHeads(this.#table, head);
      if (verdict === 'ahead') await this.#refresh();
      else if (verdict === 'lost') await this.#dataLost(head);
      if (this.#controller && !this.#closed) await this.#controller.step();
    } catch (error) {
      this.#redisError(error);
    } finally {
      this.#stepping = false;
    }
  }

  /**
   * Redis no longer has the table this node follows (restart without persistence, a failover
   * that lost writes, FLUSHALL): report what this node knew, so the controller's recovery
   * starts above it (no shard id or node number is used twice), and say so once. The node
   * keeps its table (and its send buffer) until the recovered one comes.
   */
  async #dataLost(head: TableHead | undefined): Promise<void> {
    const { gen, version, epoch } = this.#table;
    await this.#conn.client.smRaiseFloor(this.#keys.floor, this.#maxNextId, gen + 1, this.#maxNodeNumber);
    const key = head ? `${head.gen}/${head.epoch}/${head.version}` : 'none';
    if (this.#lossSeen === key) return;
    this.#lossSeen = key;
    const seen = head ? `generation ${head.gen} version ${head.version} (epoch ${head.epoch})` : 'no shard table';
    this.#emit({
      type: 'redisDataLoss',
      stage: 'detected',
      generation: gen,
      at: this.#clock(),
      detail: `Redis lost data: it holds ${seen}, this node followed generation ${gen} version ${version} (epoch ${epoch}); waiting for the controller to recover the namespace`,
    });
  }

  // ---- producing ------------------------------------------------------------------------

  /**
   * Route an event and add it to its shard's send buffer. `true`: accepted (it will be stored
   * in Redis; flush() waits for that). `false`: dropped by backpressure, or unrouted (no
   * Active shard). Throws BackpressureError under failProducer when the shard's send buffer
   * is full, ManagerClosedError after close(), and the ShardManager.push errors for bad input.
   */
  push(key: EventKey, payload: EventPayload): boolean {
    if (this.#closed) throw new ManagerClosedError('push');
    const hash = keyHash(key, 'push');
    const bytes = payloadBytes(payload, this.maxPayloadBytes, -1);
    return this.#accept(hash, this.#route.select(hash), payload, bytes, 0);
  }

  /** Push many events; returns how many were accepted. Every event is checked before any is
   *  added; under failProducer a full buffer throws BackpressureError with `accepted`. */
  pushBatch(keys: ArrayLike<EventKey>, payloads: ArrayLike<EventPayload>): number;
  pushBatch(events: ArrayLike<BatchEvent>): number;
  pushBatch(keysOrEvents: ArrayLike<EventKey> | ArrayLike<BatchEvent>, maybePayloads?: ArrayLike<EventPayload>): number {
    if (this.#closed) throw new ManagerClosedError('pushBatch');
    const [keys, payloads] = batchArguments(keysOrEvents, maybePayloads);
    const n = keys.length;
    const lengths = new Array<number>(n);
    for (let i = 0; i < n; i++) lengths[i] = payloadBytes(payloads[i], this.maxPayloadBytes, i);
    if (this.#hashes.length < n) {
      this.#hashes = new Uint32Array(n);
      this.#shards = new Uint16Array(n);
    }
    const hashes = this.#hashes;
    for (let i = 0; i < n; i++) hashes[i] = keyHash(keys[i]!, 'pushBatch', i);
    this.#route.selectMany(hashes, n, this.#shards);
    let accepted = 0;
    for (let i = 0; i < n; i++) if (this.#accept(hashes[i]!, this.#shards[i]!, payloads[i]!, lengths[i]!, accepted)) accepted++;
    return accepted;
  }

  #accept(hash: number, shard: number, payload: EventPayload, bytes: number, acceptedBefore: number): boolean {
    if (shard === NO_SHARD) {
      this.#unrouted++;
      return false;
    }
    return this.#buffer.accept(hash, shard, payload, bytes, this.backpressure, this.#table.doc.policy.fillRatioThreshold, acceptedBefore);
  }

  // ---- waiting for room ---------------------------------------------------------------

  /**
   * push() that waits for room instead of throwing BackpressureError: under failProducer,
   * while the event's shard has a full send buffer, the promise waits until the node stored
   * enough of it in Redis (through outages too), then accepts the event. Resolves as push()
   * returns (under the other modes it never waits: they drop instead); rejects with push()'s
   * errors for bad input and ManagerClosedError after close(). Calls that wait are accepted
   * in call order per shard. `for (...) await node.pushAsync(key, payload)` fills the
   * buffers and lets the sender run whenever they are full. The payload is copied when
   * the event is accepted: do not change it before the promise settles.
   */
  pushAsync(key: EventKey, payload: EventPayload): Promise<boolean> {
    try {
      if (this.#closed) throw new ManagerClosedError('pushAsync');
      const hash = keyHash(key, 'push');
      const bytes = payloadBytes(payload, this.maxPayloadBytes, -1);
      if (this.#roomWaiters.length === 0) {
        const shard = this.#route.select(hash);
        if (!this.#mustWait(shard, bytes)) return Promise.resolve(this.#accept(hash, shard, payload, bytes, 0));
      }
      return new Promise<boolean>((resolve, reject) => {
        this.#roomWaiters.push({ hash, bytes, payload, resolve, reject });
        this.#wakeRoomWaiters();
      });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * A Node Writable in object mode taking `{ key, payload }` records, as
   * ShardManager.writable(): while a shard's send buffer is full (failProducer) a write waits
   * for room instead of failing, so `write()` returns false once `highWaterMark` records are
   * held and 'drain' follows once the node stored enough: `stream.pipeline(source,
   * node.writable())` gets backpressure. Records dropped by dropNewest/sample or unrouted
   * count as push() counts them; a write that waits is not a drop.
   */
  writable(options?: WritableOptions): Writable {
    return createTargetWritable(this.#pushTarget(), options);
  }

  /** The same as a WHATWG WritableStream: a write's promise settles once the record is in a
   *  send buffer, and the writer's `ready` waits while the stream's queue is full. */
  writableStream(options?: WritableOptions): WritableStream<ManagerRecord> {
    return createTargetWritableStream(this.#pushTarget(), options);
  }

  #pushTarget(): PushTarget {
    return {
      push: (key, payload) => {
        if (this.#closed) throw new ManagerClosedError('push');
        // A full shard is refused without counting a drop: the writer waits, nothing is lost.
        const hash = keyHash(key, 'push');
        const bytes = payloadBytes(payload, this.maxPayloadBytes, -1);
        const shard = this.#route.select(hash);
        if (this.#mustWait(shard, bytes)) throw new BackpressureError(`shard ${shard}'s send buffer is full`, shard);
        return this.#accept(hash, shard, payload, bytes, 0);
      },
      roomFor: (record, _shard, cancelled) =>
        new Promise<void>((resolve, reject) => {
          if (this.#closed || cancelled()) {
            resolve();
            return;
          } // push() then says what happened
          let hash: number;
          let bytes: number;
          try {
            hash = keyHash(record.key, 'push');
            bytes = payloadBytes(record.payload, this.maxPayloadBytes, -1);
          } catch {
            resolve(); // push() throws the same error, where the stream reports it
            return;
          }
          this.#roomWaiters.push({ hash, bytes, payload: undefined, resolve: () => resolve(), reject });
          this.#wakeRoomWaiters();
        }),
    };
  }

  /** Would an event of `bytes` routed to `shard` meet failProducer's full buffer? */
  #mustWait(shard: number, bytes: number): boolean {
    if (this.backpressure.kind !== 'failProducer' || shard === NO_SHARD) return false;
    return this.#buffer.full(this.#buffer.queue(shard), bytes);
  }

  /** Let waiters on through shards that have room now, in call order: one that still waits
   *  holds back every later waiter of its shard, so a shard takes them in order. */
  #wakeRoomWaiters(): boolean {
    if (this.#roomWaiters.length === 0) return false;
    const waiting: RoomWaiter[] = [];
    const blocked = new Set<number>();
    const waiters = this.#roomWaiters;
    this.#roomWaiters = [];
    for (const w of waiters) {
      if (this.#closed) {
        if (w.payload === undefined)
          w.resolve(false); // the writable's push throws ManagerClosedError
        else w.reject(new ManagerClosedError('pushAsync'));
        continue;
      }
      const shard = this.#route.select(w.hash);
      if (blocked.has(shard) || this.#mustWait(shard, w.bytes)) {
        blocked.add(shard);
        waiting.push(w);
        continue;
      }
      if (w.payload === undefined) {
        w.resolve(false);
        continue;
      }
      try {
        w.resolve(this.#accept(w.hash, shard, w.payload, w.bytes, 0));
      } catch (error) {
        w.reject(error);
      }
    }
    const woken = waiters.length > waiting.length;
    this.#roomWaiters = waiting.concat(this.#roomWaiters);
    return woken;
  }

  /** The key-order fence of this node (a no-op unless enabled). */
  #keyOrderFence(enabled: boolean, route: readonly number[]): KeyOrder {
    return new KeyOrder(enabled, route, {
      markFor: (shard) => this.#buffer.markFor(shard),
      hasQueue: (shard) => this.#buffer.has(shard),
      inTable: (shard) => this.#inTable(shard),
      ackedFrames: async (shards) => {
        const field = markField(this.nodeId);
        const replies = await sendAll(
          this.#conn.client,
          shards.map((id): Command => ['hget', this.#keys.progress(id), field]),
        );
        return replies.map(([error, value]) => {
          if (error) throw error;
          const frame = value === null || value === undefined ? -1 : Number(String(value).split(':')[0]);
          return Number.isFinite(frame) ? frame : -1;
        });
      },
      release: (shard, events: HeldEvent[]) => {
        this.#buffer.release(shard, events);
        this.#settleWaiters();
      },
      error: (error) => this.#redisError(error),
      now: () => this.#clock(),
    });
  }

  // ---- sending --------------------------------------------------------------------------

  #kick(): void {
    if (this.#sending || this.#sendTimer !== undefined || this.#abandoned) return;
    this.#sendTimer = setTimeout(() => {
      this.#sendTimer = undefined;
      void this.#send();
    }, this.#lingerMs);
  }

  /** Rounds of one pipelined XADD per shard with data, until every buffer is empty or
   *  waits out its own backoff (a shard whose send failed is held; the others go on). */
  async #send(): Promise<void> {
    if (this.#sending) return;
    this.#sending = true;
    try {
      for (;;) {
        if (this.#abandoned) break; // a close gave up: its connections are gone
        const batch = this.#buffer.cut();
        if (batch.length === 0) break;
        // Each frame's events are counted in its shard's backlog (`in`) just before its XADD,
        // in the same pipeline (a script doing both would pass the frame through Lua: twice the
        // cost of the XADD). A node that dies between the two has counted one frame it did not
        // store; the count is set right when the stream next empties (smCommit).
        const replies = await sendAll(
          this.#conn.client,
          batch.flatMap((f): Command[] => [
            ['hincrby', this.#keys.progress(f.shard), PROGRESS.in, f.hashes.length],
            ['xadd', this.#keys.stream(f.shard), 'NOMKSTREAM', '*', 'n', this.nodeId, 's', f.seq, 'c', f.hashes.length, 'd', f.data],
          ]),
        );
        let failed: Error | undefined;
        const refused: Frame[] = [];
        batch.forEach((frame, i) => {
          const [replyError, id] = replies[2 * i + 1]!; // the XADD's (the count's is not needed)
          if (id === null && !replyError) {
            refused.push(frame); // stays in flight until #refused decides
            return;
          }
          // Anything but an entry id is not a store: a client or proxy that paired replies
          // wrongly would otherwise have us drop a frame Redis never saw (sent again instead:
          // a copy Redis did store is skipped by the consumers' marks).
          const error = replyError ?? (isEntryId(id) ? undefined : unexpectedReply(frame.shard, id));
          if (error) {
            failed ??= error;
            frame.unanswered = true;
            this.#buffer.frameUnsent(frame); // sent again first: per-shard order holds, same dedup id
            this.#hold(frame.shard);
          } else {
            this.#buffer.frameStored(frame);
          }
        });
        if (refused.length > 0) await this.#refused(refused);
        if (failed) {
          this.#retries++;
          this.#redisError(failed);
        } else if (refused.length === 0 && !this.#buffer.anyHeld()) {
          this.#lastError = undefined; // the next failure is news again
        }
        this.#settleWaiters();
        // Producers let on by this round refill the buffers before the next round is cut
        // (else it would carry the one event each of them put in so far).
        if (this.#wakeRoomWaiters()) await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      this.#sending = false;
      this.#settleWaiters();
      this.#wakeRoomWaiters();
      if (this.#buffer.sendable()) this.#kick();
    }
  }

  /** Hold a shard whose send failed: it is tried again after its own backoff (20 ms,
   *  doubling to 1 s), while the other shards keep sending. */
  #hold(shard: number): void {
    const ms = this.#buffer.hold(shard);
    this.#clearHold(shard);
    if (this.#abandoned) return; // no retry after a close gave up
    this.#holdTimers.set(
      shard,
      setTimeout(() => {
        this.#holdTimers.delete(shard);
        this.#buffer.unhold(shard);
        this.#kick();
      }, ms),
    );
  }

  #clearHold(shard: number): void {
    const timer = this.#holdTimers.get(shard);
    if (timer !== undefined) clearTimeout(timer);
    this.#holdTimers.delete(shard);
  }

  #inTable(id: number): boolean {
    return this.#table.doc.shards.some((s) => s.id === id);
  }

  /** XADD NOMKSTREAM found no stream: the shard was removed (route the events again), or the
   *  stream is missing under a shard the table still has (an eviction, a failover, an
   *  operator's DEL): keep them, hold that shard alone and retry, reported once. */
  async #refused(frames: Frame[]): Promise<void> {
    await this.#refresh(); // the shard's queue is in flight: #apply left it for us
    for (const frame of frames) {
      if (this.#inTable(frame.shard)) {
        this.#buffer.frameUnsent(frame);
        this.#hold(frame.shard);
        if (this.#buffer.firstMissing(frame.shard)) {
          this.#emit({
            type: 'redisError',
            error: new Error(
              `shard-mapper/redis: the stream of shard ${frame.shard} is missing though the table lists it; its events wait in the send buffer and are retried`,
            ),
            at: this.#clock(),
          });
        }
      } else if (frame.unanswered) await this.#settleUnanswered(frame);
      else this.#reroute(frame.shard, [frame]);
    }
  }

  /**
   * A frame whose earlier XADD went unanswered, refused now because its shard was removed:
   * Redis may have stored it then, and its consumer acknowledged it before the removal. The
   * removed shard's progress hash (kept for PROGRESS_RETAIN_MS after removal) says: if this
   * node's mark there reached the frame, it was consumed — it is stored, not routed again (that
   * would deliver it twice under a new dedup id). Otherwise, or once the hash is gone, its
   * events are routed again. Redis away: the frame waits and is retried.
   */
  async #settleUnanswered(frame: Frame): Promise<void> {
    let mark: AckedPosition | undefined;
    try {
      mark = (await readAckedPositions(this.#conn.client, this.#keys, frame.shard)).get(this.nodeId);
    } catch (error) {
      this.#buffer.frameUnsent(frame);
      this.#hold(frame.shard);
      this.#redisError(error);
      return;
    }
    if (mark && mark.frame >= frame.seq) {
      // Stored and consumed: it leaves the buffer (with it the removed shard's queue, when
      // nothing else waits there); whatever else waits goes to the new table's shards.
      this.#buffer.frameStored(frame);
      if (this.#buffer.has(frame.shard)) this.#reroute(frame.shard, []);
    } else this.#reroute(frame.shard, [frame]);
  }

  /** Route every event of a removed shard's queue again (refused frames first, in order). */
  #reroute(shard: number, refused: Frame[]): void {
    this.#clearHold(shard);
    this.#buffer.reroute(shard, refused);
  }

  #settleWaiters(): void {
    if (this.#waiters.length === 0) return;
    const oldest = this.#buffer.oldestUnstored();
    this.#waiters = this.#waiters.filter((w) => {
      if (oldest > w.target) {
        w.resolve();
        return false;
      }
      return true;
    });
  }

  /** Resolves once every event accepted before the call is stored in Redis (it waits
   *  through Redis outages: the send buffer retries until Redis answers). A flush that does
   *  not resolve holds nothing: to bound the wait, race it with a timer. If a
   *  close({ timeoutMs }) gives up first, it rejects with that close's CloseTimeoutError. */
  flush(): Promise<void> {
    const target = this.#buffer.accepted;
    return new Promise<void>((resolve, reject) => {
      this.#waiters.push({ target, resolve, reject });
      this.#settleWaiters();
      if (this.#abandoned) {
        for (const w of this.#waiters) w.reject(this.#abandoned);
        this.#waiters = [];
        return;
      }
      if (this.#buffer.buffered > 0) this.#kick();
    });
  }

  stats(): RedisManagerStats {
    const states = new Map(this.#table.doc.shards.map((s) => [s.id, s.state] as const));
    const buffer = this.#buffer;
    const drops = buffer.drops();
    return {
      pushed: buffer.accepted,
      stored: buffer.stored,
      buffered: buffer.buffered,
      dropped: drops.newest + drops.oldest + drops.sampled,
      drops, // refusals (failProducer) are not drops
      unrouted: this.#unrouted,
      rerouted: buffer.rerouted,
      retries: this.#retries,
      keyOrder: this.#keyOrder.stats(),
      shards: this.#table.doc.shards.map((s) => ({
        id: s.id,
        state: states.get(s.id)!,
        buffered: (buffer.get(s.id)?.events ?? 0) + this.#keyOrder.heldEvents(s.id),
      })),
    };
  }

  /**
   * This node's figures in the shape the Prometheus exporter reads
   * (`registerShardManagerMetrics(...).observe(node.metricsView())`), per node: `pushed` =
   * events this node accepted, `delivered` = events it stored in Redis, `inFlight` and a
   * shard's `length` = its send buffer; shards are the table's. Window figures
   * (`lastMetrics`) exist on the node that is the controller.
   */
  metricsView(): ObservedManager & { readonly ringBufferBytes: number } {
    return {
      stats: () => {
        const s = this.stats();
        return {
          pushed: s.pushed,
          delivered: s.stored,
          dropped: s.dropped,
          unrouted: s.unrouted,
          drops: s.drops,
          inFlight: s.buffered,
          skipped: 0, // no ring here: a node's send buffer is written whole or not at all
          shards: s.shards.map((x) => {
            const c = this.#buffer.counts(x.id);
            return {
              id: x.id,
              state: x.state,
              length: x.buffered,
              bytes: this.#buffer.get(x.id)?.bytes ?? 0,
              pushed: c?.pushed ?? 0,
              delivered: c?.stored ?? 0,
              dropped: c?.dropped ?? 0,
            };
          }),
        };
      },
      ringCapacity: this.ringBufferCapacity,
      ringBufferBytes: this.ringBufferBytes,
      mapper: {
        lastMetrics: (id) => this.#controller?.lastMetrics(id),
        policy: () => this.policy(),
        shardIdsLeft: () => shardIdsLeftFrom(this.#table.doc.nextId), // the namespace's ids (its table)
      },
    };
  }

  /** Run one metrics window now (table check, push counts, controller); for tests and tools. */
  async tick(): Promise<void> {
    if (this.#closed) return;
    while (this.#stepping) await sleep(1);
    await this.#window();
  }

  // ---- operator calls -------------------------------------------------------------------
  // Queued in Redis for the controller (whichever node holds the lease), which runs them in
  // its next window through its mapper's own calls, as ShardManager's operator calls do.
  // Each call is one request with its own id: the controller takes it off the queue in the
  // same script that writes what it did and its answer, and a caller that gives up
  // (timeoutMs, signal) withdraws it in one script too: a call acts once or not at all.

  /** Add one shard now (no cooldown: an operator's call); resolves to its id once this node routes to it. */
  async addShard(options?: OperatorCallOptions): Promise<number> {
    return (await this.#scaleUp('addShard', 1, options))[0]!;
  }

  /** Add n shards (scaleUpProvisioningForce: the budget applies, the cooldown does not);
   *  resolves to their ids once they are Active in this node's table. */
  async manualScaleUp(n: number, options?: OperatorCallOptions): Promise<number[]> {
    return this.#scaleUp('manualScaleUp', n, options);
  }

  async #scaleUp(method: string, n: number, options: OperatorCallOptions | undefined): Promise<number[]> {
    if (this.#closed) throw new ManagerClosedError('manualScaleUp');
    checkInteger('n', n, 0, 0xffff);
    const call = callLimits(method, options, this.#answerLimitMs());
    if (n === 0) return [];
    const ids = await requestOperation(this.#conn.client, this.#keys, this.nodeId, { op: 'scaleUp', n }, call);
    await this.#untilTable(
      () => ids.every((id) => this.#stateOf(id) !== 'provisioning'),
      call,
      () =>
        `the shards ${ids.join(', ')} were added but this node has not seen them active yet; they become active at the controller's next window`,
    );
    return ids;
  }

  /** Start draining a shard (it leaves every node's route); resolves once draining began. */
  async drainShard(id: number, options?: OperatorCallOptions): Promise<void> {
    if (this.#closed) throw new ManagerClosedError('drainShard');
    this.#checkShard('drainSpecific', id);
    const call = callLimits('drainShard', options, this.#answerLimitMs());
    await requestOperation(this.#conn.client, this.#keys, this.nodeId, { op: 'drain', id }, call);
    await this.#untilTable(
      () => this.#stateOf(id) !== 'active',
      call,
      () => `shard ${id} is draining, this node has not seen it yet`,
    );
  }

  /**
   * Drain a shard and resolve once it is removed: its stream emptied, acknowledged, deleted.
   * Removal waits for consumers to empty the stream; `timeoutMs` (default
   * max(10 min, 600 × metricsWindowMs)) or `signal` end the wait: the shard stays draining,
   * is removed once its stream is empty, and calling removeShard(id) again waits for it.
   */
  async removeShard(id: number, options?: OperatorCallOptions): Promise<void> {
    if (this.#closed) throw new ManagerClosedError('removeShard');
    this.#checkShard('removeShard', id);
    const call = callLimits('removeShard', options, this.#removalLimitMs());
    await requestOperation(this.#conn.client, this.#keys, this.nodeId, { op: 'remove', id }, call);
    await this.#untilTable(
      () => this.#stateOf(id) === undefined,
      call,
      () =>
        `shard ${id} is still ${this.#stateOf(id) ?? 'listed'}: it stays draining and is removed once consumers have emptied its stream; call removeShard(${id}) again to wait for it`,
    );
  }

  /** Drain the n least-loaded Active shards (refused below minShards: AtMinShards) and
   *  resolve to their ids once all are removed (a timeout or abort ends the wait as in removeShard). */
  async manualScaleDown(n: number, options?: OperatorCallOptions): Promise<number[]> {
    if (this.#closed) throw new ManagerClosedError('manualScaleDown');
    checkInteger('n', n, 0, 0xffff);
    const call = callLimits('manualScaleDown', options, this.#removalLimitMs());
    if (n === 0) return [];
    const ids = await requestOperation(this.#conn.client, this.#keys, this.nodeId, { op: 'scaleDown', n }, call);
    await this.#untilTable(
      () => ids.every((id) => this.#stateOf(id) === undefined),
      call,
      () =>
        `shards ${ids.filter((id) => this.#stateOf(id) !== undefined).join(', ')} are still draining: they are removed once consumers have emptied their streams; call removeShard(id) for each to wait for them`,
    );
    return ids;
  }

  /** How long a call waits for the controller's answer by default. */
  #answerLimitMs(): number {
    return Math.max(30_000, 20 * this.#table.doc.policy.metricsWindowMs);
  }

  /** How long removeShard / manualScaleDown wait for the removal by default. */
  #removalLimitMs(): number {
    return Math.max(600_000, 600 * this.#table.doc.policy.metricsWindowMs);
  }

  #stateOf(id: number): TableState | undefined {
    return this.#table.doc.shards.find((s) => s.id === id)?.state;
  }

  #checkShard(method: string, id: number): void {
    if (typeof id !== 'number' || !Number.isInteger(id)) throw invalid(`${method}: shard id must be an integer, got ${describe(id)}`);
    if (!this.#inTable(id)) throw invalid(`${method}: unknown shard ${id}`);
  }

  /** Wait until `done()` holds for the table this node follows: woken by each table it
   *  applies (the change notification), reading the table at least once a second meanwhile. */
  async #untilTable(done: () => boolean, call: CallLimits, pending: () => string): Promise<void> {
    const everyMs = Math.min(1000, this.#table.doc.policy.metricsWindowMs);
    while (!done()) {
      if (call.signal?.aborted) throw call.signal.reason;
      const left = call.deadline - performance.now();
      if (left <= 0)
        throw new OperatorTimeoutError(`shard-mapper/redis: ${call.method}: ${pending()} (waited ${call.timeoutMs} ms)`, 'waiting');
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          this.#tableWaiters.delete(wake);
          call.signal?.removeEventListener('abort', wake);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(everyMs, left));
        this.#tableWaiters.add(wake);
        call.signal?.addEventListener('abort', wake, { once: true });
      });
      // Bounded: a Redis that does not answer must not hold the call past its limit.
      if (!done()) await within(this.#refresh(), call.deadline, call.signal);
    }
  }

  // ---- shutting down --------------------------------------------------------------------

  /**
   * Stop accepting pushes (waiting pushAsync calls reject with ManagerClosedError), store every
   * accepted event, give up the controller lease, close the connections this node opened.
   * Waits through Redis outages: without `timeoutMs` it resolves only once Redis has stored
   * every accepted event.
   *
   * `timeoutMs` (ms of real time) bounds the whole close, for a shutdown with a deadline (a
   * SIGTERM handler): past it, if accepted events are still not stored in Redis, the node is
   * closed anyway — its connections ended, its timers stopped, nothing left to keep the
   * process running — and close rejects with a CloseTimeoutError whose `undelivered` counts
   * those events: they are **lost** (pending flush() calls reject with the same error). If
   * everything was stored by then, the connections are ended as well and close resolves (the
   * controller lease, if this node held it, then expires by itself). A call while an earlier
   * one is under way returns the earlier one's promise; a `timeoutMs` given to it bounds
   * that close too (the earliest deadline wins).
   */
  close(options?: { timeoutMs?: number }): Promise<void> {
    let timeoutMs: number | undefined;
    try {
      timeoutMs = closeTimeout(options);
    } catch (error) {
      return Promise.reject(error);
    }
    if (!this.#closing) {
      this.#closed = true;
      this.#wakeRoomWaiters(); // waiting pushes were not accepted: they fail as a push would now
      this.#closing = new Promise<void>((resolve, reject) => {
        let settled = false;
        const settle = (error?: unknown) => {
          if (settled) return;
          settled = true;
          this.#giveUp = undefined;
          if (this.#closeTimer !== undefined) clearTimeout(this.#closeTimer);
          this.#closeTimer = undefined;
          if (error === undefined) resolve();
          else reject(error);
        };
        this.#giveUp = (ms) => settle(this.#abandon(ms));
        this.#shutDown().then(
          () => settle(),
          (error: unknown) => settle(error ?? new Error('close failed')),
        );
      });
    }
    // A timer past MAX_TIMER_MS would fire at once (Node cuts it to 1 ms) and give every buffered
    // event up: a deadline that far off (about 24.8 days) is no deadline.
    if (timeoutMs !== undefined && timeoutMs <= MAX_TIMER_MS && this.#giveUp) {
      const deadline = performance.now() + timeoutMs;
      if (deadline < this.#closeDeadline) {
        this.#closeDeadline = deadline;
        if (this.#closeTimer !== undefined) clearTimeout(this.#closeTimer);
        this.#closeTimer = setTimeout(() => this.#giveUp?.(timeoutMs), timeoutMs);
      }
    }
    return this.#closing;
  }

  /** The close without a deadline: everything stored, the goodbyes said, the connections closed. */
  async #shutDown(): Promise<void> {
    await this.flush();
    this.#stopTimers();
    while (this.#stepping) await sleep(2);
    // This node sends nothing more: its dedup marks can go once the shards it stored frames
    // in hold none of them (smCommit). Best effort: kept marks cost only memory.
    const sentTo = this.#table.doc.shards.filter((s) => (this.#buffer.counts(s.id)?.stored ?? 0) > 0);
    await sendAll(
      this.#conn.client,
      sentTo.map((s): Command => ['sadd', this.#keys.closedNodes(s.id), this.nodeId]),
    );
    await this.#controller?.release();
    this.#sub.disconnect();
    await closeConnection(this.#conn);
  }

  /** The key-order waits, the shards' retry holds and the metrics window: what runs on
   *  this node's timers (the send timer aside), stopped by either end of a close. */
  #stopTimers(): void {
    this.#keyOrder.close();
    for (const shard of [...this.#holdTimers.keys()]) this.#clearHold(shard);
    if (this.#windowTimer !== undefined) clearInterval(this.#windowTimer);
  }

  /**
   * close({ timeoutMs }) past its deadline: stop sending and every timer, end both
   * connections at once (no QUIT: Redis may be away), and say what was lost. Returns the
   * CloseTimeoutError to reject with, or undefined when every accepted event was stored.
   */
  #abandon(timeoutMs: number): CloseTimeoutError | undefined {
    const lost = this.#buffer.buffered;
    const error = new CloseTimeoutError(
      timeoutMs,
      lost,
      `shard-mapper/redis: close: ${lost} accepted event(s) were not stored in Redis within ${timeoutMs} ms (Redis away or too slow); ` +
        'the node was closed anyway and those events are lost',
    );
    this.#abandoned = error;
    if (this.#sendTimer !== undefined) clearTimeout(this.#sendTimer);
    this.#sendTimer = undefined;
    this.#stopTimers();
    this.#sub.disconnect();
    dropConnection(this.#conn); // commands under way reject: the sender stops
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.reject(error); // the close's own flush included: #shutDown ends there
    return lost > 0 ? error : undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** What a node does while Redis cannot be reached (said with the outage it reports). */
const NODE_OUTAGE =
  'this node keeps the events it accepted in its send buffer and sends them again, in order, when Redis answers (ioredis reconnects on its own)';

/** A stream entry id as XADD returns it (`<ms>-<seq>`). */
function isEntryId(reply: unknown): boolean {
  return typeof reply === 'string' && /^\d+-\d+$/.test(reply);
}

function unexpectedReply(shard: number, reply: unknown): Error {
  const shown = typeof reply === 'string' ? reply : (JSON.stringify(reply) ?? String(reply));
  return new Error(
    `shard-mapper/redis: XADD to shard ${shard} was answered with ${shown.slice(0, 80)}, not an entry id (replies paired with the wrong commands?); the frame is sent again`,
  );
}
