// The scaling loop of a namespace. Every node runs one Controller; exactly one of them holds
// the lease (SET NX PX, renewed every metrics window) and acts. Its table writes go through a
// script that checks the lease token, so a controller that stalled past its lease cannot
// change the table afterwards; on a standalone server the streams it creates go through one
// too (see #ensureStreams for a Cluster).
//
// It keeps a local ShardMapper whose Active shards mirror the table's, feeds its collectors
// from Redis (backlog = events appended, counted by the nodes with each XADD, − events of the
// entries acknowledged, counted by the acknowledging script, as the fill; events appended in
// the window, as the rate; the consumers' batch times, as the flush latency), and runs the
// mapper's own collectMetrics / evaluateScaling / scaleUpProvisioning / scaleDown, so the
// thresholds, warm-up, idle streaks and cooldowns are exactly ShardManager's. The clocks
// behind them (last scaling, each shard's activation and idle streak) are stored with the
// table, so a new controller, or this one after an error rebuilt its mapper, goes on from them.
import { randomUUID } from 'node:crypto';
import { DECISION_CLOCKS, MAX_SHARD_ID, ShardMapper, type DecisionClocks } from '../mapper.js';
import { ScalingError } from '../errors.js';
import type { ManagerEvent } from '../types.js';
import type { ShardMetrics } from '../metrics.js';
import { GROUP, TABLE_FORMAT, type Keys } from './keys.js';
import { sendAll, type Command, type Connection, type Reply } from './connection.js';
import type { OperatorAnswer, OperatorRequest } from './operator.js';
import { PROGRESS, PROGRESS_RETAIN_MS } from './progress.js';
import {
  activeIds,
  compareHeads,
  explainTableError,
  isAhead,
  newEpoch,
  readTable,
  readTableIfCreated,
  RouteBuilder,
  writeTable,
  type AnsweredRequest,
  type Table,
  type TableDoc,
} from './table.js';

/** What only the distributed mode reports (options.onRedisEvent): the controller lease
 *  changing hands on this node, Redis failures (each kind once until it clears), Redis
 *  losing data (seen by a node, then the namespace recovered by the controller), and a
 *  shard's stream the controller had to create again (it had disappeared). */
export type RedisNodeEvent =
  | { type: 'controller'; acquired: boolean; nodeId: string; at: number }
  | { type: 'redisError'; error: Error; at: number }
  | { type: 'redisDataLoss'; stage: 'detected' | 'recovered'; generation: number; detail: string; at: number }
  | { type: 'streamRecreated'; shardId: number; at: number };
/** Everything a node reports: ShardManager's events (options.onEvent) and RedisNodeEvent. */
export type RedisManagerEvent = ManagerEvent | RedisNodeEvent;

export interface ControllerHost {
  conn: Connection;
  keys: Keys;
  nodeId: string;
  leaseMs: number;
  drainGraceMs: number;
  clock: () => number;
  emit(event: RedisManagerEvent): void;
  /** A failure that does not stop the pass (once per kind, as redisError). */
  report(error: Error): void;
  /** A table this controller just wrote (the node applies it without waiting for pub/sub). */
  applyTable(table: Table): void;
  /** The table this node follows (what it knew before Redis lost data). */
  knownTable(): Table;
}

/** Cap on the events fed to a collector per window (one WebAssembly call each). */
const MAX_EVENTS_PER_WINDOW = 1_000_000;
/** Operator requests run per window. */
const REQUESTS_PER_WINDOW = 16;

interface DrainWatch {
  /** clock() when this controller saw the drain begin (or took over a draining shard). */
  since: number;
  lastId: string | undefined;
  /** clock() when the stream's last id last changed (or was first read). */
  quietSince: number;
}

/** The decision clocks as stored: Redis-clock milliseconds (null: long ago / not idle). */
interface StoredClocks {
  scaledAt: number | null;
  shards: Record<string, [number | null, number | null]>;
}

/** What live nodes reported after Redis lost data ({ns}:floor). */
interface Floor {
  nextId: number;
  needGen: number;
  node: number;
}

const clone = (doc: TableDoc): TableDoc => JSON.parse(JSON.stringify(doc)) as TableDoc;

