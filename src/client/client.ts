// Typed client for the kmsd gRPC API, used by kmsctl, tests and benchmarks. Errors come back as
// KmsClientError with the API error code (from the `kms-error-code` trailer) and the message.

import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { serviceConstructor } from '../api/proto';
import { ClientOptions, Json, KmsClientError, endpointsOf } from './basics';
import { clientEnvironment } from '../config';
import { EndpointRing } from './endpoints';

export { DEFAULT_ENDPOINT, KmsClientError, endpointOf, endpointsOf } from './basics';
export type { ClientOptions, Json } from './basics';

/** TLS when a CA is given (option or KMS_CA), with a client certificate for mutual TLS; else plaintext. */
export function channelCredentials(opts: ClientOptions): grpc.ChannelCredentials {
  const env = clientEnvironment();
  const caFile = opts.caFile ?? env.caFile;
  if (!caFile) return grpc.credentials.createInsecure();
  const keyFile = opts.keyFile ?? env.keyFile;
  const certFile = opts.certFile ?? env.certFile;
  return grpc.credentials.createSsl(fs.readFileSync(caFile), keyFile ? fs.readFileSync(keyFile) : null, certFile ? fs.readFileSync(certFile) : null);
}

export function toClientError(e: { code: grpc.status; details?: string; message?: string; metadata?: grpc.Metadata }): KmsClientError {
  const code = e.metadata?.get('kms-error-code')?.[0]?.toString() ?? grpc.status[e.code] ?? 'Unknown';
  return new KmsClientError(code, e.details || e.message || '', e.code, e.metadata?.get('kms-request-id')?.[0]?.toString());
}

/** RPCs that are bidirectional streams: not callable through call(). */
export const STREAMING_ACTIONS = ['EncryptStream', 'DecryptStream'];

export interface EncryptBatchItem {
  KeyId: string;
  /** Raw bytes (base64-encoded for you) or a base64 string. */
  Plaintext: Buffer | string;
  EncryptionContext?: Record<string, string>;
}
export interface DecryptBatchItem {
  CiphertextBlob: string;
  EncryptionContext?: Record<string, string>;
  KeyId?: string;
}
/** Code is empty on success; else the item's error code and Message. */
export interface EncryptBatchResult {
  KeyId: string;
  KeyVersionId: string;
  CiphertextBlob: string;
  Code: string;
  Message: string;
}
export interface DecryptBatchResult {
  KeyId: string;
  KeyVersionId: string;
  Plaintext: string;
  Code: string;
  Message: string;
}
export interface BatchResponse<R> {
  Results: R[];
  BatchId: string;
  SuccessCount: number;
  ErrorCount: number;
  /** Streams only: the whole message was refused. */
  Code: string;
  Message: string;
}
export interface BatchStream<I, R> {
  send(items: I[], batchId?: string): Promise<BatchResponse<R>>;
  end(): Promise<void>;
  cancel(): void;
}

function encryptItem(x: EncryptBatchItem): Json {
  return { KeyId: x.KeyId, Plaintext: Buffer.isBuffer(x.Plaintext) ? x.Plaintext.toString('base64') : x.Plaintext, EncryptionContext: x.EncryptionContext ?? {} };
}
function decryptItem(x: DecryptBatchItem): Json {
  return { CiphertextBlob: x.CiphertextBlob, EncryptionContext: x.EncryptionContext ?? {}, KeyId: x.KeyId ?? '' };
}

/* eslint-disable @typescript-eslint/no-explicit-any */

/**
 * Channel options of every endpoint's channel. grpc-js backs off reconnecting up to 120 s; a
 * replica that comes back must be used again within seconds, so the back-off is capped lower.
 */
export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': 16 * 1024 * 1024,
  'grpc.initial_reconnect_backoff_ms': 500,
  'grpc.max_reconnect_backoff_ms': 5000,
};

/** One unary call on a stub, with a deadline, failing with the API error code as KmsClientError. */
export function unaryCall<T>(stub: grpc.Client & Record<string, any>, action: string, request: Json, deadlineMs = 60_000): Promise<T> {
  const deadline = new Date(Date.now() + deadlineMs);
  return new Promise<T>((resolve, reject) => {
    stub[action](request, new grpc.Metadata(), { deadline }, (err: grpc.ServiceError | null, res: T) => (err ? reject(toClientError(err)) : resolve(res)));
  });
}

/**
 * The client of KeyManagementService. With several endpoints (replicas) each has its own channel
 * (TLS options apply to every one); calls go round robin, and a failed call goes to the next
 * endpoint only as src/client/endpoints.ts states (never a CreateKey that may have run).
 */
