// serveShardConsumers: consume a namespace's shards from any process.
//
// Each shard is leased to one consumer at a time (SET NX PX on its owner key, renewed while
// held; every read checks the lease in the same script), so a shard's events are consumed in
// order. Consumers register with a heartbeat and each takes a fair share (ceil(shards /
// consumers)), releasing extras as others arrive. A consumer that takes a shard over first
// claims the previous owner's pending entries (XAUTOCLAIM), consumes them, then reads on.
// When `consume` returns, one script acknowledges and deletes the batch's entries and
// records, per node, the last (frame, index) acknowledged (the shard's progress hash,
// progress.ts): whoever consumes the shard next skips what is at or below those marks, so a
// repeat of a consumed frame (a node's retried XADD) never reaches `consume`. A batch whose
// `consume` throws is not acknowledged and comes again whole. Shards are served
// independently: an error on one is reported with its id and retried with backoff while the
// others go on.
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { checkInteger, describe, given, invalid } from '../errors.js';
import { GROUP, checkNamespace, keysFor, type Keys } from './keys.js';
import { closeConnection, connect, reportedError, sendAll, watchAnswers, type Connection, type RedisOption } from './connection.js';
import { checkConnectTimeout } from './options.js';
import { checkKnownKeys } from '../validate.js';
import { deadLetterCommand, readEntries, type DeadReason, type ReadEntry, type ShardRecord } from './entries.js';
import { readAckedPositions, type AckedPosition } from './progress.js';
import { readTableIfCreated, type TableDoc } from './table.js';
import { sleep } from '../sleep.js';

export type { ShardRecord } from './entries.js';

export interface ServeShardConsumersOptions {
  redis: RedisOption;
  namespace: string;
  /** Called with a shard's events in push order; returning (or resolving) acknowledges them.
   *  Throwing does not: the whole batch comes again (the error goes to onError). */
  consume: (records: ShardRecord[], shardId: number) => void | Promise<void>;
  /** Stream entries (frames) read per call (default 16). */
  batchSize?: number;
  /** How long a shard lease and a consumer's registration last without renewal (ms, default 3000). */
  leaseMs?: number;
  /** Longest pause between reads when every shard is idle (ms, default 20). */
  idleMs?: number;
  /** A name unique to this consumer (default host:pid:random). */
  name?: string;
  /** Skip events at or below the shard's acknowledged marks (default true). `false` hands
   *  repeats to `consume` (with their dedup ids), for those who filter downstream. */
  dedup?: boolean;
  /** A stream entry delivered this many times without being acknowledged (each read by a
   *  consumer counts, as Redis counts them) goes to the dead-letter stream instead of
   *  `consume` (default: never; the batch is retried with backoff for ever). */
  maxDeliveries?: number;
  /** Errors, with the shard they concern (-1: none in particular, e.g. Redis away). Also,
   *  once, that the namespace does not exist yet and the consumers wait for it. */
  onError?: (error: Error, shardId: number) => void;
  /** How long serveShardConsumers waits for Redis's first answer before it fails naming the
   *  address (ms, default 10000); later, a command unanswered this long (a frozen server) is
   *  reported once to onError (shard -1), and waits on. */
  connectTimeoutMs?: number;
}

/** Every option serveShardConsumers reads (the Record type keeps the list complete). */
const CONSUMER_OPTIONS: Record<keyof ServeShardConsumersOptions, true> = {
  redis: true,
  namespace: true,
  consume: true,
  batchSize: true,
  leaseMs: true,
  idleMs: true,
  name: true,
  dedup: true,
  maxDeliveries: true,
  onError: true,
  connectTimeoutMs: true,
};

/** What consumers do while Redis cannot be reached (said with the outage they report). */
const CONSUMER_OUTAGE =
  'the consumers retry with backoff (ioredis reconnects on its own); events not yet acknowledged stay in Redis and are consumed when it answers';

export interface ShardConsumers {
  readonly name: string;
  /** Shards this consumer holds right now. */
  owned(): number[];
  /** Events consumed (handed to `consume` and acknowledged) so far. */
  readonly consumed: number;
  /** Events skipped as repeats of acknowledged ones (acknowledged, never handed to `consume`). */
  readonly repeats: number;
  /** Stream entries this consumer moved to the dead-letter stream. */
  readonly deadLettered: number;
  /** Finish the batch in hand, release the leases, close the connection we opened. */
  close(): Promise<void>;
}

