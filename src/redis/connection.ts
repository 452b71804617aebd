// Connections: the package always talks to Redis through clients it creates itself, with the
// options it needs — from a URL, or derived (duplicate()) from a Redis or Cluster instance the
// user passes, which we only read options from and never close. Scripts are defined once per client.
//
// ioredis is an optional peer dependency: imported here for its types only, and loaded at
// run time by connect() (loadIoredis), so that a missing install says what to do instead of
// failing the import of 'shard-mapper/redis' with ERR_MODULE_NOT_FOUND.
import type { Redis, Cluster } from 'ioredis';
import { describe, invalid } from '../errors.js';
import { SCRIPTS } from './keys.js';
import { DEFAULT_CONNECT_TIMEOUT_MS } from './options.js';

type Ioredis = typeof import('ioredis');
let ioredis: Ioredis | undefined;

/** Whether `error` is the dynamic import's "no package ioredis". */
function ioredisMissing(error: unknown): boolean {
  const e = error as { code?: unknown; message?: unknown } | null;
  return (
    (e?.code === 'ERR_MODULE_NOT_FOUND' || e?.code === 'MODULE_NOT_FOUND') &&
    typeof e.message === 'string' &&
    /['"]ioredis['"]/.test(e.message)
  );
}

/** ioredis, loaded once; a clear error when the optional peer is not installed. */
export async function loadIoredis(): Promise<Ioredis> {
  if (ioredis) return ioredis;
  try {
    const loaded = (await import('ioredis')) as Ioredis & { default?: Ioredis };
    ioredis = loaded.Redis && loaded.Cluster ? loaded : (loaded.default ?? loaded);
  } catch (error) {
    if (ioredisMissing(error)) {
      throw new Error('shard-mapper/redis needs the optional peer dependency ioredis (npm install ioredis)', { cause: error });
    }
    throw error;
  }
  return ioredis;
}

/** ioredis, which connect() loaded (every client of ours came from a connect()). */
function lib(): Ioredis {
  if (!ioredis) throw new Error('shard-mapper/redis: internal: ioredis used before connect() loaded it');
  return ioredis;
}

export type RedisClient = Redis | Cluster;
export type RedisOption = string | Redis | Cluster;

type ScriptName = keyof typeof SCRIPTS;
/** A client with the package's scripts defined on it (and their `…Buffer` forms, whose replies keep bulk strings as Buffers). */
export type ScriptedClient = RedisClient & { [K in ScriptName]: (...args: (string | number)[]) => Promise<unknown> } & {
  [K in ScriptName as `${K}Buffer`]: (...args: (string | number)[]) => Promise<unknown>;
};

export interface Connection {
  client: ScriptedClient;
  /** Whether we created it (then we close it). */
  owned: boolean;
  cluster: boolean;
  /** The URL with any password hidden, or a description of the instance, for messages. */
  where: string;
  /** Who uses it, for messages (`namespace "orders"`, `consumers of namespace "orders"`). */
  what: string;
  /** Ends watchAnswers (undefined while not watched). */
  unwatch: (() => void) | undefined;
}

/** Options for clients we create: fail fast while disconnected (our own buffers retry in
 *  order), never replay a command behind our back (a replayed `XREADGROUP >` whose reply
 *  was lost would read the next entries and strand the first ones in the pending list),
 *  reconnect forever with a short backoff. `protocol: 2` keeps ioredis 6 (RESP3 by default)
 *  on the reply shapes this package parses; ioredis 5 ignores it. */
const OWN_CLIENT = {
  lazyConnect: true,
  enableOfflineQueue: false,
  autoResendUnfulfilledCommands: false,
  maxRetriesPerRequest: 0,
  connectTimeout: 3000,
  retryStrategy: (times: number) => Math.min(25 * times, 500),
  protocol: 2,
  replyMapping: 'legacy', // ioredis 6 refuses its 'resp3' mapping with protocol 2
  // A user's instance may carry these; our keys and scripts need them off.
  keyPrefix: '',
  readOnly: false,
  stringNumbers: false,
  enableAutoPipelining: false,
} as const;

/** The same for the per-node connections of a Cluster we derive (Cluster takes node options in
 *  `redisOptions`; it manages the nodes' reconnection and offline queue itself). */
const OWN_CLUSTER_NODE = {
  autoResendUnfulfilledCommands: false,
  maxRetriesPerRequest: 0,
  connectTimeout: 3000,
  protocol: 2,
  replyMapping: 'legacy',
  keyPrefix: '',
  stringNumbers: false,
} as const;

/** Cluster-level options: no failover retry — a Cluster resends a command whose connection
 *  closed ("Connection is closed.") after retryDelayOnFailover, which replays it exactly as
 *  autoResendUnfulfilledCommands would. (MOVED / ASK / TRYAGAIN / CLUSTERDOWN retries stay:
 *  those commands did not run.) The cluster's offline queue stays on: it holds commands not
 *  sent yet (the cluster, or the node a MOVED points to, still connecting) — turned off, a
 *  MOVED to a node whose connection is being opened fails with "Connection is closed.",
 *  which made create() fail at random on a healthy cluster. */
const OWN_CLUSTER = {
  lazyConnect: true,
  enableOfflineQueue: true,
  retryDelayOnFailover: 0,
  scaleReads: 'master',
  keyPrefix: '',
  enableAutoPipelining: false,
  clusterRetryStrategy: (times: number) => Math.min(25 * times, 500),
} as const;

type AnyOptions = Record<string, unknown>;
interface Overrides {
  standalone: AnyOptions;
  cluster: AnyOptions;
  node: AnyOptions;
}

/** A new client of ours with `instance`'s addresses and credentials, our options on top. */
function derive(instance: RedisClient, overrides: Overrides): RedisClient {
  if (instance instanceof lib().Cluster) {
    // ioredis 5's Cluster.duplicate replaces redisOptions wholesale (6 merges): merge here.
    const userNode = (instance.options as AnyOptions).redisOptions as AnyOptions | undefined;
    const options = { ...overrides.cluster, redisOptions: { ...userNode, ...overrides.node } };
    return instance.duplicate(undefined, options as never) as RedisClient;
  }
  return instance.duplicate(overrides.standalone as never) as RedisClient;
}

const OWN: Overrides = { standalone: OWN_CLIENT, cluster: OWN_CLUSTER, node: OWN_CLUSTER_NODE };

/** options.redis: a URL, or an instance (checked once ioredis is loaded: connect()). */
export function checkRedisOption(value: unknown): void {
  const { Redis, Cluster } = lib();
  if (value instanceof Redis || value instanceof Cluster) return;
  if (typeof value !== 'string')
    throw invalid(`options.redis must be a redis:// URL or an ioredis Redis / Cluster instance, got ${describe(value)}`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw invalid(`options.redis must be a redis:// or rediss:// URL, got ${describe(redactUrl(value))} (not a URL)`);
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    // Without `//`, what parsed as the scheme may be a user name (`user:password@host`).
    const shown = value.includes('//') ? `protocol ${describe(url.protocol)}` : describe(redactUrl(value));
    throw invalid(`options.redis must be a redis:// or rediss:// URL, got ${shown}`);
  }
  if (!url.hostname) throw invalid(`options.redis must name a host, got ${describe(redactUrl(value))}`);
}

const MASK = '***';

/** A URL (or what was meant as one) with its user and password masked, for messages. A
 *  string that does not parse loses everything between the scheme and its last `@`. */
export function redactUrl(text: string): string {
  const at = text.lastIndexOf('@');
  if (at < 0) return text;
  const scheme = text.indexOf('://');
  if (scheme >= 0 && scheme < at) {
    try {
      const url = new URL(text);
      if (url.username) url.username = MASK;
      if (url.password) url.password = MASK;
      return url.toString();
    } catch {
      /* masked below */
    }
  }
  // Not a URL, or no `//` (then `user:password@host` parses with "user:" as the scheme).
  const from = scheme >= 0 && scheme < at ? scheme + 3 : 0;
  return `${text.slice(0, from)}${MASK}${text.slice(at)}`;
}

/** Any `scheme://user:password@` inside a message, masked (an error text may quote a URL). */
export function redactCredentials(message: string): string {
  return message.replace(/([a-z][a-z0-9+.-]*:\/\/)([^\s/?#]*)@/gi, (_all, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(':');
    const user = colon < 0 ? userinfo : userinfo.slice(0, colon);
    const masked = (user ? MASK : '') + (colon < 0 ? '' : `:${MASK}`);
    return `${scheme}${masked}@`;
  });
}

/** The same error with credentials masked in its message (itself when there were none). */
export function redactError(error: unknown): Error {
  const e = error instanceof Error ? error : new Error(String(error));
  const message = redactCredentials(e.message);
  if (message === e.message) return e;
  const copy = new Error(message);
  copy.name = e.name;
  return copy;
}

function defineScripts(client: RedisClient): ScriptedClient {
  for (const [name, s] of Object.entries(SCRIPTS)) {
    if (!(name in client)) client.defineCommand(name, { numberOfKeys: s.numberOfKeys, lua: s.lua });
  }
  return client as ScriptedClient;
}

/** What messages call an instance the user passed: its address where ioredis says it. */
function describeInstance(instance: RedisClient): string {
  if (instance instanceof lib().Cluster) {
    const nodes = (instance as unknown as { startupNodes?: unknown }).startupNodes;
    const shown = Array.isArray(nodes)
      ? nodes
          .map((n) =>
            typeof n === 'string' ? redactUrl(n) : typeof n === 'number' ? String(n) : `${n?.host ?? 'localhost'}:${n?.port ?? 6379}`,
          )
          .join(', ')
      : '';
    return shown ? `the given Redis Cluster (${shown})` : 'the given Redis Cluster';
  }
  const o = instance.options as AnyOptions;
  const address = typeof o.path === 'string' && o.path ? o.path : `${String(o.host ?? 'localhost')}:${String(o.port ?? 6379)}`;
  return `the given Redis client (${address})`;
}

/** The first answer did not come in time. */
class NoAnswer extends Error {}

/** Connect and check the server answers, within `timeoutMs`; a clear error otherwise, nothing left open. */
export async function connect(option: RedisOption, what: string, timeoutMs = DEFAULT_CONNECT_TIMEOUT_MS): Promise<Connection> {
  const { Redis, Cluster } = await loadIoredis();
  checkRedisOption(option);
  const cluster = option instanceof Cluster;
  const where = typeof option === 'string' ? redactUrl(option) : describeInstance(option);
  const client = typeof option === 'string' ? new Redis(option, OWN_CLIENT as never) : derive(option, OWN);
  let cause = '';
  const onError = (e: Error) => {
    cause = e.message;
  }; // ioredis rejects with "Connection is closed"; the cause comes here
  client.on('error', onError);
  // A server that accepts the TCP connection and never answers (another service on that
  // port, a stopped or frozen Redis) would keep connect() (its ready check) or PING waiting
  // for ever: ioredis's connectTimeout ends only the TCP handshake.
  let timer: ReturnType<typeof setTimeout> | undefined;
  const answered = (async () => {
    await client.connect();
    await client.ping();
  })();
  answered.catch(() => undefined); // after a timeout, its rejection (we disconnect) is no news
  try {
    await Promise.race([
      answered,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new NoAnswer()), timeoutMs);
      }),
    ]);
  } catch (error) {
    const accepted = client.status === 'connect' || client.status === 'ready';
    client.disconnect();
    if (error instanceof NoAnswer) {
      throw new Error(
        `shard-mapper/redis: ${what}: Redis at ${where} did not answer within ${timeoutMs} ms${accepted ? ' (it accepted the TCP connection)' : ''}: is it a Redis server (not another service on that port), and is it running (not stopped, frozen or overloaded)? options.connectTimeoutMs sets this wait`,
      );
    }
    const raw = (error as Error).message;
    const message = cause && cause !== raw ? `${cause} (${raw})` : raw;
    const hint = /WRONGPASS|NOAUTH|invalid password|AUTH/i.test(message)
      ? ' (authentication refused: check the user and password in the URL)'
      : '';
    if (typeof option !== 'string') {
      throw new Error(`shard-mapper/redis: ${what}: cannot connect with the options of ${where}: ${redactCredentials(message)}${hint}`);
    }
    throw new Error(`shard-mapper/redis: ${what}: cannot use Redis at ${where}: ${redactCredentials(message)}${hint}`);
  } finally {
    clearTimeout(timer);
  }
  client.off('error', onError);
  client.on('error', () => {
    /* reported through the failing commands; ioredis reconnects */
  });
  return { client: defineScripts(client), owned: true, cluster, where, what, unwatch: undefined };
}

