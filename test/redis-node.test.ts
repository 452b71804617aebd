// The producer node of shard-mapper/redis against a real redis-server (127.0.0.1, random
// port, temporary directory): the send buffer under dropOldest with a byte bound, a shard
// whose stream disappeared, option checks, a joining node's policy, credentials in messages,
// waiting for room (pushAsync, writable, writableStream) and the errors the subpath exports.
// Waits are bounded waits for conditions; nothing asserts on wall-clock durations.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Redis } from 'ioredis';
import * as root from 'shard-mapper';
import * as redis from 'shard-mapper/redis';
import { RedisShardManager, serveShardConsumers, type RedisNodeEvent } from 'shard-mapper/redis';
import { RedisTestServer, freePort, redisAvailable } from './helpers/redis-server.js';
import { redactCredentials, redactError, redactUrl } from '../dist/redis/connection.js';
import { until } from './helpers/delivery.js';

const available = redisAvailable();
let server: RedisTestServer;
let nsCounter = 0;
const ns = () => `n${process.pid}-${++nsCounter}`;
const stream = (namespace: string, id: number) => `${namespace}:shard:{${namespace}:${id}}`;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

beforeAll(async () => { if (available) server = await RedisTestServer.start(); });
afterAll(async () => { await server?.dispose(); });


/** Whether `p` settles within a generous bound (a hang shows as false, not as a stuck suite). */
async function settles(p: Promise<unknown>, limitMs = 20_000): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise<false>((r) => { timer = setTimeout(() => r(false), limitMs); });
  try {
    return await Promise.race([p.then(() => true), bound]);
  } finally {
    clearTimeout(timer);
  }
}

/** Every event stored in a shard's stream, in stream order, decoded from the frames. */
async function storedEvents(client: Redis, key: string): Promise<string[]> {
  const out: string[] = [];
  let from = '-';
  for (;;) {
    const entries = await client.xrangeBuffer(key, from, '+', 'COUNT', 500);
    for (const [, fields] of entries) {
      for (let i = 0; i + 1 < fields.length; i += 2) {
        if (fields[i]!.toString() !== 'd') continue;
        const data = fields[i + 1]!;
        for (let at = 0; at < data.length;) {
          const len = data.readUInt32LE(at);
          out.push(data.subarray(at + 4, at + 4 + len).toString());
          at += 4 + len;
        }
      }
    }
    if (entries.length < 500) return out;
    from = `(${entries[entries.length - 1]![0].toString()}`;
  }
}

/** The events of every shard: all of them once, each shard's in push order (`tag:seq`). */
async function checkStored(namespace: string, shards: number[], tag: string, n: number): Promise<void> {
  const client = new Redis(server.url);
  try {
    const seen = new Uint8Array(n);
    const bad: string[] = [];
    for (const id of shards) {
      let last = -1;
      for (const text of await storedEvents(client, stream(namespace, id))) {
        const [t, s] = text.split(':');
        if (t !== tag) continue;
        const seq = Number(s);
        if (!(seq > last)) bad.push(`shard ${id}: ${seq} after ${last}`);
        if (seen[seq]) bad.push(`${seq} twice`);
        seen[seq] = 1;
        last = seq;
      }
    }
    expect(bad.slice(0, 10)).toEqual([]);
    expect(seen.reduce((a, b) => a + b, 0)).toBe(n);
  } finally {
    client.disconnect();
  }
}

