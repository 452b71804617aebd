// serveShardConsumers: consume a namespace's shards from any process.
//
// Each shard is leased to one consumer at a time (SET NX PX on {ns}:owner:{id}, renewed while
// held), so a shard's events are consumed in order. Consumers register with a heartbeat and
// each takes a fair share (ceil(shards / consumers)), releasing extras as others arrive. A
// consumer that takes a shard over first claims the previous owner's pending entries
// (XAUTOCLAIM), consumes them, then reads on with XREADGROUP; an entry is acknowledged (and
// deleted, in one script) when `consume` returns.
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { checkInteger, describe, invalid } from '../errors.js';
import { GROUP, checkNamespace, keysFor, type Keys } from './keys.js';
import { closeConnection, connect, sendAll, type Connection, type RedisOption } from './connection.js';
import { decodeFrame } from './frames.js';
import { readTable, type TableDoc } from './table.js';

/** One event as a consumer receives it. */
export interface ShardRecord {
  payload: Buffer;
  /** `${node}:${frame}:${index}`: the same for every delivery of this event, never shared
   *  by two events (see DedupFilter). */
  dedupId: string;
  /** The node number that pushed it, the node's frame sequence, the event's index in the frame. */
  node: string;
  frame: number;
  index: number;
  /** The stream entry (frame) it came in. */
  entryId: string;
}

export interface ServeShardConsumersOptions {
  redis: RedisOption;
  namespace: string;
  /** Called with a shard's events in push order; returning (or resolving) acknowledges them.
   *  Throwing does not: the same events come again (the error goes to onError). */
  consume: (records: ShardRecord[], shardId: number) => void | Promise<void>;
  /** Stream entries (frames) read per call (default 16). */
  batchSize?: number;
  /** How long a shard lease and a consumer's registration last without renewal (ms, default 3000). */
  leaseMs?: number;
  /** Longest pause between reads when every shard is idle (ms, default 20). */
  idleMs?: number;
  /** A name unique to this consumer (default host:pid:random). */
  name?: string;
  onError?: (error: Error, shardId: number) => void;
}

export interface ShardConsumers {
  readonly name: string;
  /** Shards this consumer holds right now. */
  owned(): number[];
  /** Events consumed (acknowledged) so far. */
  readonly consumed: number;
  /** Finish the batch in hand, release the leases, close the connection we opened. */
  close(): Promise<void>;
}

