// The demo's producers pace by the clock (examples/demo-shared.mjs paceCredit): whatever the
// timers do, the events pushed over a span follow the rate asked for, so the live view's
// "target" and "pushed" agree at a steady load. Simulated time: no wall clock.
import { describe, expect, it } from 'vitest';
// @ts-expect-error: a plain .mjs example without declarations
import { paceCredit } from '../examples/demo-shared.mjs';

/** Runs the producer's loop over `slices` (ms each really took) and returns the events pushed. */
function pushedOver(rate: number, slices: number[]): number {
  let credit = 0;
  let pushed = 0;
  for (const ms of slices) {
    credit = paceCredit(credit, rate, ms);
    const quota = Math.floor(credit);
    pushed += quota;
    credit -= quota;
  }
  return pushed;
}

describe('demo producer pacing', () => {
  it('pushes the rate asked for whether the 5 ms timers fire early, late or unevenly', () => {
    const rate = 75_000; // one of two producers at the default --peak
    for (const slice of [[4], [5], [6.3], [1, 9], [0.4, 4, 5.6]]) {
      const slices = Array.from({ length: 2000 }, (_, i) => slice[i % slice.length]!);
      const ms = slices.reduce((a, b) => a + b, 0);
      expect(Math.abs(pushedOver(rate, slices) - (rate * ms) / 1000), `slices ${slice.join('/')} ms`).toBeLessThanOrEqual(1);
    }
  });

  it('does not turn a stall into a burst: at most 50 ms of events are owed', () => {
    expect(paceCredit(0, 75_000, 2_000)).toBe(3_750);
    expect(pushedOver(75_000, [2_000, 5])).toBe(3_750 + 375);
  });

  it('pushes nothing at rate 0 (the idle tail) and at least one event when any rate is asked for', () => {
    expect(pushedOver(0, [5, 5, 5])).toBe(0);
    expect(pushedOver(10, [1000])).toBe(1); // capped at max(1, 0.5 events)
  });
});