describe.skipIf(!available)('RedisShardManager: the send buffer', () => {
  it('dropOldest with a byte bound: an eviction that empties the open frame leaves nothing behind, so flush() and close() resolve', async () => {
    const restartable = await RedisTestServer.start();
    try {
      const namespace = ns();
      const node = await RedisShardManager.create({
        redis: restartable.url, namespace, initialShards: 1, ringBufferCapacity: 100, ringBufferBytes: 40, maxPayloadBytes: 32,
        backpressure: { kind: 'dropOldest' }, controller: false, policy: { metricsWindowMs: 60_000 },
      });
      await restartable.stop();
      expect(node.push(1, 'e:00000000')).toBe(true); // 10 bytes each
      expect(node.push(1, 'e:00000001')).toBe(true);
      await until(() => node.stats().retries > 0, 'a failed send'); // e:0, e:1 went out once: never evicted
      expect(node.push(1, 'e:00000002')).toBe(true); // the open frame: 30 of 40 bytes
      // 32 bytes: evicting e:2 empties the open frame and is not enough (the sent frame
      // keeps its 20 bytes), so the new event is dropped too.
      expect(node.push(1, `x:${'y'.repeat(30)}`)).toBe(false);
      expect(node.stats()).toMatchObject({ pushed: 3, buffered: 2, drops: { oldest: 1, newest: 1 } });
      await restartable.restart();
      expect(await settles(node.flush()), 'flush() resolves once e:0 and e:1 are stored').toBe(true);
      expect(node.stats()).toMatchObject({ stored: 2, buffered: 0 });
      expect(await settles(node.close()), 'close() resolves').toBe(true);
      const got: string[] = [];
      const consumers = await serveShardConsumers({ redis: restartable.url, namespace, idleMs: 5, consume: (records) => { for (const r of records) got.push(r.payload.toString()); } });
      await until(() => got.length >= 2, '2 deliveries');
      await sleep(50); // and no more
      await consumers.close();
      expect(got).toEqual(['e:00000000', 'e:00000001']);
    } finally {
      await restartable.dispose();
    }
  });

  it('dropOldest with a byte bound: evicting a whole closed frame and the open one, then pushing on, loses nothing accepted after', async () => {
    const restartable = await RedisTestServer.start();
    try {
      const namespace = ns();
      const node = await RedisShardManager.create({
        redis: restartable.url, namespace, initialShards: 1, ringBufferCapacity: 100, ringBufferBytes: 64, maxPayloadBytes: 64, maxFrameBytes: 64,
        backpressure: { kind: 'dropOldest' }, controller: false, policy: { metricsWindowMs: 60_000 },
      });
      await restartable.stop();
      // All in one tick, before the sender's first try: every event is still evictable.
      // 14-byte events: four fit a 64-byte frame (4 × 18 > 64: the fourth closes it).
      for (let i = 0; i < 4; i++) expect(node.push(1, `f:${String(i).padStart(12, '0')}`)).toBe(true);
      // 64 bytes: every earlier event is evicted, closed frame and open frame alike.
      expect(node.push(1, `g:${'0'.repeat(62)}`)).toBe(true);
      expect(node.stats()).toMatchObject({ buffered: 1, drops: { oldest: 4 } });
      await restartable.restart();
      expect(await settles(node.close()), 'close() resolves').toBe(true);
      expect(node.stats()).toMatchObject({ stored: 1, buffered: 0 });
    } finally {
      await restartable.dispose();
    }
  });
});

describe.skipIf(!available)('RedisShardManager: a shard whose stream disappeared', () => {
  it('holds that shard alone (per-shard backoff) while the others send at full speed, reports it once, and resumes when the stream is back', async () => {
    const namespace = ns();
    const events: RedisNodeEvent[] = [];
    const node = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 2, controller: false, policy: { metricsWindowMs: 60_000 }, routing: 'leastLoaded',
      onRedisEvent: (e) => events.push(e),
    });
    expect(node.table().route).toEqual([0, 1]); // hash 0 → shard 0, 2^31 → shard 1
    const missing = () => events.filter((e) => e.type === 'redisError' && /stream of shard 1 is missing/.test(e.error.message));
    const watcher = new Redis(server.url);
    const monitor = await watcher.monitor();
    const xadds = new Map<string, number>();
    monitor.on('monitor', (_time: string, args: string[]) => {
      if (String(args[0]).toLowerCase() === 'xadd') xadds.set(String(args[1]), (xadds.get(String(args[1])) ?? 0) + 1);
    });
    try {
      server.cli('DEL', stream(namespace, 1)); // an operator's DEL: the table still lists shard 1
      expect(node.push(2 ** 31, 'm:0')).toBe(true);
      await until(() => missing().length > 0, 'the missing stream reported');
      const stored0 = () => node.metricsView().stats().shards.find((s) => s.id === 0)!.delivered;
      const refusedBefore = xadds.get(stream(namespace, 1)) ?? 0;
      const sentBefore = xadds.get(stream(namespace, 0)) ?? 0;
      const rounds = 60;
      for (let i = 0; i < rounds; i++) {
        expect(node.push(0, `z:${i}`)).toBe(true);
        await until(() => stored0() >= i + 1, `shard 0 stores z:${i}`, 20_000, 1);
      }
      await until(() => (xadds.get(stream(namespace, 0)) ?? 0) - sentBefore >= rounds, 'MONITOR sees every send');
      const refusals = (xadds.get(stream(namespace, 1)) ?? 0) - refusedBefore;
      // Before, every round carried shard 1's refused frame (and slept 20 ms for it): as
      // many refusals as shard 0's rounds. Held with its own backoff, a few.
      expect(refusals).toBeLessThan(rounds / 3);
      expect(node.stats()).toMatchObject({ stored: rounds, buffered: 1 });
      // The stream comes back (what the controller does; here by hand).
      server.cli('XGROUP', 'CREATE', stream(namespace, 1), 'shard-mapper', '0', 'MKSTREAM');
      expect(await settles(node.flush()), 'flush() resolves once m:0 is stored').toBe(true);
      expect(node.stats()).toMatchObject({ stored: rounds + 1, buffered: 0 });
      expect(server.cli('XLEN', stream(namespace, 1))).toBe('1');
      expect(missing()).toHaveLength(1); // once, not once per retry
      // Gone again later: news again.
      server.cli('DEL', stream(namespace, 1));
      node.push(2 ** 31, 'm:1');
      await until(() => missing().length === 2, 'the second disappearance reported');
      server.cli('XGROUP', 'CREATE', stream(namespace, 1), 'shard-mapper', '0', 'MKSTREAM');
      expect(await settles(node.close()), 'close() resolves').toBe(true);
      expect(node.stats()).toMatchObject({ stored: rounds + 2, buffered: 0 });
    } finally {
      monitor.disconnect(); // a connection of its own: MONITOR would slow every later test
      watcher.disconnect();
      if (!(await settles(node.close(), 1000))) { /* reported by the assertions above */ }
    }
  });
});

