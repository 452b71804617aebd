// Connecting to Redis and losing it, for real on 127.0.0.1: a TCP server (node:net) that
// accepts connections and never answers (another service on the port, a frozen Redis), a
// redis-server frozen with SIGSTOP mid-run, and one stopped mid-run. What the user is told:
// create() / serveShardConsumers() fail after a bounded wait naming the (masked) address; a
// frozen server and an outage are reported to onRedisEvent / onError in the package's words
// (ioredis's text kept as `cause`); work resumes when Redis is back.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { Redis } from 'ioredis';
import { RedisShardManager, serveShardConsumers } from 'shard-mapper/redis';
import { HOST, RedisTestServer, redisAvailable } from './helpers/redis-server.js';
import { until, within } from './helpers/delivery.js';

const available = redisAvailable();
let nsCounter = 0;
const ns = () => `c${process.pid}-${++nsCounter}`;

/** A TCP server on 127.0.0.1 that takes every connection, reads (and drops) what comes, and never answers. */
async function silentServer() {
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server = createServer((s) => {
    accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.resume();
  });
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    get accepted() { return accepted; },
    get open() { return sockets.size; },
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}

/** The rejection of `p` (which must reject within `limitMs`). */
async function rejection(p: Promise<unknown>, limitMs: number, what: string): Promise<Error> {
  const outcome = await within(p.then(() => undefined, (e: unknown) => e), limitMs, () => `${what} still waiting`);
  expect(outcome, `${what} must fail`).toBeInstanceOf(Error);
  return outcome as Error;
}

const reEscape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('a server that accepts TCP connections and never answers', () => {
  let silent: Awaited<ReturnType<typeof silentServer>>;
  beforeAll(async () => { silent = await silentServer(); });
  afterAll(async () => { await silent?.close(); });

  it('RedisShardManager.create fails after connectTimeoutMs, naming the masked address and the likely causes; nothing stays open', async () => {
    const before = silent.accepted;
    const error = await rejection(
      RedisShardManager.create({ redis: `redis://app:s3cret@${HOST}:${silent.port}`, namespace: 'silent-node', connectTimeoutMs: 300 }),
      15_000, 'create()',
    );
    expect(error.message).toMatch(new RegExp(
      `^shard-mapper/redis: namespace "silent-node": Redis at ${reEscape(`redis://***:***@${HOST}:${silent.port}`)} did not answer within 300 ms \\(it accepted the TCP connection\\): is it a Redis server \\(not another service on that port\\), and is it running \\(not stopped, frozen or overloaded\\)\\? options\\.connectTimeoutMs sets this wait$`,
    ));
    expect(error.message).not.toContain('s3cret');
    expect(silent.accepted - before).toBeGreaterThanOrEqual(1);
    await until(() => silent.open === 0, 'the connection create() opened is closed');
  });

  it('serveShardConsumers fails the same way (default wait 10000 ms), and with a given ioredis instance names its address', async () => {
    const error = await rejection(
      serveShardConsumers({ redis: `redis://${HOST}:${silent.port}`, namespace: 'silent-consumers', consume: () => {} }),
      30_000, 'serveShardConsumers()',
    );
    expect(error.message).toMatch(new RegExp(
      `^shard-mapper/redis: consumers of namespace "silent-consumers": Redis at ${reEscape(`redis://${HOST}:${silent.port}`)} did not answer within 10000 ms \\(it accepted the TCP connection\\): is it a Redis server`,
    ));
    const user = new Redis(silent.port, HOST, { lazyConnect: true });
    try {
      const viaInstance = await rejection(
        serveShardConsumers({ redis: user, namespace: 'silent-consumers', consume: () => {}, connectTimeoutMs: 250 }),
        15_000, 'serveShardConsumers() with an instance',
      );
      expect(viaInstance.message).toContain(`Redis at the given Redis client (${HOST}:${silent.port}) did not answer within 250 ms`);
      const node = await rejection(
        RedisShardManager.create({ redis: user, namespace: 'silent-node', connectTimeoutMs: 250 }),
        15_000, 'create() with an instance',
      );
      expect(node.message).toContain(`Redis at the given Redis client (${HOST}:${silent.port}) did not answer within 250 ms`);
    } finally {
      user.disconnect();
    }
    await until(() => silent.open === 0, 'every connection opened is closed');
  });

  it('serveShardConsumers refuses unknown options (naming the known ones) and a bad connectTimeoutMs before connecting', async () => {
    const before = silent.accepted;
    const base = { redis: `redis://${HOST}:${silent.port}`, namespace: 'silent-consumers', consume: () => {} };
    await expect(serveShardConsumers({ ...base, batchsize: 5 } as never)).rejects.toThrow(
      /^options\.batchsize is not an option \(known: redis, namespace, consume, batchSize, leaseMs, idleMs, name, dedup, maxDeliveries, onError, connectTimeoutMs\)$/,
    );
    for (const bad of [0, 2.5, -1, '1000', 2 ** 31]) {
      await expect(serveShardConsumers({ ...base, connectTimeoutMs: bad as number })).rejects.toThrow(
        /^options\.connectTimeoutMs must be an integer in \[1, 2147483647\], got /,
      );
      await expect(RedisShardManager.create({ redis: base.redis, namespace: 'n', connectTimeoutMs: bad as number })).rejects.toThrow(
        /^options\.connectTimeoutMs must be an integer in \[1, 2147483647\], got /,
      );
    }
    expect(silent.accepted, 'nothing was connected').toBe(before);
  });
});

