// ScalingPolicy (docs/CONTRACT.md §2) and the argument checks of the ShardMapper constructors.
import { availableParallelism } from 'node:os';
import { describe, it, expect } from 'vitest';
import { ShardMapper, ScalingPolicy, ScalingError } from 'shard-mapper';
import { scalingError, scalingRejection } from './helpers/index.js';

const CPUS = availableParallelism();
type Policy = ReturnType<typeof ScalingPolicy.default>;
type Field = keyof Policy;

const FIELDS: Field[] = [
  'fillRatioThreshold', 'pushLatencyThresholdNs', 'flushLatencyThresholdUs', 'minShards', 'maxShards',
  'cooldownMs', 'scaleDownDelayMs', 'underutilizedThreshold', 'metricsWindowMs', 'autoScale',
];

// Refusals every field shares: NaN, ±Infinity, wrong types.
const COMMON_BAD: [string, unknown][] = [
  ['NaN', NaN], ['Infinity', Infinity], ['-Infinity', -Infinity], ['a string', '1'], ['null', null],
  ['an object', {}], ['a bigint', 1n],
];

// Per field: values out of range / not integers (per the table of docs/CONTRACT.md §2), and accepted edge values.
const FIELD_CASES: Record<Field, { bad: [string, unknown][]; good: unknown[] }> = {
  fillRatioThreshold: { bad: [['0 (open bound)', 0], ['negative', -0.5], ['above 1', 1.0001], ['a boolean', true]], good: [1, 0.0001, 0.5] },
  pushLatencyThresholdNs: { bad: [['negative', -1], ['non-integer', 1.5], ['a boolean', true]], good: [0, 5, 1_000_000] },
  flushLatencyThresholdUs: { bad: [['negative', -1], ['non-integer', 0.5], ['a boolean', false]], good: [0, 1000, 2 ** 40] },
  minShards: { bad: [['0', 0], ['negative', -1], ['non-integer', 1.5]], good: [1, 2, 4] },
  maxShards: { bad: [['0', 0], ['non-integer', 4.5], ['above 65535', 65536]], good: [4, 65535] },
  cooldownMs: { bad: [['0', 0], ['negative', -1]], good: [0.5, 1, 1e9] },
  scaleDownDelayMs: { bad: [['0', 0], ['negative', -10]], good: [0.001, 10000] },
  underutilizedThreshold: { bad: [['negative', -0.01], ['above 1', 1.01]], good: [0, 1, 0.1] },
  metricsWindowMs: { bad: [['0', 0], ['negative', -5]], good: [0.25, 100] },
  autoScale: { bad: [['1', 1], ['0', 0], ['"true"', 'true']], good: [true, false] },
};

const base = (): Policy => ScalingPolicy.defaultForCpus(4);

