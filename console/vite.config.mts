// The web console's build: static files into dist/console, served by kmsd at /console/. No inline
// script (the page's Content-Security-Policy forbids it), nothing from a CDN.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const here = path.dirname(fileURLToPath(import.meta.url));

export default defineConfig({
  root: here,
  base: '/console/',
  logLevel: 'warn',
  build: {
    outDir: path.resolve(here, '..', 'dist', 'console'),
    emptyOutDir: true,
    target: 'es2022',
    // The preload polyfill is an inline script; every browser the console supports has modulepreload.
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
});
