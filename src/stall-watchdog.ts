// StallWatchdog: finds reservations that a producer made and never wrote (its thread was
// terminated inside pushBatch/pushFixed, or is stalled), and turns them into padding so the
// records behind them can be delivered. Skipping is safe even for a producer that is only
// slow: it marks a record with a CAS before writing it, so one of the two wins, and a
// producer that loses pushes its events again (see assembly/ring.ts). The watchdog only
// decides *when*: a consumer must have been waiting on the same record for `stallMs` by the
// manager's clock.
import type { Abi } from './abi.js';

export class StallWatchdog {
  readonly #abi: Abi;
  readonly #clock: () => number;
  readonly #stallMs: number;
  /** slot → the stalled index seen first and when. */
  readonly #seen = new Map<number, { index: number; since: number }>();

  constructor(abi: Abi, clock: () => number, stallMs: number) {
    this.#abi = abi;
    this.#clock = clock;
    this.#stallMs = stallMs;
  }

  /** Look at every slot once; skip reservations stalled for stallMs. Returns the slots it
   *  skipped records in, with how many. */
  check(slots: Iterable<number>): { slot: number; records: number }[] {
    const skipped: { slot: number; records: number }[] = [];
    let now: number | undefined;
    for (const slot of slots) {
      const index = this.#abi.ringStalledAt(slot);
      if (index < 0) {
        this.#seen.delete(slot);
        continue;
      }
      now ??= this.#clock();
      const seen = this.#seen.get(slot);
      if (seen === undefined || seen.index !== index) {
        this.#seen.set(slot, { index, since: now });
        continue;
      }
      if (now - seen.since < this.#stallMs) continue;
      const records = this.#abi.ringSkipStalled(slot, index);
      if (records > 0) skipped.push({ slot, records });
      this.#seen.delete(slot);
    }
    return skipped;
  }

  forget(slot: number): void {
    this.#seen.delete(slot);
  }
}
