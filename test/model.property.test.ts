// Model-based property tests: random sequences of ShardMapper and ShardManager operations,
// each checked after EVERY step against a small plain-TypeScript model of the contract
// (docs/CONTRACT.md §4-§6). The model predicts every result and every error (kind and when); an error
// must leave the real object unchanged. Invariants checked after each step include: active
// count == Active states, never above maxShards, never below minShards through the scale
// APIs, ids unique and monotonic, selectShard only ever answers Active ids (the exact one
// the model predicts), callbacks exactly once per real transition, cooldown never bypassed
// (drain-then-scaleUp included), no decision inside cooldownMs after a scaling action
// (warm-up), and for the manager: pushed = delivered + inFlight + evicted, every polled
// payload is one that was accepted, in push order per shard.
//
// A failure prints fast-check's report with its seed and path. Replay one with
//   FC_SEED=<seed> FC_PATH=<path> npx vitest run test/model.property.test.ts
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { backpressureArb, fcRunParams } from './helpers/arbitraries.js';
import {
  BackpressureError, NO_SHARD, ScalingError, ShardManager, ShardMapper, hashKey,
  type BackpressureMode, type ManagerEvent, type ScalingPolicy, type ShardMetricsCollector,
} from 'shard-mapper';

const runParams = () => fcRunParams(1000);
const NUM_RUNS = runParams().numRuns;

const U32 = 0xffffffff;

