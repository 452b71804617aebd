// The caller's side of an operator call (addShard, manualScaleUp, drainShard, removeShard,
// manualScaleDown): one request with its own id, queued for the controller ({ns}:ops), and
// its answer ({ns}:answers). The controller takes a request off the queue only in the script
// that writes what it did and the answer; a caller that gives up withdraws the request in one
// script too. So a call acts once or not at all, whatever times out or dies.
import { randomUUID } from 'node:crypto';
import { ScalingError, describe, invalid, type ScalingErrorKind } from '../errors.js';
import type { Keys } from './keys.js';
import { sendAll, type ScriptedClient } from './connection.js';
import { sleep } from '../sleep.js';

/** An operator call a node queues for the controller ({ns}:ops). */
export type OperatorRequest = { reqId: string } & ({ op: 'scaleUp' | 'scaleDown'; n: number } | { op: 'drain' | 'remove'; id: number });
/** The controller's answer ({ns}:answers, written with the table write that acted). */
export type OperatorAnswer = { ok: true; ids: number[] } | { ok: false; kind: string; message: string };

/** Options of an operator call (addShard, manualScaleUp, drainShard, removeShard, manualScaleDown). */
export interface OperatorCallOptions {
  /** How long the call waits (ms): for the controller's answer (default max(30 s, 20 ×
   *  metricsWindowMs)), and for removeShard / manualScaleDown also for the removal (default
   *  max(10 min, 600 × metricsWindowMs)). */
  timeoutMs?: number;
  /** Ends the wait early, as the timeout does (the call rejects with the signal's reason). */
  signal?: AbortSignal;
}

/**
 * An operator call that stopped waiting. `outcome`: 'withdrawn' — the request was taken back
 * before the controller ran it: nothing was done, calling again is safe; 'waiting' — the
 * controller did it (e.g. the shard is draining) but what the call waits for (the removal)
 * has not happened yet: it goes on, and the same call waits for it again; 'unknown' — Redis
 * did not answer the withdrawal: the request may still run once.
 */
export class OperatorTimeoutError extends Error {
  readonly outcome: 'withdrawn' | 'waiting' | 'unknown';
  constructor(message: string, outcome: 'withdrawn' | 'waiting' | 'unknown') {
    super(message);
    this.name = 'OperatorTimeoutError';
    this.outcome = outcome;
  }
}

/** One call's limits: its deadline (performance.now()) and signal. */
export interface CallLimits {
  method: string;
  timeoutMs: number;
  deadline: number;
  signal: AbortSignal | undefined;
}

/** Check a call's options; the deadline starts now. */
export function callLimits(method: string, options: OperatorCallOptions | undefined, defaultMs: number): CallLimits {
  if (options !== undefined && (typeof options !== 'object' || options === null))
    throw invalid(`${method}: options must be an object, got ${describe(options)}`);
  const timeoutMs = options?.timeoutMs ?? defaultMs;
  if (typeof timeoutMs !== 'number' || !(timeoutMs > 0))
    throw invalid(`${method}: options.timeoutMs must be a number > 0, got ${describe(options?.timeoutMs)}`);
  const signal = options?.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal))
    throw invalid(`${method}: options.signal must be an AbortSignal, got ${describe(signal)}`);
  signal?.throwIfAborted();
  return { method, timeoutMs, deadline: performance.now() + timeoutMs, signal };
}

/** Sleep up to `ms`, woken early by `signal`. */
export function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * Queue a request for the controller and wait for its answer (a ScalingError is rethrown).
 * At the deadline, or on abort, the request is withdrawn in one script: if it had not been
 * answered it never acts (OperatorTimeoutError 'withdrawn' / the signal's reason: nothing
 * was done, a retry is safe); if it had, its answer is returned as usual.
 */
export async function requestOperation(
  client: ScriptedClient,
  keys: Keys,
  nodeId: string,
  body: { op: 'scaleUp' | 'scaleDown'; n: number } | { op: 'drain' | 'remove'; id: number },
  call: CallLimits,
): Promise<number[]> {
  const reqId = `${nodeId}:${randomUUID()}`;
  const raw = JSON.stringify({ reqId, ...body } as OperatorRequest);
  const answerOf = async (json: string): Promise<number[]> => {
    await sendAll(client, [
      ['hdel', keys.answers, reqId],
      ['zrem', keys.answered, reqId],
    ]); // pruned anyway after 10 minutes
    const answer = JSON.parse(json) as OperatorAnswer;
    if (answer.ok) return answer.ids;
    throw new ScalingError(answer.kind as ScalingErrorKind, answer.message);
  };
  let queueError: Error | undefined;
  try {
    await client.lpush(keys.ops, raw);
  } catch (error) {
    queueError = error as Error; // it may or may not be queued: withdrawing tells
  }
  let wait = 20;
  while (queueError === undefined && !call.signal?.aborted && performance.now() < call.deadline) {
    const json = await client.hget(keys.answers, reqId).catch(() => null); // Redis away: keep asking until the limit
    if (json !== null) return answerOf(json);
    await pause(Math.min(wait, Math.max(1, call.deadline - performance.now())), call.signal);
    wait = Math.min(250, wait * 2);
  }
  // Give up: withdraw it, unless it was answered meanwhile (a few tries while Redis is away).
  let outcome: [string, string | null] | undefined;
  let lastError: Error | undefined;
  for (let tries = 0; tries < 20 && outcome === undefined; tries++) {
    try {
      outcome = (await client.smWithdraw(keys.ops, keys.answers, raw, reqId)) as [string, string | null];
    } catch (error) {
      lastError = error as Error;
      await sleep(250);
    }
  }
  if (outcome === undefined) {
    throw new OperatorTimeoutError(
      `shard-mapper/redis: ${call.method}: outcome unknown: Redis did not answer while withdrawing request ${reqId} (${lastError?.message}); it may still run once: look at table() before calling again`,
      'unknown',
    );
  }
  if (outcome[0] === 'answered' && outcome[1] !== null) return answerOf(outcome[1]);
  // Withdrawn (or never queued): nothing was done.
  if (queueError)
    throw new OperatorTimeoutError(
      `shard-mapper/redis: ${call.method}: the request could not be queued (${queueError.message}); nothing was done, calling again is safe`,
      'withdrawn',
    );
  if (call.signal?.aborted) throw call.signal.reason;
  throw new OperatorTimeoutError(
    `shard-mapper/redis: ${call.method}: no controller answered within ${call.timeoutMs} ms (namespace "${keys.ns}": is a node that may be the controller running?); the request was withdrawn, nothing was done, calling again is safe`,
    'withdrawn',
  );
}