describe('ScalingPolicy presets', () => {
  it('defaultForCpus is the table of docs/CONTRACT.md §2 with maxShards = cpus', () => {
    expect(ScalingPolicy.defaultForCpus(6)).toEqual({
      fillRatioThreshold: 0.7,
      pushLatencyThresholdNs: 5,
      flushLatencyThresholdUs: 1000,
      minShards: 1,
      maxShards: 6,
      cooldownMs: 1000,
      scaleDownDelayMs: 10000,
      underutilizedThreshold: 0.1,
      metricsWindowMs: 100,
      autoScale: true,
    });
    expect(ScalingPolicy.defaultForCpus(1).maxShards).toBe(1);
    expect(ScalingPolicy.defaultForCpus(65535).maxShards).toBe(65535);
    expect(Object.keys(ScalingPolicy.defaultForCpus(3)).sort()).toEqual([...FIELDS].sort());
  });

  it('defaultForCpus refuses a cpu count that cannot be a maxShards (implementation choice)', () => {
    for (const cpus of [0, -1, 1.5, NaN, 65536]) scalingError(() => ScalingPolicy.defaultForCpus(cpus), 'InvalidPolicy', /cpus/);
  });

  it("default() is defaultForCpus(this machine's CPU count)", () => {
    expect(ScalingPolicy.default()).toEqual(ScalingPolicy.defaultForCpus(CPUS));
    expect(ScalingPolicy.default().maxShards).toBe(CPUS);
  });

  it('highThroughput() has the values of docs/CONTRACT.md §2', () => {
    expect(ScalingPolicy.highThroughput()).toEqual({
      fillRatioThreshold: 0.6,
      pushLatencyThresholdNs: 3,
      flushLatencyThresholdUs: 500,
      minShards: Math.min(4, CPUS),
      maxShards: Math.min(2 * CPUS, 65535),
      cooldownMs: 500,
      scaleDownDelayMs: 30000,
      underutilizedThreshold: 0.05,
      metricsWindowMs: 50,
      autoScale: true,
    });
  });

  it('conservative() has the values of docs/CONTRACT.md §2', () => {
    expect(ScalingPolicy.conservative()).toEqual({
      fillRatioThreshold: 0.8,
      pushLatencyThresholdNs: 10,
      flushLatencyThresholdUs: 2000,
      minShards: 1,
      maxShards: CPUS,
      cooldownMs: 5000,
      scaleDownDelayMs: 60000,
      underutilizedThreshold: 0.05,
      metricsWindowMs: 200,
      autoScale: true,
    });
  });

  it('highThroughput(cpus) and conservative(cpus) take a CPU count, as defaultForCpus does', () => {
    expect(ScalingPolicy.highThroughput(8)).toMatchObject({ minShards: 4, maxShards: 16 });
    expect(ScalingPolicy.highThroughput(1)).toMatchObject({ minShards: 1, maxShards: 2 });
    expect(ScalingPolicy.highThroughput(40000)).toMatchObject({ minShards: 4, maxShards: 65535 });
    expect(ScalingPolicy.conservative(8)).toMatchObject({ minShards: 1, maxShards: 8 });
    expect(ScalingPolicy.highThroughput(CPUS)).toEqual(ScalingPolicy.highThroughput());
    expect(ScalingPolicy.conservative(CPUS)).toEqual(ScalingPolicy.conservative());
    for (const cpus of [0, -1, 1.5, NaN, 65536]) {
      scalingError(() => ScalingPolicy.highThroughput(cpus), 'InvalidPolicy', /cpus must be an integer in \[1, 65535\]/);
      scalingError(() => ScalingPolicy.conservative(cpus), 'InvalidPolicy', /cpus must be an integer in \[1, 65535\]/);
    }
  });

  it('every preset validates, and each call returns a fresh object', () => {
    for (const make of [ScalingPolicy.default, ScalingPolicy.highThroughput, ScalingPolicy.conservative, () => ScalingPolicy.defaultForCpus(2)]) {
      const p = make();
      expect(() => ScalingPolicy.validate(p)).not.toThrow();
      p.cooldownMs = 12345;
      expect(make().cooldownMs).not.toBe(12345);
    }
  });
});

describe('ScalingPolicy.normalize', () => {
  it('raises maxShards to minShards, on a copy', () => {
    const p = { ...base(), minShards: 5, maxShards: 2 };
    const n = ScalingPolicy.normalize(p);
    expect(n.maxShards).toBe(5);
    expect(n.minShards).toBe(5);
    expect(n).not.toBe(p);
    expect(p.maxShards).toBe(2); // input untouched
    expect(() => ScalingPolicy.validate(n)).not.toThrow();
    expect(() => ScalingPolicy.validate(p)).toThrow(ScalingError);
  });

  it('leaves a consistent policy as it is', () => {
    const p = { ...base(), minShards: 2, maxShards: 8 };
    expect(ScalingPolicy.normalize(p)).toEqual(p);
  });
});

describe('ScalingPolicy.validate', () => {
  it('accepts the defaults and the accepted edge values of every field', () => {
    expect(() => ScalingPolicy.validate(base())).not.toThrow();
    for (const field of FIELDS) {
      for (const value of FIELD_CASES[field].good) {
        const p = { ...base(), [field]: value } as Policy;
        if (field === 'minShards') p.maxShards = Math.max(p.maxShards, value as number);
        expect(() => ScalingPolicy.validate(p), `${field} = ${String(value)}`).not.toThrow();
      }
    }
  });

  for (const field of FIELDS) {
    describe(field, () => {
      it.each([...COMMON_BAD, ...FIELD_CASES[field].bad])('refuses %s, naming the field', (_label, value) => {
        const p = { ...base(), [field]: value } as Policy;
        const error = scalingError(() => ScalingPolicy.validate(p), 'InvalidPolicy');
        expect(error.message).toContain(field);
      });

      it('refuses the field when it is missing', () => {
        const p = base() as unknown as Record<string, unknown>;
        delete p[field];
        const error = scalingError(() => ScalingPolicy.validate(p as unknown as Policy), 'InvalidPolicy');
        expect(error.message).toContain(field);
        expect(error.message).toMatch(/missing/);
      });

      it('refuses the field when it is explicitly undefined', () => {
        const p = { ...base(), [field]: undefined } as unknown as Policy;
        scalingError(() => ScalingPolicy.validate(p), 'InvalidPolicy', new RegExp(field));
      });
    });
  }

  it('refuses maxShards < minShards (validate does not normalize)', () => {
    const error = scalingError(() => ScalingPolicy.validate({ ...base(), minShards: 3, maxShards: 2 }), 'InvalidPolicy');
    expect(error.message).toContain('maxShards');
    expect(error.message).toContain('minShards');
  });

  it('refuses a policy that is not an object', () => {
    for (const p of [null, undefined, 3, 'policy']) scalingError(() => ScalingPolicy.validate(p as unknown as Policy), 'InvalidPolicy', /policy/);
  });
});

