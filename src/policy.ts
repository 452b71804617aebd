// ScalingPolicy: a plain object type plus a namespace of presets and checks.
import { MAX_TIMER_MS, ScalingError, describe } from './errors.js';
import { cpuCount } from '#platform';

export interface ScalingPolicy {
  /** A shard whose ring is fuller than this (0..1] counts as overloaded. */
  fillRatioThreshold: number;
  /** Average push latency (contention, ns) above which a shard counts as overloaded. */
  pushLatencyThresholdNs: number;
  /** Average consumer batch time (µs) above which a shard counts as overloaded. */
  flushLatencyThresholdUs: number;
  minShards: number;
  maxShards: number;
  /** Minimum time between two scaling actions, and the warm-up of a new shard (ms). */
  cooldownMs: number;
  /** How long a shard must stay idle before it counts as underutilized (ms). */
  scaleDownDelayMs: number;
  /** Fill ratio under which an idle shard counts as underutilized. */
  underutilizedThreshold: number;
  /** Period of the manager's scaling loop (ms). */
  metricsWindowMs: number;
  /** When false, evaluateScaling always answers `none`. */
  autoScale: boolean;
}

const MAX_SHARDS_LIMIT = 65535;

function defaultForCpus(cpus: number): ScalingPolicy {
  return {
    fillRatioThreshold: 0.7,
    pushLatencyThresholdNs: 5,
    flushLatencyThresholdUs: 1000,
    minShards: 1,
    maxShards: cpus,
    cooldownMs: 1000,
    scaleDownDelayMs: 10000,
    underutilizedThreshold: 0.1,
    metricsWindowMs: 100,
    autoScale: true,
  };
}

function machineCpus(): number {
  return Math.max(1, Math.min(MAX_SHARDS_LIMIT, cpuCount()));
}

type Check = (v: unknown) => string | undefined;
const isNum = (v: unknown): v is number => typeof v === 'number';
const finiteIn =
  (lo: number, loOpen: boolean, hi: number): Check =>
  (v) =>
    !isNum(v) || !Number.isFinite(v) || (loOpen ? v <= lo : v < lo) || v > hi
      ? `must be a finite number in ${loOpen ? '(' : '['}${lo}, ${hi}]`
      : undefined;
const intMin =
  (lo: number): Check =>
  (v) =>
    !isNum(v) || !Number.isInteger(v) || v < lo ? `must be an integer >= ${lo}` : undefined;
const positive: Check = (v) => (!isNum(v) || !Number.isFinite(v) || v <= 0 ? 'must be a finite number > 0' : undefined);

const shardCount: Check = (v) => intMin(1)(v) ?? ((v as number) > MAX_SHARDS_LIMIT ? `must be <= ${MAX_SHARDS_LIMIT}` : undefined);

const FIELD_CHECKS: Record<keyof ScalingPolicy, Check> = {
  fillRatioThreshold: finiteIn(0, true, 1),
  pushLatencyThresholdNs: intMin(0),
  flushLatencyThresholdUs: intMin(0),
  // (minShards is checked first: normalize() may have raised maxShards to its value)
  minShards: shardCount,
  maxShards: shardCount,
  cooldownMs: positive,
  scaleDownDelayMs: positive,
  underutilizedThreshold: finiteIn(0, false, 1),
  // the manager's scaling loop runs on a timer of this period
  metricsWindowMs: (v) => positive(v) ?? ((v as number) > MAX_TIMER_MS ? `must be <= ${MAX_TIMER_MS} (a timer's limit)` : undefined),
  autoScale: (v) => (typeof v !== 'boolean' ? 'must be a boolean' : undefined),
};

/** The policy fields, in declaration order. */
export const POLICY_FIELDS = Object.keys(FIELD_CHECKS) as (keyof ScalingPolicy)[];

function validate(p: ScalingPolicy): void {
  checkPolicyObject(p);
  for (const field of POLICY_FIELDS) {
    const value = (p as unknown as Record<string, unknown>)[field];
    const problem = value === undefined ? 'is missing' : FIELD_CHECKS[field](value);
    if (problem) throw new ScalingError('InvalidPolicy', `policy.${field} ${problem}, got ${describe(value)}`);
  }
  if (p.maxShards < p.minShards) {
    throw new ScalingError('InvalidPolicy', `policy.maxShards (${p.maxShards}) must be >= policy.minShards (${p.minShards})`);
  }
}