describe.skipIf(!available)('RedisShardManager: options that reach Redis as integers', () => {
  it('a fractional leaseMs or metricsWindowMs is refused at create() (SET … PX takes whole milliseconds), and so is serveShardConsumers\' leaseMs', async () => {
    const namespace = ns();
    await expect(RedisShardManager.create({ redis: server.url, namespace, leaseMs: 1250.5 }))
      .rejects.toThrow(/options\.leaseMs must be an integer .*got 1250\.5/);
    await expect(RedisShardManager.create({ redis: server.url, namespace, policy: { metricsWindowMs: 250.5 } }))
      .rejects.toThrow(/policy\.metricsWindowMs must be a whole number of milliseconds .*got 250\.5/);
    expect(server.cli('EXISTS', `{${namespace}}:table`)).toBe('0'); // nothing was created
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, policy: { metricsWindowMs: 60_000 } });
    await expect(serveShardConsumers({ redis: server.url, namespace, leaseMs: 250.5, consume: () => {} }))
      .rejects.toThrow(/options\.leaseMs must be an integer .*got 250\.5/);
    await node.close();
  });

  it('an unknown or misspelled option is refused at create(), naming the known ones, before anything is written', async () => {
    const namespace = ns();
    await expect(RedisShardManager.create({ redis: server.url, namespace, lingerMS: 5 } as never))
      .rejects.toThrow(/options\.lingerMS is not an option \(known: redis, namespace, .*lingerMs/);
    expect(server.cli('EXISTS', `{${namespace}}:table`)).toBe('0'); // nothing was created
  });

  it('whole milliseconds work: the node becomes the controller and the lease is set', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, leaseMs: 1251, policy: { metricsWindowMs: 250 } });
    await node.tick();
    expect(node.isController).toBe(true);
    expect(Number(server.cli('PTTL', `{${namespace}}:controller`))).toBeGreaterThan(0);
    await node.close();
  });
});

