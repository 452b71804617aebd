// The input checks the two ways of producing share: ShardManager (and its ShardProducer) and
// the Redis node take the same options and the same events, so they refuse bad ones with the
// same words (docs/bad-input.md lists them). The generic argument checks these build on
// (checkInteger, checkFinite, given, describe) are in errors.ts, beside the error they throw.
import { checkFinite, checkInteger, describe, given, invalid } from './errors.js';
import { hashKey } from './hash.js';
import type { BackpressureMode } from './types.js';
import type { EventKey } from './producer.js';

/** maxPayloadBytes when the option is not given. */
export const DEFAULT_MAX_PAYLOAD = 256;
/** The largest maxPayloadBytes accepted. */
export const MAX_PAYLOAD_LIMIT = 16 * 1024 * 1024;

/** options.maxPayloadBytes, or its default. */
export function checkMaxPayloadBytes(value: unknown): number {
  return checkInteger('options.maxPayloadBytes', given(value, DEFAULT_MAX_PAYLOAD), 1, MAX_PAYLOAD_LIMIT);
}

/** The fields each backpressure mode has. */
const KIND_ONLY: Record<string, true> = { kind: true };
const SAMPLE_FIELDS: Record<string, true> = { kind: true, rate: true };

/** options.backpressure (already defaulted), as a fresh mode holding only its own fields. */
export function checkBackpressure(mode: unknown): BackpressureMode {
  if (typeof mode !== 'object' || mode === null) throw invalid(`options.backpressure must be a BackpressureMode, got ${describe(mode)}`);
  const m = mode as { kind: unknown; rate?: unknown };
  switch (m.kind) {
    case 'dropNewest':
    case 'dropOldest':
    case 'failProducer':
      // a stray field (a `rate` on a mode that does not sample) is a mistake, not a no-op
      checkKnownKeys(`options.backpressure (${m.kind})`, m, KIND_ONLY);
      return { kind: m.kind };
    case 'sample':
      checkKnownKeys('options.backpressure (sample)', m, SAMPLE_FIELDS);
      return { kind: 'sample', rate: checkInteger('options.backpressure.rate', m.rate, 1, 0xffffffff) };
    default:
      throw invalid(`options.backpressure.kind must be dropNewest, dropOldest, failProducer or sample, got ${describe(m.kind)}`);
  }
}

/** A boolean option (undefined passes: the caller applies its default). */
export function checkOptionalBoolean(name: string, value: unknown): boolean | undefined {
  if (value !== undefined && typeof value !== 'boolean') throw invalid(`${name} must be a boolean, got ${describe(value)}`);
  return value;
}

// ---- events ---------------------------------------------------------------------------------
// The errors below are thrown from the producers' fast paths too, so they are built here and
// thrown there: the paths stay as they are, the words are written once.

/** How an error names an event's payload: push's argument, or pushBatch's payloads[index]. */
export function payloadLabel(index: number): string {
  return index < 0 ? 'push: payload' : `pushBatch: payloads[${index}]`;
}

/** A payload over maxPayloadBytes (`utf8`: a string, measured as its UTF-8 bytes). */
export function largePayloadError(index: number, bytes: number, max: number, utf8: boolean): RangeError {
  return new RangeError(`${payloadLabel(index)} is ${bytes} bytes${utf8 ? ' as UTF-8' : ''}, the maximum is maxPayloadBytes = ${max}`);
}

export function payloadTypeError(index: number, payload: unknown): TypeError {
  return new TypeError(`${payloadLabel(index)} must be a Uint8Array or a string, got ${payload === null ? 'null' : typeof payload}`);
}

export function keyTypeError(method: string, key: unknown, index = -1): TypeError {
  const what = key === null ? 'null' : typeof key;
  return new TypeError(`${method}: ${index < 0 ? 'key' : `keys[${index}]`} must be a uint32 hash, a string or a Uint8Array, got ${what}`);
}

/** A key's 32-bit hash: a number is the hash itself, a string or bytes are hashed with hashKey. */
export function keyHash(key: EventKey, method: string, index = -1): number {
  if (typeof key === 'number') return key >>> 0;
  if (typeof key === 'string' || key instanceof Uint8Array) return hashKey(key);
  throw keyTypeError(method, key, index);
}

const encoder = new TextEncoder();
/** UTF-8 length of a string: Node's Buffer counts without encoding; elsewhere it is encoded. */
const utf8Length: (text: string) => number =
  typeof Buffer === 'function' ? (text) => Buffer.byteLength(text, 'utf8') : (text) => encoder.encode(text).length;

/** A payload's byte length (a string's as UTF-8), or the error push / pushBatch throw for it. */
export function payloadBytes(payload: unknown, max: number, index: number): number {
  if (payload instanceof Uint8Array) {
    if (payload.length > max) throw largePayloadError(index, payload.length, max, false);
    return payload.length;
  }
  if (typeof payload === 'string') {
    const n = utf8Length(payload);
    if (n > max) throw largePayloadError(index, n, max, true);
    return n;
  }
  throw payloadTypeError(index, payload);
}

/** The same checks as payloadBytes, measuring a string only when it might be too large
 *  (a UTF-16 unit is at most 3 UTF-8 bytes). */
export function checkPayload(payload: unknown, max: number, index: number): void {
  if (typeof payload === 'string' && payload.length * 3 <= max) return;
  payloadBytes(payload, max, index);
}

/** Refuse a key of `given` that is not in `known` (the options a call reads): a misspelled
 *  option would otherwise be ignored without a word. */
export function checkKnownKeys(
  where: string,
  given: object,
  known: Record<string, true>,
  error: (message: string) => Error = invalid,
): void {
  for (const key of Object.keys(given)) {
    if (!Object.hasOwn(known, key)) throw error(`${where}.${key} is not an option (known: ${Object.keys(known).join(', ')})`);
  }
}

const CLOSE_OPTIONS: Record<string, true> = { timeoutMs: true };

/** close()'s options, as ShardManager and the Redis node read them: the timeoutMs asked for
 *  (undefined: none). Throws what the close should reject with. */
export function closeTimeout(options: unknown): number | undefined {
  if (options !== undefined && (typeof options !== 'object' || options === null)) {
    throw new TypeError(`close: options must be an object, got ${describe(options)}`);
  }
  if (options !== undefined) checkKnownKeys('close: options', options, CLOSE_OPTIONS);
  const timeoutMs = (options as { timeoutMs?: unknown } | undefined)?.timeoutMs;
  if (timeoutMs === undefined) return undefined;
  checkFinite('close: options.timeoutMs', timeoutMs, 0);
  return timeoutMs as number;
}
