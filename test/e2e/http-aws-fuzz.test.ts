// The AWS dialect under malformed input, against a real kmsd: bodies that are not UTF-8 or not JSON,
// members of the wrong type for every operation, duplicate members and headers, huge and odd
// headers. Requests are signed (so they reach the parser, not only the signature check) unless the
// case is about the signature. Every answer must be well-formed (AWS's {"__type","message"} with a
// request id, or Node's own 4xx for what never reaches kmsd), kmsd must keep running, and nothing
// may change: the same CMKs, in the same states.

import net from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kmsd, startKmsd } from '../helpers/daemon';
import { AccessKey, RawAnswer, awsRaw, createAccessKey, httpPortOf } from '../helpers/aws';
import { OPERATIONS } from '../../src/api/http/aws/operations';

let k: Kmsd;
let port: number;
let key: AccessKey;
let cmk: string;
let snapshot: string;

async function state(): Promise<string> {
  const keys = (await k.client.call('ListKeys', { PageSize: 100 })).Keys as { KeyId: string }[];
  const described = await Promise.all(keys.map(async (x) => (await k.client.call('DescribeKey', { KeyId: x.KeyId })).KeyMetadata));
  const aliases = (await k.client.call('ListAliases', { PageSize: 100 })).Aliases;
  return JSON.stringify({ described, aliases });
}

beforeAll(async () => {
  k = await startKmsd({ args: ['--http-listen', '127.0.0.1:0'] });
  port = await httpPortOf(k);
  key = createAccessKey(k, 'fuzz');
  cmk = (await k.client.call('CreateKey', { Description: 'fuzz target' })).KeyMetadata.KeyId;
  await k.client.call('CreateAlias', { AliasName: 'alias/fuzz', KeyId: cmk });
  snapshot = await state();
});

afterAll(async () => {
  // kmsd served every case and never logged a crash; stop() returns its exit code (0 after SIGTERM).
  expect(k.logs()).not.toMatch(/uncaught|unhandled|FATAL/i);
  expect(await k?.stop()).toBe(0);
});

function wellFormed(r: RawAnswer, what: string): void {
  expect(r.status, `${what}: ${r.text}`).toBeGreaterThanOrEqual(400);
  expect(r.status, what).toBeLessThan(500);
  expect(r.headers['content-type'], what).toBe('application/x-amz-json-1.1');
  expect(r.headers['x-amzn-requestid'], what).toMatch(/^[0-9a-f-]{36}$/);
  expect(Object.keys(r.json ?? {}).sort(), `${what}: ${r.text}`).toEqual(['__type', 'message']);
  expect(typeof r.json.__type).toBe('string');
  expect(typeof r.json.message).toBe('string');
}

/** One raw HTTP/1.1 exchange on its own connection; the status and body as received. */
function rawHttp(data: Buffer | string): Promise<{ status: number; head: string; body: string }> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    s.on('data', (c) => chunks.push(c));
    s.on('error', reject);
    s.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const [head, ...rest] = text.split('\r\n\r\n');
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), head, body: rest.join('\r\n\r\n') });
    });
    s.end(data);
  });
}

const STATE_CHANGING = ['CreateKey', 'EnableKey', 'DisableKey', 'ScheduleKeyDeletion', 'CancelKeyDeletion', 'CreateAlias', 'UpdateAlias', 'DeleteAlias', 'ImportKeyMaterial', 'DeleteImportedKeyMaterial'];