/** FC_STATS=1 prints how often each operation ended each way (to see what the runs reach). */
const seen = new Map<string, number>();
const tally = (what: string) => { if (process.env.FC_STATS) seen.set(what, (seen.get(what) ?? 0) + 1); };
afterAll(() => {
  if (process.env.FC_STATS) console.log([...seen].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}: ${v}`).join('\n'));
});
const MAX_ID = 0xfffe;
type State = 'provisioning' | 'active' | 'draining' | 'stopped';
type Decision = { kind: 'none' } | { kind: 'scaleUp' | 'scaleDown'; count: number };

/** An error the model predicts: a ScalingError kind, or a plain error class. */
class Predicted extends Error {
  constructor(readonly kind: string) { super(`model predicts ${kind}`); }
}
/** What a throwing callback throws. */
class Boom extends Error {}

const clampSample = (v: number) => (v >= U32 ? U32 : Math.floor(v));

// ---- the shared part of the model: one shard's collector window and its metrics --------

interface Window {
  bufferLen: number;
  events: number;
  drainPushes: number;
  latC: number; latS: number;
  flC: number; flS: number;
  draining: boolean;
}
const freshWindow = (): Window => ({ bufferLen: 0, events: 0, drainPushes: 0, latC: 0, latS: 0, flC: 0, flS: 0, draining: false });
function addPair(w: Window, which: 'lat' | 'fl', v: number): void {
  const c = which === 'lat' ? 'latC' : 'flC';
  const s = which === 'lat' ? 'latS' : 'flS';
  w[c] = Math.min(w[c] + 1, U32);
  w[s] = Math.min(w[s] + clampSample(v), U32);
}

interface MShard extends Window {
  id: number;
  state: State;
  activatedAt: number;
  drainStartedAt: number;
  weight: number;
  last: { fillRatio: number; avgPushLatencyNs: number; avgFlushLatencyUs: number; eventRate: number } | undefined;
  idleSince: number | undefined;
}

/** Mapper state shared by both models: table, ids, cooldown, weights, decisions. */
class CoreModel {
  t = 0;
  nextId: number;
  lastScaling = -Infinity;
  shards: MShard[] = [];
  gone: number[] = []; // removed ids
  created: number[] = []; // expected onShardCreated calls
  removed: number[] = []; // expected onShardRemoved calls
  throwing = false;

  constructor(readonly p: ScalingPolicy, readonly capacity: number, readonly grace: number, initial: number) {
    this.nextId = 0;
    this.alloc(initial, 'active', -Infinity);
  }

  get active(): number { return this.shards.filter((s) => s.state === 'active').length; }
  byId(id: number): MShard | undefined { return this.shards.find((s) => s.id === id); }
  activeIds(): number[] { return this.shards.filter((s) => s.state === 'active').map((s) => s.id); }
  allIds(): number[] { return this.shards.filter((s) => s.state !== 'stopped').map((s) => s.id); }
  inCooldown(): boolean { return this.t - this.lastScaling < this.p.cooldownMs; }

  alloc(count: number, state: State, activatedAt: number): number[] {
    const ids: number[] = [];
    for (let i = 0; i < count; i++) {
      const id = this.nextId++;
      this.shards.push({ ...freshWindow(), id, state, activatedAt, drainStartedAt: 0, weight: 0, last: undefined, idleSince: undefined });
      ids.push(id);
    }
    return ids;
  }

  /** Routing candidates (selectShard, docs/CONTRACT.md §5), in table order. */
  candidates(): number[] {
    const active = this.shards.filter((s) => s.state === 'active');
    let min = Infinity;
    for (const s of active) if (s.weight < min) min = s.weight;
    // "within 0.1", with the library's hair of slack for binary floating point (1.1 - 1.0)
    const out = active.filter((s) => s.weight - min <= 0.1 + 1e-9).map((s) => s.id);
    return out.length > 0 ? out : active.map((s) => s.id);
  }

  select(hash: number): number {
    const c = this.candidates();
    if (c.length === 0) return NO_SHARD;
    return c[Math.floor(((hash >>> 0) * c.length) / 2 ** 32)]!;
  }

  checkUp(count: number, honourCooldown: boolean, slotsFree = Infinity): void {
    if (this.active + count > this.p.maxShards) throw new Predicted('AtMaxShards');
    if (this.nextId + count - 1 > MAX_ID) throw new Predicted('AtMaxShards');
    if (honourCooldown && this.inCooldown()) throw new Predicted('InCooldown');
    if (count > slotsFree) throw new Predicted('ShardCreationFailed');
  }

  /** Fire a callback for ids: every id is logged; a throwing callback makes the call throw. */
  fire(log: number[], ids: number[]): boolean {
    log.push(...ids);
    return this.throwing && ids.length > 0;
  }

  activate(id: number): { value: boolean; boom: boolean } {
    const s = this.byId(id);
    if (!s) throw new Predicted('InvalidPolicy');
    if (s.state === 'active') return { value: false, boom: false };
    if (s.state !== 'provisioning') throw new Predicted('InvalidPolicy');
    if (this.active >= this.p.maxShards) throw new Predicted('AtMaxShards');
    s.state = 'active';
    s.activatedAt = this.t;
    return { value: true, boom: this.fire(this.created, [id]) };
  }

  drain(list: MShard[]): void {
    for (const s of list) {
      s.state = 'draining';
      s.drainStartedAt = this.t;
      s.drainPushes = 0;
      s.draining = true;
    }
  }

  drainSpecific(id: number): void {
    if (this.active <= this.p.minShards) throw new Predicted('AtMinShards');
    const s = this.byId(id);
    if (!s) throw new Predicted('InvalidPolicy');
    if (s.state === 'draining') return;
    if (s.state !== 'active') throw new Predicted('InvalidPolicy');
    this.drain([s]);
    this.lastScaling = this.t;
  }

  scaleDown(count: number): number[] {
    if (count === 0) return [];
    if (this.active <= this.p.minShards) throw new Predicted('AtMinShards');
    if (this.inCooldown()) throw new Predicted('InCooldown');
    const n = Math.min(count, this.active - this.p.minShards);
    const chosen = this.shards.filter((s) => s.state === 'active').sort((a, b) => a.weight - b.weight).slice(0, n);
    this.drain(chosen);
    this.lastScaling = this.t;
    return chosen.map((s) => s.id);
  }

  /** Draining shards that finalizeDraining stops now. */
  finalizable(): MShard[] {
    return this.shards.filter((s) => s.state === 'draining' && s.bufferLen === 0 && s.drainPushes === 0 && this.t - s.drainStartedAt > this.grace);
  }

  collect(): object[] {
    const out: object[] = [];
    for (const s of this.shards) {
      const fillRatio = this.capacity === 0 ? 0 : s.bufferLen / this.capacity;
      const avgPushLatencyNs = s.latC === 0 ? 0 : Math.floor(s.latS / s.latC);
      const avgFlushLatencyUs = s.flC === 0 ? 0 : Math.floor(s.flS / s.flC);
      const eventRate = s.events;
      const weight = s.draining ? Number.MAX_VALUE : fillRatio * 100 + avgPushLatencyNs / 10 + eventRate / 1e6;
      s.events = 0; s.latC = 0; s.latS = 0; s.flC = 0; s.flS = 0;
      s.last = { fillRatio, avgPushLatencyNs, avgFlushLatencyUs, eventRate };
      s.weight = weight;
      if (fillRatio < this.p.underutilizedThreshold && eventRate === 0) s.idleSince ??= this.t;
      else s.idleSince = undefined;
      out.push({ shardId: s.id, bufferLen: s.bufferLen, capacity: this.capacity, fillRatio, avgPushLatencyNs, avgFlushLatencyUs, eventRate, lastUpdated: this.t, draining: s.draining, weight });
    }
    return out;
  }

  evaluate(): Decision {
    const p = this.p;
    if (!p.autoScale || this.inCooldown()) return { kind: 'none' };
    let over = 0;
    let under = 0;
    for (const s of this.shards) {
      if (s.state !== 'active' || this.t - s.activatedAt < p.cooldownMs || !s.last) continue;
      const m = s.last;
      if (m.fillRatio > p.fillRatioThreshold || m.avgPushLatencyNs > p.pushLatencyThresholdNs || m.avgFlushLatencyUs > p.flushLatencyThresholdUs) over++;
      if (m.fillRatio < p.underutilizedThreshold && m.eventRate === 0 && s.idleSince !== undefined && this.t - s.idleSince >= p.scaleDownDelayMs) under++;
    }
    const a = this.active;
    const half = Math.floor(a / 2);
    if (over > half && a < p.maxShards) return { kind: 'scaleUp', count: Math.min(Math.max(Math.floor(over / 2), 1), p.maxShards - a) };
    if (under > half && a > p.minShards) return { kind: 'scaleDown', count: Math.min(Math.max(Math.floor(under / 2), 1), a - p.minShards) };
    return { kind: 'none' };
  }

  /** Resolve an abstract id pick against the model: a live id in a given state, a removed
   *  id, a never-allocated one, or any of those. */
  pickId(pick: Pick): number {
    const inState = (st: State) => this.shards.filter((s) => s.state === st).map((s) => s.id);
    const any = [...this.shards.map((s) => s.id), ...this.gone, this.nextId, this.nextId + 7];
    const pool = pick.cat === 'gone' ? this.gone
      : pick.cat === 'unknown' ? [this.nextId, this.nextId + 7, NO_SHARD]
        : pick.cat === 'any' ? any : inState(pick.cat);
    const from = pool.length > 0 ? pool : any;
    return from[pick.n % from.length]!;
  }
}

type Pick = { cat: State | 'gone' | 'unknown' | 'any'; n: number };

// ---- running one step: the model's outcome against the real one -------------------------

type Outcome = { ok: true; value: unknown; boom: boolean } | { ok: false; error: Predicted };

function predict(fn: () => unknown): Outcome {
  try {
    const r = fn() as { value?: unknown; boom?: boolean } | unknown;
    if (r && typeof r === 'object' && 'boom' in (r as object)) {
      const o = r as { value: unknown; boom: boolean };
      return { ok: true, value: o.value, boom: o.boom };
    }
    return { ok: true, value: r, boom: false };
  } catch (e) {
    if (e instanceof Predicted) return { ok: false, error: e };
    throw e;
  }
}

async function actual(fn: () => unknown): Promise<{ threw: boolean; value?: unknown; error?: unknown }> {
  try {
    return { threw: false, value: await fn() };
  } catch (error) {
    return { threw: true, error };
  }
}

/** Compare a real outcome with the predicted one; `snap` must not change on a predicted error. */
function compare(step: string, want: Outcome, got: { threw: boolean; value?: unknown; error?: unknown }, before: unknown, after: () => unknown): void {
  const op = /"op":"(\w+)"/.exec(step)?.[1];
  const v = want.ok ? want.value : undefined;
  const summary = Array.isArray(v) ? (v.length === 0 ? '[]' : '[n]') : v && typeof v === 'object' ? String((v as { kind?: string }).kind) : String(v);
  tally(`${op} ${!want.ok ? want.error.kind : want.boom ? 'callback threw' : summary}`);
  if (!want.ok) {
    expect(got.threw, `${step}: expected ${want.error.kind}, got ${JSON.stringify(got.value)}`).toBe(true);
    const kind = want.error.kind;
    if (kind === 'RangeError' || kind === 'TypeError') {
      expect((got.error as Error).name, `${step}: ${(got.error as Error).message}`).toBe(kind);
    } else if (kind === 'BackpressureError') {
      expect(got.error, step).toBeInstanceOf(BackpressureError);
    } else {
      expect(got.error, `${step}: ${String(got.error)}`).toBeInstanceOf(ScalingError);
      expect((got.error as ScalingError).kind, `${step}: ${(got.error as Error).message}`).toBe(kind);
    }
    expect((got.error as Error).message.length, step).toBeGreaterThan(10);
    expect(after(), `${step}: a refused call changed the state`).toEqual(before);
    return;
  }
  if (want.boom) {
    expect(got.error, `${step}: expected the callback's error to propagate`).toBeInstanceOf(Boom);
    return;
  }
  if (got.threw) throw new Error(`${step}: unexpected ${String(got.error)}\n${(got.error as Error)?.stack ?? ''}`);
  if (want.value !== undefined) expect(got.value, step).toEqual(want.value);
}