/** One entry as smCommit takes it: id, node ('' if unknown), frame, events. */
type CommitEntry = [string, string, string, string];

/** A batch ready to be acknowledged: the script's arguments and what it means here. */
interface Commit {
  entries: CommitEntry[];
  /** The consume call's time in µs, '' when none ran (all repeats, or dead letters). */
  batchUs: string;
  consumed: number;
  repeats: number;
  deadLettered: number;
  /** The marks this batch raised (dedup on), its nodes' only: merged into the shard's local
   *  copy once the script has run (never before, so a failed one leaves the copy as it was). */
  marks: Map<string, AckedPosition> | undefined;
  /** Entries read with it, to drop from the shard's queue once acknowledged. */
  taken: number;
}

interface Held {
  /** performance.now() of the last successful acquisition or renewal of the lease. */
  renewedAt: number;
  /** Pending entries of a previous owner must be claimed before reading on. */
  claim: boolean;
  /** Re-read this consumer's own pending entries (after a take-over or a failure). */
  history: boolean;
  /** Entries read and not yet acknowledged, oldest first (a batch stops where the kind of
   *  entry changes: frames to consume, dead letters). */
  queue: ReadEntry[];
  /** The shard's acknowledged marks as Redis had them (loaded on taking the shard and after
   *  a failure), raised by each batch this consumer commits. */
  marks: Map<string, AckedPosition> | undefined;
  /** A batch consumed (or dead-lettered) whose acknowledgement failed: sent again before
   *  anything else is read from the shard (the script is idempotent). */
  unacked: Commit | undefined;
  /** The last error of consume on this shard (it goes with a dead letter). */
  lastError: string;
  /** Consecutive failures, and when the shard may be served again (performance.now()). */
  failures: number;
  retryAt: number;
}

const MAX_BACKOFF_MS = 1000;

/** (frame, index) at or below a mark: acknowledged before. */
function isAcknowledged(marks: ReadonlyMap<string, AckedPosition>, node: string, frame: number, index: number): boolean {
  return isAtOrBelow(marks.get(node), frame, index);
}

function isAtOrBelow(m: AckedPosition | undefined, frame: number, index: number): boolean {
  return m !== undefined && (frame < m.frame || (frame === m.frame && index <= m.index));
}

/**
 * A batch's view of the marks: those it raised, over the shard's (read, never copied nor
 * changed here). Only the nodes of the batch's entries are looked up or written, so a batch
 * costs the same whether the shard has marks of ten nodes or of fifty thousand (a node takes
 * a new id at every start, and each id that ever pushed to the shard keeps its mark).
 */
class BatchMarks {
  /** Node → the mark this batch raised it to (always above the shard's). */
  readonly raised = new Map<string, AckedPosition>();
  readonly #held: ReadonlyMap<string, AckedPosition>;

  constructor(held: ReadonlyMap<string, AckedPosition>) {
    this.#held = held;
  }

