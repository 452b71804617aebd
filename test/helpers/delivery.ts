// Receives what the seq-consumer fixture reports and checks exactly-once, in-order delivery.
export class DeliveryLog {
  readonly #channel = new BroadcastChannel('shard-mapper-test');
  readonly counts = new Map<number, number>(); // key → times delivered
  readonly lastSeq = new Map<string, number>(); // `${shard}:${producer}` → last seq seen
  received = 0;
  outOfOrder: string[] = [];

  constructor() {
    this.#channel.onmessage = (e: MessageEvent) => {
      const { shardId, pairs } = e.data as { shardId: number; pairs: Uint32Array };
      for (let i = 0; i < pairs.length; i += 2) {
        const producer = pairs[i]!;
        const seq = pairs[i + 1]!;
        const key = producer * 2 ** 24 + seq;
        this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
        const lane = `${shardId}:${producer}`;
        const last = this.lastSeq.get(lane) ?? -1;
        if (seq <= last && this.outOfOrder.length < 10) this.outOfOrder.push(`shard ${shardId} producer ${producer}: ${seq} after ${last}`);
        this.lastSeq.set(lane, seq);
        this.received++;
      }
    };
  }

  async waitFor(total: number, timeoutMs = 30000): Promise<void> {
    for (let waited = 0; this.received < total && waited < timeoutMs; waited += 10) await new Promise((r) => setTimeout(r, 10));
  }

  /** Keys delivered other than exactly once, among producer × [0, perProducer). */
  problems(producers: number, perProducer: number): { missing: number; duplicated: number } {
    let missing = 0;
    let duplicated = 0;
    for (let p = 0; p < producers; p++) {
      for (let s = 0; s < perProducer; s++) {
        const n = this.counts.get(p * 2 ** 24 + s) ?? 0;
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

export function seqPayload(producer: number, seq: number, bytes = 16): Uint8Array {
  const b = new Uint8Array(bytes);
  const v = new DataView(b.buffer);
  v.setUint32(0, producer, true);
  v.setUint32(4, seq, true);
  return b;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