function streamInfo(reply: Reply): { length: number; lastId: string } {
  const [error, value] = reply;
  if (error) {
    if (/no such key/i.test(error.message)) return { length: 0, lastId: '' };
    throw error;
  }
  const arr = value as unknown[];
  let length = 0;
  let lastId = '';
  for (let i = 0; i + 1 < arr.length; i += 2) {
    if (arr[i] === 'length') length = Number(arr[i + 1]);
    else if (arr[i] === 'last-generated-id') lastId = String(arr[i + 1]);
  }
  return { length, lastId };
}

/** Streams and their consumer group of a namespace being created (no lease yet: the node
 *  that created the table makes them before anything can route to them). */
export async function createGroups(conn: Connection, keys: Keys, ids: number[]): Promise<void> {
  const replies = await sendAll(
    conn.client,
    ids.map((id) => ['xgroup', 'CREATE', keys.stream(id), GROUP, '0', 'MKSTREAM']),
  );
  for (const [error] of replies) if (error && !/BUSYGROUP/.test(error.message)) throw error;
}

/** A new shard would need an id past MAX_SHARD_ID (65535 is the route's "no shard"). */
function checkIdRoom(doc: TableDoc, count: number, method: string): void {
  if (doc.nextId + count - 1 > MAX_SHARD_ID) {
    throw new ScalingError(
      'AtMaxShards',
      `${method}: cannot add ${count} shard(s): ids would pass ${MAX_SHARD_ID} (next id ${doc.nextId}; shard ids are never reused in a namespace, 65535 means "no shard")`,
    );
  }
}

export class Controller {
  readonly #host: ControllerHost;
  #token = '';
  #leader = false;
  #mapper: ShardMapper | undefined;
  #routes: RouteBuilder | undefined;
  #toLocal = new Map<number, number>();
  #toShard = new Map<number, number>();
  /** Per shard: events appended (the progress hash's `in`) at the last window. */
  #prevIn = new Map<string, number>();
  #prevFlush = new Map<string, number>();
  #drains = new Map<number, DrainWatch>();
  /** This pass's pair of readings (Redis's clock, ms; clock()) to translate decision clocks. */
  #base = { redis: 0, local: 0 };
  /** The decision clocks (local readings) last written, to write them only when they change. */
  #clocksWritten = '';

  constructor(host: ControllerHost) {
    this.#host = host;
  }

  get leader(): boolean {
    return this.#leader;
  }

  /** The metrics of an Active shard in the last window this controller collected (with the
   *  namespace's shard id), or undefined (not the controller, or not Active). */
  lastMetrics(shardId: number): ShardMetrics | undefined {
    const local = this.#toLocal.get(shardId);
    const m = local === undefined ? undefined : this.#mapper?.lastMetrics(local);
    return m ? { ...m, shardId } : undefined;
  }