// Hashes probed after every step: the edges, a few fixed ones, and out-of-range numbers
// (reduced with >>> 0).
const PROBES = [0, 1, 0x7fffffff, 0x80000000, 0xdeadbeef, U32, -1, 2 ** 32 + 5, 1.5, NaN, 0x12345678, 0x9abcdef0];

/** The mapper agrees with the model: table, states, selection, callbacks. */
function checkMapper(mapper: ShardMapper, model: CoreModel, collectors: Map<number, ShardMetricsCollector>): void {
  expect(mapper.activeShardCount()).toBe(model.active);
  expect(mapper.activeShardIds()).toEqual(model.activeIds());
  expect(mapper.activeShardIds().length).toBe(mapper.activeShardCount());
  expect(mapper.allShardIds()).toEqual(model.allIds());
  expect(mapper.totalShardCount()).toBe(model.shards.length);
  expect(mapper.activeShardCount()).toBeLessThanOrEqual(mapper.policy().maxShards);
  for (const s of model.shards) {
    expect(mapper.shardState(s.id), `shard ${s.id}`).toBe(s.state);
    const c = mapper.metricsCollector(s.id);
    expect(c, `collector of ${s.id}`).toBeDefined();
    if (!collectors.has(s.id)) collectors.set(s.id, c!);
    expect(c).toBe(collectors.get(s.id)); // one collector per shard for its whole life
    expect(c!.isDraining()).toBe(s.draining);
    expect(c!.pushesSinceDrainStart()).toBe(s.drainPushes);
    expect(c!.bufferLen()).toBe(s.bufferLen);
  }
  for (const id of model.gone.slice(-4)) {
    expect(mapper.shardState(id)).toBeUndefined();
    expect(mapper.metricsCollector(id)).toBeUndefined();
  }
  // ids unique and increasing in table order
  const ids = model.shards.map((s) => s.id);
  for (let i = 1; i < ids.length; i++) expect(ids[i]!).toBeGreaterThan(ids[i - 1]!);
  // selection: exactly the model's pick, always an Active id or NO_SHARD when none
  const active = new Set(model.activeIds());
  const want = PROBES.map((h) => model.select(h));
  const got = PROBES.map((h) => mapper.selectShard(h));
  expect(got).toEqual(want);
  for (const id of got) expect(id === NO_SHARD ? active.size === 0 : active.has(id), `selectShard answered ${id}`).toBe(true);
  expect([...mapper.selectShards(Uint32Array.from(PROBES.map((h) => h >>> 0)))]).toEqual(want);
  expect(mapper.selectShardBig(0n)).toBe(want[0]);
  expect(mapper.selectShardBig(2n ** 64n - 1n)).toBe(model.select(U32));
}

function mapperSnapshot(mapper: ShardMapper): unknown {
  return {
    active: mapper.activeShardIds(), all: mapper.allShardIds(), total: mapper.totalShardCount(),
    states: mapper.allShardIds().map((id) => mapper.shardState(id)),
    select: PROBES.map((h) => mapper.selectShard(h)),
  };
}

// ---- arbitraries --------------------------------------------------------------------------

const countArb = fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 0, max: 3 }) }, { weight: 1, arbitrary: fc.constantFrom(5, 9) });
const pickArb = fc.record({ cat: fc.constantFrom('provisioning', 'active', 'draining', 'stopped', 'gone', 'unknown', 'any'), n: fc.nat(1 << 16) }) as fc.Arbitrary<Pick>;
const sampleArb = fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 300 }) }, { weight: 1, arbitrary: fc.constantFrom(1.5, 2 ** 32 - 1, 2 ** 32 + 7) });
const advanceArb = fc.record({
  base: fc.constantFrom('zero', 'one', 'cooldown', 'grace', 'delay', 'random'),
  plus: fc.integer({ min: -1, max: 1 }),
  random: fc.nat(3000),
});
type Advance = { base: string; plus: number; random: number };
function resolveAdvance(a: Advance, p: ScalingPolicy, grace: number): number {
  const base = { zero: 0, one: 1, cooldown: p.cooldownMs, grace, delay: p.scaleDownDelayMs, random: a.random }[a.base]!;
  return Math.max(0, base + a.plus);
}

const policyArb = fc.record({
  minShards: fc.integer({ min: 1, max: 3 }),
  extra: fc.integer({ min: 0, max: 4 }),
  cooldownMs: fc.constantFrom(1, 50, 1000),
  scaleDownDelayMs: fc.constantFrom(1, 100, 5000),
  fillRatioThreshold: fc.constantFrom(0.5, 0.7, 1),
  pushLatencyThresholdNs: fc.constantFrom(0, 5, 100),
  flushLatencyThresholdUs: fc.constantFrom(0, 10, 1000),
  underutilizedThreshold: fc.constantFrom(0, 0.1, 1),
  autoScale: fc.oneof({ weight: 5, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
}).map(({ minShards, extra, ...rest }) => ({ ...rest, minShards, maxShards: minShards + extra, metricsWindowMs: 100 }) as ScalingPolicy);

const mapperOpArb = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('scaleUp' as const), count: countArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('scaleUpProvisioning' as const), count: countArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('scaleUpProvisioningForce' as const), count: countArb }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('activate' as const), pick: pickArb }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('drainSpecific' as const), pick: pickArb }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('scaleDown' as const), count: countArb }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('finalizeDraining' as const) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('removeSpecificStoppedShard' as const), pick: pickArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('removeStoppedShards' as const) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('collectMetrics' as const) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('evaluateScaling' as const) }) },
  { weight: 5, arbitrary: fc.record({ op: fc.constant('advance' as const), by: advanceArb }) },
  {
    weight: 5,
    arbitrary: fc.record({
      op: fc.constant('record' as const), pick: pickArb, retired: fc.boolean(),
      what: fc.constantFrom('bufferLen', 'event', 'latency', 'push', 'flush', 'drainOn', 'drainOff'), value: sampleArb,
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('recordAll' as const), what: fc.constantFrom('bufferLen', 'latency', 'flush'), value: sampleArb }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('collectAndEvaluate' as const) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('activateAll' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('throwingCallbacks' as const), on: fc.boolean() }) },
);
type MapperOp = typeof mapperOpArb extends fc.Arbitrary<infer T> ? T : never;

// ---- the mapper property ------------------------------------------------------------------

