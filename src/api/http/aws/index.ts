// The AWS KMS dialect (JSON 1.1, as @aws-sdk/client-kms and the other AWS SDKs send it):
// `POST /` with `X-Amz-Target: TrentService.<Operation>`, `Content-Type: application/x-amz-json-1.1`,
// a JSON body, signed with Signature Version 4 (service `kms`) by an access key from
// `kmsctl CreateAccessKey`. Answers are JSON with AWS's members; errors are `{"__type","message"}`
// with AWS's status, and every answer carries `x-amzn-RequestId`.
//
// Order of checks: signature first (an unauthenticated caller learns nothing else), then media
// type, operation and body, then the operation through the shared admission.

import { KmsError } from '../../../kms/errors';
import { HTTP_ERROR_TABLE, HTTP_REFUSAL_TABLE, HttpRefusal, HttpRefusalError } from '../error-table';
import type { Dialect, HttpAnswer, HttpCall, HttpContext } from '../types';
import { AwsFault } from './faults';
import { parseJsonObject } from './json';
import { OPERATIONS } from './operations';
import { SigningKeyCache, verifySigV4 } from './sigv4';

export const AWS_TARGET_PREFIX = 'TrentService.';
export const AWS_JSON = 'application/x-amz-json-1.1';

const signingKeys = new SigningKeyCache();

function answer(status: number, requestId: string, body: unknown, errorType?: string): HttpAnswer {
  const headers: Record<string, string> = { 'content-type': AWS_JSON, 'x-amzn-requestid': requestId };
  if (errorType) headers['x-amzn-errortype'] = errorType;
  return { status, headers, body: JSON.stringify(body) };
}

function failure(type: string, status: number, message: string, requestId: string): HttpAnswer {
  return answer(status, requestId, { __type: type, message }, type);
}

/**
 * A transport refusal as the AWS dialect answers it. The listener refuses some requests before a
 * dialect is chosen (a body over 1 MiB, oversized headers); for a request awsDialect.matches() it
 * can answer with this instead of the Alibaba shape.
 */
export function awsRefusal(refusal: HttpRefusal, message: string, requestId: string): HttpAnswer {
  const row = HTTP_REFUSAL_TABLE[refusal].aws;
  return failure(row.type, row.status, message, requestId);
}

/** Any error of a request as AWS's answer; internal ones go to the log under the request id only. */
function errorAnswer(e: unknown, call: HttpCall, ctx: HttpContext, op: string | undefined): HttpAnswer {
  if (e instanceof KmsError) {
    const row = HTTP_ERROR_TABLE[e.code].aws;
    return failure(row.type, row.status, e.message, call.requestId);
  }
  if (e instanceof HttpRefusalError) {
    ctx.log.warn({ requestId: call.requestId, peer: call.peer, dialect: 'aws', operation: op, refusal: e.refusal, reason: e.message }, 'http request refused');
    return awsRefusal(e.refusal, e.message, call.requestId);
  }
  if (e instanceof AwsFault) return failure(e.type, e.status, e.message, call.requestId);
  const err = e instanceof Error ? { name: e.name, message: e.message, stack: e.stack } : String(e);
  ctx.log.error({ requestId: call.requestId, dialect: 'aws', operation: op, err }, 'internal error');
  const row = HTTP_ERROR_TABLE.InternalFailure.aws;
  return failure(row.type, row.status, `internal error (request id ${call.requestId})`, call.requestId);
}

function header(call: HttpCall, name: string): string | undefined {
  const v = Object.prototype.hasOwnProperty.call(call.headers, name) ? call.headers[name] : undefined;
  return Array.isArray(v) ? v.join(',') : v;
}

export const awsDialect: Dialect = {
  name: 'aws',

  // X-Amz-Target, or an AWS signature without one: either way the client speaks AWS and should get
  // an AWS-shaped answer, even a refusal.
  matches: (call) => header(call, 'x-amz-target') !== undefined || (header(call, 'authorization') ?? '').startsWith('AWS4-'),

  async handle(call, ctx) {
    let op: string | undefined;
    try {
      const who = verifySigV4(call, { service: 'kms', region: ctx.awsRegion, lookupAccessKey: (id) => ctx.lookupAccessKey(id) }, signingKeys);
      if (call.method !== 'POST' || call.path !== '/') {
        throw new HttpRefusalError('UnknownAction', `${call.method} ${call.path.slice(0, 128)}: the AWS KMS API is POST / (JSON 1.1)`);
      }
      const contentType = (header(call, 'content-type') ?? '').split(';')[0].trim().toLowerCase();
      if (contentType !== AWS_JSON) {
        throw new HttpRefusalError('UnsupportedMediaType', `Content-Type: must be ${AWS_JSON} (got ${JSON.stringify(contentType.slice(0, 64))})`);
      }
      const target = header(call, 'x-amz-target') ?? '';
      const name = target.startsWith(AWS_TARGET_PREFIX) ? target.slice(AWS_TARGET_PREFIX.length) : '';
      const operation = Object.prototype.hasOwnProperty.call(OPERATIONS, name) ? OPERATIONS[name] : undefined;
      if (!operation) {
        throw new HttpRefusalError('UnknownAction', `X-Amz-Target: ${JSON.stringify(target.slice(0, 128))} is not an operation kmsd serves (TrentService.${Object.keys(OPERATIONS).join(', TrentService.')})`);
      }
      op = name;
      const req = parseJsonObject(call.body);
      const out = await operation(req, { ctx, call, who: { principal: who.principal, accessKeyId: who.accessKeyId }, region: who.region });
      return answer(200, call.requestId, out);
    } catch (e) {
      return errorAnswer(e, call, ctx, op);
    }
  },

  refuse: awsRefusal,
};