/** ioredis's words for "no connection" (refused, lost, not yet back), whatever the options. */
const OUTAGE =
  /Stream isn't writeable|enableOfflineQueue|max retries per request|Connection is closed|ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|None of startup nodes is available|Cluster isn't ready|Failed to refresh slots cache/i;

/**
 * An error of a command sent on `conn`, as the package reports it (credentials masked). A lost
 * or refused connection — which ioredis words after options the package set, such as
 * "Stream isn't writeable and enableOfflineQueue options is false" — is said in the package's
 * words, with what it does about it (`consequence`); ioredis's error is its `cause`.
 */
export function reportedError(conn: Connection, error: unknown, consequence: string): Error {
  const e = redactError(error);
  if (!OUTAGE.test(e.message)) return e;
  return new Error(`shard-mapper/redis: ${conn.what}: Redis at ${conn.where} is unreachable (connection refused or lost); ${consequence}`, {
    cause: e,
  });
}

/**
 * Report, once per stall, a command unanswered for `ms` (a frozen or overloaded server, a
 * network path that drops everything: the connection stays open and ioredis sees no error).
 * Nothing is cancelled: the commands wait for their answers, so recovery is as before.
 * `answered` is called when a reported stall ends (the oldest command got its answer), so a
 * caller that filters repeated reports can take the next stall as news.
 * Counts the commands sent through the client's sendCommand (pipelines included); undone by
 * closeConnection.
 */
