// The scaling loop of a namespace. Every node runs one Controller; exactly one of them holds
// the lease (SET NX PX, renewed every metrics window) and acts. Its table writes go through a
// script that checks the lease token, so a controller that stalled past its lease cannot
// change the table afterwards.
//
// It keeps a local ShardMapper whose Active shards mirror the table's, feeds its collectors
// from Redis (backlog = events stored − events acknowledged, as the fill; events stored in
// the window, as the rate; the consumers' batch times, as the flush latency), and runs the
// mapper's own collectMetrics / evaluateScaling / scaleUpProvisioning / scaleDown, so the
// thresholds, warm-up, idle streaks and cooldowns are exactly ShardManager's.
import { randomUUID } from 'node:crypto';
import { ShardMapper } from '../mapper.js';
import { ScalingError } from '../errors.js';
import type { ManagerEvent } from '../manager.js';
import type { ShardMetrics } from '../metrics.js';
import { GROUP, type Keys } from './keys.js';
import { sendAll, type Command, type Connection, type Reply } from './connection.js';
import { PROGRESS } from './progress.js';
import { activeIds, readTable, RouteBuilder, writeTable, type Table, type TableDoc } from './table.js';

/** What only the distributed mode reports (options.onRedisEvent): the controller lease
 *  changing hands on this node, and Redis failures (each kind once until it clears). */
export type RedisNodeEvent =
  | { type: 'controller'; acquired: boolean; nodeId: string; at: number }
  | { type: 'redisError'; error: Error; at: number };
/** Everything a node reports: ShardManager's events (options.onEvent) and RedisNodeEvent. */
export type RedisManagerEvent = ManagerEvent | RedisNodeEvent;

/** An operator call a node queued for the controller ({ns}:ops). */
export type OperatorRequest = { reqId: string } & (
  | { op: 'scaleUp' | 'scaleDown'; n: number }
  | { op: 'drain' | 'remove'; id: number });
/** The controller's answer ({ns}:op:<reqId>, kept a minute). */
export type OperatorAnswer = { ok: true; ids: number[] } | { ok: false; kind: string; message: string };

export interface ControllerHost {
  conn: Connection;
  keys: Keys;
  nodeId: string;
  leaseMs: number;
  drainGraceMs: number;
  clock: () => number;
  emit(event: RedisManagerEvent): void;
  /** A table this controller just wrote (the node applies it without waiting for pub/sub). */
  applyTable(table: Table): void;
}

/** Cap on the events fed to a collector per window (one WebAssembly call each). */
const MAX_EVENTS_PER_WINDOW = 1_000_000;

interface DrainWatch {
  /** clock() when this controller saw the drain begin (or took over a draining shard). */
  since: number;
  lastId: string | undefined;
  /** clock() when the stream's last id last changed (or was first read). */
  quietSince: number;
}

const clone = (doc: TableDoc): TableDoc => JSON.parse(JSON.stringify(doc)) as TableDoc;

function hashToMap(reply: unknown): Map<string, number> {
  const out = new Map<string, number>();
  if (Array.isArray(reply)) for (let i = 0; i + 1 < reply.length; i += 2) out.set(String(reply[i]), Number(reply[i + 1]));
  else if (reply && typeof reply === 'object') for (const [k, v] of Object.entries(reply)) out.set(k, Number(v));
  return out;
}

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

/** Streams and their consumer group exist before a shard can become routable. */
export async function createGroups(conn: Connection, keys: Keys, ids: number[]): Promise<void> {
  const replies = await sendAll(conn.client, ids.map((id) => ['xgroup', 'CREATE', keys.stream(id), GROUP, '0', 'MKSTREAM']));
  for (const [error] of replies) if (error && !/BUSYGROUP/.test(error.message)) throw error;
}

