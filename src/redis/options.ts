// A Redis node's options: what each means, its default, and the checks that refuse a bad one
// before anything is connected or written (the ones that need the namespace's stored table
// are here too, as plain functions of it). The checks shared with ShardManager are in
// src/validate.ts, so both refuse a bad value with the same words.
import { MAX_TIMER_MS, checkClock, checkFinite, checkFunction, checkInteger, describe, given, invalid } from '../errors.js';
import { POLICY_FIELDS, resolvePolicy, type ScalingPolicy } from '../policy.js';
import type { BackpressureMode, ManagerEvent } from '../types.js';
import { checkBackpressure, checkKnownKeys, checkMaxPayloadBytes, checkOptionalBoolean } from '../validate.js';
import type { RedisOption } from './connection.js';
import type { RedisNodeEvent } from './controller.js';
import { checkNamespace } from './keys.js';
import { checkRoutingOptions, type RoutingMode, type TableDoc } from './table.js';

export interface RedisShardManagerOptions {
  /** A redis:// URL (the node opens its own connections), or an ioredis Redis / Cluster instance. */
  redis: RedisOption;
  /** Names the shard table, its streams and counters: nodes and consumers of one namespace work together. */
  namespace: string;
  /** Shards created with the namespace (default 1). Ignored when the namespace exists. */
  initialShards?: number;
  /** The namespace's policy (metricsWindowMs in whole ms). Given to a node joining an existing
   *  namespace, the fields given must equal the stored ones; the rest is the namespace's. */
  policy?: Partial<ScalingPolicy>;
  /** How a new namespace spreads hashes over its shards (default 'balanced', as ShardManager's).
   *  Given to a node joining an existing namespace, it must equal the stored one; left out,
   *  the node adopts it. */
  routing?: RoutingMode;
  loadBound?: number;
  /** Keep each key's push order across moves of its slot (routing 'affinity' only; default
   *  true there). A moved slot's new events are held in this node until the old shard's
   *  consumers acknowledged what this node sent it before the move. `false`: per-shard
   *  order only. `true` with another routing is refused. */
  keyOrder?: boolean;
  /** What push does when a shard's local send buffer is full (default failProducer). */
  backpressure?: BackpressureMode;
  /** Largest event payload (default 256 bytes, at most 16 MiB). */
  maxPayloadBytes?: number;
  /** Events per shard this node holds before they are stored (the local send buffer, default
   *  65536); also, for a new namespace, the backlog that counts as a full shard. */
  ringBufferCapacity?: number;
  /** Payload bytes per shard this node holds before they are stored (the send buffer's byte
   *  bound, at least maxPayloadBytes; default ringBufferCapacity × maxPayloadBytes, which only
   *  the record bound can reach). A push that would pass it meets backpressure as a full
   *  buffer does; dropOldest evicts the oldest unsent events until the new one fits. */
  ringBufferBytes?: number;
  /** A frame is closed when it reaches this many bytes (default 65536). */
  maxFrameBytes?: number;
  /** How long the first event of an idle node waits for company before it is sent (ms, default 1). */
  lingerMs?: number;
  /** Controller lease (whole ms, default max(1000, 5 × the namespace's metricsWindowMs));
   *  renewed every metricsWindowMs, so it must be longer than that. */
  leaseMs?: number;
  /** A draining shard must see no append for this long before it stops (ms, default 1000). */
  drainGraceMs?: number;
  /** Whether this node may become the controller (default true). */
  controller?: boolean;
  clock?: () => number;
  /** Lifecycle transitions and scaling decisions (emitted by the node that is the controller
   *  when they happen), exactly ShardManager's ManagerEvent: the Prometheus exporter's
   *  `onEvent` counts them. */
  onEvent?: (event: ManagerEvent) => void;
  /** The controller lease changing hands on this node, and Redis failures. */
  onRedisEvent?: (event: RedisNodeEvent) => void;
  /** How long create() waits for Redis's first answer before it fails naming the address
   *  (ms, default 10000); later, a command unanswered this long (a frozen server) is
   *  reported once as a redisError, and waits on. */
  connectTimeoutMs?: number;
}

