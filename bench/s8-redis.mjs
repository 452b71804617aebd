// Scenario 8 — routed push into Redis Streams (issue 11); the end-to-end table also has
// BullMQ (Queue.addBulk → Redis → a Worker process), what users run instead (issue 20).
// Scenario 8 — routed push into Redis Streams (issue 11). One node of shard-mapper/redis
// pushes 64-byte events over 8 shards (frames, pipelined XADD) into a local redis-server the
// scenario starts itself (127.0.0.1, random port, temporary directory, no persistence), against
// the same server and the same ioredis:
//   (a) a raw pipeline of one XADD per event,
//   (b) `await redis.xadd(...)` per event,
//   (c) a raw pipeline of pre-built 64-event frames, no routing (the limit here).
// A run is timed from the first push to flush() resolving (every event stored). Runs are
// interleaved; a row is the median run with its min–max range. Skipped (with a message) when
// redis-server is not installed.
import { fork, spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import { RedisShardManager, serveShardConsumers } from 'shard-mapper/redis';
import { summarizeRuns, withRatios, row, goal, consume, check, fmtRate, fmtRatio, medianOf as median } from './lib.mjs';

export const id = 's8';
export const title = '8. Routed push into Redis Streams (shard-mapper/redis) vs raw ioredis XADD';

const SHARDS = 8;
const SIZE = 64;
const FRAME = 64;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

async function startServer() {
  const which = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' });
  if (which.status !== 0) return undefined;
  const dir = mkdtempSync(join(tmpdir(), 'shard-mapper-bench-redis-'));
  const port = await freePort();
  const child = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--dir', dir, '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], { stdio: 'ignore' });
  const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, retryStrategy: () => 20 });
  client.on('error', () => {}); // refused until the server listens: the loop below retries
  for (let i = 0; i < 200; i++) {
    try { await client.connect(); await client.ping(); break; } catch { await new Promise((r) => setTimeout(r, 25)); }
  }
  return {
    url: `redis://127.0.0.1:${port}`, client, port,
    async stop() { client.disconnect(); child.kill('SIGTERM'); await new Promise((r) => child.once('exit', r)); rmSync(dir, { recursive: true, force: true }); },
  };
}

function payloads(n) {
  const out = [];
  for (let i = 0; i < n; i++) { const p = new Uint8Array(SIZE); p.fill(i & 0xff); new DataView(p.buffer).setUint32(0, i, true); out.push(p); }
  return out;
}