async function runMapper(policy: ScalingPolicy, initial: number, capacity: number, grace: number, ops: MapperOp[]): Promise<void> {
  const clock = { t: 0 };
  const mapper = await ShardMapper.create(initial, capacity, policy, { clock: () => clock.t, drainGraceMs: grace });
  const p = mapper.policy();
  expect(p.maxShards).toBe(Math.max(policy.maxShards, initial));
  const model = new CoreModel({ ...p }, capacity, grace, initial);
  const created: number[] = [];
  const removed: number[] = [];
  const wrongState: string[] = [];
  mapper.setOnShardCreated((id) => {
    created.push(id);
    if (mapper.shardState(id) !== 'active') wrongState.push(`onShardCreated(${id}) saw ${mapper.shardState(id)}`);
    if (model.throwing) throw new Boom(`created ${id}`);
  });
  mapper.setOnShardRemoved((id) => {
    removed.push(id);
    if (mapper.shardState(id) !== 'stopped') wrongState.push(`onShardRemoved(${id}) saw ${mapper.shardState(id)}`);
    if (model.throwing) throw new Boom(`removed ${id}`);
  });
  const collectors = new Map<number, ShardMetricsCollector>();
  const retired: ShardMetricsCollector[] = [];
  let highestId = initial - 1;
  const log: string[] = [];

  checkMapper(mapper, model, collectors);
  for (const [i, op] of ops.entries()) {
    const step = `step ${i} ${JSON.stringify(op)} (t=${model.t}, last scaling ${model.lastScaling})`;
    log.push(step);
    const before = mapperSnapshot(mapper);
    const lastBefore = model.lastScaling;
    const activeBefore = model.active;
    let want: Outcome;
    let got: { threw: boolean; value?: unknown; error?: unknown };
    switch (op.op) {
      case 'scaleUp':
      case 'scaleUpProvisioning':
      case 'scaleUpProvisioningForce': {
        const honour = op.op !== 'scaleUpProvisioningForce';
        want = predict(() => {
          if (op.count === 0) return [];
          model.checkUp(op.count, honour);
          const ids = model.alloc(op.count, op.op === 'scaleUp' ? 'active' : 'provisioning', op.op === 'scaleUp' ? model.t : 0);
          model.lastScaling = model.t;
          return op.op === 'scaleUp' ? { value: ids, boom: model.fire(model.created, ids) } : ids;
        });
        got = await actual(() => mapper[op.op](op.count));
        if (want.ok && op.count > 0) {
          // cooldown never bypassed (except by the forced variant); ids monotonic
          if (honour) expect(model.t - lastBefore, step).toBeGreaterThanOrEqual(p.cooldownMs);
          const fresh = model.shards.slice(-op.count).map((s) => s.id);
          expect(fresh[0], step).toBe(highestId + 1);
          highestId = fresh[fresh.length - 1]!;
        }
        break;
      }
      case 'activate': {
        const id = model.pickId(op.pick);
        want = predict(() => model.activate(id));
        got = await actual(() => mapper.activate(id));
        break;
      }
      case 'drainSpecific': {
        const id = model.pickId(op.pick);
        want = predict(() => model.drainSpecific(id));
        got = await actual(() => mapper.drainSpecific(id));
        if (want.ok) expect(model.active, `${step}: drained below minShards`).toBeGreaterThanOrEqual(Math.min(p.minShards, activeBefore));
        break;
      }
      case 'scaleDown':
        want = predict(() => model.scaleDown(op.count));
        got = await actual(() => mapper.scaleDown(op.count));
        if (want.ok && op.count > 0) {
          expect(model.active, `${step}: scaled below minShards`).toBeGreaterThanOrEqual(p.minShards);
          expect(model.t - lastBefore, step).toBeGreaterThanOrEqual(p.cooldownMs);
        }
        break;
      case 'finalizeDraining':
        want = predict(() => {
          const stop = model.finalizable();
          for (const s of stop) s.state = 'stopped';
          const ids = stop.map((s) => s.id);
          return { value: ids, boom: model.fire(model.removed, ids) };
        });
        got = await actual(() => mapper.finalizeDraining());
        break;
      case 'removeSpecificStoppedShard': {
        const id = model.pickId(op.pick);
        want = predict(() => {
          const s = model.byId(id);
          if (s?.state !== 'stopped') return false;
          model.shards.splice(model.shards.indexOf(s), 1);
          model.gone.push(id);
          return true;
        });
        const c = mapper.metricsCollector(id);
        got = await actual(() => mapper.removeSpecificStoppedShard(id));
        if (got.value === true) { retired.push(c!); collectors.delete(id); }
        break;
      }
      case 'removeStoppedShards': {
        const stopped = model.shards.filter((s) => s.state === 'stopped');
        const cs = stopped.map((s) => mapper.metricsCollector(s.id)!);
        want = predict(() => {
          model.shards = model.shards.filter((s) => s.state !== 'stopped');
          model.gone.push(...stopped.map((s) => s.id));
          return stopped.map((s) => s.id);
        });
        got = await actual(() => mapper.removeStoppedShards());
        retired.push(...cs);
        for (const s of stopped) collectors.delete(s.id);
        break;
      }
      case 'collectMetrics':
        want = predict(() => model.collect());
        got = await actual(() => mapper.collectMetrics());
        break;
      case 'evaluateScaling':
        want = predict(() => model.evaluate());
        got = await actual(() => mapper.evaluateScaling());
        // warm-up: no decision of either kind within cooldownMs of the last scaling action
        if (model.t - model.lastScaling < p.cooldownMs) expect(got.value, step).toEqual({ kind: 'none' });
        break;
      case 'advance':
        want = predict(() => { model.t += resolveAdvance(op.by, p, grace); });
        got = await actual(() => { clock.t = model.t; });
        break;
      case 'record': {
        const useRetired = op.retired && retired.length > 0;
        const target = useRetired ? undefined : model.shards[op.pick.n % Math.max(1, model.shards.length)];
        const c = useRetired ? retired[op.pick.n % retired.length]! : target ? mapper.metricsCollector(target.id)! : undefined;
        want = predict(() => {
          if (!target) return; // a retired collector ignores everything
          switch (op.what) {
            case 'bufferLen': target.bufferLen = clampSample(op.value); break;
            case 'event': target.events++; target.drainPushes++; break;
            case 'latency': addPair(target, 'lat', op.value); break;
            case 'push': target.events++; target.drainPushes++; addPair(target, 'lat', op.value); break;
            case 'flush': addPair(target, 'fl', op.value); break;
            case 'drainOn': target.drainPushes = 0; target.draining = true; break;
            case 'drainOff': target.draining = false; break;
          }
        });
        got = await actual(() => {
          if (!c) return;
          switch (op.what) {
            case 'bufferLen': c.recordBufferLen(op.value); break;
            case 'event': c.recordEventOnly(); break;
            case 'latency': c.recordLatencySample(op.value); break;
            case 'push': c.recordPush(op.value); break;
            case 'flush': c.recordFlush(op.value); break;
            case 'drainOn': c.setDraining(true); break;
            case 'drainOff': c.setDraining(false); break;
          }
        });
        if (useRetired) {
          expect(c!.isDraining()).toBe(false);
          expect(c!.bufferLen()).toBe(0);
        }
        break;
      }
      case 'activateAll': {
        // every Provisioning shard, one activate() each (late activation: the warm-up case)
        const ids = model.shards.filter((s) => s.state === 'provisioning').map((s) => s.id).slice(0, Math.max(0, p.maxShards - model.active));
        want = predict(() => {
          let boom = false;
          const out: boolean[] = [];
          for (const id of ids) {
            const r = model.activate(id);
            out.push(r.value);
            if (r.boom) { boom = true; break; }
          }
          return { value: out, boom };
        });
        got = await actual(() => ids.map((id) => mapper.activate(id)));
        break;
      }
      case 'recordAll':
        want = predict(() => {
          for (const s of model.shards) {
            if (op.what === 'bufferLen') s.bufferLen = clampSample(op.value);
            else addPair(s, op.what === 'latency' ? 'lat' : 'fl', op.value);
          }
        });
        got = await actual(() => {
          for (const id of model.shards.map((s) => s.id)) {
            const c = mapper.metricsCollector(id)!;
            if (op.what === 'bufferLen') c.recordBufferLen(op.value);
            else if (op.what === 'latency') c.recordLatencySample(op.value);
            else c.recordFlush(op.value);
          }
        });
        break;
      case 'collectAndEvaluate': {
        const coolingDown = model.inCooldown();
        want = predict(() => { model.collect(); return model.evaluate(); });
        got = await actual(() => { mapper.collectMetrics(); return mapper.evaluateScaling(); });
        if (coolingDown) expect(got.value, step).toEqual({ kind: 'none' });
        break;
      }
      case 'throwingCallbacks':
        want = predict(() => { model.throwing = op.on; });
        got = await actual(() => undefined);
        break;
    }
    try {
      compare(step, want, got, before, () => mapperSnapshot(mapper));
      expect(model.lastScaling, `${step}: the model itself went back in time`).toBeGreaterThanOrEqual(lastBefore);
      expect(created, `${step}: onShardCreated calls`).toEqual(model.created);
      expect(removed, `${step}: onShardRemoved calls`).toEqual(model.removed);
      expect(wrongState).toEqual([]);
      checkMapper(mapper, model, collectors);
    } catch (error) {
      (error as Error).message += `\n  after:\n    ${log.slice(-12).join('\n    ')}`;
      throw error;
    }
  }
  // every transition fired its callback once: no id twice in either log
  expect(new Set(created).size).toBe(created.length);
  expect(new Set(removed).size).toBe(removed.length);
}

