export type ScalingErrorKind = 'InvalidPolicy' | 'AtMaxShards' | 'AtMinShards' | 'InCooldown' | 'ShardCreationFailed';

/** A scaling call that was refused. Nothing was changed when one is thrown. */
export class ScalingError extends Error {
  readonly kind: ScalingErrorKind;
  constructor(kind: ScalingErrorKind, message: string) {
    super(message);
    this.name = 'ScalingError';
    this.kind = kind;
  }
}

/**
 * A push refused under the `failProducer` backpressure mode: the target ring was full
 * (`reason: 'full'`), or, with routing 'affinity', the key's slot just moved to this shard
 * and its new events wait until the shard it left delivered the earlier ones
 * (`reason: 'moving'`). Retry either the same way.
 */
export class BackpressureError extends Error {
  readonly shardId: number;
  /** For `pushBatch`: how many events of the batch were accepted before this one. */
  readonly accepted: number;
  readonly reason: 'full' | 'moving';
  constructor(message: string, shardId: number, accepted = 0, reason: 'full' | 'moving' = 'full') {
    super(message);
    this.name = 'BackpressureError';
    this.shardId = shardId;
    this.accepted = accepted;
    this.reason = reason;
  }
}

/** Longest delay setTimeout / setInterval keep (a longer one is cut to 1 ms and fires at once). */
export const MAX_TIMER_MS = 0x7fffffff;

/** Shorthand for an argument error (kind InvalidPolicy), which always names the argument. */
export function invalid(message: string): ScalingError {
  return new ScalingError('InvalidPolicy', message);
}

export function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'bigint') return `${value}n`;
  if (value === null || value === undefined || typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (typeof value === 'object') {
    // Name the kind a user would recognise: "an Array", "a Uint32Array", "an object".
    const kind = Array.isArray(value)
      ? 'Array'
      : (Object.getPrototypeOf(value) as { constructor?: { name?: string } } | null)?.constructor?.name;
    return kind && kind !== 'Object' ? withArticle(kind) : 'an object';
  }
  return withArticle(typeof value);
}

function withArticle(word: string): string {
  return `${/^[aeiouAEIOU]/.test(word) ? 'an' : 'a'} ${word}`;
}

/** An integer count or id in [min, max], or a ScalingError naming `name`. */
export function checkInteger(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalid(`${name} must be an integer in [${min}, ${max}], got ${describe(value)}`);
  }
  return value;
}

/** An option's value, or `fallback` when it is absent (null is a value, refused by the checks). */
export function given<T>(value: T | undefined, fallback: T): T {
  return value === undefined ? fallback : value;
}

/** A finite number ≥ min (or > min when `exclusive`), as options of durations are. */
export function checkFinite(name: string, value: unknown, min: number, exclusive = false): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || (exclusive ? value <= min : value < min)) {
    throw invalid(`${name} must be a finite number ${exclusive ? '>' : '>='} ${min}, got ${describe(value)}`);
  }
  return value;
}

export function checkFunction<F>(name: string, value: F): F {
  if (typeof value !== 'function') throw invalid(`${name} must be a function, got ${describe(value)}`);
  return value;
}

/** options.clock: a function that answers a finite number of ms. Asked once here: a clock
 *  that answers anything else would silently turn cooldowns and windows off. */
export function checkClock(name: string, value: unknown): () => number {
  const clock = checkFunction(name, value) as () => number;
  const now = clock();
  if (typeof now !== 'number' || !Number.isFinite(now))
    throw invalid(`${name} must return a finite number of ms, returned ${describe(now)}`);
  return clock;
}

/** A push or an operator call on a ShardManager (or Redis node) after close(). */
export class ManagerClosedError extends Error {
  constructor(method = 'push') {
    super(`shard-mapper: ${method}: the manager is closed`);
    this.name = 'ManagerClosedError';
  }
}

/** A ShardProducer was used after its detach(): its lane may already be another thread's. */
export class ProducerDetachedError extends Error {
  constructor(method = 'push') {
    super(
      `shard-mapper: ShardProducer.${method}: this producer was detached (its lane was given back); attach again with ShardProducer.attach(handle)`,
    );
    this.name = 'ProducerDetachedError';
  }
}

/** close({ timeoutMs }) ran out of time. ShardManager: the consumer threads were ended with
 *  `undelivered` accepted events still in the rings, where poll() can still read them.
 *  RedisShardManager: the node was closed with `undelivered` accepted events never stored in
 *  Redis (Redis away); they are lost. */
export class CloseTimeoutError extends Error {
  /** Accepted events the close gave up on. ShardManager: left in the rings (poll() still
   *  reads them). RedisShardManager: never stored in Redis, and lost with the node. */
  readonly undelivered: number;
  constructor(timeoutMs: number, undelivered: number, message?: string) {
    super(
      message ??
        `shard-mapper: close: the consumer threads did not take every event within ${timeoutMs} ms; they were ended with ${undelivered} accepted event(s) undelivered, still in the rings (poll() reads them)`,
    );
    this.name = 'CloseTimeoutError';
    this.undelivered = undelivered;
  }
}