/** The options checked, defaults applied (those that need the namespace's table excepted). */
export interface NodeSettings {
  namespace: string;
  initialShards: number;
  /** The policy as given, resolved (a new namespace's; an existing one's is stored). */
  policy: ScalingPolicy;
  routing: RoutingMode;
  loadBound: number;
  /** undefined: the namespace's routing decides (on with 'affinity'). */
  keyOrder: boolean | undefined;
  backpressure: BackpressureMode;
  maxPayload: number;
  capacity: number;
  capacityBytes: number;
  maxFrameBytes: number;
  lingerMs: number;
  /** undefined: leaseFor() the namespace's window. */
  leaseGiven: number | undefined;
  drainGraceMs: number;
  controller: boolean;
  clock: () => number;
  connectTimeoutMs: number;
}

/** How long create() and serveShardConsumers() wait for Redis's first answer, and how long
 *  a command may go unanswered before that is reported (ms; options.connectTimeoutMs). */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** Every option RedisShardManager.create reads (the Record type keeps the list complete). */
const NODE_OPTIONS: Record<keyof RedisShardManagerOptions, true> = {
  redis: true,
  namespace: true,
  initialShards: true,
  policy: true,
  routing: true,
  loadBound: true,
  keyOrder: true,
  backpressure: true,
  maxPayloadBytes: true,
  ringBufferCapacity: true,
  ringBufferBytes: true,
  maxFrameBytes: true,
  lingerMs: true,
  leaseMs: true,
  drainGraceMs: true,
  controller: true,
  clock: true,
  onEvent: true,
  onRedisEvent: true,
  connectTimeoutMs: true,
};

/** Check every option that can be checked alone, in the order the errors name them. */
export function checkNodeOptions(options: RedisShardManagerOptions): NodeSettings {
  if (typeof options !== 'object' || options === null) throw invalid(`options must be an object, got ${describe(options)}`);
  checkKnownKeys('options', options, NODE_OPTIONS);
  const namespace = checkNamespace(options.namespace);
  const initialShards = checkInteger('options.initialShards', given(options.initialShards, 1), 0, 0xfffe);
  const policy = resolvePolicy(options.policy, initialShards);
  // The window sets the default lease, which Redis takes in whole ms (SET … PX), and the
  // window timer; a fraction would fail every SET, so no node would ever be the controller.
  checkWindow(policy.metricsWindowMs);
  const { routing, loadBound } = checkRoutingOptions(options.routing, options.loadBound);
  const keyOrder = checkOptionalBoolean('options.keyOrder', options.keyOrder);
  if (keyOrder === true && options.routing !== undefined && routing !== 'affinity') {
    throw invalid(
      `options.keyOrder: true needs routing 'affinity' (key order across moves follows a key's slot), got routing '${routing}'`,
    );
  }
  const backpressure = checkBackpressure(given(options.backpressure, { kind: 'failProducer' }));
  const maxPayload = checkMaxPayloadBytes(options.maxPayloadBytes);
  const capacity = checkInteger('options.ringBufferCapacity', given(options.ringBufferCapacity, 65536), 1, 1 << 24);
  const capacityBytes = checkInteger(
    'options.ringBufferBytes',
    given(options.ringBufferBytes, capacity * maxPayload),
    maxPayload,
    Number.MAX_SAFE_INTEGER,
  );
  const maxFrameBytes = checkInteger('options.maxFrameBytes', given(options.maxFrameBytes, 65536), 64, 64 * 1024 * 1024);
  const lingerMs = checkFinite('options.lingerMs', given(options.lingerMs, 1), 0);
  const leaseGiven =
    options.leaseMs === undefined ? undefined : checkInteger('options.leaseMs', options.leaseMs, 1, Number.MAX_SAFE_INTEGER);
  if (leaseGiven !== undefined && options.policy?.metricsWindowMs !== undefined) checkLease(leaseGiven, policy.metricsWindowMs);
  const drainGraceMs = checkFinite('options.drainGraceMs', given(options.drainGraceMs, 1000), 0);
  const controller = checkOptionalBoolean('options.controller', options.controller) ?? true;
  const clock = options.clock === undefined ? () => performance.now() : checkClock('options.clock', options.clock);
  for (const name of ['onEvent', 'onRedisEvent'] as const) {
    if (options[name] !== undefined) checkFunction(`options.${name}`, options[name]);
  }
  const connectTimeoutMs = checkConnectTimeout(options.connectTimeoutMs);
  return {
    namespace,
    initialShards,
    policy,
    routing,
    loadBound,
    keyOrder,
    backpressure,
    maxPayload,
    capacity,
    capacityBytes,
    maxFrameBytes,
    lingerMs,
    leaseGiven,
    drainGraceMs,
    controller,
    clock,
    connectTimeoutMs,
  };
}

