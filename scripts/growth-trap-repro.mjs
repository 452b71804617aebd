#!/usr/bin/env node
// The hazard behind GROWTH SEEN (assembly/ring.ts), shown without the package: one thread
// grows a shared memory a page at a time and, right after each grow, hands another thread an
// address in the new page; that thread copies 64 bytes there with memory.copy in the same
// WebAssembly call that read the address. Until the thread handles the interrupt that tells
// its instance the new size, the copy is bounds-checked against the old size and traps.
//   node scripts/growth-trap-repro.mjs [grows=20000] [mode=copy|store]
// mode=store does a plain 8-byte store instead (not bounds-checked on x64: it succeeds).
// Prints how many grows it took to trap, or that none trapped. Measured on the 2-core Intel
// VM (Node 20.20.2): a trap within ~1 000 to ~14 000 grows with copy; none with store.
import { Worker, isMainThread, workerData, parentPort } from 'node:worker_threads';
import asc from 'assemblyscript/asc';

const SOURCE = `
// word 0: the address handed over (0: none); the copy's source is at 64
export function probe(copy: bool): i32 {
  const dst = atomic.load<u32>(0);
  if (dst == 0) return 0;
  if (copy) memory.copy(<usize>dst, 64, 64);
  else store<u64>(<usize>dst, 0x1234);
  atomic.store<u32>(0, 0);
  return 1;
}`;

if (isMainThread) {
  const grows = Number(process.argv[2] ?? 20000);
  const mode = process.argv[3] ?? 'copy';
  const { binary, error, stderr } = await asc.compileString(SOURCE, {
    runtime: 'stub', importMemory: true, sharedMemory: true, initialMemory: 1, maximumMemory: 65536,
    enable: ['threads'], noAssert: true, use: ['abort='], optimizeLevel: 3,
  });
  if (error) throw new Error(`asc: ${error.message}\n${stderr.toString()}`);
  const memory = new WebAssembly.Memory({ initial: 1, maximum: Math.min(65536, grows + 1), shared: true });
  const words = new Int32Array(memory.buffer, 0, 4); // [address, trapped, ready]
  const worker = new Worker(new URL(import.meta.url), { workerData: { memory, binary, copy: mode === 'copy' } });
  let message;
  worker.on('message', (m) => (message = m));
  while (Atomics.load(words, 2) === 0) await new Promise((r) => setTimeout(r, 5));
  let n = 0;
  for (; n < grows && Atomics.load(words, 1) === 0; n++) {
    const page = memory.grow(1);
    Atomics.store(words, 0, page * 65536 + 1024);
    const t = Date.now();
    while (Atomics.load(words, 0) !== 0 && Atomics.load(words, 1) === 0 && Date.now() - t < 1000) {}
  }
  Atomics.store(words, 3, 1);
  for (let t = 0; message === undefined && t < 200; t++) await new Promise((r) => setTimeout(r, 5));
  await worker.terminate();
  console.log(
    message?.trap
      ? `${mode}: trapped after ${n} grows: ${message.trap}`
      : `${mode}: no trap in ${n} grows (${message?.copies ?? '?'} writes to freshly grown pages)`,
  );
} else {
  const { memory, binary, copy } = workerData;
  const { instance } = await WebAssembly.instantiate(binary, { env: { memory } });
  const words = new Int32Array(memory.buffer, 0, 4);
  Atomics.store(words, 2, 1);
  let copies = 0;
  try {
    while (Atomics.load(words, 3) === 0) copies += instance.exports.probe(copy ? 1 : 0);
    parentPort.postMessage({ copies });
  } catch (err) {
    Atomics.store(words, 1, 1);
    parentPort.postMessage({ trap: err.message, copies });
  }
}
