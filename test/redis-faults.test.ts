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
import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { join } from 'node:path';
import { HOST, REDIS_CLI, RedisTestCluster, RedisTestServer, redisAvailable } from './helpers/redis-server.js';
import { FaultProxy, proxiedServer } from './helpers/fault-proxy.js';
import { until } from './helpers/delivery.js';
import { prng } from './helpers/index.js';
import { FixtureProcess, type FixtureMessage } from './helpers/fixture-process.js';

const available = redisAvailable();
let nsCounter = 0;
const ns = () => `f${process.pid}-${++nsCounter}`;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));


/** A read of new entries (the one whose replay skips entries): XREADGROUP … >, or the script
 *  the consumers read with (smRead, whose last argument is the same '>'). */
const isReadNew = (words: string[]) => /^(XREADGROUP|EVALSHA|EVAL)$/i.test(words[0] ?? '') && words.at(-1) === '>';

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
  const env = proxiedServer();

  it('a lost XREADGROUP reply (connection hangs, then resets) strands nothing: f1…f6 delivered in order, none pending, the user instance left open', async () => {
    const namespace = ns();
    const texts = ['f1', 'f2', 'f3', 'f4', 'f5', 'f6'];
    const node = await producer(env.server.url, namespace, texts);
    // ioredis's defaults: autoResendUnfulfilledCommands true, offline queue on, 20 retries.
    const user = new Redis(env.proxy.url);
    user.on('error', () => {});
    const droppedBefore = env.proxy.counts.droppedReplies;
    // The first read of new entries that returns data loses its reply.
    env.proxy.dropNextReply(isReadNew, { onlyWithData: true, hangMs: 100 });
    const got: string[] = [];
    const consumers = await serveShardConsumers({
      redis: user, namespace, batchSize: 2, idleMs: 5, leaseMs: 3000,
      consume: (records) => { for (const r of records) got.push(r.payload.toString()); },
    });
    const stream = `${namespace}:shard:{${namespace}:0}`;
    const drained = async () => Number(env.server.cli('XLEN', stream)) === 0 && /^0\b/.test(env.server.cli('XPENDING', stream, 'shard-mapper'));
    try {
      await until(() => got.length >= texts.length && drained(), `all six delivered and the stream drained (got ${JSON.stringify(got)})`, 15_000);
      await sleep(300); // a late repeat would show here
    } finally {
      await consumers.close();
    }
    expect(env.proxy.counts.droppedReplies - droppedBefore, 'the fault hit: one XREADGROUP reply with entries was dropped').toBe(1);
    expect(env.proxy.dropped.at(-1)!.at(-1)).toBe('>');
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
    const node = await producer(env.server.url, namespace, texts);
    const user = new Redis(env.proxy.url);
    user.on('error', () => {});
    const droppedBefore = env.proxy.counts.droppedReplies;
    env.proxy.dropNextReply(isReadNew, { onlyWithData: true, hangMs: 100 });
    const got: string[] = [];
    const first = await serveShardConsumers({
      redis: user, namespace, batchSize: 2, idleMs: 5, leaseMs: 3000, name: 'first',
      consume: (records) => { for (const r of records) got.push(r.payload.toString()); },
    });
    // The first consumer leaves once it has consumed something after the fault; a second takes
    // the shard over and claims what the first left pending.
    await until(() => env.proxy.counts.droppedReplies === droppedBefore + 1 && got.length >= 2, `the fault, then a batch consumed (dropped ${env.proxy.counts.droppedReplies}, pending rules ${env.proxy.pendingDrops}, got ${JSON.stringify(got)})`);
    await first.close();
    const second = await serveShardConsumers({
      redis: env.server.url, namespace, batchSize: 2, idleMs: 5, leaseMs: 3000, name: 'second',
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

  it("a user instance's own options (keyPrefix, stringNumbers, offline queue, retries forever, RESP3 objects on ioredis 6) do not reach the package's connections", async () => {
    const namespace = ns();
    const options = {
      keyPrefix: 'app:', stringNumbers: true, enableOfflineQueue: true, maxRetriesPerRequest: null,
      autoResendUnfulfilledCommands: true, protocol: 3, replyMapping: 'resp3', // the last two: ioredis 6 only
    };
    const user = new Redis(env.server.url, options as never);
    user.on('error', () => {});
    const node = await RedisShardManager.create({ redis: user, namespace, initialShards: 2 });
    for (let i = 0; i < 200; i++) expect(node.push(`k${i}`, `e${i}`)).toBe(true);
    await node.flush();
    const got: string[] = [];
    const consumers = await serveShardConsumers({ redis: user, namespace, idleMs: 5, consume: (records) => { for (const r of records) got.push(r.payload.toString()); } });
    try {
      await until(() => got.length >= 200, () => `200 deliveries (got ${got.length})`);
      await sleep(200);
    } finally {
      await consumers.close();
      await node.close();
    }
    expect(new Set(got).size).toBe(200);
    expect(got.length).toBe(200);
    // The namespace's keys carry no prefix of the user's.
    expect(env.server.cli('EXISTS', `{${namespace}}:table`)).toBe('1');
    expect(env.server.cli('KEYS', `app:*${namespace}*`)).toBe('');
    // The instance is the user's: open, and still with its own prefix.
    expect(user.status).toBe('ready');
    await user.set('mine', '1');
    expect(env.server.cli('GET', 'app:mine')).toBe('1');
    user.disconnect();
  }, 30_000);

  it('a read that reaches Redis after its consumer lost the lease takes nothing: the new owner reads every entry, none skipped as a repeat', async () => {
    // The consumer c1 checks its lease, then its read of new entries stalls on the network
    // (held at its proxy) past the lease; c2 takes the shard, and only then does c1's read
    // reach Redis — with its reply lost. A read that does not check the lease in the same
    // step takes entries nobody will claim before c2 has acknowledged later frames of the
    // same node: the next owner then skips them as repeats (lost), or c1 delivers them late.
    const namespace = ns();
    const node = await producer(env.server.url, namespace, ['e1']);
    const second = await FaultProxy.start(env.server.port);
    const got: string[] = [];
    const consume = (records: { payload: Buffer }[]) => { for (const r of records) got.push(r.payload.toString()); };
    const c1 = await serveShardConsumers({ redis: env.proxy.url, namespace, name: 'c1', batchSize: 2, idleMs: 5, leaseMs: 600, consume });
    let c2: Awaited<ReturnType<typeof serveShardConsumers>> | undefined;
    const stream = `${namespace}:shard:{${namespace}:0}`;
    const drained = async () => Number(env.server.cli('XLEN', stream)) === 0 && /^0\b/.test(env.server.cli('XPENDING', stream, 'shard-mapper'));
    try {
      await until(() => got.length === 1, 'c1 consumed e1');
      const late = env.proxy.holdNextRequest(isReadNew);
      expect((await late.arrived).at(-1), "c1's read of new entries is held").toBe('>');
      // c2 takes the shard once c1's lease ran out (c1 is stuck in its read, so it cannot
      // renew); c2's own first read of new entries is held too, so c1's read runs first.
      const c2Read = second.holdNextRequest(isReadNew);
      c2 = await serveShardConsumers({ redis: second.url, namespace, name: 'c2', batchSize: 2, idleMs: 5, leaseMs: 5000, consume });
      await c2Read.arrived;
      expect(c2.owned(), 'c2 owns the shard while c1 still waits on its read').toEqual([0]);
      for (const t of ['e2', 'e3', 'e4', 'e5']) { expect(node.push(t, t)).toBe(true); await node.flush(); }
      env.proxy.dropNextReply(isReadNew, { onlyWithData: true, hangMs: 50 });
      late.release();
      await late.answered; // c1's read ran in Redis, after c2 took the shard
      env.proxy.clearDrops(); // a refused read carries no entries: its rule may be left unused
      c2Read.release();
      await until(() => got.length >= 5, () => `c2 consumed what is left (got ${JSON.stringify(got)})`, 5_000).catch(() => {});
      // Then c2 leaves and c1 takes the shard back: whatever c1 still has pending is claimed now.
      await c2.close();
      c2 = undefined;
      await until(drained, () => `the stream drained (got ${JSON.stringify(got)})`, 15_000);
      await sleep(300); // a late delivery would show here
    } finally {
      await c2?.close();
      await c1.close();
      await second.close();
      await node.close();
    }
    const firsts = got.filter((t, i) => got.indexOf(t) === i);
    expect(firsts).toEqual(['e1', 'e2', 'e3', 'e4', 'e5']);
  }, 40_000);

  it('producer nodes SIGKILLed while they push leave the backlog exact: a backlog of 3000 made afterwards reads as 3000 (each kill used to lose a window of stored-event counts, and the backlog read as none)', async () => {
    const namespace = ns();
    const url = env.server.url;
    const policy = { minShards: 2, maxShards: 2, metricsWindowMs: 50 };
    // This node is first in the namespace: it holds the controller lease (the pushers do not).
    const node = await RedisShardManager.create({ redis: url, namespace, initialShards: 2, policy, ringBufferCapacity: 10_000 });
    let consumed = 0;
    let consumers = await serveShardConsumers({ redis: url, namespace, idleMs: 5, consume: (records) => { consumed += records.length; } });
    const stream = (id: number) => `${namespace}:shard:{${namespace}:${id}}`;
    const progress = (id: number) => `${namespace}:progress:{${namespace}:${id}}`;
    const killed: string[] = [];
    try {
      await until(() => node.isController, 'this node holds the controller lease');
      for (let k = 0; k < 3; k++) {
        const pusher = new FixtureProcess(`pusher ${k}`, 'redis-pusher.mjs', [url, namespace, '3000000']);
        try {
          killed.push(String((await pusher.waitFor('ready', 20_000)).nodeId));
          const stored = () => Number(pusher.last.status?.stored ?? 0);
          await until(() => stored() >= 20_000, () => `pusher ${k} stored 20 000 events (has ${stored()})`, 30_000);
        } finally {
          await pusher.kill();
        }
        // The fault hit a node that was still pushing (its bounded loop had not ended).
        expect(pusher.messages.some((m) => m.type === 'done'), `pusher ${k} was killed while pushing`).toBe(false);
      }
      await until(() => Number(env.server.cli('XLEN', stream(0))) + Number(env.server.cli('XLEN', stream(1))) === 0, 'every stored frame consumed', 60_000);
      // Every killed node had frames stored and consumed: its dedup mark is on a shard.
      for (const id of killed) {
        const marked = [0, 1].some((s) => env.server.cli('HEXISTS', progress(s), `n:${id}`) === '1');
        expect(marked, `node ${id}'s frames were stored and consumed`).toBe(true);
      }
      expect(consumed).toBeGreaterThanOrEqual(60_000);
      await consumers.close();
      for (let i = 0; i < 3000; i++) expect(node.push((i * 2654435761) >>> 0, `b:${i}`)).toBe(true);
      await node.flush();
      const backlog = () => [0, 1].reduce((sum, id) => sum + (node.metricsView().mapper.lastMetrics(id)?.bufferLen ?? 0), 0);
      await until(() => backlog() === 3000, () => `the controller reads a backlog of 3000 (reads ${backlog()})`, 10_000);
      consumers = await serveShardConsumers({ redis: url, namespace, idleMs: 5, consume: (records) => { consumed += records.length; } });
      await until(() => backlog() === 0, () => `the backlog read as drained (reads ${backlog()})`, 20_000);
    } finally {
      await consumers.close();
      await node.close();
    }
  }, 120_000);

  it("an XADD whose reply is lost while its shard is drained and removed: the node learns from the shard's marks that it was consumed, and does not route it again (no repeat under a new dedup id)", async () => {
    const namespace = ns();
    const policy = { minShards: 1, maxShards: 4, autoScale: false, metricsWindowMs: 50, cooldownMs: 1 };
    // The controller goes straight to Redis; the node under test through the proxy.
    const ctl = await RedisShardManager.create({ redis: env.server.url, namespace, initialShards: 1, drainGraceMs: 50, policy });
    await ctl.tick(); // ctl holds the controller lease
    const node = await RedisShardManager.create({ redis: env.proxy.url, namespace, policy });
    const got: { text: string; id: string; shard: number }[] = [];
    const consumers = await serveShardConsumers({
      redis: env.server.url, namespace, idleMs: 5,
      consume: (records, shard) => { for (const r of records) got.push({ text: r.payload.toString(), id: r.dedupId, shard }); },
    });
    const droppedBefore = env.proxy.counts.droppedReplies;
    try {
      expect(node.table().shards.map((x) => x.id)).toEqual([0]);
      // The node's XADD reaches Redis; its reply is lost and the connection hangs for 4 s.
      env.proxy.dropNextReply((w) => w[0]?.toUpperCase() === 'XADD', { onlyWithData: false, hangMs: 4000 });
      expect(node.push('k', 'e1')).toBe(true);
      await until(() => got.length === 1, 'e1 consumed from shard 0');
      expect(env.proxy.counts.droppedReplies - droppedBefore, 'the XADD reply was dropped').toBe(1);
      // Meanwhile shard 0 is replaced and removed (drained: its stream is empty).
      await ctl.addShard();
      await ctl.removeShard(0, { timeoutMs: 3000 });
      expect(ctl.table().shards.map((x) => x.id), 'shard 0 removed while the XADD was unanswered').toEqual([1]);
      expect(node.stats().buffered, 'the node still holds e1: its XADD was not answered').toBe(1);
      // The hang ends, the connection is cut, the node retries: no stream (removed).
      await node.flush();
      await sleep(500); // a repeat on shard 1 would show here
    } finally {
      await consumers.close();
      await node.close();
      await ctl.close();
    }
    expect(got.map((g) => g.text)).toEqual(['e1']);
    expect(got[0]!.shard).toBe(0);
    expect(node.stats().rerouted).toBe(0);
  }, 40_000);

  it('CLIENT KILL TYPE normal while a consumer reads: every entry delivered once, in order, none pending', async () => {
    const namespace = ns();
    const texts = Array.from({ length: 40 }, (_, i) => `k${String(i).padStart(2, '0')}`);
    const node = await producer(env.server.url, namespace, texts);
    const user = new Redis(`redis://${HOST}:${env.server.port}`);
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
          const left = Number(env.server.cli('XLEN', stream));
          const killed = Number(env.server.cli('CLIENT', 'KILL', 'TYPE', 'normal'));
          killedClients += killed;
          if (left > 0 && killed > 0) killedWithData++;
        }
      },
    });
    const drained = async () => Number(env.server.cli('XLEN', stream)) === 0 && /^0\b/.test(env.server.cli('XPENDING', stream, 'shard-mapper'));
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

  // A consumer taking a shard over forgets group members that are gone (nothing pending, idle
  // two lease periods). When it checked, then deleted in a second command, a member could come
  // back between the two: XGROUP DELCONSUMER then dropped that member's pending entries, and no
  // read delivered them again (this test left them stranded: XPENDING 0, XLEN 4, none delivered).
  it('forgetting an idle consumer cannot drop the entries it took since: the forgetting is held at the proxy while that consumer comes back and reads', async () => {
    const namespace = ns();
    const stream = `${namespace}:shard:{${namespace}:0}`;
    const leaseMs = 100;
    // A joins the group and leaves: nothing pending, soon idle past two lease periods.
    const first = await serveShardConsumers({ redis: env.server.url, namespace, name: 'A', leaseMs, idleMs: 5, consume: () => {} });
    const node = await RedisShardManager.create({ redis: env.server.url, namespace, initialShards: 1, policy: { minShards: 1, maxShards: 1 } });
    await until(() => /name\s+A\b|\bA\b/.test(env.server.cli('XINFO', 'CONSUMERS', stream, 'shard-mapper')), 'A in the group');
    await first.close();
    await sleep(3 * leaseMs);
    // B takes the shard through the proxy; its forgetting of A is held there.
    // Held: the delete (XGROUP DELCONSUMER, after a separate check) or the step that checks
    // and deletes at once (a script called with the group, B's name and the idle bound).
    const isForget = (w: string[]) => (w[0]?.toUpperCase() === 'XGROUP' && w[1]?.toUpperCase() === 'DELCONSUMER')
      || (/^EVAL(SHA)?$/i.test(w[0] ?? '') && w.at(-3) === 'shard-mapper' && w.at(-2) === 'B' && w.at(-1) === String(2 * leaseMs));
    const forget = env.proxy.holdNextRequest(isForget);
    const second = await serveShardConsumers({ redis: env.proxy.url, namespace, name: 'B', leaseMs, idleMs: 5, consume: () => {} });
    await forget.arrived;
    // B waits on the held request; its lease runs out. A comes back, takes the shard, reads
    // the new entries and refuses them (they stay pending at A) until the delete has run.
    for (const t of ['e1', 'e2', 'e3', 'e4']) { node.push(t, t); await node.flush(); } // one entry each
    let released = false;
    let refused = 0;
    const got: string[] = [];
    const back = await serveShardConsumers({
      redis: env.server.url, namespace, name: 'A', leaseMs, idleMs: 5,
      consume: (records) => {
        if (!released) { refused++; throw new Error('not yet'); }
        for (const r of records) got.push(r.payload.toString());
      },
    });
    try {
      await until(() => refused > 0, 'A read the entries (and refused them)');
      expect(env.server.cli('XPENDING', stream, 'shard-mapper').split('\n')[0], 'the fault hit: A holds the entries').toBe('4');
      forget.release();
      await forget.answered;
      released = true;
      await until(() => got.length >= 4, () => `all four delivered (got ${JSON.stringify(got)}; XPENDING ${env.server.cli('XPENDING', stream, 'shard-mapper').split('\n')[0]}, XLEN ${env.server.cli('XLEN', stream)})`, 10_000);
      await sleep(200); // a late repeat would show here
      expect(got).toEqual(['e1', 'e2', 'e3', 'e4']);
    } finally {
      forget.release(); // (a no-op once released) B must not wait for ever if a check failed
      await Promise.all([back.close(), second.close(), node.close()]);
    }
  });
});

