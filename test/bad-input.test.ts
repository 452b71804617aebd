// The bad-input catalogue (docs/bad-input.md, generated from it): every policy field, every count and id
// argument of ShardMapper and ShardManager, unknown ids, payloads, hashes, and calls after
// close(). Each bad input gets its own test: a clear error naming the argument, and the
// object's state (ids, states, selection, stats, ring lengths, memory) unchanged.
//
// docs/bad-input.md is written from the cases below (`npm run docs:bad-input`); the last test
// fails when the committed file differs.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  ManagerClosedError, ProducerDetachedError, ScalingError, ScalingPolicy, ShardManager, ShardMapper, ShardMetricsCollector, ShardProducer, hashKey,
} from 'shard-mapper';
import { badInputDoc } from './helpers/bad-input-doc.js';

// ---- fixtures and snapshots --------------------------------------------------------------

const PROBES = [0, 0x40000000, 0x80000000, 0xc0000000, 0xffffffff];

/** A mapper with a shard in every state: 0, 1 Active; 2 Stopped; 3 Draining; 4 Provisioning. */
async function mapperFixture() {
  const clock = { t: 0 };
  const mapper = await ShardMapper.create(4, 16, { minShards: 1, maxShards: 6, cooldownMs: 1000 }, { clock: () => clock.t });
  mapper.drainSpecific(2);
  clock.t = 200;
  expect(mapper.finalizeDraining()).toEqual([2]);
  mapper.drainSpecific(3);
  mapper.scaleUpProvisioningForce(1);
  clock.t = 300;
  return { mapper, clock };
}

function mapperSnapshot(mapper: ShardMapper) {
  const ids = [0, 1, 2, 3, 4, 5, 6];
  return {
    active: mapper.activeShardIds(), all: mapper.allShardIds(), total: mapper.totalShardCount(), count: mapper.activeShardCount(),
    states: ids.map((id) => mapper.shardState(id)),
    collectors: ids.map((id) => {
      const c = mapper.metricsCollector(id);
      return c && [c.bufferLen(), c.pushesSinceDrainStart(), c.isDraining()];
    }),
    selection: PROBES.map((h) => mapper.selectShard(h)),
    policy: mapper.policy(),
  };
}

/** A manager with events in its rings and a shard in every live state:
 *  0, 1 Active; 2 Draining (with events); 3 Provisioning. */
async function managerFixture() {
  const clock = { t: 0 };
  const manager = await ShardManager.create({
    initialShards: 3, ringBufferCapacity: 8, maxPayloadBytes: 16, clock: () => clock.t,
    policy: { minShards: 1, maxShards: 5, cooldownMs: 1000 },
  });
  for (let i = 0; i < 12; i++) manager.push(i * 0x15555555, `event ${i}`);
  await manager.drainShard(2);
  manager.mapper.scaleUpProvisioningForce(1);
  clock.t = 50;
  return { manager, mapper: manager.mapper, clock };
}

function managerSnapshot(manager: ShardManager) {
  return {
    mapper: mapperSnapshot(manager.mapper),
    stats: manager.stats(),
    lengths: manager.mapper.allShardIds().map((id) => manager.ringLength(id)),
    memory: manager.memoryBytes,
  };
}

/** A closed manager (poll consumers) that still holds 2 events in its rings. */
async function closedFixture() {
  const manager = await ShardManager.create({ initialShards: 2, ringBufferCapacity: 8, maxPayloadBytes: 16, policy: { maxShards: 4 } });
  const producer = await ShardProducer.attach(manager.producerHandle());
  manager.push(1, 'a');
  manager.push(0xffffffff, 'b');
  await manager.close();
  return { manager, mapper: manager.mapper, producer };
}

// ---- the catalogue -------------------------------------------------------------------------

type Fixture = Awaited<ReturnType<typeof managerFixture>> | Awaited<ReturnType<typeof mapperFixture>> | Awaited<ReturnType<typeof closedFixture>>;
interface Expected {
  /** Error class name (a ScalingError also has `kind`). */
  error: 'ScalingError' | 'TypeError' | 'RangeError' | 'ManagerClosedError' | 'ProducerDetachedError' | 'Error';
  kind?: ScalingError['kind'];
  /** What the message must say: the argument's name (and the call). */
  message: RegExp;
}
interface Case {
  call: string;
  inputs: [label: string, value: unknown][];
  fixture: 'mapper' | 'manager' | 'closed' | 'none';
  run: (fx: any, value: any) => unknown; // eslint-disable-line @typescript-eslint/no-explicit-any
  expect: Expected;
  /** Shown in the docs/bad-input.md table. */
  excerpt: string;
}

const S = (kind: ScalingError['kind'], message: RegExp): Expected => ({ error: 'ScalingError', kind, message });
const T = (message: RegExp): Expected => ({ error: 'TypeError', message });
const R = (message: RegExp): Expected => ({ error: 'RangeError', message });
const CLOSED = (method: string): Expected => ({ error: 'ManagerClosedError', message: new RegExp(`${method}: the manager is closed`) });

const COUNTS: [string, unknown][] = [['NaN', NaN], ['Infinity', Infinity], ['-Infinity', -Infinity], ['-1', -1], ['1.5', 1.5], ['65536', 65536], ['2^32', 2 ** 32], ['"1"', '1'], ['null', null], ['undefined', undefined], ['true', true], ['1n', 1n]];
const IDS_WRONG: [string, unknown][] = [['NaN', NaN], ['Infinity', Infinity], ['-Infinity', -Infinity], ['1.5', 1.5], ['"0"', '0'], ['null', null], ['undefined', undefined], ['{}', {}], ['0n', 0n]];
const IDS_UNKNOWN: [string, unknown][] = [['-1', -1], ['99', 99], ['NO_SHARD (65535)', 0xffff], ['2^32', 2 ** 32]];
const NOT_HASH: [string, unknown][] = [['"1"', '1'], ['null', null], ['undefined', undefined], ['1n', 1n], ['{}', {}], ['true', true]];

const CASES: Case[] = [];
const add = (c: Case) => CASES.push(c);

// ShardMapper: counts
for (const method of ['scaleUp', 'scaleUpProvisioning', 'scaleUpProvisioningForce', 'scaleDown'] as const) {
  add({ call: `mapper.${method}(count)`, inputs: COUNTS, fixture: 'mapper', run: ({ mapper }, v) => mapper[method](v),
    expect: S('InvalidPolicy', /count must be an integer in \[0, 65535\], got /), excerpt: 'count must be an integer in [0, 65535], got NaN' });
}
// ShardMapper: ids
for (const method of ['activate', 'drainSpecific'] as const) {
  add({ call: `mapper.${method}(id)`, inputs: IDS_WRONG, fixture: 'mapper', run: ({ mapper }, v) => mapper[method](v),
    expect: S('InvalidPolicy', new RegExp(`${method}: shard id must be an integer, got `)), excerpt: `${method}: shard id must be an integer, got 1.5` });
  add({ call: `mapper.${method}(id)`, inputs: IDS_UNKNOWN, fixture: 'mapper', run: ({ mapper }, v) => mapper[method](v),
    expect: S('InvalidPolicy', new RegExp(`${method}: unknown shard `)), excerpt: `${method}: unknown shard 99` });
}
add({ call: 'mapper.activate(id)', inputs: [['a Draining shard', 3], ['a Stopped shard', 2]], fixture: 'mapper', run: ({ mapper }, v) => mapper.activate(v),
  expect: S('InvalidPolicy', /activate: shard \d is (draining|stopped); only a provisioning shard can be activated/), excerpt: 'activate: shard 3 is draining; only a provisioning shard can be activated' });
add({ call: 'mapper.drainSpecific(id)', inputs: [['a Provisioning shard', 4], ['a Stopped shard', 2]], fixture: 'mapper', run: ({ mapper }, v) => mapper.drainSpecific(v),
  expect: S('InvalidPolicy', /drainSpecific: shard \d is (provisioning|stopped); only an active shard can be drained/), excerpt: 'drainSpecific: shard 4 is provisioning; only an active shard can be drained' });
