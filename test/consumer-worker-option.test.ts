// options.consumer.worker: the application starts the consumer worker itself (the form
// bundlers understand in browsers); here with Node worker_threads, the same protocol.
import { describe, expect, it } from 'vitest';
import { Worker } from 'node:worker_threads';
import { ShardManager, ScalingError } from 'shard-mapper';

const fixture = new URL('./fixtures/serve-consumer.mjs', import.meta.url);

function listen() {
  const channel = new BroadcastChannel('serve-consumer-test');
  const texts: string[] = [];
  const perShard = new Map<number, string[]>();
  const mine = new Set<unknown>();
  channel.onmessage = (e: MessageEvent) => {
    texts.push(...e.data.texts);
    perShard.set(e.data.shardId, [...(perShard.get(e.data.shardId) ?? []), ...e.data.texts]);
    mine.add(e.data.mine);
  };
  return {
    texts, perShard, mine,
    async until(n: number) {
      const end = Date.now() + 10_000;
      while (texts.length < n && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
      channel.close();
    },
  };
}

describe('options.consumer.worker', () => {
  it('runs serveConsumer in workers the application started, delivering every event once, in push order per shard', async () => {
    const seen = listen();
    let started = 0;
    const manager = await ShardManager.create({
      initialShards: 3,
      ringBufferCapacity: 256,
      backpressure: { kind: 'dropNewest' },
      consumer: {
        // Workers with data of their own: the manager's start-up data comes as a message.
        worker: () => { started++; return new Worker(fixture, { workerData: { mine: 'yes' } }); },
        threads: 2,
      },
    });
    expect(started).toBe(2);
    expect(manager.consumers().map((c) => c.alive)).toEqual([true, true]);
    const n = 3000;
    let accepted = 0;
    for (let i = 0; i < n; i++) {
      while (!manager.push(`key-${i % 17}`, `event-${i}`)) await new Promise((r) => setImmediate(r));
      accepted++;
    }
    await manager.close();
    await seen.until(accepted);
    expect(manager.stats().delivered).toBe(n);
    expect(seen.texts).toHaveLength(n);
    expect(new Set(seen.texts).size).toBe(n);
    for (const texts of seen.perShard.values()) {
      const seqs = texts.map((t) => Number(t.slice('event-'.length)));
      expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    }
    expect([...seen.mine]).toEqual(['yes']);
  });

  it('a factory that throws on its second thread: create() rejects with its error, and the first thread is ended (it used to be left running)', async () => {
    const started: Worker[] = [];
    let ended!: () => void;
    const exited = new Promise<void>((resolve) => { ended = resolve; });
    const worker = () => {
      if (started.length === 1) throw new Error('factory broke on the second thread');
      const w = new Worker(new URL('./fixtures/start-roles-worker.mjs', import.meta.url), { workerData: { role: 'serve' } });
      w.once('exit', () => ended());
      started.push(w);
      return w;
    };
    await expect(ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, consumer: { worker, threads: 2 } })).rejects.toThrow(/factory broke on the second thread/);
    expect(started).toHaveLength(1);
    const outcome = await Promise.race([exited.then(() => 'ended'), new Promise((r) => setTimeout(() => r('still running after 3 s'), 3000))]);
    if (outcome !== 'ended') await started[0]!.terminate();
    expect(outcome).toBe('ended');
  });

  it('refuses a worker that is not a function, or given together with module', async () => {
    await expect(ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, consumer: { worker: 42 as never } }))
      .rejects.toThrow(ScalingError);
    await expect(ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, consumer: { worker: () => new Worker(fixture), module: 'x.mjs' } }))
      .rejects.toThrow(/options\.consumer: give module or worker, not both/);
    await expect(ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, consumer: { worker: () => ({}) as never } }))
      .rejects.toThrow(/must return a worker_threads Worker/);
  });
});