export function watchAnswers(conn: Connection, ms: number, report: (error: Error) => void, answered?: () => void): void {
  type Send = (command: unknown, ...rest: unknown[]) => unknown;
  const client = conn.client as unknown as { sendCommand?: Send };
  const send = client.sendCommand;
  if (typeof send !== 'function' || conn.unwatch) return;
  const pending = new Set<{ at: number }>(); // insertion order: the first is the oldest
  client.sendCommand = function (this: unknown, command: unknown, ...rest: unknown[]) {
    const promise = (command as { promise?: Promise<unknown> } | null)?.promise;
    if (promise && typeof promise.then === 'function') {
      const entry = { at: performance.now() };
      pending.add(entry);
      const settled = () => {
        pending.delete(entry);
      };
      promise.then(settled, settled);
    }
    return send.call(this, command, ...rest);
  };
  let reported = false;
  const timer = setInterval(
    () => {
      const oldest = pending.values().next().value;
      if (oldest === undefined || performance.now() - oldest.at < ms) {
        if (reported) answered?.();
        reported = false;
        return;
      }
      if (reported) return;
      reported = true;
      report(
        new Error(
          `shard-mapper/redis: ${conn.what}: Redis at ${conn.where} has not answered a command for ${ms} ms, though the connection is open: the server may be stopped, frozen or overloaded, or the network path down. Commands wait for its answer (nothing is given up); work goes on when it answers`,
        ),
      );
    },
    Math.max(10, Math.min(1000, Math.floor(ms / 4))),
  );
  (timer as { unref?: () => void }).unref?.();
  conn.unwatch = () => {
    clearInterval(timer);
    client.sendCommand = send;
  };
}

