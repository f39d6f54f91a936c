import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { HttpRefusalError } from '../../src/api/http/error-table';
import { MAX_JSON_DEPTH, parseJsonObject } from '../../src/api/http/aws/json';

function refused(body: string | Buffer): string {
  try {
    parseJsonObject(Buffer.isBuffer(body) ? body : Buffer.from(body));
  } catch (e) {
    expect(e).toBeInstanceOf(HttpRefusalError);
    expect((e as HttpRefusalError).refusal).toBe('MalformedRequest');
    return (e as HttpRefusalError).message;
  }
  throw new Error(`accepted ${String(body).slice(0, 80)}`);
}

describe('the AWS dialect reads its JSON body strictly', () => {
  it('reads what JSON.parse reads, for objects', () => {
    const body = '{"KeyId":"alias/a","EncryptionContext":{"k":"v\\u00e9\\n"},"NumberOfBytes":32,"DryRun":false,"GrantTokens":[],"x":null,"f":-1.5e3}';
    expect({ ...parseJsonObject(Buffer.from(body)) }).toEqual(JSON.parse(body));
    expect({ ...parseJsonObject(Buffer.alloc(0)) }).toEqual({});
    fc.assert(
      fc.property(fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 4 })), (obj) => {
        const text = JSON.stringify(obj);
        expect(JSON.stringify(parseJsonObject(Buffer.from(text)))).toBe(JSON.stringify(JSON.parse(text)));
      }),
      { numRuns: 300 },
    );
  });

  it('refuses a member given twice, at any depth, naming it', () => {
    expect(refused('{"KeyId":"a","KeyId":"b"}')).toMatch(/"KeyId" appears twice/);
    expect(refused('{"EncryptionContext":{"k":"1","k":"2"}}')).toMatch(/"k" appears twice/);
    expect(refused('{"a":"x","\\u0061":"y"}')).toMatch(/"a" appears twice/);
  });

  it('keeps "__proto__" an ordinary member', () => {
    const o = parseJsonObject(Buffer.from('{"__proto__":{"polluted":"yes"}}'));
    expect(Object.keys(o)).toEqual(['__proto__']);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('refuses non-objects, trailing data, invalid UTF-8, bad escapes and deep nesting', () => {
    for (const bad of ['[]', '"x"', '1', 'null', '{} {}', '{"a":1,}', '{"a":01}', "{'a':1}", '{"a":"\\x"}', '{"a":"\t"}', '{"a" 1}', '{', '{"a":tru}', '{"a":NaN}']) refused(bad);
    refused(Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0x22, 0x7d]));
    const deep = (n: number) => '{"a":'.repeat(n) + '1' + '}'.repeat(n);
    expect(Object.keys(parseJsonObject(Buffer.from(deep(MAX_JSON_DEPTH))))).toEqual(['a']);
    expect(refused(deep(MAX_JSON_DEPTH + 1))).toMatch(/nested deeper/);
    expect(refused('['.repeat(100000))).toMatch(/JSON object/);
    expect(refused('{"a":' + '['.repeat(100000))).toMatch(/nested deeper/);
  });

  it('answers any byte string with an object or a MalformedRequest refusal', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        try {
          const o = parseJsonObject(Buffer.from(bytes));
          return typeof o === 'object' && o !== null;
        } catch (e) {
          return e instanceof HttpRefusalError && e.refusal === 'MalformedRequest';
        }
      }),
      { numRuns: 1000 },
    );
  });
});