// ---- the manager model ----------------------------------------------------------------------

interface RShard extends MShard {
  ring: Uint8Array[];
  pushed: number; delivered: number; newest: number; sampled: number; refused: number; evicted: number;
  sampleCounter: number;
}

const encoder = new TextEncoder();

class ManagerModel extends CoreModel {
  declare shards: RShard[];
  unrouted = 0;
  retiredTotals = { pushed: 0, delivered: 0, newest: 0, sampled: 0, refused: 0, evicted: 0 };
  events: string[] = []; // expected lifecycle events, `${type}:${id}`

  constructor(p: ScalingPolicy, capacity: number, grace: number, initial: number,
    readonly bp: BackpressureMode, readonly maxPayload: number, readonly maxSlots: number) {
    super(p, capacity, grace, initial);
    for (const s of this.shards) this.events.push(`shardProvisioned:${s.id}`);
    for (const s of this.shards) this.events.push(`shardActivated:${s.id}`);
  }

  override alloc(count: number, state: State, activatedAt: number): number[] {
    const ids = super.alloc(count, state, activatedAt);
    for (const s of this.shards.slice(-count)) {
      Object.assign(s, { ring: [], pushed: 0, delivered: 0, newest: 0, sampled: 0, refused: 0, evicted: 0, sampleCounter: 0 });
    }
    if (this.events) for (const id of ids) this.events.push(`shardProvisioned:${id}`);
    return ids;
  }

  override byId(id: number): RShard | undefined { return this.shards.find((s) => s.id === id); }
  get slotsFree(): number { return this.maxSlots - this.shards.length; }

  /** Everything after the payload checks of one event; returns true when accepted. */
  route(hash: number, bytes: Uint8Array): boolean | 'refused' {
    const id = this.select(hash);
    if (id === NO_SHARD) { this.unrouted++; return false; }
    const s = this.byId(id) as RShard;
    const cap = this.capacity;
    if (this.bp.kind === 'sample' && s.ring.length > this.p.fillRatioThreshold * cap) {
      if (s.sampleCounter++ % this.bp.rate !== 0) { s.sampled++; return false; }
    }
    let retries = 0;
    if (s.ring.length === cap) {
      if (this.bp.kind === 'dropOldest') {
        s.ring.shift();
        s.evicted++;
        retries++;
      } else if (this.bp.kind === 'failProducer') {
        s.refused++;
        this.failedShard = id;
        return 'refused';
      } else {
        s.newest++;
        return false;
      }
    }
    s.ring.push(bytes);
    s.pushed++;
    const nth = s.events;
    s.events++;
    s.drainPushes++;
    if ((nth & 63) === 0) addPair(s, 'lat', retries * 50);
    s.bufferLen = s.ring.length;
    return true;
  }
  failedShard = -1;

  payloadBytes(payload: unknown): Uint8Array {
    if (payload instanceof Uint8Array) {
      if (payload.length > this.maxPayload) throw new Predicted('RangeError');
      return payload.slice();
    }
    if (typeof payload === 'string') {
      const b = encoder.encode(payload);
      if (b.length > this.maxPayload) throw new Predicted('RangeError');
      return b;
    }
    throw new Predicted('TypeError');
  }

  hashOf(key: number | string | Uint8Array): number {
    return typeof key === 'number' ? key >>> 0 : hashKey(key);
  }

  activateShard(id: number): boolean {
    const r = this.activate(id);
    if (r.value) this.events.push(`shardActivated:${id}`);
    return r.value;
  }

  drainShards(list: RShard[]): void {
    this.drain(list);
    for (const s of list) this.events.push(`shardDraining:${s.id}`);
  }

  override drainSpecific(id: number): void {
    const s = this.byId(id);
    const wasActive = s?.state === 'active';
    super.drainSpecific(id);
    if (wasActive) this.events.push(`shardDraining:${id}`);
  }

  stop(list: RShard[]): void {
    for (const s of list) {
      s.state = 'stopped';
      this.events.push(`shardStopped:${s.id}`);
    }
    this.fire(this.removed, list.map((s) => s.id));
  }

  removeShardModel(s: RShard): void {
    this.shards.splice(this.shards.indexOf(s), 1);
    this.gone.push(s.id);
    for (const k of Object.keys(this.retiredTotals) as (keyof ManagerModel['retiredTotals'])[]) this.retiredTotals[k] += s[k];
    this.events.push(`shardRemoved:${s.id}`);
  }