describe.skipIf(!available)('RedisShardManager: a node joining a namespace', () => {
  it('compares only the policy fields it was given (not this machine\'s defaults); with none it adopts the namespace\'s', async () => {
    const namespace = ns();
    // A maxShards that is not this machine's default: what a namespace created on a larger
    // machine (or raised by initialShards) stores.
    const stored = root.ScalingPolicy.default().maxShards + 1;
    const a = await RedisShardManager.create({ redis: server.url, namespace, initialShards: stored, controller: false, policy: { metricsWindowMs: 60_000 } });
    expect(a.policy().maxShards).toBe(stored);
    // The same partial policy from another node (without initialShards): accepted.
    const b = await RedisShardManager.create({ redis: server.url, namespace, controller: false, policy: { metricsWindowMs: 60_000 } });
    expect(b.policy()).toEqual(a.policy());
    const c = await RedisShardManager.create({ redis: server.url, namespace, controller: false, policy: { maxShards: stored, metricsWindowMs: 60_000 } });
    const d = await RedisShardManager.create({ redis: server.url, namespace, controller: false, policy: {} });
    // A field given with another value is still refused, naming it alone.
    await expect(RedisShardManager.create({ redis: server.url, namespace, policy: { maxShards: stored + 1, metricsWindowMs: 60_000 } }))
      .rejects.toThrow(new RegExp(`already runs with another policy: maxShards ${stored} \\(stored\\) vs ${stored + 1} \\(given\\)\\. Give`));
    await Promise.all([a.close(), b.close(), c.close(), d.close()]);
  });

  it('a node given no policy takes the namespace\'s metricsWindowMs for its default lease (not this machine\'s 100 ms)', async () => {
    const namespace = ns();
    const a = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, controller: false, policy: { metricsWindowMs: 5000 } });
    const b = await RedisShardManager.create({ redis: server.url, namespace });
    await b.tick();
    expect(b.isController).toBe(true);
    // The lease outlives a window (default max(1000, 5 × 5000)): renewed every window, it never lapses.
    expect(Number(server.cli('PTTL', `{${namespace}}:controller`))).toBeGreaterThan(5000);
    // An explicit lease shorter than the namespace's window is refused, and changes nothing.
    const nodes = server.cli('GET', `{${namespace}}:nodes`);
    await expect(RedisShardManager.create({ redis: server.url, namespace, leaseMs: 3000 }))
      .rejects.toThrow(/options\.leaseMs must be longer than policy\.metricsWindowMs \(5000\)/);
    expect(server.cli('GET', `{${namespace}}:nodes`)).toBe(nodes);
    await Promise.all([a.close(), b.close()]);
  });
});

describe('shard-mapper/redis: the redaction every message about a URL goes through', () => {
  it('masks user and password in URLs, in URLs inside messages (redisError events), and in strings that do not parse', () => {
    expect(redactUrl('redis://alice:pw@h:6379/0')).toBe('redis://***:***@h:6379/0');
    expect(redactUrl('rediss://:pw@h:6379')).toBe('rediss://:***@h:6379');
    expect(redactUrl('redis://alice@h')).toBe('redis://***@h');
    expect(redactUrl('redis://h:6379')).toBe('redis://h:6379');
    expect(redactUrl('redis://alice:p w@h:notaport')).toBe('redis://***@h:notaport');
    expect(redactUrl('alice:pw@h:6379')).toBe('***@h:6379');
    expect(redactCredentials('cannot reach redis://alice:pw@h:1 (ECONNREFUSED)')).toBe('cannot reach redis://***:***@h:1 (ECONNREFUSED)');
    expect(redactCredentials('a redis://:pw@h and a rediss://bob:x@ss@k:2/3')).toBe('a redis://:***@h and a rediss://***:***@k:2/3');
    expect(redactCredentials('mail alice@example.com, redis://h:1')).toBe('mail alice@example.com, redis://h:1');
    const plain = new Error('nothing secret');
    expect(redactError(plain)).toBe(plain);
    const leaky = new TypeError('lost redis://alice:pw@h:1');
    expect(redactError(leaky)).toMatchObject({ name: 'TypeError', message: 'lost redis://***:***@h:1' });
    expect(redactError('redis://alice:pw@h').message).toBe('redis://***:***@h');
  });
});

describe.skipIf(!available)('shard-mapper/redis: credentials never appear in messages', () => {
  const message = async (p: Promise<unknown>): Promise<string> => {
    try { await p; return 'no error'; } catch (e) { return (e as Error).message; }
  };

  it('malformed URLs, refused connections, refused passwords: neither the user nor the password is printed', async () => {
    const port = await freePort();
    const locked = await RedisTestServer.start({ config: { requirepass: 'right-pass' } });
    try {
      const urls = [
        'redis://alice:s3cret-pw@127.0.0.1:notaport',             // not a URL (bad port)
        'redis://alice:s3cret-pw@127.0.0.1:99999',                // port out of range
        'redis://alice:s3cret-pw@',                               // no host
        'redis://alice:s3cret-pw@exa mple.com:6379',              // a space in the host
        'alice:s3cret-pw@127.0.0.1:6379',                         // no scheme: "alice:" parses as one
        `redis://alice:s3cret-pw@127.0.0.1:${port}`,              // nothing listens
        `redis://alice:s3cret-pw@127.0.0.1:${locked.port}`,       // no such user
        `redis://default:s3cret-pw@127.0.0.1:${locked.port}`,     // wrong password
      ];
      for (const url of urls) {
        for (const m of [
          await message(RedisShardManager.create({ redis: url, namespace: 'x' })),
          await message(serveShardConsumers({ redis: url, namespace: 'x', consume: () => {} })),
        ]) {
          expect(m, url).not.toBe('no error');
          expect(m, url).not.toMatch(/s3cret/);
          expect(m, url).not.toMatch(/alice/);
        }
      }
      // Still says where: the host and port, credentials masked.
      const refused = await message(RedisShardManager.create({ redis: `redis://alice:s3cret-pw@127.0.0.1:${port}`, namespace: 'x' }));
      expect(refused).toMatch(new RegExp(`cannot use Redis at redis://\\*\\*\\*:\\*\\*\\*@127\\.0\\.0\\.1:${port}`));
    } finally {
      await locked.dispose();
    }
  });
});

