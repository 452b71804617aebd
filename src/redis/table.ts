// The shard table of a namespace, as it lives in Redis: one hash (format, version, doc,
// gen, epoch, clocks), written only by the controller through a script that checks its lease
// token.
//
// A namespace's life: `epoch` is a random tag chosen when a table is made from nothing, `gen`
// counts the tables made from nothing (1, then one more each time a controller recovers the
// namespace after Redis lost data). Nodes follow the table with the highest (gen, version);
// a table of their gen with another epoch or a lower version, or no table at all, means
// Redis lost writes (restart without persistence, a failover, FLUSHALL).
import { randomBytes } from 'node:crypto';
import { candidateIndexes } from '../mapper.js';
import type { ShardMetrics } from '../metrics.js';
import {
  RUNTIME_DEFAULT_ROUTING,
  checkLoadBound,
  checkRouting,
  createTableBuilder,
  type RoutingMode,
  type TableBuilder,
} from '../routing.js';
import type { ScalingPolicy } from '../policy.js';
import type { Keys } from './keys.js';
import { TABLE_FORMAT } from './keys.js';
import type { ScriptedClient } from './connection.js';

export type { RoutingMode };

/** The routing options of a node, checked as ShardMapper checks them; without a routing a
 *  new namespace routes as ShardManager does by default ('balanced'). */
export function checkRoutingOptions(routing: unknown, loadBound: unknown): { routing: RoutingMode; loadBound: number } {
  return {
    routing: checkRouting('options.routing', routing, RUNTIME_DEFAULT_ROUTING),
    loadBound: checkLoadBound('options.loadBound', loadBound),
  };
}

/** A shard's state in the table. Removed shards leave the table. */
export type TableState = 'provisioning' | 'active' | 'draining' | 'stopped';

export interface TableShard {
  id: number;
  state: TableState;
}

export interface TableDoc {
  /** The next shard id: monotonic, never reused, across nodes and restarts. */
  nextId: number;
  policy: ScalingPolicy;
  routing: RoutingMode;
  loadBound: number;
  /** The backlog (events stored, not acknowledged) that counts as a full shard. */
  shardCapacity: number;
  shards: TableShard[];
  /** The selection table every node loads: shard ids, picked by floor(hash · n / 2^32). */
  route: number[];
}

export interface Table {
  version: number;
  gen: number;
  epoch: string;
  doc: TableDoc;
  /** The node counter when this was read (the highest node number handed out). */
  nodes: number;
}

/**
 * The table, or undefined while no node has created it. Reading and asking whether the key
 * exists are two commands, and the first node can create the table between them: a table
 * that turns out to exist is read once more (a node creates it whole, in one script).
 */
export async function readTableIfCreated(client: ScriptedClient, keys: Keys): Promise<Table | undefined> {
  try {
    return await readTable(client, keys);
  } catch {
    const type = await client.type(keys.table);
    if (type === 'none') return undefined;
    if (type !== 'hash') throw notATable(keys, type);
    return await readTable(client, keys);
  }
}

/** Version, generation and epoch (what a node compares every window), and the node counter. */
export type TableHead = Pick<Table, 'version' | 'gen' | 'epoch' | 'nodes'>;

/** A fresh epoch tag (random: nothing of the lost namespace is needed to make it unique). */
export function newEpoch(): string {
  return randomBytes(6).toString('hex');
}

/** Whether `b` is ahead of `a`: a higher generation, or the same life and a higher version. */
export function isAhead(b: TableHead, a: TableHead): boolean {
  return b.gen > a.gen || (b.gen === a.gen && b.epoch === a.epoch && b.version > a.version);
}

/** What a node seeing `seen` in Redis while it follows `mine` can conclude. */
export function compareHeads(mine: TableHead, seen: TableHead | undefined): 'same' | 'ahead' | 'lost' {
  if (seen === undefined) return 'lost'; // no table: Redis lost it
  if (isAhead(seen, mine)) return 'ahead';
  if (seen.gen === mine.gen && seen.epoch === mine.epoch && seen.version === mine.version) return 'same';
  // Another life at our generation, an older generation, or a lower version of ours.
  return 'lost';
}

export function activeIds(doc: TableDoc): number[] {
  return doc.shards.filter((s) => s.state === 'active').map((s) => s.id);
}

/**
 * Builds the route the controller publishes: for 'leastLoaded', the candidates within 0.1 of
 * the lowest weight in table order (ShardMapper's table); for 'balanced' and 'affinity', a
 * slot table from the same builders ShardMapper uses (src/routing.ts), fed with the
 * namespace's shard ids, so 'affinity' routes by those ids whichever node is the controller.
 * A balanced builder carries its smoothing from window to window; a new controller starts
 * a fresh one (its first table is the balanced table of that window).
 */
export class RouteBuilder {
  readonly #builder: TableBuilder | undefined;

  constructor(doc: Pick<TableDoc, 'routing' | 'loadBound' | 'policy'>) {
    this.#builder =
      doc.routing === 'leastLoaded'
        ? undefined
        : createTableBuilder(doc.routing, {
            maxShards: doc.policy.maxShards,
            fillRatioThreshold: doc.policy.fillRatioThreshold,
            loadBound: doc.loadBound,
          });
  }