  /** tick() in the model: collect, evaluate, act, then settle draining shards. */
  tick(): { decision: Decision; error?: Predicted } {
    this.collect();
    const decision = this.evaluate();
    let error: Predicted | undefined;
    if (decision.kind !== 'none') this.events.push(`scalingDecision:${decision.kind}${decision.count}`);
    if (decision.kind === 'scaleUp') {
      try {
        this.checkUp(decision.count, true, this.slotsFree);
        const ids = this.alloc(decision.count, 'provisioning', 0);
        this.lastScaling = this.t;
        for (const id of ids) this.activateShard(id);
      } catch (e) {
        if (!(e instanceof Predicted)) throw e;
        error = e;
      }
    } else if (decision.kind === 'scaleDown') {
      const ids = this.scaleDown(decision.count);
      for (const id of ids) this.events.push(`shardDraining:${id}`);
    }
    this.stop(this.finalizable() as RShard[]);
    for (const s of [...this.shards]) if (s.state === 'stopped' && s.ring.length === 0) this.removeShardModel(s);
    return { decision, error };
  }

  stats() {
    const t = { ...this.retiredTotals };
    for (const s of this.shards) for (const k of Object.keys(t) as (keyof typeof t)[]) t[k] += s[k];
    return {
      pushed: t.pushed, delivered: t.delivered, dropped: t.newest + t.sampled + t.evicted, unrouted: this.unrouted,
      drops: { newest: t.newest, oldest: t.evicted, sampled: t.sampled, refused: t.refused, moving: 0 },
      inFlight: t.pushed - t.delivered - t.evicted,
      skipped: 0, // one thread, nobody dies mid-batch: no reservation is ever left unwritten
      shards: this.shards.map((s) => ({
        id: s.id, state: s.state, length: s.ring.length, pushed: s.pushed, delivered: s.delivered,
        dropped: s.newest + s.sampled + s.evicted, movingOut: 0, movingIn: 0,
      })),
      // leastLoaded routing: no move is fenced (key order is test/key-order.model.test.ts's)
      keyOrder: { enabled: false, waitingSlots: 0, oldestWaitMs: 0, longestWaitMs: 0, movedSlots: 0, refused: 0 },
    };
  }
}

const keyArb = fc.oneof(
  { weight: 4, arbitrary: fc.nat({ max: U32 }) },
  { weight: 1, arbitrary: fc.constantFrom(-1, 2 ** 32 + 3, 0.5, NaN) },
  { weight: 2, arbitrary: fc.string({ maxLength: 6 }) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 6 }) },
);
const payloadArb = fc.oneof(
  { weight: 8, arbitrary: fc.record({ kind: fc.constantFrom('bytes', 'string', 'utf8'), len: fc.integer({ min: 1, max: 70 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constantFrom('empty', 'number', 'null'), len: fc.constant(0) }) }, // empty: an event; the others refused
);
type PayloadSpec = { kind: string; len: number; fit?: boolean };

/** How often the manager model reached the states worth reaching (checked after the runs). */
const reached = { removalWithEvents: 0, batchOverChunks: 0, batchSplitIntoRuns: 0, ringWrapped: 0 };
let payloadCounter = 0;
/** A payload of the requested kind; lengths are folded into [1, max + 2] so "too big" happens. */
function makePayload(spec: PayloadSpec, max: number): unknown {
  const n = ((spec.len - 1) % (spec.fit ? max : max + 2)) + 1; // fit: never over maxPayloadBytes
  const c = payloadCounter++;
  switch (spec.kind) {
    case 'bytes': return Uint8Array.from({ length: n }, (_, i) => (c * 31 + i) & 0xff);
    case 'string': return Array.from({ length: n }, (_, i) => String.fromCharCode(97 + ((c + i) % 26))).join('');
    case 'utf8': return 'é'.repeat(Math.max(1, n >> 1)); // 2 bytes per character
    case 'empty': return c % 2 === 0 ? new Uint8Array(0) : '';
    case 'number': return 42;
    default: return null;
  }
}

// Keys that route the same way for runs of events (a few distinct values), and payloads
// that are all valid, so a large batch is not refused as a whole.
const goodKeyArb = fc.oneof({ weight: 3, arbitrary: fc.constantFrom(0, 1 << 30, 2 ** 31, 2 ** 32 - 1) }, { weight: 1, arbitrary: fc.nat({ max: U32 }) });
const goodPayloadArb = fc.record({ kind: fc.constantFrom('bytes', 'string'), len: fc.integer({ min: 1, max: 70 }), fit: fc.constant(true) });
const managerOpArb = fc.oneof(
  { weight: 14, arbitrary: fc.record({ op: fc.constant('push' as const), key: keyArb, payload: payloadArb }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('pushBatch' as const), items: fc.array(fc.record({ key: keyArb, payload: payloadArb }), { maxLength: 6 }) }) },
  // Batches large enough to span several staging chunks (16 KiB) and to split into runs.
  { weight: 1, arbitrary: fc.record({ op: fc.constant('pushBatch' as const), items: fc.array(fc.record({ key: goodKeyArb, payload: goodPayloadArb }), { minLength: 150, maxLength: 500 }) }) },
  { weight: 6, arbitrary: fc.record({ op: fc.constant('poll' as const), pick: pickArb, max: fc.option(fc.integer({ min: 1, max: 10 }), { nil: undefined }) }) },
  { weight: 7, arbitrary: fc.record({ op: fc.constant('tick' as const) }) },
  { weight: 7, arbitrary: fc.record({ op: fc.constant('advance' as const), by: advanceArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('addShard' as const) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('manualScaleUp' as const), n: countArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('drainShard' as const), pick: pickArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('removeShard' as const), pick: pickArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('provision' as const), count: countArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('activate' as const), pick: pickArb }) },
);
type ManagerOp = typeof managerOpArb extends fc.Arbitrary<infer T> ? T : never;

function managerSnapshot(m: ShardManager): unknown {
  return { mapper: mapperSnapshot(m.mapper), stats: m.stats(), lengths: m.mapper.allShardIds().map((id) => m.ringLength(id)) };
}

const timeout = (ms: number, what: string) => new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms).unref());

