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

/** A numeric flag of `args` (util.parseArgs values) in [min, max], or exit 2 saying why. */
export function numberFlag(args, name, min, max) {
  const v = Number(args[name]);
  if (!Number.isFinite(v) || v < min || v > max) {
    console.error(`--${name} must be a number in [${min}, ${max}]`);
    process.exit(2);
  }
  return v;
}
