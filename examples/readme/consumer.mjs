// The README's consumer module for "Quick start: the manager" (loaded by ./manager.mjs on
// worker threads). `db` stands in for the application's database.
const db = { async insert(shardId, bytes) { if (!(bytes instanceof Uint8Array) || !(shardId >= 0)) throw new Error('not a record'); } };
// #region readme
// consumer.mjs — runs in a worker thread; records are zero-copy views, valid during the call
export default async function consume(records, shardId) {
  for (const r of records) await db.insert(shardId, r.slice()); // copy what you keep
}
// #endregion readme
