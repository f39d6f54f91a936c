// The web console's static files (built by Vite into dist/console from console/) at /console/ on
// the HTTP listener. The console is a pure client of the Alibaba dialect: it signs every call in the
// browser with the access key the user typed, so nothing here knows who is signed in. What is served
// is only the files of the build, read once and held in memory; every answer carries headers that
// keep the page from running anything it did not ship, being framed, or leaking its URL.

import fs from 'node:fs';
import path from 'node:path';
import type { Dialect, HttpAnswer, HttpCall } from './types';

/** Where the build is, from dist/src/api/http/console.js. */
export const CONSOLE_DIR = path.resolve(__dirname, '..', '..', '..', 'console');

/**
 * No inline script or style, nothing from another origin, calls only to kmsd itself; downloads are
 * blob: links the page makes, which are navigations, not fetches.
 */
export const CONSOLE_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

export const CONSOLE_HEADERS: Record<string, string> = {
  'content-security-policy': CONSOLE_CSP,
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'x-content-type-options': 'nosniff',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  // The files change with each build and are small: the browser asks again every time.
  'cache-control': 'no-cache',
};

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.json': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};

interface File {
  type: string;
  body: string;
}

/** URL path under /console/ → file, for every file of the build; null when there is no build. */
function load(dir: string): Map<string, File> | null {
  if (!fs.existsSync(path.join(dir, 'index.html'))) return null;
  const out = new Map<string, File>();
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r);
      else if (e.isFile() && TYPES[path.extname(e.name)]) out.set(r, { type: TYPES[path.extname(e.name)], body: fs.readFileSync(path.join(dir, r), 'utf8') });
    }
  };
  walk('');
  return out;
}

function answer(status: number, type: string, body: string, extra: Record<string, string> = {}): HttpAnswer {
  return { status, headers: { ...CONSOLE_HEADERS, 'content-type': type, ...extra }, body };
}

export function consoleDialect(dir = CONSOLE_DIR): Dialect {
  let files: Map<string, File> | null | undefined;
  return {
    name: 'console',
    matches: (call: HttpCall) => call.path === '/console' || call.path.startsWith('/console/'),
    async handle(call) {
      if (call.method !== 'GET' && call.method !== 'HEAD') return answer(405, 'text/plain; charset=utf-8', 'The console serves GET and HEAD only.\n', { allow: 'GET, HEAD' });
      if (call.path === '/console') return answer(301, 'text/plain; charset=utf-8', 'Moved to /console/\n', { location: '/console/' });
      if (files === undefined || files === null) files = load(dir);
      if (!files) return answer(503, 'text/plain; charset=utf-8', 'The console is not built: run npm run build.\n');
      const rel = call.path.slice('/console/'.length);
      const file = files.get(rel === '' ? 'index.html' : rel);
      if (!file) return answer(404, 'text/plain; charset=utf-8', 'Not found.\n');
      return answer(200, file.type, call.method === 'HEAD' ? '' : file.body);
    },
  };
}