  isAcknowledged(node: string, frame: number, index: number): boolean {
    return isAtOrBelow(this.raised.get(node) ?? this.#held.get(node), frame, index);
  }

  raise(node: string, frame: number, index: number): void {
    if (!this.isAcknowledged(node, frame, index)) this.raised.set(node, { frame, index });
  }
}

/** The error of a command on a shard's stream (or its group) that does not exist. */
function isMissingStream(error: unknown): boolean {
  return /NOGROUP|no such key|requires the key to exist/i.test(error instanceof Error ? error.message : String(error));
}

/** One array of many (Array.prototype.flat is several times slower here). */
function concat<T>(parts: T[][]): T[] {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Array<T>(n);
  let at = 0;
  for (const p of parts) for (let i = 0; i < p.length; i++) out[at++] = p[i]!;
  return out;
}

/** Raise a mark to (frame, index) if that is above it. */
function raise(marks: Map<string, AckedPosition>, node: string, frame: number, index: number): void {
  if (!isAcknowledged(marks, node, frame, index)) marks.set(node, { frame, index });
}

export async function serveShardConsumers(options: ServeShardConsumersOptions): Promise<ShardConsumers> {
  if (typeof options !== 'object' || options === null) throw invalid(`options must be an object, got ${describe(options)}`);
  checkKnownKeys('options', options, CONSUMER_OPTIONS);
  const ns = checkNamespace(options.namespace);
  if (typeof options.consume !== 'function') throw invalid(`options.consume must be a function, got ${describe(options.consume)}`);
  const batchSize = checkInteger('options.batchSize', given(options.batchSize, 16), 1, 1 << 20);
  const leaseMs = checkInteger('options.leaseMs', given(options.leaseMs, 3000), 10, 3_600_000);
  const idleMs = checkInteger('options.idleMs', given(options.idleMs, 20), 1, 60_000);
  const name = given(options.name, `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`);
  if (typeof name !== 'string' || name.length === 0) throw invalid(`options.name must be a non-empty string, got ${describe(name)}`);
  if (options.onError !== undefined && typeof options.onError !== 'function')
    throw invalid(`options.onError must be a function, got ${describe(options.onError)}`);
  const dedup = given(options.dedup, true); // (null is a value: refused below)
  if (typeof dedup !== 'boolean') throw invalid(`options.dedup must be a boolean, got ${describe(dedup)}`);
  const maxDeliveries =
    options.maxDeliveries === undefined || options.maxDeliveries === Infinity
      ? Infinity
      : checkInteger('options.maxDeliveries', options.maxDeliveries, 1, 1_000_000_000);
  const connectTimeoutMs = checkConnectTimeout(options.connectTimeoutMs);
  const keys = keysFor(ns);
  const conn = await connect(options.redis, `consumers of namespace "${ns}"`, connectTimeoutMs);
  try {
    await readTableIfCreated(conn.client, keys); // absent: the runner waits for the first node
  } catch (error) {
    await closeConnection(conn);
    throw new Error(`shard-mapper/redis: serveShardConsumers: ${(error as Error).message.replace(/^shard-mapper\/redis: /, '')}`);
  }
  const runner = new ConsumerRunner({
    conn,
    keys,
    name,
    consume: options.consume,
    onError: options.onError,
    batch: batchSize,
    leaseMs,
    idleMs,
    dedup,
    maxDeliveries,
    connectTimeoutMs,
  });
  runner.start();
  return runner;
}

interface RunnerParts {
  conn: Connection;
  keys: Keys;
  name: string;
  consume: ServeShardConsumersOptions['consume'];
  onError: ServeShardConsumersOptions['onError'];
  batch: number;
  leaseMs: number;
  idleMs: number;
  dedup: boolean;
  maxDeliveries: number;
  connectTimeoutMs: number;
}

class ConsumerRunner implements ShardConsumers {
  readonly name: string;
  consumed = 0;
  repeats = 0;
  deadLettered = 0;
  readonly #conn: Connection;
  readonly #keys: Keys;
  readonly #parts: RunnerParts;
  readonly #held = new Map<number, Held>();
  /** Consumed batches whose acknowledgement had not reached Redis when the shard's lease was
   *  lost (an outage longer than leaseMs lets it expire): still sent, since the script is
   *  idempotent and needs no lease. Forgotten, the batch would be read again from our pending
   *  entries and reach consume twice. */
  readonly #owedCommits = new Map<number, Commit>();
  #closing = false;
  #closingPromise: Promise<void> | undefined;
  #done: Promise<void> | undefined;
  #lastMaintenance = -Infinity;
  /** Whether "waiting for the namespace" was said (once per wait). */
  #waitReported = false;

  constructor(parts: RunnerParts) {
    this.#parts = parts;
    this.#conn = parts.conn;
    this.#keys = parts.keys;
    this.name = parts.name;
  }

