export class StallWatchdog {
    #abi;
    #clock;
    #stallMs;
    /** slot → the stalled index seen first and when. */
    #seen = new Map();
    constructor(abi, clock, stallMs) {
        this.#abi = abi;
        this.#clock = clock;
        this.#stallMs = stallMs;
    }
    /** Look at every slot once; skip reservations stalled for stallMs. Returns the slots it
     *  skipped records in, with how many. */
    check(slots) {
        const skipped = [];
        let now;
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
            if (now - seen.since < this.#stallMs)
                continue;
            const records = this.#abi.ringSkipStalled(slot, index);
            if (records > 0)
                skipped.push({ slot, records });
            this.#seen.delete(slot);
        }
        return skipped;
    }
    forget(slot) {
        this.#seen.delete(slot);
    }
}