describe('constructors take a Partial<ScalingPolicy>', () => {
  it('missing fields take the defaults', async () => {
    const m = await ShardMapper.create(1, 16, { cooldownMs: 250, autoScale: false });
    expect(m.policy()).toEqual({ ...ScalingPolicy.default(), cooldownMs: 250, autoScale: false });
    const d = await ShardMapper.create(1, 16);
    expect(d.policy()).toEqual(ScalingPolicy.default());
    const e = await ShardMapper.create(1, 16, {});
    expect(e.policy()).toEqual(ScalingPolicy.default());
    // an explicitly undefined field is the same as a missing one
    const u = await ShardMapper.create(1, 16, { cooldownMs: undefined });
    expect(u.policy().cooldownMs).toBe(1000);
  });

  it('the sync constructor behaves the same', () => {
    const m = new ShardMapper(2, 16, { minShards: 2 });
    expect(m.policy()).toEqual({ ...ScalingPolicy.default(), minShards: 2, maxShards: Math.max(2, CPUS) });
    expect(m.activeShardCount()).toBe(2);
    scalingError(() => new ShardMapper(2, 16, { cooldownMs: NaN }), 'InvalidPolicy', /cooldownMs/);
  });

  it('policy() is frozen and normalized: maxShards raised to minShards and to initialShards', async () => {
    const a = await ShardMapper.create(1, 16, { minShards: 3, maxShards: 2 });
    expect(a.policy().maxShards).toBe(3);
    expect(Object.isFrozen(a.policy())).toBe(true);
    expect(() => {
      (a.policy() as Policy).maxShards = 99;
    }).toThrow(TypeError);
    expect(a.policy().maxShards).toBe(3);

    const b = await ShardMapper.create(7, 16, { minShards: 3, maxShards: 2 });
    expect(b.policy().maxShards).toBe(7);
    expect(b.policy().minShards).toBe(3);
    const c = await ShardMapper.create(5, 16, { maxShards: 10 });
    expect(c.policy().maxShards).toBe(10);
  });

  it('does not keep a reference to the caller object', async () => {
    const partial = { cooldownMs: 300 };
    const m = await ShardMapper.create(1, 16, partial);
    partial.cooldownMs = 1;
    expect(m.policy().cooldownMs).toBe(300);
  });

  for (const field of FIELDS) {
    it(`refuses a bad ${field} naming it`, async () => {
      const cases = [...COMMON_BAD, ...FIELD_CASES[field].bad].filter(([, v]) =>
        // maxShards below minShards is raised by normalize before validation (docs/CONTRACT.md §5), so
        // those values are accepted by constructors; see the next test.
        !(field === 'maxShards' && typeof v === 'number' && v < 1));
      expect(cases.length).toBeGreaterThan(0);
      for (const [label, value] of cases) {
        const policy = { [field]: value } as Partial<Policy>;
        const error = await scalingRejection(ShardMapper.create(1, 16, policy), 'InvalidPolicy');
        expect(error.message, `${field} = ${label}`).toContain(field);
      }
    });
  }

  it('maxShards below minShards (even 0 or -Infinity) is normalized up, not refused (docs/CONTRACT.md §5: normalize, then validate)', async () => {
    for (const maxShards of [0, -1, -Infinity]) {
      const m = await ShardMapper.create(2, 16, { maxShards, minShards: 1 });
      expect(m.policy().maxShards).toBe(2);
    }
  });

  it('refuses unknown keys, naming them', async () => {
    await scalingRejection(ShardMapper.create(1, 16, { cooldown: 5 } as unknown as Partial<Policy>), 'InvalidPolicy', /cooldown/);
    await scalingRejection(ShardMapper.create(1, 16, { maxshards: 5 } as unknown as Partial<Policy>), 'InvalidPolicy', /maxshards/);
    // names that exist on Object.prototype are not policy fields either
    for (const key of ['constructor', 'toString', 'hasOwnProperty', '__defineGetter__']) {
      await scalingRejection(ShardMapper.create(1, 16, { [key]: 5 } as unknown as Partial<Policy>), 'InvalidPolicy', new RegExp(key));
    }
  });

  it('refuses a policy that is not an object', async () => {
    for (const p of [null, 5, 'fast']) {
      await scalingRejection(ShardMapper.create(1, 16, p as unknown as Partial<Policy>), 'InvalidPolicy', /policy/);
    }
  });
});

