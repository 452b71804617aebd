// Connections: a URL becomes an ioredis client we own; a Redis or Cluster instance is used
// as given (and never closed by us). Scripts are defined once per client.
import { Redis, Cluster } from 'ioredis';
import { describe, invalid } from '../errors.js';
import { SCRIPTS } from './keys.js';

export type RedisClient = Redis | Cluster;
export type RedisOption = string | Redis | Cluster;

type ScriptName = keyof typeof SCRIPTS;
/** A client with the package's scripts defined on it. */
export type ScriptedClient = RedisClient & { [K in ScriptName]: (...args: (string | number)[]) => Promise<unknown> };

export interface Connection {
  client: ScriptedClient;
  /** Whether we created it (then we close it). */
  owned: boolean;
  cluster: boolean;
  /** The URL with any password hidden, or a description of the instance, for messages. */
  where: string;
}

/** Options for clients we create: fail fast while disconnected (our own buffers retry in
 *  order), never replay a command behind our back, reconnect forever with a short backoff. */
const OWN_CLIENT = {
  lazyConnect: true,
  enableOfflineQueue: false,
  autoResendUnfulfilledCommands: false,
  maxRetriesPerRequest: 0,
  connectTimeout: 3000,
  retryStrategy: (times: number) => Math.min(25 * times, 500),
} as const;

export function checkRedisOption(value: unknown): void {
  if (value instanceof Redis || value instanceof Cluster) return;
  if (typeof value !== 'string') throw invalid(`options.redis must be a redis:// URL or an ioredis Redis / Cluster instance, got ${describe(value)}`);
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
    } catch { /* masked below */ }
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

/** Connect (for a URL) and check the server answers; a clear error otherwise, nothing left open. */
export async function connect(option: RedisOption, what: string): Promise<Connection> {
  checkRedisOption(option);
  if (typeof option !== 'string') {
    const cluster = option instanceof Cluster;
    const client = defineScripts(option);
    try {
      await client.ping();
    } catch (error) {
      throw new Error(`shard-mapper/redis: ${what}: the given ioredis ${cluster ? 'Cluster' : 'client'} does not answer PING: ${(error as Error).message}`);
    }
    return { client, owned: false, cluster, where: cluster ? 'the given Redis Cluster' : 'the given Redis client' };
  }
  const where = redactUrl(option);
  const client = new Redis(option, OWN_CLIENT);
  let cause = '';
  const onError = (e: Error) => { cause = e.message; }; // ioredis rejects with "Connection is closed"; the cause comes here
  client.on('error', onError);
  try {
    await client.connect();
    await client.ping();
  } catch (error) {
    client.disconnect();
    const raw = (error as Error).message;
    const message = cause && cause !== raw ? `${cause} (${raw})` : raw;
    const hint = /WRONGPASS|NOAUTH|invalid password|AUTH/i.test(message) ? ' (authentication refused: check the user and password in the URL)' : '';
    throw new Error(`shard-mapper/redis: ${what}: cannot use Redis at ${where}: ${redactCredentials(message)}${hint}`);
  }
  client.off('error', onError);
  client.on('error', () => { /* reported through the failing commands; ioredis reconnects */ });
  return { client: defineScripts(client), owned: true, cluster: false, where };
}

/** A second connection for SUBSCRIBE (a subscribed connection can do nothing else). */
export function subscriber(conn: Connection): RedisClient {
  // Subscriptions wait for the connection (offline queue on) and are renewed on reconnect.
  const own = { enableOfflineQueue: true, maxRetriesPerRequest: null, lazyConnect: false };
  const sub = (conn.client instanceof Cluster ? conn.client.duplicate(undefined, own) : conn.client.duplicate(own)) as RedisClient;
  sub.on('error', () => { /* reconnects and resubscribes by itself */ });
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
  if (client instanceof Cluster) {
    return Promise.all(commands.map(([name, ...args]) =>
      (buffers ? client.callBuffer(name, ...args) : client.call(name, ...args)).then((r): Reply => [null, r], (e: Error): Reply => [e, null])));
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
  if (!conn.owned) return;
  try {
    await conn.client.quit();
  } catch {
    conn.client.disconnect();
  }
}
