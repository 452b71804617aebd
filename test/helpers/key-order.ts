// Checks per-key order across shards for the key-order tests: consumers (key-seq-consumer
// fixture) report each batch with a ticket taken from one counter shared by every consumer
// thread before the batch was acknowledged, so sorting the batches by ticket gives the order
// they were consumed in, whichever thread consumed them and whenever the report arrived.
import { Worker } from 'node:worker_threads';

let made = 0;

export class KeyOrderLog {
  readonly channelName = `shard-mapper-key-order-${process.pid}-${++made}`;
  /** [ticket counter, ms per batch, 1 + slow shard id, its extra ms] (see the fixture). */
  readonly control = new Int32Array(new SharedArrayBuffer(16));
  readonly #channel: BroadcastChannel;
  readonly #batches: { ticket: number; shardId: number; pairs: Uint32Array }[] = [];
  received = 0;
  #lastReportAt = performance.now();

  constructor(readonly keys: number) {
    this.#channel = new BroadcastChannel(this.channelName);
    this.#channel.onmessage = (e: MessageEvent) => {
      const batch = e.data as { ticket: number; shardId: number; pairs: Uint32Array };
      this.#batches.push(batch);
      this.received += batch.pairs.length / 2;
      this.#lastReportAt = performance.now();
    };
  }

  /** options.consumer.worker for ShardManager.create: a key-seq-consumer thread on this log. */
  consumerWorker = (): Worker => new Worker(new URL('../fixtures/key-seq-consumer.mjs', import.meta.url), {
    workerData: { channel: this.channelName, control: this.control.buffer },
  });

  set slowMs(ms: number) { Atomics.store(this.control, 1, ms); }
  /** One shard sleeps `ms` more per batch (undefined: none). */
  slowShard(id: number | undefined, ms = 0): void {
    Atomics.store(this.control, 3, ms);
    Atomics.store(this.control, 2, id === undefined ? 0 : id + 1);
  }

  /** Wait until `total` events were reported (bounded), then until none came for `quietMs`
   *  (a late duplicate then fails the exactly-once check). */
  async waitFor(total: number, timeoutMs = 60_000, quietMs = 300): Promise<void> {
    for (let waited = 0; this.received < total && waited < timeoutMs; waited += 10) await new Promise((r) => setTimeout(r, 10));
    this.#lastReportAt = Math.max(this.#lastReportAt, performance.now() - quietMs / 2);
    while (performance.now() - this.#lastReportAt < quietMs) await new Promise((r) => setTimeout(r, 10));
  }

  /**
   * In consumption order: `outOfOrder` events consumed after a later event of their key,
   * the first time they were seen; `repeats` events seen again; `missing` events of
   * [0, sent[key]) never seen; `keysOutOfOrder` keys with at least one such event.
   */
  check(sent: Uint32Array): { outOfOrder: number; repeats: number; missing: number; keysOutOfOrder: number; examples: string[] } {
    const batches = [...this.#batches].sort((a, b) => a.ticket - b.ticket);
    const highest = new Int32Array(this.keys).fill(-1);
    const seen = sent.map((n) => n).map(() => 0);
    const seenBits = Array.from(sent, (n) => new Uint8Array(n));
    const bad = new Uint8Array(this.keys);
    const examples: string[] = [];
    let outOfOrder = 0;
    let repeats = 0;
    for (const { shardId, pairs, ticket } of batches) {
      for (let i = 0; i < pairs.length; i += 2) {
        const key = pairs[i]!;
        const seq = pairs[i + 1]!;
        if (key >= this.keys || seq >= sent[key]!) {
          if (examples.length < 10) examples.push(`corrupt record (key ${key}, seq ${seq})`);
          continue;
        }
        if (seenBits[key]![seq]) { repeats++; continue; }
        seenBits[key]![seq] = 1;
        seen[key]!++;
        if (seq < highest[key]!) {
          outOfOrder++;
          bad[key] = 1;
          if (examples.length < 10) examples.push(`key ${key}: seq ${seq} consumed on shard ${shardId} (ticket ${ticket}) after seq ${highest[key]}`);
        } else highest[key] = seq;
      }
    }
    let missing = 0;
    for (let k = 0; k < this.keys; k++) missing += sent[k]! - seen[k]!;
    return { outOfOrder, repeats, missing, keysOutOfOrder: bad.reduce((a, b) => a + b, 0), examples };
  }

  close(): void {
    this.#channel.close();
  }
}

/** The hash the key-seq-producer fixture pushes a key with. */
export const keyHash = (key: number): number => Math.imul(key + 1, 0x9e3779b1) >>> 0;

/** How many events of each key the producer threads send: the fixture's own draw, replayed. */
export function sentPerKey(keys: number, producers: number, count: number, seed: number): Uint32Array {
  const sent = new Uint32Array(keys);
  for (let producer = 0; producer < producers; producer++) {
    const mine: number[] = [];
    for (let k = producer; k < keys; k += producers) mine.push(k);
    let state = (seed * 0x9e3779b1 + producer) >>> 0;
    const random = () => { state = (Math.imul(state ^ (state >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0; return state / 2 ** 32; };
    for (let i = 0; i < count; i++) sent[mine[Math.floor(random() * mine.length)]!]!++;
  }
  return sent;
}
