#!/usr/bin/env node
// npm run demo:redis [-- --url redis://host:port]: shard-mapper/redis across processes.
// Producer node processes ramp their load up and down into one namespace; consumer
// processes take the shards' streams; one node is the controller and scales the shards.
// Without --url a local redis-server is started (127.0.0.1, a free port, a temporary
// directory) and stopped at the end; with --url the run's namespace (its keys only) is deleted
// at the end. Ends with the tally: accepted, delivered, lost.
import { parseArgs } from 'node:util';
import { fork, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import logUpdate from 'log-update';
import pc from 'picocolors';
import { Redis } from 'ioredis';
import { numberFlag, targetRate as loadAt } from './demo-shared.mjs';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    duration: { type: 'string', default: '25' },
    nodes: { type: 'string', default: '3' },
    consumers: { type: 'string', default: '2' },
    peak: { type: 'string', default: '60000' },
    'max-shards': { type: 'string', default: '6' },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log(`usage: npm run demo:redis -- [--url redis://host:port] [--duration s] [--nodes n] [--consumers n] [--peak events/s] [--max-shards n]
  --url         an existing Redis (default: start a local redis-server for the demo); the run
                writes to a namespace of its own, demo-<pid>-<random>, and deletes its keys
                at the end (a run stopped before its summary leaves them)
  --duration    seconds to run (default 25)
  --nodes       producer node processes (default 3)
  --consumers   consumer processes (default 2)
  --peak        total events/s at the top of the ramp (default 60000)
  --max-shards  upper bound for autoscaling (default 6)`);
  process.exit(0);
}
const num = (name, min, max) => numberFlag(args, name, min, max);
const durationS = num('duration', 5, 3600);
const nodes = Math.round(num('nodes', 1, 16));
const consumerCount = Math.round(num('consumers', 1, 16));
const peak = num('peak', 100, 5_000_000);
const maxShards = Math.round(num('max-shards', 1, 64));

