// Faults between shard-mapper/redis and Redis, injected for real on loopback: a TCP proxy
// (test/helpers/fault-proxy.ts) that drops the reply of a chosen command and cuts or delays
// connections, and the server killing its clients (CLIENT KILL TYPE normal).
//
// The package is handed ioredis instances made with ioredis's defaults — the defaults replay
// an unanswered command after a reconnect (autoResendUnfulfilledCommands on a Redis; the
// failover retry of a Cluster). A replayed `XREADGROUP >` reads the *next* entries: the
// first ones stay in the pending list (the shard never drains) and a later take-over
// delivers them after their successors. The package must be safe whatever the instance's
// options: these tests fail when it uses the instance as given.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster, Redis } from 'ioredis';
import { RedisShardManager, serveShardConsumers } from 'shard-mapper/redis';
import { HOST, RedisTestCluster, RedisTestServer, redisAvailable } from './helpers/redis-server.js';
import { FaultProxy } from './helpers/fault-proxy.js';

const available = redisAvailable();
let nsCounter = 0;
const ns = () => `f${process.pid}-${++nsCounter}`;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function until(done: () => boolean | Promise<boolean>, what: string, limitMs = 20_000): Promise<void> {
  const start = performance.now();
  while (!(await done())) {
    if (performance.now() - start > limitMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** A read of new entries (the one whose replay skips entries). */
const isReadNew = (words: string[]) => words[0]?.toUpperCase() === 'XREADGROUP' && words.at(-1) === '>';

/** Push `texts` to shard 0 of a fresh one-shard namespace, one stream entry each. */
async function producer(url: string, namespace: string, texts: string[]): Promise<RedisShardManager> {
  const node = await RedisShardManager.create({ redis: url, namespace, initialShards: 1, policy: { minShards: 1, maxShards: 1 } });
  for (const t of texts) {
    expect(node.push(t, t)).toBe(true);
    await node.flush(); // one frame, one stream entry per event
  }
  return node;
}

describe.skipIf(!available)('shard-mapper/redis through faults: a user-made ioredis instance (standalone)', () => {
  let server: RedisTestServer;
  let proxy: FaultProxy;
  beforeAll(async () => {
    server = await RedisTestServer.start();
    proxy = await FaultProxy.start(server.port);
  });
  afterAll(async () => {
    await proxy?.close();
    await server?.dispose();
  });

  it('a lost XREADGROUP reply (connection hangs, then resets) strands nothing: f1…f6 delivered in order, none pending, the user instance left open', async () => {
    const namespace = ns();
    const texts = ['f1', 'f2', 'f3', 'f4', 'f5', 'f6'];
    const node = await producer(server.url, namespace, texts);
    // ioredis's defaults: autoResendUnfulfilledCommands true, offline queue on, 20 retries.
    const user = new Redis(proxy.url);
    user.on('error', () => {});
    const droppedBefore = proxy.counts.droppedReplies;
    // The first read of new entries that returns data loses its reply.
    proxy.dropNextReply(isReadNew, { onlyWithData: true, hangMs: 100 });
    const got: string[] = [];
    const consumers = await serveShardConsumers({
      redis: user, namespace, batchSize: 2, idleMs: 5, leaseMs: 3000,
      consume: (records) => { for (const r of records) got.push(r.payload.toString()); },
    });
    const stream = `${namespace}:shard:{${namespace}:0}`;
    const drained = async () => Number(server.cli('XLEN', stream)) === 0 && /^0\b/.test(server.cli('XPENDING', stream, 'shard-mapper'));
    try {
      await until(() => got.length >= texts.length && drained(), `all six delivered and the stream drained (got ${JSON.stringify(got)})`, 15_000);
      await sleep(300); // a late repeat would show here
    } finally {
      await consumers.close();
    }
    expect(proxy.counts.droppedReplies - droppedBefore, 'the fault hit: one XREADGROUP reply with entries was dropped').toBe(1);
    expect(proxy.dropped.at(-1)!.at(-1)).toBe('>');
    expect(got).toEqual(texts);
    // The package closed only what it opened: the user's instance still works.
    expect(user.status).toBe('ready');
    expect(await user.ping()).toBe('PONG');
    user.disconnect();
    await node.close();
  }, 30_000);

  it('a lost reply, then a take-over by a second consumer: the order stays f1…f6 (no f3 before f1)', async () => {
    const namespace = ns();
    const texts = ['f1', 'f2', 'f3', 'f4', 'f5', 'f6'];
    const node = await producer(server.url, namespace, texts);
    const user = new Redis(proxy.url);
    user.on('error', () => {});
    const droppedBefore = proxy.counts.droppedReplies;
    proxy.dropNextReply(isReadNew, { onlyWithData: true, hangMs: 100 });
    const got: string[] = [];
    const first = await serveShardConsumers({
      redis: user, namespace, batchSize: 2, idleMs: 5, leaseMs: 3000, name: 'first',
      consume: (records) => { for (const r of records) got.push(r.payload.toString()); },
    });
    // The first consumer leaves once it has consumed something after the fault; a second takes
    // the shard over and claims what the first left pending.
    await until(() => proxy.counts.droppedReplies === droppedBefore + 1 && got.length >= 2, `the fault, then a batch consumed (dropped ${proxy.counts.droppedReplies}, pending rules ${proxy.pendingDrops}, got ${JSON.stringify(got)})`);
    await first.close();
    const second = await serveShardConsumers({
      redis: server.url, namespace, batchSize: 2, idleMs: 5, leaseMs: 3000, name: 'second',
      consume: (records) => { for (const r of records) got.push(r.payload.toString()); },
    });
    try {
      await until(() => new Set(got).size >= texts.length, `all six delivered (got ${JSON.stringify(got)})`, 15_000);
      await sleep(300);
    } finally {
      await second.close();
    }
    const firsts = got.filter((t, i) => got.indexOf(t) === i);
    expect(firsts).toEqual(texts);
    user.disconnect();
    await node.close();
  }, 30_000);

  it('CLIENT KILL TYPE normal while a consumer reads: every entry delivered once, in order, none pending', async () => {
    const namespace = ns();
    const texts = Array.from({ length: 40 }, (_, i) => `k${String(i).padStart(2, '0')}`);
    const node = await producer(server.url, namespace, texts);
    const user = new Redis(`redis://${HOST}:${server.port}`);
    user.on('error', () => {});
    const got: string[] = [];
    let killedWithData = 0;
    let killedClients = 0;
    const stream = `${namespace}:shard:{${namespace}:0}`;
    const consumers = await serveShardConsumers({
      redis: user, namespace, batchSize: 2, idleMs: 5, leaseMs: 3000,
      consume: async (records) => {
        for (const r of records) got.push(r.payload.toString());
        // Kill every normal client between reads while entries remain: the acknowledgement
        // or the next read is cut.
        if (got.length % 8 === 0) {
          const left = Number(server.cli('XLEN', stream));
          const killed = Number(server.cli('CLIENT', 'KILL', 'TYPE', 'normal'));
          killedClients += killed;
          if (left > 0 && killed > 0) killedWithData++;
        }
      },
    });
    const drained = async () => Number(server.cli('XLEN', stream)) === 0 && /^0\b/.test(server.cli('XPENDING', stream, 'shard-mapper'));
    try {
      await until(() => new Set(got).size >= texts.length && drained(), `all delivered and drained (got ${got.length})`, 20_000);
      await sleep(300);
    } finally {
      await consumers.close();
    }
    expect(killedWithData, 'kills that found entries still in the stream').toBeGreaterThan(0);
    expect(killedClients).toBeGreaterThan(0);
    const firsts = got.filter((t, i) => got.indexOf(t) === i);
    expect(firsts).toEqual(texts);
    user.disconnect();
    await node.close();
  }, 30_000);
});

describe.skipIf(!available)('shard-mapper/redis through faults: a user-made ioredis Cluster', () => {
  let cluster: RedisTestCluster;
  const proxies: FaultProxy[] = [];
  beforeAll(async () => {
    cluster = await RedisTestCluster.start(3);
    for (const n of cluster.nodes) proxies.push(await FaultProxy.start(n.port));
  }, 60_000);
  afterAll(async () => {
    for (const p of proxies) await p.close();
    await cluster?.dispose();
  });

  it('a lost XREADGROUP reply on a Cluster (default options: failover retry) strands nothing: f1…f6 in order, none pending', async () => {
    const namespace = ns();
    const texts = ['f1', 'f2', 'f3', 'f4', 'f5', 'f6'];
    // The user's Cluster reaches every node through its proxy (natMap rewrites the addresses
    // CLUSTER SLOTS gives); the producer goes direct.
    const natMap = Object.fromEntries(cluster.nodes.map((n, i) => [`${HOST}:${n.port}`, { host: HOST, port: proxies[i]!.port }]));
    const direct = new Cluster(cluster.startupNodes);
    const node = await RedisShardManager.create({ redis: direct, namespace, initialShards: 1, policy: { minShards: 1, maxShards: 1 } });
    for (const t of texts) { expect(node.push(t, t)).toBe(true); await node.flush(); }
    const user = new Cluster(proxies.map((p) => ({ host: HOST, port: p.port })), { natMap });
    user.on('error', () => {});
    for (const p of proxies) p.dropNextReply(isReadNew, { onlyWithData: true, hangMs: 100 });
    const got: string[] = [];
    const consumers = await serveShardConsumers({
      redis: user, namespace, batchSize: 2, idleMs: 5, leaseMs: 3000,
      consume: (records) => { for (const r of records) got.push(r.payload.toString()); },
    });
    const stream = `${namespace}:shard:{${namespace}:0}`;
    const drained = async () => Number(await direct.xlen(stream)) === 0 && Number(((await direct.xpending(stream, 'shard-mapper')) as unknown[])[0]) === 0;
    try {
      await until(() => got.length >= texts.length && drained(), `all six delivered and drained (got ${JSON.stringify(got)})`, 15_000);
      await sleep(300);
    } finally {
      await consumers.close();
    }
    const dropped = proxies.reduce((n, p) => n + p.counts.droppedReplies, 0);
    for (const p of proxies) p.clearDrops();
    expect(dropped, 'the fault hit: one XREADGROUP reply with entries was dropped').toBe(1);
    expect(got).toEqual(texts);
    expect(user.status).toBe('ready');
    user.disconnect();
    await node.close();
    direct.disconnect();
  }, 40_000);
});
