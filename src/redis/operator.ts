// The caller's side of an operator call (addShard, manualScaleUp, drainShard, removeShard,
// manualScaleDown): one request with its own id, queued for the controller ({ns}:ops), and
// its answer ({ns}:answers). The controller takes a request off the queue only in the script
// that writes what it did and the answer; a caller that gives up withdraws the request in one
// script too. So a call acts once or not at all, whatever times out or dies.
import { randomUUID } from 'node:crypto';
import { ScalingError, describe, given, invalid, type ScalingErrorKind } from '../errors.js';
import type { Keys } from './keys.js';
import { sendAll, type ScriptedClient } from './connection.js';
import { sleep } from '../sleep.js';
import { checkKnownKeys } from '../validate.js';

/** An operator call a node queues for the controller ({ns}:ops). */
export type OperatorRequest = { reqId: string } & ({ op: 'scaleUp' | 'scaleDown'; n: number } | { op: 'drain' | 'remove'; id: number });
/** The controller's answer ({ns}:answers, written with the table write that acted). */
export type OperatorAnswer = { ok: true; ids: number[] } | { ok: false; kind: string; message: string };

/** Every option an operator call reads (the Record type keeps the list complete). */
const CALL_OPTIONS: Record<keyof OperatorCallOptions, true> = { timeoutMs: true, signal: true };

/** Options of an operator call (addShard, manualScaleUp, drainShard, removeShard, manualScaleDown). */
export interface OperatorCallOptions {
  /** How long the call waits (ms): for the controller's answer (default max(30 s, 20 ×
   *  metricsWindowMs)), and for removeShard / manualScaleDown also for the removal (default
   *  max(10 min, 600 × metricsWindowMs)). It holds while Redis does not answer; taking the
   *  request back after it may take up to 5 s more (then the outcome is unknown). */
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
  if (options !== undefined) checkKnownKeys(`${method}: options`, options, CALL_OPTIONS);
  const timeoutMs = given(options?.timeoutMs, defaultMs); // (null is a value: refused below)
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

/** How long a call that gave up (its timeout, its signal) still waits for Redis to take its
 *  request back: past it, the outcome is 'unknown'. */
export const WITHDRAW_GRACE_MS = 5000;

/** What `within` gives when the limit came first. */
export const LATE: unique symbol = Symbol('late');

/**
 * `command`'s outcome, or LATE once `until` (performance.now()) has passed or `signal` aborted.
 * A Redis command cannot be called back: a late one still runs when Redis answers, in order
 * with what its connection sends after it (a withdrawal sent next still follows its LPUSH);
 * only the wait ends.
 */
export function within<T>(command: Promise<T>, until: number, signal?: AbortSignal): Promise<T | typeof LATE> {
  return new Promise((resolve, reject) => {
    const stop = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', late);
    };
    const late = () => {
      stop();
      resolve(LATE);
    };
    const ms = until - performance.now();
    // setTimeout fires at once past 2^31 - 1 ms: a limit that far (or Infinity) sets no timer.
    const timer = ms < 2 ** 31 - 1 ? setTimeout(late, Math.max(0, ms)) : undefined;
    signal?.addEventListener('abort', late, { once: true });
    command.then(
      (value) => {
        stop();
        resolve(value);
      },
      (error: unknown) => {
        stop();
        reject(error);
      },
    );
  });
}

/** ioredis's words for a command refused before it was written (no connection right now, offline queue off). */
const NOT_SENT = /enableOfflineQueue|isn't ready/i;