  /** The route for these Active ids (table order) and their last metrics; `fresh`: a new window. */
  build(ids: readonly number[], metrics: ReadonlyMap<number, ShardMetrics | undefined>, fresh: boolean): number[] {
    if (this.#builder === undefined) {
      return candidateIndexes(ids.map((id) => metrics.get(id)?.weight ?? 0)).map((i) => ids[i]!);
    }
    const table = this.#builder.build(
      ids.map((id) => ({ id, metrics: metrics.get(id) })),
      fresh,
    );
    return table === undefined ? [] : Array.from(table);
  }
}

function parseDoc(json: string, where: string): TableDoc {
  try {
    const doc = JSON.parse(json) as TableDoc;
    if (typeof doc.nextId !== 'number' || !Array.isArray(doc.shards) || !Array.isArray(doc.route)) throw new Error('missing fields');
    return doc;
  } catch (error) {
    throw new Error(`shard-mapper/redis: the shard table at ${where} is corrupt: ${(error as Error).message}`);
  }
}

/** The namespace's table key holds another type: another application uses the namespace. */
function notATable(keys: Keys, type: string): Error {
  return new Error(
    `shard-mapper/redis: the key ${keys.table} holds a ${type}, not a shard table: another application uses namespace "${keys.ns}"; choose another namespace`,
  );
}

/** Redis error replies of our scripts, in words. */
export function explainTableError(error: Error, keys: Keys): Error {
  const m = error.message;
  if (m.includes('SMWRONGTYPE') || m.includes('WRONGTYPE')) {
    return notATable(keys, /SMWRONGTYPE (\w+)/.exec(m)?.[1] ?? 'another type');
  }
  if (m.includes('SMNOTATABLE')) {
    return new Error(
      `shard-mapper/redis: the hash ${keys.table} is not a shard-mapper table (format ${/SMNOTATABLE (.*)/.exec(m)?.[1]}): another application uses namespace "${keys.ns}"; choose another namespace`,
    );
  }
  return error;
}

/** Create the table if absent (generation 1, a new epoch); returns it and whether this call created it. */
export async function initTable(client: ScriptedClient, keys: Keys, doc: TableDoc): Promise<Table & { created: boolean }> {
  let reply: [string, string, string, string, string, string | undefined];
  try {
    reply = (await client.smInitTable(keys.table, JSON.stringify(doc), TABLE_FORMAT, newEpoch())) as typeof reply;
  } catch (error) {
    throw explainTableError(error as Error, keys);
  }
  return {
    created: reply[0] === 'created',
    doc: parseDoc(reply[1], keys.table),
    version: Number(reply[2]),
    gen: Number(reply[3]),
    epoch: reply[4],
    nodes: Number(reply[5] ?? 0),
  };
}

/** The thrown message when the table is missing (Redis lost it, or someone deleted it). */
const TABLE_GONE = 'is gone or not ours';

export async function readTable(client: ScriptedClient, keys: Keys): Promise<Table> {
  const [format, version, json, gen, epoch, nodes] = await client.hmget(keys.table, 'format', 'version', 'doc', 'gen', 'epoch', 'nodes');
  if (format !== TABLE_FORMAT || version === null || json === null) {
    throw new Error(`shard-mapper/redis: the shard table ${keys.table} ${TABLE_GONE} (format ${String(format)})`);
  }
  return {
    version: Number(version),
    gen: Number(gen ?? 1),
    epoch: epoch ?? '',
    doc: parseDoc(json, keys.table),
    nodes: Number(nodes ?? 0),
  };
}

/** Version, generation and epoch (the cheap check every metrics window); undefined: no table. */
export async function readHead(client: ScriptedClient, keys: Keys): Promise<TableHead | undefined> {
  const [version, gen, epoch, nodes] = await client.hmget(keys.table, 'version', 'gen', 'epoch', 'nodes');
  return version === null ? undefined : { version: Number(version), gen: Number(gen ?? 1), epoch: epoch ?? '', nodes: Number(nodes ?? 0) };
}

/** An operator request answered by a table write (see smWriteTable). */
export interface AnsweredRequest {
  reqId: string;
  /** The request exactly as it sits in the queue. */
  raw: string;
  answer: string;
}

/**
 * The fenced write: only with the current lease token, only over `over`'s epoch and version.
 * `doc` undefined leaves the table as it is (a clocks-only or answer-only write); returns
 * the version after the write.
 */
export async function writeTable(
  client: ScriptedClient,
  keys: Keys,
  token: string,
  over: TableHead,
  doc: TableDoc | undefined,
  extra: { clocks?: string; request?: AnsweredRequest } = {},
): Promise<number> {
  const r = extra.request;
  return Number(
    await client.smWriteTable(
      keys.lease,
      keys.table,
      keys.ops,
      keys.answers,
      keys.answered,
      token,
      over.epoch,
      String(over.version),
      doc === undefined ? '' : JSON.stringify(doc),
      keys.changes,
      extra.clocks ?? '',
      r?.reqId ?? '',
      r?.raw ?? '',
      r?.answer ?? '',
    ),
  );
}