describe.skipIf(!available)('RedisShardManager: waiting for room instead of failing', () => {
  it('a million-event loop with await node.pushAsync() and small send buffers stores every event, in order, with no BackpressureError', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 2, ringBufferCapacity: 1000, ringBufferBytes: 16_000, controller: false, policy: { metricsWindowMs: 60_000 },
    });
    const n = 1_000_000;
    let waits = 0; // pushes that had to wait for room: the buffers really filled
    for (let i = 0; i < n; i++) {
      const p = node.pushAsync(i & 1 ? 2 ** 31 + i : i, `p:${i}`);
      let done = false;
      void p.then(() => { done = true; });
      await null; // a settled promise has run its callbacks by now
      if (!done) waits++;
      if ((await p) !== true) throw new Error(`pushAsync(p:${i}) did not accept it`);
    }
    await node.flush();
    expect(waits).toBeGreaterThan(10);
    expect(node.stats()).toMatchObject({ pushed: n, stored: n, buffered: 0, dropped: 0, drops: { refused: 0 } });
    await node.close();
    await checkStored(namespace, [0, 1], 'p', n);
  });

  it('a plain push() loop meets BackpressureError once the small buffers fill (why pushAsync exists)', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, ringBufferCapacity: 100, controller: false, policy: { metricsWindowMs: 60_000 } });
    expect(() => { for (let i = 0; i < 1000; i++) node.push(i, `q:${i}`); }).toThrow(redis.BackpressureError);
    await node.close();
  });

  it('empty events (\'\' and a 0-byte Uint8Array) are stored and delivered as 0-byte records, in order among the others', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, controller: false, policy: { metricsWindowMs: 60_000 } });
    expect(node.push(1, '')).toBe(true);
    expect(node.push(1, 'a')).toBe(true);
    expect(node.pushBatch([1, 1, 1], [new Uint8Array(0), 'b', ''])).toBe(3);
    expect(await node.pushAsync(1, new Uint8Array(0))).toBe(true);
    await node.flush();
    expect(node.stats()).toMatchObject({ pushed: 6, stored: 6, dropped: 0 });
    await node.close();
    const got: string[] = [];
    const consumers = await serveShardConsumers({ redis: server.url, namespace, idleMs: 5, consume: (records) => { for (const r of records) got.push(`[${r.payload.toString()}]`); } });
    await until(() => got.length >= 6, () => `${got.length} of 6 deliveries`);
    await sleep(100); // and no more
    await consumers.close();
    expect(got).toEqual(['[]', '[a]', '[]', '[b]', '[]', '[]']);
  });

  it('node.writable(): stream.pipeline from a Readable gets backpressure; every record stored in order', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 2, ringBufferCapacity: 500, controller: false, policy: { metricsWindowMs: 60_000 },
    });
    const n = 200_000;
    function* records() { for (let i = 0; i < n; i++) yield { key: `k${i % 101}`, payload: `w:${i}` }; }
    const sink = node.writable({ highWaterMark: 64 });
    expect(sink).toBeInstanceOf(Writable);
    await pipeline(Readable.from(records()), sink);
    await node.flush();
    expect(node.stats()).toMatchObject({ pushed: n, stored: n, buffered: 0, dropped: 0 });
    await node.close();
    await checkStored(namespace, [0, 1], 'w', n);
  });

  it('node.writableStream(): a WHATWG writer waits on ready; every record stored in order', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({
      redis: server.url, namespace, initialShards: 2, ringBufferCapacity: 300, controller: false, policy: { metricsWindowMs: 60_000 },
    });
    const n = 100_000;
    const writer = node.writableStream({ highWaterMark: 32 }).getWriter();
    for (let i = 0; i < n; i++) {
      await writer.ready;
      void writer.write({ key: i * 2654435761 >>> 0, payload: `s:${i}` });
    }
    await writer.close();
    await node.flush();
    expect(node.stats()).toMatchObject({ pushed: n, stored: n, buffered: 0, dropped: 0 });
    await node.close();
    await checkStored(namespace, [0, 1], 's', n);
  });

  it('pushAsync waits through a Redis outage, and after close() it rejects with ManagerClosedError', async () => {
    const restartable = await RedisTestServer.start();
    try {
      const namespace = ns();
      const node = await RedisShardManager.create({ redis: restartable.url, namespace, initialShards: 1, ringBufferCapacity: 10, controller: false, policy: { metricsWindowMs: 60_000 } });
      await expect(node.pushAsync(1, 5 as never)).rejects.toThrow(/push: payload must be a Uint8Array or a string/);
      await restartable.stop();
      for (let i = 0; i < 10; i++) expect(await node.pushAsync(1, `o:${i}`)).toBe(true);
      let settled = false;
      const waiting = node.pushAsync(1, 'o:10').then((r) => { settled = true; return r; });
      await sleep(100);
      expect(settled).toBe(false); // the buffer is full while Redis is away
      expect(node.stats().drops.refused).toBe(0); // a wait, not a refusal
      await restartable.restart();
      expect(await waiting).toBe(true);
      await node.close();
      expect(node.stats()).toMatchObject({ pushed: 11, stored: 11 });
      await expect(node.pushAsync(1, 'late')).rejects.toBeInstanceOf(redis.ManagerClosedError);
    } finally {
      await restartable.dispose();
    }
  });
});

