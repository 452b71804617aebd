// The controller and the shard table of shard-mapper/redis against a real redis-server:
// Redis losing data, the shard id limit, streams that disappear, operator calls that time out
// or whose controller fails, and decision clocks that survive errors and handovers. Faults
// are real (a redis-server restarted without persistence, DEL, a key of the wrong type, a
// controller closing mid-request); scaling runs on injected clocks driven with tick(); every
// wait is a bounded wait for a condition.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DedupFilter, RedisShardManager, serveShardConsumers, type RedisManagerEvent, type ShardConsumers } from 'shard-mapper/redis';
import * as redisModule from 'shard-mapper/redis';
import { Cluster } from 'ioredis';
import { RedisTestCluster, RedisTestServer, redisAvailable } from './helpers/redis-server.js';
import { sleep, until } from './helpers/delivery.js';

const available = redisAvailable();
let server: RedisTestServer;
let nsCounter = 0;
const ns = () => `c${process.pid}-${++nsCounter}`;

beforeAll(async () => { if (available) server = await RedisTestServer.start(); });
afterAll(async () => { await server?.dispose(); });


/** Settles within `ms`: its value, or 'pending'. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | 'pending'> {
  return Promise.race([p, sleep(ms).then(() => 'pending' as const)]);
}

/** Start an operator call, then run the controller's windows (advancing its clock) until it settles. */
async function drive<T>(controller: RedisShardManager, clock: { t: number }, call: () => Promise<T>, windows = 200): Promise<T> {
  let settled = false;
  const p = call().finally(() => { settled = true; });
  p.catch(() => {});
  for (let i = 0; i < windows && !settled; i++) {
    await sleep(30); // the caller's request reaches the queue, then its answer reaches the caller
    clock.t += 60;
    await controller.tick();
  }
  return p;
}

/** A consumer that records every delivery: shard, payload text, dedup id. */
async function collector(url: string, namespace: string) {
  const got: { shard: number; text: string; id: string }[] = [];
  const consumers: ShardConsumers = await serveShardConsumers({
    redis: url, namespace, leaseMs: 600, idleMs: 5,
    consume: (records, shard) => { for (const r of records) got.push({ shard, text: r.payload.toString(), id: r.dedupId }); },
  });
  return { got, consumers };
}

const streamKey = (namespace: string, id: number) => `${namespace}:shard:{${namespace}:${id}}`;

