// Parsing a list of endpoints, the rule that decides when a failed call goes to the next endpoint,
// and the round robin with its back-off (src/client/endpoints.ts). The behaviour against real kmsd
// processes is in test/e2e/endpoints.test.ts.

import { describe, expect, it } from 'vitest';
import { KmsClientError } from '../../src/client/basics';
import { EndpointRing, classifyFailure, idempotentByNature, parseEndpointList } from '../../src/client/endpoints';

function parseError(raw: string, source = '--endpoint'): string {
  try {
    parseEndpointList(raw, source);
  } catch (e) {
    expect(e).toBeInstanceOf(KmsClientError);
    expect((e as KmsClientError).code).toBe('InvalidEndpoint');
    return (e as Error).message;
  }
  throw new Error(`"${raw}" was accepted`);
}

describe('parseEndpointList', () => {
  it('takes one endpoint or several, in the forms grpc-js takes', () => {
    expect(parseEndpointList('127.0.0.1:50051', '--endpoint')).toEqual(['127.0.0.1:50051']);
    expect(parseEndpointList('a.example:1, b.example:65535,[::1]:7,dns:///c:8,unix:/run/kmsd.sock', '--endpoint')).toEqual(['a.example:1', 'b.example:65535', '[::1]:7', 'dns:///c:8', 'unix:/run/kmsd.sock']);
  });

  it('refuses a malformed list naming where it came from and the entry', () => {
    expect(parseError('a:1,,b:2')).toBe('--endpoint: entry 2 of "a:1,,b:2" is empty (give HOST:PORT, several separated by commas)');
    expect(parseError('a:1,')).toMatch(/^--endpoint: entry 2 of "a:1," is empty/);
    expect(parseError('')).toMatch(/^--endpoint: entry 1 of "" is empty/);
    expect(parseError('a:1,b:99999', 'KMS_ENDPOINT')).toBe('KMS_ENDPOINT: entry 2 ("b:99999") has port "99999"; a port is an integer from 1 to 65535');
    expect(parseError('a:0')).toBe('--endpoint: "a:0" has port "0"; a port is an integer from 1 to 65535');
    expect(parseError('a:http')).toMatch(/has port "http"/);
    expect(parseError('a')).toBe('--endpoint: "a" is not HOST:PORT');
    expect(parseError('a:1:2')).toMatch(/is not HOST:PORT/);
    expect(parseError('a:1,a:1')).toBe('--endpoint: "a:1" is listed twice');
  });
});

describe('the retry rule', () => {
  it('counts reads and data-plane calls as idempotent, and nothing that creates or changes', () => {
    for (const a of ['Encrypt', 'Decrypt', 'EncryptBatch', 'DecryptBatch', 'GenerateDataKey', 'DescribeKey', 'ListKeys', 'ListAliases', 'GetProposal', 'GetUsageCounters', 'VerifyAudit']) expect(idempotentByNature(a), a).toBe(true);
    for (const a of ['CreateKey', 'ImportKeyMaterial', 'GetParametersForImport', 'ApproveProposal', 'ExecuteProposal', 'ScheduleKeyDeletion', 'CreateAlias', 'DeleteKeyMaterial', 'Lister', 'Getaway']) expect(idempotentByNature(a), a).toBe(false);
  });

  it('tells a call that never left from one that may have run', () => {
    expect(classifyFailure(new KmsClientError('UNAVAILABLE', 'No connection established. Last error: connect ECONNREFUSED 127.0.0.1:1', 14))).toBe('not-sent');
    expect(classifyFailure(new KmsClientError('UNAVAILABLE', 'Connection dropped', 14))).toBe('unavailable');
    expect(classifyFailure(new KmsClientError('UNAVAILABLE', 'Stream refused by server', 14))).toBe('not-sent');
    // kmsd's own ServiceUnavailable is an answer from the replica: the call reached it.
    expect(classifyFailure(new KmsClientError('ServiceUnavailable', 'No connection established to the store', 14))).toBe('unavailable');
    expect(classifyFailure(new KmsClientError('DEADLINE_EXCEEDED', 'Deadline exceeded', 4))).toBe('final');
    expect(classifyFailure(new KmsClientError('NotFound', 'no such key', 5))).toBe('final');
  });
});

describe('EndpointRing', () => {
  const refused = () => Promise.reject(new KmsClientError('UNAVAILABLE', 'No connection established. Last error: connect ECONNREFUSED', 14));
  const dropped = () => Promise.reject(new KmsClientError('UNAVAILABLE', 'Connection dropped', 14));

  it('alternates over the endpoints that answer, passing over one that refused', async () => {
    const ring = new EndpointRing(['dead:1', 'a:1', 'b:1'], (ep) => ep, 60_000);
    const served: string[] = [];
    for (let n = 0; n < 6; n++) served.push(await ring.route('CreateKey', (i) => (i === 0 ? refused() : Promise.resolve(ring.conn(i)))));
    expect(served).toEqual(['a:1', 'b:1', 'a:1', 'b:1', 'a:1', 'b:1']);
  });

  it('sends again after a drop only a call that is idempotent by nature', async () => {
    const ring = new EndpointRing(['a:1', 'b:1'], (ep) => ep, 0);
    const tried: number[] = [];
    const attempt = (i: number) => (tried.push(i), i === 0 ? dropped() : Promise.resolve('ok'));
    await expect(ring.route('CreateKey', attempt)).rejects.toThrow('Connection dropped');
    expect(tried).toEqual([0]);
    tried.length = 0;
    const ring2 = new EndpointRing(['a:1', 'b:1'], (ep) => ep, 0);
    await expect(ring2.route('DescribeKey', (i) => (tried.push(i), i === 0 ? dropped() : Promise.resolve('ok')))).resolves.toBe('ok');
    expect(tried).toEqual([0, 1]);
  });

  it('tries every endpoint when all are in their back-off, and fails with the last failure', async () => {
    const ring = new EndpointRing(['a:1', 'b:1'], (ep) => ep, 60_000);
    await expect(ring.route('ListKeys', refused)).rejects.toThrow(/No connection established/);
    let tries = 0;
    await expect(ring.route('ListKeys', () => (tries++, refused()))).rejects.toThrow(/No connection established/);
    expect(tries).toBe(2);
  });
});
