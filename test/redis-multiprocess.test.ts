// Many processes on one namespace, against a real redis-server (127.0.0.1, random port,
// temporary directory, appendonly yes + appendfsync always): a controller node, 3 producer
// nodes and 2 consumer processes. 105 000 sequenced events go through scale-up, scale-down
// and removal while a consumer is SIGKILLed (a new one starts), the controller node is
// SIGKILLed (a producer node takes over), and redis-server is SIGKILLed and restarted
// while the producers push.
// Checks: every accepted event delivered; a repeat only with the same dedup id; per shard,
// each producer's events in push order in the stream; the table identical on every node.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisTestServer, redisAvailable } from './helpers/redis-server.js';
import { until as untilHolds } from './helpers/delivery.js';
import { FixtureProcess, type FixtureMessage } from './helpers/fixture-process.js';

const available = redisAvailable();
const PHASE1 = 20_000;
const PHASE2 = 15_000;
const PRODUCERS = ['p1', 'p2', 'p3'];
const TOTAL = PRODUCERS.length * (PHASE1 + PHASE2);

type Msg = FixtureMessage;

const until = (done: () => boolean, what: string, limitMs = 60_000) => untilHolds(done, what, limitMs, 20);

let server: RedisTestServer;
beforeAll(async () => { if (available) server = await RedisTestServer.start(); });
afterAll(async () => { await server?.dispose(); });

