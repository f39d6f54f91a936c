import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_TABLE } from '../../src/kms/errors';
import { HTTP_ERROR_TABLE, HTTP_REFUSAL_TABLE } from '../../src/api/http/error-table';

// docs/errors.md is the user's copy of the one error table; this keeps the two identical.
describe('docs/errors.md', () => {
  const doc = fs.readFileSync(path.resolve(__dirname, '..', '..', 'docs', 'errors.md'), 'utf8');
  const rows = new Map<string, string>();
  const http = new Map<string, string>();
  for (const m of doc.matchAll(/^\| `([^`]+)` \| ([A-Z_]+) \| (`[^`]+` \d{3} \| `[^`]+` \d{3}) \| /gm)) {
    rows.set(m[1], m[2]);
    http.set(m[1], m[3]);
  }
  const refusals = new Map<string, string>();
  for (const m of doc.matchAll(/^\| ([A-Za-z]+) \| (`[^`]+` \d{3} \| `[^`]+` \d{3}) \| /gm)) refusals.set(m[1], m[2]);
  const cols = (e: { alibaba: { code: string; status: number }; aws: { type: string; status: number } }) => `\`${e.alibaba.code}\` ${e.alibaba.status} | \`${e.aws.type}\` ${e.aws.status}`;

  it('lists every code of the error table with its gRPC status', () => {
    for (const [code, entry] of Object.entries(ERROR_TABLE)) {
      expect(rows.get(code), code).toBe(entry.status);
    }
  });

  it('lists no code that the table does not have', () => {
    expect([...rows.keys()].filter((c) => !(c in ERROR_TABLE))).toEqual([]);
  });

  it('gives every code the Alibaba and AWS answers of the HTTP error table', () => {
    for (const [code, entry] of Object.entries(HTTP_ERROR_TABLE)) {
      expect(http.get(code), code).toBe(cols(entry));
    }
  });

  it('lists every HTTP refusal with both dialects\' answers, and no other', () => {
    for (const [name, entry] of Object.entries(HTTP_REFUSAL_TABLE)) {
      expect(refusals.get(name), name).toBe(cols(entry));
    }
    expect([...refusals.keys()].filter((c) => !(c in HTTP_REFUSAL_TABLE))).toEqual([]);
  });
});
