// The contract between the HTTP listener (server.ts) and its dialects (alibaba/, aws/): one parsed,
// size-bounded request in, one answer out; identity, policy, limits and audit come from the
// transport-neutral admission behind HttpContext.run, so a dialect only speaks its wire format.

import type { IncomingHttpHeaders } from 'node:http';
import type { Logger } from '../../kms/service';
import type { XksCredentialView } from '../../kms/xks';
import type { HttpRefusal } from './error-table';

export interface HttpCall {
  requestId: string;
  method: string; // 'GET' | 'POST' | ...
  path: string; // raw path, no query
  rawQuery: string; // as received, without '?'
  headers: IncomingHttpHeaders; // lower-case names
  body: Buffer; // the whole body, already bounded to 1 MiB
  peer: string; // remote address
  receivedAt: number; // ms epoch
  /** The client certificate's principal when the listener is mutual TLS; absent otherwise. */
  certPrincipal?: string;
}

export interface HttpAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

export interface AccessKeyRecord {
  accessKeyId: string;
  principal: string;
  status: 'Active' | 'Inactive';
  /** The unsealed secret, cached by the access key service (zeroed there when the key changes):
      read it, never keep, modify or zero it. */
  secret(): Buffer;
}

export interface HttpContext {
  lookupAccessKey(id: string): AccessKeyRecord | undefined; // secret unsealed on demand
  /** Runs one domain action for an authenticated principal through the same admission as gRPC
      (policy, rate limit, bulkhead, deadline, audit with the access key id); returns the domain
      result or throws the domain KmsError. `action` is the kmsd/Alibaba action name (e.g. 'Encrypt'),
      `req` the domain request object with Alibaba field names. */
  run(action: string, req: Record<string, unknown>, who: { principal: string; accessKeyId: string }, call: HttpCall): Promise<unknown>;
  region: string;
  account: string;
  /** `--aws-region`: the only region an AWS SigV4 credential scope may name; any region when unset. */
  awsRegion?: string;
  log: Logger;
  /** The AWS external key store proxy (src/api/http/xks/); its operations run through `run` too. */
  xks?: {
    lookupCredential(accessKeyId: string): XksCredentialView | undefined;
    /** The CMK an external key exposes, so the policy can name it; undefined when there is none. */
    keyIdOf(uriPathPrefix: string, externalKeyId: string): string | undefined;
  };
}

export interface Dialect {
  name: string;
  matches(call: HttpCall): boolean;
  handle(call: HttpCall, ctx: HttpContext): Promise<HttpAnswer>;
  /** Shapes a refusal the listener makes before the request is read whole (a body over 1 MiB, an
      over-long URL, oversized headers), for a request that `matches` on what is known by then: the
      call has an empty body, and after oversized headers only what Node kept of them. Without it
      the refusal is Alibaba-shaped. */
  refuse?(refusal: HttpRefusal, message: string, requestId: string): HttpAnswer;
}