export async function run(profile) {
  const server = await startServer();
  if (!server) {
    const msg = 'SKIPPED: redis-server is not installed (apt-get install redis-server).';
    if (process.env.CI === 'true') throw new Error(`scenario 8 needs redis-server under CI=true. ${msg}`);
    console.log(msg);
    return { tables: [], goals: [], intro: msg };
  }
  const { client, url } = server;
  const n = Math.max(2000, Math.round(200_000 * profile.scale));
  const nAwait = Math.max(500, Math.round(n / 20));
  const reps = Math.max(3, profile.rounds);
  const events = payloads(n);
  const keysRaw = Array.from({ length: SHARDS }, (_, i) => `bench:raw:${i}`);
  // (c)'s frames, built before the clock starts: 64 events of one stream, as the node packs them.
  const frames = [];
  for (let f = 0; f * FRAME < n; f++) {
    const m = Math.min(FRAME, n - f * FRAME);
    const buf = Buffer.allocUnsafe(m * (4 + SIZE));
    for (let k = 0; k < m; k++) { buf.writeUInt32LE(SIZE, k * (4 + SIZE)); buf.set(events[f * FRAME + k], k * (4 + SIZE) + 4); }
    frames.push(buf);
  }
  const node = await RedisShardManager.create({
    redis: url, namespace: 'bench', initialShards: SHARDS, controller: false, ringBufferCapacity: 1 << 20,
    policy: { minShards: SHARDS, maxShards: SHARDS, metricsWindowMs: 60_000, autoScale: false },
  });
  const hashes = new Uint32Array(n);
  for (let i = 0; i < n; i++) hashes[i] = Math.imul(i + 1, 2654435761) >>> 0;

  const impls = [
    {
      id: 'sm-redis', name: 'shard-mapper/redis push (routed, frames, pipelined XADD)', ref: true, count: n,
      async once(count) {
        const t0 = performance.now();
        for (let i = 0; i < count; i++) {
          node.push(hashes[i], events[i]);
          if ((i & 4095) === 4095) await new Promise((r) => setImmediate(r)); // let the sender run, as a server would
        }
        await node.flush();
        return { ms: performance.now() - t0, events: count };
      },
    },
    {
      id: 'raw-pipeline', name: '(a) ioredis pipeline, one XADD per event', count: n,
      async once(count) {
        const t0 = performance.now();
        for (let i = 0; i < count; i += 4096) {
          const p = client.pipeline();
          for (let k = i; k < Math.min(count, i + 4096); k++) p.xadd(keysRaw[k % SHARDS], '*', 'd', Buffer.from(events[k].buffer, events[k].byteOffset, SIZE));
          const r = await p.exec();
          consume(r.length);
        }
        return { ms: performance.now() - t0, events: count };
      },
    },
    {
      id: 'await-each', name: '(b) await redis.xadd(...) per event', count: nAwait,
      async once(count) {
        const t0 = performance.now();
        for (let k = 0; k < count; k++) consume((await client.xadd(keysRaw[k % SHARDS], '*', 'd', Buffer.from(events[k].buffer, events[k].byteOffset, SIZE))).length);
        return { ms: performance.now() - t0, events: count };
      },
    },
    {
      id: 'raw-frames', name: '(c) ioredis pipeline of pre-built 64-event frames, no routing', count: n,
      async once(count) {
        const nf = Math.ceil(count / FRAME);
        const t0 = performance.now();
        for (let f = 0; f < nf; f += 256) {
          const p = client.pipeline();
          for (let k = f; k < Math.min(nf, f + 256); k++) p.xadd(keysRaw[k % SHARDS], '*', 'd', frames[k]);
          consume((await p.exec()).length);
        }
        return { ms: performance.now() - t0, events: count };
      },
    },
  ];

  const runs = impls.map(() => []);
  const reset = async () => { await client.del(...keysRaw); await client.eval("for _, k in ipairs(redis.call('KEYS', 'bench:shard:*')) do redis.call('XTRIM', k, 'MAXLEN', 0) end return 0", 0); };
  for (const impl of impls) { await impl.once(Math.min(impl.count, 2000)); await reset(); } // warm-up
  for (let r = 0; r < reps; r++) {
    for (let k = 0; k < impls.length; k++) {
      runs[k].push(await impls[k].once(impls[k].count));
      await reset();
    }
  }
  const st = node.stats();
  check(st.stored === st.pushed && st.pushed === reps * n + 2000, `the node stored every event (${st.stored} of ${st.pushed})`);
  await node.close();
  const e2eRows = [];
  for (const procs of [1, 3]) {
    const runsE2e = [];
    for (let r = 0; r < Math.max(3, Math.min(reps, 3)); r++) runsE2e.push(await endToEnd(url, procs, n, `e2e${procs}-${r}`));
    const m = summarizeRuns(runsE2e);
    const rates = runsE2e.map((x) => (x.events / x.ms) * 1000);
    e2eRows.push({ id: `e2e-${procs}`, name: `${procs} node process${procs > 1 ? 'es' : ''} → Redis → 1 consumer process (acknowledged)`, ...m, min: Math.min(...rates), max: Math.max(...rates), events: n });
  }
  // What users run instead: a BullMQ queue, jobs added in bulk, one Worker in another process.
  const nBull = Math.max(500, Math.round(n / 40)); // a BullMQ job costs ~1000× an event here
  for (const concurrency of [1, 64]) {
    const runsBull = [];
    for (let r = 0; r < (profile.name === 'tiny' ? 1 : 3); r++) runsBull.push(await bullEndToEnd(server.port, nBull, concurrency, `bench-bull-${concurrency}-${r}`, events));
    const m = summarizeRuns(runsBull);
    const rates = runsBull.map((x) => (x.events / x.ms) * 1000);
    e2eRows.push({ id: `bullmq-${concurrency}`, name: `BullMQ: Queue.addBulk (1000 jobs a call) → Redis → 1 Worker process (concurrency ${concurrency}; ${nBull.toLocaleString('en-US')} events)`, ...m, min: Math.min(...rates), max: Math.max(...rates), events: nBull });
  }
  const reactions = [];
  for (let r = 0; r < 3; r++) reactions.push(await reaction(url, `react-${r}`));
  await server.stop();

  const rows = impls.map((impl, k) => {
    const m = summarizeRuns(runs[k]);
    const rates = runs[k].map((x) => (x.events / x.ms) * 1000);
    return { id: impl.id, name: impl.name, ref: !!impl.ref, ...m, min: Math.min(...rates), max: Math.max(...rates), events: impl.count };
  });
  withRatios(rows);
  const sm = row(rows, 'sm-redis');
  const rate = (id) => row(rows, id).opsPerSec;
  const goals = [
    goal({ id: 'redis-vs-pipeline', issue: '#11', text: 'routed push into Redis ≥ 5× a raw pipeline of one XADD per event (64 B, 8 streams)', value: sm.opsPerSec / rate('raw-pipeline'), target: 5, op: '>=', detail: `${fmtRate(sm.opsPerSec)}/s vs ${fmtRate(rate('raw-pipeline'))}/s` }),
    goal({ id: 'redis-vs-await', issue: '#11', text: 'routed push into Redis ≥ 50× await redis.xadd per event', value: sm.opsPerSec / rate('await-each'), target: 50, op: '>=', detail: `${fmtRate(sm.opsPerSec)}/s vs ${fmtRate(rate('await-each'))}/s` }),
    goal({ id: 'redis-vs-frames', issue: '#11', text: 'routed push into Redis ≥ 70 % of raw pre-built 64-event frames', value: (100 * sm.opsPerSec) / rate('raw-frames'), target: 70, op: '>=', unit: '%', detail: `${fmtRate(sm.opsPerSec)}/s vs ${fmtRate(rate('raw-frames'))}/s` }),
  ];
  return {
    intro: `${n.toLocaleString('en-US')} events of ${SIZE} bytes per run over ${SHARDS} streams (${nAwait.toLocaleString('en-US')} for (b)), local redis-server ${serverVersion()} without persistence, ioredis; ${reps} interleaved runs after a warm-up; median run, min–max range. shard-mapper/redis is timed from the first push to flush() resolving; its frames close at 64 KiB (or when the sender is free), one frame per shard in flight.`,
    tables: [{
      id: 's8-e2e', title: `8b. End to end, ${n.toLocaleString('en-US')} 64-byte events: node processes → Redis → consumer, acknowledged`, unit: 'event', rows: e2eRows,
      columns: [
        { head: 'setup', get: (r) => r.name },
        { head: 'events/s (median)', get: (r) => fmtRate(r.opsPerSec), align: 'right' },
        { head: 'range', get: (r) => `${fmtRate(r.min)} – ${fmtRate(r.max)}`, align: 'right' },
      ],
    }, {
      id: 's8-reaction', title: '8c. Threshold crossed → new shard in the route of every node (2 nodes, metricsWindowMs 50)', unit: 'op',
      rows: [{ id: 'reaction', name: 'backlog over fillRatioThreshold on every shard → new shard routable on both nodes', ns: median(reactions) * 1e6, reactions }],
      columns: [
        { head: 'what', get: (r) => r.name },
        { head: 'ms (median)', get: (r) => median(r.reactions).toFixed(0), align: 'right' },
        { head: 'runs (ms)', get: (r) => r.reactions.map((x) => x.toFixed(0)).join(', '), align: 'right' },
      ],
    }, {
      id: 's8', title: `8. 64-byte events into Redis Streams, ${SHARDS} streams`, unit: 'event', rows,
      columns: [
        { head: 'implementation', get: (r) => (r.ref ? `**${r.name}**` : r.name) },
        { head: 'events/s (median)', get: (r) => fmtRate(r.opsPerSec), align: 'right' },
        { head: 'range', get: (r) => `${fmtRate(r.min)} – ${fmtRate(r.max)}`, align: 'right' },
        { head: 'time ÷ shard-mapper', get: (r) => fmtRatio(r.ratio), align: 'right' },
        { head: 'events per run', get: (r) => r.events.toLocaleString('en-US'), align: 'right' },
      ],
    }],
    goals,
  };
}

