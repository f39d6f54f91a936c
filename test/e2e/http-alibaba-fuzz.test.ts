// Hostile input to the Alibaba dialect of the HTTP listener: fast-check over correctly signed (V2)
// requests of every served action with arbitrary parameter names and values, then unsigned
// malformed encodings, duplicate parameters, invalid UTF-8, huge headers and URLs, and bytes that
// are not HTTP. For each: a well-formed answer (JSON with Code, Message, RequestId and HostId, a
// code from the tables, never 500), the daemon keeps serving, and a refused call changes nothing.
// FUZZ_RUNS sets the runs per action (default 10); FUZZ_SEED replays a run.

import net from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HTTP_ERROR_TABLE, HTTP_REFUSAL_TABLE } from '../../src/api/http/error-table';
import { ALIBABA_ACTIONS } from '../../src/api/http/alibaba';
import { HttpKmsd, RawAnswer, rawRequest, startHttpKmsd } from '../helpers/http';
import { toQuery, v2Params } from '../helpers/alibaba-signers';

const RUNS = Number(process.env.FUZZ_RUNS ?? 10);
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined;

const CODES = new Set([...Object.values(HTTP_ERROR_TABLE).map((e) => e.alibaba.code), ...Object.values(HTTP_REFUSAL_TABLE).map((e) => e.alibaba.code)]);

let k: HttpKmsd;
let keyId = '';
let blob = '';

beforeAll(async () => {
  k = await startHttpKmsd();
  keyId = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
  await k.client.call('CreateAlias', { AliasName: 'alias/fuzz', KeyId: keyId });
  blob = (await k.client.encrypt(keyId, Buffer.from('fuzz'))).CiphertextBlob;
});

afterAll(async () => {
  await k?.stop();
});

/** What a refused call must not change. */
async function snapshot(): Promise<string> {
  const keys = await k.client.call('ListKeys', { PageSize: 100 });
  const aliases = await k.client.call('ListAliases', { PageSize: 100 });
  const meta = await k.client.describeKey(keyId);
  const versions = await k.client.call('ListKeyVersions', { KeyId: keyId, PageSize: 100 });
  const access = await k.client.call('ListAccessKeys', {});
  return JSON.stringify([keys, aliases, meta, versions, access]);
}

function wellFormed(r: RawAnswer): void {
  expect(r.status, r.body).not.toBe(500);
  if (r.status === 200) {
    expect(r.json, r.body).toBeTypeOf('object');
    expect(r.json.RequestId).toEqual(expect.any(String));
    return;
  }
  expect(r.status, r.body).toBeGreaterThanOrEqual(400);
  expect(r.status, r.body).toBeLessThan(500);
  expect(Object.keys(r.json ?? {}).sort(), r.body).toEqual(['Code', 'HostId', 'Message', 'RequestId']);
  expect(CODES.has(r.json.Code), r.json.Code).toBe(true);
  expect(r.json.Message.length).toBeGreaterThan(0);
}

async function stillServing(): Promise<void> {
  const r = await rawRequest(k.httpPort, { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: toQuery(v2Params(k.devKey, 'DescribeKey', { KeyId: keyId })) });
  expect(r.status, r.body).toBe(200);
}

const value = () =>
  fc.oneof(
    fc.string({ maxLength: 40 }),
    fc.string({ unit: 'grapheme', maxLength: 20 }),
    fc.constantFrom('', '0', '-1', '99999999999999999999', 'true', 'null', '{}', '[]', '{"a":1}', '%', '%zz', '&', '=', 'alias/fuzz', 'alias/', 'Aliyun_AES_256', 'EXTERNAL', 'HSM'),
    fc.constant(() => keyId).map((f) => f()),
    fc.constant(() => blob).map((f) => f()),
    fc.string({ maxLength: 7000 }),
  );