describe.skipIf(!available)('RedisShardManager: close({ timeoutMs })', () => {
  it('a timeoutMs past a timer\'s limit (2^31 ms) is no deadline: the close stores every buffered event (Node would fire such a timer at once and give them up)', async () => {
    const node = await RedisShardManager.create({ redis: server.url, namespace: ns(), initialShards: 2, policy: { maxShards: 4 } });
    let pushed = 0;
    for (let i = 0; i < 50_000; i++) if (node.push(i, `event-${i}`)) pushed++;
    expect(pushed).toBe(50_000);
    const buffered = node.stats().buffered;
    expect(buffered, 'the close has events to store').toBeGreaterThan(0);
    await node.close({ timeoutMs: 2 ** 31 });
    expect(node.stats()).toMatchObject({ pushed: 50_000, stored: 50_000, buffered: 0 });
  });
  it('Redis stopped with events buffered: rejects with CloseTimeoutError counting the lost events; a waiting pushAsync gets ManagerClosedError, a pending flush() the same CloseTimeoutError; nothing is sent afterwards', async () => {
    const restartable = await RedisTestServer.start();
    try {
      const namespace = ns();
      const node = await RedisShardManager.create({ redis: restartable.url, namespace, initialShards: 1, ringBufferCapacity: 5, policy: { metricsWindowMs: 50 } });
      await until(() => node.isController, 'the lease'); // its controller timers and lease are part of what close must let go
      await expect(node.close({ timeoutMs: -1 })).rejects.toThrow(/close: options\.timeoutMs must be a finite number >= 0, got -1/);
      await expect(node.close({ timeoutMs: -1 })).rejects.toBeInstanceOf(redis.ScalingError);
      await expect(node.close(5 as never)).rejects.toThrow(/close: options must be an object, got 5/);
      await expect(node.close({ timeout: 100 } as never)).rejects.toThrow(/close: options\.timeout is not an option \(known: timeoutMs\)/);
      await restartable.stop(); // a real outage
      for (let i = 0; i < 5; i++) expect(node.push(1, `c:${i}`)).toBe(true);
      await until(() => node.stats().retries > 0, 'a failed send');
      const waiting = node.pushAsync(1, 'c:5').then(() => 'accepted', (e: unknown) => e); // the buffer is full: it waits
      const flushed = node.flush().then(() => 'flushed', (e: unknown) => e);
      const error = await node.close({ timeoutMs: 200 }).then(() => undefined, (e: unknown) => e);
      expect(error).toBeInstanceOf(redis.CloseTimeoutError);
      expect(error).toBeInstanceOf(root.CloseTimeoutError);
      expect((error as root.CloseTimeoutError).undelivered).toBe(5);
      expect((error as Error).message).toMatch(/close: 5 accepted event\(s\) were not stored in Redis within 200 ms .*the node was closed anyway and those events are lost/);
      expect(await waiting).toBeInstanceOf(redis.ManagerClosedError);
      expect(await flushed).toBe(error);
      await expect(node.flush()).rejects.toBe(error); // later flushes too: those events will never be stored
      expect(() => node.push(1, 'late')).toThrow(redis.ManagerClosedError);
      expect(node.stats()).toMatchObject({ pushed: 5, stored: 0, buffered: 5 });
      await expect(node.close(), 'a later close returns the same outcome').rejects.toBe(error);
      // Redis back: the closed node sends nothing (its connections are gone), the lost stay lost.
      await restartable.restart();
      await sleep(300);
      const client = new Redis(restartable.url);
      try {
        expect(await client.xlen(stream(namespace, 0))).toBe(0);
      } finally {
        client.disconnect();
      }
    } finally {
      await restartable.dispose();
    }
  });

  it('the process exits by itself after close({ timeoutMs }) gave up (no socket or timer of the node keeps it running)', async () => {
    const restartable = await RedisTestServer.start();
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, [new URL('./fixtures/redis-close-timeout-node.mjs', import.meta.url).pathname, restartable.url, ns()], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    try {
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      await until(() => out.includes('created\n'), 'the child node created');
      await restartable.stop();
      child.stdin.end('go\n');
      expect(await settles(exited), 'the child exits without process.exit()').toBe(true);
      const result = JSON.parse(out.split('\n')[1]!);
      expect(result).toMatchObject({ accepted: 5, name: 'CloseTimeoutError', rootClass: true, undelivered: 5 });
      expect(result.message).toMatch(/5 accepted event\(s\) were not stored in Redis .*lost/);
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
      await restartable.dispose();
    }
  }, 30_000);

  it('without a timeout, close() waits through the outage and resolves with everything stored once Redis is back; a later close({ timeoutMs }) bounds a close under way', async () => {
    const restartable = await RedisTestServer.start();
    try {
      const namespace = ns();
      const node = await RedisShardManager.create({ redis: restartable.url, namespace, initialShards: 1, controller: false, policy: { metricsWindowMs: 60_000 } });
      await restartable.stop();
      for (let i = 0; i < 5; i++) expect(node.push(1, `w:${i}`)).toBe(true);
      let settled = false;
      const closing = node.close();
      closing.then(() => (settled = true), () => (settled = true));
      await sleep(200);
      expect(settled, 'close waits while Redis is away').toBe(false);
      await restartable.restart();
      expect(await settles(closing), 'close resolves once Redis is back').toBe(true);
      await expect(closing).resolves.toBeUndefined();
      expect(node.stats()).toMatchObject({ pushed: 5, stored: 5, buffered: 0 });
      const client = new Redis(restartable.url);
      try {
        expect(await storedEvents(client, stream(namespace, 0))).toEqual(['w:0', 'w:1', 'w:2', 'w:3', 'w:4']);
      } finally {
        client.disconnect();
      }

      // A close() with no deadline under way (a shutdown began), then SIGTERM: close({ timeoutMs }).
      const other = await RedisShardManager.create({ redis: restartable.url, namespace, controller: false });
      await restartable.stop();
      for (let i = 0; i < 3; i++) expect(other.push(1, `v:${i}`)).toBe(true);
      const first = other.close();
      expect(other.close({ timeoutMs: 100 }), 'the same close').toBe(first);
      const error = await first.then(() => undefined, (e: unknown) => e);
      expect(error).toBeInstanceOf(root.CloseTimeoutError);
      expect((error as root.CloseTimeoutError).undelivered).toBe(3);
    } finally {
      await restartable.dispose();
    }
  });

  it('with everything stored in time, close({ timeoutMs }) resolves as close() does', async () => {
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 2, controller: false, policy: { metricsWindowMs: 60_000 } });
    for (let i = 0; i < 100; i++) expect(node.push((i * 2654435761) >>> 0, `t:${i}`)).toBe(true);
    await expect(node.close({ timeoutMs: 30_000 })).resolves.toBeUndefined();
    expect(node.stats()).toMatchObject({ pushed: 100, stored: 100, buffered: 0 });
    await checkStored(namespace, [0, 1], 't', 100);
  });
});

