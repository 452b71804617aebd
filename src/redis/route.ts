// The selection table of a node: the route the controller published (a list of shard ids),
// loaded into the same WebAssembly selection as ShardMapper's (select / selectBatch over a
// published table), so every node with the same table version routes a hash the same way.
import { SharedCore } from '../core.js';
import { NO_SHARD } from '../mapper.js';

export class RouteTable {
  #core: SharedCore;
  #capacity: number;
  #ids: readonly number[] = [];

  constructor(capacity: number) {
    this.#capacity = Math.max(1, capacity);
    this.#core = RouteTable.#make(this.#capacity);
  }

  static #make(tableCapacity: number): SharedCore {
    return SharedCore.createSync({
      kind: 'single',
      tableCapacity,
      maxSlots: 1,
      initialSlots: 0,
      ringCapacity: 0,
      ringBytes: 0,
      maxPayload: 0,
      lanes: 1,
      laneBytes: 16384,
      backpressure: 0,
      sampleRate: 1,
      sampleFill: 1,
    });
  }

  get ids(): readonly number[] {
    return this.#ids;
  }

  /** Publish a new table (entries are shard ids; slot 0, a node has no rings). */
  load(ids: readonly number[]): void {
    if (ids.length > this.#capacity) {
      this.#capacity = ids.length;
      this.#core = RouteTable.#make(this.#capacity);
    }
    const core = this.#core;
    const base = core.abi.tableBuildAddress() >>> 2;
    for (let i = 0; i < ids.length; i++) core.u32[base + i] = ids[i]! & 0xffff;
    core.abi.tablePublish(ids.length);
    this.#ids = [...ids];
  }

  select(hash: number): number {
    return this.#ids.length === 0 ? NO_SHARD : this.#core.abi.select(hash >>> 0);
  }

  /** Batch form: one WebAssembly call per scratch-full. */
  selectMany(hashes: Uint32Array, n: number, out: Uint16Array): void {
    if (this.#ids.length === 0) {
      out.fill(NO_SHARD, 0, n);
      return;
    }
    this.#core.selectBatch(hashes, n, out);
  }
}
