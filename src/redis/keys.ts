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
    throw invalid(
      `options.namespace must be 1 to 64 characters of A-Z a-z 0-9 _ . - (no braces, colons or spaces), got ${describe(value)}`,
    );
  }
  return value;
}

/** The consumer group every shard stream has (one group: the stream is a work queue). */
export const GROUP = 'shard-mapper';
/** Written into the table hash, so a key that is not ours is recognised. */
export const TABLE_FORMAT = 'shard-mapper/1';

export interface Keys {
  readonly ns: string;
  /** Hash: format, version, doc (the shard table as JSON), gen, epoch, clocks (the decision
   *  clocks), nodes (the node counter: kept in the table so every node reads it, and so
   *  remembers the highest number handed out, should Redis lose it). */
  readonly table: string;
  /** String: the controller lease token (SET NX PX). */
  readonly lease: string;
  /** Pub/sub channel: the new table version after every write. */
  readonly changes: string;
  /** Hash: what live nodes knew when they found Redis had lost data (nextId, needGen, node):
   *  the recovering controller starts above it, so no shard id or node number is reused. */
  readonly floor: string;
  /** Hash: request id → the controller's answer, written in the same script as the table
   *  write that acted on the request (and the request's removal from the queue). */
  readonly answers: string;
  /** Sorted set: request id → Redis time of its answer (answers are pruned after 10 minutes). */
  readonly answered: string;
  /** Stream: entries consumers could not consume (undecodable, or refused maxDeliveries
   *  times), with their raw fields (see the README's dead-letter format). */
  readonly deadLetters: string;
  /** Sorted set: consumer name → lease expiry (Redis time, ms). */
  readonly consumers: string;
  /** List: operator requests for the controller (LPUSH by any node; a request leaves it only
   *  in the script that answers it, or when its caller withdraws it). */
  readonly ops: string;
  stream(id: number): string;
  /** String, under the stream's hash tag: the consumer that owns a shard (SET NX PX). In the
   *  stream's slot so one script can check the lease and read in the same step (smRead). */
  owner(id: number): string;
  /** Hash, under the stream's hash tag: what a shard holds and what its consumers
   *  acknowledged — per node its highest (frame, index), events appended and acknowledged,
   *  batches and their time (see progress.ts). Written by the nodes (`in`, with each XADD)
   *  and by smCommit, with the XACK. */
  progress(id: number): string;
  /** Set, under the stream's hash tag: nodes that closed after storing frames in a shard.
   *  They send nothing more, so smCommit forgets their marks once the stream is empty. */
  closedNodes(id: number): string;
}

export function keysFor(ns: string): Keys {
  const tag = `{${ns}}`;
  return {
    ns,
    table: `${tag}:table`,
    lease: `${tag}:controller`,
    changes: `${tag}:changes`,
    floor: `${tag}:floor`,
    answers: `${tag}:answers`,
    answered: `${tag}:answered`,
    deadLetters: `${tag}:dead`,
    consumers: `${tag}:consumers`,
    ops: `${tag}:ops`,
    stream: (id) => `${ns}:shard:{${ns}:${id}}`,
    owner: (id) => `${ns}:owner:{${ns}:${id}}`,
    progress: (id) => `${ns}:progress:{${ns}:${id}}`,
    closedNodes: (id) => `${ns}:closed:{${ns}:${id}}`,
  };
}

