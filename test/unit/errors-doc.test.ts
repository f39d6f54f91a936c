import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_TABLE } from '../../src/kms/errors';

// docs/errors.md is the user's copy of the one error table; this keeps the two identical.
describe('docs/errors.md', () => {
  const doc = fs.readFileSync(path.resolve(__dirname, '..', '..', 'docs', 'errors.md'), 'utf8');
  const rows = new Map<string, string>();
  for (const m of doc.matchAll(/^\| `([^`]+)` \| ([A-Z_]+) \| /gm)) rows.set(m[1], m[2]);

  it('lists every code of the error table with its gRPC status', () => {
    for (const [code, entry] of Object.entries(ERROR_TABLE)) {
      expect(rows.get(code), code).toBe(entry.status);
    }
  });

  it('lists no code that the table does not have', () => {
    expect([...rows.keys()].filter((c) => !(c in ERROR_TABLE))).toEqual([]);
  });
});
