// Loading the WebAssembly core: module bytes (inlined), compile (sync or async), and
// instantiation over a caller-supplied memory. No Node built-ins, so bundlers take it as is.
import type { Abi } from './abi.js';
import { describe, invalid } from './errors.js';
import { WASM_SHARED_BASE64, WASM_SINGLE_BASE64 } from './wasm-bytes.generated.js';

export type MemoryKind = 'shared' | 'single';

/** options.memory: 'shared' or 'single'; absent, shared where SharedArrayBuffer works. */
export function checkMemoryKind(value: unknown): MemoryKind {
  const kind = value === undefined ? (sharedMemorySupported() ? 'shared' : 'single') : value;
  if (kind !== 'shared' && kind !== 'single') throw invalid(`options.memory must be 'shared' or 'single', got ${describe(kind)}`);
  return kind;
}

const modules: Partial<Record<MemoryKind, WebAssembly.Module>> = {};

function bytesOf(kind: MemoryKind): Uint8Array {
  const text = atob(kind === 'shared' ? WASM_SHARED_BASE64 : WASM_SINGLE_BASE64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

/** True where a shared WebAssembly memory can be created and posted to workers. */
export function sharedMemorySupported(): boolean {
  if (typeof SharedArrayBuffer === 'undefined') return false;
  const isolated = (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated;
  return isolated === undefined || isolated === true;
}

let fallbackWarned = false;

/**
 * The single-thread fallback says so once per page (or process), however many mappers and
 * managers are made: a page that is not cross-origin isolated has no SharedArrayBuffer.
 * An explicit `memory: 'single'` where shared memory works is a choice, not a fallback.
 */
function noteFallback(kind: MemoryKind): void {
  if (kind !== 'single' || fallbackWarned || sharedMemorySupported()) return;
  fallbackWarned = true;
  console.warn(
    'shard-mapper: SharedArrayBuffer is unavailable (the page is not cross-origin isolated), so it fell back to ' +
      "single-thread mode (memory: 'single'): routing and scaling work on this thread, but worker consumers and " +
      'producers cannot attach. Serve the page with Cross-Origin-Opener-Policy: same-origin and ' +
      'Cross-Origin-Embedder-Policy: require-corp to share memory with Web Workers.',
  );
}

/** Compile once per kind, synchronously (fine in Node and in workers; the module is small). */
export function compileSync(kind: MemoryKind): WebAssembly.Module {
  noteFallback(kind);
  return (modules[kind] ??= new WebAssembly.Module(bytesOf(kind) as BufferSource));
}

/** Compile once per kind without blocking (the browser main thread's path). */
export async function compileAsync(kind: MemoryKind): Promise<WebAssembly.Module> {
  noteFallback(kind);
  const cached = modules[kind];
  if (cached) return cached;
  const compiled = await WebAssembly.compile(bytesOf(kind) as BufferSource);
  return (modules[kind] ??= compiled);
}

export function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory): Abi {
  const instance = new WebAssembly.Instance(module, { env: { memory } });
  return instance.exports as unknown as Abi;
}