const nodeWorker = fileURLToPath(new URL('./workers/redis-node.mjs', import.meta.url));
const bullWorker = fileURLToPath(new URL('./workers/bullmq-worker.mjs', import.meta.url));

/** BullMQ end to end: this process adds n jobs (one 64-byte event each, base64) with
 *  Queue.addBulk, 1000 a call; a Worker in a child process completes them (removeOnComplete).
 *  Timed from the first addBulk to the worker's count reaching n. */
async function bullEndToEnd(port, n, concurrency, name, events) {
  const connection = { host: '127.0.0.1', port };
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  const child = fork(bullWorker, [String(port), name, String(concurrency)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let processed = 0;
  child.on('message', (m) => { if (m.type === 'count' || m.type === 'stopped') processed = m.processed; });
  await new Promise((resolve) => { const on = (m) => { if (m.type === 'ready') { child.off('message', on); resolve(); } }; child.on('message', on); });
  const data = events.slice(0, 1024).map((e) => Buffer.from(e.buffer, e.byteOffset, SIZE).toString('base64'));
  const t0 = performance.now();
  for (let i = 0; i < n; i += 1000) {
    const jobs = [];
    for (let k = i; k < Math.min(n, i + 1000); k++) jobs.push({ name: 'e', data: { d: data[k & 1023] }, opts: { removeOnComplete: true } });
    await queue.addBulk(jobs);
  }
  const limit = performance.now() + 300_000;
  while (processed < n && performance.now() < limit) await new Promise((r) => setTimeout(r, 2));
  const ms = performance.now() - t0;
  child.send('stop');
  await new Promise((r) => { if (child.exitCode !== null) r(); else child.once('exit', r); });
  check(processed === n, `BullMQ end to end: ${processed} of ${n} processed`);
  await queue.obliterate({ force: true });
  await queue.close();
  consume(processed);
  return { ms, events: n };
}

/** `procs` node processes push n events in all; one consumer (here, its own connection)
 *  acknowledges them. Timed from 'go' to the last acknowledgement. */
async function endToEnd(url, procs, n, namespace) {
  const creator = await RedisShardManager.create({ redis: url, namespace, initialShards: SHARDS, controller: false, policy: { minShards: SHARDS, maxShards: SHARDS, autoScale: false, metricsWindowMs: 1000 } });
  await creator.close();
  let consumed = 0;
  const consumers = await serveShardConsumers({ redis: url, namespace, batchSize: 64, idleMs: 2, consume: (records) => { consumed += records.length; } });
  await new Promise((r) => setTimeout(r, 300)); // the consumer takes its leases
  const children = [];
  for (let k = 0; k < procs; k++) {
    const per = Math.floor(n / procs) + (k < n % procs ? 1 : 0);
    const child = fork(nodeWorker, [url, namespace, String(per)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    await new Promise((resolve) => child.once('message', resolve));
    children.push(child);
  }
  const t0 = performance.now();
  const done = children.map((c) => new Promise((resolve) => c.on('message', (m) => { if (m.type === 'done') resolve(m); })));
  for (const c of children) c.send('go');
  await Promise.all(done);
  const limit = performance.now() + 120_000;
  while (consumed < n && performance.now() < limit) await new Promise((r) => setTimeout(r, 1));
  const ms = performance.now() - t0;
  check(consumed === n, `end to end: ${consumed} of ${n} acknowledged`);
  await Promise.all(children.map((c) => new Promise((r) => { if (c.exitCode !== null) r(); else c.once('exit', r); })));
  await consumers.close();
  consume(consumed);
  return { ms, events: n };
}

/** Time from a backlog crossing the fill threshold on every shard (no consumer) to the new
 *  shard being in the route of both nodes (the controller and another). */
async function reaction(url, namespace) {
  const policy = { minShards: 2, maxShards: 4, fillRatioThreshold: 0.5, cooldownMs: 200, metricsWindowMs: 50 };
  const a = await RedisShardManager.create({ redis: url, namespace, initialShards: 2, ringBufferCapacity: 1000, policy });
  const b = await RedisShardManager.create({ redis: url, namespace, controller: false });
  await new Promise((r) => setTimeout(r, 300)); // a holds the lease, a few quiet windows pass
  const payload = new Uint8Array(64);
  for (let i = 0; i < 1200; i++) a.push(i * 3_579_139, payload); // 600 per shard > 0.5 × 1000
  await a.flush();
  const t0 = performance.now();
  const limit = t0 + 10_000;
  const has = (node) => node.table().route.some((id) => id >= 2);
  while (!(has(a) && has(b)) && performance.now() < limit) await new Promise((r) => setTimeout(r, 1));
  const ms = performance.now() - t0;
  check(has(a) && has(b), 'the new shard reached both nodes');
  await Promise.all([a.close(), b.close()]);
  return ms;
}

function serverVersion() {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  return /v=([\d.]+)/.exec(r.stdout)?.[1] ?? '?';
}
