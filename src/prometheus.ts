// 'shard-mapper/prometheus': publish a ShardManager's figures to a prom-client Registry.
//
// prom-client is an optional peer dependency: only this subpath imports it, never the
// package root. Gauges and totals are read when the registry is scraped (prom-client
// `collect()` callbacks), so every scrape sees fresh values and nothing runs between scrapes.
// Scraping only reads: it never calls collectMetrics(), so it does not disturb the scaling
// windows. Lifecycle and scaling events are counted as they happen, through `onEvent`.
import { Counter, Gauge, register as defaultRegistry, type Registry } from 'prom-client';
import type { ManagerEvent, ObservedManager } from './types.js';
import type { ScalingDecision } from './mapper.js';
import { describe } from './errors.js';
import { checkKnownKeys } from './validate.js';

export type { ObservedManager };

export interface PrometheusOptions {
  /** Where to register (default: prom-client's global `register`). */
  registry?: Registry;
  /** Prefix of every metric name (default `shard_mapper_`). */
  prefix?: string;
  /** Constant labels added to every series, e.g. `{ manager: 'ingest' }`. */
  labels?: Record<string, string>;
  /** The manager to read; or call `observe(manager)` later (the manager wants `onEvent` first). */
  manager?: ObservedManager;
}

export interface ShardManagerMetrics {
  /**
   * Counts lifecycle transitions, scaling decisions, consumer errors and restarts. Pass it
   * as (or call it from) the manager's `options.onEvent`.
   */
  readonly onEvent: (event: ManagerEvent) => void;
  /** Read this manager at every scrape (replaces a manager observed before). */
  observe(manager: ObservedManager): void;
  /** Remove every metric this call registered from the registry. */
  unregister(): void;
  /** The full names of the registered metrics. */
  readonly names: readonly string[];
}

const STATES = ['provisioning', 'active', 'draining', 'stopped'] as const;
const DROP_REASONS = ['newest', 'oldest', 'sampled', 'refused', 'moving'] as const;
const TRANSITIONS: Record<string, string> = {
  shardProvisioned: 'provisioned',
  shardActivated: 'activated',
  shardDraining: 'draining',
  shardStopped: 'stopped',
  shardRemoved: 'removed',
};

/** Every option registerShardManagerMetrics reads (the Record type keeps the list complete). */
const OPTIONS: Record<keyof PrometheusOptions, true> = { registry: true, prefix: true, labels: true, manager: true };
/** Label names the series use themselves: a constant label of the same name would be overwritten. */
const SERIES_LABELS = new Set(['shard', 'state', 'reason', 'direction', 'decision', 'transition']);
const WHERE = 'registerShardManagerMetrics';

/** Checked when registering, not at the first scrape (where an error is far from its cause). */
function checkOptions(options: PrometheusOptions): void {
  if (typeof options !== 'object' || options === null) throw new TypeError(`${WHERE}: options must be an object, got ${describe(options)}`);
  checkKnownKeys(`${WHERE}: options`, options, OPTIONS, (message) => new TypeError(message)); // as its other option errors
  const { registry, prefix, labels, manager } = options;
  if (registry !== undefined && (typeof registry !== 'object' || registry === null || typeof registry.registerMetric !== 'function'))
    throw new TypeError(`${WHERE}: options.registry must be a prom-client Registry, got ${describe(registry)}`);
  if (prefix !== undefined && (typeof prefix !== 'string' || !/^[a-zA-Z_:][a-zA-Z0-9_:]*$|^$/.test(prefix)))
    throw new TypeError(
      `${WHERE}: options.prefix must be a string of metric-name characters ([a-zA-Z_:][a-zA-Z0-9_:]*), got ${describe(prefix)}`,
    );
  if (labels !== undefined) {
    if (typeof labels !== 'object' || labels === null)
      throw new TypeError(`${WHERE}: options.labels must be an object of strings, got ${describe(labels)}`);
    for (const [name, value] of Object.entries(labels)) {
      if (SERIES_LABELS.has(name))
        throw new TypeError(
          `${WHERE}: options.labels.${name} is a label the series use themselves (${[...SERIES_LABELS].join(', ')}): pick another name`,
        );
      if (typeof value !== 'string') throw new TypeError(`${WHERE}: options.labels.${name} must be a string, got ${describe(value)}`);
    }
  }
  if (manager !== undefined) checkObserved('options.manager', manager);
}