  /** One metrics window: take or renew the lease, then (as the controller) one pass. */
  async step(): Promise<void> {
    const { conn, keys, leaseMs } = this.#host;
    const client = conn.client;
    if (!this.#leader) {
      const token = `${this.#host.nodeId}:${randomUUID()}`;
      if ((await client.set(keys.lease, token, 'PX', leaseMs, 'NX')) !== 'OK') return;
      this.#token = token;
      this.#leader = true;
      this.#reset(true);
      this.#host.emit({ type: 'controller', acquired: true, nodeId: this.#host.nodeId, at: this.#host.clock() });
    } else if (Number(await client.smRenew(keys.lease, this.#token, leaseMs)) !== 1) {
      this.#lose();
      return;
    }
    try {
      await this.#pass();
    } catch (error) {
      const m = (error as Error).message;
      if (m.includes('SMFENCED')) this.#lose();
      else {
        // Start again from the table as Redis has it. The decision clocks are in Redis too:
        // the rebuilt mapper goes on from them (an error restarts no cooldown, warm-up or streak).
        this.#reset(false);
        if (!m.includes('SMSTALE') && !m.includes('SMWITHDRAWN')) throw error;
      }
    }
  }

  /** Give the lease up (close()): another node takes over at its next window. */
  async release(): Promise<void> {
    if (!this.#leader) return;
    this.#leader = false;
    try {
      await this.#host.conn.client.smRelease(this.#host.keys.lease, this.#token);
    } catch {
      /* it expires by itself */
    }
  }

  #lose(): void {
    this.#leader = false;
    this.#reset(true);
    this.#host.emit({ type: 'controller', acquired: false, nodeId: this.#host.nodeId, at: this.#host.clock() });
  }

  /** Forget the local mirror; `all`: also the window counters (a new term as controller). */
  #reset(all: boolean): void {
    this.#mapper = undefined;
    this.#toLocal.clear();
    this.#toShard.clear();
    this.#drains.clear();
    this.#clocksWritten = '';
    if (all) {
      // Counters of the last window: kept after an error, so the next window's rate is real.
      this.#prevIn.clear();
      this.#prevFlush.clear();
    }
  }

  /** This controller's route builder (the namespace's routing mode and policy never change). */
  #route(doc: TableDoc): RouteBuilder {
    return (this.#routes ??= new RouteBuilder(doc));
  }

  /** A local mapper whose Active shards are the table's, with the stored decision clocks
   *  (none stored: activated long ago, no cooldown stamp, no idle streak). */
  #buildMapper(doc: TableDoc, stored: StoredClocks | undefined): ShardMapper {
    const ids = activeIds(doc);
    const mapper = new ShardMapper(ids.length, doc.shardCapacity, doc.policy, {
      clock: this.#host.clock,
      memory: 'single',
      routing: doc.routing,
      loadBound: doc.loadBound,
    } as ConstructorParameters<typeof ShardMapper>[3]);
    this.#toLocal.clear();
    this.#toShard.clear();
    ids.forEach((id, local) => {
      this.#toLocal.set(id, local);
      this.#toShard.set(local, id);
    });
    this.#mapper = mapper;
    if (stored) mapper[DECISION_CLOCKS](this.#clocksFromRedis(stored));
    this.#clocksWritten = this.#localClocksKey();
    return mapper;
  }

  // ---- decision clocks ------------------------------------------------------------------
  // Stored in Redis's clock: every controller talks to the same Redis, while clock() readings
  // mean nothing in another process (performance.now() starts at each process's start, and an
  // injected clock is the caller's). A stamp is stored as Redis's time minus its age on this
  // controller's clock, and read back as clock() minus its age on Redis's clock: ages measured
  // on the controller's own clock while it runs, on Redis's between controllers.

  #clocksFromRedis(stored: StoredClocks): DecisionClocks {
    const toLocal = (r: number | null, none: number | undefined) => (r === null ? none : this.#base.local - (this.#base.redis - r));
    const shards = new Map<number, { activatedAt: number; idleSince: number | undefined }>();
    for (const [id, [activated, idle]] of Object.entries(stored.shards)) {
      const local = this.#toLocal.get(Number(id));
      if (local !== undefined) shards.set(local, { activatedAt: toLocal(activated, -Infinity)!, idleSince: toLocal(idle, undefined) });
    }
    return { lastScalingAt: toLocal(stored.scaledAt, -Infinity)!, shards };
  }

  #clocksForRedis(): string {
    const c = this.#mapper![DECISION_CLOCKS]();
    const toRedis = (v: number | undefined) =>
      v === undefined || !Number.isFinite(v) ? null : Math.round(this.#base.redis - (this.#base.local - v));
    const out: StoredClocks = { scaledAt: toRedis(c.lastScalingAt), shards: {} };
    for (const [local, v] of c.shards) {
      const id = this.#toShard.get(local);
      if (id !== undefined) out.shards[id] = [toRedis(v.activatedAt), toRedis(v.idleSince)];
    }
    return JSON.stringify(out);
  }

  /** The clocks in local readings (changes only when a stamp changes, unlike the Redis form). */
  #localClocksKey(): string {
    const c = this.#mapper![DECISION_CLOCKS]();
    return JSON.stringify([
      c.lastScalingAt,
      [...c.shards].map(([local, v]) => [this.#toShard.get(local), v.activatedAt, v.idleSince ?? null]),
    ]);
  }

  /** Redis's clock and the stored clocks, read together with clock(). */
  async #readClocks(): Promise<StoredClocks | undefined> {
    const { conn, keys, clock } = this.#host;
    const [ms, json] = (await conn.client.smClocks(keys.table)) as [string, string | null];
    this.#base = { redis: Number(ms), local: clock() };
    if (!json) return undefined;
    try {
      return JSON.parse(json) as StoredClocks;
    } catch {
      return undefined; // unreadable: start afresh rather than stop the loop
    }
  }

  // ---- writes ---------------------------------------------------------------------------

  /** The fenced write of `doc` (undefined: the table unchanged), with the decision clocks
   *  and, when given, an operator request's answer. */
  async #write(table: Table, doc: TableDoc | undefined, request?: AnsweredRequest): Promise<Table> {
    const { conn, keys } = this.#host;
    const clocks = this.#mapper ? this.#clocksForRedis() : undefined;
    const version = await writeTable(conn.client, keys, this.#token, table, doc, { clocks, request });
    if (this.#mapper) this.#clocksWritten = this.#localClocksKey();
    if (doc === undefined) return table;
    const next = { ...table, version, doc };
    this.#host.applyTable(next);
    return next;
  }

  #emit(type: 'shardProvisioned' | 'shardActivated' | 'shardDraining' | 'shardStopped' | 'shardRemoved', shardId: number): void {
    this.#host.emit({ type, shardId, at: this.#host.clock() });
  }

  /**
   * Make sure every shard the table lists as provisioning, active or draining has its stream
   * and group (a stream can disappear: eviction, a failover, an operator's DEL, Redis losing
   * data; a creator can die before making it). Returns the ids whose stream or group was made.
   *
   * Standalone: one script checks the lease token, the epoch and the table's states and
   * creates in the same step, so a controller that lost its lease creates nothing. Cluster:
   * the streams live in other hash slots than the lease, so no script can do both. There a
   * group is added to an existing stream freely (it creates no stream), and a missing stream is
   * created only after checking the lease, then checked again: if the lease or the table
   * changed meanwhile, the new stream is deleted if still empty and untouched. What remains
   * on a Cluster: a controller paused between its check and its create for longer than the
   * lease, while another removes that shard, leaves an empty stream of a removed shard; a
   * node still routing with a table from before the removal could then append to it, and
   * those events would sit there undelivered (no consumer serves a shard the table lacks).
   */
  async #ensureStreams(table: Table, ids: readonly number[]): Promise<number[]> {
    if (ids.length === 0) return [];
    const { conn, keys } = this.#host;
    const client = conn.client;
    if (!conn.cluster) {
      const args: string[] = [keys.lease, keys.table, this.#token, table.epoch, GROUP];
      for (const id of ids) args.push(keys.stream(id), String(id));
      const made = (await client.smEnsureStreams(...args)) as unknown[];
      return made.map(Number);
    }
    const exists = await sendAll(
      client,
      ids.map((id) => ['exists', keys.stream(id)]),
    );
    const made: number[] = [];
    const missing: number[] = [];
    for (const [i, [error, n]] of exists.entries()) {
      if (error) throw error;
      if (Number(n) === 1) {
        const [gError] = (await sendAll(client, [['xgroup', 'CREATE', keys.stream(ids[i]!), GROUP, '0']]))[0]!;
        if (!gError) made.push(ids[i]!);
        else if (!/BUSYGROUP/.test(gError.message)) throw gError;
      } else missing.push(ids[i]!);
    }
    if (missing.length === 0) return made;
    if ((await client.get(keys.lease)) !== this.#token) throw new Error('SMFENCED the controller lease is not held by this node');
    await createGroups(conn, keys, missing);
    const [lease, after] = await Promise.all([client.get(keys.lease), readTable(client, keys).catch(() => undefined)]);
    const listed = new Set(after?.doc.shards.filter((s) => s.state !== 'stopped').map((s) => s.id) ?? []);
    const undo = missing.filter((id) => lease !== this.#token || after?.epoch !== table.epoch || !listed.has(id));
    for (const id of undo) await client.smDeleteIfQuiet(keys.stream(id), '0-0');
    if (undo.length > 0) throw new Error('SMFENCED the lease or the table changed while creating streams');
    return [...made, ...missing];
  }

  /** Provisioning → Active for `ids`, with the route rebuilt. */
  async #activate(table: Table, ids: number[], windows: ReadonlyMap<number, ShardMetrics | undefined>): Promise<Table> {
    await this.#ensureStreams(table, ids);
    const doc = clone(table.doc);
    for (const s of doc.shards) if (ids.includes(s.id)) s.state = 'active';
    doc.route = this.#route(doc).build(activeIds(doc), windows, false);
    const next = await this.#write(table, doc);
    for (const id of ids) this.#emit('shardActivated', id);
    return next;
  }

  /** New shards for local ids the mapper just provisioned: ids from the table's counter,
   *  provisioning written (with the answer to `request`, if any), streams and groups
   *  created, then active (routable). */
  async #grow(
    table: Table,
    locals: number[],
    windows: ReadonlyMap<number, ShardMetrics | undefined>,
    request?: (ids: number[]) => AnsweredRequest,
  ): Promise<Table> {
    const doc = clone(table.doc);
    const ids = locals.map((_, i) => doc.nextId + i);
    doc.nextId += ids.length;
    for (const id of ids) doc.shards.push({ id, state: 'provisioning' });
    locals.forEach((local, i) => {
      this.#toLocal.set(ids[i]!, local);
      this.#toShard.set(local, ids[i]!);
    });
    table = await this.#write(table, doc, request?.(ids));
    for (const id of ids) this.#emit('shardProvisioned', id);
    for (const local of locals) this.#mapper!.activate(local); // its warm-up starts with the write below
    table = await this.#activate(table, ids, windows);
    return table;
  }

  /** Shards the local mapper just drained: out of the route, draining in the table, watched. */
  async #drainLocals(
    table: Table,
    locals: number[],
    windows: ReadonlyMap<number, ShardMetrics | undefined>,
    now: number,
    request?: (ids: number[]) => AnsweredRequest,
  ): Promise<Table> {
    const ids = locals.map((l) => this.#toShard.get(l)!);
    const doc = clone(table.doc);
    for (const s of doc.shards) if (ids.includes(s.id)) s.state = 'draining';
    doc.route = this.#route(doc).build(activeIds(doc), windows, false);
    for (const local of locals) {
      // The local mapper only mirrors Active shards: the drain itself is watched in Redis.
      this.#mapper!.stopDrained(local);
      this.#mapper!.removeSpecificStoppedShard(local);
      this.#toShard.delete(local);
    }
    for (const id of ids) this.#toLocal.delete(id);
    table = await this.#write(table, doc, request?.(ids));
    for (const id of ids) {
      this.#emit('shardDraining', id);
      this.#drains.set(id, { since: now, lastId: undefined, quietSince: now });
    }
    return table;
  }

  /**
   * Run the queued operator requests, oldest first (at most 16 a window). A request stays in
   * the queue until the script that writes the table change it asked for (or, when it
   * changes nothing, just its answer) takes it off the queue and records the answer, in one
   * step: a controller that dies at any point leaves it either queued (the next one runs it)
   * or answered, never both, and a request its caller withdrew cannot act (SMWITHDRAWN).
   */
  async #operatorRequests(
    table: Table,
    mapper: ShardMapper,
    windows: ReadonlyMap<number, ShardMetrics | undefined>,
    now: number,
  ): Promise<Table> {
    const { conn, keys } = this.#host;
    const raws = (await conn.client.lrange(keys.ops, -REQUESTS_PER_WINDOW, -1)).reverse(); // LPUSH: oldest last
    for (const raw of raws) {
      let request: OperatorRequest;
      try {
        request = JSON.parse(raw) as OperatorRequest;
        if (typeof request.reqId !== 'string') throw new Error('no request id');
      } catch {
        await conn.client.lrem(keys.ops, 1, raw); // not ours: it would block nothing, but it is noise
        continue;
      }
      const answered = (answer: OperatorAnswer): AnsweredRequest => ({ reqId: request.reqId, raw, answer: JSON.stringify(answer) });
      const success = (ids: number[]) => answered({ ok: true, ids });
      try {
        if (request.op === 'scaleUp') {
          checkIdRoom(table.doc, request.n, 'manualScaleUp');
          table = await this.#grow(table, mapper.scaleUpProvisioningForce(request.n), windows, success);
        } else if (request.op === 'scaleDown') {
          const active = mapper.activeShardCount();
          const min = mapper.policy().minShards;
          if (active - request.n < min)
            throw new ScalingError('AtMinShards', `manualScaleDown: ${active} active - ${request.n} would go below minShards ${min}`);
          const locals = mapper.leastLoadedIds(request.n);
          for (const local of locals) mapper.drainSpecific(local);
          table = await this.#drainLocals(table, locals, windows, now, success);
        } else {
          const id = (request as { id: number }).id;
          const state = table.doc.shards.find((s) => s.id === id)?.state;
          const method = request.op === 'drain' ? 'drainSpecific' : 'removeShard';
          if (state === undefined) throw new ScalingError('InvalidPolicy', `${method}: unknown shard ${id}`);
          if (state === 'provisioning' || (state === 'stopped' && request.op === 'drain')) {
            throw new ScalingError('InvalidPolicy', `drainSpecific: shard ${id} is ${state}; only an active shard can be drained`);
          }
          if (state === 'active') {
            const local = this.#toLocal.get(id)!;
            mapper.drainSpecific(local); // AtMinShards, as ShardManager
            table = await this.#drainLocals(table, [local], windows, now, success);
          } else {
            table = await this.#write(table, undefined, success([id])); // draining (or stopped, for remove): on its way
          }
        }
      } catch (error) {
        if (!(error instanceof ScalingError)) throw error; // Redis failed, or withdrawn: the pass starts again
        const e = error as ScalingError;
        table = await this.#write(table, undefined, answered({ ok: false, kind: e.kind, message: e.message }));
      }
    }
    return table;
  }