describe.skipIf(!available)('shard-mapper/redis exports the errors a node throws', () => {
  it('BackpressureError, ManagerClosedError, ScalingError: the same classes as the package root', async () => {
    expect(redis.BackpressureError).toBe(root.BackpressureError);
    expect(redis.ManagerClosedError).toBe(root.ManagerClosedError);
    expect(redis.ScalingError).toBe(root.ScalingError);
    expect(redis.CloseTimeoutError).toBe(root.CloseTimeoutError);
    const namespace = ns();
    const node = await RedisShardManager.create({ redis: server.url, namespace, initialShards: 1, ringBufferCapacity: 1, controller: false, policy: { metricsWindowMs: 60_000 } });
    let full: unknown;
    try { node.push(1, 'a'); node.push(1, 'b'); } catch (e) { full = e; }
    expect(full).toBeInstanceOf(redis.BackpressureError);
    expect(full).toBeInstanceOf(root.BackpressureError);
    await expect(node.drainShard(99)).rejects.toBeInstanceOf(redis.ScalingError);
    await node.close();
    let closed: unknown;
    try { node.push(1, 'c'); } catch (e) { closed = e; }
    expect(closed).toBeInstanceOf(redis.ManagerClosedError);
    expect(closed).toBeInstanceOf(root.ManagerClosedError);
    await expect(RedisShardManager.create({ redis: server.url, namespace: 'a b' })).rejects.toBeInstanceOf(redis.ScalingError);
  });
});