function checkObserved(name: string, m: unknown): void {
  const o = m as Partial<ObservedManager> | null;
  if (typeof o !== 'object' || o === null || typeof o.stats !== 'function' || typeof o.mapper?.lastMetrics !== 'function')
    throw new TypeError(`${WHERE}: ${name} must be a ShardManager (or a Redis node's metricsView()), got ${describe(m)}`);
}

/**
 * Register gauges and counters for a ShardManager on a prom-client registry.
 *
 * ```ts
 * import { Registry } from 'prom-client';
 * import { registerShardManagerMetrics } from 'shard-mapper/prometheus';
 * const registry = new Registry();
 * const metrics = registerShardManagerMetrics({ registry });
 * const manager = await ShardManager.create({ initialShards: 2, ringBufferCapacity: 1024, onEvent: metrics.onEvent });
 * metrics.observe(manager);
 * // GET /metrics → await registry.metrics()
 * ```
 *
 * Series (with the default prefix `shard_mapper_`): per shard (label `shard`) its state, ring
 * length and fill, window figures and totals; per manager the shard counts and bounds, event
 * totals (`events_dropped_total` by `reason`), key-order gauges; from `onEvent`, scaling
 * decisions, transitions, consumer errors, restarts and rewinds. The full table, with each
 * series' type, labels and source, is `docs/observability.md` (shipped in the package);
 * `names` lists what a registration made.
 *
 * One manager per call; for several, use one registry each (or distinct `prefix`/`labels`
 * on separate registries merged with `Registry.merge`).
 */