describe('signed requests with arbitrary parameters', () => {
  for (const action of ALIBABA_ACTIONS) {
    it(`${action}: well-formed answers; a refusal changes nothing`, async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.dictionary(fc.oneof(fc.constantFrom('KeyId', 'AliasName', 'Plaintext', 'CiphertextBlob', 'EncryptionContext', 'EncryptionContext.a', 'PageSize', 'PageNumber', 'Description', 'ProtectionLevel', 'Origin', 'KeySpec', 'NumberOfBytes', 'KeyVersionId', 'WrappingAlgorithm', 'WrappingKeySpec', 'ImportToken', 'EncryptedKeyMaterial', 'KeyMaterialExpireUnix', 'PendingWindowInDays', 'DestinationKeyId'), fc.string({ minLength: 1, maxLength: 12 })), value(), { maxKeys: 5 }),
          async (params) => {
            // Actions that may legitimately change state when the fuzzer hits a valid request are
            // judged only on their refusals.
            const before = await snapshot();
            const r = await rawRequest(k.httpPort, { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: toQuery(v2Params(k.devKey, action, params)) });
            wellFormed(r);
            if (r.status !== 200) expect(await snapshot()).toBe(before);
          },
        ),
        { numRuns: RUNS, seed: SEED },
      );
    });
  }
});

describe('malformed requests', () => {
  it('arbitrary query strings and form bodies, unsigned', async () => {
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 300 }), fc.string({ maxLength: 300 }), fc.constantFrom('GET', 'POST', 'PUT', 'DELETE'), async (q, body, method) => {
        const before = await snapshot();
        const r = await rawRequest(k.httpPort, {
          method,
          path: `/?${encodeURI(q).replace(/#/g, '%23')}`,
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: method === 'GET' ? undefined : body,
        });
        wellFormed(r);
        expect(r.status).not.toBe(200);
        expect(await snapshot()).toBe(before);
      }),
      { numRuns: RUNS * 5, seed: SEED },
    );
  });

  it('bad percent-encodings, duplicates and invalid UTF-8, each refused by name', async () => {
    const before = await snapshot();
    const signed = toQuery(v2Params(k.devKey, 'CreateKey', { Description: 'x' }));
    const cases: { path?: string; body?: Buffer | string; code: string }[] = [
      { path: '/?Action=CreateKey&%', code: 'InvalidParameter' },
      { path: '/?Action=CreateKey&Description=%E0%A4%A', code: 'InvalidParameter' },
      { path: '/?Action=CreateKey&Description=%C3%28', code: 'InvalidParameter' },
      { path: '/?Action=CreateKey&Action=CreateKey', code: 'InvalidParameter' },
      { path: `/?${signed}&Description=y`, code: 'InvalidParameter' },
      { path: `/?Description=y`, body: signed, code: 'InvalidParameter' },
      { body: Buffer.concat([Buffer.from(signed + '&Description='), Buffer.from([0xff, 0xfe])]), code: 'InvalidParameter' },
      { path: '/?=x', code: 'InvalidParameter' },
    ];
    for (const c of cases) {
      const r = await rawRequest(k.httpPort, { path: c.path ?? '/', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: c.body });
      wellFormed(r);
      expect([r.status, r.json.Code], `${c.path} ${String(c.body).slice(0, 40)}`).toEqual([400, c.code]);
    }
    expect(await snapshot()).toBe(before);
  });

  it('huge headers, a huge URL and many headers are refused; the daemon keeps serving', async () => {
    const before = await snapshot();
    const big = await rawRequest(k.httpPort, { headers: { 'x-filler': 'a'.repeat(20_000) } });
    expect(big.status).toBe(431);
    expect(big.json.Code).toBe('RequestHeaderFieldsTooLarge');
    const url = await rawRequest(k.httpPort, { path: `/?Action=CreateKey&Description=${'b'.repeat(20_000)}` });
    expect(url.status).toBe(431);
    const many: Record<string, string> = {};
    for (let i = 0; i < 2000; i++) many[`x-h${i}`] = 'v';
    const m = await rawRequest(k.httpPort, { headers: many });
    expect([431, 400]).toContain(m.status);
    wellFormed(m);
    expect(await snapshot()).toBe(before);
    await stillServing();
  });

  it('bytes that are not HTTP get a 400 and a closed connection', async () => {
    for (const junk of ['\x00\x01\x02\x03\r\n\r\n', 'GET / HTTP/9.9\r\n\r\n', 'POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n', 'POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n']) {
      const answer = await new Promise<string>((resolve) => {
        const s = net.connect(k.httpPort, '127.0.0.1');
        let out = '';
        s.on('data', (d) => (out += d.toString()));
        s.on('close', () => resolve(out));
        s.on('error', () => resolve(out));
        s.end(junk);
      });
      expect(answer, JSON.stringify(junk)).toMatch(/^HTTP\/1\.1 4\d\d /);
    }
    await stillServing();
    expect(k.logs()).not.toContain('"internal error"');
    expect(k.logs()).not.toContain('http request failed');
  });
});