export class Controller {
  readonly #host: ControllerHost;
  #token = '';
  #leader = false;
  #mapper: ShardMapper | undefined;
  #routes: RouteBuilder | undefined;
  #toLocal = new Map<number, number>();
  #toShard = new Map<number, number>();
  #prevStored = new Map<string, number>();
  #prevFlush = new Map<string, number>();
  #drains = new Map<number, DrainWatch>();

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
      this.#reset();
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
        this.#reset(); // start again from the table as Redis has it
        if (!m.includes('SMSTALE')) throw error;
      }
    }
  }

  /** Give the lease up (close()): another node takes over at its next window. */
  async release(): Promise<void> {
    if (!this.#leader) return;
    this.#leader = false;
    try {
      await this.#host.conn.client.smRelease(this.#host.keys.lease, this.#token);
    } catch { /* it expires by itself */ }
  }

  #lose(): void {
    this.#leader = false;
    this.#reset();
    this.#host.emit({ type: 'controller', acquired: false, nodeId: this.#host.nodeId, at: this.#host.clock() });
  }

  #reset(): void {
    this.#mapper = undefined;
    this.#toLocal.clear();
    this.#toShard.clear();
    this.#prevStored.clear();
    this.#prevFlush.clear();
    this.#drains.clear();
  }

  /** A fresh local mapper whose Active shards are the table's (activated long ago: no
   *  warm-up). A new controller starts with no cooldown stamp and fresh idle streaks. */
  /** This controller's route builder (the namespace's routing mode and policy never change). */
  #route(doc: TableDoc): RouteBuilder {
    return (this.#routes ??= new RouteBuilder(doc));
  }

  #buildMapper(doc: TableDoc): ShardMapper {
    const ids = activeIds(doc);
    const mapper = new ShardMapper(ids.length, doc.shardCapacity, doc.policy, {
      clock: this.#host.clock, memory: 'single', routing: doc.routing, loadBound: doc.loadBound,
    } as ConstructorParameters<typeof ShardMapper>[3]);
    this.#toLocal.clear();
    this.#toShard.clear();
    ids.forEach((id, local) => { this.#toLocal.set(id, local); this.#toShard.set(local, id); });
    this.#mapper = mapper;
    return mapper;
  }

  async #write(table: Table, doc: TableDoc): Promise<Table> {
    const { conn, keys } = this.#host;
    const version = await writeTable(conn.client, keys, this.#token, table.version, doc);
    const next = { version, doc };
    this.#host.applyTable(next);
    return next;
  }

  #emit(type: 'shardProvisioned' | 'shardActivated' | 'shardDraining' | 'shardStopped' | 'shardRemoved', shardId: number): void {
    this.#host.emit({ type, shardId, at: this.#host.clock() });
  }

  async #createGroups(ids: number[]): Promise<void> {
    await createGroups(this.#host.conn, this.#host.keys, ids);
  }

  /** Provisioning → Active for `ids`, with the route rebuilt. */
  async #activate(table: Table, ids: number[], windows: ReadonlyMap<number, ShardMetrics | undefined>): Promise<Table> {
    await this.#createGroups(ids);
    const doc = clone(table.doc);
    for (const s of doc.shards) if (ids.includes(s.id)) s.state = 'active';
    doc.route = this.#route(doc).build(activeIds(doc), windows, false);
    const next = await this.#write(table, doc);
    for (const id of ids) this.#emit('shardActivated', id);
    return next;
  }

  /** New shards for local ids the mapper just provisioned: ids from the table's counter,
   *  provisioning written, streams and groups created, then active (routable). */
  async #grow(table: Table, locals: number[], windows: ReadonlyMap<number, ShardMetrics | undefined>): Promise<Table> {
    const doc = clone(table.doc);
    const ids = locals.map((_, i) => doc.nextId + i);
    doc.nextId += ids.length;
    for (const id of ids) doc.shards.push({ id, state: 'provisioning' });
    table = await this.#write(table, doc);
    locals.forEach((local, i) => { this.#toLocal.set(ids[i]!, local); this.#toShard.set(local, ids[i]!); });
    for (const id of ids) this.#emit('shardProvisioned', id);
    table = await this.#activate(table, ids, windows);
    for (const local of locals) this.#mapper!.activate(local);
    return table;
  }

  /** Shards the local mapper just drained: out of the route, draining in the table, watched. */
  async #drainLocals(table: Table, locals: number[], windows: ReadonlyMap<number, ShardMetrics | undefined>, now: number): Promise<Table> {
    const ids = locals.map((l) => this.#toShard.get(l)!);
    const doc = clone(table.doc);
    for (const s of doc.shards) if (ids.includes(s.id)) s.state = 'draining';
    doc.route = this.#route(doc).build(activeIds(doc), windows, false);
    table = await this.#write(table, doc);
    for (const id of ids) {
      this.#emit('shardDraining', id);
      this.#drains.set(id, { since: now, lastId: undefined, quietSince: now });
    }
    for (const local of locals) {
      // The local mapper only mirrors Active shards: the drain itself is watched in Redis.
      this.#mapper!.stopDrained(local);
      this.#mapper!.removeSpecificStoppedShard(local);
      this.#toShard.delete(local);
    }
    for (const id of ids) this.#toLocal.delete(id);
    return table;
  }

  /** Run the queued operator requests (at most 16 a window) and post each one's answer. */
  async #operatorRequests(table: Table, mapper: ShardMapper, windows: ReadonlyMap<number, ShardMetrics | undefined>, now: number): Promise<Table> {
    const { conn, keys } = this.#host;
    for (let k = 0; k < 16; k++) {
      const raw = await conn.client.rpop(keys.ops);
      if (raw === null) break;
      let parsed: OperatorRequest;
      try {
        parsed = JSON.parse(raw) as OperatorRequest;
      } catch {
        continue; // not ours
      }
      const request = parsed;
      let answer: OperatorAnswer;
      try {
        let ids: number[] = [];
        if (request.op === 'scaleUp') {
          const locals = mapper.scaleUpProvisioningForce(request.n);
          ids = locals.map((_, i) => table.doc.nextId + i);
          table = await this.#grow(table, locals, windows);
        } else if (request.op === 'scaleDown') {
          const active = mapper.activeShardCount();
          const min = mapper.policy().minShards;
          if (active - request.n < min) throw new ScalingError('AtMinShards', `manualScaleDown: ${active} active - ${request.n} would go below minShards ${min}`);
          const locals = mapper.leastLoadedIds(request.n);
          for (const local of locals) mapper.drainSpecific(local);
          ids = locals.map((l) => this.#toShard.get(l)!);
          table = await this.#drainLocals(table, locals, windows, now);
        } else {
          const id = (request as { id: number }).id;
          const state = table.doc.shards.find((s) => s.id === id)?.state;
          const method = request.op === 'drain' ? 'drainSpecific' : 'removeShard';
          if (state === undefined) throw new ScalingError('InvalidPolicy', `${method}: unknown shard ${id}`);
          if (state === 'active') {
            const local = this.#toLocal.get(id)!;
            mapper.drainSpecific(local); // AtMinShards, as ShardManager
            table = await this.#drainLocals(table, [local], windows, now);
          } else if (state === 'provisioning' || (state === 'stopped' && request.op === 'drain')) {
            throw new ScalingError('InvalidPolicy', `drainSpecific: shard ${id} is ${state}; only an active shard can be drained`);
          } // draining (or stopped, for remove): already on its way
          ids = [id];
        }
        answer = { ok: true, ids };
      } catch (error) {
        const e = error as Error & { kind?: string };
        if (!(error instanceof ScalingError)) throw error; // Redis failed: the pass starts again
        answer = { ok: false, kind: e.kind ?? 'InvalidPolicy', message: e.message };
      }
      await conn.client.set(keys.opAnswer(request.reqId), JSON.stringify(answer), 'PX', 60_000);
    }
    return table;
  }

  async #pass(): Promise<void> {
    const { conn, keys, clock, drainGraceMs } = this.#host;
    const client = conn.client;
    let table = await readTable(client, keys);
    let mapper = this.#mapper;
    const actives = activeIds(table.doc);
    if (!mapper || actives.length !== this.#toLocal.size || actives.some((id) => !this.#toLocal.has(id))) {
      // A new controller (or one that lost track) first makes sure every active shard has its
      // stream and group (a creator that died before making them leaves them missing).
      if (!mapper) await this.#createGroups(actives);
      mapper = this.#buildMapper(table.doc);
    }

    // Provisioning shards left by a controller that died mid-scale-up: finish them.
    const leftover = table.doc.shards.filter((s) => s.state === 'provisioning').map((s) => s.id);
    if (leftover.length > 0) {
      table = await this.#activate(table, leftover, new Map());
      mapper = this.#buildMapper(table.doc);
    }

    // Metrics from Redis into the local collectors.
    // Acknowledged events and batch times live in each shard's progress hash, written by the
    // consumers' acknowledging script itself (progress.ts).
    const shardIds = [...this.#toLocal.keys()];
    const [storedR, ...progressR] = await sendAll(client, [['hgetall', keys.stored],
      ...shardIds.map((id): Command => ['hmget', keys.progress(id), PROGRESS.acked, PROGRESS.batches, PROGRESS.us])]);
    for (const [error] of [storedR!, ...progressR]) if (error) throw error;
    const stored = hashToMap(storedR![1]);
    const acked = new Map<string, number>();
    const flush = new Map<string, number>();
    shardIds.forEach((id, i) => {
      const [a, n, us] = (progressR[i]![1] as (string | null)[]).map((v) => Number(v ?? 0));
      acked.set(String(id), a!);
      flush.set(`${id}:n`, n!);
      flush.set(`${id}:us`, us!);
    });
    for (const [id, local] of this.#toLocal) {
      const collector = mapper.metricsCollector(local)!;
      const key = String(id);
      const s = stored.get(key) ?? 0;
      collector.recordBufferLen(Math.max(0, s - (acked.get(key) ?? 0)));
      const before = this.#prevStored.get(key);
      const events = before === undefined ? 0 : Math.min(MAX_EVENTS_PER_WINDOW, Math.max(0, s - before));
      for (let k = 0; k < events; k++) collector.recordEventOnly();
      const n = flush.get(`${id}:n`) ?? 0;
      const us = flush.get(`${id}:us`) ?? 0;
      const n0 = this.#prevFlush.get(`${id}:n`);
      const us0 = this.#prevFlush.get(`${id}:us`) ?? 0;
      if (n0 !== undefined && n > n0) collector.recordFlush(Math.round((us - us0) / (n - n0)));
    }
    this.#prevStored = stored;
    this.#prevFlush = flush;
    mapper.collectMetrics();
    const windows = new Map<number, ShardMetrics | undefined>();
    for (const [id, local] of this.#toLocal) windows.set(id, mapper.lastMetrics(local));

    // The same decision ShardManager.tick() would take.
    const decision = mapper.evaluateScaling();
    const now = clock();
    if (decision.kind !== 'none') this.#host.emit({ type: 'scalingDecision', decision, at: now });
    if (decision.kind === 'scaleUp') table = await this.#grow(table, mapper.scaleUpProvisioning(decision.count), windows);
    else if (decision.kind === 'scaleDown') table = await this.#drainLocals(table, mapper.scaleDown(decision.count), windows, now);

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
    if (settling.length === 0) return;
    const infos = await sendAll(client, settling.map((s) => ['xinfo', 'STREAM', keys.stream(s.id)]));
    const stop: number[] = [];
    const remove: number[] = [];
    settling.forEach((s, i) => {
      const info = streamInfo(infos[i]!);
      let watch = this.#drains.get(s.id);
      if (!watch) this.#drains.set(s.id, watch = { since: now, lastId: info.lastId, quietSince: now });
      if (info.lastId !== watch.lastId) { watch.lastId = info.lastId; watch.quietSince = now; }
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
        ['hdel', keys.stored, ...gone.map(String)],
        ...gone.map((id): [string, string] => ['del', keys.owner(id)]),
        ...gone.map((id): [string, string] => ['del', keys.progress(id)]), // its marks and counters
      ]);
      for (const id of gone) {
        this.#drains.delete(id);
        this.#emit('shardRemoved', id);
      }
    }
  }
}