  owned(): number[] {
    return [...this.#held.keys()].sort((a, b) => a - b);
  }

  start(): void {
    watchAnswers(this.#conn, this.#parts.connectTimeoutMs, (e) => this.#report(e, -1));
    this.#done = this.#run();
  }

  /** A failure of a Redis command of ours (an outage said in the package's words). */
  #redisFailure(error: unknown, shardId: number): void {
    this.#report(reportedError(this.#conn, error, CONSUMER_OUTAGE), shardId);
  }

  #report(error: unknown, shardId: number): void {
    const e = error instanceof Error ? error : new Error(String(error));
    if (this.#parts.onError) {
      try {
        this.#parts.onError(e, shardId);
      } catch {
        /* the handler's own failure changes nothing */
      }
    }
  }

  async #run(): Promise<void> {
    let idle = 1;
    while (!this.#closing) {
      try {
        // Leases are renewed three times per lease period (performance.now() paces the loop only).
        const now = performance.now();
        if (now - this.#lastMaintenance >= this.#parts.leaseMs / 3) {
          await this.#maintain();
          this.#lastMaintenance = now;
        }
      } catch (error) {
        this.#redisFailure(error, -1); // Redis away: keep the leases we can, try again
        await sleep(Math.min(500, this.#parts.idleMs * 5));
        continue;
      }
      let worked = false;
      for (const id of this.owned()) {
        if (this.#closing) break;
        try {
          if (await this.#serve(id)) worked = true;
        } catch (error) {
          this.#redisFailure(error, id); // this shard waits (backoff); the others go on
        }
      }
      idle = worked ? 1 : Math.min(this.#parts.idleMs, idle * 2);
      if (!worked) await sleep(idle);
    }
  }

  /** The table's shards, or none while the namespace does not exist (said once). */
  async #tableShards(): Promise<number[]> {
    const client = this.#conn.client;
    const table = await readTableIfCreated(client, this.#keys);
    if (table !== undefined) {
      this.#waitReported = false;
      return servedShards(table.doc);
    }
    if (!this.#waitReported) {
      this.#waitReported = true;
      this.#report(
        new Error(
          `shard-mapper/redis: consumers of namespace "${this.#keys.ns}" wait for the namespace: no node has created its shard table (${this.#keys.table}) yet`,
        ),
        -1,
      );
    }
    return [];
  }

  /** Heartbeat, renew held leases, take a fair share of the table's shards, release extras. */
  async #maintain(): Promise<void> {
    const client = this.#conn.client;
    const keys = this.#keys;
    const { leaseMs } = this.#parts;
    const alive = Math.max(1, Number(await client.smConsumerBeat(keys.consumers, this.name, leaseMs)));
    const shards = await this.#tableShards();
    const fair = Math.ceil(shards.length / alive);
    // Renew what we hold (and drop what we lost, or what left the table).
    for (const id of [...this.#held.keys()]) {
      const before = performance.now();
      const ok = shards.includes(id) && Number(await client.smRenew(keys.owner(id), this.name, leaseMs)) === 1;
      if (!ok) this.#letGo(id);
      else this.#held.get(id)!.renewedAt = before;
    }
    await this.#sendOwedCommits(shards);
    // Too many: give back the highest ids, except one whose consumed batch awaits its
    // acknowledgement (the next owner would deliver it again).
    while (this.#held.size > fair) {
      const free = [...this.#held].filter(([, h]) => !h.unacked).map(([id]) => id);
      if (free.length === 0) break;
      const id = Math.max(...free);
      this.#held.delete(id);
      await client.smRelease(keys.owner(id), this.name);
    }
    // Too few: take free shards.
    for (const id of shards) {
      if (this.#held.size >= fair) break;
      if (this.#held.has(id)) continue;
      const before = performance.now();
      if ((await client.set(keys.owner(id), this.name, 'PX', leaseMs, 'NX')) === 'OK') {
        this.#held.set(id, {
          renewedAt: before,
          claim: true,
          history: true,
          queue: [],
          marks: undefined,
          unacked: this.#owedCommits.get(id), // sent before anything is read from the shard
          lastError: '',
          failures: 0,
          retryAt: 0,
        });
      }
    }
  }

  /** One step on a shard (a read, a batch consumed or dead-lettered); true if there was work. */
  async #serve(id: number): Promise<boolean> {
    const held = this.#held.get(id);
    if (!held || performance.now() < held.retryAt) return false;
    try {
      return await this.#step(id, held);
    } catch (error) {
      // Whatever failed (a read, an acknowledgement while Redis was away), our pending entries
      // are read again before anything new, with the marks as Redis has them.
      held.history = true;
      held.queue = [];
      held.marks = undefined;
      if (isMissingStream(error)) return false; // removed, or not created yet
      this.#backoff(held);
      throw error;
    }
  }

  #backoff(held: Held): void {
    held.failures++;
    const base = Math.max(10, 2 * this.#parts.idleMs);
    held.retryAt = performance.now() + Math.min(MAX_BACKOFF_MS, base * 2 ** Math.min(20, held.failures - 1));
  }

  async #step(id: number, held: Held): Promise<boolean> {
    const client = this.#conn.client;
    const stream = this.#keys.stream(id);
    const { leaseMs, batch, dedup } = this.#parts;
    // A consume call that ran long (a stall) may have outlived the lease: another consumer
    // may own the shard now. Renew (or let go) before reading anything more from it.
    if (performance.now() - held.renewedAt > leaseMs / 3) {
      const before = performance.now();
      if (Number(await client.smRenew(this.#keys.owner(id), this.name, leaseMs)) !== 1) {
        this.#letGo(id);
        return false;
      }
      held.renewedAt = before;
    }
    // The marks as Redis has them, before anything is read (after a take-over or a failure).
    if (dedup && !held.marks) held.marks = await readAckedPositions(client, this.#keys, id);
    if (held.claim) {
      // The previous owner's pending entries become ours, in id order, before anything new.
      // Join the group first (XAUTOCLAIM claiming nothing does not), so the group never lists
      // no live member while the gone ones are forgotten.
      await client.call('XGROUP', 'CREATECONSUMER', stream, GROUP, this.name);
      let cursor = '0-0';
      do {
        const reply = (await client.callBuffer(
          'XAUTOCLAIM',
          stream,
          GROUP,
          this.name,
          '0',
          cursor,
          'COUNT',
          String(Math.max(100, batch)),
          'JUSTID',
        )) as [Buffer, unknown];
        cursor = reply[0].toString();
      } while (cursor !== '0-0');
      await this.#forgetIdleConsumers(stream);
      held.claim = false;
      held.history = true;
    }
    if (held.unacked) {
      await this.#commit(id, held, held.unacked);
      return true;
    }
    if (held.queue.length === 0) {
      const read = await this.#read(id, held.history);
      if (read === undefined) {
        this.#letGo(id); // the lease ran out and another consumer owns the shard now
        return false;
      }
      held.queue = read;
      if (held.queue.length === 0) {
        if (held.history) {
          held.history = false;
          return true;
        }
        return false;
      }
    }
    // The oldest entries of one kind: deleted while pending, undecodable, delivered too often, or frames.
    const kindOf = (e: ReadEntry) =>
      e.decoded.kind !== 'frame' ? e.decoded.kind : e.deliveries > this.#parts.maxDeliveries ? 'maxDeliveries' : 'frame';
    const kind = kindOf(held.queue[0]!);
    let n = 1;
    while (n < held.queue.length && kindOf(held.queue[n]!) === kind) n++;
    const run = held.queue.slice(0, n);
    if (kind === 'frame') return this.#consumeRun(id, held, run);
    if (kind === 'gone') {
      await this.#commit(id, held, this.#commitOf(run, '', 0, 0, 0, undefined)); // no node: no mark moves
      return true;
    }
    return this.#deadLetter(id, held, run, kind);
  }

  /** XREADGROUP under the lease (smRead): new entries, or our pending ones (history) with
   *  their delivery counts; undefined when the lease is no longer ours. */
  async #read(id: number, history: boolean): Promise<ReadEntry[] | undefined> {
    const client = this.#conn.client;
    const stream = this.#keys.stream(id);
    const reply = (await client.smReadBuffer(
      stream,
      this.#keys.owner(id),
      GROUP,
      this.name,
      String(this.#parts.batch),
      history ? '0' : '>',
    )) as [Buffer, unknown][] | null | number;
    if (typeof reply === 'number') return undefined;
    const entries = reply?.[0] ? readEntries(reply[0][1]) : [];
    // A new entry was delivered once; a pending one maybe many times (only asked when it matters).
    if (history && entries.length > 0 && Number.isFinite(this.#parts.maxDeliveries)) {
      const pending = (await client.call(
        'XPENDING',
        stream,
        GROUP,
        entries[0]!.id,
        entries[entries.length - 1]!.id,
        String(entries.length),
        this.name,
      )) as [string, string, number, number][];
      const counts = new Map(pending.map((p) => [String(p[0]), Number(p[3])] as const));
      for (const e of entries) e.deliveries = counts.get(e.id) ?? e.deliveries;
    }
    return entries;
  }

  async #consumeRun(id: number, held: Held, run: ReadEntry[]): Promise<boolean> {
    const { dedup } = this.#parts;
    // Repeats of acknowledged events (and of events earlier in this batch) never reach consume.
    const marks = dedup ? new BatchMarks(held.marks ?? new Map()) : undefined;
    const parts: ShardRecord[][] = [];
    let repeats = 0;
    for (const entry of run) {
      const d = entry.decoded;
      if (d.kind !== 'frame') continue;
      const n = d.records.length;
      if (!marks || n === 0 || !marks.isAcknowledged(d.node, d.frame, 0))
        parts.push(d.records); // the usual case: a new frame, whole
      else {
        const fresh = d.records.filter((r) => !marks.isAcknowledged(r.node, r.frame, r.index));
        repeats += n - fresh.length;
        parts.push(fresh);
      }
      if (marks && n > 0) marks.raise(d.node, d.frame, n - 1);
    }
    const records = parts.length === 1 ? parts[0]! : concat(parts);
    let us = '';
    if (records.length > 0) {
      const started = performance.now();
      try {
        await this.#parts.consume(records, id);
      } catch (error) {
        // Not acknowledged: the whole batch comes again, from our pending list.
        held.history = true;
        held.queue = [];
        held.lastError = error instanceof Error ? error.message : String(error);
        this.#backoff(held);
        this.#report(error, id);
        return false;
      }
      us = String(Math.round((performance.now() - started) * 1000));
    }
    await this.#commit(id, held, this.#commitOf(run, us, records.length, repeats, 0, marks?.raised));
    return true;
  }

  /** Copy entries to the dead-letter stream, then acknowledge them (a copy may be made twice
   *  if the acknowledgement is lost with the process; never none). */
  async #deadLetter(id: number, held: Held, run: ReadEntry[], reason: DeadReason): Promise<boolean> {
    const key = this.#keys.deadLetters;
    const why = (e: ReadEntry) =>
      e.decoded.kind === 'undecodable'
        ? e.decoded.error
        : // Redis counts the read that finds the limit passed too: that one never reaches consume
          `delivered ${e.deliveries - 1} times (maxDeliveries ${this.#parts.maxDeliveries}) without being acknowledged; last error: ${held.lastError || 'none seen by this consumer'}`;
    const replies = await sendAll(
      this.#conn.client,
      run.map((e) => deadLetterCommand(key, id, e, reason, why(e))),
    );
    for (const [error] of replies) if (error) throw error;
    const marks = held.marks ? new BatchMarks(held.marks) : undefined;
    for (const e of run) {
      const d = e.decoded;
      if (marks && d.kind !== 'gone' && d.node !== '') {
        const count = d.kind === 'frame' ? d.records.length : d.count;
        marks.raise(d.node, d.frame, count - 1);
      }
    }
    await this.#commit(id, held, this.#commitOf(run, '', 0, 0, run.length, marks?.raised));
    for (const e of run) {
      this.#report(
        new Error(`shard-mapper/redis: shard ${id}: stream entry ${e.id} moved to the dead-letter stream ${key}: ${why(e)}`),
        id,
      );
    }
    return true;
  }

  #commitOf(
    run: ReadEntry[],
    batchUs: string,
    consumed: number,
    repeats: number,
    deadLettered: number,
    marks: Map<string, AckedPosition> | undefined,
  ): Commit {
    const entries = run.map((e): CommitEntry => {
      const d = e.decoded;
      if (d.kind === 'frame') return [e.id, d.node, String(d.frame), String(d.records.length)];
      if (d.kind === 'undecodable') return [e.id, d.node, String(d.frame), String(d.count)];
      return [e.id, '', '0', '0'];
    });
    return { entries, batchUs, consumed, repeats, deadLettered, marks, taken: run.length };
  }

  /** A shard whose lease is no longer ours; a batch it consumed and could not acknowledge
   *  is kept to be sent all the same (#owedCommits). */
  #letGo(id: number): void {
    const held = this.#held.get(id);
    if (held?.unacked) this.#owedCommits.set(id, held.unacked);
    this.#held.delete(id);
  }

  /** Send the acknowledgements owed for shards we no longer hold (those of a shard that
   *  left the table are dropped: its stream is gone, and with it what they acknowledged). */
  async #sendOwedCommits(tableShards: number[]): Promise<void> {
    for (const [id, commit] of this.#owedCommits) {
      if (this.#held.has(id)) continue; // taken again: sent as its unacked batch, first
      if (!tableShards.includes(id)) {
        this.#owedCommits.delete(id);
        continue;
      }
      try {
        await this.#sendCommit(id, commit);
        this.#count(commit);
      } catch (error) {
        if (!isMissingStream(error)) throw error; // Redis away: sent on the next round
      }
      this.#owedCommits.delete(id);
    }
  }

  #sendCommit(id: number, commit: Commit): Promise<unknown> {
    return this.#conn.client.smCommit(
      this.#keys.stream(id),
      this.#keys.progress(id),
      this.#keys.closedNodes(id),
      GROUP,
      commit.batchUs,
      ...commit.entries.flat(),
    );
  }

