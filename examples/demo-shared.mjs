// What the two Node demos (demo.mjs, demo-redis.mjs) share: the load profile and the
// checking of numeric flags.

/**
 * The offered load at fraction `f` of the run: quiet, ramp up to `peak`, hold, ramp down,
 * quiet, idle (so autoscaling shows a scale-out and, in the idle tail, a scale-in).
 */
export function targetRate(f, peak, low) {
  if (f < 0.12) return low;
  if (f < 0.45) return low + ((f - 0.12) / 0.33) * (peak - low);
  if (f < 0.6) return peak;
  if (f < 0.7) return peak - ((f - 0.6) / 0.1) * (peak - low);
  if (f < 0.72) return low;
  return 0;
}

/**
 * Producer pacing by the clock, not by the timer: add `rate` events/s for the `elapsedMs` that
 * really passed since the last call to `credit` (events owed), and push its whole part. A timer
 * that fires early or late then changes how many events a slice carries, not the rate; pacing
 * a fixed quota per 5 ms slice made the producers push up to ~10 % above the rate they were
 * asked for. The credit is capped at `maxBurstMs` of events so a stall does not turn into a burst.
 */
export function paceCredit(credit, rate, elapsedMs, maxBurstMs = 50) {
  return Math.min(credit + (rate * elapsedMs) / 1000, Math.max(1, (rate * maxBurstMs) / 1000));
}

/** A numeric flag of `args` (util.parseArgs values) in [min, max], or exit 2 saying why. */
export function numberFlag(args, name, min, max) {
  const v = Number(args[name]);
  if (!Number.isFinite(v) || v < min || v > max) {
    console.error(`--${name} must be a number in [${min}, ${max}]`);
    process.exit(2);
  }
  return v;
}