describe('constructor arguments', () => {
  it.each([[-1], [1.5], [70000], [65536], ['3'], [NaN], [Infinity], [null]])('initialShards %s is refused, naming it', async (bad) => {
    const error = await scalingRejection(ShardMapper.create(bad as number, 16), 'InvalidPolicy');
    expect(error.message).toContain('initialShards');
    expect(() => new ShardMapper(bad as number, 16)).toThrow(/initialShards/);
  });

  it.each([[-1], [NaN], [1.5], [2 ** 32], ['16'], [Infinity], [undefined]])('ringBufferCapacity %s is refused, naming it', async (bad) => {
    const error = await scalingRejection(ShardMapper.create(1, bad as number), 'InvalidPolicy');
    expect(error.message).toContain('ringBufferCapacity');
    expect(() => new ShardMapper(1, bad as number)).toThrow(/ringBufferCapacity/);
  });

  it('accepts the edges: 0 initial shards, capacity 0 and 2^32-1', async () => {
    expect((await ShardMapper.create(0, 16)).activeShardCount()).toBe(0);
    expect((await ShardMapper.create(1, 0)).metricsCollector(0)!.capacity).toBe(0);
    expect((await ShardMapper.create(1, 2 ** 32 - 1)).metricsCollector(0)!.capacity).toBe(2 ** 32 - 1);
  });

  it('refuses bad options, naming them', async () => {
    await scalingRejection(ShardMapper.create(1, 16, {}, { clock: 5 as unknown as () => number }), 'InvalidPolicy', /clock/);
    await scalingRejection(ShardMapper.create(1, 16, {}, { drainGraceMs: -1 }), 'InvalidPolicy', /drainGraceMs/);
    await scalingRejection(ShardMapper.create(1, 16, {}, { drainGraceMs: NaN }), 'InvalidPolicy', /drainGraceMs/);
    await scalingRejection(ShardMapper.create(1, 16, {}, { drainGraceMs: '5' as unknown as number }), 'InvalidPolicy', /drainGraceMs/);
    await scalingRejection(ShardMapper.create(1, 16, {}, null as unknown as object), 'InvalidPolicy', /options/);
  });
});

describe('ScalingError', () => {
  it('is an Error with a name, a kind and the message', () => {
    const e = new ScalingError('InCooldown', 'wait');
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('ScalingError');
    expect(e.kind).toBe('InCooldown');
    expect(e.message).toBe('wait');
  });
});

describe('what a policy object may be', () => {
  it('any object of fields: a class instance, a null-prototype object (a module namespace is one), a frozen preset', async () => {
    class Tuned {
      maxShards = 6;
      get [Symbol.toStringTag]() { return 'Tuned'; }
    }
    const bare = Object.assign(Object.create(null), { maxShards: 5 });
    Object.defineProperty(bare, Symbol.toStringTag, { value: 'Module' });
    const frozen = Object.freeze({ ...ScalingPolicy.conservative(2), maxShards: 7 });
    expect((await ShardMapper.create(1, 8, new Tuned())).policy().maxShards).toBe(6);
    expect(new ShardMapper(1, 8, bare).policy().maxShards).toBe(5);
    expect(new ShardMapper(1, 8, frozen).policy().maxShards).toBe(7);
    expect(ScalingPolicy.normalize(frozen)).toMatchObject({ maxShards: 7 });
  });
});
