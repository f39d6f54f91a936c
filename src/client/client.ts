// Typed client for the kmsd gRPC API, used by kmsctl, tests and benchmarks. Errors come back as
// KmsClientError with the API error code (from the `kms-error-code` trailer) and the message.

import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { serviceConstructor } from '../api/proto';

export interface ClientOptions {
  endpoint?: string;
  /** CA bundle to verify the server (enables TLS); cert/key for mutual TLS. */
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  deadlineMs?: number;
}

export class KmsClientError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly grpcCode: grpc.status,
    readonly requestId?: string,
  ) {
    super(message);
    this.name = 'KmsClientError';
  }
}

export const DEFAULT_ENDPOINT = '127.0.0.1:50051';

/* eslint-disable @typescript-eslint/no-explicit-any */
export type Json = Record<string, any>;

export class KmsClient {
  private readonly stub: grpc.Client & Record<string, any>;
  readonly actions: string[];

  constructor(private readonly opts: ClientOptions = {}) {
    const ctor = serviceConstructor('KeyManagementService');
    this.actions = Object.keys(ctor.service);
    const endpoint = opts.endpoint ?? process.env.KMS_ENDPOINT ?? DEFAULT_ENDPOINT;
    const caFile = opts.caFile ?? process.env.KMS_CA;
    const creds = caFile
      ? grpc.credentials.createSsl(
          fs.readFileSync(caFile),
          (opts.keyFile ?? process.env.KMS_KEY) ? fs.readFileSync((opts.keyFile ?? process.env.KMS_KEY) as string) : null,
          (opts.certFile ?? process.env.KMS_CERT) ? fs.readFileSync((opts.certFile ?? process.env.KMS_CERT) as string) : null,
        )
      : grpc.credentials.createInsecure();
    this.stub = new ctor(endpoint, creds, { 'grpc.max_receive_message_length': 16 * 1024 * 1024 }) as grpc.Client & Record<string, any>;
  }

  /** Calls one action by name with a request object in the API's field names. */
  call<T = Json>(action: string, request: Json = {}): Promise<T> {
    if (!this.actions.includes(action)) return Promise.reject(new KmsClientError('InvalidAction', `unknown action ${action}`, grpc.status.UNIMPLEMENTED));
    const deadline = new Date(Date.now() + (this.opts.deadlineMs ?? 60_000));
    return new Promise<T>((resolve, reject) => {
      this.stub[action](request, new grpc.Metadata(), { deadline }, (err: grpc.ServiceError | null, res: T) => {
        if (!err) return resolve(res);
        const code = err.metadata?.get('kms-error-code')?.[0]?.toString() ?? grpc.status[err.code] ?? 'Unknown';
        const requestId = err.metadata?.get('kms-request-id')?.[0]?.toString();
        reject(new KmsClientError(code, err.details || err.message, err.code, requestId));
      });
    });
  }

  close(): void {
    this.stub.close();
  }

  // Typed shorthands for the calls services make most.
  createKey(req: { Origin?: string; ProtectionLevel?: string; Description?: string; EnableAutomaticRotation?: boolean; RotationInterval?: string } = {}) {
    return this.call<{ KeyMetadata: Json }>('CreateKey', req);
  }
  describeKey(keyId: string) {
    return this.call<{ KeyMetadata: Json }>('DescribeKey', { KeyId: keyId });
  }
  encrypt(keyId: string, plaintext: Buffer, context?: Record<string, string>) {
    return this.call<{ KeyId: string; KeyVersionId: string; CiphertextBlob: string }>('Encrypt', { KeyId: keyId, Plaintext: plaintext.toString('base64'), EncryptionContext: context ?? {} });
  }
  async decrypt(blob: string, context?: Record<string, string>, keyId?: string): Promise<{ KeyId: string; KeyVersionId: string; Plaintext: Buffer }> {
    const r = await this.call<{ KeyId: string; KeyVersionId: string; Plaintext: string }>('Decrypt', { CiphertextBlob: blob, EncryptionContext: context ?? {}, KeyId: keyId ?? '' });
    return { ...r, Plaintext: Buffer.from(r.Plaintext, 'base64') };
  }
}
