// Receives what the seq-consumer fixture reports and checks exactly-once, in-order delivery.
import { expect } from 'vitest';
import { BackpressureError, type ShardManager } from 'shard-mapper';
// Sized for millions of events: delivery counts live in one Uint8Array per producer
// (indexed by seq, saturating at 255), not in a Map of boxed keys.
const SEQ_LIMIT = 2 ** 24; // keys are producer · 2^24 + seq

/** Times each (producer, seq) was delivered, grown on demand. */
class DeliveryCounts {
  readonly #byProducer: Uint8Array[] = [];

  bump(producer: number, seq: number): void {
    let a = this.#byProducer[producer];
    if (a === undefined || seq >= a.length) {
      const grown = new Uint8Array(Math.min(SEQ_LIMIT, Math.max(1024, 2 ** Math.ceil(Math.log2(seq + 1)))));
      if (a) grown.set(a);
      this.#byProducer[producer] = a = grown;
    }
    if (a[seq]! < 255) a[seq]!++;
  }

  count(producer: number, seq: number): number {
    return this.#byProducer[producer]?.[seq] ?? 0;
  }

  /** Map-like read by key (`producer * 2^24 + seq`): undefined when never delivered. */
  get(key: number): number | undefined {
    const n = this.count(Math.floor(key / SEQ_LIMIT), key % SEQ_LIMIT);
    return n === 0 ? undefined : n;
  }
}

/**
 * The consumer fixture's module URL, carrying the channel of the newest DeliveryLog in its
 * query (`?channel=`). The manager hands this URL to every consumer thread it starts — also
 * the ones it restarts later — so a manager left running by a test that timed out keeps
 * reporting to its own test's channel, never to the next test's (the environment variable
 * alone would be read afresh by each restarted thread). Call it when creating the manager,
 * after the log.
 */
export function onThisLogsChannel(module: URL): URL {
  const url = new URL(module);
  url.searchParams.set('channel', process.env.SM_TEST_CHANNEL ?? 'shard-mapper-test');
  return url;
}

export class DeliveryLog {
  static #made = 0;
  /** A channel of this log's own: consumer threads started after it was made report here
   *  (seq-consumer reads SM_TEST_CHANNEL), so a test never counts another test's records. */
  readonly channelName = `shard-mapper-test-${process.pid}-${++DeliveryLog.#made}`;
  readonly #channel: BroadcastChannel;
  readonly counts = new DeliveryCounts(); // key → times delivered
  readonly lastSeq = new Map<string, number>(); // `${shard}:${producer}` → last seq seen
  received = 0;
  outOfOrder: string[] = [];

  constructor() {
    process.env.SM_TEST_CHANNEL = this.channelName;
    this.#channel = new BroadcastChannel(this.channelName);
    this.#channel.onmessage = (e: MessageEvent) => {
      this.#lastReportAt = performance.now();
      const { shardId, pairs } = e.data as { shardId: number; pairs: Uint32Array };
      let lane = '';
      let laneProducer = -1;
      let last = -1;
      for (let i = 0; i < pairs.length; i += 2) {
        const producer = pairs[i]!;
        const seq = pairs[i + 1]!;
        if (producer >= 256 || seq >= SEQ_LIMIT) {
          if (this.outOfOrder.length < 10) this.outOfOrder.push(`shard ${shardId}: corrupt record (producer ${producer}, seq ${seq})`);
          this.received++;
          continue;
        }
        this.counts.bump(producer, seq);
        if (producer !== laneProducer) {
          if (laneProducer >= 0) this.lastSeq.set(lane, last);
          laneProducer = producer;
          lane = `${shardId}:${producer}`;
          last = this.lastSeq.get(lane) ?? -1;
        }
        if (seq <= last && this.outOfOrder.length < 10) this.outOfOrder.push(`shard ${shardId} producer ${producer}: ${seq} after ${last}`);
        last = seq;
        this.received++;
      }
      if (laneProducer >= 0) this.lastSeq.set(lane, last);
    };
  }

  /** Time of the last report (for settle). */
  #lastReportAt = performance.now();

  /**
   * Wait until `total` records were reported (or `timeoutMs`), then keep listening until
   * no report has come for `quietMs`: a late duplicate arrives within that and fails the
   * test's exactly-once check instead of slipping past it.
   */
  async waitFor(total: number, timeoutMs = 30000, quietMs = 250): Promise<void> {
    for (let waited = 0; this.received < total && waited < timeoutMs; waited += 10) await new Promise((r) => setTimeout(r, 10));
    await this.settle(quietMs);
  }

  /** Resolve once no report has come for `quietMs`. */
  async settle(quietMs = 250): Promise<void> {
    this.#lastReportAt = Math.max(this.#lastReportAt, performance.now() - quietMs / 2);
    while (performance.now() - this.#lastReportAt < quietMs) await new Promise((r) => setTimeout(r, 10));
  }

  /** Keys delivered other than exactly once, among producer × [0, perProducer). */
  problems(producers: number, perProducer: number): { missing: number; duplicated: number } {
    let missing = 0;
    let duplicated = 0;
    for (let p = 0; p < producers; p++) {
      for (let s = 0; s < perProducer; s++) {
        const n = this.counts.count(p, s);
        if (n === 0) missing++;
        else if (n > 1) duplicated++;
      }
    }
    return { missing, duplicated };
  }

  close(): void {
    this.#channel.close();
  }
}