describe.skipIf(!available)('shard-mapper/redis through faults: operator calls', () => {
  const env = proxiedServer();

  it('an LPUSH of an operator request whose reply is lost (it ran; the connection hangs, then resets) is withdrawn and queued again: the call still succeeds, one shard added', async () => {
    const namespace = ns();
    const clock = { t: 0 };
    // The controller (straight to Redis) runs a window only when the test ticks it.
    const a = await RedisShardManager.create({
      redis: env.server.url, namespace, initialShards: 1, clock: () => clock.t,
      policy: { minShards: 1, maxShards: 4, metricsWindowMs: 60_000, autoScale: false },
    });
    const b = await RedisShardManager.create({ redis: env.proxy.url, namespace, controller: false });
    try {
      await a.tick();
      const opsKey = `{${namespace}}:ops`;
      const { droppedReplies, connections } = env.proxy.counts;
      env.proxy.dropNextReply((w) => /^lpush$/i.test(w[0] ?? '') && w[1] === opsKey, { onlyWithData: false, hangMs: 300 });
      let settled = false;
      const call = b.addShard({ timeoutMs: 20_000 }).then((id) => id, (e: Error) => e).finally(() => { settled = true; });
      // The fault hit what it aims at: the LPUSH ran (the request is queued), its reply was lost,
      // and the connection was cut (the call saw the LPUSH fail) before any controller window.
      await until(() => env.proxy.counts.droppedReplies === droppedReplies + 1, 'the LPUSH reply dropped');
      expect(env.server.cli('LLEN', opsKey)).toBe('1');
      await until(() => env.proxy.counts.connections > connections, 'the hung connection cut, the node connected again');
      await sleep(300); // the call is past its failed LPUSH (a call that gave up would have settled by now)
      for (let i = 0; i < 300 && !settled; i++) {
        await sleep(30);
        clock.t += 60_000;
        await a.tick();
      }
      expect(await call).toBe(1);
      expect(a.table().nextId).toBe(2); // queued twice, acted once: the first copy was withdrawn
      expect(a.table().shards.map((s) => s.id)).toEqual([0, 1]);
      expect(env.server.cli('LLEN', opsKey)).toBe('0');
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
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

// ---------------------------------------------------------------------------------------
// In the spirit of Jepsen, bounded and on loopback: producer node processes and consumer
// processes on one namespace, each with its own user-made ioredis instance (defaults) that
// reaches Redis through the fault proxies, while a seeded schedule drops replies (reads of
// new entries, XADDs, scripts), cuts every connection, delays replies, and the server kills
// its clients (CLIENT KILL TYPE normal). Then: every accepted event delivered; per (shard,
// node) first deliveries in push order; repeats only with their dedup id; every flush() and
// close() resolved within a bounded wait; shards drained and removed down to minShards.

type Msg = FixtureMessage;

const SEED = Number(process.env.FAULT_SEED ?? 20261205);
const POLICY = { minShards: 1, maxShards: 4, fillRatioThreshold: 0.5, cooldownMs: 300, scaleDownDelayMs: 600, underutilizedThreshold: 0.1, metricsWindowMs: 50 };

interface Tally {
  droppedReads: number; droppedOther: number; cutLinks: number; delayed: number;
  kills: number; killsWithDataInFlight: number; steps: number;
}

interface Scenario {
  label: string;
  proxies: FaultProxy[];
  servers: RedisTestServer[];
  /** What the fixtures connect to: a URL, or startup nodes + natMap for a Cluster. */
  target: { url: string } | { cluster: { host: string; port: number }[]; natMap: Record<string, { host: string; port: number }> };
  producers: string[];
  events: number;
  /** A client straight to Redis (no proxy), for the diagnosis in failure messages. */
  direct: () => Redis | Cluster;
}

/** CLIENT KILL TYPE normal would end a MONITOR too: kill the others one by one (debugging only). */
function killAllButMonitors(server: RedisTestServer): number {
  const ids = server.cli('CLIENT', 'LIST', 'TYPE', 'normal').split('\n')
    .filter((line) => !/ flags=\S*O/.test(line) && !/ cmd=client/.test(line))
    .map((line) => /id=(\d+)/.exec(line)?.[1]).filter((id) => id !== undefined);
  let killed = 0;
  for (const id of ids) killed += Number(server.cli('CLIENT', 'KILL', 'ID', id!));
  return killed;
}

/** Per shard: events appended and acknowledged (the controller's backlog is their difference),
 *  stream length and pending entries — the state a failed wait is explained by. */
async function diagnose(client: Redis | Cluster, namespace: string, ids: number[]): Promise<string> {
  const tag = `{${namespace}}`;
  const out: string[] = [];
  for (const id of ids) {
    const stream = `${namespace}:shard:{${namespace}:${id}}`;
    const len = await client.xlen(stream).catch(() => -1);
    const pending = await client.xpending(stream, 'shard-mapper').catch(() => [-1]) as unknown[];
    // in: counted by the nodes with each XADD; out and acked: by the smCommit script with each XACK.
    const [into, acked, outOf] = await client.hmget(`${namespace}:progress:{${namespace}:${id}}`, 'in', 'acked', 'out').catch(() => [null, null, null]);
    out.push(`shard ${id}: in ${into ?? 0}, out ${outOf ?? 0}, acked ${acked ?? 0}, XLEN ${len}, pending ${pending[0]}`);
  }
  const dead = await client.xlen(`${tag}:dead`).catch(() => -1);
  out.push(`dead letters ${dead}`);
  return out.join('; ');
}

async function faultRun(s: Scenario): Promise<void> {
  const namespace = ns();
  const total = s.producers.length * s.events;
  const deliveries = new Map<string, { count: number; ids: Set<string> }>();
  const lastFirst = new Map<string, number>(); // `${shard}/${producer}` → seq of the last first delivery
  const outOfOrder: string[] = [];
  let received = 0;
  const onMessage = (m: Msg) => {
    if (m.type !== 'got') return;
    for (const [text, id] of m.items as [string, string, string, number][]) {
      received++;
      let d = deliveries.get(text);
      if (!d) {
        deliveries.set(text, d = { count: 0, ids: new Set() });
        const [producer, seq] = text.split(':');
        const key = `${m.shard}/${producer}`;
        if ((lastFirst.get(key) ?? -1) >= Number(seq)) outOfOrder.push(`shard ${m.shard}: ${text} after ${producer}:${lastFirst.get(key)}`);
        lastFirst.set(key, Number(seq));
      }
      d.count++;
      d.ids.add(id);
    }
  };
  const children: FixtureProcess[] = [];
  const tally: Tally = { droppedReads: 0, droppedOther: 0, cutLinks: 0, delayed: 0, kills: 0, killsWithDataInFlight: 0, steps: 0 };
  const rng = prng(SEED + s.label.length); // mulberry32 as floats: the same seed, the same fault schedule
  const direct = s.direct();
  direct.on('error', () => {});
  let chaos = true;
  // Which kinds of fault have hit so far (a drop counts once the proxy really dropped a reply).
  const hits = {
    dropRead: () => s.proxies.some((p) => p.dropped.some(isReadNew)),
    dropOther: () => s.proxies.some((p) => p.dropped.some((w) => !isReadNew(w))),
    cut: () => s.proxies.some((p) => p.counts.linksCut > 0),
    delay: () => s.proxies.some((p) => p.counts.delayedReplies > 0),
    kill: () => tally.killsWithDataInFlight > 0,
  };
  type Kind = keyof typeof hits;
  const kindOf = (r: number): Kind => r < 0.25 ? 'dropRead' : r < 0.4 ? 'dropOther' : r < 0.55 ? 'cut' : r < 0.7 ? 'delay' : 'kill';
  // The faults start once every process has connected (create() refuses an unreachable Redis
  // by design) and stop when every event has been delivered. The first five steps go through
  // every kind once; after that, a kind that has not hit yet is chosen before random ones,
  // so a slow machine's short run still proves every kind of fault (CI once ended a run
  // whose only kills fell where no event was in flight).
  const runSchedule = async () => {
    while (chaos) {
      await sleep(100 + Math.floor(rng() * 200));
      if (!chaos) break;
      tally.steps++;
      const proxy = s.proxies[Math.floor(rng() * s.proxies.length)]!;
      const missing = (Object.keys(hits) as Kind[]).filter((k) => !hits[k]());
      const random = rng();
      const catchUp = tally.steps > 5 && missing.length > 0 && tally.steps % 2 === 0;
      const kind = tally.steps <= 5 ? kindOf([0.1, 0.3, 0.5, 0.6, 0.9][tally.steps - 1]!)
        : catchUp ? missing[tally.steps % missing.length]! : kindOf(random);
      // A drop waits for its command on the proxy it was armed on; on a Cluster that master
      // may hold no stream any more, so a kind that has not hit yet is armed on every proxy.
      const armOn = catchUp ? s.proxies : [proxy];
      if (kind === 'dropRead') {
        for (const p of armOn) if (p.pendingDrops < 2) p.dropNextReply(isReadNew, { onlyWithData: true, hangMs: Math.floor(rng() * 300) });
      } else if (kind === 'dropOther') {
        const which = rng() < 0.5 ? 'XADD' : 'EVALSHA';
        for (const p of armOn) if (p.pendingDrops < 2) p.dropNextReply((w) => w[0]?.toUpperCase() === which, { onlyWithData: false, hangMs: Math.floor(rng() * 200) });
      } else if (kind === 'cut') {
        proxy.cutAll();
      } else if (kind === 'delay') {
        proxy.delayReplies(20 + Math.floor(rng() * 130));
        await sleep(300 + Math.floor(rng() * 500));
        proxy.delayReplies(0);
      } else {
        const server = s.servers[Math.floor(rng() * s.servers.length)]!;
        // Wait (bounded) for events in flight, so the kill can hit them.
        let inFlight = await eventsInFlight();
        for (let i = 0; i < 20 && inFlight === 0 && chaos; i++) { await sleep(10); inFlight = await eventsInFlight(); }
        const killed = monitors.length === 0 ? Number(server.cli('CLIENT', 'KILL', 'TYPE', 'normal')) : killAllButMonitors(server);
        tally.kills += killed;
        if (killed > 0 && inFlight > 0) tally.killsWithDataInFlight++;
      }
    }
  };
  let schedule: Promise<void> = Promise.resolve();
  /** Events accepted and not yet consumed: in the nodes' send buffers, or in the shards'
   *  streams (entries not yet acknowledged and deleted). */
  const eventsInFlight = async (): Promise<number> => {
    let n = 0;
    for (const c of children) n += ((c.last.status?.stats as { buffered?: number } | undefined)?.buffered) ?? 0;
    const table = children[0]?.last.status?.table as { shards: { id: number }[] } | undefined;
    for (const { id } of table?.shards ?? []) n += await direct.xlen(`${namespace}:shard:{${namespace}:${id}}`).catch(() => 0);
    return n;
  };
  // FAULT_MONITOR_DIR (a debugging aid, off by default): every command the servers run, in
  // their order (redis-cli MONITOR), one file per server.
  const monitors = process.env.FAULT_MONITOR_DIR
    ? s.servers.map((server, i) => {
      const out = openSync(join(process.env.FAULT_MONITOR_DIR!, `${s.label}-${SEED}-${i}.log`), 'w');
      return spawn(REDIS_CLI!, ['-h', HOST, '-p', String(server.port), 'MONITOR'], { stdio: ['ignore', out, 'ignore'] });
    })
    : [];
  try {
    const producers = s.producers.map((id) => new FixtureProcess(id, 'fault-node.mjs', [JSON.stringify({ target: s.target, namespace, id, count: s.events, perTick: 10, tickMs: 30, policy: POLICY })], onMessage));
    children.push(...producers);
    for (const p of producers) await p.waitFor('ready', 60_000);
    const consumers = ['c1', 'c2'].map((name) => new FixtureProcess(name, 'fault-consumer.mjs', [JSON.stringify({ target: s.target, namespace, name })], onMessage));
    children.push(...consumers);
    for (const c of consumers) await c.waitFor('ready', 60_000);

    schedule = runSchedule();
    for (const p of producers) p.send('push');
    // flush() resolves once every accepted event is stored: bounded, or the test fails.
    const flushed = [];
    for (const p of producers) flushed.push(await p.waitFor('flushed', 120_000));
    try {
      await until(() => deliveries.size >= total, () => `all ${total} events delivered (have ${deliveries.size})`, 60_000);
    } catch (error) {
      const ids = ((producers[0]!.last.status?.table as { shards: { id: number }[] } | undefined)?.shards ?? []).map((x) => x.id);
      const missing: string[] = [];
      for (const id of s.producers) for (let seq = 0; seq < s.events; seq++) if (!deliveries.has(`${id}:${seq}`)) missing.push(`${id}:${seq}`);
      const nodes = producers.map((p) => `${p.name} ${JSON.stringify(p.last.status?.stats)} ${JSON.stringify(p.last.status?.events)}`);
      expect.fail(`${(error as Error).message}; ${await diagnose(direct, namespace, ids)}; missing ${missing.length}: ${missing.slice(0, 40).join(' ')}; `
        + `last first deliveries per shard/producer ${JSON.stringify([...lastFirst])}; nodes: ${nodes.join(' | ')}; consumer errors: ${consumers.map((c) => JSON.stringify(c.last.status?.errors)).join(' | ')}`);
    }
    chaos = false;
    await schedule;
    for (const p of s.proxies) { p.clearDrops(); p.delayReplies(0); }
    await sleep(500); // keep listening: a late repeat would show here

    // Drained and removed: once idle, the controller scales down to minShards and removes the rest.
    let table: { shards: { id: number; state: string }[] } | undefined;
    let settled = false;
    const deadline = performance.now() + 60_000;
    while (!settled && performance.now() < deadline) {
      producers[0]!.send('table');
      const m = await producers[0]!.waitFor('table', 20_000);
      table = m.table as typeof table;
      settled = table!.shards.length === POLICY.minShards && table!.shards.every((x) => x.state === 'active');
      if (!settled) await sleep(100);
    }
    if (!settled) {
      const state = await diagnose(direct, namespace, table!.shards.map((x) => x.id));
      expect.fail(`the namespace never came back to ${POLICY.minShards} active shard within 60 s: table ${JSON.stringify(table)}; ${state}; controller events ${JSON.stringify(producers.map((p) => p.last.table?.events))}`);
    }
    // The removals were counted by whichever producer held the lease when they happened: ask
    // every producer now (a status sent before the last removal would miss it).
    for (const p of producers) p.send('table');
    const tables = [];
    for (const p of producers) tables.push(await p.waitFor('table', 20_000));
    const removed = tables.reduce((n, m) => n + ((m.events as Record<string, number> | undefined)?.shardRemoved ?? 0), 0);

    for (const p of producers) p.send('close');
    const closed = [];
    for (const p of producers) closed.push(await p.waitFor('closed', 60_000));
    for (const c of consumers) c.send('close');
    const consumersClosed = [];
    for (const c of consumers) consumersClosed.push(await c.waitFor('closed', 60_000));

    // The faults hit.
    for (const p of s.proxies) {
      tally.droppedReads += p.dropped.filter(isReadNew).length;
      tally.droppedOther += p.dropped.filter((w) => !isReadNew(w)).length;
      tally.cutLinks += p.counts.linksCut;
      tally.delayed += p.counts.delayedReplies;
    }
    console.log(`fault run (${s.label}, seed ${SEED}): ${total} events, ${received} deliveries, ${tally.steps} fault steps: `
      + `${tally.droppedReads} XREADGROUP > replies with entries dropped, ${tally.droppedOther} other replies dropped, ${tally.cutLinks} connections cut, `
      + `${tally.delayed} replies delayed, ${tally.kills} clients killed (${tally.killsWithDataInFlight} kills with events in the send buffers or streams); ${removed} shards removed; `
      + `flush ${flushed.map((m) => Math.round(m.ms as number)).join('/')} ms, close ${closed.map((m) => Math.round(m.ms as number)).join('/')} ms`);
    expect(tally.droppedReads, 'dropped replies of reads that carried entries').toBeGreaterThan(0);
    expect(tally.droppedOther, 'dropped replies of XADD / scripts').toBeGreaterThan(0);
    expect(tally.cutLinks, 'connections cut').toBeGreaterThan(0);
    expect(tally.delayed, 'replies delayed').toBeGreaterThan(0);
    expect(tally.killsWithDataInFlight, 'CLIENT KILLs with events in flight').toBeGreaterThan(0);

    // Every accepted event delivered; repeats only with their dedup id; order kept.
    for (const m of flushed) expect((m.stats as { pushed: number }).pushed).toBe(s.events);
    const missing: string[] = [];
    for (const id of s.producers) for (let seq = 0; seq < s.events; seq++) if (!deliveries.has(`${id}:${seq}`)) missing.push(`${id}:${seq}`);
    expect(missing.slice(0, 20), `${missing.length} events lost`).toEqual([]);
    expect(deliveries.size).toBe(total);
    expect([...deliveries].filter(([, d]) => d.ids.size !== 1).slice(0, 5), 'a repeat under another dedup id').toEqual([]);
    expect(outOfOrder.slice(0, 10)).toEqual([]);
    expect(removed, 'shards drained and removed').toBeGreaterThan(0);
    // The users' instances were left open by the package (each fixture closes its own).
    for (const m of [...closed, ...consumersClosed]) expect(m.userStatus).toBe('ready');
  } finally {
    chaos = false;
    await schedule;
    await Promise.all(children.map((c) => c.kill()));
    for (const m of monitors) m.kill();
    direct.disconnect();
  }
}

describe.skipIf(!available)('shard-mapper/redis under random faults, several processes (Jepsen-style, bounded)', () => {
  it('standalone: 3 producer nodes, 2 consumers, user-made Redis instances through the fault proxy', async () => {
    const server = await RedisTestServer.start();
    const proxy = await FaultProxy.start(server.port);
    try {
      await faultRun({
        label: 'standalone', proxies: [proxy], servers: [server], target: { url: proxy.url }, producers: ['p1', 'p2', 'p3'], events: 3000,
        direct: () => new Redis(server.url),
      });
    } finally {
      await proxy.close();
      await server.dispose();
    }
  }, 300_000);

  // This run lost events before consumers read under their lease (20–40 events in 2 of about
  // 15 runs: a read that reached Redis after its lease took entries the next owner skipped as
  // repeats; see 'a read that reaches Redis after its consumer lost the lease' above).
  it('Cluster: 2 producer nodes, 2 consumers, user-made `new Cluster(...)` instances through one proxy per master', async () => {
    const cluster = await RedisTestCluster.start(3);
    const proxies: FaultProxy[] = [];
    try {
      for (const n of cluster.nodes) proxies.push(await FaultProxy.start(n.port));
      const natMap = Object.fromEntries(cluster.nodes.map((n, i) => [`${HOST}:${n.port}`, { host: HOST, port: proxies[i]!.port }]));
      await faultRun({
        label: 'cluster', proxies, servers: cluster.nodes, producers: ['p1', 'p2'], events: 2500,
        target: { cluster: proxies.map((p) => ({ host: HOST, port: p.port })), natMap },
        direct: () => new Cluster(cluster.startupNodes),
      });
    } finally {
      for (const p of proxies) await p.close();
      await cluster.dispose();
    }
  }, 300_000);
});