async function runManager(policy: ScalingPolicy, initial: number, requested: number, grace: number, bp: BackpressureMode, maxPayload: number, slack: number, ops: ManagerOp[]): Promise<void> {
  const clock = { t: 0 };
  const events: string[] = [];
  const maxShards = Math.max(policy.maxShards, initial);
  const maxSlots = Math.max(initial, 1, maxShards + slack);
  // This model follows the fillRatio of docs/CONTRACT.md §4 (records / capacity). Byte rings report the larger of
  // that and the byte fill, and test/byte-ring.property.test.ts models the bytes exactly; here
  // the payload area is twice the default, so the byte fill (held extents, plus at most one
  // padding shorter than a record) never passes the record fill and the weights are the model's.
  const capacity = requested; // a ring holds exactly the records asked for
  const m = await ShardManager.create({
    initialShards: initial, ringBufferCapacity: requested, policy, backpressure: bp, clock: () => clock.t,
    drainGraceMs: grace, maxPayloadBytes: maxPayload, maxSlots,
    ringBufferBytes: 2 * (capacity + 1) * Math.ceil(maxPayload / 8) * 8,
    routing: 'leastLoaded', // the model routes by docs/CONTRACT.md §5 (ShardManager's default is 'balanced')
    onEvent: (e: ManagerEvent) => {
      events.push(e.type === 'scalingDecision'
        ? `scalingDecision:${e.decision.kind}${'count' in e.decision ? e.decision.count : ''}`
        : `${e.type}:${'shardId' in e ? e.shardId : ''}`);
    },
  });
  const cap = m.ringCapacity;
  expect(cap).toBe(requested); // exactly as asked (the descriptors are its power of two, at least 2)
  const p = m.mapper.policy();
  const model = new ManagerModel({ ...p }, cap, grace, initial, bp, maxPayload, maxSlots);
  const created: number[] = [];
  const removed: number[] = [];
  m.mapper.setOnShardCreated((id) => created.push(id));
  m.mapper.setOnShardRemoved((id) => removed.push(id));
  const collectors = new Map<number, ShardMetricsCollector>();
  const log: string[] = [];

  const check = () => {
    checkMapper(m.mapper, model, collectors);
    const s = m.stats();
    if (s.shards.some((sh) => sh.pushed > 2 * cap)) reached.ringWrapped++;
    // Payload bytes held: each record's length rounded up to 8, plus at most one padding
    // (shorter than a record) where a payload met the end of the area. The byte ring's own
    // model (test/byte-ring.property.test.ts) predicts them exactly.
    for (const sh of model.shards) {
      const real = s.shards.find((x) => x.id === sh.id)!.bytes;
      const held = sh.ring.reduce((sum, r) => sum + Math.ceil(r.length / 8) * 8, 0);
      expect(real, `bytes of shard ${sh.id}`).toBeGreaterThanOrEqual(held);
      expect(real, `bytes of shard ${sh.id}`).toBeLessThanOrEqual(sh.ring.length === 0 ? 0 : held + m.maxPayloadBytes);
      expect(m.ringBytesUsed(sh.id)).toBe(real);
    }
    expect({ ...s, shards: s.shards.map(({ bytes: _, ...rest }) => rest) }).toEqual(model.stats());
    expect(s.pushed).toBe(s.delivered + s.inFlight + s.drops.oldest);
    for (const sh of model.shards) expect(m.ringLength(sh.id), `ringLength(${sh.id})`).toBe(sh.ring.length);
    expect(created).toEqual(model.created);
    expect(removed).toEqual(model.removed);
    expect(events).toEqual(model.events);
  };
  check();

  for (const [i, op] of ops.entries()) {
    const step = `step ${i} ${JSON.stringify(op)} (t=${model.t})`;
    log.push(step);
    const before = managerSnapshot(m);
    let want: Outcome;
    let got: { threw: boolean; value?: unknown; error?: unknown };
    switch (op.op) {
      case 'push': {
        const payload = makePayload(op.payload, maxPayload);
        want = predict(() => {
          const bytes = model.payloadBytes(payload);
          const r = model.route(model.hashOf(op.key), bytes);
          if (r === 'refused') throw new Predicted('BackpressureError');
          return r;
        });
        got = await actual(() => m.push(op.key, payload as string));
        if (!want.ok && want.error.kind === 'BackpressureError') {
          // A refusal writes nothing but is counted (and names the shard): not "unchanged".
          expect(got.error, step).toBeInstanceOf(BackpressureError);
          expect((got.error as BackpressureError).shardId, step).toBe(model.failedShard);
          want = { ok: true, value: undefined, boom: false };
          got = { threw: false };
        }
        break;
      }
      case 'pushBatch': {
        const payloads = op.items.map((it) => makePayload(it.payload, maxPayload));
        const keys = op.items.map((it) => it.key);
        // staged as [hash][len][bytes padded to 4] in a lane of at least 16 KiB
        const staged = payloads.reduce<number>((a, pl) => a + 8 + ((((pl as { length?: number })?.length ?? 0) * 2 + 3) & ~3), 0);
        if (staged > 16 * 1024) reached.batchOverChunks++;
        if (model.active >= 2 && new Set(keys.map((k) => (typeof k === 'number' ? k : -1))).size > 1 && payloads.length > 100) reached.batchSplitIntoRuns++;
        let refusedAt = -1;
        want = predict(() => {
          const bytes = payloads.map((pl) => model.payloadBytes(pl)); // all checked before any write
          let accepted = 0;
          for (let k = 0; k < bytes.length; k++) {
            const r = model.route(model.hashOf(keys[k]!), bytes[k]!);
            if (r === 'refused') { refusedAt = accepted; break; }
            if (r) accepted++;
          }
          return accepted;
        });
        got = await actual(() => m.pushBatch(keys, payloads as string[]));
        if (refusedAt >= 0) {
          expect(got.error, step).toBeInstanceOf(BackpressureError);
          expect((got.error as BackpressureError).accepted).toBe(refusedAt);
          expect((got.error as BackpressureError).shardId).toBe(model.failedShard);
          got = { threw: false, value: refusedAt };
          want = { ok: true, value: refusedAt, boom: false };
        }
        break;
      }
      case 'poll': {
        const id = model.pickId(op.pick);
        want = predict(() => {
          const s = model.byId(id);
          if (!s) throw new Predicted('InvalidPolicy');
          const n = Math.min(op.max ?? cap, s.ring.length);
          const out = s.ring.splice(0, n);
          s.delivered += n;
          if (n > 0) s.bufferLen = s.ring.length;
          return out;
        });
        got = await actual(() => (op.max === undefined ? m.poll(id) : m.poll(id, op.max)));
        break;
      }
      case 'tick': {
        let r: { decision: Decision; error?: Predicted } | undefined;
        const coolingDown = model.inCooldown();
        want = predict(() => { r = model.tick(); return r.decision; });
        got = await actual(() => m.tick());
        if (r?.error) {
          // the decision could not be carried out: the error surfaces, collection and
          // settling of draining shards still happened (modelled above)
          expect(got.error, step).toBeInstanceOf(ScalingError);
          expect((got.error as ScalingError).kind).toBe(r.error.kind);
          got = { threw: false, value: r.decision };
        }
        if (coolingDown && r && r.decision.kind !== 'none') {
          throw new Error(`${step}: decided inside the cooldown`);
        }
        break;
      }
      case 'advance':
        want = predict(() => { model.t += resolveAdvance(op.by, p, grace); });
        got = await actual(() => { clock.t = model.t; });
        break;
      case 'addShard':
      case 'manualScaleUp': {
        const n = op.op === 'addShard' ? 1 : op.n;
        want = predict(() => {
          if (n === 0) return [];
          model.checkUp(n, false, model.slotsFree);
          const ids = model.alloc(n, 'provisioning', 0);
          model.lastScaling = model.t;
          for (const id of ids) model.activateShard(id);
          return op.op === 'addShard' ? ids[0] : ids;
        });
        got = await actual(() => (op.op === 'addShard' ? m.addShard() : m.manualScaleUp(n)));
        break;
      }
      case 'drainShard': {
        const id = model.pickId(op.pick);
        want = predict(() => model.drainSpecific(id));
        got = await actual(() => m.drainShard(id));
        break;
      }
      case 'removeShard': {
        const id = model.pickId(op.pick);
        const s = model.byId(id);
        if (s && s.state !== 'provisioning' && s.ring.length > 0 && !(s.state === 'active' && model.active <= p.minShards)) {
          // Events still in the ring: the removal waits until a poll has taken them all.
          want = predict(() => {
            if (s.state === 'active') model.drainSpecific(id);
            const out = s.ring.splice(0);
            s.delivered += out.length;
            s.bufferLen = 0;
            model.stop([s]);
            model.removeShardModel(s);
            return out;
          });
          reached.removalWithEvents++;
          got = await actual(async () => {
            const removal = m.removeShard(id);
            const out = m.poll(id);
            await Promise.race([removal, timeout(2000, `removeShard(${id}) after poll`)]);
            return out;
          });
          break;
        }
        want = predict(() => {
          if (!s) throw new Predicted('InvalidPolicy');
          if (s.state === 'provisioning') { model.removeShardModel(s); return; }
          if (s.state === 'active') model.drainSpecific(id);
          if (s.state === 'draining') model.stop([s]);
          model.removeShardModel(s);
        });
        got = await actual(() => Promise.race([m.removeShard(id), timeout(2000, `removeShard(${id})`)]));
        break;
      }
      case 'provision':
        want = predict(() => {
          if (op.count === 0) return [];
          model.checkUp(op.count, true, model.slotsFree);
          const ids = model.alloc(op.count, 'provisioning', 0);
          model.lastScaling = model.t;
          return ids;
        });
        got = await actual(() => m.mapper.scaleUpProvisioning(op.count));
        break;
      case 'activate': {
        const id = model.pickId(op.pick);
        want = predict(() => model.activateShard(id));
        got = await actual(() => m.mapper.activate(id));
        break;
      }
    }
    try {
      compare(step, want, got, before, () => managerSnapshot(m));
      check();
    } catch (error) {
      (error as Error).message += `\n  after:\n    ${log.slice(-12).join('\n    ')}`;
      throw error;
    }
  }
  // Everything accepted can still be polled, in order, and then the books balance.
  for (const s of model.shards) expect(m.poll(s.id, 1 << 20)).toEqual(s.ring.splice(0));
  const final = m.stats();
  expect(final.inFlight).toBe(0);
  expect(final.pushed).toBe(final.delivered + final.drops.oldest);
  await m.close();
}

