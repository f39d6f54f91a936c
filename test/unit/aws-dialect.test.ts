import { describe, expect, it } from 'vitest';
import { awsDialect, awsRefusal } from '../../src/api/http/aws';
import { HTTP_REFUSAL_TABLE } from '../../src/api/http/error-table';
import type { HttpCall } from '../../src/api/http/types';

const call = (headers: Record<string, string>): HttpCall => ({ requestId: 'r-1', method: 'POST', path: '/', rawQuery: '', headers, body: Buffer.alloc(0), peer: '127.0.0.1', receivedAt: Date.now() });

describe('the AWS dialect at the listener', () => {
  it('claims requests with X-Amz-Target or a SigV4 Authorization, and leaves the rest to Alibaba', () => {
    expect(awsDialect.matches(call({ 'x-amz-target': 'TrentService.Encrypt' }))).toBe(true);
    expect(awsDialect.matches(call({ 'x-amz-target': 'Other.Thing' }))).toBe(true);
    expect(awsDialect.matches(call({ authorization: 'AWS4-HMAC-SHA256 Credential=x' }))).toBe(true);
    expect(awsDialect.matches(call({ authorization: 'ACS3-HMAC-SHA256 Credential=x' }))).toBe(false);
    expect(awsDialect.matches(call({}))).toBe(false);
  });

  it('answers a transport refusal in AWS shape, with the status of the one table', () => {
    const a = awsRefusal('BodyTooLarge', 'body: larger than 1048576 bytes', 'r-2');
    expect(a.status).toBe(HTTP_REFUSAL_TABLE.BodyTooLarge.aws.status);
    expect(a.headers).toMatchObject({ 'content-type': 'application/x-amz-json-1.1', 'x-amzn-requestid': 'r-2', 'x-amzn-errortype': HTTP_REFUSAL_TABLE.BodyTooLarge.aws.type });
    expect(JSON.parse(a.body)).toEqual({ __type: HTTP_REFUSAL_TABLE.BodyTooLarge.aws.type, message: 'body: larger than 1048576 bytes' });
  });
});
