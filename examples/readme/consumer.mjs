// The README's consumer module for "Quick start: the manager" (loaded by ./manager.mjs on
// worker threads; manager.mjs checks that every event was delivered).
// #region readme
// consumer.mjs — runs in a worker thread; records are zero-copy views, valid during the call
const db = { async insert(_shardId, _bytes) {} };        // your database: a stub here
export default async function consume(records, shardId) {
  for (const r of records) await db.insert(shardId, r.slice()); // copy what you keep
}
// #endregion readme