// ShardMapper: hashes, keys, callbacks
add({ call: 'mapper.selectShard(hash)', inputs: NOT_HASH, fixture: 'mapper', run: ({ mapper }, v) => mapper.selectShard(v),
  expect: T(/selectShard: hash must be a number, got /), excerpt: 'selectShard: hash must be a number, got string' });
add({ call: 'mapper.selectShardBig(hash)', inputs: [['1 (a number)', 1], ['"1"', '1'], ['null', null], ['NaN', NaN]], fixture: 'mapper', run: ({ mapper }, v) => mapper.selectShardBig(v),
  expect: T(/selectShardBig: hash must be a bigint, got /), excerpt: 'selectShardBig: hash must be a bigint, got number' });
add({ call: 'mapper.selectShards(hashes)', inputs: [['[1, 2] (an Array)', [1, 2]], ['Int32Array', new Int32Array(2)], ['null', null]], fixture: 'mapper', run: ({ mapper }, v) => mapper.selectShards(v),
  expect: T(/selectShards: hashes must be a Uint32Array, got /), excerpt: 'selectShards: hashes must be a Uint32Array, got an Array' });
add({ call: 'mapper.selectShards(hashes, out)', inputs: [['out a Uint32Array', new Uint32Array(4)], ['out an Array', [0, 0, 0, 0]]], fixture: 'mapper', run: ({ mapper }, v) => mapper.selectShards(new Uint32Array(4), v),
  expect: T(/selectShards: out must be a Uint16Array, got /), excerpt: 'selectShards: out must be a Uint16Array, got a Uint32Array' });
add({ call: 'mapper.selectShards(hashes, out)', inputs: [['out shorter than hashes', new Uint16Array(3)]], fixture: 'mapper', run: ({ mapper }, v) => mapper.selectShards(new Uint32Array(4), v),
  expect: R(/selectShards: out has 3 entries, needs 4/), excerpt: 'selectShards: out has 3 entries, needs 4' });
add({ call: 'mapper.selectShardForKey(key) / hashKey(key)', inputs: [['5', 5], ['null', null], ['Uint16Array', new Uint16Array(2)], ['ArrayBuffer', new ArrayBuffer(2)]], fixture: 'mapper', run: ({ mapper }, v) => mapper.selectShardForKey(v),
  expect: T(/hashKey: key must be a string or a Uint8Array, got /), excerpt: 'hashKey: key must be a string or a Uint8Array, got number' });
for (const method of ['setOnShardCreated', 'setOnShardRemoved'] as const) {
  add({ call: `mapper.${method}(callback)`, inputs: [['5', 5], ['"f"', 'f'], ['null', null], ['{}', {}]], fixture: 'mapper', run: ({ mapper }, v) => mapper[method](v),
    expect: S('InvalidPolicy', new RegExp(`${method.replace('set', '').replace(/^O/, 'o')} must be a function, got `)), excerpt: `${method.replace('set', '').replace(/^O/, 'o')} must be a function, got 5` });
}
// collectors
for (const [method, arg] of [['recordLatencySample', 'latencyNs'], ['recordPush', 'latencyNs'], ['recordFlush', 'us'], ['recordBufferLen', 'len']] as const) {
  add({ call: `collector.${method}(${arg})`, inputs: [['-1', -1], ['NaN', NaN], ['-Infinity', -Infinity], ['"5"', '5'], ['null', null], ['undefined', undefined]], fixture: 'mapper',
    run: ({ mapper }, v) => mapper.metricsCollector(0)![method](v),
    expect: R(new RegExp(`${arg} must be a number >= 0, got `)), excerpt: `${arg} must be a number >= 0, got -1` });
}
add({ call: 'collector.setDraining(draining)', inputs: [['1', 1], ['"true"', 'true'], ['null', null]], fixture: 'mapper', run: ({ mapper }, v) => mapper.metricsCollector(0)!.setDraining(v),
  expect: T(/draining must be a boolean, got /), excerpt: 'draining must be a boolean, got number' });

// ShardMapper construction (nothing is created)
add({ call: 'ShardMapper.create(initialShards, …)', inputs: [['-1', -1], ['1.5', 1.5], ['NaN', NaN], ['65536', 65536], ['"3"', '3'], ['null', null]], fixture: 'none', run: (_, v) => ShardMapper.create(v, 16),
  expect: S('InvalidPolicy', /initialShards must be an integer in \[0, 65535\], got /), excerpt: 'initialShards must be an integer in [0, 65535], got -1' });
add({ call: 'ShardMapper.create(…, ringBufferCapacity)', inputs: [['-1', -1], ['1.5', 1.5], ['NaN', NaN], ['2^32', 2 ** 32], ['"16"', '16'], ['undefined', undefined]], fixture: 'none', run: (_, v) => ShardMapper.create(1, v),
  expect: S('InvalidPolicy', /ringBufferCapacity must be an integer in \[0, 4294967295\], got /), excerpt: 'ringBufferCapacity must be an integer in [0, 4294967295], got -1' });
add({ call: 'ShardMapper.create(…, options.drainGraceMs)', inputs: [['-1', -1], ['NaN', NaN], ['Infinity', Infinity], ['"5"', '5']], fixture: 'none', run: (_, v) => ShardMapper.create(1, 16, {}, { drainGraceMs: v }),
  expect: S('InvalidPolicy', /options.drainGraceMs must be a finite number >= 0, got /), excerpt: 'options.drainGraceMs must be a finite number >= 0, got NaN' });
add({ call: 'ShardMapper.create(…, options.routing)', inputs: [['"random"', 'random'], ['"LeastLoaded"', 'LeastLoaded'], ['5', 5], ['null', null]], fixture: 'none', run: (_, v) => ShardMapper.create(1, 16, {}, { routing: v }),
  expect: S('InvalidPolicy', /options.routing must be 'leastLoaded', 'balanced' or 'affinity', got /), excerpt: "options.routing must be 'leastLoaded', 'balanced' or 'affinity', got \"random\"" });
add({ call: 'ShardMapper.create(…, options.loadBound)', inputs: [['0', 0], ['-0.5', -0.5], ['NaN', NaN], ['Infinity', Infinity], ['"0.25"', '0.25'], ['null', null]], fixture: 'none', run: (_, v) => ShardMapper.create(1, 16, {}, { routing: 'affinity', loadBound: v }),
  expect: S('InvalidPolicy', /options.loadBound must be a finite number > 0, got /), excerpt: 'options.loadBound must be a finite number > 0, got 0' });
add({ call: 'ShardMapper.create(…, options)', inputs: [["{ rooting: 'affinity' }", { rooting: 'affinity' }], ['{ drainGrace: 5 }', { drainGrace: 5 }]], fixture: 'none', run: (_, v) => ShardMapper.create(1, 16, {}, v),
  expect: S('InvalidPolicy', /options\.(rooting|drainGrace) is not an option \(known: clock, drainGraceMs, memory, routing, loadBound\)/), excerpt: 'options.rooting is not an option (known: clock, drainGraceMs, memory, routing, loadBound)' });
add({ call: 'ShardMapper.create(…, options.clock)', inputs: [['() => NaN', () => NaN], ['() => undefined', () => undefined], ["() => 'now'", () => 'now']], fixture: 'none', run: (_, v) => ShardMapper.create(1, 16, {}, { clock: v }),
  expect: S('InvalidPolicy', /options\.clock must return a finite number of ms, returned /), excerpt: 'options.clock must return a finite number of ms, returned NaN' });