// ---- Redis: the given URL, or a local server for the demo --------------------------------
let url = args.url;
let local;
if (!url) {
  if (spawnSync('sh', ['-c', 'command -v redis-server']).status !== 0) {
    console.error('demo:redis needs a Redis: pass --url redis://host:port, or install redis-server (apt-get install redis-server).');
    process.exit(2);
  }
  const port = await new Promise((resolve) => { const s = createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); }); });
  const dir = mkdtempSync(join(tmpdir(), 'shard-mapper-demo-redis-'));
  const child = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', ''], { stdio: 'ignore' });
  local = { child, dir };
  process.on('exit', () => { if (child.exitCode === null) child.kill('SIGTERM'); }); // never leave it running
  url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, { lazyConnect: true, retryStrategy: () => 20 });
  probe.on('error', () => {});
  for (let i = 0; i < 200; i++) { try { await probe.connect(); await probe.ping(); break; } catch { await new Promise((r) => setTimeout(r, 25)); } }
  probe.disconnect();
}
// Unique to this run: the keys deleted at the end are this namespace's only.
const namespace = `demo-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const redis = new Redis(url);

// ---- the processes ------------------------------------------------------------------------
const script = fileURLToPath(new URL('./demo-redis-child.mjs', import.meta.url));
const statuses = new Map();
const decisions = [];
const owners = new Map();
const seen = []; // per node index: a Uint8Array of delivery counts by seq
let delivered = 0;
let repeats = 0;
let outOfOrder = 0;
const lastSeq = new Map(); // `${consumer}/${shard}/${node}` → last seq (for the order check)
const started = performance.now();
const elapsed = () => (performance.now() - started) / 1000;

function onMessage(m) {
  if (m.type === 'status') {
    statuses.set(m.index, m);
    for (const d of m.decisions) decisions.push(`${elapsed().toFixed(1)}s ${d}`);
  } else if (m.type === 'got') {
    owners.set(m.index, m.owned);
    for (const { shardId, pairs } of m.work) {
      for (let i = 0; i < pairs.length; i += 2) {
        const n = pairs[i]; const s = pairs[i + 1];
        let a = seen[n];
        if (!a || s >= a.length) { const b = new Uint8Array(Math.max(1024, 2 * (s + 1))); if (a) b.set(a); seen[n] = a = b; }
        if (a[s]++ > 0) { repeats++; continue; }
        delivered++;
        const key = `${m.index}/${shardId}/${n}`; // within one consumer process: its reports arrive in order
        if ((lastSeq.get(key) ?? -1) > s) outOfOrder++;
        lastSeq.set(key, s);
      }
    }
  }
}
const start = (role, index) => {
  const c = fork(script, [role, url, namespace, String(index), String(maxShards)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  c.on('message', onMessage);
  return c;
};
const nodeProcs = [];
for (let i = 0; i < nodes; i++) { nodeProcs.push(start('node', i)); if (i === 0) await new Promise((r) => setTimeout(r, 500)); } // the first creates the namespace
const consumerProcs = Array.from({ length: consumerCount }, (_, i) => start('consumer', i));

// Load profile over the run: quiet, ramp up, peak, ramp down, idle.
const targetRate = (f) => loadAt(f, peak, Math.min(1000, peak / 10));

// ---- the live view ------------------------------------------------------------------------
const tty = process.stdout.isTTY;
const fmt = (n) => Math.round(n).toLocaleString('en-US');
const stateColour = { active: pc.green, provisioning: pc.cyan, draining: pc.yellow, stopped: pc.gray };
const lastPushed = new Map();
let lastAt = performance.now();
async function render() {
  const now = performance.now();
  const dt = (now - lastAt) / 1000;
  lastAt = now;
  const table = [...statuses.values()].find((s) => s.controller)?.table ?? statuses.get(0)?.table;
  // A shard's backlog as the controller reads it: events appended (`in`, counted by the nodes)
  // minus events acknowledged (`out`, counted by the consumers' acknowledging script), in its progress hash.
  const shardIds = (table?.shards ?? []).map((sh) => sh.id);
  const counts = await Promise.all(shardIds.map((id) => redis.hmget(`${namespace}:progress:{${namespace}:${id}}`, 'in', 'out')));
  const backlogOf = Object.fromEntries(shardIds.map((id, i) => [id, Math.max(0, Number(counts[i][0] ?? 0) - Number(counts[i][1] ?? 0))]));
  const lines = [
    pc.bold('shard-mapper/redis live demo') + pc.gray(`  ${elapsed().toFixed(1)} s / ${durationS} s   ${nodes} node processes, ${consumerCount} consumer processes, namespace ${namespace}, ${args.url ? url : 'local redis-server'}`),
    `target ${fmt(targetRate(Math.min(1, elapsed() / durationS)))} ev/s   delivered ${pc.bold(fmt(delivered))}   repeats ${fmt(repeats)}   table v${table?.version ?? '?'}`,
    pc.gray('target: the load asked of the nodes at this moment (the ramp of --peak); pushed/s: what each node accepted since the last view'),
    '',
    pc.gray('  node  role         pushed/s     pushed     stored  buffered'),
  ];
  for (let i = 0; i < nodes; i++) {
    const s = statuses.get(i);
    if (!s) { lines.push(`  ${String(i).padStart(4)}  starting`); continue; }
    const rate = (s.stats.pushed - (lastPushed.get(i) ?? s.stats.pushed)) / dt;
    lastPushed.set(i, s.stats.pushed);
    const role = s.controller ? 'controller' : 'node';
    // Pad the visible text: colour codes are absent when picocolors turns colour off.
    lines.push(`  ${String(i).padStart(4)}  ${s.controller ? pc.magenta(role) : role}${' '.repeat(11 - role.length)}  ${fmt(rate).padStart(9)}  ${fmt(s.stats.pushed).padStart(9)}  ${fmt(s.stats.stored).padStart(9)}  ${fmt(s.stats.buffered).padStart(8)}`);
  }
  lines.push('', pc.gray('  shard  state          backlog  consumer'));
  for (const sh of table?.shards ?? []) {
    const backlog = backlogOf[sh.id] ?? 0;
    const owner = [...owners].find(([, o]) => o.includes(sh.id))?.[0];
    lines.push(`  ${String(sh.id).padStart(5)}  ${(stateColour[sh.state] ?? ((x) => x))(sh.state.padEnd(13))}  ${fmt(backlog).padStart(7)}  ${owner === undefined ? '-' : `c${owner}`}`);
  }
  lines.push('', pc.gray(`scaling: ${decisions.slice(-6).join('  ') || 'none yet'}`));
  if (tty) logUpdate(lines.join('\n'));
  else console.log(lines.join('\n'));
}

const timer = setInterval(() => {
  const rate = targetRate(Math.min(1, elapsed() / durationS)) / nodes;
  for (const p of nodeProcs) p.send({ rate });
}, 100);
const view = setInterval(() => { void render(); }, tty ? 300 : 2000);
await new Promise((r) => setTimeout(r, durationS * 1000));
clearInterval(timer);

// Stop the producers (each stores everything it accepted), then wait for the consumers.
const done = nodeProcs.map((p) => new Promise((resolve) => p.on('message', (m) => { if (m.type === 'done') resolve(m); })));
for (const p of nodeProcs) p.send('stop');
const results = await Promise.all(done);
const accepted = results.reduce((a, r) => a + r.accepted, 0);
for (let waited = 0; delivered < accepted && waited < 60_000; waited += 100) await new Promise((r) => setTimeout(r, 100));
clearInterval(view);
await render();
if (tty) logUpdate.done();
const consumersDone = consumerProcs.map((p) => new Promise((resolve) => p.on('message', (m) => { if (m.type === 'done') resolve(); })));
for (const p of consumerProcs) p.send('stop');
await Promise.all(consumersDone);
// Every child closed its node or consumers before it said done; wait until they are gone.
await Promise.all([...nodeProcs, ...consumerProcs].map((p) => (p.exitCode !== null || p.signalCode !== null ? undefined : new Promise((r) => p.once('exit', r)))));

/** Deletes this run's keys from the user's Redis: `{ns}:…` (table, counters) and `ns:…` (streams, owners, progress). */
async function deleteNamespace() {
  let deleted = 0;
  for (const match of [`{${namespace}}:*`, `${namespace}:*`]) {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', match, 'COUNT', 500);
      cursor = next;
      if (keys.length > 0) deleted += await redis.del(...keys);
    } while (cursor !== '0');
  }
  return deleted;
}

const lost = accepted - delivered;
const row = (k, v, note = '') => console.log(`  ${k.padEnd(22)} ${fmt(v).padStart(12)}  ${pc.gray(note)}`);
console.log(pc.bold('\nsummary'));
row('accepted', accepted, `by ${nodes} node processes`);
row('delivered', delivered, 'distinct events the consumers acknowledged');
row('repeats', repeats, 'delivered again (same dedup id): retries and take-overs');
row('refused, then retried', results.reduce((a, r) => a + r.refused, 0), 'full send buffers pushed back on the producers');
row('lost', lost, lost === 0 ? 'none' : 'LOST EVENTS');
row('out of order', outOfOrder, 'per shard and node');
console.log(pc.gray(`  scaling decisions: ${decisions.join(', ') || 'none'}`));
if (args.url) console.log(pc.gray(`  deleted the ${fmt(await deleteNamespace())} keys of namespace ${namespace}`));
redis.disconnect();
if (local) { local.child.kill('SIGTERM'); await new Promise((r) => local.child.once('exit', r)); rmSync(local.dir, { recursive: true, force: true }); }
process.exit(lost === 0 && outOfOrder === 0 ? 0 : 1);
