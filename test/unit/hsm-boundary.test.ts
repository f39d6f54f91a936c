// The HSM boundary stays where DESIGN section 7 puts it: src/hsm owns PKCS#11 and depends on
// nothing above it; nothing outside src/hsm (and native/) names a PKCS#11 return value or loads a
// PKCS#11 binding. Read from the sources, so a new import or a new CKR_ match fails here.

import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(__dirname, '..', '..', 'src');
const HSM = path.join(SRC, 'hsm');

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((d) => {
    const p = path.join(dir, d.name);
    if (d.isDirectory()) return sources(p);
    return d.name.endsWith('.ts') ? [p] : [];
  });
}

/** Every module a file names: static imports and re-exports (type-only too), require() and import(). */
function specifiers(text: string): string[] {
  const out: string[] = [];
  const patterns = [/\b(?:import|export)\s[^'"`;]*?\bfrom\s*['"]([^'"]+)['"]/g, /\bimport\s*['"]([^'"]+)['"]/g, /\brequire\(\s*['"]([^'"]+)['"]\s*\)/g, /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g];
  for (const re of patterns) for (const m of text.matchAll(re)) out.push(m[1]);
  return out;
}

/** The src-relative module an import of `file` points at (null for packages and node: builtins). */
function target(file: string, spec: string): string | null {
  if (!spec.startsWith('.')) return null;
  return path.relative(SRC, path.resolve(path.dirname(file), spec)).split(path.sep).join('/');
}

/** Layers above the token layer: src/hsm may import none of them. */
const ABOVE_HSM = ['kms', 'api', 'store', 'ceremony', 'audit', 'policy', 'cli', 'client', 'daemon'];

const rel = (f: string) => path.relative(path.resolve(SRC, '..'), f);

describe('the HSM boundary', () => {
  it('the checks see what they check: src/hsm has files, and the parser finds every import form', () => {
    expect(sources(HSM).length).toBeGreaterThan(3);
    expect(specifiers(`import a from './a';\nimport type { B } from "../kms/b";\nexport { c } from './c';\nimport './d';\nconst e = require('./e');\nawait import('./f');`)).toEqual(['./a', '../kms/b', './c', './d', './e', './f']);
  });

  it('no import from src/hsm to the domain or any layer above it', () => {
    const arrows: string[] = [];
    for (const file of sources(HSM)) {
      for (const spec of specifiers(fs.readFileSync(file, 'utf8'))) {
        const t = target(file, spec);
        if (t !== null && ABOVE_HSM.includes(t.split('/')[0])) arrows.push(`${rel(file)} -> ${spec}`);
      }
    }
    expect(arrows).toEqual([]);
  });

  it('no CKR_ name outside src/hsm (the one table of return values is src/hsm/errors.ts)', () => {
    const hits: string[] = [];
    for (const file of sources(SRC)) {
      if (file.startsWith(HSM + path.sep)) continue;
      fs.readFileSync(file, 'utf8')
        .split('\n')
        .forEach((line, i) => {
          if (line.includes('CKR_')) hits.push(`${rel(file)}:${i + 1}: ${line.trim()}`);
        });
    }
    expect(hits).toEqual([]);
  });

  it('no PKCS#11 binding, object handle or addon context outside src/hsm', () => {
    const hits: string[] = [];
    for (const file of sources(SRC)) {
      if (file.startsWith(HSM + path.sep)) continue;
      const text = fs.readFileSync(file, 'utf8');
      for (const spec of specifiers(text)) if (spec === 'pkcs11js') hits.push(`${rel(file)} imports ${spec}`);
      for (const name of ['numericHandle', 'NativeAesGcm', 'loadNativeAddon', 'attachWorkers', 'unwrapKeyMaterial']) if (text.includes(name)) hits.push(`${rel(file)} uses ${name}`);
    }
    expect(hits).toEqual([]);
  });

  it('the parts of the token stay inside src/hsm: the rest of kmsd asks HsmToken, never its session, templates or key parts', () => {
    const internal = ['hsm/context', 'hsm/templates', 'hsm/wrapping-keys', 'hsm/root-key', 'hsm/signing-key', 'hsm/objects', 'hsm/data-path', 'hsm/gcm-composed', 'hsm/kwp-composed', 'hsm/rsa-oaep'];
    for (const t of internal) expect(fs.existsSync(path.join(SRC, `${t}.ts`)), t).toBe(true);
    const hits: string[] = [];
    for (const file of sources(SRC)) {
      if (file.startsWith(HSM + path.sep)) continue;
      for (const spec of specifiers(fs.readFileSync(file, 'utf8'))) {
        const t = target(file, spec);
        if (t !== null && internal.includes(t)) hits.push(`${rel(file)} -> ${spec}`);
      }
    }
    expect(hits).toEqual([]);
  });
});