/**
 * The delivery check: every key producer × [0, perProducer) was reported exactly once (none
 * missing, none twice), and each (shard, producer) lane in push order with no corrupt record.
 * Call it after `log.waitFor`, which keeps listening a moment so a late duplicate counts.
 */
export function expectExactlyOnce(log: DeliveryLog, producers: number, perProducer: number, context?: string): void {
  expect(log.problems(producers, perProducer), context).toEqual({ missing: 0, duplicated: 0 });
  expect(log.outOfOrder, context).toEqual([]);
}

export function seqPayload(producer: number, seq: number, bytes = 16): Uint8Array {
  const b = new Uint8Array(bytes);
  const v = new DataView(b.buffer);
  v.setUint32(0, producer, true);
  v.setUint32(4, seq, true);
  return b;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `settled` turns true once `p` resolves or rejects. A loop that runs until producer threads
 *  are done then ends on a thread's failure too, and awaiting `p` after it throws that
 *  failure (otherwise a thread that threw leaves the loop spinning to the test timeout, which
 *  says nothing of why). */
export function settledFlag(p: Promise<unknown>): { readonly settled: boolean } {
  const flag = { settled: false };
  p.then(() => { flag.settled = true; }, () => { flag.settled = true; });
  return flag;
}

/** Wait (bounded) until `done()` holds, checking every `pollMs`; throws naming `what` after `limitMs`. */
export async function until(done: () => boolean | Promise<boolean>, what: string | (() => string), limitMs = 20_000, pollMs = 10): Promise<void> {
  const start = performance.now();
  while (!(await done())) {
    if (performance.now() - start > limitMs) throw new Error(`timed out waiting for ${typeof what === 'string' ? what : what()}`);
    await sleep(pollMs);
  }
}

/** `p`, unless `limitMs` pass first: then an error that says what was awaited and how things stood. */
export async function within<T>(p: Promise<T>, limitMs: number, what: () => string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${limitMs} ms: ${what()}`)), limitMs); });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Push one event, yielding to the event loop and retrying while backpressure refuses it. */
export async function pushWithRetry(m: ShardManager, hash: number, payload: Uint8Array): Promise<void> {
  for (;;) {
    try {
      if (m.push(hash, payload)) return;
      throw new Error('unexpected drop');
    } catch (e) {
      if (!(e instanceof BackpressureError)) throw e;
      await sleep(0);
    }
  }
}

/**
 * One random operator call of the kind the delivery tests interleave with pushes: add a
 * shard (while fewer than `maxActive` are Active), remove one (its promise goes to
 * `removals`), or drain the first; then a tick. Returns 1 if it changed something.
 */
export async function churnShards(m: ShardManager, random: () => number, maxActive: number, removals: Promise<void>[]): Promise<number> {
  const active = m.mapper.activeShardIds();
  const r = random();
  let ops = 0;
  if (r < 0.4 && active.length < maxActive) { await m.addShard(); ops++; }
  else if (r < 0.7 && active.length > 1) { removals.push(m.removeShard(active[Math.floor(random() * active.length)]!)); ops++; }
  else if (active.length > 1) { await m.drainShard(active[0]!); ops++; }
  m.tick();
  return ops;
}