add({ call: 'mapper.selectShardsForKeys(keys)', inputs: [['{ length: NaN }', { length: NaN }], ['{ length: -1 }', { length: -1 }], ['{ length: 1e10 }', { length: 1e10 }], ['{ length: 1.5 }', { length: 1.5 }]], fixture: 'mapper', run: ({ mapper }, v) => mapper.selectShardsForKeys(v),
  expect: R(/selectShardsForKeys: keys\.length must be an integer in \[0, 4294967295\], got /), excerpt: 'selectShardsForKeys: keys.length must be an integer in [0, 4294967295], got NaN' });
add({ call: 'ShardMapper.create(…, options.clock)', inputs: [['5', 5], ['"now"', 'now']], fixture: 'none', run: (_, v) => ShardMapper.create(1, 16, {}, { clock: v }),
  expect: S('InvalidPolicy', /options.clock must be a function, got /), excerpt: 'options.clock must be a function, got 5' });

// Policy fields, through ShardManager.create (ShardMapper.create: test/policy.test.ts) and validate
const POLICY_BAD: Record<keyof ScalingPolicy, [string, unknown][]> = {
  fillRatioThreshold: [['NaN', NaN], ['Infinity', Infinity], ['-Infinity', -Infinity], ['0', 0], ['-0.5', -0.5], ['1.5', 1.5], ['"0.7"', '0.7'], ['null', null]],
  pushLatencyThresholdNs: [['NaN', NaN], ['Infinity', Infinity], ['-1', -1], ['1.5', 1.5], ['"5"', '5'], ['null', null]],
  flushLatencyThresholdUs: [['NaN', NaN], ['Infinity', Infinity], ['-1', -1], ['0.5', 0.5], ['"1000"', '1000'], ['null', null]],
  minShards: [['NaN', NaN], ['Infinity', Infinity], ['0', 0], ['-1', -1], ['1.5', 1.5], ['70000', 70000], ['"1"', '1'], ['null', null]],
  maxShards: [['NaN', NaN], ['Infinity', Infinity], ['2.5', 2.5], ['65536', 65536], ['"4"', '4'], ['null', null]],
  cooldownMs: [['NaN', NaN], ['Infinity', Infinity], ['0', 0], ['-1', -1], ['"1000"', '1000'], ['null', null]],
  scaleDownDelayMs: [['NaN', NaN], ['-Infinity', -Infinity], ['0', 0], ['-5', -5], ['"1"', '1'], ['null', null]],
  underutilizedThreshold: [['NaN', NaN], ['Infinity', Infinity], ['-0.1', -0.1], ['1.5', 1.5], ['"0.1"', '0.1'], ['null', null]],
  metricsWindowMs: [['NaN', NaN], ['Infinity', Infinity], ['0', 0], ['-1', -1], ['2^31', 2 ** 31], ['"100"', '100'], ['null', null]],
  autoScale: [['1', 1], ['"true"', 'true'], ['null', null]],
};
const POLICY_RULE: Record<keyof ScalingPolicy, string[]> = {
  fillRatioThreshold: ['must be a finite number in (0, 1]'], pushLatencyThresholdNs: ['must be an integer >= 0'],
  flushLatencyThresholdUs: ['must be an integer >= 0'], minShards: ['must be an integer >= 1', 'must be <= 65535'], maxShards: ['must be an integer >= 1', 'must be <= 65535'],
  cooldownMs: ['must be a finite number > 0'], scaleDownDelayMs: ['must be a finite number > 0'], underutilizedThreshold: ['must be a finite number in [0, 1]'],
  metricsWindowMs: ['must be a finite number > 0', "must be <= 2147483647 (a timer's limit)"], autoScale: ['must be a boolean'],
};
const literal = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
for (const field of Object.keys(POLICY_BAD) as (keyof ScalingPolicy)[]) {
  const rule = `(${POLICY_RULE[field].map(literal).join('|')})`;
  add({ call: `ShardManager.create({ policy: { ${field} } }), ScalingPolicy.validate`, inputs: POLICY_BAD[field], fixture: 'none',
    run: async (_, v) => {
      // validate() refuses the same value in a full policy, with the same message
      const full = { ...ScalingPolicy.defaultForCpus(4), [field]: v };
      let validateMessage = '';
      try { ScalingPolicy.validate(full); } catch (e) { validateMessage = (e as Error).message; }
      expect(validateMessage).toContain(`policy.${field}`);
      return ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, policy: { [field]: v } });
    },
    expect: S('InvalidPolicy', new RegExp(`policy\\.${field} ${rule}, got `)),
    excerpt: `policy.${field} ${POLICY_RULE[field][0]}, got ${POLICY_BAD[field][0]![0]}` });
}
add({ call: 'ShardManager.create({ policy })', inputs: [['{ bogus: 1 }', { bogus: 1 }], ['{ constructor: 1 }', { constructor: 1 }]], fixture: 'none',
  run: (_, v) => ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, policy: v }),
  expect: S('InvalidPolicy', /policy\.(bogus|constructor) is not a policy field/), excerpt: 'policy.bogus is not a policy field (known: …)' });
add({ call: 'ScalingPolicy.normalize(policy) / validate(policy)', inputs: [['null', null], ['5', 5], ['"x"', 'x'], ['[]', []]], fixture: 'none',
  run: (_, v) => { let validateMessage = ''; try { ScalingPolicy.validate(v); } catch (e) { validateMessage = (e as Error).message; } expect(validateMessage).toMatch(/policy must be an object/); return ScalingPolicy.normalize(v); },
  expect: S('InvalidPolicy', /policy must be an object, got /), excerpt: 'policy must be an object, got null' });
add({ call: 'ShardManager.create({ policy })', inputs: [['null', null], ['5', 5], ['"fast"', 'fast'], ['[]', []], ['a Date', new Date(0)], ['a Map', new Map([['maxShards', 4]])]], fixture: 'none',
  run: (_, v) => ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, policy: v }),
  expect: S('InvalidPolicy', /policy must be an object, got /), excerpt: 'policy must be an object, got null' });

