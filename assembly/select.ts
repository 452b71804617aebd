// Weighted shard selection. The mapper thread builds the table into the buffer that is not
// live, then flips the generation. Under 'leastLoaded' routing the table is the candidate
// list (Active shards within 0.1 of the lowest weight); under 'balanced' and 'affinity' it
// is a fixed number of slots that name shards many times (src/routing.ts). Either way a
// hash picks entry floor(hash · n / 2^32): one read, whatever the mode. Readers on any thread use the generation as a seqlock: read it, read the
// table it names, read it again; a changed generation means a rebuild raced the read and
// the reader tries again. Readers never block the writer and never allocate.
import { LAYOUT_BASE, H_TABLE_GEN, H_TABLE_COUNT0, NO_SHARD } from "./layout";
import { tablesBase, tableCapacity } from "./config";

export const NO_ENTRY: u32 = 0xffffffff;

@inline export function tableAddr(which: u32): usize {
  return tablesBase + <usize>(which & 1) * tableCapacity * 4;
}

// Index of the candidate for a uint32 hash among n: floor(hash · n / 2^32), unbiased.
@inline export function pick(hash: u32, n: u32): u32 {
  return <u32>((<u64>hash * <u64>n) >> 32);
}

// The table entry (id | slot << 16) for a hash, or NO_ENTRY when nothing is routable.
export function selectEntry(hash: u32): u32 {
  const h = <usize>LAYOUT_BASE;
  while (true) {
    const gen = atomic.load<u32>(h + H_TABLE_GEN);
    const n = load<u32>(h + H_TABLE_COUNT0 + ((gen & 1) << 2));
    let entry = NO_ENTRY;
    if (n != 0 && n <= tableCapacity) entry = load<u32>(tableAddr(gen) + (<usize>pick(hash, n) << 2));
    if (atomic.load<u32>(h + H_TABLE_GEN) == gen) return entry;
  }
}

// A table read by many selections at once (a batch block): the live generation's entry count
// and entries. The caller checks tableGeneration() is still liveGen after its last read.
export let liveGen: u32 = 0;
export let liveCount: u32 = 0;
export let liveTable: usize = 0;
export function readLiveTable(): void {
  const h = <usize>LAYOUT_BASE;
  liveGen = atomic.load<u32>(h + H_TABLE_GEN);
  const n = load<u32>(h + H_TABLE_COUNT0 + ((liveGen & 1) << 2));
  liveCount = n <= tableCapacity ? n : 0;
  liveTable = tableAddr(liveGen);
}
@inline export function liveEntry(hash: u32): u32 {
  return liveCount == 0 ? NO_ENTRY : load<u32>(liveTable + (<usize>pick(hash, liveCount) << 2));
}

export function select(hash: u32): i32 {
  const e = selectEntry(hash);
  return e == NO_ENTRY ? NO_SHARD : <i32>(e & 0xffff);
}

// Batch form: n uint32 hashes at `src`, n uint16 shard ids written to `dst`.
export function selectBatch(src: usize, dst: usize, n: u32): void {
  const h = <usize>LAYOUT_BASE;
  while (true) {
    const gen = atomic.load<u32>(h + H_TABLE_GEN);
    const count = load<u32>(h + H_TABLE_COUNT0 + ((gen & 1) << 2));
    const table = tableAddr(gen);
    if (count == 0 || count > tableCapacity) {
      for (let i: u32 = 0; i < n; i++) store<u16>(dst + (<usize>i << 1), <u16>NO_SHARD);
    } else {
      for (let i: u32 = 0; i < n; i++) {
        const hash = load<u32>(src + (<usize>i << 2));
        store<u16>(dst + (<usize>i << 1), load<u16>(table + (<usize>pick(hash, count) << 2)));
      }
    }
    if (atomic.load<u32>(h + H_TABLE_GEN) == gen) return;
  }
}

// Address where the writer builds the next table (the one not live).
export function tableBuildAddress(): usize {
  return tableAddr(atomic.load<u32>(<usize>LAYOUT_BASE + H_TABLE_GEN) + 1);
}

// Make the table built at tableBuildAddress() live with `count` entries.
export function tablePublish(count: u32): void {
  const h = <usize>LAYOUT_BASE;
  const next = atomic.load<u32>(h + H_TABLE_GEN) + 1;
  store<u32>(h + H_TABLE_COUNT0 + ((next & 1) << 2), count);
  atomic.store<u32>(h + H_TABLE_GEN, next);
}