interface Held {
  /** performance.now() of the last successful acquisition or renewal of the lease. */
  renewedAt: number;
  /** Pending entries of a previous owner must be claimed before reading on. */
  claim: boolean;
  /** Re-read this consumer's own pending entries (after a take-over or a failed batch). */
  history: boolean;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Entries of an XREADGROUP / XAUTOCLAIM reply, with Buffer fields. */
function entriesOf(raw: unknown): [string, Buffer[]][] {
  if (!Array.isArray(raw)) return [];
  const out: [string, Buffer[]][] = [];
  for (const e of raw as [Buffer, Buffer[] | null][]) {
    if (!e || !e[1]) continue; // deleted while pending
    out.push([e[0].toString(), e[1]]);
  }
  return out;
}

function recordsOf(entries: [string, Buffer[]][]): ShardRecord[] {
  const out: ShardRecord[] = [];
  for (const [entryId, fields] of entries) {
    let node = '';
    let frame = 0;
    let data: Buffer | undefined;
    for (let i = 0; i + 1 < fields.length; i += 2) {
      const name = fields[i]!.toString();
      if (name === 'n') node = fields[i + 1]!.toString();
      else if (name === 's') frame = Number(fields[i + 1]!.toString());
      else if (name === 'd') data = fields[i + 1]!;
    }
    if (!data) continue;
    decodeFrame(data).forEach((payload, index) => {
      out.push({ payload, dedupId: `${node}:${frame}:${index}`, node, frame, index, entryId });
    });
  }
  return out;
}

export async function serveShardConsumers(options: ServeShardConsumersOptions): Promise<ShardConsumers> {
  if (typeof options !== 'object' || options === null) throw invalid(`options must be an object, got ${describe(options)}`);
  const ns = checkNamespace(options.namespace);
  if (typeof options.consume !== 'function') throw invalid(`options.consume must be a function, got ${describe(options.consume)}`);
  const batchSize = checkInteger('options.batchSize', options.batchSize ?? 16, 1, 1 << 20);
  const leaseMs = checkInteger('options.leaseMs', options.leaseMs ?? 3000, 10, 3_600_000);
  const idleMs = checkInteger('options.idleMs', options.idleMs ?? 20, 1, 60_000);
  const name = options.name ?? `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  if (typeof name !== 'string' || name.length === 0) throw invalid(`options.name must be a non-empty string, got ${describe(name)}`);
  if (options.onError !== undefined && typeof options.onError !== 'function') throw invalid(`options.onError must be a function, got ${describe(options.onError)}`);
  const keys = keysFor(ns);
  const conn = await connect(options.redis, `consumers of namespace "${ns}"`);
  try {
    await readTable(conn.client, keys); // a namespace no node created is an error, not an idle wait
  } catch (error) {
    await closeConnection(conn);
    throw new Error(`shard-mapper/redis: serveShardConsumers: namespace "${ns}" has no shard table yet (create a RedisShardManager first): ${(error as Error).message}`);
  }
  const runner = new ConsumerRunner(conn, keys, name, options.consume, options.onError, batchSize, leaseMs, idleMs);
  runner.start();
  return runner;
}

class ConsumerRunner implements ShardConsumers {
  readonly name: string;
  consumed = 0;
  readonly #conn: Connection;
  readonly #keys: Keys;
  readonly #consume: ServeShardConsumersOptions['consume'];
  readonly #onError: ServeShardConsumersOptions['onError'];
  readonly #batch: number;
  readonly #leaseMs: number;
  readonly #idleMs: number;
  readonly #held = new Map<number, Held>();
  #closing = false;
  #done: Promise<void> | undefined;
  #lastMaintenance = -Infinity;

  constructor(conn: Connection, keys: Keys, name: string, consume: ServeShardConsumersOptions['consume'],
    onError: ServeShardConsumersOptions['onError'], batch: number, leaseMs: number, idleMs: number) {
    this.#conn = conn;
    this.#keys = keys;
    this.name = name;
    this.#consume = consume;
    this.#onError = onError;
    this.#batch = batch;
    this.#leaseMs = leaseMs;
    this.#idleMs = idleMs;
  }

  owned(): number[] {
    return [...this.#held.keys()].sort((a, b) => a - b);
  }

  start(): void {
    this.#done = this.#run();
  }

  #report(error: unknown, shardId: number): void {
    const e = error instanceof Error ? error : new Error(String(error));
    if (this.#onError) {
      try { this.#onError(e, shardId); } catch { /* the handler's own failure changes nothing */ }
    }
  }

  async #run(): Promise<void> {
    let idle = 1;
    while (!this.#closing) {
      try {
        // Leases are renewed three times per lease period (performance.now() paces the loop only).
        const now = performance.now();
        if (now - this.#lastMaintenance >= this.#leaseMs / 3) {
          await this.#maintain();
          this.#lastMaintenance = now;
        }
        let worked = false;
        for (const id of this.owned()) {
          if (this.#closing) break;
          if (await this.#serve(id)) worked = true;
        }
        idle = worked ? 1 : Math.min(this.#idleMs, idle * 2);
        if (!worked) await sleep(idle);
      } catch (error) {
        this.#report(error, -1); // Redis away: keep the leases we can, try again
        await sleep(Math.min(500, this.#idleMs * 5));
      }
    }
  }

  /** Heartbeat, renew held leases, take a fair share of the table's shards, release extras. */
  async #maintain(): Promise<void> {
    const client = this.#conn.client;
    const keys = this.#keys;
    const alive = Math.max(1, Number(await client.smConsumerBeat(keys.consumers, this.name, this.#leaseMs)));
    const { doc } = await readTable(client, keys);
    const shards = servedShards(doc);
    const fair = Math.ceil(shards.length / alive);
    // Renew what we hold (and drop what we lost, or what left the table).
    const held = [...this.#held.keys()];
    for (const id of held) {
      const before = performance.now();
      const ok = shards.includes(id) && Number(await client.smRenew(keys.owner(id), this.name, this.#leaseMs)) === 1;
      if (!ok) this.#held.delete(id);
      else this.#held.get(id)!.renewedAt = before;
    }
    // Too many: give back the highest ids (nothing of ours is pending after a batch returns).
    while (this.#held.size > fair) {
      const id = Math.max(...this.#held.keys());
      this.#held.delete(id);
      await client.smRelease(keys.owner(id), this.name);
    }
    // Too few: take free shards.
    for (const id of shards) {
      if (this.#held.size >= fair) break;
      if (this.#held.has(id)) continue;
      const before = performance.now();
      if ((await client.set(keys.owner(id), this.name, 'PX', this.#leaseMs, 'NX')) === 'OK') this.#held.set(id, { renewedAt: before, claim: true, history: true });
    }
  }

  /** One read and one consume call for a shard; true if there was work. */
  async #serve(id: number): Promise<boolean> {
    const held = this.#held.get(id);
    if (!held) return false;
    const client = this.#conn.client;
    const stream = this.#keys.stream(id);
    try {
      // A consume call that ran long (a stall) may have outlived the lease: another consumer
      // may own the shard now. Renew (or let go) before reading anything more from it.
      if (performance.now() - held.renewedAt > this.#leaseMs / 3) {
        const before = performance.now();
        if (Number(await client.smRenew(this.#keys.owner(id), this.name, this.#leaseMs)) !== 1) {
          this.#held.delete(id);
          return false;
        }
        held.renewedAt = before;
      }
      if (held.claim) {
        // The previous owner's pending entries become ours, in id order, before anything new.
        let cursor = '0-0';
        do {
          const reply = (await client.callBuffer('XAUTOCLAIM', stream, GROUP, this.name, '0', cursor, 'COUNT', String(Math.max(100, this.#batch)), 'JUSTID')) as [Buffer, unknown];
          cursor = reply[0].toString();
        } while (cursor !== '0-0');
        await this.#forgetIdleConsumers(stream);
        held.claim = false;
        held.history = true;
      }
      const from = held.history ? '0' : '>';
      const reply = (await client.callBuffer('XREADGROUP', 'GROUP', GROUP, this.name, 'COUNT', String(this.#batch), 'STREAMS', stream, from)) as [Buffer, unknown][] | null;
      const entries = reply && reply[0] ? entriesOf(reply[0][1]) : [];
      if (entries.length === 0) {
        if (held.history) { held.history = false; return true; }
        return false;
      }
      const records = recordsOf(entries);
      const started = performance.now();
      try {
        await this.#consume(records, id);
      } catch (error) {
        held.history = true; // the same entries again, from our pending list
        this.#report(error, id);
        await sleep(Math.min(200, this.#idleMs * 2));
        return true;
      }
      const us = Math.round((performance.now() - started) * 1000);
      await client.smAckDel(stream, GROUP, ...entries.map(([entryId]) => entryId));
      this.consumed += records.length;
      await sendAll(client, [
        ['hincrby', this.#keys.acked, String(id), records.length],
        ['hincrby', this.#keys.flush, `${id}:n`, 1],
        ['hincrby', this.#keys.flush, `${id}:us`, us],
      ]);
      return true;
    } catch (error) {
      // Whatever failed (a read, or the acknowledgement of a consumed batch while Redis was
      // away), our pending entries are read again before anything new: they come again.
      held.history = true;
      if (/NOGROUP|no such key/i.test((error as Error).message)) return false; // removed, or not created yet
      throw error;
    }
  }

  /** The group remembers every consumer name it ever saw; on a take-over, forget those with
   *  nothing pending that have been idle for two lease periods (dead processes). */
  async #forgetIdleConsumers(stream: string): Promise<void> {
    const client = this.#conn.client;
    let list: unknown[][];
    try {
      list = (await client.call('XINFO', 'CONSUMERS', stream, GROUP)) as unknown[][];
    } catch {
      return; // housekeeping only: never in the way of consuming
    }
    for (const c of list) {
      const info = new Map<string, unknown>();
      for (let i = 0; i + 1 < c.length; i += 2) info.set(String(c[i]), c[i + 1]);
      const name = String(info.get('name'));
      if (name !== this.name && Number(info.get('pending')) === 0 && Number(info.get('idle')) > 2 * this.#leaseMs) {
        await client.call('XGROUP', 'DELCONSUMER', stream, GROUP, name).catch(() => 0);
      }
    }
  }

  close(): Promise<void> {
    if (this.#closing) return this.#closingPromise!;
    this.#closing = true;
    this.#closingPromise = (async () => {
      await this.#done;
      const client = this.#conn.client;
      try {
        for (const id of this.#held.keys()) await client.smRelease(this.#keys.owner(id), this.name);
        await client.zrem(this.#keys.consumers, this.name);
      } catch { /* leases expire by themselves */ }
      this.#held.clear();
      await closeConnection(this.#conn);
    })();
    return this.#closingPromise;
  }

  #closingPromise: Promise<void> | undefined;
}

/** Every shard in the table has a stream that may hold entries (draining and stopped ones too). */
function servedShards(doc: TableDoc): number[] {
  return doc.shards.filter((s) => s.state !== 'provisioning').map((s) => s.id).sort((a, b) => a - b);
}