// ShardManager.create options (nothing is created)
const createWith = (extra: Record<string, unknown>) => ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, ...extra } as never);
const OPTION_CASES: [option: string, inputs: [string, unknown][], message: RegExp, excerpt: string][] = [
  ['initialShards', [['-1', -1], ['1.5', 1.5], ['NaN', NaN], ['65536', 65536], ['"1"', '1'], ['null', null]], /options\.initialShards must be an integer in \[0, 65535\], got /, 'options.initialShards must be an integer in [0, 65535], got -1'],
  ['ringBufferCapacity', [['0', 0], ['-1', -1], ['1.5', 1.5], ['NaN', NaN], ['Infinity', Infinity], ['2^25', 2 ** 25], ['"8"', '8'], ['undefined', undefined]], /options\.ringBufferCapacity must be an integer in \[1, 16777216\], got /, 'options.ringBufferCapacity must be an integer in [1, 16777216], got 0'],
  ['maxPayloadBytes', [['0', 0], ['-1', -1], ['1.5', 1.5], ['NaN', NaN], ['2^25', 2 ** 25], ['"8"', '8'], ['null', null]], /options\.maxPayloadBytes must be an integer in \[1, 16777216\], got /, 'options.maxPayloadBytes must be an integer in [1, 16777216], got 0'],
  ['maxSlots', [['0', 0], ['-1', -1], ['1.5', 1.5], ['NaN', NaN], ['70000', 70000], ['"8"', '8'], ['null', null]], /options\.maxSlots must be an integer in \[1, 65535\], got /, 'options.maxSlots must be an integer in [1, 65535], got 0'],
  ['maxThreads', [['0', 0], ['1.5', 1.5], ['1000', 1000], ['NaN', NaN], ['null', null]], /options\.maxThreads must be an integer in \[1, 256\], got /, 'options.maxThreads must be an integer in [1, 256], got 0'],
  ['drainGraceMs', [['-1', -1], ['NaN', NaN], ['Infinity', Infinity], ['"5"', '5'], ['null', null]], /options\.drainGraceMs must be a finite number >= 0, got /, 'options.drainGraceMs must be a finite number >= 0, got -1'],
  ['producerStallMs', [['-1', -1], ['NaN', NaN], ['Infinity', Infinity], ['"5"', '5'], ['null', null]], /options\.producerStallMs must be a finite number >= 0, got /, 'options.producerStallMs must be a finite number >= 0, got -1'],
  ['clock', [['5', 5], ['"now"', 'now'], ['null', null]], /options\.clock must be a function, got /, 'options.clock must be a function, got 5'],
  ['clock', [['() => undefined', () => undefined], ["() => 'now'", () => 'now'], ['() => NaN', () => NaN], ['() => Infinity', () => Infinity]], /options\.clock must return a finite number of ms, returned /, 'options.clock must return a finite number of ms, returned undefined'],
  ['routing', [['"random"', 'random'], ['5', 5], ['null', null]], /options\.routing must be 'leastLoaded', 'balanced' or 'affinity', got /, "options.routing must be 'leastLoaded', 'balanced' or 'affinity', got \"random\""],
  ['loadBound', [['0', 0], ['-1', -1], ['NaN', NaN], ['"0.25"', '0.25'], ['null', null]], /options\.loadBound must be a finite number > 0, got /, 'options.loadBound must be a finite number > 0, got 0'],
  ['keyOrder', [['"yes"', 'yes'], ['1', 1], ['null', null]], /options\.keyOrder must be a boolean, got /, 'options.keyOrder must be a boolean, got "yes"'],
  ['memory', [['"huge"', 'huge'], ['5', 5]], /options\.memory must be 'shared' or 'single', got /, "options.memory must be 'shared' or 'single', got \"huge\""],
  ['onEvent', [['5', 5], ['"log"', 'log']], /options\.onEvent must be a function, got /, 'options.onEvent must be a function, got 5'],
  ['onConsumerError', [['5', 5]], /options\.onConsumerError must be a function, got /, 'options.onConsumerError must be a function, got 5'],
  ['backpressure', [['null', null], ['"dropNewest"', 'dropNewest']], /options\.backpressure must be a BackpressureMode, got /, 'options.backpressure must be a BackpressureMode, got "dropNewest"'],
  ['backpressure', [["{ kind: 'nope' }", { kind: 'nope' }], ['{}', {}]], /options\.backpressure\.kind must be dropNewest, dropOldest, failProducer or sample, got /, 'options.backpressure.kind must be dropNewest, dropOldest, failProducer or sample, got "nope"'],
  ['backpressure', [["{ kind: 'sample' }", { kind: 'sample' }], ['rate 0', { kind: 'sample', rate: 0 }], ['rate 1.5', { kind: 'sample', rate: 1.5 }], ['rate NaN', { kind: 'sample', rate: NaN }]], /options\.backpressure\.rate must be an integer in \[1, 4294967295\], got /, 'options.backpressure.rate must be an integer in [1, 4294967295], got 0'],
  ['backpressure', [["{ kind: 'dropNewest', rate: 3 }", { kind: 'dropNewest', rate: 3 }], ["{ kind: 'failProducer', retries: 1 }", { kind: 'failProducer', retries: 1 }], ["{ kind: 'sample', rate: 2, every: 2 }", { kind: 'sample', rate: 2, every: 2 }]], /options\.backpressure \((dropNewest|failProducer|sample)\)\.(rate|retries|every) is not an option \(known: kind/, 'options.backpressure (dropNewest).rate is not an option (known: kind)'],
  ['consumer', [['null', null], ['"x.mjs"', 'x.mjs'], ['5', 5]], /options\.consumer must be an object \(\{ module \} or \{ worker \}\), got /, 'options.consumer must be an object ({ module } or { worker }), got "x.mjs"'],
  ['consumer', [['{}', {}], ['{ module: 5 }', { module: 5 }], ["{ module: '' }", { module: '' }]], /options\.consumer\.module must be a path or URL, got /, 'options.consumer.module must be a path or URL, got 5'],
  ['consumer', [['module and worker', { module: 'x.mjs', worker: () => null }]], /options\.consumer: give module or worker, not both/, 'options.consumer: give module or worker, not both (worker starts a thread that brings its own function)'],
  ['consumer', [['stallMs 0', { module: 'x.mjs', stallMs: 0 }], ['stallMs NaN', { module: 'x.mjs', stallMs: NaN }], ['stallMs "5"', { module: 'x.mjs', stallMs: '5' }]], /options\.consumer\.stallMs must be a finite number > 0, got /, 'options.consumer.stallMs must be a finite number > 0, got 0'],
  ['consumer', [['threads 0', { module: 'x.mjs', threads: 0 }], ['threads 1.5', { module: 'x.mjs', threads: 1.5 }], ['threads null', { module: 'x.mjs', threads: null }]], /options\.consumer\.threads must be an integer in \[1, 254\], got /, 'options.consumer.threads must be an integer in [1, 254], got 0'],
  ['consumer', [['batchSize 0', { module: 'x.mjs', batchSize: 0 }], ['batchSize NaN', { module: 'x.mjs', batchSize: NaN }]], /options\.consumer\.batchSize must be an integer in \[1, 16777216\], got /, 'options.consumer.batchSize must be an integer in [1, 16777216], got 0'],
  ['consumer', [['thread: 2', { module: 'x.mjs', thread: 2 }], ['modul: "x.mjs"', { modul: 'x.mjs' }]], /options\.consumer\.(thread|modul) is not an option \(known: module, worker, /, 'options.consumer.thread is not an option (known: module, worker, threads, …)'],
  ['consumer', [['spinUs -1', { module: 'x.mjs', spinUs: -1 }], ['spinUs 1.5', { module: 'x.mjs', spinUs: 1.5 }], ['spinUs NaN', { module: 'x.mjs', spinUs: NaN }], ['spinUs 2000000', { module: 'x.mjs', spinUs: 2_000_000 }], ['spinUs "5"', { module: 'x.mjs', spinUs: '5' }]], /options\.consumer\.spinUs must be an integer in \[0, 1000000\], got /, 'options.consumer.spinUs must be an integer in [0, 1000000], got -1'],
];
for (const [option, inputs, message, excerpt] of OPTION_CASES) {
  add({ call: `ShardManager.create({ ${option} })`, inputs, fixture: 'none', run: (_, v) => createWith({ [option]: v }), expect: S('InvalidPolicy', message), excerpt });
}
// A misspelled or unknown option is refused, not ignored.
add({
  call: 'ShardManager.create({ …an unknown option })', inputs: [['ringBufferSize: 1024', { ringBufferSize: 1024 }], ['bogus: 1', { bogus: 1 }]], fixture: 'none',
  run: (_, v) => createWith(v as Record<string, unknown>), expect: S('InvalidPolicy', /options\.(ringBufferSize|bogus) is not an option \(known: initialShards, ringBufferCapacity, /),
  excerpt: 'options.ringBufferSize is not an option (known: initialShards, ringBufferCapacity, …)',
});
// Key order is an affinity guarantee: asking for it with another routing mode is refused.
add({ call: "ShardManager.create({ routing, keyOrder: true })", inputs: [['balanced', 'balanced'], ['leastLoaded', 'leastLoaded'], ['(default)', undefined]],
  fixture: 'none', run: (_, routing) => createWith({ routing, keyOrder: true }),
  expect: S('InvalidPolicy', /options\.keyOrder applies to routing 'affinity' only \(routing is '(balanced|leastLoaded)'/), excerpt: "options.keyOrder applies to routing 'affinity' only (routing is 'balanced': ...)" });
// Byte rings (issue 14): ringBufferBytes' own range, then the quarter rule between it and maxPayloadBytes.
add({ call: 'ShardManager.create({ ringBufferBytes })', inputs: [['0', 0], ['-1', -1], ['1.5', 1.5], ['NaN', NaN], ['2^30 + 1', 2 ** 30 + 1], ['"8"', '8'], ['null', null]],
  fixture: 'none', run: (_, v) => createWith({ ringBufferBytes: v }),
  expect: S('InvalidPolicy', /options\.ringBufferBytes must be an integer in \[1, 1073741824\], got /), excerpt: 'options.ringBufferBytes must be an integer in [1, 1073741824], got 0' });
add({ call: 'ShardManager.create({ maxPayloadBytes, ringBufferBytes })', inputs: [['256 with 1000', [256, 1000]], ['256 with 1016', [256, 1016]], ['250 with 993', [250, 993]], ['65536 with 262136', [65536, 262136]]],
  fixture: 'none', run: (_, [maxPayloadBytes, ringBufferBytes]) => createWith({ maxPayloadBytes, ringBufferBytes }),
  expect: S('InvalidPolicy', /options\.maxPayloadBytes \(\d+\) may be at most a quarter of options\.ringBufferBytes \(\d+\): raise ringBufferBytes to at least \d+ or lower maxPayloadBytes to \d+/),
  excerpt: 'options.maxPayloadBytes (256) may be at most a quarter of options.ringBufferBytes (1000): raise ringBufferBytes to at least 1024 or lower maxPayloadBytes to 248' });
add({ call: 'ShardManager.create(options)', inputs: [['undefined', undefined], ['null', null], ['5', 5]], fixture: 'none', run: (_, v) => ShardManager.create(v),
  expect: S('InvalidPolicy', /options must be an object, got /), excerpt: 'options must be an object, got undefined' });
add({ call: 'ShardProducer.attach(handle)', inputs: [['{}', {}], ['null', null], ['{ core: {} }', { core: {}, maxPayloadBytes: 8 }]], fixture: 'none', run: (_, v) => ShardProducer.attach(v),
  expect: T(/ShardProducer\.attach: handle must be what manager\.producerHandle\(\) returns, got /), excerpt: 'ShardProducer.attach: handle must be what manager.producerHandle() returns, got null' });
add({ call: 'ShardProducer.attach(handle)', inputs: [['maxPayloadBytes 1e9', 1e9], ['maxPayloadBytes NaN', NaN], ['maxPayloadBytes -1', -1]], fixture: 'manager',
  run: ({ manager }, v) => ShardProducer.attach({ ...manager.producerHandle(), maxPayloadBytes: v }),
  expect: T(/ShardProducer\.attach: handle\.maxPayloadBytes must be an integer in \[1, 16\] \(its shared memory's maxPayloadBytes\), got /), excerpt: "ShardProducer.attach: handle.maxPayloadBytes must be an integer in [1, 16] (its shared memory's maxPayloadBytes), got 1000000000; pass what manager.producerHandle() returns" });
const collectorAttach = (manager: ShardManager, change: Record<string, unknown>, clock?: unknown) =>
  ShardMetricsCollector.attach({ ...manager.mapper.metricsCollector(0)!.handle(), ...change }, clock as never);
add({ call: 'ShardMetricsCollector.attach(handle)', inputs: [['slot -1', -1], ['slot 1.5', 1.5], ['slot NaN', NaN], ['slot 99999', 99999], ['slot 27718444', 27718444], ['slot "0"', '0']], fixture: 'manager',
  run: ({ manager }, v) => collectorAttach(manager, { slot: v }),
  expect: S('InvalidPolicy', /ShardMetricsCollector\.attach: handle\.slot must be an integer in \[0, \d+\], got /), excerpt: 'ShardMetricsCollector.attach: handle.slot must be an integer in [0, 4], got 99999' });
add({ call: 'ShardMetricsCollector.attach(handle)', inputs: [['shardId -1', -1], ['shardId 65535', 65535], ['shardId "0"', '0']], fixture: 'manager',
  run: ({ manager }, v) => collectorAttach(manager, { shardId: v }),
  expect: S('InvalidPolicy', /ShardMetricsCollector\.attach: handle\.shardId must be an integer in \[0, 65534\], got /), excerpt: 'ShardMetricsCollector.attach: handle.shardId must be an integer in [0, 65534], got -1' });
add({ call: 'ShardMetricsCollector.attach(handle, clock)', inputs: [['"not a clock"', 'not a clock'], ['5', 5], ['null', null]], fixture: 'manager',
  run: ({ manager }, v) => collectorAttach(manager, {}, v),
  expect: T(/ShardMetricsCollector\.attach: clock must be a function, got /), excerpt: 'ShardMetricsCollector.attach: clock must be a function, got "not a clock"' });
add({ call: 'ShardMetricsCollector.attach(handle)', inputs: [['null', null], ['{}', {}], ['{ core: {} }', { core: {}, slot: 0, shardId: 0 }]], fixture: 'none',
  run: (_, v) => ShardMetricsCollector.attach(v),
  expect: T(/ShardMetricsCollector\.attach: handle must be what collector\.handle\(\) returns, got /), excerpt: 'ShardMetricsCollector.attach: handle must be what collector.handle() returns, got null' });

// ShardManager: counts and ids
for (const method of ['manualScaleUp', 'manualScaleDown'] as const) {
  add({ call: `manager.${method}(n)`, inputs: COUNTS, fixture: 'manager', run: ({ manager }, v) => manager[method](v),
    expect: S('InvalidPolicy', /n must be an integer in \[0, 65535\], got /), excerpt: 'n must be an integer in [0, 65535], got 1.5' });
}
for (const [method, name] of [['poll', 'poll'], ['ringLength', 'ringLength'], ['batches', 'batches'], ['removeShard', 'removeShard'], ['drainShard', 'drainSpecific']] as const) {
  add({ call: `manager.${method}(id)`, inputs: IDS_WRONG, fixture: 'manager', run: ({ manager }, v) => manager[method](v),
    expect: S('InvalidPolicy', new RegExp(`${name}: shard id must be an integer, got `)), excerpt: `${name}: shard id must be an integer, got NaN` });
  add({ call: `manager.${method}(id)`, inputs: IDS_UNKNOWN, fixture: 'manager', run: ({ manager }, v) => manager[method](v),
    expect: S('InvalidPolicy', new RegExp(`${name}: unknown shard `)), excerpt: `${name}: unknown shard 99` });
}
add({ call: 'manager.poll(id, max)', inputs: [['0', 0], ['-1', -1], ['1.5', 1.5], ['NaN', NaN], ['Infinity', Infinity], ['"4"', '4'], ['null', null]], fixture: 'manager', run: ({ manager }, v) => manager.poll(0, v),
  expect: S('InvalidPolicy', /max must be an integer in \[1, 9007199254740991\], got /), excerpt: 'max must be an integer in [1, 9007199254740991], got 0' });

add({ call: 'manager.batches(id, options)', inputs: [['{ signal }', { signal: new AbortController().signal }], ['{ maxBatch: 4 }', { maxBatch: 4 }]], fixture: 'manager', run: ({ manager }, v) => manager.batches(0, v),
  expect: S('InvalidPolicy', /batches: options\.(signal|maxBatch) is not an option \(known: max, idleMs\)/), excerpt: 'batches: options.signal is not an option (known: max, idleMs)' });
add({ call: 'manager.batches(id, options)', inputs: [['{ max: null }', { max: null }], ['{ idleMs: null }', { idleMs: null }]], fixture: 'manager', run: ({ manager }, v) => manager.batches(0, v),
  expect: S('InvalidPolicy', /batches: options\.(max|idleMs) must be an integer in \[1, \d+\], got null/), excerpt: 'batches: options.max must be an integer in [1, 9007199254740991], got null' });
for (const method of ['writable', 'writableStream'] as const) {
  add({ call: `manager.${method}(options)`, inputs: [['{ highWaterMark: null }', { highWaterMark: null }], ['{ retryMs: null }', { retryMs: null }]], fixture: 'manager', run: ({ manager }, v) => manager[method](v),
    expect: S('InvalidPolicy', new RegExp(`${method}: options\\.(highWaterMark|retryMs) must be an integer in \\[1, \\d+\\], got null`)), excerpt: `${method}: options.highWaterMark must be an integer in [1, 1073741823], got null` });
}
add({ call: "serveShardConsumers(options) ('shard-mapper/redis'; refused before it connects)", inputs: [['batchSize: null', 'batchSize'], ['leaseMs: null', 'leaseMs'], ['idleMs: null', 'idleMs'], ['name: null', 'name'], ['dedup: null', 'dedup']], fixture: 'none',
  run: async (_, field) => (await import('shard-mapper/redis')).serveShardConsumers({ redis: 'redis://127.0.0.1:9', namespace: 'bad-input', consume: () => {}, [field]: null }),
  expect: S('InvalidPolicy', /options\.(batchSize|leaseMs|idleMs|name|dedup) must be (an integer in \[\d+, \d+\]|a non-empty string|a boolean), got null/), excerpt: 'options.batchSize must be an integer in [1, 1048576], got null' });
for (const method of ['writable', 'writableStream'] as const) {
  add({ call: `manager.${method}(options)`, inputs: [['{ highWatermark: 4 }', { highWatermark: 4 }]], fixture: 'manager', run: ({ manager }, v) => manager[method](v),
    expect: S('InvalidPolicy', new RegExp(`${method}: options\\.highWatermark is not an option \\(known: highWaterMark, retryMs\\)`)), excerpt: `${method}: options.highWatermark is not an option (known: highWaterMark, retryMs)` });
}

// ShardManager: payloads and keys
add({ call: 'manager.push(key, payload)', inputs: [['17 bytes (max 16)', new Uint8Array(17)], ['1 MiB', new Uint8Array(1 << 20)]], fixture: 'manager', run: ({ manager }, v) => manager.push(1, v),
  expect: R(/push: payload is \d+ bytes, the maximum is maxPayloadBytes = 16/), excerpt: 'push: payload is 17 bytes, the maximum is maxPayloadBytes = 16' });
add({ call: 'manager.push(key, payload)', inputs: [["'é' × 9 (18 UTF-8 bytes)", 'é'.repeat(9)], ["'x' × 17", 'x'.repeat(17)]], fixture: 'manager', run: ({ manager }, v) => manager.push(1, v),
  expect: R(/push: payload is \d+ bytes as UTF-8, the maximum is maxPayloadBytes = 16/), excerpt: 'push: payload is 18 bytes as UTF-8, the maximum is maxPayloadBytes = 16' });
add({ call: 'manager.push(key, payload)', inputs: [['42', 42], ['null', null], ['undefined', undefined], ['Uint16Array', new Uint16Array(2)], ['ArrayBuffer', new ArrayBuffer(2)], ['DataView', new DataView(new ArrayBuffer(2))], ['[1, 2]', [1, 2]], ['{}', {}]], fixture: 'manager', run: ({ manager }, v) => manager.push(1, v),
  expect: T(/push: payload must be a Uint8Array or a string, got /), excerpt: 'push: payload must be a Uint8Array or a string, got number' });
add({ call: 'manager.push(key, payload)', inputs: [['null', null], ['undefined', undefined], ['true', true], ['1n', 1n], ['{}', {}], ['Uint16Array', new Uint16Array(1)]], fixture: 'manager', run: ({ manager }, v) => manager.push(v, 'x'),
  expect: T(/push: key must be a uint32 hash, a string or a Uint8Array, got /), excerpt: 'push: key must be a uint32 hash, a string or a Uint8Array, got null' });
add({ call: 'manager.pushBatch(keys, payloads)', inputs: [['2 keys, 1 payload', [[1, 2], ['a']]]], fixture: 'manager', run: ({ manager }, [k, p]) => manager.pushBatch(k, p),
  expect: R(/pushBatch: 2 keys but 1 payloads/), excerpt: 'pushBatch: 2 keys but 1 payloads' });
add({ call: 'manager.pushBatch(keys, payloads)', inputs: [['payloads[1] = 5', [[1, 2], ['a', 5]]], ['payloads[1] = null', [[1, 2], ['a', null]]]], fixture: 'manager', run: ({ manager }, [k, p]) => manager.pushBatch(k, p),
  expect: T(/pushBatch: payloads\[1\] must be a Uint8Array or a string, got /), excerpt: 'pushBatch: payloads[1] must be a Uint8Array or a string, got number' });
add({ call: 'manager.pushBatch(keys, payloads)', inputs: [['payloads[1] 17 bytes', [[1, 2], ['a', new Uint8Array(17)]]], ["payloads[1] 'é' × 9", [[1, 2], ['a', 'é'.repeat(9)]]]], fixture: 'manager', run: ({ manager }, [k, p]) => manager.pushBatch(k, p),
  expect: R(/pushBatch: payloads\[1\] is (17 bytes|18 bytes as UTF-8), the maximum is maxPayloadBytes = 16/), excerpt: 'pushBatch: payloads[1] is 17 bytes, the maximum is maxPayloadBytes = 16' });
add({ call: 'manager.pushBatch(keys, payloads)', inputs: [['keys[1] = null', [[1, null], ['a', 'b']]], ['keys[1] = 1n', [[1, 1n], ['a', 'b']]]], fixture: 'manager', run: ({ manager }, [k, p]) => manager.pushBatch(k, p),
  expect: T(/pushBatch: keys\[1\] must be a uint32 hash, a string or a Uint8Array, got /), excerpt: 'pushBatch: keys[1] must be a uint32 hash, a string or a Uint8Array, got null' });
add({ call: 'manager.pushBatch(keys, payloads)', inputs: [['keys null', [null, ['a']]], ['keys 5', [5, ['a']]]], fixture: 'manager', run: ({ manager }, [k, p]) => manager.pushBatch(k, p),
  expect: T(/pushBatch: keys must be an array or a Uint32Array/), excerpt: 'pushBatch: keys must be an array or a Uint32Array' });
add({ call: 'manager.pushBatch(keys, payloads)', inputs: [['payloads null', [[1], null]], ['payloads 5', [[1], 5]]], fixture: 'manager', run: ({ manager }, [k, p]) => manager.pushBatch(k, p),
  expect: T(/pushBatch: payloads must be an array/), excerpt: 'pushBatch: payloads must be an array' });
add({ call: 'manager.pushBatch(events)', inputs: [['[5]', [5]], ['[[1]]', [[1]]], ['[{}]', [{}]]], fixture: 'manager', run: ({ manager }, v) => manager.pushBatch(v),
  expect: T(/pushBatch: events\[0\] must be \[key, payload\] or \{ key, payload \}/), excerpt: 'pushBatch: events[0] must be [key, payload] or { key, payload }' });
add({ call: 'manager.pushBatch(events)', inputs: [['[{ key, hash, payload }]', [{ key: 'a', hash: 1, payload: 'x' }]]], fixture: 'manager', run: ({ manager }, v) => manager.pushBatch(v),
  expect: T(/pushBatch: events\[0\] has both key and hash; give one/), excerpt: 'pushBatch: events[0] has both key and hash; give one' });

// close's options: refused before anything closes (see also 'a refused close leaves the manager open' below)
add({ call: 'manager.close({ timeoutMs })', inputs: [['-1', { timeoutMs: -1 }], ['NaN', { timeoutMs: NaN }], ['Infinity', { timeoutMs: Infinity }], ['"5"', { timeoutMs: '5' }], ['null', { timeoutMs: null }]], fixture: 'manager',
  run: ({ manager }, v) => manager.close(v), expect: S('InvalidPolicy', /close: options\.timeoutMs must be a finite number >= 0, got /), excerpt: 'close: options.timeoutMs must be a finite number >= 0, got -1' });
add({ call: 'manager.close(options)', inputs: [['{ timeout: 100 }', { timeout: 100 }]], fixture: 'manager',
  run: ({ manager }, v) => manager.close(v), expect: S('InvalidPolicy', /close: options\.timeout is not an option \(known: timeoutMs\)/), excerpt: 'close: options.timeout is not an option (known: timeoutMs)' });
add({ call: 'manager.close(options)', inputs: [['5', 5], ['"soon"', 'soon'], ['null', null]], fixture: 'manager',
  run: ({ manager }, v) => manager.close(v), expect: T(/close: options must be an object, got /), excerpt: 'close: options must be an object, got 5' });

// Calls after close()
for (const [method, run, name] of [
  ['push', (m: ShardManager) => m.push(1, 'x'), 'push'],
  ['pushBatch', (m: ShardManager) => m.pushBatch([1, 2], ['x', 'y']), 'pushBatch'],
  ['addShard', (m: ShardManager) => m.addShard(), 'addShard'],
  ['manualScaleUp', (m: ShardManager) => m.manualScaleUp(1), 'manualScaleUp'],
  ['manualScaleDown', (m: ShardManager) => m.manualScaleDown(1), 'manualScaleDown'],
  ['drainShard', (m: ShardManager) => m.drainShard(0), 'drainShard'],
  ['removeShard', (m: ShardManager) => m.removeShard(0), 'removeShard'],
  ['start', (m: ShardManager) => m.start(), 'start'],
  ['producerHandle', (m: ShardManager) => m.producerHandle(), 'producerHandle'],
  ['mapper.scaleUp', (m: ShardManager) => m.mapper.scaleUp(1), 'scaleUp'],
  ['mapper.scaleUpProvisioning', (m: ShardManager) => m.mapper.scaleUpProvisioning(1), 'scaleUpProvisioning'],
  ['mapper.scaleUpProvisioningForce', (m: ShardManager) => m.mapper.scaleUpProvisioningForce(1), 'scaleUpProvisioningForce'],
  ['mapper.activate', (m: ShardManager) => m.mapper.activate(0), 'activate'],
  ['mapper.drainSpecific', (m: ShardManager) => m.mapper.drainSpecific(0), 'drainSpecific'],
  ['mapper.scaleDown', (m: ShardManager) => m.mapper.scaleDown(1), 'scaleDown'],
] as const) {
  add({ call: `manager.${method}(…) after close()`, inputs: [['', undefined]], fixture: 'closed', run: ({ manager }) => run(manager),
    expect: CLOSED(name), excerpt: `shard-mapper: ${name}: the manager is closed` });
}
add({ call: 'manager.pushBatch([]) after close() (an empty batch)', inputs: [['[]', []], ['[], []', 'pair']], fixture: 'closed', run: ({ manager }, v) => (v === 'pair' ? manager.pushBatch([], []) : manager.pushBatch(v)),
  expect: CLOSED('pushBatch'), excerpt: 'shard-mapper: pushBatch: the manager is closed' });
add({ call: 'manager.pushFixed(…) after close() (no records)', inputs: [['', undefined]], fixture: 'closed', run: ({ manager }) => manager.pushFixed(new Uint32Array(0), new Uint8Array(0), 4),
  expect: CLOSED('pushFixed'), excerpt: 'shard-mapper: pushFixed: the manager is closed' });
add({ call: 'producer.pushBatch([]) after close() (a ShardProducer attached before)', inputs: [['', undefined]], fixture: 'closed', run: ({ producer }) => producer.pushBatch([]),
  expect: CLOSED('pushBatch'), excerpt: 'shard-mapper: pushBatch: the manager is closed' });
add({ call: 'producer.push(…) after close() (a ShardProducer attached before)', inputs: [['', undefined]], fixture: 'closed', run: ({ producer }) => producer.push(1, 'x'),
  expect: CLOSED('push'), excerpt: 'shard-mapper: push: the manager is closed' });
const detached = async (manager: ShardManager) => {
  const producer = await ShardProducer.attach(manager.producerHandle());
  producer.detach();
  return producer;
};
const DETACHED = (method: string): Expected => ({ error: 'ProducerDetachedError', message: new RegExp(`ShardProducer\\.${method}: this producer was detached`) });
for (const [method, run] of [
  ['push', (p: ShardProducer) => p.push(1, 'x')],
  ['pushBatch', (p: ShardProducer) => p.pushBatch([1, 2], ['x', 'y'])],
  ['pushFixed', (p: ShardProducer) => p.pushFixed(new Uint32Array([1]), new Uint8Array(4), 4)],
] as const) {
  add({ call: `producer.${method}(…) after producer.detach()`, inputs: [['', undefined]], fixture: 'manager', run: async ({ manager }) => run(await detached(manager)),
    expect: DETACHED(method), excerpt: `shard-mapper: ShardProducer.${method}: this producer was detached (its lane was given back); attach again with ShardProducer.attach(handle)` });
}
add({ call: 'batch.copyTo(target, at) (a RecordBatch from pollBatch)', inputs: [['NaN', NaN], ['null', null], ['1.5', 1.5], ['-1', -1], ['"2"', '2']], fixture: 'none',
  run: async (_, v) => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8 });
    m.push(1, 'abc');
    const target = new Uint8Array(8);
    try {
      m.pollBatch(0, (batch) => batch.copyTo(target, v));
    } finally {
      expect(target).toEqual(new Uint8Array(8)); // nothing copied
      expect(m.ringLength(0), 'a batch whose consume threw stays in the ring').toBe(1);
    }
  },
  expect: R(/RecordBatch\.copyTo: at must be an integer >= 0, got /), excerpt: 'RecordBatch.copyTo: at must be an integer >= 0, got NaN' });
add({ call: "serveConsumer(consume, options) ('shard-mapper/worker')", inputs: [['null', null], ['5', 5]], fixture: 'none',
  run: async (_, v) => (await import('shard-mapper/worker')).serveConsumer(() => {}, v),
  expect: T(/serveConsumer: options must be an object, got /), excerpt: 'serveConsumer: options must be an object, got null' });
add({ call: "serveConsumer(consume, options) ('shard-mapper/worker')", inputs: [['{ batch: 1 }', { batch: 1 }], ["{ batch: 'yes' }", { batch: 'yes' }]], fixture: 'none',
  run: async (_, v) => (await import('shard-mapper/worker')).serveConsumer(() => {}, v),
  expect: T(/serveConsumer: options\.batch must be a boolean, got /), excerpt: 'serveConsumer: options.batch must be a boolean, got number' });

// ---- the tests -----------------------------------------------------------------------------

async function makeFixture(kind: Case['fixture']): Promise<{ fx: Fixture | undefined; snap: () => unknown }> {
  if (kind === 'mapper') { const fx = await mapperFixture(); return { fx, snap: () => mapperSnapshot(fx.mapper) }; }
  if (kind === 'manager') { const fx = await managerFixture(); return { fx, snap: () => managerSnapshot(fx.manager) }; }
  if (kind === 'closed') { const fx = await closedFixture(); return { fx, snap: () => managerSnapshot(fx.manager) }; }
  return { fx: undefined, snap: () => null };
}

describe('bad input: a clear error naming the argument, and nothing changed', () => {
  for (const c of CASES) {
    describe(c.call, () => {
      for (const [label, value] of c.inputs) {
        it(`${label || 'any call'} → ${c.expect.error}${c.expect.kind ? ` ${c.expect.kind}` : ''}`, async () => {
          const { fx, snap } = await makeFixture(c.fixture);
          const before = snap();
          let error: unknown;
          let threw = false;
          try {
            await c.run(fx, value);
          } catch (e) {
            threw = true;
            error = e;
          }
          expect(threw, `${c.call} with ${label} did not throw`).toBe(true);
          const e = error as Error & { kind?: string };
          expect(e).toBeInstanceOf(Error);
          expect(e.name).toBe(c.expect.error);
          if (c.expect.error === 'ScalingError') expect(e).toBeInstanceOf(ScalingError);
          if (c.expect.error === 'ManagerClosedError') expect(e).toBeInstanceOf(ManagerClosedError);
          if (c.expect.error === 'ProducerDetachedError') expect(e).toBeInstanceOf(ProducerDetachedError);
          if (c.expect.kind) expect(e.kind).toBe(c.expect.kind);
          expect(e.message).toMatch(c.expect.message);
          expect(snap(), 'the state changed').toEqual(before);
        });
      }
    });
  }
});

// ---- documented behaviours that are not errors -------------------------------------------

describe('hashes are reduced with >>> 0 (documented); non-numbers are TypeErrors (above)', () => {
  const reduced: [string, number][] = [['NaN', NaN], ['-1', -1], ['-0', -0], ['1.5', 1.5], ['2^32 + 5', 2 ** 32 + 5], ['2^33', 2 ** 33], ['Infinity', Infinity], ['-Infinity', -Infinity], ['-2^31', -(2 ** 31)]];
  for (const [label, h] of reduced) {
    it(`selectShard(${label}) === selectShard(${h >>> 0}) and push(${label}, …) lands there`, async () => {
      const manager = await ShardManager.create({ initialShards: 4, ringBufferCapacity: 8, policy: { maxShards: 4 } });
      const want = manager.mapper.selectShard(h >>> 0);
      expect(manager.mapper.selectShard(h)).toBe(want);
      expect(manager.push(h, 'x')).toBe(true);
      expect(manager.ringLength(want)).toBe(1);
    });
  }
  it('selectShardBig reduces modulo 2^64 (negative and > 2^64 bigints)', async () => {
    const mapper = await ShardMapper.create(4, 8, { maxShards: 4 });
    expect(mapper.selectShardBig(-1n)).toBe(mapper.selectShardBig(2n ** 64n - 1n));
    expect(mapper.selectShardBig(2n ** 64n + 5n)).toBe(mapper.selectShardBig(5n));
  });
  it('hashKey hashes the UTF-8 bytes, so a string key and its bytes agree', () => {
    expect(hashKey('héllo')).toBe(hashKey(new TextEncoder().encode('héllo')));
  });
});

describe('lookups of unknown ids answer, they do not throw (documented)', () => {
  it('shardState / metricsCollector → undefined, removeSpecificStoppedShard → false, for unknown and ill-typed ids', async () => {
    const { mapper } = await mapperFixture();
    const before = mapperSnapshot(mapper);
    for (const id of [-1, 99, 0xffff, NaN, 1.5, '0', null, undefined] as number[]) {
      expect(mapper.shardState(id)).toBeUndefined();
      expect(mapper.metricsCollector(id)).toBeUndefined();
      expect(mapper.removeSpecificStoppedShard(id)).toBe(false);
    }
    expect(mapper.removeSpecificStoppedShard(0)).toBe(false); // Active: not removed
    expect(mapperSnapshot(mapper)).toEqual(before);
  });
  it('a policy field given as undefined takes its default; maxShards below minShards is raised (normalize)', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, policy: { cooldownMs: undefined, minShards: 3, maxShards: -Infinity } });
    expect(m.mapper.policy()).toMatchObject({ cooldownMs: 1000, minShards: 3, maxShards: 3 });
  });
  it('collector samples: fractions are floored, Infinity and anything ≥ 2^32 − 1 clamp to 2^32 − 1', async () => {
    const mapper = await ShardMapper.create(1, 0, { maxShards: 1 });
    const c = mapper.metricsCollector(0)!;
    c.recordLatencySample(7.9);
    expect(c.collectAndReset().avgPushLatencyNs).toBe(7);
    c.recordLatencySample(Infinity);
    expect(c.collectAndReset().avgPushLatencyNs).toBe(2 ** 32 - 1);
    c.recordBufferLen(2 ** 40);
    expect(c.bufferLen()).toBe(2 ** 32 - 1);
  });
  it('after close(): tick() answers none, poll/ringLength/stats still read what is left, close() again resolves', async () => {
    const { manager } = await closedFixture();
    expect(manager.tick()).toEqual({ kind: 'none' });
    expect(manager.stats()).toMatchObject({ pushed: 2, delivered: 0 });
    const left = manager.mapper.allShardIds().flatMap((id) => manager.poll(id).map((r) => new TextDecoder().decode(r)));
    expect(left.sort()).toEqual(['a', 'b']);
    expect(manager.stats()).toMatchObject({ pushed: 2, delivered: 2, inFlight: 0 });
    await expect(manager.close()).resolves.toBeUndefined();
  });
  it('a ringBufferCapacity of 1 is a ring of one record (it has two descriptors; see test/model.property.test.ts)', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 1 });
    expect(m.ringCapacity).toBe(1);
  });
  it('a refused close leaves the manager open: pushes are still accepted, and a close after it works', async () => {
    const m = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8 });
    await expect(m.close({ timeoutMs: -1 })).rejects.toThrow(/timeoutMs/);
    await expect(m.close(5 as never)).rejects.toThrow(TypeError);
    expect(m.push(1, 'still open')).toBe(true);
    await expect(m.close({ timeoutMs: 2 ** 31 })).resolves.toBeUndefined(); // a deadline past a timer's limit is a deadline (no timer is set)
    expect(() => m.push(1, 'x')).toThrow(/the manager is closed/);
  });
  it('a refused ShardProducer / ShardMetricsCollector attach gives its lane back: with one lane free, attaching still works after many refusals', async () => {
    const m = await ShardManager.create({ initialShards: 2, ringBufferCapacity: 8, maxPayloadBytes: 16, maxThreads: 2 });
    const handle = m.mapper.metricsCollector(0)!.handle();
    for (let i = 0; i < 5; i++) {
      await expect(ShardMetricsCollector.attach({ ...handle, slot: 99999 })).rejects.toThrow(/handle\.slot/);
      await expect(ShardProducer.attach({ ...m.producerHandle(), maxPayloadBytes: 1e9 })).rejects.toThrow(/handle\.maxPayloadBytes/);
    }
    // a smaller limit than the memory's is this thread's own, tighter one
    const producer = await ShardProducer.attach({ ...m.producerHandle(), maxPayloadBytes: 8 });
    expect(producer.push(1, 'x')).toBe(true);
    expect(() => producer.push(1, new Uint8Array(9))).toThrow(/maxPayloadBytes = 8/);
    // and the one lane is really the only one: a second attach now finds none
    await expect(ShardMetricsCollector.attach(handle)).rejects.toThrow(/every lane of the shared memory is taken/);
    producer.detach();
    const collector = await ShardMetricsCollector.attach(handle);
    collector.detach();
    await m.close();
  });
  it('consumer.threads up to 254 (the documented range) gets a maxThreads default that fits the 256 lanes', async () => {
    const { checkManagerOptions } = await import('../dist/manager-options.js');
    const settings = (threads: number) => checkManagerOptions({ initialShards: 1, ringBufferCapacity: 8, consumer: { module: 'x.mjs', threads } });
    expect(settings(4).maxThreads).toBe(64);
    expect(settings(100).maxThreads).toBe(108);
    for (const threads of [248, 249, 254]) expect(settings(threads).maxThreads, `threads ${threads}`).toBe(256);
  });
});

describe('docs/bad-input.md', () => {
  it('is the catalogue of these cases, as npm run docs:bad-input writes it', () => {
    const path = fileURLToPath(new URL('../docs/bad-input.md', import.meta.url));
    const doc = badInputDoc(CASES);
    if (process.env.BAD_INPUT_DOC === 'write') writeFileSync(path, doc); // npm run docs:bad-input
    const committed = existsSync(path) ? readFileSync(path, 'utf8') : '(no docs/bad-input.md)';
    expect(committed, 'docs/bad-input.md differs from the cases in test/bad-input.test.ts: run `npm run docs:bad-input` and commit the file').toBe(doc);
  });
});