/** A policy is an object of fields: an array, a Date, a string... would read as "all defaults".
 *  (Any other object may be one: a class instance, a module namespace, a frozen preset.) */
function checkPolicyObject(p: unknown): void {
  if (
    typeof p !== 'object' ||
    p === null ||
    Array.isArray(p) ||
    ArrayBuffer.isView(p) ||
    p instanceof Date ||
    p instanceof Map ||
    p instanceof Set ||
    p instanceof RegExp
  ) {
    throw new ScalingError('InvalidPolicy', `policy must be an object, got ${describe(p)}`);
  }
}

function normalize(p: ScalingPolicy): ScalingPolicy {
  checkPolicyObject(p);
  const copy = { ...p };
  // Only numbers are raised: anything else is left for validate() to name.
  if (isNum(copy.maxShards) && isNum(copy.minShards) && copy.maxShards < copy.minShards) copy.maxShards = copy.minShards;
  return copy;
}

/** Defaults filled in under a partial policy (unknown keys are refused). */
export function completePolicy(partial: Partial<ScalingPolicy> | undefined, cpus = machineCpus()): ScalingPolicy {
  if (partial === undefined) return defaultForCpus(cpus);
  checkPolicyObject(partial);
  for (const key of Object.keys(partial)) {
    // own keys only: 'constructor', 'toString'... are found by `in` on the prototype
    if (!Object.hasOwn(FIELD_CHECKS, key))
      throw new ScalingError('InvalidPolicy', `policy.${key} is not a policy field (known: ${POLICY_FIELDS.join(', ')})`);
  }
  const out = defaultForCpus(cpus) as unknown as Record<string, unknown>;
  for (const [key, value] of Object.entries(partial)) if (value !== undefined) out[key] = value;
  return out as unknown as ScalingPolicy;
}

/** A CPU count given to a preset: an integer in [1, 65535]. */
function checkCpus(cpus: number): number {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_SHARDS_LIMIT) {
    throw new ScalingError('InvalidPolicy', `cpus must be an integer in [1, ${MAX_SHARDS_LIMIT}], got ${describe(cpus)}`);
  }
  return cpus;
}

export const ScalingPolicy = {
  /** The defaults, with maxShards = this machine's CPU count. */
  default(): ScalingPolicy {
    return defaultForCpus(machineCpus());
  },
  defaultForCpus(cpus: number): ScalingPolicy {
    return defaultForCpus(checkCpus(cpus));
  },
  /** Scale out early and often: many producers, bursts, latency matters most. `cpus`
   *  (default: this machine's count) sets minShards min(4, cpus) and maxShards min(2 × cpus, 65535). */
  highThroughput(cpus?: number): ScalingPolicy {
    cpus = cpus === undefined ? machineCpus() : checkCpus(cpus);
    return {
      fillRatioThreshold: 0.6,
      pushLatencyThresholdNs: 3,
      flushLatencyThresholdUs: 500,
      minShards: Math.min(4, cpus),
      maxShards: Math.min(2 * cpus, MAX_SHARDS_LIMIT),
      cooldownMs: 500,
      scaleDownDelayMs: 30000,
      underutilizedThreshold: 0.05,
      metricsWindowMs: 50,
      autoScale: true,
    };
  },
  /** Scale rarely: steady load, shards that are costly to start or stop. `cpus` (default:
   *  this machine's count) is its maxShards. */
  conservative(cpus?: number): ScalingPolicy {
    cpus = cpus === undefined ? machineCpus() : checkCpus(cpus);
    return {
      fillRatioThreshold: 0.8,
      pushLatencyThresholdNs: 10,
      flushLatencyThresholdUs: 2000,
      minShards: 1,
      maxShards: cpus,
      cooldownMs: 5000,
      scaleDownDelayMs: 60000,
      underutilizedThreshold: 0.05,
      metricsWindowMs: 200,
      autoScale: true,
    };
  },
  /** A copy with maxShards raised to minShards if it was lower. */
  normalize,
  /** Throws ScalingError('InvalidPolicy') naming the first field that is wrong. */
  validate,
};

/** The policy a mapper runs with: defaults filled in, normalized, maxShards raised to
 *  initialShards, validated. */
export function resolvePolicy(partial: Partial<ScalingPolicy> | undefined, initialShards: number): ScalingPolicy {
  const full = normalize(completePolicy(partial));
  if (isNum(full.maxShards) && full.maxShards < initialShards) full.maxShards = initialShards;
  validate(full);
  return full;
}
