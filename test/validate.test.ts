// ShardManager and the Redis node check their shared options and events with one module
// (src/validate.ts): the same bad value gets the same words from both. The node's option
// checks run before it connects, so no server is needed (the URL points at nothing); the
// node's event checks are validate.ts's payloadBytes and keyHash, compared here with what
// ShardManager.push / pushBatch throw. This guards against the two drifting apart again.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardManager } from 'shard-mapper';
import { RedisShardManager } from 'shard-mapper/redis';
import { keyHash, payloadBytes } from '../dist/validate.js';

/** The message of what `run` throws or rejects with. */
async function messageOf(run: () => unknown): Promise<string> {
  try {
    await run();
  } catch (error) {
    return `${(error as Error).name}: ${(error as Error).message}`;
  }
  throw new Error('expected a refusal');
}

describe('the manager and the Redis node refuse shared options with the same words', () => {
  const bad: [string, Record<string, unknown>][] = [
    ['backpressure null', { backpressure: null }],
    ['backpressure a string', { backpressure: 'dropNewest' }],
    ['backpressure kind', { backpressure: { kind: 'nope' } }],
    ['sample rate 0', { backpressure: { kind: 'sample', rate: 0 } }],
    ['sample rate 1.5', { backpressure: { kind: 'sample', rate: 1.5 } }],
    ['maxPayloadBytes 0', { maxPayloadBytes: 0 }],
    ['maxPayloadBytes too large', { maxPayloadBytes: 16 * 1024 * 1024 + 1 }],
    ['maxPayloadBytes a string', { maxPayloadBytes: '256' }],
    ['keyOrder a number', { keyOrder: 1 }],
    ['drainGraceMs NaN', { drainGraceMs: Number.NaN }],
    ['drainGraceMs -1', { drainGraceMs: -1 }],
    ['clock a number', { clock: 5 }],
    ['onEvent a string', { onEvent: 'log' }],
  ];
  for (const [name, option] of bad) {
    it(name, async () => {
      const manager = await messageOf(() => ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, ...option } as never));
      const node = await messageOf(() => RedisShardManager.create({ redis: 'redis://127.0.0.1:1', namespace: 'never-connected', ...option } as never));
      expect(manager).toMatch(/^ScalingError: options\./);
      expect(node).toBe(manager);
    });
  }
});

describe('the node\'s event checks say what ShardManager.push / pushBatch say', () => {
  let manager: ShardManager;
  beforeAll(async () => { manager = await ShardManager.create({ initialShards: 1, ringBufferCapacity: 8, maxPayloadBytes: 16 }); });
  afterAll(async () => { await manager.close(); });

  const payloads: [string, unknown][] = [
    ['17 bytes', new Uint8Array(17)],
    ['18 bytes as UTF-8', 'ééééééééé'],
    ['a number', 5],
    ['null', null],
  ];
  for (const [name, payload] of payloads) {
    it(`payload: ${name}`, async () => {
      expect(await messageOf(() => payloadBytes(payload, 16, -1))).toBe(await messageOf(() => manager.push(1, payload as never)));
      expect(await messageOf(() => payloadBytes(payload, 16, 1))).toBe(await messageOf(() => manager.pushBatch([1, 2], ['ok', payload as never])));
    });
  }

  it('keys of the wrong type', async () => {
    for (const key of [null, undefined, {}, true]) {
      expect(await messageOf(() => keyHash(key as never, 'push'))).toBe(await messageOf(() => manager.push(key as never, 'x')));
      expect(await messageOf(() => keyHash(key as never, 'pushBatch', 1))).toBe(await messageOf(() => manager.pushBatch([1, key as never], ['x', 'y'])));
    }
  });

  it('a long batch (checked before its first chunk is pushed) refuses with the same words and pushes nothing', async () => {
    const n = 4000; // more than one staging chunk
    const keys = Array.from({ length: n }, (_, i) => i);
    const values = Array.from({ length: n }, () => 'ok');
    values[n - 1] = 'ééééééééé';
    expect(await messageOf(() => manager.pushBatch(keys, values))).toBe(await messageOf(() => payloadBytes(values[n - 1], 16, n - 1)));
    expect(manager.stats().pushed).toBe(0);
  });
});