describe('AWS dialect fuzz: no crash, no state change, every answer well-formed', () => {
  it('bodies that are not UTF-8, not JSON, or not an object, for every operation', async () => {
    const bodies: Buffer[] = [
      Buffer.from([0xff, 0xfe, 0x7b, 0x7d]),
      Buffer.from('{"KeyId":"\xc3\x28"}', 'latin1'),
      Buffer.from([0x7b, 0x22, 0x4b, 0x22, 0x3a, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x7d]), // {"K":"<UTF-8 of a lone surrogate>"}
      Buffer.from('[]'),
      Buffer.from('"KeyId"'),
      Buffer.from('null'),
      Buffer.from('{"KeyId":'),
      Buffer.from('{"KeyId":"a"}{}'),
      Buffer.from(`{"a":${'['.repeat(5000)}`),
      Buffer.from('\u0000{}'),
    ];
    for (const op of Object.keys(OPERATIONS)) {
      for (const body of bodies) {
        const r = await awsRaw(port, { key, target: `TrentService.${op}`, body });
        wellFormed(r, `${op} ${body.toString('latin1').slice(0, 40)}`);
        expect(r.json.__type).toMatch(/SerializationException|ValidationException|NotFoundException/);
      }
    }
    expect(await state()).toBe(snapshot);
  });

  it('duplicate members (first and last would name different CMKs) are refused by every state-changing operation', async () => {
    for (const op of STATE_CHANGING) {
      for (const body of [
        `{"KeyId":"${cmk}","KeyId":"alias/other"}`,
        `{"AliasName":"alias/fuzz","AliasName":"alias/x","TargetKeyId":"${cmk}"}`,
        `{"KeyId":"${cmk}","Tags":[{"TagKey":"kmsd:ProtectionLevel","TagKey":"x","TagValue":"HSM"}]}`,
      ]) {
        const r = await awsRaw(port, { key, target: `TrentService.${op}`, body });
        wellFormed(r, `${op} ${body}`);
        expect(r.json.__type).toBe('SerializationException');
        expect(r.json.message).toContain('appears twice');
      }
    }
    expect(await state()).toBe(snapshot);
  });

  it('members of the wrong type, or strings that name nothing, for every operation (property-based)', async () => {
    const ops = Object.keys(OPERATIONS).filter((o) => o !== 'CreateKey');
    const members = ['KeyId', 'TargetKeyId', 'AliasName', 'Plaintext', 'CiphertextBlob', 'EncryptionContext', 'KeySpec', 'NumberOfBytes', 'Limit', 'Marker', 'PendingWindowInDays', 'ValidTo', 'ImportToken', 'EncryptedKeyMaterial', 'WrappingAlgorithm', 'WrappingKeySpec', 'GrantTokens', 'DestinationKeyId', 'Tags', 'ExpirationModel'];
    // A KeyId is never a real CMK here (fresh strings), so no case can legitimately change anything.
    const junk = fc.oneof(fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.array(fc.string(), { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 5 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }), fc.string({ maxLength: 80 }), fc.string({ unit: 'binary', maxLength: 40 }));
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...ops), fc.dictionary(fc.constantFrom(...members), junk, { minKeys: 1, maxKeys: 4 }), async (op, body) => {
        if (typeof body.KeyId === 'string' && body.KeyId.includes(cmk)) return;
        if (typeof body.AliasName === 'string' && body.AliasName === 'alias/fuzz') return;
        const r = await awsRaw(port, { key, target: `TrentService.${op}`, body: JSON.stringify(body) });
        if (r.status === 200) {
          // Read-only operations may succeed on junk (ListKeys with a Limit, ListAliases, GenerateRandom
          // with a NumberOfBytes; a GenerateDataKey on nothing cannot).
          expect(['ListKeys', 'ListAliases', 'GenerateRandom'], `${op} ${JSON.stringify(body)} -> ${r.text}`).toContain(op);
          return;
        }
        wellFormed(r, `${op} ${JSON.stringify(body)}`);
      }),
      { numRuns: 300 },
    );
    expect(await state()).toBe(snapshot);
  });

  it('huge, odd and duplicate headers', async () => {
    // Past the listener's header bound: Node answers 431 before kmsd reads anything.
    const huge = await awsRaw(port, { key, target: 'TrentService.DisableKey', body: JSON.stringify({ KeyId: cmk }), headers: { 'x-amz-meta-pad': 'a'.repeat(20_000) } }).catch(() => null);
    expect(huge === null || huge.status === 431).toBe(true);
    // A 64 KiB Authorization header (within bounds once Node's limit is passed, refused by the verifier).
    const longAuth = await awsRaw(port, { key, target: 'TrentService.DisableKey', body: JSON.stringify({ KeyId: cmk }), after: (req) => void (req.headers.authorization = `AWS4-HMAC-SHA256 Credential=${'A'.repeat(8000)}/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=${'0'.repeat(64)}`) });
    wellFormed(longAuth, 'long Authorization');
    // Odd targets and signatures.
    for (const target of ['TrentService.', 'TrentService.__proto__', 'TrentService.constructor', 'TrentService.toString', 'trentservice.DisableKey', 'TrentService.Disable Key', 'TrentService.DisableKey.x', '']) {
      const r = await awsRaw(port, { key, target, body: JSON.stringify({ KeyId: cmk }) });
      wellFormed(r, `target ${JSON.stringify(target)}`);
    }
    // Duplicate headers, as only a raw client sends them: two targets (joined by Node: no such operation),
    // two Authorization headers, two Content-Types; a latin-1 byte in the target.
    const signed = await awsRaw(port, { key, target: 'TrentService.DescribeKey', body: JSON.stringify({ KeyId: cmk }), after: () => undefined });
    expect(signed.status).toBe(200);
    const body = JSON.stringify({ KeyId: cmk });
    const base = (extra: string) => `POST / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/x-amz-json-1.1\r\n${extra}Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`;
    for (const extra of [
      'X-Amz-Target: TrentService.DescribeKey\r\nX-Amz-Target: TrentService.DisableKey\r\n',
      'X-Amz-Target: TrentService.DisableKey\r\nAuthorization: AWS4-HMAC-SHA256 a\r\nAuthorization: AWS4-HMAC-SHA256 b\r\n',
      'X-Amz-Target: TrentService.Disable\xffKey\r\nAuthorization: AWS4-HMAC-SHA256 Credential=\xff\xfe/x, SignedHeaders=host, Signature=00\r\n',
      'X-Amz-Target: TrentService.DisableKey\r\nContent-Type: text/plain\r\nX-Amz-Date: 99999999T999999Z\r\n',
    ]) {
      const r = await rawHttp(Buffer.from(base(extra), 'latin1'));
      expect(r.status, r.head).toBeGreaterThanOrEqual(400);
      expect(r.status, r.head).toBeLessThan(500);
      const json = JSON.parse(r.body);
      expect(Object.keys(json).sort()).toEqual(['__type', 'message']);
    }
    expect(await state()).toBe(snapshot);
    // Still serving.
    expect((await awsRaw(port, { key, target: 'TrentService.DescribeKey', body: JSON.stringify({ KeyId: 'alias/fuzz' }) })).json.KeyMetadata.KeyId).toBe(cmk);
  });
});