  // ---- Redis lost data ------------------------------------------------------------------

  async #readFloor(): Promise<Floor> {
    const [nextId, needGen, node] = await this.#host.conn.client.hmget(this.#host.keys.floor, 'nextId', 'needGen', 'node');
    return { nextId: Number(nextId ?? 0), needGen: Number(needGen ?? 0), node: Number(node ?? 0) };
  }

  /**
   * Redis lost data (no table, a table of another life or older than what nodes followed, or
   * live nodes knew higher ids): write a table of a new generation every node follows. Its
   * shards are the active and draining ones of the table this node followed (or of Redis's,
   * when that one is ahead in the same life), their streams made again before the pass goes
   * on, plus the other shards of the table Redis has now, as draining (a node that joined after the loss may have stored events there);
   * its id counter starts above every id any live node reported, and the node counter above
   * every node number a live node saw.
   */
  async #recover(current: Table | undefined, floor: Floor, why: string): Promise<Table> {
    const { conn, keys, clock } = this.#host;
    const known = this.#host.knownTable();
    const base = current && isAhead(current, known) ? current : known;
    const doc = clone(base.doc);
    doc.shards = doc.shards.filter((s) => s.state === 'active' || s.state === 'draining');
    const have = new Set(doc.shards.map((s) => s.id));
    for (const s of current?.doc.shards ?? [])
      if (!have.has(s.id) && s.state !== 'stopped') doc.shards.push({ id: s.id, state: 'draining' });
    const maxId = Math.max(-1, ...doc.shards.map((s) => s.id));
    doc.nextId = Math.max(known.doc.nextId, current?.doc.nextId ?? 0, floor.nextId, maxId + 1);
    doc.route = new RouteBuilder(doc).build(activeIds(doc), new Map(), false);
    const gen = Math.max(known.gen + 1, (current?.gen ?? 0) + 1, floor.needGen);
    const epoch = newEpoch();
    try {
      await conn.client.smRecoverTable(
        keys.lease,
        keys.table,
        keys.floor,
        this.#token,
        String(gen),
        epoch,
        JSON.stringify(doc),
        TABLE_FORMAT,
        keys.changes,
      );
    } catch (error) {
      throw explainTableError(error as Error, keys);
    }
    const table: Table = { version: 1, gen, epoch, doc, nodes: Math.max(floor.node, current?.nodes ?? 0) };
    this.#reset(true);
    this.#host.emit({
      type: 'redisDataLoss',
      stage: 'recovered',
      generation: gen,
      at: clock(),
      detail: `${why}; the controller wrote generation ${gen} of the table: shards ${activeIds(doc).join(', ') || 'none'} active, next shard id ${doc.nextId}`,
    });
    this.#host.applyTable(table);
    return table;
  }

  /** The table to run this pass on: Redis's, or a recovered one when Redis lost data. */
  async #currentTable(): Promise<Table> {
    const { conn, keys } = this.#host;
    const table = await readTableIfCreated(conn.client, keys);
    const floor = await this.#readFloor();
    if (!table) return this.#recover(undefined, floor, 'the shard table was missing from Redis');
    const known = this.#host.knownTable();
    if (compareHeads(known, table) === 'lost') {
      return this.#recover(
        table,
        floor,
        `Redis holds table generation ${table.gen} version ${table.version} (epoch ${table.epoch}); this node followed generation ${known.gen} version ${known.version} (epoch ${known.epoch})`,
      );
    }
    if (floor.needGen > table.gen || floor.nextId > table.doc.nextId) {
      return this.#recover(
        table,
        floor,
        `live nodes followed a table Redis no longer has (they knew shard ids up to ${floor.nextId - 1}, the table's next id is ${table.doc.nextId})`,
      );
    }
    return table;
  }

  // ---- one pass -------------------------------------------------------------------------

  async #pass(): Promise<void> {
    const { conn, keys, clock, drainGraceMs } = this.#host;
    const client = conn.client;
    let table = await this.#currentTable();
    const stored = await this.#readClocks();
    let mapper = this.#mapper;
    const actives = activeIds(table.doc);
    if (!mapper || actives.length !== this.#toLocal.size || actives.some((id) => !this.#toLocal.has(id))) {
      mapper = this.#buildMapper(table.doc, stored);
    }

    // Every listed shard has its stream and group (provisioning ones are finished below).
    const listed = table.doc.shards.filter((s) => s.state === 'active' || s.state === 'draining').map((s) => s.id);
    for (const id of await this.#ensureStreams(table, listed)) this.#host.emit({ type: 'streamRecreated', shardId: id, at: clock() });

    // Provisioning shards left by a controller that died mid-scale-up: finish them (their
    // warm-up starts now).
    const leftover = table.doc.shards.filter((s) => s.state === 'provisioning').map((s) => s.id);
    if (leftover.length > 0) {
      table = await this.#activate(table, leftover, new Map());
      mapper = this.#buildMapper(table.doc, stored);
      const now = clock();
      mapper[DECISION_CLOCKS]({
        lastScalingAt: mapper[DECISION_CLOCKS]().lastScalingAt,
        shards: new Map(leftover.map((id) => [this.#toLocal.get(id)!, { activatedAt: now, idleSince: undefined }])),
      });
    }

    // Metrics from Redis into the local collectors.
    // Events appended and acknowledged, and batch times, live in each shard's progress hash,
    // counted by the nodes as they append and by the acknowledging script (progress.ts).
    // An empty stream has no backlog, whatever the counts say (a stream Redis lost and the
    // controller made again, beside a progress hash it kept).
    const shardIds = [...this.#toLocal.keys()];
    const replies = await sendAll(
      client,
      shardIds.flatMap((id): Command[] => [
        ['hmget', keys.progress(id), PROGRESS.in, PROGRESS.out, PROGRESS.batches, PROGRESS.us],
        ['xlen', keys.stream(id)],
      ]),
    );
    for (const [error] of replies) if (error) throw error;
    const appended = new Map<string, number>();
    const backlog = new Map<string, number>();
    const flush = new Map<string, number>();
    shardIds.forEach((id, i) => {
      const [into, out, n, us] = (replies[2 * i]![1] as (string | null)[]).map((v) => Number(v ?? 0));
      const entries = Number(replies[2 * i + 1]![1]);
      appended.set(String(id), into!);
      backlog.set(String(id), entries === 0 ? 0 : Math.max(0, into! - out!));
      flush.set(`${id}:n`, n!);
      flush.set(`${id}:us`, us!);
    });
    for (const [id, local] of this.#toLocal) {
      const collector = mapper.metricsCollector(local)!;
      const key = String(id);
      const s = appended.get(key) ?? 0;
      collector.recordBufferLen(backlog.get(key) ?? 0);
      const before = this.#prevIn.get(key);
      const events = before === undefined ? 0 : Math.min(MAX_EVENTS_PER_WINDOW, Math.max(0, s - before));
      for (let k = 0; k < events; k++) collector.recordEventOnly();
      const n = flush.get(`${id}:n`) ?? 0;
      const us = flush.get(`${id}:us`) ?? 0;
      const n0 = this.#prevFlush.get(`${id}:n`);
      const us0 = this.#prevFlush.get(`${id}:us`) ?? 0;
      if (n0 !== undefined && n > n0) collector.recordFlush(Math.round((us - us0) / (n - n0)));
    }
    this.#prevIn = appended;
    this.#prevFlush = flush;
    mapper.collectMetrics();
    const windows = new Map<number, ShardMetrics | undefined>();
    for (const [id, local] of this.#toLocal) windows.set(id, mapper.lastMetrics(local));

    // The same decision ShardManager.tick() would take.
    const decision = mapper.evaluateScaling();
    const now = clock();
    if (decision.kind !== 'none') this.#host.emit({ type: 'scalingDecision', decision, at: now });
    if (decision.kind === 'scaleUp') {
      try {
        checkIdRoom(table.doc, decision.count, 'scaleUp');
        table = await this.#grow(table, mapper.scaleUpProvisioning(decision.count), windows);
      } catch (error) {
        if (!(error instanceof ScalingError)) throw error;
        this.#host.report(error); // at the id limit: no scale-up, the loop goes on
      }
    } else if (decision.kind === 'scaleDown') table = await this.#drainLocals(table, mapper.scaleDown(decision.count), windows, now);

    // Operator requests (node.addShard, drainShard, removeShard, manualScaleUp/Down) queued by any node.
    table = await this.#operatorRequests(table, mapper, windows, now);

    // The route follows this window's metrics.
    const route = this.#route(table.doc).build(activeIds(table.doc), windows, true);
    if (route.length !== table.doc.route.length || route.some((id, i) => id !== table.doc.route[i])) {
      const doc = clone(table.doc);
      doc.route = route;
      table = await this.#write(table, doc);
    }

    // Draining → Stopped once the stream holds no unacknowledged entry and nothing was
    // appended for drainGraceMs; Stopped → removed once deleting finds it still quiet.
    const settling = table.doc.shards.filter((s) => s.state === 'draining' || s.state === 'stopped');
    const infos =
      settling.length === 0
        ? []
        : await sendAll(
            client,
            settling.map((s) => ['xinfo', 'STREAM', keys.stream(s.id)]),
          );
    const stop: number[] = [];
    const remove: number[] = [];
    settling.forEach((s, i) => {
      const info = streamInfo(infos[i]!);
      let watch = this.#drains.get(s.id);
      if (!watch) this.#drains.set(s.id, (watch = { since: now, lastId: info.lastId, quietSince: now }));
      if (info.lastId !== watch.lastId) {
        watch.lastId = info.lastId;
        watch.quietSince = now;
      }
      const quiet = info.length === 0 && now - watch.since > drainGraceMs && now - watch.quietSince > drainGraceMs;
      if (quiet && s.state === 'draining') stop.push(s.id);
      if (quiet && s.state === 'stopped') remove.push(s.id);
    });
    if (stop.length > 0) {
      const doc = clone(table.doc);
      for (const s of doc.shards) if (stop.includes(s.id)) s.state = 'stopped';
      table = await this.#write(table, doc);
      for (const id of stop) this.#emit('shardStopped', id);
    }
    const gone: number[] = [];
    for (const id of remove) {
      const deleted = Number(await client.smDeleteIfQuiet(keys.stream(id), this.#drains.get(id)!.lastId ?? ''));
      if (deleted === 1) gone.push(id);
      else this.#drains.get(id)!.quietSince = now; // a late append: its consumer takes it, then we wait again
    }
    if (gone.length > 0) {
      const doc = clone(table.doc);
      doc.shards = doc.shards.filter((s) => !gone.includes(s.id));
      table = await this.#write(table, doc);
      await sendAll(client, [
        ...gone.flatMap((id): Command[] => [
          ['del', keys.owner(id)],
          ['del', keys.closedNodes(id)],
        ]),
        // Its marks and counters outlive it a while: a node whose XADD to it went unanswered
        // reads there whether the frame was consumed before the removal (node.ts #settleUnanswered).
        ...gone.map((id): Command => ['pexpire', keys.progress(id), PROGRESS_RETAIN_MS]),
      ]);
      for (const id of gone) {
        this.#drains.delete(id);
        this.#emit('shardRemoved', id);
      }
    }

    // Idle streaks start and end between table changes: their clocks are written when they do.
    if (this.#localClocksKey() !== this.#clocksWritten) await this.#write(table, undefined);
  }
}