describe.skipIf(!available)('Redis frozen (SIGSTOP) or stopped mid-run', () => {
  it('a frozen server is reported once to onRedisEvent and onError; everything pushed is consumed after it thaws', async () => {
    const server = await RedisTestServer.start();
    const namespace = ns();
    const nodeErrors: string[] = [];
    const consumerErrors: string[] = [];
    const got: string[] = [];
    const node = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 1, connectTimeoutMs: 400, policy: { minShards: 1, maxShards: 1, metricsWindowMs: 100 },
      onRedisEvent: (e) => { if (e.type === 'redisError') nodeErrors.push(e.error.message); },
    });
    const consumers = await serveShardConsumers({
      redis: server.url, namespace, idleMs: 5, connectTimeoutMs: 400,
      onError: (e, shard) => consumerErrors.push(`${shard}: ${e.message}`),
      consume: (records) => { for (const r of records) got.push(r.payload.toString()); },
    });
    try {
      for (let i = 0; i < 10; i++) node.push(i, `a:${i}`);
      await until(() => got.length >= 10, 'the first 10 consumed');
      server.freeze();
      try {
        for (let i = 0; i < 10; i++) node.push(i, `b:${i}`);
        const stalled = new RegExp(`Redis at ${reEscape(server.url)} has not answered a command for 400 ms, though the connection is open`);
        await until(
          () => nodeErrors.some((m) => stalled.test(m)) && consumerErrors.some((m) => m.startsWith('-1: ') && stalled.test(m)),
          () => `the stall reported to both (node: ${JSON.stringify(nodeErrors)}, consumers: ${JSON.stringify(consumerErrors)})`,
          15_000,
        );
        expect(nodeErrors.find((m) => stalled.test(m))).toMatch(new RegExp(`^shard-mapper/redis: namespace "${namespace}": `));
        expect(consumerErrors.filter((m) => stalled.test(m))).toHaveLength(1); // once per stall
      } finally {
        server.thaw();
      }
      await until(() => new Set(got).size >= 20, () => `all 20 consumed after the thaw (got ${got.length})`, 20_000);
      const expected = [...Array.from({ length: 10 }, (_, i) => `a:${i}`), ...Array.from({ length: 10 }, (_, i) => `b:${i}`)];
      expect([...new Set(got)]).toEqual(expected);
    } finally {
      server.thaw();
      await consumers.close();
      await node.close();
      await server.dispose();
    }
  });

  it('an idle node reports a second freeze too (the first one\'s report does not silence it)', async () => {
    const server = await RedisTestServer.start();
    const stalls: number[] = [];
    const node = await RedisShardManager.create({
      redis: server.url, namespace: ns(), initialShards: 1, connectTimeoutMs: 300, policy: { minShards: 1, maxShards: 1, metricsWindowMs: 50 },
      onRedisEvent: (e) => { if (e.type === 'redisError' && /has not answered a command/.test(e.error.message)) stalls.push(Date.now()); },
    });
    try {
      for (const round of [1, 2]) {
        server.freeze();
        try {
          await until(() => stalls.length >= round, () => `freeze ${round} reported (reports: ${stalls.length})`, 10_000);
        } finally {
          server.thaw();
        }
        // The node pushes nothing: only its own window reports and table reads are answered
        // after the thaw. Wait past a few of the watch's checks (every 75 ms here).
        await new Promise((r) => setTimeout(r, 600));
      }
      expect(stalls).toHaveLength(2);
    } finally {
      server.thaw();
      await node.close();
      await server.dispose();
    }
  });

  it('operator calls keep their timeoutMs and signal while Redis is frozen: they settle before the thaw (outcome unknown), and their withdrawals still follow their requests: nothing is done', async () => {
    const server = await RedisTestServer.start();
    const namespace = ns();
    const clock = { t: 0 };
    // The controller runs a window only when the test ticks it: nothing answers a request by itself.
    const a = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 1, clock: () => clock.t, connectTimeoutMs: 400,
      policy: { minShards: 1, maxShards: 4, metricsWindowMs: 60_000, autoScale: false },
    });
    const b = await RedisShardManager.create({ redis: server.url, namespace, controller: false, connectTimeoutMs: 400 });
    try {
      await a.tick();
      await until(() => b.table().shards.length === 1, 'b follows the table');
      const settle = (p: Promise<unknown>) => { const t0 = performance.now(); return p.then((v) => ({ v, ms: performance.now() - t0 }), (e: unknown) => ({ e: e as Error, ms: performance.now() - t0 })); };
      server.freeze();
      let frozenThrough = false;
      try {
        const abort = new AbortController();
        setTimeout(() => abort.abort(), 200);
        const [added, drained] = await within(
          Promise.all([settle(b.addShard({ timeoutMs: 300 })), settle(b.drainShard(0, { signal: abort.signal }))]),
          15_000,
          () => 'the calls still waiting on a frozen Redis',
        );
        frozenThrough = true; // both settled while the server was still stopped
        for (const [r, waited] of [[added, 300], [drained, 200]] as const) {
          expect(r.e, `settled with an error, not ${JSON.stringify((r as { v?: unknown }).v)}`).toBeInstanceOf(Error);
          expect(r.e).toMatchObject({ name: 'OperatorTimeoutError', outcome: 'unknown', message: expect.stringMatching(/outcome unknown: Redis did not answer while withdrawing request .*no answer within 5000 ms.*look at table\(\) before calling again/) });
          expect(r.ms).toBeGreaterThanOrEqual(waited - 5);
          expect(r.ms).toBeLessThan(waited + 5000 + 2000); // its limit plus the withdrawal's grace
        }
      } finally {
        server.thaw();
      }
      expect(frozenThrough).toBe(true);
      // After the thaw Redis runs each LPUSH and then the withdrawal sent after it on the same
      // connection: the queue is empty and a controller window does nothing.
      await until(() => server.cli('LLEN', `{${namespace}}:ops`) === '0', 'the withdrawals ran after the thaw');
      clock.t += 60_000;
      await a.tick();
      expect(a.table().nextId).toBe(1);
      expect(a.table().shards).toMatchObject([{ id: 0, state: 'active' }]);
    } finally {
      server.thaw();
      await Promise.all([a.close({ timeoutMs: 5000 }).catch(() => {}), b.close({ timeoutMs: 5000 }).catch(() => {})]);
      await server.dispose();
    }
  });

  it('an outage is reported in the package\'s words (masked address, what it does about it), ioredis\'s error as cause; delivery resumes after restart', async () => {
    const server = await RedisTestServer.start({ config: { requirepass: 's3cret' } });
    const url = `redis://default:s3cret@${HOST}:${server.port}`;
    const masked = reEscape(`redis://***:***@${HOST}:${server.port}`);
    const namespace = ns();
    const nodeErrors: Error[] = [];
    const consumerErrors: Error[] = [];
    const got: string[] = [];
    const node = await RedisShardManager.create({
      redis: url, namespace, initialShards: 1, policy: { minShards: 1, maxShards: 1, metricsWindowMs: 100 },
      onRedisEvent: (e) => { if (e.type === 'redisError') nodeErrors.push(e.error); },
    });
    const consumers = await serveShardConsumers({
      redis: url, namespace, idleMs: 5,
      onError: (e) => consumerErrors.push(e),
      consume: (records) => { for (const r of records) got.push(r.payload.toString()); },
    });
    try {
      for (let i = 0; i < 5; i++) node.push(i, `a:${i}`);
      await until(() => got.length >= 5, 'the first 5 consumed');
      await server.stop();
      for (let i = 0; i < 5; i++) node.push(i, `b:${i}`);
      const nodeSays = new RegExp(
        `^shard-mapper/redis: namespace "${namespace}": Redis at ${masked} is unreachable \\(connection refused or lost\\); this node keeps the events it accepted in its send buffer and sends them again, in order, when Redis answers`,
      );
      const consumersSay = new RegExp(
        `^shard-mapper/redis: consumers of namespace "${namespace}": Redis at ${masked} is unreachable \\(connection refused or lost\\); the consumers retry with backoff .*events not yet acknowledged stay in Redis`,
      );
      await until(
        () => nodeErrors.some((e) => nodeSays.test(e.message)) && consumerErrors.some((e) => consumersSay.test(e.message)),
        () => `the outage reported (node: ${JSON.stringify(nodeErrors.map((e) => e.message))}, consumers: ${JSON.stringify(consumerErrors.map((e) => e.message))})`,
        15_000,
      );
      for (const e of [nodeErrors.find((x) => nodeSays.test(x.message))!, consumerErrors.find((x) => consumersSay.test(x.message))!]) {
        expect(e.cause, 'ioredis\'s error is kept').toBeInstanceOf(Error);
        expect((e.cause as Error).message).not.toBe('');
      }
      // Nothing reported quotes options the user never set, nor the password.
      for (const e of [...nodeErrors, ...consumerErrors]) {
        expect(e.message).not.toMatch(/enableOfflineQueue|maxRetriesPerRequest|Stream isn't writeable/);
        expect(e.message).not.toContain('s3cret');
      }
      await server.restart();
      await until(() => new Set(got).size >= 10, () => `all 10 consumed after the restart (got ${got.length})`, 20_000);
      expect([...new Set(got)]).toEqual([0, 1, 2, 3, 4].map((i) => `a:${i}`).concat([0, 1, 2, 3, 4].map((i) => `b:${i}`)));
    } finally {
      await consumers.close();
      await node.close();
      await server.dispose();
    }
  });
});
