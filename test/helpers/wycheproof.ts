// Wycheproof test vectors (../shared/vectors/wycheproof): where they are and how to read one file.
// Missing vectors fail the run; they are never skipped.
import fs from 'node:fs';
import path from 'node:path';

/** The top of every Wycheproof vector file; G is the file's test-group type. */
export interface WycheproofFile<G> {
  algorithm: string;
  schema: string;
  numberOfTests: number;
  testGroups: G[];
}

/** WYCHEPROOF_DIR, else the first known location (relative to the project root, where vitest runs) that holds `file`. */
export function wycheproofDir(file: string): string {
  const candidates = [
    process.env['WYCHEPROOF_DIR'],
    path.resolve('test/vectors/wycheproof'),
    path.resolve('vectors/wycheproof'),
    path.resolve('../shared/vectors/wycheproof'),
    '/work/shared/vectors/wycheproof',
  ].filter((p): p is string => typeof p === 'string' && p.length > 0);
  const found = candidates.find((dir) => fs.existsSync(path.join(dir, file)));
  if (found === undefined) throw new Error(`Wycheproof vectors not found; set WYCHEPROOF_DIR (looked in ${candidates.join(', ')})`);
  return found;
}

/** Reads one vector file, refusing a schema other than the one the test was written for. */
export function loadWycheproof<G>(file: string, schema: string): WycheproofFile<G> {
  const parsed = JSON.parse(fs.readFileSync(path.join(wycheproofDir(file), file), 'utf8')) as WycheproofFile<G>;
  if (parsed.schema !== schema || !Array.isArray(parsed.testGroups)) throw new Error(`${file}: unexpected schema ${String(parsed.schema)}`);
  return parsed;
}