/** A second connection for SUBSCRIBE (a subscribed connection can do nothing else). */
export function subscriber(conn: Connection): RedisClient {
  // Subscriptions wait for the connection (offline queue on) and are renewed on reconnect.
  const sub = derive(conn.client, {
    standalone: { enableOfflineQueue: true, maxRetriesPerRequest: null, lazyConnect: false },
    cluster: { enableOfflineQueue: true, lazyConnect: false },
    node: { maxRetriesPerRequest: null },
  });
  sub.on('error', () => {
    /* reconnects and resubscribes by itself */
  });
  return sub;
}

export type Command = [string, ...(string | number | Buffer)[]];
export type Reply = [Error | null, unknown];

/**
 * Send commands in one round trip where possible: one pipeline on a standalone server; on a
 * Cluster (whose pipelines must stay on one node) concurrent single commands, which ioredis
 * writes back to back on each node's connection. Never throws: each command gets its reply
 * or its error.
 */
export async function sendAll(client: RedisClient, commands: Command[], buffers = false): Promise<Reply[]> {
  if (commands.length === 0) return [];
  if (client instanceof lib().Cluster) {
    return Promise.all(
      commands.map(([name, ...args]) =>
        (buffers ? client.callBuffer(name, ...args) : client.call(name, ...args)).then(
          (r): Reply => [null, r],
          (e: Error): Reply => [e, null],
        ),
      ),
    );
  }
  const pipeline = client.pipeline();
  for (const [name, ...args] of commands) {
    if (buffers) (pipeline as unknown as { callBuffer(...a: unknown[]): void }).callBuffer(name, ...args);
    else pipeline.call(name, ...args);
  }
  try {
    const replies = await pipeline.exec();
    if (!replies) return commands.map(() => [new Error('pipeline discarded'), null]);
    return replies as Reply[];
  } catch (error) {
    return commands.map(() => [error as Error, null]);
  }
}

export async function closeConnection(conn: Connection): Promise<void> {
  conn.unwatch?.();
  conn.unwatch = undefined;
  if (!conn.owned) return;
  try {
    await conn.client.quit();
  } catch {
    conn.client.disconnect();
  }
}

/** End a connection at once, without QUIT (Redis may be away): commands under way reject. */
export function dropConnection(conn: Connection): void {
  conn.unwatch?.();
  conn.unwatch = undefined;
  if (conn.owned) conn.client.disconnect();
}