describe.skipIf(!available)('the Redis controller', () => {
  it('Redis restarted without persistence: nodes detect it, the controller recovers one table every node follows, flush() resolves, no node id or shard id is reused', async () => {
    const volatile = await RedisTestServer.start({ config: { appendonly: 'no' } });
    try {
      const namespace = ns();
      const policy = { minShards: 1, maxShards: 8, metricsWindowMs: 60_000, autoScale: false };
      const clock = { t: 0 };
      const events: Record<string, RedisManagerEvent[]> = { a: [], b: [], c: [] };
      const a = await RedisShardManager.create({ redis: volatile.url, namespace, initialShards: 2, policy, clock: () => clock.t, onRedisEvent: (e) => events.a!.push(e) });
      const b = await RedisShardManager.create({ redis: volatile.url, namespace, controller: false, onRedisEvent: (e) => events.b!.push(e) });
      const gone = await RedisShardManager.create({ redis: volatile.url, namespace, controller: false });
      await gone.close(); // its number was handed out: no node may get it again
      await a.tick();
      expect(await drive(a, clock, () => a.addShard())).toBe(2);
      await b.tick();
      expect(b.table().nextId).toBe(3);
      const { got, consumers } = await collector(volatile.url, namespace);
      for (let i = 0; i < 300; i++) { a.push(i * 14_316_557, `a:${i}`); b.push(i * 14_316_557 + 7, `b:${i}`); }
      await Promise.all([a.flush(), b.flush()]);
      await until(() => got.length >= 600, '600 deliveries before the restart');
      const before = got.length;

      await volatile.restart(); // appendonly no, save "": everything in Redis is gone
      expect(volatile.cli('EXISTS', `{${namespace}}:table`)).toBe('0');
      for (let i = 300; i < 600; i++) { a.push(i * 14_316_557, `a:${i}`); b.push(i * 14_316_557 + 7, `b:${i}`); }
      // A node that joins now finds no table and makes a fresh one (it cannot know better).
      const c = await RedisShardManager.create({ redis: volatile.url, namespace, initialShards: 1, policy, onRedisEvent: (e) => events.c!.push(e), controller: false });
      for (let i = 0; i < 100; i++) c.push(i * 42_949_672, `c:${i}`);
      expect(new Set([a.nodeId, b.nodeId, c.nodeId]).size).toBe(3);

      // b sees another life of the table at its generation and reports what it knew. Its
      // connection may still be reconnecting after the restart (a tick then only reports a
      // Redis error), so tick until it has looked, boundedly.
      const detected = () => events.b!.some((e) => e.type === 'redisDataLoss' && e.stage === 'detected');
      for (let i = 0; i < 200 && !detected(); i++) { await b.tick(); if (!detected()) await sleep(25); }
      expect(detected()).toBe(true);
      // The lease was lost too: a finds its lease gone (steps down), takes it again and
      // recovers the namespace (again ticking through its own reconnect, boundedly).
      const recoveredEvent = () => events.a!.find((e) => e.type === 'redisDataLoss' && e.stage === 'recovered');
      for (let i = 0; i < 200 && !recoveredEvent(); i++) { await a.tick(); if (!recoveredEvent()) await sleep(25); }
      expect(a.isController).toBe(true);
      const recovered = recoveredEvent();
      expect(recovered).toMatchObject({ generation: 2 });
      await Promise.all([b.tick(), c.tick()]);
      for (const node of [a, b, c]) {
        expect(node.table()).toEqual(a.table());
        expect(node.table().generation).toBe(2);
      }
      expect(a.table().nextId).toBeGreaterThanOrEqual(3); // above every id used before the loss
      expect(a.table().shards.filter((s) => s.state === 'active').map((s) => s.id)).toEqual([0, 1, 2]);
      // Every node's buffered events are stored now.
      expect(await within(Promise.all([a.flush(), b.flush(), c.flush()]), 15_000)).not.toBe('pending');
      for (const node of [a, b, c]) expect(node.stats().buffered).toBe(0);
      await until(() => got.length >= before + 700, 'the 700 events pushed after the restart');
      await sleep(300); // and no more
      expect(got.length).toBe(before + 700);
      // Every delivery has its own dedup id (a reused node id would make two events share one).
      expect(new Set(got.map((g) => g.id)).size).toBe(got.length);
      expect(new Set(got.map((g) => g.text)).size).toBe(got.length);
      const filter = new DedupFilter();
      expect(got.filter((g) => !filter.isRepeat({ node: g.id.split(':')[0]!, frame: Number(g.id.split(':')[1]), index: Number(g.id.split(':')[2]) } as never, g.shard))).toHaveLength(got.length);
      // A shard added now gets an id never used in this namespace.
      expect(await drive(a, clock, () => b.addShard())).toBe(a.table().nextId - 1);
      expect(a.table().nextId - 1).toBeGreaterThanOrEqual(3);
      // A node joining after the recovery gets a number above every number handed out before
      // the loss (the live nodes had seen the counter reach the closed node's number).
      const d = await RedisShardManager.create({ redis: volatile.url, namespace, controller: false });
      const number = (n: RedisShardManager) => Number(n.nodeId.split('.')[0]);
      expect(number(gone)).toBe(3);
      expect(number(d)).toBeGreaterThan(number(gone));
      await consumers.close();
      await Promise.all([a.close(), b.close(), c.close(), d.close()]);
    } finally {
      await volatile.dispose();
    }
  });

  it('shard ids stop at 65534 (65535 is "no shard"): scaling past it is refused with AtMaxShards, and every push stays routed', async () => {
    const namespace = ns();
    const clock = { t: 0 };
    const errors: Error[] = [];
    const a = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 1, ringBufferCapacity: 100, clock: () => clock.t,
      policy: { minShards: 1, maxShards: 8, fillRatioThreshold: 0.05, cooldownMs: 100, metricsWindowMs: 60_000 },
      onRedisEvent: (e) => { if (e.type === 'redisError') errors.push(e.error); },
    });
    await a.tick(); // a holds the lease
    // Bring the namespace near the limit through the controller's own fenced write (what
    // 65 532 shard additions and removals would leave behind).
    const { connect, closeConnection } = await import('../dist/redis/connection.js');
    const { keysFor } = await import('../dist/redis/keys.js');
    const { readTable, writeTable } = await import('../dist/redis/table.js');
    const conn = await connect(server.url, 'test');
    const keys = keysFor(namespace);
    const current = await readTable(conn.client, keys);
    await writeTable(conn.client, keys, server.cli('GET', keys.lease), current, { ...current.doc, nextId: 65533 });
    await closeConnection(conn);
    await a.tick();
    expect(a.table().nextId).toBe(65533);
    expect(await drive(a, clock, () => a.addShard())).toBe(65533);
    await expect(drive(a, clock, () => a.manualScaleUp(2))).rejects.toMatchObject({ name: 'ScalingError', kind: 'AtMaxShards', message: expect.stringMatching(/ids would pass 65534/) });
    expect(await drive(a, clock, () => a.addShard())).toBe(65534);
    await expect(drive(a, clock, () => a.addShard())).rejects.toMatchObject({ kind: 'AtMaxShards' });
    expect(a.table().nextId).toBe(65535);
    // The scaling loop meets the same limit: a backlog on every shard, no shard added.
    for (let i = 0; i < 300; i++) {
      expect(a.push(i * 14_316_557, `m:${i}`)).toBe(true);
      if (i % 50 === 49) await a.flush();
    }
    clock.t += 1000;
    await a.tick();
    expect(a.table().shards.map((s) => s.id)).toEqual([0, 65533, 65534]);
    expect(errors.some((e) => /AtMaxShards|ids would pass 65534/.test(`${(e as { kind?: string }).kind} ${e.message}`))).toBe(true);
    expect(a.stats()).toMatchObject({ unrouted: 0, pushed: 300, stored: 300 });
    await a.close();
  });

  it('an active shard whose stream or group disappears (DEL, XGROUP DESTROY) is repaired by the controller and reported; flush() resolves', async () => {
    const namespace = ns();
    const clock = { t: 0 };
    const events: RedisManagerEvent[] = [];
    const a = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 2, clock: () => clock.t, policy: { maxShards: 2, metricsWindowMs: 60_000, autoScale: false },
      onRedisEvent: (e) => events.push(e),
    });
    await a.tick(); // the controller's first window is behind us: what follows is repair, not setup
    const { got, consumers } = await collector(server.url, namespace);
    server.cli('DEL', streamKey(namespace, 1)); // route [0, 1]: hashes from 2^31 go to shard 1
    server.cli('XGROUP', 'DESTROY', streamKey(namespace, 0), 'shard-mapper');
    for (let i = 0; i < 100; i++) a.push(i * 42_949_672, `r:${i}`);
    const flushing = a.flush();
    expect(await within(flushing, 300)).toBe('pending'); // shard 1's frames have nowhere to go
    await a.tick();
    expect(await within(flushing, 10_000)).not.toBe('pending');
    expect(events.filter((e) => e.type === 'streamRecreated').map((e) => (e as { shardId: number }).shardId).sort()).toEqual([0, 1]);
    await until(() => got.length >= 100, '100 deliveries');
    expect(new Set(got.map((g) => g.shard))).toEqual(new Set([0, 1]));
    await consumers.close();
    await a.close();
  });

  it('a controller that lost its lease cannot create a stream: the creating script checks the token and the table', async () => {
    const namespace = ns();
    const a = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, policy: { maxShards: 4, metricsWindowMs: 60_000 } });
    await a.tick();
    const { connect, closeConnection } = await import('../dist/redis/connection.js');
    const { keysFor } = await import('../dist/redis/keys.js');
    const { readTable } = await import('../dist/redis/table.js');
    const conn = await connect(server.url, 'test');
    const keys = keysFor(namespace);
    const table = await readTable(conn.client, keys);
    const holder = server.cli('GET', keys.lease);
    const ensure = (token: string, id: number) => conn.client.smEnsureStreams(keys.lease, keys.table, token, table.epoch, 'shard-mapper', keys.stream(id), String(id));
    // A stale token: refused, nothing created (a removed shard's stream would strand appends).
    await expect(ensure('a-token-that-lost-its-lease', 7)).rejects.toThrow(/SMFENCED/);
    server.cli('DEL', keys.stream(0));
    await expect(ensure('a-token-that-lost-its-lease', 0)).rejects.toThrow(/SMFENCED/);
    expect(server.cli('EXISTS', keys.stream(0))).toBe('0');
    // The holder's token, for a shard the table does not list: nothing created either.
    expect(await ensure(holder, 7)).toEqual([]);
    expect(server.cli('EXISTS', keys.stream(7))).toBe('0');
    expect(((await ensure(holder, 0)) as unknown[]).map(Number)).toEqual([0]); // listed and missing: made
    expect(server.cli('EXISTS', keys.stream(0))).toBe('1');
    await closeConnection(conn);
    await a.close();
  });

  it('removeShard / manualScaleDown with no consumer: a timeout and an AbortSignal end the wait (the shard stays draining, a second call waits for it), and the wait does not poll Redis every 10 ms', async () => {
    const namespace = ns();
    const clock = { t: 0 };
    const a = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 3, drainGraceMs: 100, clock: () => clock.t,
      policy: { minShards: 1, maxShards: 3, metricsWindowMs: 60_000, autoScale: false },
    });
    const b = await RedisShardManager.create({ redis: server.url, namespace, controller: false });
    await a.tick();
    for (let i = 0; i < 300; i++) b.push(i * 14_316_557, `d:${i}`);
    await b.flush();
    // The request is answered (draining began); the removal cannot happen: nobody consumes.
    const removing = b.removeShard(1, { timeoutMs: 3000 }).then(() => 'resolved', (e: Error) => e);
    for (let i = 0; i < 100 && b.table().shards.find((s) => s.id === 1)?.state !== 'draining'; i++) { await sleep(30); clock.t += 60; await a.tick(); }
    expect(b.table().shards.find((s) => s.id === 1)!.state).toBe('draining');
    server.cli('CONFIG', 'RESETSTAT');
    await sleep(1000);
    const reads = Number(/cmdstat_hmget:calls=(\d+)/.exec(server.cli('INFO', 'commandstats'))?.[1] ?? 0);
    expect(reads).toBeLessThan(10); // a table read a second at most while waiting (it was one per 10 ms)
    const timedOut = await within(removing, 5000);
    expect(timedOut).toMatchObject({ name: 'OperatorTimeoutError', outcome: 'waiting', message: expect.stringMatching(/shard 1 is still draining.*call removeShard\(1\) again/) });
    expect(b.table().shards.find((s) => s.id === 1)!.state).toBe('draining');
    // An AbortSignal ends the wait the same way.
    const abort = new AbortController();
    const aborted = b.manualScaleDown(1, { signal: abort.signal });
    const outcome = drive(a, clock, () => aborted.then(() => 'resolved', (e: unknown) => e), 10);
    await until(() => b.table().shards.filter((s) => s.state === 'draining').length === 2, 'a second shard draining');
    abort.abort();
    expect(((await within(outcome, 5000)) as Error).name).toBe('AbortError');
    // With consumers, calling again waits for the removal and resolves.
    const { got, consumers } = await collector(server.url, namespace);
    await until(() => got.length >= 300, '300 deliveries');
    await drive(a, clock, () => b.removeShard(1));
    expect(b.table().shards.some((s) => s.id === 1)).toBe(false);
    await expect(b.removeShard(b.table().shards[0]!.id, { timeoutMs: -1 })).rejects.toThrow(/removeShard: options\.timeoutMs must be a number > 0, got -1/);
    await expect(b.removeShard(b.table().shards[0]!.id, { timeoutMs: null } as never)).rejects.toThrow(/removeShard: options\.timeoutMs must be a number > 0, got null/);
    const shardsBefore = b.table().shards.length;
    await expect(b.addShard({ timeout: 5 } as never)).rejects.toThrow(/addShard: options\.timeout is not an option \(known: timeoutMs, signal\)/);
    expect(b.table().shards.length, 'a refused call adds nothing').toBe(shardsBefore);
    await consumers.close();
    await Promise.all([a.close(), b.close()]);
  });

  it('an operator call that times out is withdrawn (a retry adds one shard, not two); a request whose controller failed mid-way is finished by the next controller, answered once', async () => {
    const namespace = ns();
    const clock = { t: 0 };
    const policy = { minShards: 1, maxShards: 8, metricsWindowMs: 60_000, autoScale: false };
    const errors: string[] = [];
    const a = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, clock: () => clock.t, policy, onRedisEvent: (e) => { if (e.type === 'redisError') errors.push(e.error.message); } });
    const b = await RedisShardManager.create({ redis: server.url, namespace, controller: false });
    await a.tick();
    // No controller window runs while the call waits: it times out, withdrawn.
    const first = await within(b.addShard({ timeoutMs: 200 }).then((id) => id, (e: Error) => e), 3000);
    expect(first).toMatchObject({ name: 'OperatorTimeoutError', outcome: 'withdrawn', message: expect.stringMatching(/withdrawn, nothing was done, calling again is safe/) });
    expect(server.cli('LLEN', `{${namespace}}:ops`)).toBe('0');
    await a.tick();
    expect(a.table().nextId).toBe(1); // the withdrawn request did nothing
    expect(await drive(a, clock, () => b.addShard())).toBe(1); // the advised retry
    await a.tick();
    expect(a.table().shards.map((s) => s.id)).toEqual([0, 1]);

    // The race a withdrawal can meet: the controller read the request, its caller withdrew it,
    // then the controller writes what it did. The write script refuses: the request is gone.
    {
      const { connect, closeConnection } = await import('../dist/redis/connection.js');
      const { keysFor } = await import('../dist/redis/keys.js');
      const { readTable, writeTable } = await import('../dist/redis/table.js');
      const conn = await connect(server.url, 'test');
      const keys = keysFor(namespace);
      const raw = JSON.stringify({ reqId: 'r-1', op: 'scaleUp', n: 1 });
      await conn.client.lpush(keys.ops, raw);
      const current = await readTable(conn.client, keys);
      expect(await conn.client.smWithdraw(keys.ops, keys.answers, raw, 'r-1')).toEqual(['withdrawn']);
      const grown = { ...current.doc, nextId: current.doc.nextId + 1, shards: [...current.doc.shards, { id: current.doc.nextId, state: 'provisioning' as const }] };
      const request = { reqId: 'r-1', raw, answer: JSON.stringify({ ok: true, ids: [current.doc.nextId] }) };
      await expect(writeTable(conn.client, keys, server.cli('GET', keys.lease), current, grown, { request })).rejects.toThrow(/SMWITHDRAWN/);
      expect((await readTable(conn.client, keys)).version).toBe(current.version); // nothing written
      expect(await conn.client.hget(keys.answers, 'r-1')).toBeNull();
      await closeConnection(conn);
    }

    // The controller takes a request and fails before finishing it: the new shard's stream
    // key is held by a string (XGROUP CREATE fails: WRONGTYPE). Then it closes; b's
    // controller (c) finishes the request once the key is freed. The caller gets one answer
    // and one shard.
    const c = await RedisShardManager.create({ redis: server.url, namespace, clock: () => clock.t });
    server.cli('SET', streamKey(namespace, 2), 'in the way');
    let settled = false;
    const call = b.manualScaleUp(1).then((ids) => ids, (e: Error) => e).finally(() => { settled = true; });
    await until(() => server.cli('LLEN', `{${namespace}}:ops`) === '1', 'the request queued');
    await a.tick(); // fails inside the request (reported as a redisError)
    expect(errors.some((m) => /WRONGTYPE/.test(m))).toBe(true);
    expect(settled).toBe(false);
    await a.close(); // gives the lease up
    server.cli('DEL', streamKey(namespace, 2));
    for (let i = 0; i < 50 && !settled; i++) { await c.tick(); await sleep(30); }
    expect(c.isController).toBe(true);
    expect(await within(call, 5000)).toEqual([2]);
    await c.tick();
    expect(c.table().shards.map((s) => [s.id, s.state])).toEqual([[0, 'active'], [1, 'active'], [2, 'active']]);
    expect(c.table().nextId).toBe(3);
    expect(server.cli('LLEN', `{${namespace}}:ops`)).toBe('0');
    await Promise.all([b.close(), c.close()]);
  });

  it('the backlog is the events in the stream: appended minus acknowledged, and none for an empty stream whatever its counts say', async () => {
    const namespace = ns();
    const clock = { t: 0 };
    const policy = { minShards: 1, maxShards: 1, metricsWindowMs: 60_000 };
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, ringBufferCapacity: 10_000, policy, clock: () => clock.t });
    const progress = `${namespace}:progress:{${namespace}:0}`;
    const backlog = () => node.metricsView().mapper.lastMetrics(0)?.bufferLen;
    try {
      for (let i = 0; i < 700; i++) expect(node.push(i, `b:${i}`)).toBe(true);
      await node.flush();
      clock.t += 60_000;
      await node.tick();
      expect(node.isController).toBe(true);
      expect(backlog()).toBe(700);
      let consumers: ShardConsumers | undefined = await serveShardConsumers({ redis: server.url, namespace, idleMs: 5, consume: () => {} });
      await until(() => server.cli('XLEN', `${namespace}:shard:{${namespace}:0}`) === '0', 'the stream emptied');
      await consumers.close();
      consumers = undefined;
      expect([server.cli('HGET', progress, 'in'), server.cli('HGET', progress, 'out')]).toEqual(['700', '700']);
      // Counts that say more than the stream holds (as after Redis lost the stream and the
      // controller made it again, keeping the hash): an empty stream has no backlog.
      server.cli('HINCRBY', progress, 'in', '5000');
      clock.t += 60_000;
      await node.tick();
      expect(backlog()).toBe(0);
    } finally {
      await node.close();
    }
  });

  it('cooldown survives errors inside the pass and a controller handover: one failed command every other window gives one scale-up, not one per failure', async () => {
    const namespace = ns();
    const clock = { t: 0 };
    const clockB = { t: 5_000_000 }; // another machine's clock: only durations carry over
    let scaleUps = 0;
    const countScaleUps = (e: RedisManagerEvent) => { if (e.type === 'shardProvisioned') scaleUps++; };
    const policy = { minShards: 1, maxShards: 16, fillRatioThreshold: 0.05, cooldownMs: 60_000, scaleDownDelayMs: 3_600_000, metricsWindowMs: 60_000 };
    const errorsA: string[] = [];
    const a = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 2, ringBufferCapacity: 1000, policy, clock: () => clock.t, onEvent: countScaleUps,
      onRedisEvent: (e) => { if (e.type === 'redisError') errorsA.push(e.error.message); },
    });
    const b = await RedisShardManager.create({ redis: server.url, namespace, clock: () => clockB.t, onEvent: countScaleUps });
    // A key the controller's pass reads: shard 0's progress hash (no consumer writes it here;
    // the nodes' appends do, so it is made a string only around the controller's pass).
    const flushKey = `${namespace}:progress:{${namespace}:0}`;
    let seq = 0;
    const load = async () => { for (let i = 0; i < 200; i++, seq++) a.push(seq * 2_654_435_761, `l:${seq}`); await a.flush(); };
    await load();
    await load();
    await a.tick(); // every shard's backlog is over the threshold: scale up (cooldown starts)
    expect(a.isController).toBe(true);
    expect(scaleUps).toBe(1);
    const failures: string[] = [];
    for (let w = 0; w < 16; w++) {
      await load();
      clock.t += 500;
      clockB.t += 500;
      const saved = server.cli('HGETALL', flushKey);
      if (w % 2 === 0) server.cli('SET', flushKey, 'not a hash'); // the pass's HMGET fails: WRONGTYPE
      await a.tick();
      if (w % 2 === 0) {
        failures.push(server.cli('TYPE', flushKey));
        server.cli('DEL', flushKey);
        const fields = saved.split('\n').filter((x) => x !== '');
        if (fields.length > 0) server.cli('HSET', flushKey, ...fields); // the counts, as they were
      }
      await b.tick(); // b follows (not the controller)
    }
    server.cli('DEL', flushKey);
    expect(failures).toEqual(Array(8).fill('string'));
    expect(errorsA.some((m) => /WRONGTYPE/.test(m))).toBe(true); // the passes did fail
    expect(scaleUps).toBe(1); // 8 s of windows, 8 failed passes, all inside the 60 s cooldown
    // Handover: a leaves, b takes the lease and goes on from the stored stamp.
    await a.close();
    clockB.t += 1000;
    await b.tick();
    expect(b.isController).toBe(true);
    clockB.t += 1000;
    await b.tick();
    expect(scaleUps).toBe(1); // still in the cooldown a started
    clockB.t += 60_000;
    await b.tick();
    expect(scaleUps).toBe(2); // the cooldown is over: the backlog scales up again
    await b.close();
  });
});