export function registerShardManagerMetrics(options: PrometheusOptions = {}): ShardManagerMetrics {
  checkOptions(options);
  const registry = options.registry ?? defaultRegistry;
  const prefix = options.prefix ?? 'shard_mapper_';
  const constant = { ...(options.labels ?? {}) };
  const constantNames = Object.keys(constant);
  let manager: ObservedManager | undefined = options.manager;
  const names: string[] = [];

  const labelled = <T extends Record<string, string | number>>(labels: T) => ({ ...constant, ...labels });

  function gauge(name: string, help: string, labelNames: string[], collect: (g: Gauge<string>, m: ObservedManager) => void): Gauge<string> {
    const full = prefix + name;
    names.push(full);
    return new Gauge({
      name: full,
      help,
      labelNames: [...constantNames, ...labelNames],
      registers: [registry],
      collect() {
        this.reset(); // shards come and go: drop series of removed shards
        if (manager) collect(this, manager);
      },
    });
  }

  /** A counter mirroring a monotonic total the manager keeps (set at every scrape). */
  function mirror(
    name: string,
    help: string,
    labelNames: string[],
    collect: (set: (labels: Record<string, string>, v: number) => void, m: ObservedManager) => void,
  ): Counter<string> {
    const full = prefix + name;
    names.push(full);
    return new Counter({
      name: full,
      help,
      labelNames: [...constantNames, ...labelNames],
      registers: [registry],
      collect() {
        this.reset();
        if (manager) collect((labels, v) => this.inc(labelled(labels), v), manager);
      },
    });
  }

  function counter(name: string, help: string, labelNames: string[]): Counter<string> {
    const full = prefix + name;
    names.push(full);
    return new Counter({ name: full, help, labelNames: [...constantNames, ...labelNames], registers: [registry] });
  }

  // Per shard: live figures from stats(), window figures from the last collection.
  gauge('shard_state', 'Shard lifecycle state (1 for the current state).', ['shard', 'state'], (g, m) => {
    for (const s of m.stats().shards) {
      for (const state of STATES) g.set(labelled({ shard: String(s.id), state }), s.state === state ? 1 : 0);
    }
  });
  gauge('shard_ring_length', 'Records in the shard ring (accepted, not yet acknowledged).', ['shard'], (g, m) => {
    for (const s of m.stats().shards) g.set(labelled({ shard: String(s.id) }), s.length);
  });
  gauge(
    'shard_fill_ratio',
    'Ring length / ring capacity, or payload bytes held / ring bytes when larger, at scrape time.',
    ['shard'],
    (g, m) => {
      const bytes = m.ringBufferBytes;
      for (const s of m.stats().shards) {
        g.set(labelled({ shard: String(s.id) }), Math.max(s.length / m.ringCapacity, bytes ? (s.bytes ?? 0) / bytes : 0));
      }
    },
  );
  const windowGauge = (
    name: string,
    help: string,
    pick: (x: NonNullable<ReturnType<ObservedManager['mapper']['lastMetrics']>>) => number,
  ) =>
    gauge(name, help, ['shard'], (g, m) => {
      for (const s of m.stats().shards) {
        const last = m.mapper.lastMetrics(s.id);
        if (last) g.set(labelled({ shard: String(s.id) }), pick(last));
      }
    });
  windowGauge('shard_event_rate', 'Events recorded in the last metrics window.', (x) => x.eventRate);
  windowGauge('shard_avg_push_latency_ns', 'Average sampled push latency in the last metrics window (ns).', (x) => x.avgPushLatencyNs);
  windowGauge('shard_avg_flush_latency_us', 'Average consumer batch time in the last metrics window (µs).', (x) => x.avgFlushLatencyUs);
  windowGauge('shard_weight', 'Routing weight at the last collection (lower is preferred).', (x) =>
    x.weight === Number.MAX_VALUE ? Infinity : x.weight,
  );
  mirror('shard_pushed_total', 'Events accepted into this shard.', ['shard'], (set, m) => {
    for (const s of m.stats().shards) set({ shard: String(s.id) }, s.pushed);
  });
  mirror('shard_delivered_total', 'Events of this shard acknowledged by a consumer.', ['shard'], (set, m) => {
    for (const s of m.stats().shards) set({ shard: String(s.id) }, s.delivered);
  });
  mirror('shard_dropped_total', 'Events this shard dropped under backpressure.', ['shard'], (set, m) => {
    for (const s of m.stats().shards) set({ shard: String(s.id) }, s.dropped);
  });

  // Shard counts and bounds.
  gauge('shards', 'Shards in each lifecycle state.', ['state'], (g, m) => {
    const counts: Record<string, number> = { provisioning: 0, active: 0, draining: 0, stopped: 0 };
    for (const s of m.stats().shards) counts[s.state] = (counts[s.state] ?? 0) + 1;
    for (const state of STATES) g.set(labelled({ state }), counts[state]!);
  });
  gauge('shards_min', 'policy.minShards.', [], (g, m) => g.set(labelled({}), m.mapper.policy().minShards));
  gauge('shards_max', 'policy.maxShards.', [], (g, m) => g.set(labelled({}), m.mapper.policy().maxShards));
  gauge('ring_capacity', 'Records per shard ring.', [], (g, m) => g.set(labelled({}), m.ringCapacity));
  gauge(
    'shard_ids_left',
    'New shard ids left: ids are never reused and stop at 65534; at 0 the shard count can only go down.',
    [],
    (g, m) => {
      const left = m.mapper.shardIdsLeft?.();
      if (left !== undefined) g.set(labelled({}), left);
    },
  );

  // Totals since the manager was created (they never go down when shards are removed).
  mirror('events_pushed_total', 'Events accepted into a ring.', [], (set, m) => set({}, m.stats().pushed));
  mirror('events_delivered_total', 'Events acknowledged by a consumer (or returned by poll).', [], (set, m) =>
    set({}, m.stats().delivered),
  );
  mirror('events_unrouted_total', 'Pushes made while no shard was Active.', [], (set, m) => set({}, m.stats().unrouted));
  mirror(
    'events_dropped_total',
    'Events dropped by backpressure, by reason; reason "refused" counts pushes failProducer refused (the caller kept them: not in stats().dropped).',
    ['reason'],
    (set, m) => {
      const drops = m.stats().drops;
      for (const reason of DROP_REASONS) set({ reason }, drops[reason] ?? 0);
    },
  );
  gauge('events_in_flight', 'Accepted events still in rings.', [], (g, m) => g.set(labelled({}), m.stats().inFlight));
  // Key order across moves (routing 'affinity'; zeros in the other modes).
  gauge(
    'key_order_waiting_slots',
    "Table slots that moved to another shard and whose new events still wait for the old shard's consumer (routing affinity).",
    [],
    (g, m) => {
      g.set(labelled({}), m.stats().keyOrder?.waitingSlots ?? 0);
    },
  );
  gauge('key_order_oldest_wait_seconds', 'How long the slot waiting longest now has waited.', [], (g, m) =>
    g.set(labelled({}), (m.stats().keyOrder?.oldestWaitMs ?? 0) / 1000),
  );
  gauge('key_order_longest_wait_seconds', 'The longest wait of a moved slot seen so far.', [], (g, m) =>
    g.set(labelled({}), (m.stats().keyOrder?.longestWaitMs ?? 0) / 1000),
  );
  mirror('key_order_moved_slots_total', "Table slots moved to another shard with a wait for the old shard's consumer.", [], (set, m) =>
    set({}, m.stats().keyOrder?.movedSlots ?? 0),
  );
  gauge(
    'shard_slots_moving',
    'Per shard: moved slots still waiting for its consumer (direction out), or moved to it and waiting (in).',
    ['shard', 'direction'],
    (g, m) => {
      for (const sh of m.stats().shards) {
        g.set(labelled({ shard: String(sh.id), direction: 'out' }), sh.movingOut ?? 0);
        g.set(labelled({ shard: String(sh.id), direction: 'in' }), sh.movingIn ?? 0);
      }
    },
  );
  mirror(
    'records_skipped_total',
    'Records a producer reserved and never wrote (its thread died inside a batch), skipped as padding.',
    [],
    (set, m) => set({}, m.stats().skipped),
  );

  // Counted as they happen.
  const decisions = counter('scaling_decisions_total', 'Scaling decisions other than none, by kind.', ['decision']);
  const decidedShards = counter('scaling_shards_total', 'Shards asked for by scaling decisions, by kind.', ['decision']);
  const transitions = counter('shard_transitions_total', 'Shard lifecycle transitions.', ['transition']);
  const consumerErrors = counter('consumer_errors_total', 'Consumer batches that threw (each is retried).', []);
  const consumerRestarts = counter('consumer_restarts_total', 'Consumer workers replaced after they exited.', []);
  const rewound = counter(
    'consumer_records_rewound_total',
    'Records handed out again because their consumer thread died holding them.',
    [],
  );
  const tickErrors = counter('tick_errors_total', 'Passes of the scaling loop run by start() that threw.', []);
  for (const decision of ['scaleUp', 'scaleDown']) {
    decisions.inc(labelled({ decision }), 0);
    decidedShards.inc(labelled({ decision }), 0);
  }
  for (const transition of Object.values(TRANSITIONS)) transitions.inc(labelled({ transition }), 0);
  consumerErrors.inc(labelled({}), 0);
  consumerRestarts.inc(labelled({}), 0);
  rewound.inc(labelled({}), 0);
  tickErrors.inc(labelled({}), 0);

  const onEvent = (event: ManagerEvent): void => {
    switch (event.type) {
      case 'scalingDecision': {
        const decision = event.decision as ScalingDecision; // widened: an event made by hand may still say none
        if (decision.kind !== 'none') {
          decisions.inc(labelled({ decision: decision.kind }));
          decidedShards.inc(labelled({ decision: decision.kind }), decision.count);
        }
        break;
      }
      case 'consumerError':
        consumerErrors.inc(labelled({}));
        break;
      case 'consumerRestarted':
        consumerRestarts.inc(labelled({}));
        rewound.inc(labelled({}), event.rewound ?? 0);
        break;
      case 'tickError':
        tickErrors.inc(labelled({}));
        break;
      default: {
        const transition = TRANSITIONS[event.type];
        if (transition) transitions.inc(labelled({ transition }));
      }
    }
  };

  return {
    onEvent,
    names,
    observe(m: ObservedManager): void {
      checkObserved('observe: manager', m);
      manager = m;
    },
    unregister(): void {
      for (const name of names) registry.removeSingleMetric(name);
      manager = undefined;
    },
  };
}