/**
 * Queue a request for the controller and wait for its answer (a ScalingError is rethrown).
 * Every wait on Redis ends at the deadline or on abort, even while Redis does not answer. An
 * LPUSH that failed may or may not have queued the request: it is withdrawn (or its answer
 * taken) before queuing again, so a reconnect costs a retry, not the call. At the deadline,
 * or on abort, the request is withdrawn in one script (Redis has WITHDRAW_GRACE_MS more to
 * answer that): if it had not been answered it never acts (OperatorTimeoutError 'withdrawn'
 * / the signal's reason: nothing was done, a retry is safe); if it had, its answer is
 * returned as usual; no answer: 'unknown'.
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
  const answerOf = (json: string): number[] => {
    // Not awaited: the answer is ours already, and a Redis that stops answering now must not
    // hold the call (pruned anyway after 10 minutes).
    sendAll(client, [
      ['hdel', keys.answers, reqId],
      ['zrem', keys.answered, reqId],
    ]).catch(() => undefined);
    const answer = JSON.parse(json) as OperatorAnswer;
    if (answer.ok) return answer.ids;
    throw new ScalingError(answer.kind as ScalingErrorKind, answer.message);
  };
  const withdraw = (until: number, signal?: AbortSignal) =>
    within(client.smWithdraw(keys.ops, keys.answers, raw, reqId) as Promise<[string, string | null]>, until, signal);
  const over = () => call.signal?.aborted === true || performance.now() >= call.deadline;

  let queued = false; // an LPUSH answered: the request is queued (or taken by the controller)
  let maybeQueued = false; // an LPUSH failed after it may have been written, or got no answer in time
  let queueError: Error | undefined;
  let answer: string | null = null; // its answer's JSON, once read (answerOf is called outside the try)
  let wait = 20;
  while (answer === null && !over()) {
    try {
      if (queued) {
        const json = await within(client.hget(keys.answers, reqId), call.deadline, call.signal);
        if (typeof json === 'string') answer = json;
      } else {
        if (maybeQueued) {
          // Take back what may be queued before queuing again: one request, queued once.
          const outcome = await withdraw(call.deadline, call.signal);
          if (outcome === LATE) break;
          if (outcome[0] === 'answered' && outcome[1] !== null) {
            answer = outcome[1];
            break;
          }
          maybeQueued = false;
        }
        const pushed = await within(client.lpush(keys.ops, raw), call.deadline, call.signal);
        if (pushed === LATE) maybeQueued = true;
        else queued = true;
      }
    } catch (error) {
      // Redis away (refused, lost, reconnecting): keep trying until the limit.
      if (!queued) {
        queueError = error as Error;
        if (!NOT_SENT.test(queueError.message)) maybeQueued = true;
      }
    }
    if (answer !== null || over()) break;
    await pause(Math.min(wait, Math.max(1, call.deadline - performance.now())), call.signal);
    wait = Math.min(250, wait * 2);
  }
  if (answer !== null) return answerOf(answer);
  // Give up: withdraw it, unless it was answered meanwhile.
  if (queued || maybeQueued) {
    const until = performance.now() + WITHDRAW_GRACE_MS;
    let outcome: [string, string | null] | undefined;
    let lastError: Error | undefined;
    while (outcome === undefined && performance.now() < until) {
      try {
        const reply = await withdraw(until);
        if (reply !== LATE) outcome = reply;
      } catch (error) {
        lastError = error as Error;
        await sleep(Math.min(250, Math.max(1, until - performance.now())));
      }
    }
    if (outcome === undefined) {
      const why = lastError?.message ?? `no answer within ${WITHDRAW_GRACE_MS} ms`;
      throw new OperatorTimeoutError(
        `shard-mapper/redis: ${call.method}: outcome unknown: Redis did not answer while withdrawing request ${reqId} (${why}); it may still run once: look at table() before calling again`,
        'unknown',
      );
    }
    if (outcome[0] === 'answered' && outcome[1] !== null) return answerOf(outcome[1]);
  }
  // Withdrawn (or never queued): nothing was done.
  if (call.signal?.aborted) throw call.signal.reason;
  if (!queued && queueError)
    throw new OperatorTimeoutError(
      `shard-mapper/redis: ${call.method}: the request could not be queued within ${call.timeoutMs} ms (${queueError.message}); nothing was done, calling again is safe`,
      'withdrawn',
    );
  throw new OperatorTimeoutError(
    `shard-mapper/redis: ${call.method}: no controller answered within ${call.timeoutMs} ms (namespace "${keys.ns}": is a node that may be the controller running?); the request was withdrawn, nothing was done, calling again is safe`,
    'withdrawn',
  );
}