/** Lua scripts (ioredis defineCommand: EVALSHA, EVAL on NOSCRIPT). */
export const SCRIPTS = {
  /** KEYS table; ARGV doc, format, epoch. Creates the table if absent (generation 1, this
   *  epoch); returns {created|exists, doc, version, gen, epoch, nodes}. */
  smInitTable: {
    numberOfKeys: 1,
    lua: `
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  redis.call('HSET', KEYS[1], 'format', ARGV[2], 'version', '1', 'gen', '1', 'epoch', ARGV[3], 'doc', ARGV[1])
  return {'created', ARGV[1], '1', '1', ARGV[3]}
end
if t ~= 'hash' then return redis.error_reply('SMWRONGTYPE ' .. t) end
local f = redis.call('HMGET', KEYS[1], 'format', 'version', 'doc', 'gen', 'epoch', 'nodes')
if f[1] ~= ARGV[2] then return redis.error_reply('SMNOTATABLE ' .. tostring(f[1])) end
return {'exists', f[3], f[2], f[4] or '1', f[5] or '', f[6] or '0'}`,
  },
  /**
   * KEYS lease, table, ops, answers, answered; ARGV token, epoch, expected version, doc ('':
   * unchanged), channel, clocks ('': unchanged), request id ('': none), the request as
   * queued, its answer. The fenced table write: only with the current lease token, only over
   * the expected epoch and version. With a request, it also takes the request off the queue
   * and records the answer, in the same step: refused (SMWITHDRAWN) when the request is no
   * longer queued (its caller withdrew it), so a request acts at most once.
   */
  smWriteTable: {
    numberOfKeys: 5,
    lua: `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('SMFENCED the controller lease is not held by this node') end
local f = redis.call('HMGET', KEYS[2], 'version', 'epoch')
if f[1] ~= ARGV[3] or (f[2] or '') ~= ARGV[2] then
  return redis.error_reply('SMSTALE table ' .. tostring(f[2]) .. '/' .. tostring(f[1]) .. ', expected ' .. ARGV[2] .. '/' .. ARGV[3])
end
if ARGV[7] ~= '' then
  if redis.call('LREM', KEYS[3], 1, ARGV[8]) ~= 1 then return redis.error_reply('SMWITHDRAWN request ' .. ARGV[7] .. ' is no longer queued') end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[4], ARGV[7], ARGV[9])
  redis.call('ZADD', KEYS[5], now, ARGV[7])
  local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now - 600000, 'LIMIT', 0, 100)
  for _, id in ipairs(old) do redis.call('HDEL', KEYS[4], id) redis.call('ZREM', KEYS[5], id) end
end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'clocks', ARGV[6]) end
if ARGV[4] == '' then return ARGV[3] end
local nv = tostring(tonumber(ARGV[3]) + 1)
redis.call('HSET', KEYS[2], 'version', nv, 'doc', ARGV[4])
redis.call('PUBLISH', ARGV[5], nv)
return nv`,
  },
  /** KEYS table. A joining node's number (the table's node counter); an error if there is no table. */
  smJoin: {
    numberOfKeys: 1,
    lua: `
if redis.call('HEXISTS', KEYS[1], 'format') == 0 then return redis.error_reply('SMNOTABLE the shard table is gone') end
return redis.call('HINCRBY', KEYS[1], 'nodes', 1)`,
  },
  /** KEYS table; Redis's clock (ms) and the stored decision clocks: {ms, clocks or false}. */
  smClocks: {
    numberOfKeys: 1,
    lua: `
local t = redis.call('TIME')
return {tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)), redis.call('HGET', KEYS[1], 'clocks')}`,
  },
  /**
   * KEYS lease, table, floor; ARGV token, generation, epoch, doc, format, channel. After
   * Redis lost data: writes a new table of a higher generation (version 1) over a missing
   * one or one of a lower generation, its node counter at least the old table's and every
   * number live nodes reported; publishes. Fenced like every table write.
   */
  smRecoverTable: {
    numberOfKeys: 3,
    lua: `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('SMFENCED the controller lease is not held by this node') end
local t = redis.call('TYPE', KEYS[2])['ok']
local nodes = tonumber(redis.call('HGET', KEYS[3], 'node') or '0')
if t ~= 'none' then
  if t ~= 'hash' then return redis.error_reply('SMWRONGTYPE ' .. t) end
  local g = tonumber(redis.call('HGET', KEYS[2], 'gen') or '1')
  if g >= tonumber(ARGV[2]) then return redis.error_reply('SMSTALE the table is at generation ' .. g .. ' already') end
  nodes = math.max(nodes, tonumber(redis.call('HGET', KEYS[2], 'nodes') or '0'))
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'format', ARGV[5], 'version', '1', 'gen', ARGV[2], 'epoch', ARGV[3], 'doc', ARGV[4], 'nodes', tostring(nodes))
redis.call('PUBLISH', ARGV[6], '1')
return 1`,
  },
  /** KEYS floor; ARGV nextId, needGen, node. Raise each field to at least the given value. */
  smRaiseFloor: {
    numberOfKeys: 1,
    lua: `
local names = {'nextId', 'needGen', 'node'}
for i = 1, 3 do
  local v = tonumber(redis.call('HGET', KEYS[1], names[i]) or '0')
  if tonumber(ARGV[i]) > v then redis.call('HSET', KEYS[1], names[i], ARGV[i]) end
end
return 1`,
  },
  /** KEYS ops, answers; ARGV the request as queued, its id. A caller giving up: takes the
   *  request off the queue ({'withdrawn'}: it will never act), unless it was answered
   *  already ({'answered', answer}). Atomic against smWriteTable. */
  smWithdraw: {
    numberOfKeys: 2,
    lua: `
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then return {'withdrawn'} end
return {'answered', redis.call('HGET', KEYS[2], ARGV[2])}`,
  },
  /**
   * ARGV lease key, table key, token, epoch, group, then (stream key, shard id) pairs.
   * Standalone servers only (the keys span hash slots, so they are not declared): with the current lease token and
   * epoch, creates the stream and group of each shard the table lists as provisioning,
   * active or draining that lacks them; returns the ids it repaired or created. A
   * controller that lost its lease can thus never create a stream (for a removed shard, say).
   */
  smEnsureStreams: {
    numberOfKeys: 0,
    lua: `
local lease, tbl = ARGV[1], ARGV[2]
if redis.call('GET', lease) ~= ARGV[3] then return redis.error_reply('SMFENCED the controller lease is not held by this node') end
local f = redis.call('HMGET', tbl, 'epoch', 'doc')
if (f[1] or '') ~= ARGV[4] or not f[2] then return redis.error_reply('SMSTALE the table changed epoch') end
local listed = {}
for _, s in ipairs(cjson.decode(f[2]).shards) do
  if s.state ~= 'stopped' then listed[tostring(s.id)] = true end
end
local made = {}
for i = 6, #ARGV, 2 do
  local key, id = ARGV[i], ARGV[i + 1]
  if listed[id] then
    local r = redis.pcall('XGROUP', 'CREATE', key, ARGV[5], '0', 'MKSTREAM')
    if type(r) ~= 'table' or not r.err then made[#made + 1] = id
    elseif not string.find(r.err, 'BUSYGROUP') then return redis.error_reply(r.err) end
  end
end
return made`,
  },
  /** KEYS lease; ARGV token, ms. Renew a lease held with this token: 1, else 0. */
  smRenew: {
    numberOfKeys: 1,
    lua: `
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0`,
  },
  /**
   * KEYS stream, owner; ARGV group, consumer, count, id ('>' for new entries, '0' for the
   * consumer's pending ones). XREADGROUP only while the consumer holds the shard's lease,
   * checked in the same step: a read that reached Redis late (its connection stalled past the
   * lease) takes nothing once another consumer owns the shard, so every entry read is pending
   * under the owner of the moment and the next owner claims it before reading anything new.
   * Returns the XREADGROUP reply, or 0 when the lease is not this consumer's.
   */
  smRead: {
    numberOfKeys: 2,
    lua: `
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
return redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], ARGV[4])`,
  },
  /**
   * KEYS stream; ARGV group, own name, idle ms. Forget the group's other members that have
   * nothing pending and have been idle longer than that; returns how many. The check and the
   * delete are one step: a member that read entries since the check would lose them with it
   * (XGROUP DELCONSUMER drops its pending entries, and no read delivers them again).
   */
  smForgetIdle: {
    numberOfKeys: 1,
    lua: `
local forgotten = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pending = c[i + 1] elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name ~= ARGV[2] and pending == 0 and idle > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    forgotten = forgotten + 1
  end
end
return forgotten`,
  },
  /** KEYS lease; ARGV token. Release a lease held with this token. */
  smRelease: {
    numberOfKeys: 1,
    lua: `
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0`,
  },
  /**
   * KEYS stream, progress, closed nodes; ARGV group, batch time in µs ('' when no consume call ran), then
   * per entry: id, node ('' if unknown), frame, events. Acknowledges and deletes the entries
   * (so a stream's length is exactly its unacknowledged entries) and, in the same step,
   * raises each node's mark to the last event of its newest frame here, adds to `acked`
   * the events above the marks it found (a repeat of an acknowledged frame adds nothing, so
   * a retried call changes nothing) and to `out` the events of the entries this call took
   * out of the pending list (repeats included, as the nodes counted them in `in`). An emptied
   * stream sets `out` to `in`: nothing is left, whatever the counts missed (a node that died
   * between counting a frame and appending it, an entry deleted by someone else, which comes
   * back without its count), and forgets the marks of the nodes that closed (they send
   * nothing more, and none of their frames is left). Returns {entries acknowledged, events
   * added}.
   */
  smCommit: {
    numberOfKeys: 3,
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
local acked, out, emptied = 0, 0, false
for k = 3, #ARGV, 4 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[k]) == 1 then
    acked = acked + 1
    out = out + tonumber(ARGV[k + 3])
  end
end
for from = 1, #ids, 1000 do
  local chunk = {}
  for j = from, math.min(#ids, from + 999) do chunk[#chunk + 1] = ids[j] end
  redis.call('XDEL', KEYS[1], unpack(chunk))
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- a removed shard's stream: nothing to count (its progress hash only keeps the marks)
elseif redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[2], 'out', redis.call('HGET', KEYS[2], 'in') or '0')
  emptied = true
elseif out > 0 then
  redis.call('HINCRBY', KEYS[2], 'out', out)
end
for _, node in ipairs(order) do
  local m = marks[node]
  if m.dirty then redis.call('HSET', KEYS[2], 'n:' .. node, m.fs .. ':' .. tostring(m.i)) end
end
if emptied then
  for _, node in ipairs(redis.call('SMEMBERS', KEYS[3])) do redis.call('HDEL', KEYS[2], 'n:' .. node) end
  redis.call('DEL', KEYS[3])
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