/** options.connectTimeoutMs of a node or of serveShardConsumers (whole ms a timer keeps). */
export function checkConnectTimeout(value: unknown): number {
  return checkInteger('options.connectTimeoutMs', given(value, DEFAULT_CONNECT_TIMEOUT_MS), 1, MAX_TIMER_MS);
}

/** A window in whole ms that a timer keeps. */
function checkWindow(windowMs: number): void {
  if (!Number.isInteger(windowMs) || windowMs > MAX_TIMER_MS) {
    throw invalid(
      `policy.metricsWindowMs must be a whole number of milliseconds in [1, ${MAX_TIMER_MS}] for a Redis node (the controller lease, SET … PX, is set from it), got ${describe(windowMs)}`,
    );
  }
}

export function checkLease(leaseMs: number, windowMs: number): void {
  if (leaseMs <= windowMs)
    throw invalid(
      `options.leaseMs must be longer than policy.metricsWindowMs (${windowMs}): the lease is renewed once a window, got ${leaseMs}`,
    );
}

/** The lease a node takes for a window: the one given, or max(1000, 5 windows) in whole ms. */
export function leaseFor(given: number | undefined, windowMs: number): number {
  return given ?? Math.ceil(Math.max(1000, 5 * windowMs));
}

/** keyOrder: true given without a routing: the namespace's routing (`stored`; the default
 *  for a new namespace) must be 'affinity'. */
export function checkKeyOrderRouting(settings: NodeSettings, stored: RoutingMode | undefined): void {
  const routing = stored ?? settings.routing;
  if (routing !== 'affinity') {
    throw invalid(
      `options.keyOrder: true needs routing 'affinity' (key order across moves follows a key's slot), namespace "${settings.namespace}" routes with '${routing}'`,
    );
  }
}

/** A node that states a policy, routing or loadBound must agree with the namespace it joins. */
export function checkAgainstNamespace(settings: NodeSettings, options: RedisShardManagerOptions, doc: TableDoc): void {
  const ns = settings.namespace;
  if (options.policy !== undefined) {
    const diff = policyDiff(doc.policy, settings.policy, options.policy);
    if (diff.length > 0)
      throw invalid(
        `namespace "${ns}" already runs with another policy: ${diff.join('; ')}. Give the same policy, or none to adopt the stored one`,
      );
  }
  if (options.routing !== undefined && doc.routing !== settings.routing) {
    throw invalid(`namespace "${ns}" already routes with '${doc.routing}', this node was given '${settings.routing}'`);
  }
  if (options.loadBound !== undefined && doc.loadBound !== settings.loadBound) {
    throw invalid(`namespace "${ns}" already has loadBound ${doc.loadBound}, this node was given ${settings.loadBound}`);
  }
}

/** The fields the user gave (as resolved: defaults and raises applied alike) that differ
 *  from the stored policy. Fields not given are the namespace's to set, not this machine's. */
function policyDiff(stored: ScalingPolicy, resolved: ScalingPolicy, given: Partial<ScalingPolicy>): string[] {
  return POLICY_FIELDS.filter((f) => given[f] !== undefined && stored[f] !== resolved[f]).map(
    (f) => `${f} ${String(stored[f])} (stored) vs ${String(resolved[f])} (given)`,
  );
}
