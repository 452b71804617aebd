// Key names and Lua scripts of one namespace.
//
// Redis Cluster: every key that the controller updates together (table, lease, counters,
// leases of consumers) carries the hash tag `{ns}`, so they share one slot and one script
// can check the lease and write the table atomically. Stream keys carry their own tag
// `{ns:id}`, so the shards' streams spread over the masters by hash slot; a shard's progress
// hash shares its stream's tag, so the acknowledging script writes both in one step.
import { describe, invalid } from '../errors.js';

const NAMESPACE = /^[A-Za-z0-9_.-]{1,64}$/;

export function checkNamespace(value: unknown): string {
  if (typeof value !== 'string' || !NAMESPACE.test(value)) {
    throw invalid(`options.namespace must be 1 to 64 characters of A-Z a-z 0-9 _ . - (no braces, colons or spaces), got ${describe(value)}`);
  }
  return value;
}

/** The consumer group every shard stream has (one group: the stream is a work queue). */
export const GROUP = 'shard-mapper';
/** Written into the table hash, so a key that is not ours is recognised. */
export const TABLE_FORMAT = 'shard-mapper/1';

export interface Keys {
  readonly ns: string;
  /** Hash: format, version, doc (the shard table as JSON). */
  readonly table: string;
  /** String: the controller lease token (SET NX PX). */
  readonly lease: string;
  /** Pub/sub channel: the new table version after every write. */
  readonly changes: string;
  /** Counter: node numbers (dedup ids are node number + frame sequence). */
  readonly nodes: string;
  /** Hash: shard id → events stored by all nodes (reported every metrics window). */
  readonly stored: string;
  /** Stream: entries consumers could not consume (undecodable, or refused maxDeliveries
   *  times), with their raw fields (see the README's dead-letter format). */
  readonly deadLetters: string;
  /** Sorted set: consumer name → lease expiry (Redis time, ms). */
  readonly consumers: string;
  /** List: operator requests for the controller (LPUSH by any node, RPOP by the controller). */
  readonly ops: string;
  /** String: the controller's answer to one request (kept a minute). */
  opAnswer(reqId: string): string;
  stream(id: number): string;
  /** String: the consumer that owns a shard (SET NX PX). */
  owner(id: number): string;
  /** Hash, under the stream's hash tag: what the consumers acknowledged on a shard — per
   *  node its highest (frame, index), events acknowledged, batches and their time (see
   *  progress.ts). Written only by smCommit, with the XACK. */
  progress(id: number): string;
}

export function keysFor(ns: string): Keys {
  const tag = `{${ns}}`;
  return {
    ns,
    table: `${tag}:table`,
    lease: `${tag}:controller`,
    changes: `${tag}:changes`,
    nodes: `${tag}:nodes`,
    stored: `${tag}:stored`,
    deadLetters: `${tag}:dead`,
    consumers: `${tag}:consumers`,
    ops: `${tag}:ops`,
    opAnswer: (reqId) => `${tag}:op:${reqId}`,
    stream: (id) => `${ns}:shard:{${ns}:${id}}`,
    owner: (id) => `${tag}:owner:${id}`,
    progress: (id) => `${ns}:progress:{${ns}:${id}}`,
  };
}