  #count(commit: Commit): void {
    this.consumed += commit.consumed;
    this.repeats += commit.repeats;
    this.deadLettered += commit.deadLettered;
  }

  /** The acknowledging script; on failure the batch waits in `unacked` and is sent again first. */
  async #commit(id: number, held: Held, commit: Commit): Promise<void> {
    held.unacked = commit;
    await this.#sendCommit(id, commit);
    if (this.#owedCommits.get(id) === commit) this.#owedCommits.delete(id);
    held.unacked = undefined;
    held.failures = 0;
    held.retryAt = 0;
    // The batch's nodes only (held.marks may have been read again since: raise, never lower).
    if (commit.marks && held.marks) for (const [node, m] of commit.marks) raise(held.marks, node, m.frame, m.index);
    held.queue = held.queue.slice(commit.taken);
    this.#count(commit);
  }

  /** The group remembers every consumer name it ever saw; on a take-over, forget those with
   *  nothing pending that have been idle for two lease periods (dead processes). */
  async #forgetIdleConsumers(stream: string): Promise<void> {
    try {
      await this.#conn.client.smForgetIdle(stream, GROUP, this.name, String(2 * this.#parts.leaseMs));
    } catch {
      // housekeeping only: never in the way of consuming
    }
  }

  close(): Promise<void> {
    if (this.#closingPromise) return this.#closingPromise;
    this.#closing = true;
    this.#closingPromise = (async () => {
      await this.#done;
      const client = this.#conn.client;
      // A consumed batch whose acknowledgement failed gets one more try before we let go.
      for (const [id, held] of this.#held) {
        if (held.unacked) await this.#commit(id, held, held.unacked).catch(() => undefined);
      }
      for (const [id, commit] of this.#owedCommits) {
        if (this.#held.has(id)) continue;
        try {
          await this.#sendCommit(id, commit);
          this.#count(commit);
        } catch {
          /* Redis still away: the batch comes again to the next owner (a documented repeat) */
        }
      }
      this.#owedCommits.clear();
      try {
        for (const id of this.#held.keys()) await client.smRelease(this.#keys.owner(id), this.name);
        await client.zrem(this.#keys.consumers, this.name);
      } catch {
        /* leases expire by themselves */
      }
      this.#held.clear();
      await closeConnection(this.#conn);
    })();
    return this.#closingPromise;
  }
}

/** Every shard in the table has a stream that may hold entries (draining and stopped ones too). */
function servedShards(doc: TableDoc): number[] {
  return doc.shards
    .filter((s) => s.state !== 'provisioning')
    .map((s) => s.id)
    .sort((a, b) => a - b);
}