export class KmsClient {
  private readonly ring: EndpointRing<grpc.Client & Record<string, any>>;
  readonly actions: string[];
  readonly endpoints: string[];

  constructor(private readonly opts: ClientOptions = {}) {
    const ctor = serviceConstructor('KeyManagementService');
    this.actions = Object.keys(ctor.service);
    this.endpoints = endpointsOf(opts);
    const creds = channelCredentials(opts);
    this.ring = new EndpointRing(this.endpoints, (ep) => new ctor(ep, creds, CHANNEL_OPTIONS) as grpc.Client & Record<string, any>, opts.endpointBackoffMs);
  }

  /** Calls one action by name with a request object in the API's field names. */
  call<T = Json>(action: string, request: Json = {}): Promise<T> {
    if (!this.actions.includes(action)) return Promise.reject(new KmsClientError('InvalidAction', `unknown action ${action}`, grpc.status.UNIMPLEMENTED));
    if (STREAMING_ACTIONS.includes(action)) return Promise.reject(new KmsClientError('InvalidAction', `${action} is a stream: use openBatchStream()`, grpc.status.UNIMPLEMENTED));
    // One deadline for the call, retries on other endpoints included.
    const end = Date.now() + (this.opts.deadlineMs ?? 60_000);
    return this.ring.route(action, (i) => unaryCall<T>(this.ring.conn(i), action, request, Math.max(1, end - Date.now())));
  }

  close(): void {
    for (const stub of this.ring.opened()) stub.close();
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

  // ---- batches (at most MAX_BATCH_ITEMS = 256 items per call; per-item Code/Message)

  encryptBatch(items: EncryptBatchItem[], batchId = '') {
    return this.call<BatchResponse<EncryptBatchResult>>('EncryptBatch', { BatchId: batchId, Items: items.map(encryptItem) });
  }
  async decryptBatch(items: DecryptBatchItem[], batchId = ''): Promise<BatchResponse<DecryptBatchResult & { PlaintextBytes: Buffer | null }>> {
    const r = await this.call<BatchResponse<DecryptBatchResult>>('DecryptBatch', { BatchId: batchId, Items: items.map(decryptItem) });
    return { ...r, Results: r.Results.map((x) => ({ ...x, PlaintextBytes: x.Code ? null : Buffer.from(x.Plaintext, 'base64') })) };
  }

  /**
   * A bidirectional EncryptStream / DecryptStream: send() one batch per message and get its
   * response (in order); a message refused as a whole resolves with Code and Message set. A
   * stream-level failure rejects every pending send. end() half-closes and resolves when the
   * server has answered everything and closed its side.
   */
  openBatchStream(kind: 'encrypt'): BatchStream<EncryptBatchItem, EncryptBatchResult>;
  openBatchStream(kind: 'decrypt'): BatchStream<DecryptBatchItem, DecryptBatchResult>;
  openBatchStream(kind: 'encrypt' | 'decrypt'): BatchStream<EncryptBatchItem, EncryptBatchResult> | BatchStream<DecryptBatchItem, DecryptBatchResult> {
    // A stream is not retried (its messages may have run): it goes to the next endpoint in turn.
    const stub = this.ring.conn(this.ring.order()[0]);
    const call: grpc.ClientDuplexStream<Json, Json> = stub[kind === 'encrypt' ? 'EncryptStream' : 'DecryptStream'](new grpc.Metadata());
    const toItem = kind === 'encrypt' ? encryptItem : decryptItem;
    const waiting: { resolve: (r: any) => void; reject: (e: Error) => void }[] = [];
    let failure: Error | null = null;
    const closed = new Promise<void>((resolve, reject) => {
      call.on('status', (st: grpc.StatusObject) => (st.code === grpc.status.OK ? resolve() : reject(toClientError(st))));
    });
    closed.catch(() => undefined);
    call.on('data', (msg: Json) => waiting.shift()?.resolve(msg));
    call.on('error', (e: grpc.ServiceError) => {
      failure = toClientError(e);
      for (const w of waiting.splice(0)) w.reject(failure);
    });
    return {
      send: (items: any[], batchId = '') =>
        new Promise<BatchResponse<any>>((resolve, reject) => {
          if (failure) return reject(failure);
          waiting.push({ resolve, reject });
          call.write({ BatchId: batchId, Items: items.map(toItem as (x: any) => Json) });
        }),
      end: () => {
        call.end();
        return closed;
      },
      cancel: () => call.cancel(),
    };
  }
}