/**
 * A user's ioredis instance whose connections answer the first XADD that `swap` accepts with
 * another command's reply, without sending it — the reply a client or proxy that paired
 * replies with the wrong commands would hand over.
 */
class MispairingRedis extends Redis {
  swapped = 0;
  constructor(url: string, readonly fakeReply: unknown) { super(url, { lazyConnect: true }); }
  override duplicate(override?: Parameters<Redis['duplicate']>[0]): Redis {
    const copy = super.duplicate(override);
    const pipelineOf = copy.pipeline.bind(copy);
    copy.pipeline = ((...a: Parameters<Redis['pipeline']>) => {
      const p = pipelineOf(...a);
      const call = p.call.bind(p);
      let fakeAt = -1;
      let n = 0;
      p.call = ((name: string, ...args: unknown[]) => {
        if (fakeAt < 0 && this.swapped === 0 && name.toLowerCase() === 'xadd') { fakeAt = n++; this.swapped++; return p; }
        n++;
        return call(name, ...(args as string[]));
      }) as typeof p.call;
      const exec = p.exec.bind(p);
      p.exec = (async () => {
        const replies = fakeAt < 0 || n > 1 ? await exec() : [];
        if (fakeAt >= 0) replies!.splice(fakeAt, 0, [null, this.fakeReply]);
        return replies;
      }) as typeof p.exec;
      return p;
    }) as typeof copy.pipeline;
    return copy;
  }
}

describe.skipIf(!available)('RedisShardManager: an XADD answered with something else', () => {
  it('an array where the entry id belongs is no store: the frame is sent again, reported, and consumed once', async () => {
    const namespace = ns();
    const user = new MispairingRedis(server.url, [null, null, null]); // an HMGET's reply of an absent hash
    const events: RedisNodeEvent[] = [];
    const node = await RedisShardManager.create({ redis: user, namespace, initialShards: 1, policy: { minShards: 1, maxShards: 1 }, onRedisEvent: (e) => events.push(e) });
    const got: string[] = [];
    const consumers = await serveShardConsumers({ redis: server.url, namespace, idleMs: 5, consume: (records) => { for (const r of records) got.push(r.payload.toString()); } });
    try {
      for (let i = 0; i < 5; i++) node.push(i, `e:${i}`);
      await node.flush();
      expect(user.swapped, 'the fault hit: one XADD was answered with another reply').toBe(1);
      await until(() => got.length >= 5, 'five deliveries');
      await sleep(200); // a late repeat would show here
      expect(got).toEqual(['e:0', 'e:1', 'e:2', 'e:3', 'e:4']);
      expect(node.stats().retries).toBeGreaterThanOrEqual(1);
      expect(events.some((e) => e.type === 'redisError' && /XADD to shard 0 was answered with \[null,null,null\], not an entry id/.test(e.error.message))).toBe(true);
    } finally {
      await consumers.close();
      await node.close();
      user.disconnect();
    }
  });
});