describe.skipIf(!available)('the Redis controller on a Cluster', () => {
  it('repairs a deleted stream and a destroyed group through the Cluster path (lease checked before and after creating)', async () => {
    const cluster = await RedisTestCluster.start();
    const client = new Cluster(cluster.startupNodes, { enableOfflineQueue: true });
    const consumerClient = new Cluster(cluster.startupNodes);
    try {
      const namespace = 'repair';
      const events: RedisManagerEvent[] = [];
      const node = await RedisShardManager.create({ redis: client, namespace, initialShards: 3, policy: { maxShards: 3, metricsWindowMs: 60_000, autoScale: false }, onRedisEvent: (e) => events.push(e) });
      await node.tick();
      await client.del(streamKey(namespace, 1));
      await client.xgroup('DESTROY', streamKey(namespace, 2), 'shard-mapper');
      for (let i = 0; i < 90; i++) node.push(i * 47_721_858, `k:${i}`); // all three shards
      const flushing = node.flush();
      await node.tick();
      expect(await within(flushing, 10_000)).not.toBe('pending');
      expect(events.filter((e) => e.type === 'streamRecreated').map((e) => (e as { shardId: number }).shardId).sort()).toEqual([1, 2]);
      const got: string[] = [];
      const consumers = await serveShardConsumers({ redis: consumerClient, namespace, idleMs: 5, consume: (records) => { for (const r of records) got.push(r.payload.toString()); } });
      await until(() => got.length >= 90, '90 deliveries');
      await consumers.close();
      await node.close();
    } finally {
      client.disconnect();
      consumerClient.disconnect();
      await cluster.dispose();
    }
  });
});

describe.skipIf(!available)('exports', () => {
  it('OperatorTimeoutError is exported', () => {
    expect(typeof (redisModule as Record<string, unknown>).OperatorTimeoutError).toBe('function');
  });
});