describe.skipIf(!available)('shard-mapper/redis across processes', () => {
  it('105 000 events through scale-up, scale-down, removal, a consumer SIGKILL, a controller SIGKILL and a redis-server restart: none lost, repeats only with their dedup id, order kept, one table', async () => {
    const namespace = `mp${process.pid}`;
    // Deliveries: text → dedup ids seen and how often; per shard the first deliveries.
    const deliveries = new Map<string, { count: number; ids: Set<string> }>();
    const firsts: { shard: number; text: string; entry: string; index: number }[] = [];
    let received = 0;
    const onMessage = (m: Msg) => {
      if (m.type !== 'got') return;
      for (const [text, id, entry, index] of m.items as [string, string, string, number][]) {
        received++;
        let d = deliveries.get(text);
        if (!d) {
          deliveries.set(text, d = { count: 0, ids: new Set() });
          firsts.push({ shard: m.shard as number, text, entry, index });
        }
        d.count++;
        d.ids.add(id);
      }
    };
    const children: FixtureProcess[] = [];
    const spawnNode = (id: string, p1: number, p2: number) => {
      const c = new FixtureProcess(id, 'redis-node.mjs', [server.url, namespace, id, String(p1), String(p2)], onMessage);
      children.push(c);
      return c;
    };
    const spawnConsumer = (name: string, slowMs: number) => {
      const c = new FixtureProcess(name, 'redis-consumer.mjs', [server.url, namespace, name, String(slowMs)], onMessage);
      children.push(c);
      return c;
    };
    const maxEvent = (name: string) => {
      let n = 0;
      for (const c of children) {
        const e = (c.last.status?.events ?? c.last.table?.events ?? {}) as Record<string, number>;
        n += e[name] ?? 0;
      }
      return n;
    };
    try {
      // The controller: a node that pushes nothing, started first so it takes the lease.
      const ctl = spawnNode('ctl', 0, 0);
      await ctl.waitFor('ready');
      await until(() => ctl.last.status?.controller === true, 'the first node to take the controller lease', 10_000);
      const producers = PRODUCERS.map((id) => spawnNode(id, PHASE1, PHASE2));
      for (const p of producers) await p.waitFor('ready');
      const consumers = [spawnConsumer('c1', 10), spawnConsumer('c2', 10)];
      for (const c of consumers) await c.waitFor('ready');

      for (const p of producers) p.send('phase1');
      // Faults, each when enough has been delivered.
      await until(() => deliveries.size >= 8_000, '8 000 deliveries');
      await consumers[0]!.kill(); // SIGKILL: its leased shards and pending entries move on
      const c3 = spawnConsumer('c3', 10);
      consumers.push(c3);
      await until(() => deliveries.size >= 16_000, '16 000 deliveries');
      // The fault aims at the controller: ctl holds the lease (a stall on a loaded machine can
      // pass it to a producer node for a while; it comes back only if that node lets go).
      await until(() => ctl.last.status?.controller === true, 'the ctl node holding the controller lease', 20_000);
      await ctl.kill(); // SIGKILL the controller: a producer node takes the lease over
      await until(() => producers.some((p) => p.last.status?.controller === true), 'a producer node taking the controller lease over', 20_000);
      for (const p of producers) await p.waitFor('phase1done', 120_000);
      expect(maxEvent('scaleUp'), 'a scale-up happened under the phase-1 backlog').toBeGreaterThan(0);

      // Let the consumers catch up: the shards go idle, are drained, stopped and removed.
      for (const c of consumers) c.send('fast');
      await until(() => deliveries.size >= PRODUCERS.length * PHASE1, 'every phase-1 event delivered', 60_000);
      await until(() => maxEvent('shardRemoved') > 0, 'a shard drained, stopped and removed', 30_000);
      expect(maxEvent('scaleDown')).toBeGreaterThan(0);

      for (const p of producers) p.send('phase2');
      // While the producers push: SIGKILL redis-server and restart it (appendfsync always:
      // every write Redis acknowledged is on disk); the nodes buffer and retry meanwhile.
      const pushed = (p: FixtureProcess) => ((p.last.status?.stats as { pushed?: number } | undefined)?.pushed ?? 0);
      await until(() => producers.some((p) => pushed(p) >= PHASE1 + 1500), 'phase 2 under way', 30_000);
      await server.restart(300, 'SIGKILL');
      for (const p of producers) await p.waitFor('phase2done', 120_000);
      await until(() => deliveries.size >= TOTAL, `all ${TOTAL} events delivered`, 60_000);

      // Every node ends with the same table: ask all (each ticks first), until the
      // controller has settled (bounded), then compare.
      let final: Msg[] = [];
      for (let attempt = 0; attempt < 50; attempt++) {
        for (const p of producers) p.send('table');
        final = await Promise.all(producers.map((p) => p.waitFor('table')));
        const t = final.map((m) => m.table as { shards: { state: string }[] });
        if (new Set(final.map((m) => JSON.stringify(m.table))).size === 1 && t[0]!.shards.every((x) => x.state === 'active')) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(new Set(final.map((m) => JSON.stringify(m.table))).size, JSON.stringify(final.map((m) => m.table))).toBe(1);

      for (const p of producers) p.send('close');
      const closed = await Promise.all(producers.map((p) => p.waitFor('closed')));
      for (const c of consumers.slice(1)) c.send('close');
      for (const c of consumers.slice(1)) await c.waitFor('closed');

      // 1. Every accepted event was delivered (each producer accepted every seq: it retried refusals).
      for (const m of closed) expect((m.stats as { pushed: number }).pushed).toBe(PHASE1 + PHASE2);
      const missing: string[] = [];
      for (const id of PRODUCERS) for (let seq = 0; seq < PHASE1 + PHASE2; seq++) if (!deliveries.has(`${id}:${seq}`)) missing.push(`${id}:${seq}`);
      expect(missing.slice(0, 20), `${missing.length} events lost`).toEqual([]);
      expect(deliveries.size).toBe(TOTAL);
      // 2. Repeats carry one dedup id only.
      const mixed = [...deliveries].filter(([, d]) => d.ids.size !== 1);
      expect(mixed.slice(0, 5)).toEqual([]);
      const repeats = received - TOTAL;
      // 3. Per shard, in stream order, each producer's events rise.
      const byShard = new Map<number, typeof firsts>();
      for (const f of firsts) { let l = byShard.get(f.shard); if (!l) byShard.set(f.shard, l = []); l.push(f); }
      const outOfOrder: string[] = [];
      const cmpId = (a: string, b: string) => { const [a1, a2] = a.split('-').map(Number); const [b1, b2] = b.split('-').map(Number); return a1! - b1! || a2! - b2!; };
      for (const [shard, list] of byShard) {
        list.sort((a, b) => cmpId(a.entry, b.entry) || a.index - b.index);
        const last = new Map<string, number>();
        for (const f of list) {
          const [producer, seq] = f.text.split(':');
          if ((last.get(producer!) ?? -1) >= Number(seq)) outOfOrder.push(`shard ${shard}: ${f.text} after ${producer}:${last.get(producer!)}`);
          last.set(producer!, Number(seq));
        }
      }
      const rerouted = closed.reduce((n, m) => n + (m.stats as { rerouted: number }).rerouted, 0);
      expect(outOfOrder.slice(0, 10), `rerouted ${rerouted}`).toEqual([]);
      console.log(`multi-process: ${TOTAL} events, ${received} deliveries (${repeats} repeats, each with its dedup id), `
        + `${byShard.size} shards used, scale-ups ${maxEvent('scaleUp')}, scale-downs ${maxEvent('scaleDown')}, removals ${maxEvent('shardRemoved')}, `
        + `rerouted ${rerouted}, retries ${closed.reduce((n, m) => n + (m.stats as { retries: number }).retries, 0)}; final table ${JSON.stringify(final[0]!.table)}`);
    } finally {
      await Promise.all(children.map((c) => c.kill()));
    }
  }, 240_000);
});
