// src/abi.ts types the WebAssembly core's exports by hand: keep it equal to what the
// compiled module really exports, in both builds (shared memory and single-thread).
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { compileSync } from '../dist/wasm.js';

const declared = [...readFileSync(new URL('../src/abi.ts', import.meta.url), 'utf8')
  .matchAll(/^ {2}(\w+)\(/gm)].map((m) => m[1]).sort();

describe('the ABI interface', () => {
  it.each(['shared', 'single'] as const)('lists exactly the functions the %s module exports', (kind) => {
    const exported = WebAssembly.Module.exports(compileSync(kind))
      .filter((e) => e.kind === 'function').map((e) => e.name).sort();
    expect(declared.length).toBeGreaterThan(30);
    expect(declared).toEqual(exported);
  });
});