/** Lua scripts (ioredis defineCommand: EVALSHA, EVAL on NOSCRIPT). */
export const SCRIPTS = {
  /** KEYS table; ARGV doc, format. Creates the table if absent; returns {created|exists, doc, version}. */
  smInitTable: {
    numberOfKeys: 1,
    lua: `
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  redis.call('HSET', KEYS[1], 'format', ARGV[2], 'version', '1', 'doc', ARGV[1])
  return {'created', ARGV[1], '1'}
end
if t ~= 'hash' then return redis.error_reply('SMWRONGTYPE ' .. t) end
local f = redis.call('HMGET', KEYS[1], 'format', 'version', 'doc')
if f[1] ~= ARGV[2] then return redis.error_reply('SMNOTATABLE ' .. tostring(f[1])) end
return {'exists', f[3], f[2]}`,
  },
  /** KEYS lease, table; ARGV token, expected version, doc, channel. The fenced table write. */
  smWriteTable: {
    numberOfKeys: 2,
    lua: `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('SMFENCED the controller lease is not held by this node') end
local v = redis.call('HGET', KEYS[2], 'version')
if v ~= ARGV[2] then return redis.error_reply('SMSTALE table version ' .. tostring(v) .. ', expected ' .. ARGV[2]) end
local nv = tostring(tonumber(v) + 1)
redis.call('HSET', KEYS[2], 'version', nv, 'doc', ARGV[3])
redis.call('PUBLISH', ARGV[4], nv)
return nv`,
  },
  /** KEYS lease; ARGV token, ms. Renew a lease held with this token: 1, else 0. */
  smRenew: {
    numberOfKeys: 1,
    lua: `
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0`,
  },
  /** KEYS lease; ARGV token. Release a lease held with this token. */
  smRelease: {
    numberOfKeys: 1,
    lua: `
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0`,
  },
  /**
   * KEYS stream, progress; ARGV group, batch time in µs ('' when no consume call ran), then
   * per entry: id, node ('' if unknown), frame, events. Acknowledges and deletes the entries
   * (so a stream's length is exactly its unacknowledged entries) and, in the same step,
   * raises each node's mark to the last event of its newest frame here and adds to `acked`
   * the events above the marks it found (a repeat of an acknowledged frame adds nothing, so
   * a retried call changes nothing). Returns {entries acknowledged, events added}.
   */
  smCommit: {
    numberOfKeys: 2,
    lua: `
local marks, order, ids, added = {}, {}, {}, 0
for k = 3, #ARGV, 4 do
  ids[#ids + 1] = ARGV[k]
  local node, count = ARGV[k + 1], tonumber(ARGV[k + 3])
  if node == '' then
    added = added + count
  else
    local m = marks[node]
    if m == nil then
      m = { f = -1, i = -1 }
      local v = redis.call('HGET', KEYS[2], 'n:' .. node)
      if v then
        local fs, is = string.match(v, '^(%d+):(%-?%d+)$')
        if fs then m.f, m.i, m.fs = tonumber(fs), tonumber(is), fs end
      end
      marks[node] = m
      order[#order + 1] = node
    end
    local frame, last = tonumber(ARGV[k + 2]), count - 1
    if frame > m.f then
      added = added + count
      m.f, m.i, m.fs, m.dirty = frame, last, ARGV[k + 2], true
    elseif frame == m.f and last > m.i then
      added = added + (last - m.i)
      m.i, m.dirty = last, true
    end
  end
end
local acked = 0
for from = 1, #ids, 1000 do
  local chunk = {}
  for j = from, math.min(#ids, from + 999) do chunk[#chunk + 1] = ids[j] end
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(chunk))
  redis.call('XDEL', KEYS[1], unpack(chunk))
end
for _, node in ipairs(order) do
  local m = marks[node]
  if m.dirty then redis.call('HSET', KEYS[2], 'n:' .. node, m.fs .. ':' .. tostring(m.i)) end
end
if added > 0 then redis.call('HINCRBY', KEYS[2], 'acked', added) end
if ARGV[2] ~= '' then
  redis.call('HINCRBY', KEYS[2], 'batches', 1)
  redis.call('HINCRBY', KEYS[2], 'us', ARGV[2])
end
return {acked, added}`,
  },
  /** KEYS stream; ARGV last id seen. Delete the stream only if it is empty and nothing was
   *  appended since (a node with a stale table may have added an entry): 1 deleted/absent, 0 not. */
  smDeleteIfQuiet: {
    numberOfKeys: 1,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
if redis.call('XLEN', KEYS[1]) ~= 0 then return 0 end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last = ''
for i = 1, #info, 2 do if info[i] == 'last-generated-id' then last = info[i + 1] end end
if last ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1`,
  },
  /** KEYS consumers; ARGV name, leaseMs. Register (or refresh) a consumer, forget expired
   *  ones; returns how many are alive. Uses Redis's clock, the one all consumers share. */
  smConsumerBeat: {
    numberOfKeys: 1,
    lua: `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZCARD', KEYS[1])`,
  },
} as const;
