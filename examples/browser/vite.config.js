// Vite config for the example: relative asset URLs (so the same build is served at / and at
// /fallback/), and the COOP/COEP headers on `vite` / `vite preview` so the dev page is
// cross-origin isolated too. Nothing here is needed to find the WebAssembly: it is inlined.
import { defineConfig } from 'vite';

const isolation = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
};

export default defineConfig({
  base: './',
  server: { headers: isolation },
  preview: { headers: isolation },
  build: { target: 'es2022' },
});