// ---- the properties ----------------------------------------------------------------------

describe('model-based: ShardMapper under random operation sequences', () => {
  it(`agrees with the model after every step (${NUM_RUNS} runs)`, async () => {
    await fc.assert(
      fc.asyncProperty(
        policyArb, fc.integer({ min: 0, max: 5 }), fc.constantFrom(0, 1, 10, 100), fc.constantFrom(0, 10, 100),
        fc.array(mapperOpArb, { minLength: 1, maxLength: 40, size: 'max' }),
        (policy, initial, capacity, grace, ops) => runMapper(policy, initial, capacity, grace, ops),
      ),
      runParams(),
    );
  }, 120_000);
});

describe('ring capacity', () => {
  it('a 1-record ring holds one record: the second push is refused, never written over the first', async () => {
    // Regression: with one descriptor the published mark of record i (i + 1) equals the free
    // mark of record i + 1, so the second push took the slot of an unconsumed record, the
    // ring reported length 2, and poll never returned anything again. A ring of 1 has two
    // descriptors and a limit of one record.
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 1, backpressure: { kind: 'dropNewest' } });
    expect(m.ringCapacity).toBe(1);
    expect([m.push(0, 'a'), m.push(0, 'b'), m.push(0, 'c')]).toEqual([true, false, false]);
    expect(m.ringLength(0)).toBe(1);
    expect(m.poll(0).map((r) => new TextDecoder().decode(r))).toEqual(['a']);
    expect(m.stats()).toMatchObject({ pushed: 1, delivered: 1, inFlight: 0, drops: { newest: 2 } });
    expect(m.push(0, 'd')).toBe(true); // room again once it was taken
    expect(m.poll(0).map((r) => new TextDecoder().decode(r))).toEqual(['d']);
  });

  for (const [capacity, kind] of [[10, 'failProducer'], [100, 'dropNewest'], [3, 'dropOldest']] as const) {
    it(`a ring of ${capacity} (not a power of two) holds exactly ${capacity} records (${kind}), by push and by pushBatch, and its fill divides by ${capacity}`, async () => {
      for (const batch of [false, true]) {
        const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: capacity, backpressure: { kind } });
        expect(m.ringCapacity).toBe(capacity);
        const payloads = Array.from({ length: capacity + 5 }, (_, i) => `e${i}`);
        let accepted = 0;
        if (batch) {
          try { accepted = m.pushBatch(payloads.map(() => 7), payloads); } catch (e) { accepted = (e as BackpressureError).accepted; }
        } else {
          for (const p of payloads) {
            try { if (m.push(7, p)) accepted++; } catch (e) { expect(e).toBeInstanceOf(BackpressureError); break; }
          }
        }
        expect(m.ringLength(0)).toBe(capacity);
        const want = kind === 'dropOldest' ? payloads.slice(payloads.length - capacity) : payloads.slice(0, capacity);
        expect(accepted).toBe(kind === 'dropOldest' ? payloads.length : capacity);
        expect(m.mapper.collectMetrics()[0]!.fillRatio).toBe(1);
        expect(m.poll(0).map((r) => new TextDecoder().decode(r))).toEqual(want);
        await m.close();
      }
    });
  }
});

describe('model-based: ShardManager (poll consumers, injected clock) under random operation sequences', () => {
  it(`agrees with the model after every step (${NUM_RUNS} runs)`, async () => {
    await fc.assert(
      fc.asyncProperty(
        // capacities from 1 to 512 (most not powers of two), and enough operations (batches of hundreds)
        // for ring indexes to wrap around the ring many times
        policyArb, fc.integer({ min: 0, max: 4 }), fc.constantFrom(1, 3, 4, 8, 8, 64, 512), fc.constantFrom(0, 10, 100), backpressureArb,
        fc.constantFrom(4, 8, 24, 70), fc.constantFrom(0, 0, 1, 2, 6),
        fc.array(managerOpArb, { minLength: 1, maxLength: 80, size: 'max' }),
        (policy, initial, capacity, grace, bp, maxPayload, slack, ops) => runManager(policy, initial, capacity, grace, bp, maxPayload, slack, ops),
      ),
      runParams(),
    );
    // The runs went where the bugs would be: removals that wait for a poll, batches over
    // several staging chunks and over several shards (runs), rings wrapped around.
    expect(reached.removalWithEvents).toBeGreaterThan(20);
    expect(reached.batchOverChunks).toBeGreaterThan(20);
    expect(reached.batchSplitIntoRuns).toBeGreaterThan(20);
    expect(reached.ringWrapped).toBeGreaterThan(20);
  }, 120_000);
});
